//! Segment index files (issue 11, memory independent of the data held):
//! once a segment is sealed and committed the broker writes its index to
//! `<start>.idx` beside it, drops those entries from memory, and serves
//! fetches below the in-memory index from the file. These tests check that
//! every sealed segment gets a sound index file, that reads through them
//! return every record exactly once, that a damaged, missing or stray index
//! file is dealt with at the next start (rebuilt or deleted, logged), and
//! that retention deletes index files with their segments.

mod common;

use common::{
    batch_of_values, bounded, lock, now_ms, payload, run_cli, BrokerProc, RawConn, TestDir,
};
use hutong::client::Admin;
use hutong::journal::seg_index::{self, SegmentIndex};
use hutong::journal::segment::list_segments;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 1 MiB segments, looked at every 100 ms.
const SMALL_SEGMENTS_TOML: &str =
    "segment_bytes = 1048576\nbatch_bytes_max = 262144\nretention_check_ms = 100\n";
const TOPIC: &str = "indexed";
const PARTITIONS: u32 = 3;
/// Records per batch, and the size of each value: a batch is a little over
/// 2 KiB, so a segment holds some 450 batches of three partitions.
const RECORDS_PER_BATCH: u64 = 4;
const VALUE_BYTES: usize = 512;
/// How long index files may take to appear (they are written within a
/// retention check of a segment becoming durable; the rest is slack for a
/// busy machine).
const INDEX_TIMEOUT: Duration = Duration::from_secs(60);

/// Serialises the tests of this file: each fills a journal.
static SERIAL: Mutex<()> = Mutex::new(());

