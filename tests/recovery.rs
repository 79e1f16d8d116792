//! Damage made while the broker is stopped. A torn or corrupted tail of the
//! active segment above the checkpoint (what a crash leaves) is cut on
//! restart: everything before it is served and new produces continue from
//! the right offset. Damage below the checkpoint, or before the last
//! segment, is data that was acknowledged: the broker refuses to start,
//! naming the segment, the position and what would be lost, and changes
//! nothing; `--repair` cuts it and logs what was dropped.
//!
//! Each damage is made once after a clean shutdown (SIGTERM, which
//! checkpoints past the whole journal) and once after `kill -9` with the
//! last checkpoint before the damaged tail.

mod common;

use common::{batch_of_values, bounded, read_partition, BrokerProc, RawConn, TestDir};
use hutong::wire::batch::{BatchKind, BatchView, BATCH_HEADER_LEN};
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PARTITIONS: u32 = 2;
const BATCHES: u64 = 20;
const PER_BATCH: u64 = 10;

fn value(batch: u64, i: u64) -> Vec<u8> {
    common::payload(&format!("rec-b{batch}"), i)
}

/// Partition and base offset of batch `k` of the initial load: batches
/// alternate over the partitions.
fn place(k: u64) -> (u32, u64) {
    (
        (k % PARTITIONS as u64) as u32,
        (k / PARTITIONS as u64) * PER_BATCH,
    )
}

/// Every `*.seg` file under `dir`, sorted by name (= start position).
fn segments(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read data dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "seg") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    out
}

/// A batch found on disk: its file, its position in the file, its bytes.
struct OnDisk {
    file: PathBuf,
    pos: u64,
    bytes: Vec<u8>,
}

/// The last batch in the journal, found by walking batch headers from the
/// start of each segment until a zero length.
fn last_batch(dir: &Path) -> OnDisk {
    let mut last = None;
    for seg in segments(dir) {
        let data = std::fs::read(&seg).expect("read segment");
        let mut pos = 0usize;
        while pos + BATCH_HEADER_LEN <= data.len() {
            let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            assert!(
                len >= BATCH_HEADER_LEN && pos + len <= data.len(),
                "{}: batch at {pos} declares {len} bytes",
                seg.display()
            );
            last = Some(OnDisk {
                file: seg.clone(),
                pos: pos as u64,
                bytes: data[pos..pos + len].to_vec(),
            });
            pos += len;
        }
    }
    last.unwrap_or_else(|| panic!("no batch found in the segments of {}", dir.display()))
}

