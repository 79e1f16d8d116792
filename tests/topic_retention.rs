//! Per-topic retention settings (issue 11, deliverable 6), tested from
//! outside against real brokers.
//!
//! A topic can carry its own `retention_ms` and `retention_bytes`, set when
//! it is created (CreateTopic version 2, `hutong topic create
//! --retention-ms/--retention-bytes`) and changed later (AlterTopic,
//! `hutong topic alter`). These tests check that:
//!
//! * a topic's time limit moves the log start of each of its partitions
//!   past batches older than the limit, up to the end when all are older,
//!   while a topic without a setting keeps every record; offsets carry on
//!   from the old end afterwards;
//! * AlterTopic changes only the fields it names, returns the topic's new
//!   settings, and setting a field back to the broker default stops the
//!   topic's own limit; Metadata (`describe`) reports the settings;
//! * a topic's size limit is per partition: a large partition is cut down
//!   to at least the limit and not much more, a small partition of the
//!   same topic keeps everything, and what is kept reads without a gap;
//! * a topic without a time limit holds back the broker's time retention
//!   of the segments that hold its data, until the topic goes back to the
//!   broker default; the broker's size retention deletes regardless;
//! * settings and the log starts they moved survive a graceful restart
//!   and `kill -9`, and keep taking effect afterwards;
//! * the command line creates, alters and describes the settings, and says
//!   so when the topic is unknown;
//! * in a replication group the leader takes settings and DeleteRecords,
//!   every member agrees on them, and they survive the leader's death.
//!
//! Values are computed from where they are stored (topic, partition,
//! offset), so every record read back is checked byte for byte.

mod common;

use common::cluster::{segment_files, Cluster};
use common::{bounded, run_cli, BrokerProc, Fetched, Kept, OutOfRangeBody, RawConn, TestDir};
use hutong::client::admin::{Admin, TopicConfig, TopicConfigChange};
use hutong::client::ClientError;
use hutong::wire::api::{FetchResponse, TopicMetadata};
use hutong::wire::ErrorCode;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// 1 MiB segments (they must hold a `batch_bytes_max` batch) and a
/// retention check every 100 ms.
const SMALL_TOML: &str =
    "segment_bytes = 1048576\nbatch_bytes_max = 262144\nretention_check_ms = 100\n";
const SEGMENT_BYTES: u64 = MIB;
/// Records in every batch these tests produce.
const RECORDS_PER_BATCH: u64 = 4;
/// Value length of the tests that fill segments: a batch of four is about
/// 64 KiB, so a 1 MiB segment holds 15 of them.
const BIG: usize = 16 * 1024;
/// Value length of the tests that need few bytes: [`common::payload`] alone.
const SMALL: usize = 0;
/// How long a retention effect may take to show (a check runs every
/// 100 ms; the rest is slack for a busy machine).
const SETTLE: Duration = Duration::from_secs(30);
/// Slack for the broker's clock granularity when judging whether a batch
/// could be older than a limit yet.
const CLOCK_SLACK: Duration = Duration::from_millis(250);
/// How long the CLI may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Broker arguments: `--config` with [`SMALL_TOML`] and `extra_toml`.
fn broker_args(dir: &TestDir, extra_toml: &str) -> Vec<String> {
    let config = dir.config(&format!("{SMALL_TOML}{extra_toml}"));
    vec![
        "--config".to_string(),
        config.to_str().expect("utf-8 temp path").to_string(),
    ]
}

fn start(dir: &TestDir, args: &[String]) -> BrokerProc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProc::start(&dir.data, &args)
}

fn admin(addr: SocketAddr) -> Admin {
    Admin::connect(addr).expect("admin connects")
}

/// A time limit and no size limit.
fn time_limit(ms: u64) -> TopicConfig {
    TopicConfig {
        retention_ms: Some(ms),
        retention_bytes: None,
    }
}

/// `len` bytes (at least [`common::payload`]'s) for `offset` of `topic/partition`:
/// the readable prefix names the message, the rest depends on it.
fn value(topic: &str, partition: u32, offset: u64, len: usize) -> Vec<u8> {
    common::filler(&format!("{topic}/{partition}"), offset, len)
}

/// Produces `batches` batches at QoS all to `topic/partition`, each of
/// [`RECORDS_PER_BATCH`] values of `len` bytes continuing at `from`, and
/// checks that each is stored at the partition's end; returns the new end.
fn produce(
    c: &mut RawConn,
    topic: &str,
    partition: u32,
    from: u64,
    batches: u64,
    len: usize,
) -> u64 {
    let mut next = from;
    for _ in 0..batches {
        let values: Vec<Vec<u8>> = (next..next + RECORDS_PER_BATCH)
            .map(|o| value(topic, partition, o, len))
            .collect();
        let base = c.produce_ok(topic, partition, &common::batch_of_values(&values));
        assert_eq!(
            base, next,
            "{topic}/{partition}: a batch is stored at the partition's end offset"
        );
        next += RECORDS_PER_BATCH;
    }
    next
}

