//! Starting, stopping and restarting real brokers: the data-directory lock,
//! graceful shutdown on SIGTERM and SIGINT with requests in flight, the
//! listening line, topics across restarts, and fetch long polling.

mod common;

use common::{
    assert_broker_serves, bounded, payload, read_partition, run_broker_expecting_exit, BrokerProc,
    RawConn, TestDir,
};
use hutong::client::{ClientError, Producer, ProducerConfig, RetryConfig};
use hutong::wire::api::{
    FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
};
use hutong::wire::batch::BatchBuilder;
use hutong::wire::{ApiKey, ErrorCode, Qos};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn a_second_broker_on_the_same_data_dir_refuses_to_start() {
    let dir = TestDir::new();
    let first = BrokerProc::start(&dir.data, &[]);
    let (status, stderr) = run_broker_expecting_exit(&dir.data, &[]);
    assert!(
        !status.success(),
        "the second broker must fail, exited with {status}"
    );
    assert!(
        stderr.to_lowercase().contains("lock"),
        "stderr names the lock: {stderr:?}"
    );
    // The first broker was not disturbed.
    assert_broker_serves(first.addr());
}

#[test]
fn a_kill_9d_broker_leaves_no_stale_lock() {
    let dir = TestDir::new();
    let mut first = BrokerProc::start(&dir.data, &[]);
    first.kill9();
    let second = BrokerProc::start(&dir.data, &[]);
    assert_broker_serves(second.addr());
}

#[test]
fn the_broker_prints_exactly_one_listening_line_and_exits_0_on_sigterm() {
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    assert_broker_serves(broker.addr());
    let status = broker.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let lines = broker.stdout_lines();
    let listening: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(common::LISTENING))
        .collect();
    assert_eq!(listening.len(), 1, "stdout: {lines:?}");
    assert_eq!(
        common::parse_listening(listening[0]),
        Some(broker.addr()),
        "the line names the bound address"
    );
}

/// What a producer streaming through a shutdown saw.
struct StreamOutcome {
    /// (base offset, first sequence number) of each acknowledged batch.
    acked: Vec<(u64, u64)>,
    shutting_down: usize,
    connection_lost: usize,
}

const STREAM_BATCH: u64 = 20;

fn stream_value(seq: u64) -> Vec<u8> {
    payload("stream", seq)
}

/// Streams pipelined batches to `stream`/0 until the broker goes away,
/// recording every acknowledgement. A request the broker never read may
/// be lost with the connection; one it answered must be Ok or ShuttingDown.
fn stream_through_shutdown(addr: std::net::SocketAddr) -> StreamOutcome {
    let producer = Producer::connect(
        addr,
        ProducerConfig {
            qos: Qos::All,
            timeout_ms: 15_000,
            max_in_flight: 64,
            // This test counts the broker's own answers at shutdown.
            retry: RetryConfig::none(),
            ..ProducerConfig::default()
        },
    )
    .expect("stream producer connects");
    let mut out = StreamOutcome {
        acked: Vec::new(),
        shutting_down: 0,
        connection_lost: 0,
    };
    let mut window = std::collections::VecDeque::new();
    let settle =
        |(first, receipt): (u64, hutong::client::Receipt), out: &mut StreamOutcome| match receipt
            .wait()
        {
            Ok(ack) => out.acked.push((ack.base_offset, first)),
            Err(ClientError::Broker {
                code: ErrorCode::ShuttingDown,
                ..
            }) => out.shutting_down += 1,
            Err(ClientError::Closed | ClientError::Io(_)) => out.connection_lost += 1,
            Err(e) => panic!("stream batch {first} failed with {e}"),
        };
    let mut seq = 0u64;
    loop {
        let values: Vec<Vec<u8>> = (seq..seq + STREAM_BATCH).map(stream_value).collect();
        let records: Vec<(&[u8], &[u8])> =
            values.iter().map(|v| (&b""[..], v.as_slice())).collect();
        match producer.send_records("stream", 0, &records) {
            Ok(receipt) => window.push_back((seq, receipt)),
            Err(_) => break,
        }
        seq += STREAM_BATCH;
        if window.len() >= 32 {
            settle(window.pop_front().unwrap(), &mut out);
        }
    }
    for w in window {
        settle(w, &mut out);
    }
    out
}

