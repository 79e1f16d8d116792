//! Full duplex: many requests in flight on one connection, each answered
//! once under its own correlation id, in the order the broker appended them.

mod common;

use common::{bounded, read_partition, BrokerProc, RawConn, TestDir};
use hutong::client::connection::ConnectionConfig;
use hutong::client::Connection;
use hutong::wire::api::{ProduceRequest, ProduceResponse};
use hutong::wire::batch::BatchBuilder;
use hutong::wire::{ApiKey, ErrorCode, Qos};
use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

const REQUESTS: u32 = 10_000;

fn one_record_batch(b: &mut BatchBuilder, i: u32) -> &[u8] {
    b.clear();
    b.push(common::now_ms(), b"", format!("m{i}").as_bytes(), &[]);
    b.finish(0, 0)
}

#[test]
fn ten_thousand_requests_in_flight_on_one_client_connection_all_get_their_answer() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    RawConn::connect(addr).create_topic("t", 1);
    bounded(Duration::from_secs(60), "pipelined client", move || {
        let conn = Connection::connect_with(
            addr,
            &ConnectionConfig {
                in_flight_max: 2 * REQUESTS as usize,
                ..ConnectionConfig::default()
            },
        )
        .expect("connect");
        let mut b = BatchBuilder::new();
        let mut tickets = Vec::with_capacity(REQUESTS as usize);
        // Every request is sent before any answer is waited for.
        for i in 0..REQUESTS {
            let batch = one_record_batch(&mut b, i);
            let ticket = conn
                .send(ApiKey::Produce, |out| {
                    ProduceRequest {
                        topic: "t",
                        partition: 0,
                        qos: Qos::All as u8,
                        timeout_ms: 30_000,
                        batch,
                    }
                    .encode(out)
                })
                .expect("send");
            tickets.push(ticket);
        }
        let mut ids = HashSet::new();
        for (i, ticket) in tickets.into_iter().enumerate() {
            let id = ticket.correlation_id();
            assert!(ids.insert(id), "correlation id {id} used twice");
            let r = ticket.wait().expect("answer");
            assert_eq!(r.header.correlation_id, id);
            assert_eq!(r.header.api_key, ApiKey::Produce.as_u16());
            assert_eq!(
                r.header.error_code,
                ErrorCode::None.as_u16(),
                "request {i} failed"
            );
            let ack = ProduceResponse::decode(&r.body).expect("decode");
            assert_eq!(
                ack.base_offset, i as u64,
                "request {i} was appended in send order"
            );
        }
    });
    let stored = read_partition(addr, "t", 0);
    assert_eq!(stored.len(), REQUESTS as usize);
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.value, format!("m{i}").as_bytes());
    }
}

#[test]
fn ten_thousand_raw_pipelined_requests_echo_arbitrary_correlation_ids() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    let mut conn = RawConn::connect(addr);
    conn.create_topic("t", 1);
    // Correlation ids the broker cannot guess: scattered, not sequential.
    let id_of = |i: u32| i.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995;
    let mut frames = Vec::new();
    let mut b = BatchBuilder::new();
    for i in 0..REQUESTS {
        let batch = one_record_batch(&mut b, i);
        frames.extend_from_slice(&RawConn::frame(
            ApiKey::Produce.as_u16(),
            1,
            id_of(i),
            |out| {
                ProduceRequest {
                    topic: "t",
                    partition: 0,
                    qos: Qos::Received as u8,
                    timeout_ms: 30_000,
                    batch,
                }
                .encode(out)
            },
        ));
    }
    let mut writer = conn.stream.try_clone().expect("clone socket");
    // One write of every frame, while the answers are read beside it.
    let writer = std::thread::spawn(move || writer.write_all(&frames));
    let base_by_id = bounded(Duration::from_secs(60), "raw pipelined reader", move || {
        let mut base_by_id = std::collections::HashMap::new();
        for _ in 0..REQUESTS {
            let r = conn.read_response().expect("an answer for every request");
            assert_eq!(r.header.api_key, ApiKey::Produce.as_u16());
            let r = r.ok();
            let ack = ProduceResponse::decode(&r.body).expect("decode");
            assert!(
                base_by_id
                    .insert(r.header.correlation_id, ack.base_offset)
                    .is_none(),
                "two answers for one correlation id"
            );
        }
        base_by_id
    });
    writer.join().expect("writer").expect("write every frame");
    for i in 0..REQUESTS {
        assert_eq!(
            base_by_id.get(&id_of(i)),
            Some(&(i as u64)),
            "request {i} is answered under its id with its offset"
        );
    }
}

