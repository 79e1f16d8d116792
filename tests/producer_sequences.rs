//! Strict producer sequences (docs/protocol.md §9.1): a partition stores
//! the batches of one producer in the order of their sequence numbers,
//! each once, whatever arrives. A batch that is not the next one expected
//! is refused with `OutOfOrderSequence` and nothing is stored, so that a
//! batch refused for a passing reason (a full disk, a leader change) cannot
//! be overtaken by the batches behind it.

mod common;

use common::tmpfs::{fill, Tmpfs};
use common::{bounded, read_partition, BrokerProc, RawConn, TestDir};
use hutong::wire::api::ProduceResponse;
use hutong::wire::batch::{BatchBuilder, ProducerStamp};
use hutong::wire::{ErrorCode, Qos};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const TOPIC: &str = "seq";
const PRODUCER: u64 = 0x5e9_0001;

/// A batch of one record `value` from producer `id`, epoch `epoch`,
/// sequence `seq`.
fn batch_of(id: u64, epoch: u32, seq: u64, value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(common::now_ms(), b"", value, &[]);
    b.finish_with(ProducerStamp { id, epoch, seq }).to_vec()
}

/// A batch of one record `value` from [`PRODUCER`] with sequence `seq`
/// (epoch 0).
fn batch(seq: u64, value: &[u8]) -> Vec<u8> {
    batch_of(PRODUCER, 0, seq, value)
}

fn value(seq: u64) -> Vec<u8> {
    format!("batch {seq}").into_bytes()
}

/// Produces batch `seq` at QoS all: its base offset, or the error code of
/// the answer.
fn produce(c: &mut RawConn, seq: u64, value: &[u8]) -> Result<u64, ErrorCode> {
    produce_batch(c, &batch(seq, value))
}

/// Produces `batch` at QoS all: its base offset, or the error code of the
/// answer.
fn produce_batch(c: &mut RawConn, batch: &[u8]) -> Result<u64, ErrorCode> {
    let r = c.produce(TOPIC, 0, Qos::All as u8, 10_000, batch);
    match r.code() {
        ErrorCode::None => Ok(ProduceResponse::decode(&r.body)
            .expect("decode produce response")
            .base_offset),
        code => Err(code),
    }
}

/// The values of the topic's records, in offset order.
fn stored(addr: SocketAddr) -> Vec<Vec<u8>> {
    bounded(Duration::from_secs(30), "read the topic", move || {
        read_partition(addr, TOPIC, 0)
            .into_iter()
            .map(|r| r.value)
            .collect()
    })
}

fn start() -> (TestDir, BrokerProc, RawConn) {
    start_with("")
}

/// A broker with `toml` as its config file, and topic [`TOPIC`].
fn start_with(toml: &str) -> (TestDir, BrokerProc, RawConn) {
    let dir = TestDir::new();
    let config = dir.config(toml);
    let args = ["--config", config.to_str().expect("utf-8 temp path")];
    let broker = BrokerProc::start(&dir.data, &args);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic(TOPIC, 1);
    (dir, broker, c)
}

/// Kills the broker and starts it again on its directory and address.
fn restart(dir: &TestDir, broker: &mut BrokerProc, toml: &str) -> RawConn {
    broker.kill9();
    let config = dir.config(toml);
    let args = ["--config", config.to_str().expect("utf-8 temp path")];
    *broker = BrokerProc::start_at(&broker.addr().to_string(), &dir.data, &args);
    RawConn::connect(broker.addr())
}

#[test]
fn a_gap_in_a_producers_sequence_is_refused_and_the_gap_filled_later_keeps_the_order() {
    let (_dir, broker, mut c) = start();
    assert_eq!(produce(&mut c, 0, &value(0)), Ok(0));
    // Batch 1 was refused for a passing reason (or is still on its way):
    // batch 2 must not overtake it.
    assert_eq!(
        produce(&mut c, 2, &value(2)),
        Err(ErrorCode::OutOfOrderSequence),
        "a gap is refused"
    );
    assert_eq!(produce(&mut c, 1, &value(1)), Ok(1));
    assert_eq!(produce(&mut c, 2, &value(2)), Ok(2));
    // A retry of a stored batch is answered as the first copy.
    assert_eq!(produce(&mut c, 1, &value(1)), Ok(1));
    assert_eq!(stored(broker.addr()), vec![value(0), value(1), value(2)]);
}

