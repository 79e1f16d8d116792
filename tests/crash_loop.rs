//! A crash loop: two pipelined producers at QoS `flushed` keep producing
//! while the broker is killed with SIGKILL twenty times in a row at random
//! moments (some of them aimed at a segment roll or a checkpoint write) and
//! restarted each time. Every acknowledged message must then be stored
//! exactly once, at the offset it was acknowledged with, with its bytes,
//! and in the order its producer sent it.
//!
//! The seed of the random kill schedule is printed; rerun with
//! `HUTONG_CRASH_LOOP_SEED=<seed>` to replay the same waits and aims (the
//! threads' timing, and so the exact kill points, still vary).

mod common;

use common::{bounded, lock, payload, read_partition, BrokerProc, Fetched, RawConn, Rng, TestDir};
use hutong::client::{ClientError, Producer, ProducerConfig, Receipt, RetryConfig};
use hutong::journal::segment::{list_segments, segment_file_name};
use hutong::wire::batch::BatchBuilder;
use hutong::wire::Qos;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const TOPIC: &str = "loop";
const PARTITIONS: u32 = 2;
const PRODUCERS: u32 = 2;
const KILLS: u32 = 20;
const RECORDS_PER_BATCH: u64 = 20;
/// Produce requests each producer keeps in flight.
const WINDOW: usize = 32;
/// Longest random wait between a restart's first acknowledgement and the kill.
const RUN_MS_MAX: u64 = 600;
/// How long an aimed kill waits for its moment before it kills anyway.
const AIM_LIMIT: Duration = Duration::from_secs(3);

/// Small segments roll every few dozen batches and a 1 ms checkpoint
/// interval checkpoints after nearly every group commit, so that a kill at
/// a random moment has a fair chance to land in either, and an aimed kill
/// finds its moment within milliseconds. A snapshot of the catalog every
/// MiB (the least `checkpoint_bytes`) makes most restarts start from one.
const CONFIG: &str = "segment_bytes = 65536\n\
                      batch_bytes_max = 32768\n\
                      write_cache_bytes = 1048576\n\
                      checkpoint_interval_ms = 1\n\
                      checkpoint_bytes = 1048576\n\
                      retention_check_ms = 50\n";

/// One acknowledged batch.
#[derive(Debug, Clone)]
struct Acked {
    producer: u32,
    /// The producer's batch number: its send order, never reused.
    batch: u64,
    partition: u32,
    base_offset: u64,
    values: Vec<Vec<u8>>,
}

/// What the producers share with the test: where the broker is (none while
/// it is down), when to stop, and what was acknowledged or refused.
#[derive(Default)]
struct Shared {
    addr: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    /// Error answers from the broker itself (not a dropped connection):
    /// none is expected, a kill only ever closes connections.
    broker_errors: Mutex<Vec<String>>,
}

fn tag(producer: u32, batch: u64) -> String {
    format!("p{producer}-b{batch}")
}

/// `(producer, batch, record)` of a value this test produced, from its
/// ASCII prefix `p{producer}-b{batch}-{record:08}-`.
fn identity(value: &[u8]) -> Option<(u32, u64, u64)> {
    let mut parts = value.splitn(4, |&b| b == b'-');
    let field = |part: Option<&[u8]>, prefix: &str| -> Option<u64> {
        std::str::from_utf8(part?.strip_prefix(prefix.as_bytes())?)
            .ok()?
            .parse()
            .ok()
    };
    let producer = field(parts.next(), "p")?;
    let batch = field(parts.next(), "b")?;
    let record = field(parts.next(), "")?;
    Some((u32::try_from(producer).ok()?, batch, record))
}

/// A request in flight: batch number, partition, values and receipt.
type InFlight = (u64, u32, Vec<Vec<u8>>, Receipt);

/// A stored record of a batch: its index in the batch, partition, offset.
type Placed = (u64, u32, u64);

/// Waits for one receipt and files the outcome; false when the request
/// failed (the connection is then gone or going).
fn settle(producer: u32, shared: &Shared, (batch, partition, values, receipt): InFlight) -> bool {
    match receipt.wait() {
        Ok(ack) => {
            lock(&shared.acked).push(Acked {
                producer,
                batch,
                partition,
                base_offset: ack.base_offset,
                values,
            });
            true
        }
        Err(e @ ClientError::Broker { .. }) => {
            lock(&shared.broker_errors).push(format!("producer {producer} batch {batch}: {e}"));
            false
        }
        Err(_) => false,
    }
}

