//! Replication and leadership, black-box: clusters of real brokers on
//! 127.0.0.1 (see `common::cluster`), faults by `kill -9`, SIGSTOP and
//! proxies that cut replication links, and checks that nothing
//! acknowledged at QoS all is lost or duplicated, that followers refuse
//! writes, and that every node ends with the same committed journal.
//!
//! Measured things (failover time, acknowledgement rate during a freeze)
//! are printed with `eprintln!` (see them with `--nocapture`), never
//! asserted as timings.

mod common;

use common::cluster::{journal_prefix, Cluster, ClusterStatus};
use common::proxy::Proxy;
use common::{bounded, lock, payload, read_partition, wait_until, Fetched, RawConn};
use hutong::client::{Producer, ProducerConfig, RetryConfig};
use hutong::wire::api::ClusterRole;
use hutong::wire::{ErrorCode, Qos};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TOPIC: &str = "repl";
/// The tag of every message value the producer streams send.
const TAG: &str = "repl";
/// Receipts a stream keeps in flight before it waits for the oldest.
const WINDOW: usize = 64;
/// How long a broker may take to reach QoS all before it answers Timeout.
const PRODUCE_TIMEOUT_MS: u32 = 5_000;

/// The value of message `seq`: `repl-SEQ-` then bytes derived from `seq`.
fn value(seq: u64) -> Vec<u8> {
    payload(TAG, seq)
}

