//! A full disk: the broker's data directory is a small tmpfs, mostly taken
//! by a filler file. Producing until the disk is full must get the
//! `StorageFull` error (not a crash, not a hang) and lose nothing that was
//! acknowledged; once the filler is deleted, producing must resume on its
//! own, without a restart; and a restart must find everything.
//!
//! Mounting needs root (as in CI). Where `mount` is not permitted the test
//! prints a `SKIPPED` line and passes.

mod common;

use common::tmpfs::{fill, fill_to_the_last_byte, Tmpfs};
use common::{bounded, read_partition, BrokerProc, Fetched, RawConn, TestDir};
use hutong::wire::api::ProduceResponse;
use hutong::wire::{ErrorCode, Qos};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TOPIC: &str = "full";
/// Size of the tmpfs holding the data directory.
const TMPFS_BYTES: u64 = 24 << 20;
/// Room left beside the filler file: a few segments' worth.
const FREE_BYTES: u64 = 5 << 20;
const RECORDS_PER_BATCH: u64 = 16;
/// A value of about 4 KiB: one batch is about 64 KiB.
const VALUE_PAD_BYTES: usize = 4000;
/// Small segments, so that the free room is used up in a few rolls. The
/// broker's stderr log is written beside the data directory, outside the
/// tmpfs, so that only the journal competes for space.
const CONFIG: &str = "segment_bytes = 1048576\n\
                      batch_bytes_max = 262144\n\
                      write_cache_bytes = 1048576\n";

/// One acknowledged batch.
#[derive(Debug, Clone)]
struct Acked {
    base_offset: u64,
    values: Vec<Vec<u8>>,
}

fn batch_values(batch: u64) -> Vec<Vec<u8>> {
    (0..RECORDS_PER_BATCH)
        .map(|i| {
            let mut v = common::payload(&format!("full-b{batch}"), i);
            v.resize(VALUE_PAD_BYTES, (batch + i) as u8);
            v
        })
        .collect()
}

/// Produces batch number `batch` at QoS all; the base offset, or the error
/// code of the answer.
fn produce(c: &mut RawConn, batch: u64) -> Result<Acked, ErrorCode> {
    let values = batch_values(batch);
    let r = c.produce(
        TOPIC,
        0,
        Qos::All as u8,
        10_000,
        &common::batch_of_values(&values),
    );
    match r.code() {
        ErrorCode::None => Ok(Acked {
            base_offset: ProduceResponse::decode(&r.body)
                .expect("decode produce response")
                .base_offset,
            values,
        }),
        code => Err(code),
    }
}

/// Reads the topic back and checks it holds exactly the acknowledged
/// batches, in order, byte for byte: a refused produce wrote nothing.
fn check_exactly(addr: SocketAddr, acked: &[Acked], when: &str) {
    let acked = acked.to_vec();
    let when = when.to_string();
    bounded(Duration::from_secs(60), "read the topic back", move || {
        let stored: Vec<Fetched> = read_partition(addr, TOPIC, 0);
        let want: usize = acked.iter().map(|a| a.values.len()).sum();
        assert_eq!(
            stored.len(),
            want,
            "{when}: the topic holds exactly the acknowledged records"
        );
        for a in &acked {
            for (i, v) in a.values.iter().enumerate() {
                let offset = a.base_offset as usize + i;
                assert!(
                    stored[offset].value == *v,
                    "{when}: acknowledged {TOPIC}/0@{offset} holds other bytes"
                );
            }
        }
    });
}

/// Where the broker's stderr log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Log {
    /// On another filesystem: only the journal meets the full disk.
    Elsewhere,
    /// On the full tmpfs too, as when an operator logs into the data
    /// disk: writing a log line fails there with ENOSPC.
    OnTheFullDisk,
}