/// Produces pipelined batches whenever a broker is up, reconnecting after
/// each kill, until told to stop. A batch whose answer was lost is never
/// sent again: every batch number is used once, so a duplicate in the
/// journal can only come from the broker.
fn produce(producer: u32, shared: Arc<Shared>) {
    let config = ProducerConfig {
        qos: Qos::Flushed,
        timeout_ms: 10_000,
        max_in_flight: WINDOW,
        // Send-once: this loop reconnects by itself and never resends.
        retry: RetryConfig::none(),
        ..ProducerConfig::default()
    };
    let mut builder = BatchBuilder::new();
    let mut next_batch = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(addr) = *lock(&shared.addr) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let Ok(p) = Producer::connect(addr, config) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let mut window: VecDeque<InFlight> = VecDeque::with_capacity(WINDOW);
        while !shared.stop.load(Ordering::Relaxed) {
            let batch = next_batch;
            next_batch += 1;
            let partition = (batch % PARTITIONS as u64) as u32;
            let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
                .map(|i| payload(&tag(producer, batch), i))
                .collect();
            builder.clear();
            for v in &values {
                builder.push(common::now_ms(), b"", v, &[]);
            }
            match p.send(TOPIC, partition, builder.finish(0, 0)) {
                Ok(receipt) => window.push_back((batch, partition, values, receipt)),
                Err(_) => break,
            }
            if window.len() >= WINDOW {
                let oldest = window.pop_front().expect("window is full");
                if !settle(producer, &shared, oldest) {
                    break;
                }
            }
        }
        // Answers that arrived before the connection died still count.
        for w in window {
            settle(producer, &shared, w);
        }
    }
}

/// Where a kill landed, judged from the data directory after the kill.
#[derive(Debug, Default, Clone, Copy)]
struct Landing {
    /// `checkpoint.tmp` was written by this broker and not yet renamed.
    in_checkpoint: bool,
    /// The newest segment was created by this broker and holds no batch.
    in_roll: bool,
    /// The newest segment file is empty: the kill came between its
    /// creation and its preallocation.
    in_segment_create: bool,
}

fn modified_since(path: &Path, since: SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since)
}

/// The newest segment, when it is not one of `old` and its first eight
/// bytes are zero (no batch starts with them; an empty file does not count).
fn new_empty_segment(data: &Path, old: &HashSet<u64>) -> Option<u64> {
    let (start, path) = list_segments(data).ok()?.pop()?;
    if old.contains(&start) {
        return None;
    }
    let mut head = [0xffu8; 8];
    let file = std::fs::File::open(path).ok()?;
    file.read_exact_at(&mut head, 0).ok()?;
    (head == [0; 8]).then_some(start)
}

fn landing(data: &Path, started: SystemTime, old_segments: &HashSet<u64>) -> Landing {
    Landing {
        in_checkpoint: modified_since(&data.join("checkpoint.tmp"), started),
        in_roll: new_empty_segment(data, old_segments).is_some(),
        in_segment_create: list_segments(data)
            .ok()
            .and_then(|mut s| s.pop())
            .and_then(|(_, path)| std::fs::metadata(path).ok())
            .is_some_and(|m| m.len() == 0),
    }
}

/// How the next kill picks its moment.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// Whenever the random wait ends.
    Anywhere,
    /// While `checkpoint.tmp` exists (a checkpoint is being written).
    Checkpoint,
    /// While the newest segment is new and empty (a roll is under way).
    Roll,
}

/// Spins until the moment `aim` asks for (at most [`AIM_LIMIT`]); true
/// when it was seen.
fn wait_for_moment(
    aim: Aim,
    data: &Path,
    started: SystemTime,
    old_segments: &HashSet<u64>,
) -> bool {
    let deadline = Instant::now() + AIM_LIMIT;
    let tmp = data.join("checkpoint.tmp");
    while Instant::now() < deadline {
        let seen = match aim {
            Aim::Anywhere => return true,
            // A `checkpoint.tmp` left by an earlier kill does not count.
            Aim::Checkpoint => modified_since(&tmp, started),
            Aim::Roll => new_empty_segment(data, old_segments).is_some(),
        };
        if seen {
            return true;
        }
    }
    false
}

fn acked_count(shared: &Shared) -> usize {
    lock(&shared.acked).len()
}

/// Starts a broker on `dir`, tells the producers where it is and waits
/// until they got an answer from it.
fn start_and_wait_for_progress(dir: &TestDir, args: &[&str], shared: &Shared) -> BrokerProc {
    let broker = BrokerProc::start(&dir.data, args);
    let before = acked_count(shared);
    *lock(&shared.addr) = Some(broker.addr());
    common::wait_until(
        Duration::from_secs(30),
        "the producers to get acknowledgements from the restarted broker",
        || acked_count(shared) > before,
    );
    broker
}