/// The sequence number a stream value carries, when it is one.
fn seq_of(value: &[u8]) -> Option<u64> {
    let rest = value.strip_prefix(format!("{TAG}-").as_bytes())?;
    std::str::from_utf8(rest.get(..8)?).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------
// A producer stream: batches of consecutive sequence numbers at QoS all
// ---------------------------------------------------------------------------

/// One acknowledged batch of a stream.
#[derive(Debug, Clone, Copy)]
struct Ack {
    /// The batch number; it holds messages `batch * per_batch ..`.
    batch: u64,
    /// Where the broker says its first message is.
    base_offset: u64,
    /// When the stream saw the acknowledgement.
    at: Instant,
}

/// What a finished stream reports.
#[derive(Debug)]
struct StreamReport {
    acks: Vec<Ack>,
    /// Batches sent.
    sent: u64,
    /// Receipts that failed, with the first few errors.
    failed: u64,
    errors: Vec<String>,
}

/// A thread that sends batches of `per_batch` messages at QoS all with a
/// retrying producer connected to every node, until it sent `batches_max`
/// or is told to stop.
struct Stream {
    stop: Arc<AtomicBool>,
    acked_batches: Arc<AtomicU64>,
    acks: Arc<Mutex<Vec<Ack>>>,
    thread: Option<JoinHandle<StreamReport>>,
    per_batch: u64,
}

impl Stream {
    /// Sends at most `batches_per_s` batches a second, so that a run of
    /// a few seconds writes megabytes, not gigabytes, on a fast broker.
    fn start(
        addrs: Vec<SocketAddr>,
        per_batch: u64,
        batches_max: u64,
        batches_per_s: u64,
    ) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_batches = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::Builder::new()
            .name("repl-producer".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let acked_batches = Arc::clone(&acked_batches);
                let acks = Arc::clone(&acks);
                move || {
                    let pace = Pace {
                        batches_max,
                        batches_per_s,
                    };
                    stream(&addrs, per_batch, pace, &stop, &acked_batches, &acks)
                }
            })
            .expect("spawn producer thread");
        Stream {
            stop,
            acked_batches,
            acks,
            thread: Some(thread),
            per_batch,
        }
    }

    /// Batches acknowledged so far.
    fn acked(&self) -> u64 {
        self.acked_batches.load(Ordering::SeqCst)
    }

    /// Acknowledgements seen after `t`.
    fn acked_after(&self, t: Instant) -> usize {
        lock(&self.acks).iter().filter(|a| a.at > t).count()
    }

    /// Waits up to `limit` for `n` acknowledged batches.
    ///
    /// # Panics
    /// When they do not come, with the count and the cluster's state.
    fn wait_acked(&self, n: u64, limit: Duration, cluster: &Cluster) {
        let deadline = Instant::now() + limit;
        while self.acked() < n {
            assert!(
                Instant::now() < deadline && !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "{} of {n} batches acknowledged after {limit:?} (stream ended: {})\n{}",
                self.acked(),
                self.thread.as_ref().is_some_and(|t| t.is_finished()),
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops sending (when not done yet) and waits, bounded, for the last
    /// receipts.
    fn finish(mut self, limit: Duration) -> StreamReport {
        self.stop.store(true, Ordering::SeqCst);
        self.join(limit)
    }

    /// As [`Stream::join`], but first waits (bounded) for the stream to end
    /// while printing its progress and the cluster's state every few
    /// seconds, so that a stuck stream explains itself.
    fn join_or_explain(&mut self, limit: Duration, cluster: &Cluster) -> StreamReport {
        let deadline = Instant::now() + limit;
        let mut next_report = Instant::now() + Duration::from_secs(5);
        while !self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            if Instant::now() >= deadline {
                panic!(
                    "the producer stream did not finish within {limit:?}: {} batches \
                     acknowledged\n{}",
                    self.acked(),
                    cluster.describe()
                );
            }
            if Instant::now() >= next_report {
                eprintln!(
                    "stream: {} batches acknowledged so far\n{}",
                    self.acked(),
                    cluster.describe()
                );
                next_report += Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.join(Duration::from_secs(5))
    }

    /// Waits, bounded, for the stream to send everything it was to send.
    fn join(&mut self, limit: Duration) -> StreamReport {
        let t = self.thread.take().expect("stream joined once");
        let report = bounded(limit, "the producer stream", move || {
            t.join().expect("producer thread")
        });
        eprintln!(
            "stream: {} batches of {} sent, {} acknowledged, {} failed {:?}",
            report.sent,
            self.per_batch,
            report.acks.len(),
            report.failed,
            report.errors
        );
        report
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How much and how fast a stream sends.
struct Pace {
    batches_max: u64,
    batches_per_s: u64,
}

fn stream(
    addrs: &[SocketAddr],
    per_batch: u64,
    pace: Pace,
    stop: &AtomicBool,
    acked_batches: &AtomicU64,
    acks: &Mutex<Vec<Ack>>,
) -> StreamReport {
    let producer = Producer::connect(
        addrs,
        ProducerConfig {
            qos: Qos::All,
            timeout_ms: PRODUCE_TIMEOUT_MS,
            retry: RetryConfig {
                deadline_ms: 30_000,
                ..RetryConfig::default()
            },
            ..ProducerConfig::default()
        },
    )
    .expect("producer connects to the cluster");
    let mut report = StreamReport {
        acks: Vec::new(),
        sent: 0,
        failed: 0,
        errors: Vec::new(),
    };
    let mut window = VecDeque::with_capacity(WINDOW);
    let settle =
        |(batch, receipt): (u64, hutong::client::Receipt), report: &mut StreamReport| match receipt
            .wait()
        {
            Ok(ack) => {
                lock(acks).push(Ack {
                    batch,
                    base_offset: ack.base_offset,
                    at: Instant::now(),
                });
                acked_batches.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                report.failed += 1;
                if report.errors.len() < 5 {
                    report.errors.push(format!("batch {batch}: {e}"));
                }
            }
        };
    let mut batch = 0;
    let started = Instant::now();
    while batch < pace.batches_max && !stop.load(Ordering::SeqCst) {
        let due = started + Duration::from_secs_f64(batch as f64 / pace.batches_per_s as f64);
        if let Some(early) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(early);
        }
        let values: Vec<Vec<u8>> = (batch * per_batch..(batch + 1) * per_batch)
            .map(value)
            .collect();
        let records: Vec<(&[u8], &[u8])> = values.iter().map(|v| (&b""[..], &v[..])).collect();
        match producer.send_records(TOPIC, 0, &records) {
            Ok(receipt) => window.push_back((batch, receipt)),
            Err(e) => {
                report.errors.push(format!("send of batch {batch}: {e}"));
                break;
            }
        }
        batch += 1;
        report.sent = batch;
        if window.len() >= WINDOW {
            settle(window.pop_front().expect("a full window"), &mut report);
        }
    }
    for w in window {
        settle(w, &mut report);
    }
    report.acks = lock(acks).clone();
    report
}

/// Checks a partition's records against a stream: every record is a
/// stream message with its exact bytes, sequence numbers strictly increase
/// (no duplicate, no reordering), and every acknowledged batch sits at the
/// offsets it was acknowledged with.
fn check_stream(node: &str, records: &[Fetched], acks: &[Ack], per_batch: u64) {
    let mut last: Option<u64> = None;
    for r in records {
        let seq = seq_of(&r.value).unwrap_or_else(|| {
            panic!(
                "{node}: {TOPIC}/0@{} holds {:?}, not a stream message",
                r.offset,
                String::from_utf8_lossy(&r.value[..r.value.len().min(24)])
            )
        });
        assert!(
            r.value == value(seq),
            "{node}: {TOPIC}/0@{} holds other bytes than message {seq}",
            r.offset
        );
        if let Some(prev) = last {
            assert!(
                seq > prev,
                "{node}: message {seq} at offset {} follows message {prev}: {}",
                r.offset,
                if seq == prev {
                    "a duplicate"
                } else {
                    "out of order"
                }
            );
        }
        last = Some(seq);
    }
    for a in acks {
        for i in 0..per_batch {
            let offset = a.base_offset + i;
            let want = a.batch * per_batch + i;
            let got = records.get(offset as usize).unwrap_or_else(|| {
                panic!(
                    "{node}: acknowledged message {want} (batch {}, offset {offset}) is gone; \
                     the partition holds {} records",
                    a.batch,
                    records.len()
                )
            });
            assert_eq!(
                seq_of(&got.value),
                Some(want),
                "{node}: offset {offset} was acknowledged for message {want}"
            );
        }
    }
}

/// Every node's client address, the leader's first: the producer connects
/// to the first that answers, and tries them in this order when it
/// reconnects.
fn leader_first(cluster: &Cluster, leader: usize) -> Vec<SocketAddr> {
    let mut addrs = vec![cluster.addr(leader)];
    addrs.extend(
        cluster
            .ids()
            .filter(|&i| i != leader)
            .map(|i| cluster.addr(i)),
    );
    addrs
}

/// Reads the whole partition from `addr` (bounded).
fn read_all(addr: SocketAddr) -> Vec<Fetched> {
    bounded(
        Duration::from_secs(60),
        "reading the partition",
        move || read_partition(addr, TOPIC, 0),
    )
}

/// The longest pause between two acknowledgements, and when it began.
fn longest_gap(acks: &[Ack]) -> (Duration, Option<Instant>) {
    let mut at: Vec<Instant> = acks.iter().map(|a| a.at).collect();
    at.sort();
    at.windows(2)
        .map(|w| (w[1] - w[0], Some(w[0])))
        .max_by_key(|(d, _)| *d)
        .unwrap_or((Duration::ZERO, None))
}

/// One value batch (no producer id) from a raw connection.
fn probe_batch(tag: &str) -> Vec<u8> {
    common::batch_of_values(&[payload(tag, 0)])
}

// ---------------------------------------------------------------------------
// The proxy the fault tests rely on
// ---------------------------------------------------------------------------

/// An echo server for the proxy test: one thread per connection, each
/// counting itself closed when its peer ends the connection.
struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let closed = Arc::clone(&closed);
            move || {
                let mut echoes = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let closed = Arc::clone(&closed);
                    echoes.push(std::thread::spawn(move || {
                        let mut buf = [0u8; 8192];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        closed.fetch_add(1, Ordering::SeqCst);
                    }));
                }
                for e in echoes {
                    let _ = e.join();
                }
            }
        });
        EchoServer {
            addr,
            stop,
            closed,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Writes `data` from a second thread while reading the echo here, so a
/// large payload cannot deadlock on full socket buffers.
fn echo_round_trip(s: &TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let data_w = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&data_w));
    let mut got = vec![0u8; data.len()];
    (&*s).read_exact(&mut got).expect("read the echo");
    writer.join().unwrap().expect("write through the proxy");
    got
}