/// Asserts that every record holds the value produced at its offset.
fn assert_values(topic: &str, partition: u32, records: &[Fetched], len: usize) {
    for r in records {
        assert!(
            r.value == value(topic, partition, r.offset, len),
            "{topic}/{partition}@{} holds other bytes than were produced there",
            r.offset
        );
    }
}

/// `(earliest, latest)` by ListOffsets.
fn offsets(addr: SocketAddr, topic: &str, partition: u32) -> (u64, u64) {
    let lo = RawConn::connect(addr).list_offsets(topic, partition);
    (lo.earliest, lo.latest)
}

/// Polls ListOffsets of `topic/partition` until `done(log start, end)`,
/// at most [`SETTLE`]; returns them.
fn wait_offsets(
    addr: SocketAddr,
    topic: &str,
    partition: u32,
    what: &str,
    done: impl Fn(u64, u64) -> bool,
) -> (u64, u64) {
    let deadline = Instant::now() + SETTLE;
    let mut c = RawConn::connect(addr);
    loop {
        let lo = c.list_offsets(topic, partition);
        if done(lo.earliest, lo.latest) {
            return (lo.earliest, lo.latest);
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition}: {what} did not happen within {SETTLE:?}; (log start, end) \
             is ({}, {})",
            lo.earliest,
            lo.latest
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every record of `topic/partition` below `end` is gone by
/// its time limit: the log start is the end, which is still `end`.
fn wait_all_expired(addr: SocketAddr, topic: &str, partition: u32, end: u64) {
    wait_offsets(
        addr,
        topic,
        partition,
        &format!("moving the log start to the end {end}"),
        |s, e| {
            assert_eq!(e, end, "{topic}/{partition}: the end stays where it was");
            s == end
        },
    );
}

/// The topic as Metadata (version 3, with its settings) describes it.
fn described(addr: SocketAddr, topic: &str) -> TopicMetadata {
    let md = admin(addr)
        .describe(&[topic])
        .unwrap_or_else(|e| panic!("describe {topic}: {e}"));
    let t = md
        .topics
        .into_iter()
        .find(|t| t.name == topic)
        .unwrap_or_else(|| panic!("Metadata does not describe {topic}"));
    assert_eq!(t.error_code, 0, "{topic} is described without an error");
    t
}

/// The topic's settings as Metadata reports them.
fn config_of(addr: SocketAddr, topic: &str) -> TopicConfig {
    described(addr, topic).config
}

/// [`common::assert_out_of_range`] on a new connection to `addr`.
fn assert_out_of_range(
    addr: SocketAddr,
    topic: &str,
    partition: u32,
    offset: u64,
    start: u64,
    end: u64,
) {
    common::assert_out_of_range(
        &mut RawConn::connect(addr),
        topic,
        partition,
        offset,
        start,
        end,
    );
}

/// [`common::read_kept`] up to the partition's end when the read begins.
fn read_kept(c: &mut RawConn, topic: &str, partition: u32) -> Kept {
    let end = c.list_offsets(topic, partition).latest;
    common::read_kept(c, topic, partition, end)
}

/// Asserts that `topic/partition` keeps every record from 0 to `end`, each
/// holding its value of `len` bytes.
fn assert_keeps_everything(addr: SocketAddr, topic: &str, partition: u32, end: u64, len: usize) {
    let kept = read_kept(&mut RawConn::connect(addr), topic, partition);
    assert_eq!(
        (kept.start, kept.end()),
        (0, end),
        "{topic}/{partition} keeps every record"
    );
    assert_values(topic, partition, &kept.records, len);
}

/// Start position of the oldest segment file in `data`.
fn first_segment(data: &Path) -> Option<u64> {
    segment_files(data).first().map(|s| s.0)
}

// ---------------------------------------------------------------------------
// Time limits
// ---------------------------------------------------------------------------

#[test]
fn a_topic_time_limit_moves_only_that_topics_log_starts() {
    const SHORT: &str = "short";
    const PLAIN: &str = "plain";
    const LIMIT_MS: u64 = 1500;
    const BATCHES: u64 = 10;
    let limit = Duration::from_millis(LIMIT_MS);
    let dir = TestDir::new();
    let broker = start(&dir, &broker_args(&dir, ""));
    let addr = broker.addr();
    let a = admin(addr);
    a.create_topic_with(SHORT, 2, time_limit(LIMIT_MS))
        .expect("create a topic with a time limit");
    a.create_topic(PLAIN, 1).expect("create a plain topic");
    assert_eq!(config_of(addr, SHORT), time_limit(LIMIT_MS));
    assert_eq!(
        config_of(addr, PLAIN),
        TopicConfig::default(),
        "a topic created without settings has the broker defaults"
    );

    // The plain topic first: its batches are older than the short topic's,
    // so once those are gone, the plain topic's would be too if the limit
    // applied to it.
    let mut c = RawConn::connect(addr);
    let plain_end = produce(&mut c, PLAIN, 0, 0, BATCHES, SMALL);
    let t0 = Instant::now();
    let mut ends = [0u64; 2];
    for (p, end) in ends.iter_mut().enumerate() {
        *end = produce(&mut c, SHORT, p as u32, 0, BATCHES, SMALL);
    }
    if t0.elapsed() + CLOCK_SLACK < limit {
        for p in 0..2 {
            assert_eq!(
                offsets(addr, SHORT, p).0,
                0,
                "{SHORT}/{p}: the log start moved before any batch was {LIMIT_MS} ms old"
            );
        }
    } else {
        eprintln!(
            "producing took {:?}: early-deletion check skipped",
            t0.elapsed()
        );
    }

    for (p, &end) in ends.iter().enumerate() {
        wait_all_expired(addr, SHORT, p as u32, end);
    }
    let d = described(addr, SHORT);
    for (p, &end) in ends.iter().enumerate() {
        let pm = &d.partitions[p];
        assert_eq!(
            (pm.start_offset, pm.end_offset),
            (end, end),
            "{SHORT}/{p}: Metadata reports the moved log start"
        );
        assert_out_of_range(addr, SHORT, p as u32, 0, end, end);
        assert_out_of_range(addr, SHORT, p as u32, end - 1, end, end);
    }

    // The other topic is untouched.
    assert_eq!(offsets(addr, PLAIN, 0), (0, plain_end));
    assert_eq!(described(addr, PLAIN).partitions[0].start_offset, 0);
    assert_keeps_everything(addr, PLAIN, 0, plain_end, SMALL);

    // New records continue at the old end and are served right away.
    let fresh = Instant::now();
    let next = produce(&mut c, SHORT, 0, ends[0], 1, SMALL);
    let r = c.fetch_at(SHORT, 0, ends[0]);
    if fresh.elapsed() + CLOCK_SLACK < limit {
        let r = r.ok();
        let f = FetchResponse::decode(&r.body).expect("decode fetch response");
        let got = common::decode_fetched(f.batches, ends[0]);
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (ends[0]..next).collect::<Vec<_>>(),
            "{SHORT}/0: a new batch is readable at the old end"
        );
        assert_values(SHORT, 0, &got, SMALL);
    } else {
        eprintln!(
            "the read after producing came {:?} later: readability check skipped",
            fresh.elapsed()
        );
    }
    // And the limit keeps applying to them.
    wait_all_expired(addr, SHORT, 0, next);
    assert_eq!(offsets(addr, SHORT, 1), (ends[1], ends[1]));
    assert_eq!(offsets(addr, PLAIN, 0), (0, plain_end));
}

#[test]
fn altering_a_topic_sets_its_limits_and_back_to_the_broker_defaults() {
    const ALTERED: &str = "altered";
    const BYSTANDER: &str = "bystander";
    const LIMIT_MS: u64 = 1000;
    /// How long new records are watched once the topic is back to the
    /// broker default: well past its old limit.
    const STAY_WATCH: Duration = Duration::from_millis(2500);
    let dir = TestDir::new();
    let broker = start(&dir, &broker_args(&dir, ""));
    let addr = broker.addr();
    let a = admin(addr);
    a.create_topic(ALTERED, 1).expect("create");
    a.create_topic(BYSTANDER, 1).expect("create");
    let mut c = RawConn::connect(addr);
    let bystander_end = produce(&mut c, BYSTANDER, 0, 0, 4, SMALL);
    let end = produce(&mut c, ALTERED, 0, 0, 8, SMALL);
    assert_eq!(config_of(addr, ALTERED), TopicConfig::default());

    let after = a
        .alter_topic(
            ALTERED,
            TopicConfigChange {
                retention_ms: Some(Some(LIMIT_MS)),
                retention_bytes: None,
            },
        )
        .expect("alter the time limit");
    assert_eq!(
        after,
        time_limit(LIMIT_MS),
        "AlterTopic returns the settings after the change"
    );
    assert_eq!(config_of(addr, ALTERED), after, "Metadata reports them");
    wait_all_expired(addr, ALTERED, 0, end);
    assert_out_of_range(addr, ALTERED, 0, 0, end, end);

    // A change that names only the size limit leaves the time limit be.
    let after = a
        .alter_topic(
            ALTERED,
            TopicConfigChange {
                retention_ms: None,
                retention_bytes: Some(Some(4 * MIB)),
            },
        )
        .expect("alter the size limit");
    let both = TopicConfig {
        retention_ms: Some(LIMIT_MS),
        retention_bytes: Some(4 * MIB),
    };
    assert_eq!(after, both, "only the field named changes");
    assert_eq!(config_of(addr, ALTERED), both);

    // Back to the broker defaults.
    let after = a
        .alter_topic(
            ALTERED,
            TopicConfigChange {
                retention_ms: Some(None),
                retention_bytes: Some(None),
            },
        )
        .expect("alter back to the defaults");
    assert_eq!(after, TopicConfig::default());
    assert_eq!(config_of(addr, ALTERED), TopicConfig::default());

    // New records now stay (the broker keeps seven days), well past the
    // old limit.
    let new_end = produce(&mut c, ALTERED, 0, end, 2, SMALL);
    let produced = Instant::now();
    while produced.elapsed() < STAY_WATCH {
        assert_eq!(
            offsets(addr, ALTERED, 0),
            (end, new_end),
            "{ALTERED}/0: back at the broker default, its new records stay"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let kept = read_kept(&mut c, ALTERED, 0);
    assert_eq!((kept.start, kept.end()), (end, new_end));
    assert_values(ALTERED, 0, &kept.records, SMALL);
    assert_keeps_everything(addr, BYSTANDER, 0, bystander_end, SMALL);

    // An unknown topic is refused.
    let err = a
        .alter_topic(
            "missing",
            TopicConfigChange {
                retention_ms: Some(Some(5)),
                retention_bytes: None,
            },
        )
        .expect_err("altering an unknown topic fails");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
}

// ---------------------------------------------------------------------------
// Size limits
// ---------------------------------------------------------------------------

#[test]
fn a_topic_size_limit_keeps_about_that_many_bytes_of_each_partition() {
    const SIZED: &str = "sized";
    const LIMIT: u64 = MIB;
    /// About 8 MiB: eight 1 MiB segments' worth.
    const P0_BATCHES: u64 = 128;
    /// What partition 0 may keep at most once retention caught up: the
    /// spec says about the limit plus two segments; two more for slack.
    const KEPT_MAX: u64 = LIMIT + 4 * SEGMENT_BYTES;
    let config = TopicConfig {
        retention_ms: None,
        retention_bytes: Some(LIMIT),
    };
    let dir = TestDir::new();
    let broker = start(&dir, &broker_args(&dir, ""));
    let addr = broker.addr();
    admin(addr)
        .create_topic_with(SIZED, 2, config)
        .expect("create a topic with a size limit");
    assert_eq!(config_of(addr, SIZED), config);
    // Partition 1 gets three batches in the first segment and one at the
    // end: about 256 KiB, under the limit.
    let ends = bounded(Duration::from_secs(180), "fill the partitions", move || {
        let mut c = RawConn::connect(addr);
        let p1 = produce(&mut c, SIZED, 1, 0, 3, BIG);
        let p0 = produce(&mut c, SIZED, 0, 0, P0_BATCHES, BIG);
        let p1 = produce(&mut c, SIZED, 1, p1, 1, BIG);
        [p0, p1]
    });

    // A cheap poll first (each record of partition 0 carries BIG bytes),
    // then the exact count by reading what is kept.
    let (start0, end0) = wait_offsets(addr, SIZED, 0, "cutting to the size limit", |s, e| {
        s > 0 && e.saturating_sub(s) * BIG as u64 <= KEPT_MAX
    });
    assert_eq!(end0, ends[0], "{SIZED}/0 ends where producing stopped");
    let mut c = RawConn::connect(addr);
    let kept = read_kept(&mut c, SIZED, 0);
    assert!(kept.start >= start0, "the log start never moves back");
    assert_eq!(kept.end(), ends[0]);
    assert_values(SIZED, 0, &kept.records, BIG);
    assert!(
        kept.batch_bytes >= LIMIT,
        "{SIZED}/0 keeps at least its limit of {LIMIT} bytes: kept {} bytes from offset {}",
        kept.batch_bytes,
        kept.start
    );
    assert!(
        kept.batch_bytes <= KEPT_MAX,
        "{SIZED}/0 keeps about its limit of {LIMIT} bytes: kept {} bytes from offset {}",
        kept.batch_bytes,
        kept.start
    );
    let r = c.fetch_at(SIZED, 0, 0);
    r.expect_error(ErrorCode::OffsetOutOfRange);
    let body = OutOfRangeBody::decode(&r.body).expect("an OffsetOutOfRange trailer");
    assert!(
        body.start_offset >= kept.start && body.end_offset == ends[0],
        "{SIZED}/0: a fetch at 0 names the log start {} and end {} (read from {})",
        body.start_offset,
        body.end_offset,
        kept.start
    );

    // The small partition of the same topic keeps everything.
    assert_keeps_everything(addr, SIZED, 1, ends[1], BIG);

    let d = described(addr, SIZED);
    assert_eq!(d.config, config);
    let (p0, p1) = (&d.partitions[0], &d.partitions[1]);
    assert!(
        p0.start_offset >= kept.start && p0.end_offset == ends[0],
        "Metadata reports {SIZED}/0's moved log start: {p0:?}"
    );
    assert!(
        p0.bytes >= LIMIT,
        "Metadata counts at least the bytes kept: {p0:?}"
    );
    assert_eq!((p1.start_offset, p1.end_offset), (0, ends[1]));
}

// ---------------------------------------------------------------------------
// Topic limits against the broker's retention
// ---------------------------------------------------------------------------

#[test]
fn a_topic_without_a_time_limit_holds_back_the_brokers_time_retention() {
    const KEEP: &str = "keep";
    const OTHER: &str = "other";
    /// Batches to each topic, alternating: about 3 MiB in all, so three
    /// sealed segments shared by both topics and an active one.
    const BATCHES_EACH: u64 = 24;
    /// How long the old segments are watched after producing: well past
    /// the broker's 1000 ms.
    const HOLD_WATCH: Duration = Duration::from_secs(3);
    let unlimited = time_limit(0);
    let dir = TestDir::new();
    let broker = start(&dir, &broker_args(&dir, "retention_ms = 1000\n"));
    let addr = broker.addr();
    let a = admin(addr);
    a.create_topic_with(KEEP, 1, unlimited)
        .expect("create a topic without a time limit");
    a.create_topic(OTHER, 1).expect("create");
    assert_eq!(config_of(addr, KEEP), unlimited);
    let ends = bounded(
        Duration::from_secs(120),
        "fill shared segments",
        move || {
            let mut c = RawConn::connect(addr);
            let mut next = [0u64; 2];
            for k in 0..2 * BATCHES_EACH {
                let (topic, i) = if k % 2 == 0 { (KEEP, 0) } else { (OTHER, 1) };
                next[i] = produce(&mut c, topic, 0, next[i], 1, BIG);
            }
            next
        },
    );
    let produced = Instant::now();
    let segments = segment_files(&dir.data);
    assert!(
        segments.len() >= 3,
        "the load sealed at least two segments: {segments:?}"
    );

    let mut c = RawConn::connect(addr);
    while produced.elapsed() < HOLD_WATCH {
        assert_eq!(
            c.list_offsets(KEEP, 0).earliest,
            0,
            "{KEEP}/0, without a time limit, keeps its log start"
        );
        assert_eq!(
            first_segment(&dir.data),
            Some(0),
            "the first segment, holding {KEEP}'s data, is kept: {:?}",
            segment_files(&dir.data)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_keeps_everything(addr, KEEP, 0, ends[0], BIG);
    // Meanwhile the topic on the broker's 1000 ms limit does not keep its
    // records past it: its log start moves to its end (every batch is older
    // by now), though the segments holding them stay.
    wait_offsets(
        addr,
        OTHER,
        0,
        "the held topic's neighbour to age out",
        |earliest, latest| earliest == ends[1] && latest == ends[1],
    );
    assert_eq!(first_segment(&dir.data), Some(0), "the segments stay");

    // Back to the broker's default of 1000 ms: the old segments go.
    let after = a
        .alter_topic(
            KEEP,
            TopicConfigChange {
                retention_ms: Some(None),
                retention_bytes: None,
            },
        )
        .expect("alter back to the broker default");
    assert_eq!(after, TopicConfig::default());
    let deadline = Instant::now() + SETTLE;
    loop {
        let first = first_segment(&dir.data);
        let start = c.list_offsets(KEEP, 0).earliest;
        if first.is_some_and(|s| s > 0) && start > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker's time retention did not delete the old segments within {SETTLE:?} \
             once {KEEP} was back at the default: first segment {first:?}, {KEEP}'s log start \
             {start}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (topic, end) in [(KEEP, ends[0]), (OTHER, ends[1])] {
        let kept = read_kept(&mut c, topic, 0);
        assert!(
            kept.start > 0 && kept.end() == end,
            "{topic}/0: the log start moved with the deleted segments, the end stayed: \
             read {}..{}, end {end}",
            kept.start,
            kept.end()
        );
        assert_values(topic, 0, &kept.records, BIG);
    }
}

#[test]
fn the_brokers_size_retention_deletes_even_a_topic_without_a_time_limit() {
    const KEEP: &str = "keep";
    /// About 6 MiB, three times the broker's size retention.
    const BATCHES: u64 = 96;
    let dir = TestDir::new();
    let broker = start(&dir, &broker_args(&dir, "retention_bytes = 2097152\n"));
    let addr = broker.addr();
    admin(addr)
        .create_topic_with(KEEP, 1, time_limit(0))
        .expect("create a topic without a time limit");
    let end = bounded(Duration::from_secs(120), "fill", move || {
        produce(&mut RawConn::connect(addr), KEEP, 0, 0, BATCHES, BIG)
    });
    let deadline = Instant::now() + SETTLE;
    loop {
        let first = first_segment(&dir.data);
        let start = offsets(addr, KEEP, 0).0;
        if first.is_some_and(|s| s > 0) && start > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker's size retention did not delete segments within {SETTLE:?}: first \
             segment {first:?}, {KEEP}'s log start {start}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = read_kept(&mut RawConn::connect(addr), KEEP, 0);
    assert!(
        kept.start > 0 && kept.end() == end && !kept.records.is_empty(),
        "{KEEP}/0 keeps the newest records up to its end {end}: read {}..{}",
        kept.start,
        kept.end()
    );
    assert_values(KEEP, 0, &kept.records, BIG);
    assert_eq!(config_of(addr, KEEP), time_limit(0));
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

#[test]
fn settings_and_the_log_starts_they_moved_survive_restarts() {
    /// Created with a time limit; once everything expired, altered to no
    /// time limit (and a size limit it stays under): its log start must
    /// then stay where it is.
    const EXPIRED: &str = "expired";
    /// Created with both limits, kept: it must keep expiring records after
    /// each restart.
    const TIMED: &str = "timed";
    /// No settings: keeps everything.
    const PLAIN: &str = "plain";
    const LIMIT_MS: u64 = 1000;
    let dir = TestDir::new();
    let args = broker_args(&dir, "");
    let mut broker = start(&dir, &args);
    let addr = broker.addr();
    let timed = TopicConfig {
        retention_ms: Some(LIMIT_MS),
        retention_bytes: Some(8 * MIB),
    };
    let a = admin(addr);
    a.create_topic_with(EXPIRED, 1, time_limit(LIMIT_MS))
        .expect("create");
    a.create_topic_with(TIMED, 1, timed).expect("create");
    a.create_topic(PLAIN, 1).expect("create");
    let mut c = RawConn::connect(addr);
    let expired_end = produce(&mut c, EXPIRED, 0, 0, 5, SMALL);
    let mut timed_end = produce(&mut c, TIMED, 0, 0, 5, SMALL);
    let mut plain_end = produce(&mut c, PLAIN, 0, 0, 5, SMALL);
    wait_all_expired(addr, EXPIRED, 0, expired_end);
    wait_all_expired(addr, TIMED, 0, timed_end);
    let expired = a
        .alter_topic(
            EXPIRED,
            TopicConfigChange {
                retention_ms: Some(None),
                retention_bytes: Some(Some(3 * MIB)),
            },
        )
        .expect("alter");
    assert_eq!(
        expired,
        TopicConfig {
            retention_ms: None,
            retention_bytes: Some(3 * MIB),
        }
    );
    // Journal order: once this batch is durable, so is everything before.
    plain_end = produce(&mut c, PLAIN, 0, plain_end, 1, SMALL);
    drop((a, c));

    let mut want = vec![
        (EXPIRED, expired),
        (TIMED, timed),
        (PLAIN, TopicConfig::default()),
    ];
    for how in ["SIGTERM", "kill -9"] {
        if how == "SIGTERM" {
            let status = broker.terminate();
            assert!(
                status.success(),
                "SIGTERM ends the broker cleanly: {status}"
            );
        } else {
            broker.kill9();
        }
        broker = start(&dir, &args);
        let addr = broker.addr();
        for &(topic, config) in &want {
            assert_eq!(
                config_of(addr, topic),
                config,
                "after {how} and a restart, {topic}'s settings are unchanged"
            );
        }
        assert_eq!(
            offsets(addr, EXPIRED, 0),
            (expired_end, expired_end),
            "after {how} and a restart, {EXPIRED}'s moved log start is where it was"
        );
        assert_out_of_range(addr, EXPIRED, 0, 0, expired_end, expired_end);
        // Its last move was followed by a durable batch (the PLAIN one
        // above), so it is durable too.
        assert_eq!(
            offsets(addr, TIMED, 0),
            (timed_end, timed_end),
            "after {how} and a restart, {TIMED}'s log start is where its time limit moved it"
        );
        assert_keeps_everything(addr, PLAIN, 0, plain_end, SMALL);

        // The time limit still applies: a new batch continues at the old
        // end and expires.
        let mut c = RawConn::connect(addr);
        timed_end = produce(&mut c, TIMED, 0, timed_end, 1, SMALL);
        wait_all_expired(addr, TIMED, 0, timed_end);

        // An alteration after the restart (after the snapshot a graceful
        // stop wrote) must come back after the next one.
        let size_limit = if how == "SIGTERM" { 5 * MIB } else { 6 * MIB };
        let timed_now = admin(addr)
            .alter_topic(
                TIMED,
                TopicConfigChange {
                    retention_ms: None,
                    retention_bytes: Some(Some(size_limit)),
                },
            )
            .expect("alter after the restart");
        assert_eq!(
            timed_now,
            TopicConfig {
                retention_ms: Some(LIMIT_MS),
                retention_bytes: Some(size_limit),
            },
            "AlterTopic changed the size limit alone"
        );
        want[1].1 = timed_now;
        plain_end = produce(&mut c, PLAIN, 0, plain_end, 1, SMALL);
    }
    // A last restart after kill -9 for the alteration made above.
    broker.kill9();
    let broker = start(&dir, &args);
    let addr = broker.addr();
    for &(topic, config) in &want {
        assert_eq!(config_of(addr, topic), config, "{topic} after kill -9");
    }
    assert_eq!(offsets(addr, EXPIRED, 0), (expired_end, expired_end));
    assert_keeps_everything(addr, PLAIN, 0, plain_end, SMALL);
    // Offsets carry on where they were for every topic.
    let mut c = RawConn::connect(addr);
    produce(&mut c, EXPIRED, 0, expired_end, 1, SMALL);
    let r = c.fetch_records(EXPIRED, 0, expired_end);
    assert_eq!(
        r.first().map(|r| r.offset),
        Some(expired_end),
        "{EXPIRED}, without a time limit now, serves its new batch"
    );
    produce(&mut c, TIMED, 0, timed_end, 1, SMALL);
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[test]
fn the_cli_creates_alters_and_describes_topic_settings() {
    let dir = TestDir::new();
    let broker = start(&dir, &broker_args(&dir, ""));
    let addr = broker.addr();
    let addr_s = addr.to_string();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--addr", addr_s.as_str()]);
        run_cli(&all, b"", CLI_TIMEOUT)
    };
    let ok = |args: &[&str]| {
        let (status, stdout, stderr) = cli(args);
        assert!(
            status.success(),
            "`hutong {}` failed: {stdout}{stderr}",
            args.join(" ")
        );
        stdout
    };
    let describe = |name: &str| ok(&["topic", "describe", name]);

    ok(&[
        "topic",
        "create",
        "t",
        "--partitions",
        "1",
        "--retention-ms",
        "60000",
    ]);
    let out = describe("t");
    assert!(
        out.contains("60000"),
        "describe shows the time limit: {out}"
    );
    assert!(
        out.to_lowercase().contains("retention"),
        "describe names the setting: {out}"
    );
    assert_eq!(config_of(addr, "t"), time_limit(60000));

    let out = ok(&["topic", "alter", "t", "--retention-bytes", "5000"]);
    assert!(
        out.contains("5000") && out.contains("60000"),
        "alter prints the settings after the change: {out}"
    );
    let out = describe("t");
    assert!(
        out.contains("5000") && out.contains("60000"),
        "describe shows both limits: {out}"
    );
    assert_eq!(
        config_of(addr, "t"),
        TopicConfig {
            retention_ms: Some(60000),
            retention_bytes: Some(5000),
        }
    );

    let out = ok(&["topic", "alter", "t", "--retention-ms", "default"]);
    assert!(!out.contains("60000"), "the time limit is gone: {out}");
    let out = describe("t");
    assert!(
        !out.contains("60000") && out.contains("5000"),
        "describe shows the broker default for the time limit, the size limit stays: {out}"
    );
    assert_eq!(
        config_of(addr, "t"),
        TopicConfig {
            retention_ms: None,
            retention_bytes: Some(5000),
        }
    );

    ok(&[
        "topic",
        "create",
        "sized",
        "--partitions",
        "2",
        "--retention-bytes",
        "7000",
    ]);
    let out = describe("sized");
    assert!(out.contains("7000"), "describe shows the size limit: {out}");
    assert_eq!(
        config_of(addr, "sized"),
        TopicConfig {
            retention_ms: None,
            retention_bytes: Some(7000),
        }
    );

    let (status, _, err) = cli(&["topic", "alter", "missing", "--retention-ms", "5"]);
    assert!(!status.success(), "altering an unknown topic must fail");
    assert!(
        err.contains("UnknownTopic") || err.to_lowercase().contains("unknown topic"),
        "stderr says why: {err:?}"
    );
}

// ---------------------------------------------------------------------------
// Replication groups
// ---------------------------------------------------------------------------

/// Runs `call` on the group's leader, again when leadership moved meanwhile.
fn on_leader<T>(
    cluster: &Cluster,
    call: impl FnMut(&Admin) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let (_, leader) = cluster.expect_leader();
    hutong::client::cluster::on_leader(&leader.to_string(), Duration::from_secs(30), call)
}

/// In a replication group the leader takes topic settings and
/// DeleteRecords like any other write (a follower answers `NotLeader`):
/// every member reports the same settings and log start, and they survive
/// the leader's death.
#[test]
fn a_replication_group_agrees_on_settings_and_deletions_across_a_failover() {
    const TOPIC: &str = "grouped";
    let mut cluster = Cluster::start(3, false);
    let hour = time_limit(3_600_000);
    on_leader(&cluster, |a| a.create_topic_with(TOPIC, 1, hour)).expect("create with settings");
    let sized = on_leader(&cluster, |a| {
        a.alter_topic(
            TOPIC,
            TopicConfigChange {
                retention_ms: None,
                retention_bytes: Some(Some(MIB)),
            },
        )
    })
    .expect("alter on the leader");
    assert_eq!(
        sized,
        TopicConfig {
            retention_ms: Some(3_600_000),
            retention_bytes: Some(MIB),
        }
    );
    let (leader_id, leader) = cluster.expect_leader();
    let end = produce(&mut RawConn::connect(leader), TOPIC, 0, 0, 3, SMALL);
    let start = on_leader(&cluster, |a| a.delete_records(TOPIC, 0, 5)).expect("delete");
    assert_eq!(start, 5);
    // Any other member refuses both, naming the leader.
    let follower = cluster
        .ids()
        .find(|&id| id != leader_id)
        .expect("a follower");
    let refused = admin(cluster.addr(follower))
        .alter_topic(TOPIC, TopicConfigChange::default())
        .expect_err("a follower refuses AlterTopic");
    assert_eq!(refused.code(), Some(ErrorCode::NotLeader), "{refused}");
    let refused = admin(cluster.addr(follower))
        .delete_records(TOPIC, 0, 6)
        .expect_err("a follower refuses DeleteRecords");
    assert_eq!(refused.code(), Some(ErrorCode::NotLeader), "{refused}");

    let agreed = |cluster: &Cluster, id: usize| {
        let t = described(cluster.addr(id), TOPIC);
        (
            t.config,
            t.partitions[0].start_offset,
            t.partitions[0].end_offset,
        )
    };
    let want = (sized, 5, end);
    let deadline = Instant::now() + SETTLE;
    for id in cluster.ids() {
        while agreed(&cluster, id) != want {
            assert!(
                Instant::now() < deadline,
                "member {id} reports {:?}, the leader {want:?}",
                agreed(&cluster, id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The leader dies: the next one holds the same.
    cluster.kill9(leader_id);
    let (next_id, next) = cluster
        .leader_within(Duration::from_secs(30), |id| id != leader_id)
        .expect("a new leader");
    assert_eq!(agreed(&cluster, next_id), want);
    assert_out_of_range(next, TOPIC, 0, 4, 5, end);
    let kept = read_kept(&mut RawConn::connect(next), TOPIC, 0);
    assert_eq!((kept.start, kept.end()), (5, end));
    // And the old leader, back, agrees.
    cluster.restart(leader_id);
    let deadline = Instant::now() + SETTLE;
    while agreed(&cluster, leader_id) != want {
        assert!(
            Instant::now() < deadline,
            "the restarted member reports {:?}",
            agreed(&cluster, leader_id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
