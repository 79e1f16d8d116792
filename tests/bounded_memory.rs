//! Bounded memory under overload: producers pushing as fast as they can,
//! and a consumer that stops reading its socket, never take the broker's
//! resident memory above what its configuration allows, and it does not
//! keep growing.
//!
//! `HUTONG_MEMORY_TEST_SECONDS` sets how long the producers push (default
//! 10). At that default the journal takes a few GB in a temporary
//! directory, removed at the end.

mod common;

use common::{bounded, lock, BrokerProc, RawConn, TestDir};
use hutong::broker::responder::Pending;
use hutong::client::{Producer, ProducerConfig};
use hutong::wire::api::FetchRequest;
use hutong::wire::batch::BatchBuilder;
use hutong::wire::{ApiKey, Qos};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

// The broker's bounds in this test: every one well below its default, so
// that a bound that does not hold shows up as memory well above them.
const FRAME_BYTES_MAX: u64 = 2 * MIB;
const BATCH_BYTES_MAX: u64 = MIB;
const REQUEST_RING_BYTES: u64 = 8 * MIB;
const READ_REQUEST_RING_BYTES: u64 = MIB;
const RESPONSE_RING_BYTES: u64 = MIB;
const FETCH_BYTES_MAX: u64 = MIB;
const FETCH_RING_BYTES: u64 = 4 * MIB;
const WRITE_CACHE_BYTES: u64 = 4 * MIB;
const PENDING_MAX: u64 = 16_384;
const IN_FLIGHT_PER_CONNECTION_MAX: u64 = 1024;
const CONNECTION_WRITE_BYTES_MAX: u64 = MIB;

/// Fetch-like requests the broker keeps in flight per connection
/// (`READS_IN_FLIGHT_MAX` in the reactor, fixed).
const READS_IN_FLIGHT_MAX: u64 = 16;
/// The largest answer to a produce request: header and base offset and
/// time, rounded up generously.
const PRODUCE_ANSWER_BYTES_MAX: u64 = 64;
/// Code, thread stacks, the allocator's own slack, the catalog: what the
/// broker holds whatever its configuration.
const FIXED_ALLOWANCE_BYTES: u64 = 64 * MIB;
/// Bytes of partition index per stored batch (docs/operations.md), times
/// two for the index's growth in chunks.
const INDEX_BYTES_PER_BATCH: u64 = 2 * 24;

const PRODUCERS: usize = 4;
const VALUE_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 32;
/// Produce requests each producer keeps in flight.
const PRODUCER_WINDOW: usize = 256;

fn config_toml() -> String {
    format!(
        "frame_bytes_max = {FRAME_BYTES_MAX}\n\
         batch_bytes_max = {BATCH_BYTES_MAX}\n\
         request_ring_bytes = {REQUEST_RING_BYTES}\n\
         read_request_ring_bytes = {READ_REQUEST_RING_BYTES}\n\
         response_ring_bytes = {RESPONSE_RING_BYTES}\n\
         fetch_bytes_max = {FETCH_BYTES_MAX}\n\
         fetch_ring_bytes = {FETCH_RING_BYTES}\n\
         write_cache_bytes = {WRITE_CACHE_BYTES}\n\
         pending_max = {PENDING_MAX}\n\
         in_flight_per_connection_max = {IN_FLIGHT_PER_CONNECTION_MAX}\n\
         connection_write_bytes_max = {CONNECTION_WRITE_BYTES_MAX}\n"
    )
}

/// The most a connection may hold, from docs/operations.md: a read buffer
/// that grows to the largest frame; queued answers up to
/// `connection_write_bytes_max`, plus the answers to what was already in
/// flight when that limit was reached (`fetches` of them fetch answers of
/// up to `fetch_bytes_max` plus one batch); both buffers are `Vec`s that
/// grow by doubling, hence the factor of two.
fn connection_bound(fetches: u64) -> u64 {
    let in_flight_answers = IN_FLIGHT_PER_CONNECTION_MAX * PRODUCE_ANSWER_BYTES_MAX
        + fetches * (FETCH_BYTES_MAX + BATCH_BYTES_MAX);
    2 * FRAME_BYTES_MAX + 2 * (CONNECTION_WRITE_BYTES_MAX + in_flight_answers)
}