/// True when the peer closed `s` (EOF or reset) within its read timeout.
fn sees_close(s: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn proxy_forwards_bytes_cuts_both_ways_and_heals() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(echo.addr);
    assert_eq!(proxy.target(), echo.addr);

    // Bytes pass through unchanged, both ways, small and large.
    let a = connect(proxy.addr());
    assert_eq!(echo_round_trip(&a, b"hello"), b"hello");
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    assert!(
        echo_round_trip(&a, &big) == big,
        "3 MiB pass through intact"
    );
    assert_eq!(proxy.live(), 1);

    // A cut closes the connection on both sides.
    proxy.cut();
    assert!(proxy.is_cut());
    assert!(sees_close(&a), "the client side sees the cut");
    wait_until(
        Duration::from_secs(5),
        "the server side sees the cut",
        || echo.closed.load(Ordering::SeqCst) == 1,
    );
    wait_until(Duration::from_secs(5), "no live link after the cut", || {
        proxy.live() == 0
    });

    // While cut, new connections are accepted and closed at once, and
    // never reach the target.
    let b = connect(proxy.addr());
    assert!(sees_close(&b), "a connection made while cut is closed");
    assert!(proxy.refused() >= 1);
    assert_eq!(proxy.forwarded(), 1, "nothing reaches the target while cut");

    // After a heal new connections work again.
    proxy.heal();
    let c = connect(proxy.addr());
    assert_eq!(echo_round_trip(&c, b"again"), b"again");
    assert_eq!(proxy.forwarded(), 2);

    // Dropping the proxy ends its connections and threads.
    bounded(Duration::from_secs(10), "dropping the proxy", move || {
        drop(proxy)
    });
    assert!(sees_close(&c), "dropping the proxy closes its connections");
}

// ---------------------------------------------------------------------------
// Leadership basics
// ---------------------------------------------------------------------------