#[test]
fn concurrent_producers_on_many_connections_each_keep_their_own_order() {
    const PRODUCERS: u64 = 12;
    const BATCHES: u64 = 200;
    const PER_BATCH: u64 = 10;
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    RawConn::connect(addr).create_topic("t", 2);
    let value = |producer: u64, seq: u64| format!("p{producer}-s{seq:06}").into_bytes();
    let acks = bounded(Duration::from_secs(60), "concurrent producers", move || {
        let threads: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                std::thread::spawn(move || {
                    let p = hutong::client::Producer::connect(
                        addr,
                        hutong::client::ProducerConfig {
                            max_in_flight: 16,
                            ..Default::default()
                        },
                    )
                    .expect("connect");
                    let partition = (producer % 2) as u32;
                    let receipts: Vec<_> = (0..BATCHES)
                        .map(|b| {
                            let values: Vec<Vec<u8>> = (b * PER_BATCH..(b + 1) * PER_BATCH)
                                .map(|seq| value(producer, seq))
                                .collect();
                            let records: Vec<(&[u8], &[u8])> =
                                values.iter().map(|v| (&b""[..], v.as_slice())).collect();
                            p.send_records("t", partition, &records).expect("send")
                        })
                        .collect();
                    receipts
                        .into_iter()
                        .map(|r| r.wait().expect("ack").base_offset)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("producer thread"))
            .collect::<Vec<_>>()
    });
    let parts = [read_partition(addr, "t", 0), read_partition(addr, "t", 1)];
    for (partition, stored) in parts.iter().enumerate() {
        let producers = PRODUCERS / 2;
        assert_eq!(
            stored.len() as u64,
            producers * BATCHES * PER_BATCH,
            "t/{partition} holds every message once"
        );
    }
    for producer in 0..PRODUCERS {
        let stored = &parts[(producer % 2) as usize];
        let mine: Vec<&[u8]> = stored
            .iter()
            .map(|r| r.value.as_slice())
            .filter(|v| v.starts_with(format!("p{producer}-").as_bytes()))
            .collect();
        let want: Vec<Vec<u8>> = (0..BATCHES * PER_BATCH)
            .map(|seq| value(producer, seq))
            .collect();
        assert!(
            mine.len() == want.len() && mine.iter().zip(&want).all(|(a, b)| *a == b.as_slice()),
            "producer {producer}: its messages are stored once each, in its send order"
        );
        // Each acknowledged base offset points at that batch's first record.
        for (b, base) in acks[producer as usize].iter().enumerate() {
            assert_eq!(
                stored[*base as usize].value,
                value(producer, b as u64 * PER_BATCH),
                "producer {producer} batch {b}: the ack names where it is stored"
            );
        }
    }
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc status");
    kb * 1024
}

#[test]
fn a_client_that_never_reads_stalls_only_itself_and_memory_stays_bounded() {
    const PING_BYTES: usize = 60 * 1024;
    const PINGS: usize = 3500; // about 210 MB of answers if the broker took them all
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    let mut good = RawConn::connect(addr);
    good.create_topic("t", 1);
    let rss_before = rss_bytes(broker.pid());
    let stalled = RawConn::connect(addr);
    let mut w = stalled.stream.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let writer = std::thread::spawn(move || {
        let frame = RawConn::frame(ApiKey::Ping.as_u16(), 1, 9, |out| {
            out.resize(out.len() + PING_BYTES, 0xab)
        });
        let mut written = 0usize;
        for _ in 0..PINGS {
            if w.write_all(&frame).is_err() {
                break;
            }
            written += frame.len();
        }
        written
    });
    // While that connection is stuck, everyone else is served.
    for i in 0..20u64 {
        assert_eq!(
            good.produce_ok("t", 0, &common::batch_of_values(&[b"x".to_vec()])),
            i
        );
        assert_eq!(good.ping(b"fine"), b"fine");
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = bounded(Duration::from_secs(30), "stalled writer", move || {
        writer.join().expect("writer")
    });
    let growth = rss_bytes(broker.pid()).saturating_sub(rss_before);
    eprintln!(
        "stalled client wrote {} MiB before the broker stopped reading; broker RSS grew {} MiB",
        written >> 20,
        growth >> 20
    );
    assert!(
        written < PINGS * PING_BYTES / 2,
        "the broker stopped reading a client that never reads ({written} bytes taken)"
    );
    assert!(
        growth < 100 << 20,
        "the broker's memory stays bounded (grew {growth} bytes)"
    );
    drop(stalled);
    common::assert_broker_serves(addr);
}

/// Fetch answers of 1 MiB, several in flight on one connection that the
/// client does not read for a while: the broker's socket buffer fills, so
/// an answer is partly written straight from the broker's ring and the rest
/// later from its write buffer (docs/architecture.md, "Rings"). Every
/// answer must arrive whole, once, byte for byte.
#[test]
fn large_fetch_answers_pipelined_to_a_slow_reader_arrive_whole() {
    use hutong::wire::api::{FetchRequest, FetchResponse};
    const VALUE_BYTES: usize = 4000;
    const RECORDS_PER_BATCH: u64 = 64;
    const BATCHES: u64 = 16;
    let value_of = |offset: u64| vec![(offset % 251) as u8; VALUE_BYTES];
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    let mut c = RawConn::connect(addr);
    fill_topic(&mut c, "big", BATCHES, RECORDS_PER_BATCH, value_of);
    bounded(Duration::from_secs(60), "slow reader", move || {
        let records = BATCHES * RECORDS_PER_BATCH;
        let offsets: Vec<u64> = (0..8).map(|i| (i * records / 4) % records).collect();
        let mut wanted = std::collections::HashMap::new();
        for &offset in &offsets {
            let id = c.send(ApiKey::Fetch, |out| {
                FetchRequest {
                    topic: "big",
                    partition: 0,
                    offset,
                    max_bytes: 1 << 20,
                    max_wait_ms: 0,
                    min_bytes: 0,
                }
                .encode(out)
            });
            wanted.insert(id, offset);
        }
        let ping = c.send(ApiKey::Ping, |_| {});
        // Not read yet: the answers pile up in the broker's socket buffer.
        std::thread::sleep(Duration::from_millis(300));
        let mut ping_seen = false;
        for _ in 0..=offsets.len() {
            let r = c.read_response().expect("an answer").ok();
            let id = r.header.correlation_id;
            if id == ping {
                assert!(!ping_seen, "the Ping answered twice");
                ping_seen = true;
                continue;
            }
            let offset = wanted.remove(&id).expect("an answer to a fetch sent, once");
            let f = FetchResponse::decode(&r.body).expect("a whole fetch answer");
            let fetched = common::decode_fetched(f.batches, offset);
            assert!(
                fetched.len() >= 200,
                "about 1 MiB from {offset}: {}",
                fetched.len()
            );
            check_fetched(&fetched, offset, value_of);
        }
        assert!(ping_seen && wanted.is_empty());
    });
}

/// Fetch answers of a few hundred KiB read back one after the other by a
/// client that keeps up: each goes from the broker's fetch ring straight to
/// the socket, and every few answers one wraps around the ring's end, so it
/// leaves in two parts (docs/architecture.md, "Rings"). Every byte must
/// arrive, in order.
#[test]
fn large_fetch_answers_that_wrap_around_the_fetch_ring_arrive_whole() {
    use hutong::wire::api::{FetchRequest, FetchResponse};
    const VALUE_BYTES: usize = 3000;
    const RECORDS_PER_BATCH: u64 = 50;
    const BATCHES: u64 = 40;
    let value_of = |offset: u64| vec![(offset % 241) as u8; VALUE_BYTES];
    let dir = TestDir::new();
    // A fetch ring of 1 MiB (the smallest these limits allow), so that the
    // answers below wrap around its end many times.
    let config = dir
        .config("batch_bytes_max = 262144\nfetch_bytes_max = 524288\nfetch_ring_bytes = 1048576\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let addr = broker.addr();
    let mut c = RawConn::connect(addr);
    fill_topic(&mut c, "wrap", BATCHES, RECORDS_PER_BATCH, value_of);
    bounded(Duration::from_secs(60), "wrapping fetches", move || {
        let records = BATCHES * RECORDS_PER_BATCH;
        // About 450 KiB per answer (three batches), read 40 times over a
        // 1 MiB ring: most answers straddle its end.
        let mut offset = 0;
        for _ in 0..40 {
            let id = c.send(ApiKey::Fetch, |out| {
                FetchRequest {
                    topic: "wrap",
                    partition: 0,
                    offset,
                    max_bytes: 400 * 1024,
                    max_wait_ms: 0,
                    min_bytes: 0,
                }
                .encode(out)
            });
            let r = c.read_response().expect("an answer").ok();
            assert_eq!(r.header.correlation_id, id);
            let f = FetchResponse::decode(&r.body).expect("a whole fetch answer");
            let fetched = common::decode_fetched(f.batches, offset);
            assert!(fetched.len() >= 100, "answers of several batches");
            check_fetched(&fetched, offset, value_of);
            offset = (offset + fetched.len() as u64) % (records - 3 * RECORDS_PER_BATCH);
        }
    });
}

/// Creates `topic` with one partition and fills it with `batches` batches
/// of `per_batch` records, record `o` holding `value_of(o)`.
fn fill_topic(
    c: &mut RawConn,
    topic: &str,
    batches: u64,
    per_batch: u64,
    value_of: impl Fn(u64) -> Vec<u8>,
) {
    c.create_topic(topic, 1);
    for b in 0..batches {
        let values: Vec<Vec<u8>> = (0..per_batch)
            .map(|i| value_of(b * per_batch + i))
            .collect();
        c.produce_ok(topic, 0, &common::batch_of_values(&values));
    }
}

/// Checks that fetched records run from `offset` on, each holding
/// `value_of(its offset)`.
fn check_fetched(fetched: &[common::Fetched], offset: u64, value_of: impl Fn(u64) -> Vec<u8>) {
    for (i, rec) in fetched.iter().enumerate() {
        assert_eq!(rec.offset, offset + i as u64);
        assert!(
            rec.value == value_of(rec.offset),
            "record {} intact",
            rec.offset
        );
    }
}