const SHUTDOWN_REQUESTS: usize = 1000;
const SHUTDOWN_RECORDS: usize = 50;

/// Sends a burst of produce requests (about 15 MB at QoS all) plus a long
/// poll, signals the broker as soon as it has read the whole burst, and
/// checks that every request is answered with success or ShuttingDown,
/// that the broker exits 0, and that every acknowledged record is there
/// after a restart.
fn shutdown_answers_every_request_in_flight(signal: Signal) {
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    let pid = broker.pid();
    let mut admin = RawConn::connect(addr);
    admin.create_topic("t", 2);
    admin.create_topic("idle", 1);
    admin.create_topic("stream", 1);

    // A producer that keeps streaming on its own connection until the
    // broker is gone.
    let stream = std::thread::spawn(move || stream_through_shutdown(addr));
    common::wait_until(Duration::from_secs(10), "the stream to start", || {
        admin.list_offsets("stream", 0).latest > 0
    });

    // A long poll that cannot be satisfied by data.
    let mut poller = RawConn::connect(addr);
    let poll_id = poller.send(ApiKey::Fetch, |out| {
        FetchRequest {
            topic: "idle",
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 30_000,
            min_bytes: 1,
        }
        .encode(out)
    });

    let mut frames = Vec::new();
    let mut sent: HashMap<u32, (u32, u64)> = HashMap::new(); // id -> (partition, first seq)
    let mut b = BatchBuilder::new();
    for i in 0..SHUTDOWN_REQUESTS {
        let partition = (i % 2) as u32;
        let first = (i * SHUTDOWN_RECORDS) as u64;
        b.clear();
        for j in 0..SHUTDOWN_RECORDS as u64 {
            let mut v = payload("shutdown", first + j);
            v.resize(300, b'.');
            b.push(common::now_ms(), b"", &v, &[]);
        }
        let batch = b.finish(0, 0);
        let id = 1000 + i as u32;
        frames.extend_from_slice(&RawConn::frame(ApiKey::Produce.as_u16(), 1, id, |out| {
            ProduceRequest {
                topic: "t",
                partition,
                qos: Qos::All as u8,
                timeout_ms: 15_000,
                batch,
            }
            .encode(out)
        }));
        sent.insert(id, (partition, first));
    }
    const PING_ID: u32 = 7;
    frames.extend_from_slice(&RawConn::frame(ApiKey::Ping.as_u16(), 1, PING_ID, |out| {
        out.extend_from_slice(b"read it all")
    }));

    let mut conn = RawConn::connect(addr);
    let mut writer = conn.stream.try_clone().expect("clone socket");
    let writer = std::thread::spawn(move || writer.write_all(&frames));
    let (answers, answered_before_signal) = bounded(Duration::from_secs(60), "shutdown reader", {
        move || {
            let mut answers: HashMap<u32, (ErrorCode, Vec<u8>)> = HashMap::new();
            let mut before_signal = None;
            loop {
                let r = match conn.read_response() {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        break
                    }
                    Err(e) => panic!("reading responses: {e}"),
                };
                let id = r.header.correlation_id;
                if id == PING_ID {
                    // The broker has read every produce request before the
                    // ping: they are all in the pipeline now.
                    before_signal = Some(answers.len());
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
                        .expect("signal the broker");
                    continue;
                }
                assert!(
                    answers.insert(id, (r.code(), r.body)).is_none(),
                    "two answers for correlation id {id}"
                );
            }
            (answers, before_signal)
        }
    });
    let _ = writer.join();
    let answered_before_signal =
        answered_before_signal.expect("the ping sent after the burst was answered");
    eprintln!(
        "{signal:?}: {answered_before_signal} of {SHUTDOWN_REQUESTS} produce requests were \
         answered before the signal"
    );

    // The long poll is answered too, long before its 30 s wait.
    let t0 = Instant::now();
    let r = poller
        .read_response()
        .expect("the long poll is answered at shutdown");
    assert_eq!(r.header.correlation_id, poll_id);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "long poll held up the shutdown"
    );
    match r.code() {
        ErrorCode::None => {
            let f = FetchResponse::decode(&r.body).expect("decode fetch");
            assert!(f.batches.is_empty(), "no data was produced to idle");
        }
        ErrorCode::ShuttingDown => {}
        other => panic!("long poll answered {other}: {}", r.message()),
    }

    let status = broker.wait_exit(common::EXIT_TIMEOUT);
    assert!(status.success(), "exit status after {signal:?}: {status}");
    let stream = bounded(Duration::from_secs(30), "stream producer", move || {
        stream.join().expect("stream producer")
    });
    eprintln!(
        "{signal:?}: stream: {} acknowledged, {} ShuttingDown, {} lost with the connection",
        stream.acked.len(),
        stream.shutting_down,
        stream.connection_lost
    );
    assert!(!stream.acked.is_empty(), "the stream was acknowledged");

    let mut missing: Vec<_> = sent.keys().filter(|id| !answers.contains_key(id)).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {SHUTDOWN_REQUESTS} produce requests were never answered (first ids {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut acked = Vec::new();
    for (id, (code, body)) in &answers {
        let (partition, first) = sent[id];
        match code {
            ErrorCode::None => {
                let base = ProduceResponse::decode(body)
                    .expect("decode produce response")
                    .base_offset;
                acked.push((partition, base, first));
            }
            ErrorCode::ShuttingDown => {}
            other => panic!("request {id} answered {other}"),
        }
    }
    eprintln!(
        "{signal:?}: {} acknowledged, {} failed with ShuttingDown",
        acked.len(),
        SHUTDOWN_REQUESTS - acked.len()
    );
    assert!(!acked.is_empty(), "some requests were acknowledged");

    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    bounded(
        Duration::from_secs(60),
        "read back after restart",
        move || {
            let parts = [read_partition(addr, "t", 0), read_partition(addr, "t", 1)];
            let streamed = read_partition(addr, "stream", 0);
            for (base, first) in stream.acked {
                for j in 0..STREAM_BATCH {
                    let offset = base + j;
                    let rec = streamed.get(offset as usize).unwrap_or_else(|| {
                        panic!("acknowledged stream/0@{offset} is missing after restart")
                    });
                    assert!(
                        rec.value == stream_value(first + j),
                        "stream/0@{offset} holds other bytes after restart"
                    );
                }
            }
            for (partition, base, first) in acked {
                let stored = &parts[partition as usize];
                for j in 0..SHUTDOWN_RECORDS as u64 {
                    let offset = base + j;
                    let rec = stored.get(offset as usize).unwrap_or_else(|| {
                        panic!("acknowledged t/{partition}@{offset} is missing after restart")
                    });
                    let mut want = payload("shutdown", first + j);
                    want.resize(300, b'.');
                    assert!(
                        rec.value == want,
                        "t/{partition}@{offset} holds other bytes after restart"
                    );
                }
            }
        },
    );
}

#[test]
fn sigterm_answers_every_request_in_flight_and_keeps_acknowledged_data() {
    shutdown_answers_every_request_in_flight(Signal::SIGTERM);
}

#[test]
fn sigint_answers_every_request_in_flight_and_keeps_acknowledged_data() {
    shutdown_answers_every_request_in_flight(Signal::SIGINT);
}

fn metadata(c: &mut RawConn) -> MetadataResponse {
    let r = c
        .request(ApiKey::Metadata, |out| {
            MetadataRequest { topics: vec![] }.encode(out)
        })
        .ok();
    MetadataResponse::decode(&r.body).expect("decode metadata")
}

fn topic_shapes(md: &MetadataResponse) -> Vec<(String, usize)> {
    let mut v: Vec<_> = md
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions.len()))
        .collect();
    v.sort();
    v
}