#[test]
fn cluster_status_names_one_leader_and_all_nodes() {
    let cluster = Cluster::start(3, false);
    cluster.expect_leader();
    for asked in cluster.ids() {
        // Right after an election a follower may not know the leader yet,
        // and on a loaded machine an election may be under way: take the
        // first settled view (bounded), then check it field by field.
        let settled = |s: &ClusterStatus| {
            s.leader.is_some()
                && s.nodes.iter().filter(|n| n.role == "leader").count() == 1
                && s.nodes.iter().all(|n| n.term == s.term)
        };
        let mut s = cluster.status(asked);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !settled(&s) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            s = cluster.status(asked);
        }
        let leader = cluster.expect_leader().0;
        eprintln!("status via node {asked}: {}", s.text.trim());
        assert_eq!(
            s.leader,
            Some(leader as u64),
            "node {asked} names the leader"
        );
        let mut ids: Vec<u64> = s.nodes.iter().map(|n| n.id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3], "node {asked} lists every node once");
        for n in s.json.get("nodes").and_then(|v| v.as_array()).unwrap() {
            for field in [
                "id",
                "addr",
                "role",
                "term",
                "written",
                "flushed",
                "replicated",
                "committed",
            ] {
                assert!(n.get(field).is_some(), "node entry {n:?} has `{field}`");
            }
        }
        let leaders: Vec<u64> = s
            .nodes
            .iter()
            .filter(|n| n.role == "leader")
            .map(|n| n.id)
            .collect();
        assert_eq!(leaders, vec![leader as u64], "exactly one node leads");
        for n in &s.nodes {
            assert_eq!(
                n.addr,
                cluster.addr(n.id as usize).to_string(),
                "node {} is listed with its address",
                n.id
            );
            assert!(
                n.role == "leader" || n.role == "follower",
                "a settled cluster has only a leader and followers, not {:?}",
                n.role
            );
            assert_eq!(n.term, s.term, "node {} is in the cluster's term", n.id);
            assert!(
                n.committed <= n.flushed && n.flushed <= n.written,
                "node {}: C <= F <= W",
                n.id
            );
        }
        assert!(s.term >= 1, "an elected leader has a term of at least 1");
    }
}

#[test]
fn produce_to_follower_gets_not_leader() {
    let cluster = Cluster::start(3, false);
    cluster.create_topic(TOPIC, 1);
    let (leader, leader_addr) = cluster.expect_leader();
    for f in cluster.ids().filter(|&i| i != leader) {
        let r = RawConn::connect(cluster.addr(f)).produce(
            TOPIC,
            0,
            Qos::All as u8,
            PRODUCE_TIMEOUT_MS,
            &probe_batch(&format!("follower-{f}")),
        );
        r.expect_error(ErrorCode::NotLeader);
        eprintln!("node {f} answers a produce with NotLeader: {}", r.message());
    }
    // The leader takes the write, and only its write reaches the partition.
    let base = RawConn::connect(leader_addr).produce_ok(TOPIC, 0, &probe_batch("leader"));
    assert_eq!(base, 0, "nothing a follower refused was stored");
    for id in cluster.ids() {
        let addr = cluster.addr(id);
        wait_until(
            Duration::from_secs(10),
            "the write reaches every node",
            || read_all(addr).len() == 1,
        );
        assert_eq!(read_all(addr)[0].value, payload("leader", 0), "node {id}");
    }
}

#[test]
fn create_topic_on_follower_gets_not_leader() {
    let cluster = Cluster::start(3, false);
    let (leader, leader_addr) = cluster.expect_leader();
    for f in cluster.ids().filter(|&i| i != leader) {
        let r = RawConn::connect(cluster.addr(f)).try_create_topic("made-on-a-follower", 1);
        r.expect_error(ErrorCode::NotLeader);
    }
    // The refused topic exists nowhere: the leader does not know it.
    let r = RawConn::connect(leader_addr).produce(
        "made-on-a-follower",
        0,
        Qos::All as u8,
        PRODUCE_TIMEOUT_MS,
        &probe_batch("x"),
    );
    r.expect_error(ErrorCode::UnknownTopic);
    // The same name created on the leader works.
    RawConn::connect(leader_addr).create_topic("made-on-a-follower", 1);
}