/// Reads both partitions back and checks every claim of the test:
/// acknowledged batches stored exactly once at their offsets with their
/// bytes, per-producer order, and no torn or duplicated batch at all.
fn check_journal(stored: &[Vec<Fetched>], acked: &[Acked]) {
    // Every stored record is one this test produced, stored once, and a
    // batch is stored whole in consecutive offsets or not at all.
    let mut seen: HashMap<(u32, u64, u64), (u32, u64)> = HashMap::new();
    for (p, part) in stored.iter().enumerate() {
        let p = p as u32;
        for r in part {
            let id = identity(&r.value).unwrap_or_else(|| {
                panic!(
                    "{TOPIC}/{p}@{} holds a value this test never sent",
                    r.offset
                )
            });
            if let Some(first) = seen.insert(id, (p, r.offset)) {
                panic!(
                    "record {id:?} is stored twice: at {TOPIC}/{}@{} and {TOPIC}/{p}@{}",
                    first.0, first.1, r.offset
                );
            }
        }
    }
    // (producer, batch) -> its stored records as (record, partition, offset).
    let mut batches: BTreeMap<(u32, u64), Vec<Placed>> = BTreeMap::new();
    for (&(producer, batch, record), &(p, offset)) in &seen {
        batches
            .entry((producer, batch))
            .or_default()
            .push((record, p, offset));
    }
    for ((producer, batch), mut records) in batches {
        records.sort_unstable();
        let (_, p0, first) = records[0];
        assert_eq!(
            records.len() as u64,
            RECORDS_PER_BATCH,
            "batch {} is stored in part only",
            tag(producer, batch)
        );
        for (i, &(record, p, offset)) in records.iter().enumerate() {
            assert_eq!(
                (record, p, offset),
                (i as u64, p0, first + i as u64),
                "batch {} is not stored as one run of offsets",
                tag(producer, batch)
            );
        }
    }
    // Every acknowledged record is at its acknowledged offset, byte for byte.
    for a in acked {
        let part = &stored[a.partition as usize];
        for (i, v) in a.values.iter().enumerate() {
            let offset = a.base_offset + i as u64;
            let rec = part.get(offset as usize).unwrap_or_else(|| {
                panic!(
                    "acknowledged {TOPIC}/{}@{offset} (batch {}) is gone: the partition holds {}",
                    a.partition,
                    tag(a.producer, a.batch),
                    part.len()
                )
            });
            assert!(
                &rec.value == v,
                "acknowledged {TOPIC}/{}@{offset} (batch {}) holds other bytes",
                a.partition,
                tag(a.producer, a.batch)
            );
        }
    }
    // Each producer's acknowledged batches to a partition are stored in the
    // order it sent them.
    let mut order: BTreeMap<(u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for a in acked {
        order
            .entry((a.producer, a.partition))
            .or_default()
            .push((a.batch, a.base_offset));
    }
    for ((producer, partition), mut sent) in order {
        sent.sort_unstable();
        for pair in sent.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "producer {producer} sent batch {} before batch {} to partition {partition}, \
                 but they were stored at offsets {} and {}",
                pair[0].0,
                pair[1].0,
                pair[0].1,
                pair[1].1
            );
        }
    }
}