/// The broker's resident memory may not exceed, in bytes:
///
/// - the four rings (allocated once; a page counts once it was touched);
/// - one scratch copy of the largest message per ring, for messages that
///   wrap around a ring's end;
/// - the write cache;
/// - the pending table: the pending ring and the responder's queues (five,
///   one per QoS level plus errors, each at most `pending_max` entries);
/// - the reader's answer buffer: one fetch answer, doubled for growth;
/// - per connection, [`connection_bound`] (producers fetch nothing, the
///   stalled consumer keeps up to [`READS_IN_FLIGHT_MAX`] fetches in flight);
/// - the partition indexes: [`INDEX_BYTES_PER_BATCH`] per stored batch;
/// - [`FIXED_ALLOWANCE_BYTES`].
struct Bound {
    parts: Vec<(&'static str, u64)>,
}

impl Bound {
    fn new(producers: u64, fetchers: u64, batches_stored: u64) -> Bound {
        let pending = std::mem::size_of::<Pending>() as u64;
        let largest_fetch_answer = FETCH_BYTES_MAX + BATCH_BYTES_MAX;
        Bound {
            parts: vec![
                (
                    "rings",
                    REQUEST_RING_BYTES
                        + READ_REQUEST_RING_BYTES
                        + RESPONSE_RING_BYTES
                        + FETCH_RING_BYTES,
                ),
                (
                    "ring scratch",
                    FRAME_BYTES_MAX + 64 * KIB + 64 * KIB + largest_fetch_answer,
                ),
                ("write cache", WRITE_CACHE_BYTES),
                ("pending table", PENDING_MAX * pending * (1 + 5)),
                ("reader answer buffer", 2 * largest_fetch_answer),
                (
                    "connections",
                    producers * connection_bound(0)
                        + fetchers * connection_bound(READS_IN_FLIGHT_MAX),
                ),
                ("indexes", batches_stored * INDEX_BYTES_PER_BATCH),
                ("fixed allowance", FIXED_ALLOWANCE_BYTES),
            ],
        }
    }

    fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.1).sum()
    }

    fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|(what, b)| format!("{what} {:.1}", *b as f64 / MIB as f64))
            .collect::<Vec<_>>()
            .join(" + ")
            + &format!(" = {:.1} MiB", self.total() as f64 / MIB as f64)
    }
}

/// The broker's resident set size in bytes, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// Samples the broker's RSS every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Duration, u64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let samples = Arc::clone(&samples);
            move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes(pid) {
                        lock(&samples).push((t0.elapsed(), rss));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Sampler {
            stop,
            samples,
            thread,
        }
    }

    fn finish(self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *lock(&self.samples))
    }
}