#[test]
fn followers_serve_committed_fetches() {
    let mut cluster = Cluster::start(3, false);
    cluster.create_topic(TOPIC, 1);
    let (leader, leader_addr) = cluster.expect_leader();
    let mut c = RawConn::connect(leader_addr);
    for seq in 0..50u64 {
        let base = c.produce_ok(TOPIC, 0, &common::batch_of_values(&[value(seq)]));
        assert_eq!(base, seq);
    }
    let on_leader = read_all(leader_addr);
    assert_eq!(on_leader.len(), 50);
    for f in cluster.ids().filter(|&i| i != leader) {
        let addr = cluster.addr(f);
        wait_until(
            Duration::from_secs(10),
            "followers learn the commit",
            || read_all(addr).len() == 50,
        );
        assert_eq!(
            read_all(addr),
            on_leader,
            "node {f} serves the leader's records"
        );
    }

    // A write a majority does not hold yet is invisible, even on the
    // leader: freeze both followers, write at QoS received, look.
    let followers: Vec<usize> = cluster.ids().filter(|&i| i != leader).collect();
    for &f in &followers {
        cluster.stop(f);
    }
    let r = c.produce(
        TOPIC,
        0,
        Qos::Received as u8,
        1_000,
        &probe_batch("uncommitted"),
    );
    let answered = r.code();
    let end_during = c.list_offsets(TOPIC, 0).latest;
    let visible_during = c.fetch_records(TOPIC, 0, 50);
    for &f in &followers {
        cluster.cont(f);
    }
    eprintln!("write with both followers frozen: {answered}");
    assert!(
        answered == ErrorCode::None || answered == ErrorCode::NotLeader,
        "a QoS received write is answered at once or refused, not {answered}"
    );
    assert_eq!(
        end_during, 50,
        "the leader does not offer an uncommitted write"
    );
    assert!(
        visible_during.is_empty(),
        "the leader served an uncommitted write: {visible_during:?}"
    );
    // Once thawed, every node agrees on the committed records.
    cluster.wait_caught_up(Duration::from_secs(30));
    let want = read_all(cluster.expect_leader().1);
    for id in cluster.ids() {
        assert_eq!(read_all(cluster.addr(id)), want, "node {id} after the thaw");
    }
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[test]
fn leader_kill_9_mid_stream_loses_no_acknowledged_message() {
    const PER_BATCH: u64 = 100;
    const BATCHES: u64 = 1_000;
    let mut cluster = Cluster::start(3, false);
    cluster.create_topic(TOPIC, 1);
    let (old, _) = cluster.expect_leader();

    let mut stream = Stream::start(leader_first(&cluster, old), PER_BATCH, BATCHES, 200);
    stream.wait_acked(BATCHES * 3 / 10, Duration::from_secs(60), &cluster);
    let killed_at = Instant::now();
    cluster.kill9(old);
    let acked_before = stream.acked();
    let (new, new_addr) = cluster
        .leader_within(Duration::from_secs(15), |id| id != old)
        .unwrap_or_else(|| panic!("no new leader after kill -9\n{}", cluster.describe()));
    let elected_after = killed_at.elapsed();
    eprintln!(
        "kill -9 of leader {old} after {acked_before} acknowledged batches; node {new} \
         reported leader after {elected_after:?}"
    );

    let report = stream.join_or_explain(Duration::from_secs(120), &cluster);
    let (gap, _) = longest_gap(&report.acks);
    let acked_after = report.acks.iter().filter(|a| a.at > killed_at).count();
    eprintln!(
        "longest pause between acknowledgements {gap:?}; {acked_after} batches acknowledged \
         after the kill"
    );
    assert!(
        acked_after > 0,
        "the producer continued against the new leader"
    );
    assert!(
        report.acks.iter().any(|a| a.batch == BATCHES - 1),
        "the producer reached its last batch; failures: {:?}",
        report.errors
    );

    let stored = read_all(new_addr);
    check_stream(
        &format!("new leader {new}"),
        &stored,
        &report.acks,
        PER_BATCH,
    );
    eprintln!(
        "new leader {new} holds {} messages, {} acknowledged",
        stored.len(),
        report.acks.len() as u64 * PER_BATCH
    );

    // The old leader comes back as a follower with the same journal.
    cluster.restart(old);
    let committed = cluster.wait_caught_up(Duration::from_secs(60));
    let payload_bytes: u64 = stored.iter().map(|r| r.value.len() as u64).sum();
    assert!(
        committed >= payload_bytes,
        "the committed position {committed} covers the {payload_bytes} payload bytes stored"
    );
    let reference = journal_prefix(cluster.data_dir(new), committed)
        .unwrap_or_else(|e| panic!("leader {new}: {e}"));
    for id in cluster.ids().filter(|&i| i != new) {
        let other = journal_prefix(cluster.data_dir(id), committed)
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        if let Some(at) = reference.iter().zip(&other).position(|(a, b)| a != b) {
            panic!(
                "node {id}'s journal differs from leader {new}'s at byte {at} of the {committed} \
                 committed"
            );
        }
    }
    eprintln!("all 3 journals are byte-identical over the {committed} committed bytes");
    assert_eq!(
        read_all(cluster.addr(old)),
        stored,
        "the restarted old leader serves the same records"
    );
}

#[test]
fn frozen_follower_does_not_stall_quorum_writes() {
    const PER_BATCH: u64 = 20;
    const FREEZE: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::start(3, false);
    cluster.create_topic(TOPIC, 1);
    let (leader, leader_addr) = cluster.expect_leader();
    let frozen = cluster.ids().find(|&i| i != leader).expect("a follower");

    let stream = Stream::start(leader_first(&cluster, leader), PER_BATCH, u64::MAX, 2_000);
    stream.wait_acked(50, Duration::from_secs(30), &cluster);
    let warm_start = Instant::now();
    let warm_acked = stream.acked();
    std::thread::sleep(Duration::from_secs(1));
    let warm_rate = (stream.acked() - warm_acked) as f64 / warm_start.elapsed().as_secs_f64();

    cluster.stop(frozen);
    let frozen_at = Instant::now();
    let before = stream.acked();
    std::thread::sleep(FREEZE);
    let during = stream.acked() - before;
    let frozen_for = frozen_at.elapsed();
    cluster.cont(frozen);
    let thawed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let report = stream.finish(Duration::from_secs(60));

    eprintln!(
        "follower {frozen} frozen for {frozen_for:?}: {during} batches of {PER_BATCH} \
         acknowledged meanwhile ({:.0} batches/s; {warm_rate:.0} batches/s before the freeze)",
        during as f64 / frozen_for.as_secs_f64()
    );
    assert!(
        during > 0,
        "acknowledgements continue with one follower frozen (leader {leader})"
    );

    let committed = cluster.wait_caught_up(Duration::from_secs(30));
    eprintln!(
        "follower {frozen} caught up to {committed} within {:?} of SIGCONT",
        thawed_at.elapsed()
    );
    let on_leader = read_all(leader_addr);
    check_stream("leader", &on_leader, &report.acks, PER_BATCH);
    assert_eq!(
        read_all(cluster.addr(frozen)),
        on_leader,
        "the thawed follower serves the leader's records"
    );
}

#[test]
fn isolated_leader_steps_down_and_loses_nothing_acknowledged() {
    const PER_BATCH: u64 = 20;
    let cluster = Cluster::start(3, true);
    cluster.create_topic(TOPIC, 1);
    let (old, old_addr) = cluster.expect_leader();

    let stream = Stream::start(leader_first(&cluster, old), PER_BATCH, u64::MAX, 2_000);
    stream.wait_acked(50, Duration::from_secs(30), &cluster);
    cluster.isolate(old);
    let isolated_at = Instant::now();

    // The cut-off leader cannot commit: a write to it directly is never
    // acknowledged at QoS all.
    let probe = bounded(Duration::from_secs(20), "a write to the isolated leader", {
        move || {
            RawConn::connect(old_addr)
                .produce(TOPIC, 0, Qos::All as u8, 2_000, &probe_batch("isolated"))
                .code()
        }
    });
    eprintln!("a QoS all write to the isolated leader {old}: {probe}");
    assert!(
        probe == ErrorCode::Timeout || probe == ErrorCode::NotLeader,
        "the isolated leader must not acknowledge a QoS all write, yet answered {probe}"
    );

    let (new, _) = cluster
        .leader_within(Duration::from_secs(15), |id| id != old)
        .unwrap_or_else(|| panic!("no new leader among the others\n{}", cluster.describe()));
    let elected_after = isolated_at.elapsed();
    // Check-quorum: a leader that hears from no majority steps down
    // within an election timeout or two.
    let old_view = || {
        cluster
            .node_status(old)
            .unwrap_or_else(|| panic!("the isolated node {old} answers clients"))
    };
    wait_until(
        Duration::from_secs(5),
        "the isolated leader steps down",
        || old_view().role != ClusterRole::Leader,
    );
    let seen = old_view();
    eprintln!(
        "node {new} leads {elected_after:?} after the isolation; old leader {old} now says \
         {:?} in term {}",
        seen.role, seen.term
    );
    // The old leader's commit position stands still while it is cut off.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        old_view().committed,
        seen.committed,
        "the isolated node commits nothing"
    );

    let resumed = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "acknowledgements from the new leader",
        || stream.acked_after(resumed) >= 10,
    );
    eprintln!(
        "producer acknowledged again {:?} after the isolation",
        isolated_at.elapsed()
    );

    cluster.heal(old);
    wait_until(
        Duration::from_secs(15),
        "the old leader rejoins as a follower",
        || {
            cluster.node_status(old).is_some_and(|s| {
                s.role == ClusterRole::Follower && s.leader_id != 0 && s.leader_id != old as u64
            })
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let report = stream.finish(Duration::from_secs(60));
    let (gap, _) = longest_gap(&report.acks);
    eprintln!("longest pause between acknowledgements: {gap:?}");

    let committed = cluster.wait_caught_up(Duration::from_secs(30));
    let reference = read_all(cluster.addr(new));
    check_stream(
        &format!("leader {new}"),
        &reference,
        &report.acks,
        PER_BATCH,
    );
    for id in cluster.ids() {
        let stored = read_all(cluster.addr(id));
        assert!(
            stored.iter().all(|r| r.value != payload("isolated", 0)),
            "node {id} serves the write the isolated leader never committed"
        );
        assert_eq!(stored, reference, "node {id} holds the leader's records");
    }
    // The probe batch (and whatever else the cut-off leader appended in its
    // old term) was cut from its journal when it rejoined, and its journal
    // now equals the others' byte for byte.
    assert!(
        cluster.stderr(old).contains("truncating the journal"),
        "the old leader cut its divergent tail; its log:\n{}",
        cluster.stderr(old)
    );
    let leader_bytes = journal_prefix(cluster.data_dir(new), committed)
        .unwrap_or_else(|e| panic!("leader {new}: {e}"));
    for id in cluster.ids().filter(|&i| i != new) {
        let bytes = journal_prefix(cluster.data_dir(id), committed)
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert!(
            bytes == leader_bytes,
            "node {id}'s journal equals leader {new}'s over the {committed} committed bytes"
        );
    }
}

#[test]
fn graceful_shutdown_of_the_leader_hands_leadership_over() {
    let mut cluster = Cluster::start(3, false);
    cluster.create_topic(TOPIC, 1);
    let (old, _) = cluster.expect_leader();
    let term = cluster.node_status(old).expect("the leader answers").term;
    let (status, log) = cluster.terminate(old);
    assert!(
        status.success(),
        "the leader exits 0 after SIGTERM: {status}\n{log}"
    );
    let to: usize = log
        .lines()
        .find_map(|l| l.split("handing leadership to node ").nth(1))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("the leader names its successor; its log:\n{log}"));
    assert_ne!(to, old);
    let (new, _) = cluster
        .leader_within(Duration::from_secs(15), |id| id != old)
        .unwrap_or_else(|| panic!("no new leader\n{}", cluster.describe()));
    let new_term = cluster
        .node_status(new)
        .expect("the new leader answers")
        .term;
    eprintln!(
        "leader {old} (term {term}) handed over to {to}; node {new} leads in term {new_term}"
    );
    // TimeoutNow makes the successor campaign at once, in the next term,
    // before any election timeout could start a competing campaign.
    assert_eq!(new, to, "the successor the old leader named takes over");
    assert_eq!(new_term, term + 1, "one election, no split vote");
}