#[test]
fn topics_survive_a_graceful_restart_and_a_kill_9() {
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("alpha", 1);
    c.create_topic("beta", 3);
    c.create_topic("gamma.v2_x-y", 8);
    c.produce_ok("beta", 2, &common::batch_of_values(&[b"b2".to_vec()]));
    let before = topic_shapes(&metadata(&mut c));
    assert_eq!(
        before,
        vec![
            ("alpha".to_string(), 1),
            ("beta".to_string(), 3),
            ("gamma.v2_x-y".to_string(), 8)
        ]
    );
    drop(c);
    assert!(broker.terminate().success());

    let mut broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    let md = metadata(&mut c);
    assert_eq!(topic_shapes(&md), before, "topics after a graceful restart");
    let beta = md.topics.iter().find(|t| t.name == "beta").unwrap();
    let p2 = beta.partitions.iter().find(|p| p.partition == 2).unwrap();
    assert_eq!((p2.start_offset, p2.end_offset), (0, 1));
    assert_eq!(c.fetch_records("beta", 2, 0)[0].value, b"b2");

    // A topic whose creation was acknowledged survives a kill -9 at once.
    c.create_topic("delta", 2);
    drop(c);
    broker.kill9();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    let mut want = before.clone();
    want.push(("delta".to_string(), 2));
    want.sort();
    assert_eq!(
        topic_shapes(&metadata(&mut c)),
        want,
        "topics after kill -9"
    );
    assert_eq!(
        c.produce_ok("delta", 1, &common::batch_of_values(&[b"d".to_vec()])),
        0
    );
}