#[test]
fn a_sequence_lower_than_the_last_but_never_stored_is_refused() {
    let (_dir, broker, mut c) = start();
    for seq in 0..=10 {
        assert_eq!(produce(&mut c, seq, &value(seq)), Ok(seq));
    }
    assert_eq!(
        produce(&mut c, 20, &value(20)),
        Err(ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(
        produce(&mut c, 15, &value(15)),
        Err(ErrorCode::OutOfOrderSequence),
        "15 lies between 10 and 20 but was never stored"
    );
    assert_eq!(produce(&mut c, 11, &value(11)), Ok(11));
    let want: Vec<Vec<u8>> = (0..=11).map(value).collect();
    assert_eq!(stored(broker.addr()), want);
}

/// Free bytes of the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    s.blocks_available() as u64 * s.fragment_size() as u64
}

#[test]
fn a_batch_behind_one_refused_for_a_full_disk_waits_for_it() {
    // 1 MiB segments on a tmpfs that cannot hold a second one: a large
    // batch that needs a new segment gets StorageFull, while a small one
    // still fits in the first segment's tail.
    const SEGMENT_BYTES: u64 = 1 << 20;
    const CONFIG: &str = "segment_bytes = 1048576\n\
                          batch_bytes_max = 524288\n\
                          write_cache_bytes = 1048576\n";
    let dir = TestDir::new();
    let _tmpfs = match Tmpfs::mount(&dir.data, 4 * SEGMENT_BYTES) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED producer_sequences: cannot mount a tmpfs ({e})");
            return;
        }
    };
    let config = dir.config(CONFIG);
    let args = ["--config", config.to_str().expect("utf-8 temp path")];
    let broker = BrokerProc::start(&dir.data, &args);
    let addr = broker.addr();
    let filler = dir.data.join("filler.bin");
    fill(&filler, free_bytes(&dir.data) - SEGMENT_BYTES / 4);

    let fills: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 200_000]).collect();
    let large = vec![b'L'; 300_000];
    let small = b"small".to_vec();
    let outcome = bounded(Duration::from_secs(60), "produce", {
        let (fills, large, small) = (fills.clone(), large.clone(), small.clone());
        move || {
            let mut c = RawConn::connect(addr);
            c.create_topic(TOPIC, 1);
            for (seq, v) in fills.iter().enumerate() {
                assert_eq!(produce(&mut c, seq as u64, v), Ok(seq as u64));
            }
            let large_refused = produce(&mut c, 4, &large);
            let small_first = produce(&mut c, 5, &small);
            (large_refused, small_first)
        }
    });
    assert_eq!(
        outcome.0,
        Err(ErrorCode::StorageFull),
        "the large batch needs a segment the disk cannot hold"
    );
    assert_eq!(
        outcome.1,
        Err(ErrorCode::OutOfOrderSequence),
        "the small batch behind it must not be stored before it"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    // The producer resends from the gap, in order.
    let resent = bounded(Duration::from_secs(60), "resend", {
        let (large, small) = (large.clone(), small.clone());
        move || {
            let mut c = RawConn::connect(addr);
            (produce(&mut c, 4, &large), produce(&mut c, 5, &small))
        }
    });
    assert_eq!(resent, (Ok(4), Ok(5)));
    let mut want = fills;
    want.push(large);
    want.push(small);
    assert!(stored(addr) == want, "the batches are stored in send order");
}