#[test]
fn the_cli_creates_topics_and_produces_through_a_follower() {
    let cluster = Cluster::start(3, false);
    let (leader, _) = cluster.expect_leader();
    let followers: Vec<String> = cluster
        .ids()
        .filter(|&i| i != leader)
        .map(|i| cluster.addr(i).to_string())
        .collect();
    let cli = |args: &[&str], stdin: &[u8]| {
        let (status, out, err) = common::run_cli(args, stdin, Duration::from_secs(60));
        assert!(status.success(), "hutong {args:?} failed: {out}{err}");
        out
    };
    cli(
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "1",
            "--addr",
            &followers[0],
        ],
        b"",
    );
    cli(
        &["produce", "--topic", "cli", "--addr", &followers[0]],
        b"one\ntwo\nthree\n",
    );
    // Read from the other follower: committed data is served everywhere.
    let out = cli(
        &[
            "consume",
            "--topic",
            "cli",
            "--count",
            "3",
            "--addr",
            &followers[1],
        ],
        b"",
    );
    assert_eq!(out, "one\ntwo\nthree\n");
}

#[test]
fn a_bad_group_configuration_stops_the_start_with_a_clear_error() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--node-id", "4", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"],
            "peers must list this broker's own node_id 4",
        ),
        (&["--peers", "1:127.0.0.1:1"], "is not ID=HOST:PORT"),
        (
            &[
                "--node-id",
                "1",
                "--peers",
                "1=127.0.0.1:1,2=127.0.0.1:http",
            ],
            "is not HOST:PORT",
        ),
        (
            &["--node-id", "1", "--peers", "1=127.0.0.1:1,1=127.0.0.1:2"],
            "peer ids must be distinct",
        ),
    ];
    for (args, expected) in cases {
        let dir = common::TestDir::new();
        let (status, stderr) = common::run_broker_expecting_exit(&dir.data, args);
        assert!(!status.success(), "{args:?} must not start");
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr says `{expected}`: {stderr:?}"
        );
    }
}

