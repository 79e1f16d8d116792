//! DeleteRecords (issue 11, per-topic log starts): deleting a partition's
//! records below an offset moves its log start there, durably, on its own:
//! fetches below it get `OffsetOutOfRange` naming the new start, ListOffsets
//! and Metadata report it, consumers from earliest start there, the other
//! partitions keep theirs, and the move survives a graceful restart (from
//! the catalog snapshot) and kill -9 (the control record replayed).

mod common;

use common::{batch_of_values, payload, run_cli, BrokerProc, OutOfRangeBody, RawConn, TestDir};
use hutong::client::admin::DELETE_TO_END;
use hutong::wire::api::{DeleteRecordsRequest, DeleteRecordsResponse};
use hutong::wire::{ApiKey, ErrorCode};
use std::net::SocketAddr;
use std::time::Duration;

const TOPIC: &str = "trimmed";

fn delete(addr: SocketAddr, topic: &str, partition: u32, before: u64) -> common::RawResponse {
    RawConn::connect(addr).request(ApiKey::DeleteRecords, |out| {
        DeleteRecordsRequest {
            topic,
            partition,
            before,
        }
        .encode(out)
    })
}

fn log_start_after(addr: SocketAddr, partition: u32, before: u64) -> u64 {
    let r = delete(addr, TOPIC, partition, before).ok();
    DeleteRecordsResponse::decode(&r.body)
        .expect("a DeleteRecords answer")
        .log_start
}

/// Partition 0 holds offsets 0..10 (one record per batch), partition 1
/// offsets 0..3.
fn filled(addr: SocketAddr) {
    let mut c = RawConn::connect(addr);
    c.create_topic(TOPIC, 2);
    for i in 0..10 {
        c.produce_ok(TOPIC, 0, &batch_of_values(&[payload("p0", i)]));
    }
    for i in 0..3 {
        c.produce_ok(TOPIC, 1, &batch_of_values(&[payload("p1", i)]));
    }
}

/// What partition `p` looks like from outside: (earliest, latest) by
/// ListOffsets, the log start Metadata reports, and the first offset a
/// fetch at the earliest returns.
fn seen(addr: SocketAddr, p: u32) -> (u64, u64, u64, Option<u64>) {
    let mut c = RawConn::connect(addr);
    let lo = c.list_offsets(TOPIC, p);
    let md = c.metadata(&[TOPIC]);
    let start = md.topics[0].partitions[p as usize].start_offset;
    let first = c
        .fetch_records(TOPIC, p, lo.earliest)
        .first()
        .map(|r| r.offset);
    (lo.earliest, lo.latest, start, first)
}

/// A fetch at `offset` is refused with the log start in its trailer.
fn assert_below_start(addr: SocketAddr, p: u32, offset: u64, start: u64) {
    let r = RawConn::connect(addr).fetch_at(TOPIC, p, offset);
    r.expect_error(ErrorCode::OffsetOutOfRange);
    let body = OutOfRangeBody::decode(&r.body).expect("an OffsetOutOfRange trailer");
    assert_eq!(body.start_offset, start, "{}", body.message);
}

#[test]
fn deleting_records_moves_one_partitions_log_start_durably() {
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    filled(addr);

    assert_eq!(log_start_after(addr, 0, 4), 4);
    assert_eq!(seen(addr, 0), (4, 10, 4, Some(4)));
    assert_below_start(addr, 0, 3, 4);
    assert_eq!(
        seen(addr, 1),
        (0, 3, 0, Some(0)),
        "the other partition keeps its own"
    );
    // Deleting below the log start again changes nothing.
    assert_eq!(log_start_after(addr, 0, 2), 4);
    // Beyond the end, unknown topics and partitions are refused.
    delete(addr, TOPIC, 0, 11).expect_error(ErrorCode::InvalidRequest);
    delete(addr, "nope", 0, 1).expect_error(ErrorCode::UnknownTopic);
    delete(addr, "no/pe", 0, 1).expect_error(ErrorCode::InvalidTopicName);
    delete(addr, TOPIC, 2, 1).expect_error(ErrorCode::UnknownPartition);

    // A graceful restart starts from the catalog snapshot, which holds it.
    assert!(broker.terminate().success());
    let mut broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    assert!(
        broker.stderr().contains("from the snapshot at"),
        "{}",
        broker.stderr()
    );
    assert_eq!(seen(addr, 0), (4, 10, 4, Some(4)));

    // Everything of partition 1, by the CLI; then kill -9: recovery finds
    // the record after the snapshot and replays it.
    let addr_s = addr.to_string();
    let (status, stdout, stderr) = run_cli(
        &[
            "topic",
            "delete-records",
            TOPIC,
            "--partition",
            "1",
            "--before",
            "end",
            "--addr",
            &addr_s,
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("log start 3"), "{stdout}");
    assert_eq!(seen(addr, 1), (3, 3, 3, None));
    broker.kill9();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    assert_eq!(seen(addr, 0), (4, 10, 4, Some(4)));
    assert_eq!(seen(addr, 1), (3, 3, 3, None));
    assert_below_start(addr, 1, 0, 3);
    // Offsets go on where they were.
    let mut c = RawConn::connect(addr);
    assert_eq!(
        c.produce_ok(TOPIC, 1, &batch_of_values(&[payload("p1", 3)])),
        3
    );
    assert_eq!(seen(addr, 1), (3, 4, 3, Some(3)));
    assert_eq!(log_start_after(addr, 0, DELETE_TO_END), 10);
    assert_eq!(seen(addr, 0), (10, 10, 10, None));
}