fn peak(samples: &[(Duration, u64)]) -> u64 {
    samples.iter().map(|s| s.1).max().unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The tests of this file measure one broker each; run them one at a time
/// so that they do not share the two cores (and the disk) while measuring.
static SERIAL: Mutex<()> = Mutex::new(());

fn test_seconds() -> u64 {
    std::env::var("HUTONG_MEMORY_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Sends the same batch of 1 KiB records (the broker stamps offsets into
/// its own copy) at QoS received as fast as the broker takes it until
/// `stop`; returns the batches acknowledged. Every answer must be a success.
fn push(addr: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let producer = Producer::connect(
        addr,
        ProducerConfig {
            qos: Qos::Received,
            timeout_ms: 60_000,
            max_in_flight: PRODUCER_WINDOW,
        },
    )
    .expect("producer connects");
    let value = vec![0x42u8; VALUE_BYTES];
    let mut b = BatchBuilder::new();
    for _ in 0..RECORDS_PER_BATCH {
        b.push(common::now_ms(), b"", &value, &[]);
    }
    let batch = b.finish(0, 0).to_vec();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Receipts are dropped unwaited: a failure is kept for flush.
        producer.send("mem", 0, &batch).expect("send a batch");
        sent += 1;
    }
    producer
        .flush()
        .expect("every batch is acknowledged without error");
    sent
}

/// Sends fetch requests for 1 MiB answers (at offset 0, which holds data)
/// as fast as the socket takes them, and never reads an answer, until
/// `stop`; counts the requests it sent in `sent`.
fn fetch_and_never_read(addr: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut c = RawConn::connect(addr);
    c.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("set write timeout");
    while !stop.load(Ordering::Relaxed) {
        let id = c.next_id();
        let frame = RawConn::frame(ApiKey::Fetch.as_u16(), 1, id, |out| {
            FetchRequest {
                topic: "mem",
                partition: 0,
                offset: 0,
                max_bytes: FETCH_BYTES_MAX as u32,
                max_wait_ms: 0,
                min_bytes: 0,
            }
            .encode(out)
        });
        match std::io::Write::write_all(&mut c.stream, &frame) {
            Ok(()) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // The broker stopped reading this connection (its buffers are
            // full): keep trying, as a client that never gives up would.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("the stalled consumer's connection failed: {e}"),
        }
    }
}

/// Fills the topic with enough data that each fetch answer is a full MiB.
fn prefill(addr: SocketAddr) {
    let mut c = RawConn::connect(addr);
    c.create_topic("mem", 1);
    let values = vec![vec![0x17u8; VALUE_BYTES]; RECORDS_PER_BATCH];
    let batch = common::batch_of_values(&values);
    for _ in 0..(8 * MIB as usize / batch.len()) {
        c.produce_ok("mem", 0, &batch);
    }
}

#[test]
fn four_producers_at_full_speed_and_a_stalled_consumer_stay_within_the_configured_memory() {
    let _serial = lock(&SERIAL);
    let seconds = test_seconds();
    let dir = TestDir::new();
    let config = dir.config(&config_toml());
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let addr = broker.addr();
    bounded(Duration::from_secs(60), "prefill", move || prefill(addr));
    let baseline = rss_bytes(broker.pid()).expect("read the broker's RSS");

    let sampler = Sampler::start(broker.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let fetches_sent = Arc::new(AtomicU64::new(0));
    let consumer = std::thread::spawn({
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&fetches_sent);
        move || fetch_and_never_read(addr, stop, sent)
    });
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || push(addr, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.finish();
    let batches: u64 = bounded(Duration::from_secs(120), "producers finish", move || {
        producers
            .into_iter()
            .map(|p| p.join().expect("producer thread"))
            .sum()
    });
    bounded(Duration::from_secs(30), "consumer stops", move || {
        consumer.join().expect("consumer thread")
    });

    let written = batches * (RECORDS_PER_BATCH * VALUE_BYTES) as u64;
    let bound = Bound::new(PRODUCERS as u64, 1, batches + 1024);
    let third = samples.len() / 3;
    assert!(third >= 3, "too few RSS samples: {}", samples.len());
    let first = peak(&samples[..third]);
    let last = peak(&samples[samples.len() - third..]);
    let top = peak(&samples);
    eprintln!(
        "bounded memory: {seconds} s, {PRODUCERS} producers wrote {} ({:.0} MiB/s, {batches} \
         batches of {RECORDS_PER_BATCH} x {VALUE_BYTES} B); the stalled consumer sent {} \
         fetches of up to 1 MiB; broker RSS: {} before, peak {} (first third {}, last third \
         {}); bound {}",
        mib(written),
        written as f64 / MIB as f64 / seconds as f64,
        fetches_sent.load(Ordering::Relaxed),
        mib(baseline),
        mib(top),
        mib(first),
        mib(last),
        bound.describe()
    );
    assert!(
        top <= bound.total(),
        "peak RSS {} is above the configured bound {}",
        mib(top),
        bound.describe()
    );
    // The indexes are the one part allowed to grow with the data: at most
    // what this run stored.
    let growth_allowance = first / 10 + batches * INDEX_BYTES_PER_BATCH + 8 * MIB;
    assert!(
        last <= first + growth_allowance,
        "RSS keeps growing: peak {} in the first third of the run, {} in the last",
        mib(first),
        mib(last)
    );
    drop(broker);
}

#[test]
fn a_consumer_that_never_reads_its_answers_does_not_grow_broker_memory() {
    let _serial = lock(&SERIAL);
    let dir = TestDir::new();
    let config = dir.config(&config_toml());
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let addr = broker.addr();
    bounded(Duration::from_secs(60), "prefill", move || prefill(addr));
    let before = rss_bytes(broker.pid()).expect("read the broker's RSS");

    let sampler = Sampler::start(broker.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let consumer = std::thread::spawn({
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        move || fetch_and_never_read(addr, stop, sent)
    });
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.finish();
    bounded(Duration::from_secs(30), "consumer stops", move || {
        consumer.join().expect("consumer thread")
    });
    let fetches = sent.load(Ordering::Relaxed);
    let asked = fetches * FETCH_BYTES_MAX;
    let allowed = connection_bound(READS_IN_FLIGHT_MAX) + 2 * (FETCH_BYTES_MAX + BATCH_BYTES_MAX);
    let grew = peak(&samples).saturating_sub(before);
    eprintln!(
        "stalled consumer: {fetches} fetches sent, asking for {} of answers; broker RSS {} \
         before, peak {} (+{}); allowed growth {}",
        mib(asked),
        mib(before),
        mib(peak(&samples)),
        mib(grew),
        mib(allowed)
    );
    assert!(
        asked >= 10 * allowed,
        "the consumer asked for too little to tell ({})",
        mib(asked)
    );
    assert!(
        grew <= allowed,
        "a consumer that never reads grew the broker by {}, above the {} one connection may hold",
        mib(grew),
        mib(allowed)
    );
    // The broker still serves everyone else.
    common::assert_broker_serves(addr);
    drop(broker);
}