#[test]
fn epochs_fence_older_batches_and_start_their_sequences_at_zero() {
    let (_dir, broker, mut c) = start();
    let p = |epoch, seq, v: &str| batch_of(PRODUCER, epoch, seq, v.as_bytes());
    assert_eq!(
        produce_batch(&mut c, &p(0, 3, "x")),
        Err(ErrorCode::UnknownProducer),
        "a producer the broker does not know must start at 0"
    );
    assert_eq!(produce_batch(&mut c, &p(0, 0, "e0 s0")), Ok(0));
    assert_eq!(produce_batch(&mut c, &p(0, 1, "e0 s1")), Ok(1));
    assert_eq!(
        produce_batch(&mut c, &p(1, 1, "x")),
        Err(ErrorCode::OutOfOrderSequence),
        "a new epoch starts at 0"
    );
    assert_eq!(produce_batch(&mut c, &p(1, 0, "e1 s0")), Ok(2));
    assert_eq!(
        produce_batch(&mut c, &p(0, 2, "x")),
        Err(ErrorCode::ProducerFenced),
        "the old epoch is fenced"
    );
    assert_eq!(
        produce_batch(&mut c, &p(1, 0, "e1 s0")),
        Ok(2),
        "a retry in the new epoch is answered as its first copy"
    );
    assert_eq!(produce_batch(&mut c, &p(1, 1, "e1 s1")), Ok(3));
    let want: Vec<Vec<u8>> = ["e0 s0", "e0 s1", "e1 s0", "e1 s1"]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    assert_eq!(stored(broker.addr()), want);
}

#[test]
fn producer_states_are_rebuilt_after_kill_9() {
    let (dir, mut broker, mut c) = start();
    for seq in 0..5 {
        assert_eq!(produce(&mut c, seq, &value(seq)), Ok(seq));
    }
    let mut c = restart(&dir, &mut broker, "");
    assert_eq!(
        produce(&mut c, 2, &value(2)),
        Ok(2),
        "a retry is recognised"
    );
    assert_eq!(
        produce(&mut c, 6, &value(6)),
        Err(ErrorCode::OutOfOrderSequence),
        "the gap is still a gap"
    );
    assert_eq!(produce(&mut c, 5, &value(5)), Ok(5));
    let want: Vec<Vec<u8>> = (0..6).map(value).collect();
    assert_eq!(stored(broker.addr()), want);
}

#[test]
fn the_least_recently_used_producer_beyond_the_cap_is_evicted_and_stays_so_after_a_restart() {
    const CONFIG: &str = "producer_states_max = 2\n";
    let (dir, mut broker, mut c) = start_with(CONFIG);
    let p = |id, seq| batch_of(id, 0, seq, format!("{id}/{seq}").as_bytes());
    assert_eq!(produce_batch(&mut c, &p(1, 0)), Ok(0));
    assert_eq!(produce_batch(&mut c, &p(2, 0)), Ok(1));
    assert_eq!(produce_batch(&mut c, &p(1, 1)), Ok(2));
    // A third producer: producer 2 is the least recently used.
    assert_eq!(produce_batch(&mut c, &p(3, 0)), Ok(3));
    let check = |c: &mut RawConn, when: &str| {
        assert_eq!(
            produce_batch(c, &p(2, 1)),
            Err(ErrorCode::UnknownProducer),
            "{when}: producer 2 was evicted"
        );
        assert_eq!(
            produce_batch(c, &p(1, 1)),
            Ok(2),
            "{when}: producer 1 is remembered"
        );
    };
    check(&mut c, "live");
    let mut c = restart(&dir, &mut broker, CONFIG);
    check(&mut c, "after a restart");
}

#[test]
fn a_producer_idle_past_the_expiry_is_forgotten_and_stays_so_after_a_restart() {
    const CONFIG: &str = "producer_idle_expiry_ms = 500\n";
    let (dir, mut broker, mut c) = start_with(CONFIG);
    assert_eq!(produce(&mut c, 0, &value(0)), Ok(0));
    assert_eq!(produce(&mut c, 1, &value(1)), Ok(1));
    // Wall-clock time must pass for an expiry; nothing waits on a thread.
    std::thread::sleep(Duration::from_millis(700));
    let mut c = restart(&dir, &mut broker, CONFIG);
    assert_eq!(
        produce(&mut c, 2, &value(2)),
        Err(ErrorCode::UnknownProducer),
        "idle past the expiry: forgotten"
    );
    // It starts again at 0, in a new epoch as the Rust producer would.
    assert_eq!(
        produce_batch(&mut c, &batch_of(PRODUCER, 1, 0, &value(2))),
        Ok(2)
    );
}