/// Writes `bytes` at `pos` of `file`.
fn write_at(file: &Path, pos: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open segment");
    f.seek(SeekFrom::Start(pos)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// How the broker is stopped before its journal is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: a clean shutdown, which checkpoints past the whole journal.
    Sigterm,
    /// SIGKILL with checkpoints far apart: the last checkpoint (at topic
    /// creation) lies before the damaged tail.
    Kill9,
}

fn broker_args(dir: &TestDir) -> Vec<String> {
    let config = dir.config("checkpoint_interval_ms = 600000\n");
    vec!["--config".into(), config.to_string_lossy().into_owned()]
}

fn start(dir: &TestDir) -> BrokerProc {
    let args = broker_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProc::start(&dir.data, &args)
}

/// Starts a broker, loads `BATCHES` batches, stops it and returns the last
/// batch on disk (checked to be the last one produced).
fn load_and_stop(dir: &TestDir, stop: Stop) -> OnDisk {
    let mut broker = start(dir);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("rec", PARTITIONS);
    for k in 0..BATCHES {
        let values: Vec<Vec<u8>> = (0..PER_BATCH).map(|i| value(k, i)).collect();
        let (p, base) = place(k);
        assert_eq!(c.produce_ok("rec", p, &batch_of_values(&values)), base);
    }
    drop(c);
    match stop {
        Stop::Sigterm => {
            let status = broker.terminate();
            assert!(status.success(), "SIGTERM exit status {status}");
        }
        Stop::Kill9 => broker.kill9(),
    }
    let last = last_batch(&dir.data);
    let v = BatchView(&last.bytes);
    let (p, base) = place(BATCHES - 1);
    assert_eq!(
        (v.kind(), v.partition(), v.base_offset(), v.record_count()),
        (Some(BatchKind::Data), p, base, PER_BATCH as u32),
        "the last batch on disk is the last batch produced"
    );
    last
}

/// Restarts on the damaged directory and checks that exactly the first
/// `kept` batches are served, that a new produce continues from there, and
/// that all of it survives one more restart.
fn restart_and_check(dir: &TestDir, kept: u64) {
    let check = |addr: SocketAddr, extra: Option<(u32, u64, Vec<Vec<u8>>)>| {
        bounded(Duration::from_secs(30), "check recovered data", move || {
            let stored: Vec<_> = (0..PARTITIONS)
                .map(|p| read_partition(addr, "rec", p))
                .collect();
            let mut want: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS as usize];
            for k in 0..kept {
                let (p, _) = place(k);
                want[p as usize].extend((0..PER_BATCH).map(|i| value(k, i)));
            }
            if let Some((p, _, values)) = &extra {
                want[*p as usize].extend(values.iter().cloned());
            }
            for p in 0..PARTITIONS as usize {
                let got: Vec<Vec<u8>> = stored[p].iter().map(|r| r.value.clone()).collect();
                assert_eq!(got.len(), want[p].len(), "records of rec/{p}");
                assert!(got == want[p], "rec/{p} serves other bytes");
            }
        })
    };
    let mut broker = start(dir);
    let addr = broker.addr();
    check(addr, None);
    // A new batch, smaller than the ones before, on the partition that
    // lost (or would have next received) the tail.
    let (p, _) = place(kept);
    let values: Vec<Vec<u8>> = (0..3).map(|i| value(1000, i)).collect();
    let expected_base = (0..kept).filter(|k| place(*k).0 == p).count() as u64 * PER_BATCH;
    let mut c = RawConn::connect(addr);
    assert_eq!(
        c.list_offsets("rec", p).latest,
        expected_base,
        "the end offset after recovery"
    );
    let base = c.produce_ok("rec", p, &batch_of_values(&values));
    assert_eq!(base, expected_base, "new produces continue after the cut");
    drop(c);
    let extra = Some((p, base, values));
    check(addr, extra.clone());
    assert!(broker.terminate().success());
    let broker = start(dir);
    check(broker.addr(), extra);
}

/// Starts a broker on a journal damaged below its checkpoint in
/// `damaged`: it must refuse to start, say where and how much, and change
/// no file; then `--repair` cuts the damage and says what it dropped.
fn refuse_then_repair(dir: &TestDir, damaged: &Path) {
    let before: Vec<(PathBuf, Vec<u8>)> = segments(&dir.data)
        .into_iter()
        .map(|s| {
            let bytes = std::fs::read(&s).unwrap();
            (s, bytes)
        })
        .collect();
    let args = broker_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, stderr) = common::run_broker_expecting_exit(&dir.data, &args);
    assert!(!status.success(), "acknowledged data was damaged: {stderr}");
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
    for words in [name.as_str(), "position", "bytes", "--repair"] {
        assert!(
            stderr.contains(words),
            "the refusal names {words:?}: {stderr}"
        );
    }
    for (s, b) in &before {
        assert!(
            std::fs::read(s).unwrap() == *b,
            "{} was changed by a broker that refused to start",
            s.display()
        );
    }
    let mut repair_args = args.clone();
    repair_args.push("--repair");
    let mut broker = BrokerProc::start(&dir.data, &repair_args);
    let log = broker.stderr();
    assert!(
        log.contains("REPAIR") && log.contains(&name),
        "the repair logs what it dropped: {log}"
    );
    assert!(broker.terminate().success());
}

fn overwrite_last_batch_with_garbage(stop: Stop) {
    let dir = TestDir::new();
    let last = load_and_stop(&dir, stop);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..last.bytes.len())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write_at(&last.file, last.pos, &garbage);
    if stop == Stop::Sigterm {
        refuse_then_repair(&dir, &last.file);
    }
    restart_and_check(&dir, BATCHES - 1);
}

fn append_partial_batch(stop: Stop) {
    let dir = TestDir::new();
    let last = load_and_stop(&dir, stop);
    // The first half of a copy of the last batch, as a write torn by a
    // crash would leave it: a plausible header, then zeros.
    let torn = &last.bytes[..last.bytes.len() / 2];
    write_at(&last.file, last.pos + last.bytes.len() as u64, torn);
    restart_and_check(&dir, BATCHES);
}

fn flip_record_byte_of_last_batch(stop: Stop) {
    let dir = TestDir::new();
    let last = load_and_stop(&dir, stop);
    let at = BATCH_HEADER_LEN + 20;
    write_at(&last.file, last.pos + at as u64, &[last.bytes[at] ^ 0x01]);
    if stop == Stop::Sigterm {
        refuse_then_repair(&dir, &last.file);
    }
    restart_and_check(&dir, BATCHES - 1);
}