#[test]
fn a_long_poll_at_the_end_returns_a_message_produced_while_it_waits() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    let mut c = RawConn::connect(addr);
    c.create_topic("t", 1);
    c.produce_ok("t", 0, &common::batch_of_values(&[b"old".to_vec()]));
    let (elapsed, records) = bounded(Duration::from_secs(30), "long poll", move || {
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut p = RawConn::connect(addr);
            p.produce_ok("t", 0, &common::batch_of_values(&[b"new".to_vec()]))
        });
        let mut consumer = RawConn::connect(addr);
        let t0 = Instant::now();
        let r = consumer
            .fetch(&FetchRequest {
                topic: "t",
                partition: 0,
                offset: 1,
                max_bytes: 1 << 20,
                max_wait_ms: 10_000,
                min_bytes: 1,
            })
            .ok();
        let elapsed = t0.elapsed();
        let f = FetchResponse::decode(&r.body).expect("decode fetch");
        let records = common::decode_fetched(f.batches, 1);
        assert_eq!(producer.join().expect("producer"), 1);
        (elapsed, records)
    });
    assert_eq!(records.len(), 1, "the new message, and only it");
    assert_eq!(
        (records[0].offset, records[0].value.as_slice()),
        (1, &b"new"[..])
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "the fetch waited for the message ({elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the fetch returned when the message came, not at max_wait ({elapsed:?})"
    );
}

#[test]
fn a_long_poll_without_data_returns_empty_after_max_wait() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    let mut c = RawConn::connect(addr);
    c.create_topic("t", 1);
    let (elapsed, f_hw, empty) = bounded(Duration::from_secs(30), "long poll", move || {
        let t0 = Instant::now();
        let r = c
            .fetch(&FetchRequest {
                topic: "t",
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
                min_bytes: 1,
            })
            .ok();
        let elapsed = t0.elapsed();
        let f = FetchResponse::decode(&r.body).expect("decode fetch");
        (elapsed, f.high_watermark, f.batches.is_empty())
    });
    assert!(empty, "no batches");
    assert_eq!(f_hw, 0);
    assert!(
        elapsed >= Duration::from_millis(450),
        "the fetch waited about max_wait ({elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the fetch returned soon after max_wait ({elapsed:?})"
    );
}

/// Asserts that `hutong ARGS` exits non-zero with `hutong:` and each of
/// `words` (case-insensitive) on stderr.
fn assert_refuses_to_start(dir: &TestDir, args: &[&str], words: &[&str]) {
    let (status, stderr) = common::run_expecting_exit(args, &dir.tmp.path().join("refused.log"));
    assert!(!status.success(), "`hutong {}` must fail", args.join(" "));
    let lower = stderr.to_lowercase();
    assert!(lower.contains("hutong:"), "stderr: {stderr:?}");
    for w in words {
        assert!(lower.contains(w), "stderr mentions {w:?}: {stderr:?}");
    }
}

#[test]
fn the_broker_refuses_to_start_on_a_bad_config_or_a_busy_address() {
    let dir = TestDir::new();
    let data = dir.data.to_string_lossy().into_owned();
    let unknown = dir.config("no_such_setting = 1\n");
    let unknown = unknown.to_string_lossy().into_owned();
    assert_refuses_to_start(
        &dir,
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--config",
            &unknown,
        ],
        &["no_such_setting"],
    );
    let invalid = dir.config("segment_bytes = 1024\n");
    let invalid = invalid.to_string_lossy().into_owned();
    assert_refuses_to_start(
        &dir,
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--config",
            &invalid,
        ],
        &["segment_bytes"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().unwrap().to_string();
    assert_refuses_to_start(
        &dir,
        &["broker", "--listen", &taken, "--data-dir", &data],
        &[&taken],
    );
    // None of the failures left the directory unusable.
    let broker = BrokerProc::start(&dir.data, &[]);
    assert_broker_serves(broker.addr());
}