/// The whole scenario; see the file's doc comment.
fn fill_the_disk_then_free_it(log: Log) {
    let dir = TestDir::new();
    // The harness writes the broker's stderr beside the data directory, so
    // mounting on the data directory keeps the log off the tmpfs, and
    // mounting on a parent of it puts the log on the tmpfs.
    let (mount_point, data) = match log {
        Log::Elsewhere => (dir.data.clone(), dir.data.clone()),
        Log::OnTheFullDisk => {
            let mnt = dir.tmp.path().join("mnt");
            std::fs::create_dir(&mnt).expect("create mount point");
            (mnt.clone(), mnt.join("data"))
        }
    };
    let _tmpfs = match Tmpfs::mount(&mount_point, TMPFS_BYTES) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED disk_full: cannot mount a tmpfs for the data directory ({e})");
            return;
        }
    };
    std::fs::create_dir_all(&data).expect("create data dir");
    let t0 = Instant::now();
    // The data directory ignores files that are not segments, the lock or
    // the checkpoint, so the filler can sit right in it.
    let filler = data.join("filler.bin");
    fill(&filler, TMPFS_BYTES - FREE_BYTES);
    let config = dir.config(CONFIG);
    let args = ["--config", config.to_str().expect("utf-8 temp path")];
    let mut broker = BrokerProc::start(&data, &args);
    let addr = broker.addr();

    // Fill the disk: every answer is a success until one is StorageFull.
    let (mut acked, full_at) = bounded(Duration::from_secs(60), "produce until full", move || {
        let mut c = RawConn::connect(addr);
        c.create_topic(TOPIC, 1);
        let mut acked = Vec::new();
        // Twice the free room in batches: the disk must be full by then.
        let limit = 2 * FREE_BYTES / (RECORDS_PER_BATCH * VALUE_PAD_BYTES as u64);
        for batch in 0..limit {
            match produce(&mut c, batch) {
                Ok(a) => acked.push(a),
                Err(code) => {
                    assert_eq!(
                        code,
                        ErrorCode::StorageFull,
                        "producing to a full disk fails with StorageFull"
                    );
                    return (acked, batch);
                }
            }
        }
        panic!("{limit} batches of 64 KiB fitted in {FREE_BYTES} free bytes");
    });
    assert!(
        !acked.is_empty(),
        "some batches fitted before the disk was full"
    );
    eprintln!(
        "disk full after {} acknowledged batches ({} KiB)",
        acked.len(),
        acked.len() as u64 * RECORDS_PER_BATCH * VALUE_PAD_BYTES as u64 / 1024
    );

    // Still full: still StorageFull, and reads keep working.
    let again = bounded(Duration::from_secs(30), "produce while full", move || {
        let mut c = RawConn::connect(addr);
        (0..3)
            .map(|k| produce(&mut c, full_at + k).map(|a| a.base_offset))
            .collect::<Vec<_>>()
    });
    assert!(
        again.iter().all(|r| *r == Err(ErrorCode::StorageFull)),
        "while the disk stays full every produce gets StorageFull: {again:?}"
    );
    check_exactly(addr, &acked, "while the disk is full");

    // Full to the last byte: a topic creation may still fit in the active
    // segment's tail, but then its checkpoint cannot be written. Either way
    // the broker must answer, and an acknowledged topic must survive.
    let top_up = data.join("filler-top-up.bin");
    fill_to_the_last_byte(&top_up);
    // Make the broker log: each of these connections is closed with a line
    // of about 70 bytes on stderr, 14 KiB in all, more than the last page
    // of a log file on the tmpfs can still take.
    bounded(Duration::from_secs(30), "log while full", move || {
        use std::io::{Read, Write};
        for _ in 0..200 {
            // A broker that stopped serving is reported just below.
            let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            else {
                return;
            };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(&[4, 0, 0, 0, 1, 0, 1, 0]);
            let _ = c.read_to_end(&mut Vec::new());
        }
    });
    assert_still_serving(addr, "after logging on a full disk");
    let created = bounded(
        Duration::from_secs(30),
        "create a topic while full",
        move || {
            let mut c = RawConn::connect(addr);
            let code = c.try_create_topic("made-while-full", 1).code();
            let still_full = produce(&mut c, full_at + 3).map(|a| a.base_offset);
            (code, still_full)
        },
    );
    assert!(
        matches!(created.0, ErrorCode::None | ErrorCode::StorageFull),
        "creating a topic on a full disk succeeds or gets StorageFull, not {}",
        created.0
    );
    assert_eq!(
        created.1,
        Err(ErrorCode::StorageFull),
        "a disk full to the last byte still gets StorageFull"
    );
    let topic_made_while_full = created.0 == ErrorCode::None;
    eprintln!(
        "creating a topic on a disk full to the last byte: {}",
        created.0
    );
    check_exactly(addr, &acked, "while the disk is full to the last byte");
    std::fs::remove_file(&top_up).expect("delete top-up filler");

    // Free the space: producing resumes without a restart.
    std::fs::remove_file(&filler).expect("delete filler");
    let next = full_at + 4;
    let resumed = bounded(
        Duration::from_secs(30),
        "produce after freeing",
        move || {
            let mut c = RawConn::connect(addr);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut attempts = 1;
            let first = loop {
                match produce(&mut c, next) {
                    Ok(a) => break a,
                    Err(ErrorCode::StorageFull) if Instant::now() < deadline => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(code) => panic!("produce after freeing space got {code}"),
                }
            };
            let mut out = vec![first];
            // More than the room that was free before: new segments are made.
            for batch in next + 1..next + 1 + 2 * FREE_BYTES / (64 << 10) {
                out.push(produce(&mut c, batch).expect("produce after freeing space"));
            }
            (out, attempts)
        },
    );
    eprintln!(
        "producing resumed after {} attempt(s); {} more batches acknowledged",
        resumed.1,
        resumed.0.len()
    );
    acked.extend(resumed.0);
    check_exactly(addr, &acked, "after space was freed");

    // A restart finds the same, and offsets go on from there.
    let status = broker.terminate();
    assert!(status.success(), "graceful shutdown exits 0 ({status})");
    broker = BrokerProc::start(&data, &args);
    let addr = broker.addr();
    check_exactly(addr, &acked, "after a restart");
    let end: u64 = acked.iter().map(|a| a.values.len() as u64).sum();
    let last = bounded(
        Duration::from_secs(30),
        "produce after restart",
        move || produce(&mut RawConn::connect(addr), next + 1_000).expect("produce after restart"),
    );
    assert_eq!(last.base_offset, end, "offsets continue after the restart");
    if topic_made_while_full {
        let mut c = RawConn::connect(addr);
        assert_eq!(
            c.list_offsets("made-while-full", 0).latest,
            0,
            "the topic acknowledged while the disk was full survives the restart"
        );
    }
    eprintln!(
        "disk full test (log {log:?}): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    drop(broker);
}

/// Fails with a clear message when nothing answers a Ping at `addr`.
fn assert_still_serving(addr: SocketAddr, when: &str) {
    let answered = bounded(Duration::from_secs(20), "ping", move || {
        let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            return Err("connection refused".to_string());
        };
        drop(stream);
        let mut c = RawConn::connect(addr);
        Ok(c.ping(b"still there?"))
    });
    assert_eq!(
        answered.as_deref(),
        Ok(b"still there?".as_slice()),
        "{when}: the broker still serves"
    );
}

#[test]
fn a_full_disk_gets_storage_full_loses_nothing_and_producing_resumes_once_space_is_freed() {
    fill_the_disk_then_free_it(Log::Elsewhere);
}

#[test]
fn a_full_disk_that_also_holds_the_broker_log_does_not_stop_the_broker() {
    fill_the_disk_then_free_it(Log::OnTheFullDisk);
}