#[test]
fn a_last_batch_overwritten_with_garbage_after_sigterm_is_refused_then_repaired() {
    overwrite_last_batch_with_garbage(Stop::Sigterm);
}

#[test]
fn a_partial_batch_after_the_last_one_after_sigterm_is_cut_on_restart() {
    append_partial_batch(Stop::Sigterm);
}

#[test]
fn a_flipped_byte_in_the_last_batch_after_sigterm_is_refused_then_repaired() {
    flip_record_byte_of_last_batch(Stop::Sigterm);
}

#[test]
fn a_last_batch_overwritten_with_garbage_after_kill_9_is_cut_on_restart() {
    overwrite_last_batch_with_garbage(Stop::Kill9);
}

#[test]
fn a_partial_batch_after_the_last_one_after_kill_9_is_cut_on_restart() {
    append_partial_batch(Stop::Kill9);
}

#[test]
fn a_flipped_byte_in_the_last_batch_after_kill_9_is_cut_on_restart() {
    flip_record_byte_of_last_batch(Stop::Kill9);
}

#[test]
fn large_batches_that_roll_segments_survive_restarts_and_kill_9() {
    // Segments of 4 MiB and batches of about 0.9 MiB: four fit in a segment
    // and the fifth starts the next, leaving a zero tail in each segment.
    const LARGE: usize = 900 * 1024;
    const COUNT: u64 = 14;
    let dir = TestDir::new();
    let config = dir.small_segments_config();
    let args = ["--config", config.to_str().unwrap()];
    let big = |i: u64| {
        let mut v = common::payload("large", i);
        v.resize(LARGE, (i % 251) as u8);
        v
    };
    let mut broker = BrokerProc::start(&dir.data, &args);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("big", 1);
    for i in 0..COUNT / 2 {
        assert_eq!(c.produce_ok("big", 0, &batch_of_values(&[big(i)])), i);
    }
    drop(c);
    assert!(broker.terminate().success());
    let mut broker = BrokerProc::start(&dir.data, &args);
    let mut c = RawConn::connect(broker.addr());
    for i in COUNT / 2..COUNT {
        assert_eq!(c.produce_ok("big", 0, &batch_of_values(&[big(i)])), i);
    }
    drop(c);
    broker.kill9();
    assert!(
        segments(&dir.data).len() >= 3,
        "the data spans several segments: {:?}",
        segments(&dir.data)
    );
    for restart in 0..2 {
        let broker = BrokerProc::start(&dir.data, &args);
        let addr = broker.addr();
        bounded(Duration::from_secs(30), "read large batches", move || {
            let stored = read_partition(addr, "big", 0);
            assert_eq!(stored.len() as u64, COUNT, "restart {restart}");
            for (i, r) in stored.iter().enumerate() {
                assert!(
                    r.value == big(i as u64),
                    "big/0@{i} after restart {restart}"
                );
            }
        });
    }
}

#[test]
fn restarting_again_and_again_without_new_data_changes_nothing() {
    let dir = TestDir::new();
    let mut broker = start(&dir);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("rec", PARTITIONS);
    for k in 0..4 {
        let values: Vec<Vec<u8>> = (0..PER_BATCH).map(|i| value(k, i)).collect();
        let (p, base) = place(k);
        assert_eq!(c.produce_ok("rec", p, &batch_of_values(&values)), base);
    }
    drop(c);
    for round in 0..4 {
        if round % 2 == 0 {
            assert!(broker.terminate().success());
        } else {
            broker.kill9();
        }
        broker = start(&dir);
        let addr = broker.addr();
        bounded(Duration::from_secs(30), "read after restart", move || {
            for p in 0..PARTITIONS {
                let stored = read_partition(addr, "rec", p);
                let want: Vec<Vec<u8>> = (0..4)
                    .filter(|k| place(*k).0 == p)
                    .flat_map(|k| (0..PER_BATCH).map(move |i| value(k, i)))
                    .collect();
                let got: Vec<Vec<u8>> = stored.into_iter().map(|r| r.value).collect();
                assert!(got == want, "rec/{p} after restart {round}");
            }
        });
    }
    let mut c = RawConn::connect(broker.addr());
    assert_eq!(
        c.produce_ok("rec", 0, &batch_of_values(&[b"next".to_vec()])),
        2 * PER_BATCH,
        "offsets continue after the restarts"
    );
}