#[test]
fn a_damaged_hard_state_stops_a_member_from_starting() {
    let dir = common::TestDir::new();
    std::fs::create_dir_all(&dir.data).unwrap();
    std::fs::write(dir.data.join("hardstate"), b"not a hard state at all....").unwrap();
    let (status, stderr) = common::run_broker_expecting_exit(
        &dir.data,
        &[
            "--node-id",
            "1",
            "--peers",
            "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        ],
    );
    assert!(!status.success(), "a member must not forget its vote");
    assert!(
        stderr.contains("hard state"),
        "stderr names the file: {stderr:?}"
    );
}

#[test]
fn a_standalone_broker_refuses_replication_frames() {
    let dir = common::TestDir::new();
    let broker = common::BrokerProc::start(&dir.data, &[]);
    let mut conn = RawConn::connect(broker.addr());
    let reply = conn.request(hutong::wire::ApiKey::Replicate, |out| {
        hutong::wire::replicate::encode_message(
            &hutong::consensus::Message::new(
                2,
                1,
                1,
                hutong::consensus::MessageKind::Heartbeat { commit: 0 },
            ),
            out,
        )
    });
    reply.expect_error(ErrorCode::InvalidRequest);
    // The connection stays usable.
    assert_eq!(conn.ping(b"still here"), b"still here");
}

/// Review finding 5: a fatal error on a broker thread ends the process
/// promptly with a non-zero exit and a clear last line, instead of leaving
/// a broker that refuses connections until someone kills it. Members of a
/// three-node group whose hard state cannot be written (a directory sits
/// where the temporary file goes) fail as soon as an election needs to
/// persist a term or a vote.
#[test]
fn a_member_that_cannot_persist_its_vote_exits_instead_of_lingering() {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let peers = (1..=3)
        .map(|id| format!("{id}={}", addrs[id - 1]))
        .collect::<Vec<_>>()
        .join(",");
    drop(listeners);
    // All three: a new group's first election needs every member's vote
    // (docs/consensus.md, members that lost their disk).
    let dirs: Vec<common::TestDir> = (0..3).map(|_| common::TestDir::new()).collect();
    let mut procs: Vec<common::BrokerProc> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let id = (i + 1).to_string();
            let p = common::BrokerProc::start_at(
                &addrs[i].to_string(),
                &dir.data,
                &["--node-id", &id, "--peers", &peers],
            );
            // Started (its identity is written); the first election, a
            // quarter second away at least, cannot persist anything.
            std::fs::create_dir(
                dir.data
                    .join(hutong::journal::hardstate::HARD_STATE_TMP_FILE),
            )
            .unwrap();
            p
        })
        .collect();
    // The first to need its hard state (a voter or a candidate) fails;
    // the others may then wait as pre-candidates for ever. The failed one
    // must be gone well within the broker's stop grace.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (i, status) = loop {
        if let Some(exited) = procs
            .iter_mut()
            .enumerate()
            .find_map(|(i, p)| p.try_exit_status().map(|s| (i, s)))
        {
            break exited;
        }
        assert!(
            Instant::now() < deadline,
            "no member exited within 60 s; logs:\n{}",
            procs
                .iter()
                .map(|p| p.stderr())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = procs[i].stderr();
    assert!(!status.success(), "node {} exited with {status}", i + 1);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot persist the term and vote"),
        "node {} ends with a clear line; its log:\n{log}",
        i + 1
    );
    for p in &mut procs {
        p.kill9();
    }
}
/// Review finding 7, group side: a member whose journal is damaged below
/// its checkpoint (acknowledged data) does not refuse to start as a
/// standalone broker would: it cuts the damage, says what it dropped, and
/// fetches the lost batches again from the leader, ending byte-identical.
#[test]
fn a_member_with_damaged_acknowledged_data_cuts_it_and_fetches_it_again() {
    let mut cluster = Cluster::start(3, false);
    cluster.create_topic(TOPIC, 1);
    let (leader, leader_addr) = cluster.expect_leader();
    let mut c = RawConn::connect(leader_addr);
    for seq in 0..200u64 {
        let values: Vec<Vec<u8>> = (0..20).map(|i| value(seq * 20 + i)).collect();
        c.produce_ok(TOPIC, 0, &common::batch_of_values(&values));
    }
    let committed = cluster.wait_caught_up(Duration::from_secs(30));
    let f = cluster.ids().find(|&i| i != leader).unwrap();
    // A clean stop checkpoints the whole journal: all of it is vouched for.
    let (status, _) = cluster.terminate(f);
    assert!(status.success());
    // Damage the header of a batch in the middle of the first segment.
    let (_, first) = common::cluster::segment_files(cluster.data_dir(f))
        .into_iter()
        .next()
        .expect("a segment");
    let mut bytes = std::fs::read(&first).unwrap();
    let (mut pos, mut boundaries) = (0usize, Vec::new());
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        boundaries.push(pos);
        pos += len;
    }
    let victim = boundaries[boundaries.len() / 2];
    bytes[victim + 8] ^= 0x10; // base_offset, checked below the checkpoint too
    std::fs::write(&first, &bytes).unwrap();
    cluster.restart(f);
    let log = cluster.stderr(f);
    assert!(
        log.contains("REPAIR") && log.contains(&format!("position {victim}")),
        "node {f} cut the damage and said so; its log:\n{log}"
    );
    assert!(
        log.contains("lost acknowledged data: new incarnation"),
        "node {f} takes a new incarnation and does not vote until it caught up; its log:\n{log}"
    );
    let caught_up = cluster.wait_caught_up(Duration::from_secs(60));
    assert!(caught_up >= committed);
    cluster.wait_voting(Duration::from_secs(30));
    let reference = cluster.journal_prefix(leader, caught_up);
    assert!(
        cluster.journal_prefix(f, caught_up) == reference,
        "node {f} fetched the cut batches again, byte for byte"
    );
    assert_eq!(read_all(cluster.addr(f)), read_all(leader_addr));
}