#[test]
fn a_stray_seg_file_makes_the_broker_refuse_to_start_without_touching_it() {
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    assert_broker_serves(broker.addr());
    assert!(broker.terminate().success());
    let stray = dir.data.join("not-a-segment.seg");
    std::fs::write(&stray, b"who wrote this?").unwrap();
    let (status, stderr) = run_broker_expecting_exit(&dir.data, &[]);
    assert!(
        !status.success(),
        "the broker must refuse a stray .seg file"
    );
    assert!(
        stderr.contains("not-a-segment.seg"),
        "stderr names the file: {stderr:?}"
    );
    assert_eq!(std::fs::read(&stray).unwrap(), b"who wrote this?");
    std::fs::remove_file(&stray).unwrap();
    let broker = BrokerProc::start(&dir.data, &[]);
    assert_broker_serves(broker.addr());
}

#[test]
fn a_startup_error_is_printed_once() {
    let dir = TestDir::new();
    let first = BrokerProc::start(&dir.data, &[]);
    let (status, stderr) = run_broker_expecting_exit(&dir.data, &[]);
    assert!(!status.success());
    let line = stderr
        .lines()
        .find(|l| l.starts_with("hutong: "))
        .unwrap_or_else(|| panic!("a `hutong: <error>` line: {stderr:?}"));
    assert_eq!(
        line.matches("is locked by another hutong broker").count(),
        1,
        "docs/cli.md: one line `hutong: <error>`; got {line:?}"
    );
    drop(first);
}

/// Review finding 11: at shutdown the broker half-closes each connection
/// and reads (and discards) what the client still sends until the client
/// closes, so the answers it wrote are not destroyed by a reset sent over
/// unread input.
#[test]
fn shutdown_ends_a_busy_connection_with_a_clean_close_not_a_reset() {
    const PINGS: usize = 100_000;
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    let mut conn = RawConn::connect(broker.addr());
    let mut out = conn.stream.try_clone().expect("clone socket");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // A client that sends far more than the broker will read before it
    // stops, and reads nothing until the broker is shutting down: the
    // broker's socket then holds unread input when it closes.
    let writer = std::thread::spawn({
        let sent = sent.clone();
        move || {
            let frame = RawConn::frame(ApiKey::Ping.as_u16(), 1, 9, |o| {
                o.extend_from_slice(&[7u8; 512])
            })
            .repeat(64);
            for _ in 0..PINGS / 64 {
                if let Err(e) = out.write_all(&frame) {
                    return Some(e.kind());
                }
                sent.fetch_add(frame.len(), std::sync::atomic::Ordering::Release);
            }
            None
        }
    });
    common::wait_until(Duration::from_secs(20), "the client to send 1 MB", || {
        sent.load(std::sync::atomic::Ordering::Acquire) >= 1 << 20
    });
    broker.send_signal(Signal::SIGTERM);
    common::wait_until(
        Duration::from_secs(20),
        "the broker to log the signal",
        || broker.stderr().contains("shutting down"),
    );
    let (end, answers) = bounded(Duration::from_secs(60), "reading the answers", move || {
        let mut answers = 0usize;
        let end = loop {
            match conn.read_response() {
                Ok(r) => {
                    assert_eq!(r.code(), ErrorCode::None);
                    answers += 1;
                }
                Err(e) => break e.kind(),
            }
        };
        (end, answers)
    });
    let status = broker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let write_error = writer.join().expect("writer thread");
    assert!(answers > 0);
    // A reset is seen by whichever thread touches the socket first; it
    // also destroys answers the broker had written but not yet sent.
    assert_ne!(
        write_error,
        Some(std::io::ErrorKind::ConnectionReset),
        "the broker reset the connection"
    );
    assert_eq!(
        end,
        std::io::ErrorKind::UnexpectedEof,
        "after {answers} answers the connection must end with the broker's FIN, not a reset"
    );
}