#[test]
fn damage_in_an_earlier_segment_makes_a_verifying_start_refuse_and_keep_the_files() {
    let dir = TestDir::new();
    let config = dir.small_segments_config();
    let args = ["--config", config.to_str().unwrap()];
    let mut broker = BrokerProc::start(&dir.data, &args);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("mid", 1);
    for i in 0..6u64 {
        let v = vec![i as u8; 900 * 1024];
        assert_eq!(c.produce_ok("mid", 0, &batch_of_values(&[v])), i);
    }
    drop(c);
    assert!(broker.terminate().success());
    let segs = segments(&dir.data);
    assert!(segs.len() >= 2, "the data spans two segments: {segs:?}");
    // Flip a byte of the base_offset of the first segment's last batch: a
    // header field, checked even below the checkpoint.
    let first = std::fs::read(&segs[0]).unwrap();
    let mut pos = 0usize;
    let mut last = 0usize;
    while pos + BATCH_HEADER_LEN <= first.len() {
        let len = u32::from_le_bytes(first[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        last = pos;
        pos += len;
    }
    write_at(&segs[0], (last + 8) as u64, &[first[last + 8] ^ 0x10]);
    let before: Vec<Vec<u8>> = segs.iter().map(|s| std::fs::read(s).unwrap()).collect();
    // A start from the checkpoint's snapshot reads no sealed segment that
    // has its index file: this damage is found only by `--verify-journal`
    // (or a fetch of the batch, whose checksums the client checks).
    let mut verify_args = args.to_vec();
    verify_args.push("--verify-journal");
    let (status, stderr) = common::run_broker_expecting_exit(&dir.data, &verify_args);
    assert!(!status.success(), "mid-journal damage must stop the broker");
    assert!(
        stderr.to_lowercase().contains("corrupt"),
        "stderr says the journal is corrupt: {stderr:?}"
    );
    for (s, b) in segs.iter().zip(&before) {
        assert!(
            &std::fs::read(s).unwrap() == b,
            "{} was changed by a broker that refused to start",
            s.display()
        );
    }
    // Without the flag the broker starts from the snapshot, reading none
    // of the sealed segments.
    let mut broker = BrokerProc::start(&dir.data, &args);
    assert!(
        broker.stderr().contains("from the snapshot at"),
        "{}",
        broker.stderr()
    );
    assert!(broker.terminate().success());
    // `--repair` cuts at the damaged batch: the batches before it are
    // served, the later segments are gone, and offsets continue.
    let mut repair_args = args.to_vec();
    repair_args.push("--repair");
    let mut broker = BrokerProc::start(&dir.data, &repair_args);
    let kept = read_partition(broker.addr(), "mid", 0).len() as u64;
    assert!((1..6).contains(&kept), "kept {kept} of 6 batches");
    let mut c = RawConn::connect(broker.addr());
    let v = vec![9u8; 1000];
    assert_eq!(c.produce_ok("mid", 0, &batch_of_values(&[v])), kept);
    drop(c);
    assert!(broker.terminate().success());
    let broker = BrokerProc::start(&dir.data, &args);
    assert_eq!(
        read_partition(broker.addr(), "mid", 0).len() as u64,
        kept + 1
    );
}

#[test]
fn a_damaged_last_batch_after_sigterm_is_either_cut_or_left_untouched() {
    // The weakest acceptable outcome, whatever the recovery policy: the
    // broker cuts the damaged batch and serves, or refuses to start and
    // leaves the files as they were for an operator. Not both.
    let dir = TestDir::new();
    let last = load_and_stop(&dir, Stop::Sigterm);
    let at = BATCH_HEADER_LEN + 20;
    write_at(&last.file, last.pos + at as u64, &[last.bytes[at] ^ 0x01]);
    let damaged = std::fs::read(&last.file).unwrap();
    let args = broker_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match BrokerProc::try_start(&dir.data, &args) {
        Ok(broker) => {
            drop(broker);
            restart_and_check(&dir, BATCHES - 1);
        }
        Err(refused) => {
            let now = std::fs::read(&last.file).unwrap();
            let changed = now.iter().zip(&damaged).filter(|(a, b)| a != b).count();
            assert_eq!(
                changed,
                0,
                "the broker refused to start ({}) but changed {changed} bytes of {}",
                refused.stderr.trim(),
                last.file.display()
            );
        }
    }
}