/// The value stored at `offset` of `partition`.
fn expected(partition: u32, offset: u64) -> Vec<u8> {
    let mut v = payload(&format!("p{partition}"), offset);
    v.resize(VALUE_BYTES, (offset % 251) as u8);
    v
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Produces `batches` batches round robin over the partitions, continuing
/// each at `next`; returns the new ends.
fn produce(addr: SocketAddr, next: Vec<u64>, batches: u64) -> Vec<u64> {
    bounded(Duration::from_secs(120), "produce", move || {
        let mut c = RawConn::connect(addr);
        let mut next = next;
        for k in 0..batches {
            let p = (k % u64::from(PARTITIONS)) as usize;
            let from = next[p];
            let values: Vec<Vec<u8>> = (from..from + RECORDS_PER_BATCH)
                .map(|o| expected(p as u32, o))
                .collect();
            let base = c.produce_ok(TOPIC, p as u32, &batch_of_values(&values));
            assert_eq!(base, from, "{TOPIC}/{p}: stored at the end offset");
            next[p] = from + RECORDS_PER_BATCH;
        }
        next
    })
}

/// Start positions of the segment files and of the index files.
fn files(dir: &Path) -> (Vec<u64>, Vec<u64>) {
    let segments = list_segments(dir)
        .expect("list segments")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let (indexes, _) = seg_index::list(dir).expect("list index files");
    (segments, indexes.into_iter().map(|(s, _)| s).collect())
}

/// Waits until every sealed segment (all but the newest) has an index file
/// and no other index file is left; returns the segment starts.
fn wait_for_index_files(dir: &Path) -> Vec<u64> {
    let deadline = Instant::now() + INDEX_TIMEOUT;
    loop {
        let (segments, indexes) = files(dir);
        let sealed = &segments[..segments.len().saturating_sub(1)];
        if indexes == sealed {
            return segments;
        }
        assert!(
            Instant::now() < deadline,
            "within {INDEX_TIMEOUT:?} the sealed segments {sealed:?} did not get exactly one \
             index file each: index files {indexes:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens and fully checks the index file of every sealed segment, and
/// checks that each ends where the next segment starts; returns how many
/// entries they hold.
fn check_index_files(dir: &Path, segments: &[u64]) -> u64 {
    let mut entries = 0u64;
    for w in segments.windows(2) {
        let index = SegmentIndex::open(dir, w[0])
            .unwrap_or_else(|e| panic!("index file of segment {}: {e}", w[0]))
            .unwrap_or_else(|| panic!("segment {} has no index file", w[0]));
        index
            .verify()
            .unwrap_or_else(|e| panic!("index file of segment {}: {e}", w[0]));
        assert_eq!(
            (index.segment_start, index.segment_end),
            (w[0], w[1]),
            "an index file covers its segment up to the next one"
        );
        assert!(
            !index.sections().is_empty(),
            "segment {} holds batches, so its index has sections",
            w[0]
        );
        entries += index
            .sections()
            .iter()
            .map(|s| u64::from(s.entry_count))
            .sum::<u64>();
    }
    entries
}

/// Reads every partition from its log start to `ends` in small fetches
/// (so that many of them start inside an indexed segment), checking each
/// record's offset and value; returns the log starts.
fn read_back(addr: SocketAddr, ends: Vec<u64>) -> Vec<u64> {
    bounded(Duration::from_secs(120), "read back", move || {
        let mut c = RawConn::connect(addr);
        let mut starts = Vec::new();
        for (p, &end) in ends.iter().enumerate() {
            let p = p as u32;
            let offsets = c.list_offsets(TOPIC, p);
            assert_eq!(
                offsets.latest, end,
                "{TOPIC}/{p}: the end is what was produced"
            );
            let mut next = offsets.earliest;
            starts.push(next);
            // Every third read starts in the middle of a batch.
            let mut k = 0u64;
            while next < end {
                let from = if k % 3 == 2 && next + 1 < end {
                    next + 1
                } else {
                    next
                };
                let got = c.fetch_records(TOPIC, p, from);
                assert!(
                    !got.is_empty(),
                    "{TOPIC}/{p}: a fetch at {from} < {end} returned nothing"
                );
                for (i, r) in got.iter().enumerate() {
                    assert_eq!(
                        r.offset,
                        from + i as u64,
                        "{TOPIC}/{p}: no gap after {from}"
                    );
                    assert_eq!(
                        r.value,
                        expected(p, r.offset),
                        "{TOPIC}/{p}@{}: the value stored there",
                        r.offset
                    );
                }
                next = from + got.len() as u64;
                k += 1;
            }
        }
        starts
    })
}

/// A broker started with `args` in `dir`, its topic filled with about 6
/// MiB (five or six sealed segments), once every sealed segment has its
/// index file: the broker, the partitions' ends and the segment starts.
fn filled(dir: &TestDir, args: &[&str]) -> (BrokerProc, Vec<u64>, Vec<u64>) {
    let broker = BrokerProc::start(&dir.data, args);
    RawConn::connect(broker.addr()).create_topic(TOPIC, PARTITIONS);
    let ends = produce(broker.addr(), vec![0; PARTITIONS as usize], 2_700);
    let segments = wait_for_index_files(&dir.data);
    assert!(
        segments.len() >= 5,
        "the test needs sealed segments: {segments:?}"
    );
    (broker, ends, segments)
}

#[test]
fn sealed_segments_get_index_files_and_reads_through_them_return_every_record() {
    let _serial = lock(&SERIAL);
    let dir = TestDir::new();
    let config = dir.config(SMALL_SEGMENTS_TOML);
    let args = ["--config", path_str(&config)];
    let (mut broker, ends, segments) = filled(&dir, &args);
    let indexed = check_index_files(&dir.data, &segments);
    assert!(
        indexed > 2_000,
        "the sealed segments index most batches: {indexed}"
    );
    // Give the writer a few retention checks to drop the indexed entries
    // from memory, so that the reads below go through the files.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read_back(broker.addr(), ends.clone()),
        vec![0; PARTITIONS as usize]
    );

    // Producing goes on after the trims, and a restart (which rebuilds the
    // indexes from the journal and finds the files sound) serves the same.
    let ends = produce(broker.addr(), ends, 500);
    broker.terminate();
    let broker = BrokerProc::start(&dir.data, &args);
    let segments = wait_for_index_files(&dir.data);
    check_index_files(&dir.data, &segments);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_back(broker.addr(), ends), vec![0; PARTITIONS as usize]);
    assert!(
        !broker.stderr().contains("rewriting"),
        "sound index files are reused, not rewritten: {}",
        broker.stderr()
    );
    // The restart after a clean stop started from the checkpoint's
    // snapshot and read no sealed segment: at most the active one.
    let read = bytes_read_at_start(&broker.stderr());
    assert!(
        read <= 1_048_576,
        "recovery read {read} bytes, more than the active segment: {}",
        broker.stderr()
    );
}

/// The bytes recovery read, from the broker's start line ("from the
/// snapshot at S; read N bytes"); fails when it did not start from a
/// snapshot.
fn bytes_read_at_start(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("recovered:"))
        .unwrap_or_else(|| panic!("no recovery line: {stderr}"));
    let (_, rest) = line
        .split_once("from the snapshot at ")
        .unwrap_or_else(|| panic!("recovery read the whole journal: {line}"));
    let (_, rest) = rest.split_once("read ").expect("bytes read");
    rest.split(' ').next().unwrap().parse().expect("a number")
}

#[test]
fn damaged_missing_and_stray_index_files_are_rebuilt_or_deleted_at_the_next_start() {
    let _serial = lock(&SERIAL);
    let dir = TestDir::new();
    let config = dir.config(SMALL_SEGMENTS_TOML);
    let args = ["--config", path_str(&config)];
    let (mut broker, ends, segments) = filled(&dir, &args);
    broker.terminate();

    let idx = |start: u64| dir.data.join(seg_index::index_file_name(start));
    // A flipped byte in the middle, a cut-off file, a missing one, and one
    // for a segment that does not exist.
    let mut bytes = std::fs::read(idx(segments[0])).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(idx(segments[0]), &bytes).unwrap();
    let bytes = std::fs::read(idx(segments[1])).unwrap();
    std::fs::write(idx(segments[1]), &bytes[..bytes.len() - 7]).unwrap();
    std::fs::remove_file(idx(segments[2])).unwrap();
    let stray = segments.last().unwrap() + 12_345;
    std::fs::write(idx(stray), b"HTIX not really").unwrap();
    std::fs::write(
        dir.data
            .join(format!("{}.tmp", seg_index::index_file_name(segments[3]))),
        b"half written",
    )
    .unwrap();

    let broker = BrokerProc::start(&dir.data, &args);
    let segments_now = wait_for_index_files(&dir.data);
    assert_eq!(segments_now, segments, "no segment came or went");
    check_index_files(&dir.data, &segments);
    let leftovers: Vec<String> = std::fs::read_dir(&dir.data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.contains(&stray.to_string()))
        .collect();
    assert!(
        leftovers.is_empty(),
        "stray and unfinished index files are deleted: {leftovers:?}"
    );
    let stderr = broker.stderr();
    for start in [segments[0], segments[1]] {
        assert!(
            stderr.contains(&format!("index file of segment {start}")),
            "the damaged index file of segment {start} is named in the log: {stderr}"
        );
    }
    // The first file's directory is sound, so recovery took it and the
    // background check found its damaged entries; the cut-off second one
    // made recovery read the segments from there on.
    assert!(
        stderr.contains(&format!(
            "the index file of segment {} was rebuilt",
            segments[0]
        )),
        "{stderr}"
    );
    assert!(bytes_read_at_start(&stderr) > 1_048_576, "{stderr}");
    assert_eq!(read_back(broker.addr(), ends), vec![0; PARTITIONS as usize]);
}

#[test]
fn retention_deletes_index_files_with_their_segments() {
    let _serial = lock(&SERIAL);
    let dir = TestDir::new();
    let config = dir.config(&format!("{SMALL_SEGMENTS_TOML}retention_bytes = 3145728\n"));
    let broker = BrokerProc::start(&dir.data, &["--config", path_str(&config)]);
    RawConn::connect(broker.addr()).create_topic(TOPIC, PARTITIONS);
    // About 9 MiB through a 3 MiB retention.
    let ends = produce(broker.addr(), vec![0; PARTITIONS as usize], 4_000);
    let deadline = Instant::now() + INDEX_TIMEOUT;
    let segments = loop {
        let (segments, indexes) = files(&dir.data);
        let sealed: BTreeSet<u64> = segments[..segments.len() - 1].iter().copied().collect();
        let indexed: BTreeSet<u64> = indexes.iter().copied().collect();
        if segments.len() <= 5 && indexed == sealed {
            break segments;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not settle with one index file per sealed segment: segments \
             {segments:?}, index files {indexes:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(segments[0] > 0, "retention deleted the oldest segments");
    check_index_files(&dir.data, &segments);
    let starts = read_back(broker.addr(), ends);
    assert!(
        starts.iter().all(|&s| s > 0),
        "every partition's log start moved up: {starts:?}"
    );
}

/// ListOffsets by time (version 2), `hutong consume --from-time` and
/// `hutong topic describe` over a partition whose older batches are in
/// segment index files and newer ones in memory: produced in phases a few
/// milliseconds apart, each phase's first offset is what a lookup at the
/// time the phase began finds, and describe shows the log start, end and
/// the bytes stored.
#[test]
fn time_lookups_and_describe_cover_the_files_and_memory() {
    let _serial = lock(&SERIAL);
    let dir = TestDir::new();
    let config = dir.config(SMALL_SEGMENTS_TOML);
    let broker = BrokerProc::start(&dir.data, &["--config", path_str(&config)]);
    let addr = broker.addr();
    RawConn::connect(addr).create_topic(TOPIC, PARTITIONS);
    // Each phase: about 1.4 MiB, so every phase boundary but the last lies
    // in a sealed segment.
    const PHASES: usize = 5;
    let (times, firsts, ends, bytes) = bounded(Duration::from_secs(120), "phases", move || {
        let mut c = RawConn::connect(addr);
        let mut next = vec![0u64; PARTITIONS as usize];
        let mut bytes = vec![0u64; PARTITIONS as usize];
        let (mut times, mut firsts) = (Vec::new(), Vec::new());
        for _ in 0..PHASES {
            std::thread::sleep(Duration::from_millis(5));
            times.push(now_ms());
            std::thread::sleep(Duration::from_millis(5));
            firsts.push(next.clone());
            for k in 0..600u64 {
                let p = (k % u64::from(PARTITIONS)) as usize;
                let values: Vec<Vec<u8>> = (next[p]..next[p] + RECORDS_PER_BATCH)
                    .map(|o| expected(p as u32, o))
                    .collect();
                let batch = batch_of_values(&values);
                assert_eq!(c.produce_ok(TOPIC, p as u32, &batch), next[p]);
                next[p] += RECORDS_PER_BATCH;
                bytes[p] += batch.len() as u64;
            }
        }
        (times, firsts, next, bytes)
    });
    let segments = wait_for_index_files(&dir.data);
    assert!(
        segments.len() >= 4,
        "phases span sealed segments: {segments:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let admin = Admin::connect(addr).unwrap();
    for p in 0..PARTITIONS {
        let pi = p as usize;
        for (k, &t) in times.iter().enumerate() {
            assert_eq!(
                admin.offset_for_time(TOPIC, p, t).unwrap(),
                firsts[k][pi],
                "{TOPIC}/{p}: the first offset appended at or after phase {k}'s start"
            );
        }
        assert_eq!(
            admin.offset_for_time(TOPIC, p, 0).unwrap(),
            0,
            "a time before all: the start"
        );
        assert_eq!(
            admin.offset_for_time(TOPIC, p, now_ms() + 60_000).unwrap(),
            ends[pi],
            "a time after all: the end"
        );
    }
    // The command line: from a time in ms, the first message of phase 3.
    let (status, stdout, stderr) = run_cli(
        &[
            "consume",
            "--addr",
            &addr.to_string(),
            "--topic",
            TOPIC,
            "--partition",
            "1",
            "--from-time",
            &times[3].to_string(),
            "--count",
            "1",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(status.success(), "consume --from-time: {stderr}");
    // The readable prefix every value of that message starts with.
    let want = format!("p1-{:08}-", firsts[3][1]);
    assert!(
        stdout.starts_with(&want),
        "consume --from-time starts at phase 3's first message: {stdout:?}"
    );
    // Describe: one row per partition with start, end, messages and bytes.
    let (status, stdout, stderr) = run_cli(
        &["topic", "describe", TOPIC, "--addr", &addr.to_string()],
        b"",
        Duration::from_secs(30),
    );
    assert!(status.success(), "topic describe: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("topic {TOPIC}: {PARTITIONS} partition(s)")
    );
    assert_eq!(
        lines[1],
        "retention_ms: broker default, retention_bytes: default (none)"
    );
    for p in 0..PARTITIONS as usize {
        let cols: Vec<u64> = lines[3 + p]
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(
            cols,
            vec![p as u64, 0, ends[p], ends[p], bytes[p]],
            "describe's row for partition {p}: {stdout}"
        );
    }
    let (status, _, stderr) = run_cli(
        &["topic", "describe", "nope", "--addr", &addr.to_string()],
        b"",
        Duration::from_secs(30),
    );
    assert!(
        !status.success() && stderr.contains("UnknownTopic"),
        "{stderr}"
    );
}