#[test]
fn acked_messages_survive_twenty_kill_9_in_a_row_exactly_once_and_in_order() {
    let mut rng = Rng::from_env_or_clock("HUTONG_CRASH_LOOP_SEED");
    let seed = rng.0;
    let t0 = Instant::now();

    let dir = TestDir::new();
    let config = dir.config(CONFIG);
    let args = ["--config", config.to_str().expect("utf-8 temp path")];
    let mut broker = BrokerProc::start(&dir.data, &args);
    RawConn::connect(broker.addr()).create_topic(TOPIC, PARTITIONS);
    broker.kill9();

    let shared = Arc::new(Shared::default());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("producer-{id}"))
                .spawn(move || produce(id, shared))
                .expect("spawn producer")
        })
        .collect();

    let mut landings = Vec::new();
    // Restarts that started from a catalog snapshot.
    let mut resumed = 0;
    for kill in 0..KILLS {
        let old_segments: HashSet<u64> = list_segments(&dir.data)
            .expect("list segments")
            .into_iter()
            .map(|(start, _)| start)
            .collect();
        let started = SystemTime::now();
        broker = start_and_wait_for_progress(&dir, &args, &shared);
        std::thread::sleep(Duration::from_millis(rng.below(RUN_MS_MAX + 1)));
        let aim = match kill % 3 {
            0 => Aim::Anywhere,
            1 => Aim::Checkpoint,
            _ => Aim::Roll,
        };
        let seen = wait_for_moment(aim, &dir.data, started, &old_segments);
        if broker.stderr().contains("from the snapshot at") {
            resumed += 1;
        }
        broker.kill9();
        *lock(&shared.addr) = None;
        let l = landing(&dir.data, started, &old_segments);
        eprintln!(
            "kill {kill:2}: aimed at {aim:?} (moment seen: {seen}), landed {l:?}, \
             {} batches acknowledged so far",
            acked_count(&shared)
        );
        landings.push(l);
    }

    // A last restart: the producers continue, then stop cleanly.
    broker = start_and_wait_for_progress(&dir, &args, &shared);
    std::thread::sleep(Duration::from_millis(200));
    shared.stop.store(true, Ordering::Relaxed);
    bounded(Duration::from_secs(60), "producers finish", move || {
        for p in producers {
            p.join().expect("producer thread");
        }
    });
    let broker_errors = lock(&shared.broker_errors).clone();
    assert!(
        broker_errors.is_empty(),
        "the broker answered produce requests with errors: {broker_errors:#?}"
    );
    let acked = std::mem::take(&mut *lock(&shared.acked));
    let addr = broker.addr();
    let stored = bounded(Duration::from_secs(120), "read the topic back", move || {
        (0..PARTITIONS)
            .map(|p| read_partition(addr, TOPIC, p))
            .collect::<Vec<_>>()
    });
    check_journal(&stored, &acked);

    let in_checkpoint = landings.iter().filter(|l| l.in_checkpoint).count();
    let in_roll = landings.iter().filter(|l| l.in_roll).count();
    let in_create = landings.iter().filter(|l| l.in_segment_create).count();
    let segments = list_segments(&dir.data).expect("list segments").len();
    let records: usize = stored.iter().map(Vec::len).sum();
    eprintln!(
        "crash loop: {KILLS} kills, {in_checkpoint} during a checkpoint write, {in_roll} during \
         a segment roll ({in_create} more between creating and preallocating a segment); {} \
         batches acknowledged, {records} records stored in {segments} segments; {resumed} \
         restarts from a snapshot; {:.1} s",
        acked.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        in_checkpoint >= 1,
        "no kill landed during a checkpoint write (seed {seed})"
    );
    assert!(
        in_roll >= 1,
        "no kill landed during a segment roll (seed {seed})"
    );
    assert!(
        resumed >= 1,
        "no restart started from a catalog snapshot (seed {seed})"
    );
}

/// `kill -9` between creating a new segment file and preallocating it (in
/// `Segment::create`, between `open(O_CREAT)` and `fallocate`) leaves an
/// empty file named after the end of the journal. That is a state a crash
/// produces, so the next start must recover from it and keep everything.
#[test]
fn a_kill_between_creating_and_preallocating_a_segment_does_not_stop_the_restart() {
    let dir = TestDir::new();
    let config = dir.config(CONFIG);
    let args = ["--config", config.to_str().expect("utf-8 temp path")];
    let mut broker = BrokerProc::start(&dir.data, &args);
    let addr = broker.addr();
    let values: Vec<Vec<u8>> = (0..40).map(|i| payload("pre-roll", i)).collect();
    bounded(Duration::from_secs(30), "produce", {
        let values = values.clone();
        move || {
            let mut c = RawConn::connect(addr);
            c.create_topic(TOPIC, 1);
            // Four batches of about 20 KiB: the fourth one rolls to a new
            // 64 KiB segment, whose data then ends inside it.
            for chunk in values.chunks(10) {
                let big: Vec<Vec<u8>> = chunk
                    .iter()
                    .map(|v| [v.as_slice(), &[7u8; 2000]].concat())
                    .collect();
                c.produce_ok(TOPIC, 0, &common::batch_of_values(&big));
            }
        }
    });
    broker.kill9();
    // Where the journal's data ends: the newest segment's start plus the
    // batches it holds.
    let (start, path) = list_segments(&dir.data)
        .expect("list segments")
        .pop()
        .expect("a segment");
    let bytes = std::fs::read(&path).expect("read newest segment");
    let scanned = hutong::journal::scan::scan(&bytes, start, 0, |_, _| Ok(()));
    assert!(scanned.valid_len > 0, "the newest segment holds data");
    let end = start + scanned.valid_len as u64;
    std::fs::File::create(dir.data.join(segment_file_name(end))).expect("create empty segment");

    let broker = BrokerProc::try_start(&dir.data, &args).unwrap_or_else(|e| {
        panic!(
            "the broker refused to start after a crash inside a segment roll:\n{}",
            e.describe()
        )
    });
    let stored = read_partition(broker.addr(), TOPIC, 0);
    assert_eq!(
        stored.len(),
        values.len(),
        "every acknowledged record is kept"
    );
    for (r, v) in stored.iter().zip(&values) {
        assert!(
            r.value.starts_with(v),
            "{TOPIC}/0@{} holds other bytes",
            r.offset
        );
    }
    common::assert_broker_serves(broker.addr());
}
