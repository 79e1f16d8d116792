//! Flush pacing (issue 10): a sync nobody waits for is held back until
//! `flush_pace_us` after the last one, but whatever waits for F gets its
//! sync at once. With the largest pace (100 ms), each test makes the
//! flusher sync (a produce after an idle start), then asks, within that
//! pace, for something that needs F again with a deadline well below it: it
//! must be answered in time, which only an immediate sync allows. (On a
//! machine so busy that the second request comes more than 100 ms after the
//! first, the pace has passed and the test passes either way; it never
//! fails for being slow.)

mod common;

use common::{batch_of_values, payload, BrokerProc, RawConn, TestDir};
use hutong::wire::api::{FetchRequest, FetchResponse};
use hutong::wire::{ErrorCode, Qos};

const TOPIC: &str = "paced";

fn broker(dir: &TestDir) -> BrokerProc {
    let config = dir.config("flush_pace_us = 100000\n");
    BrokerProc::start(
        &dir.data,
        &["--config", config.to_str().expect("utf-8 path")],
    )
}

fn received(c: &mut RawConn, i: u64) {
    c.produce(
        TOPIC,
        0,
        Qos::Received as u8,
        10_000,
        &batch_of_values(&[payload("p", i)]),
    )
    .ok();
}

#[test]
fn a_produce_at_qos_all_is_not_held_back_by_the_pace() {
    let dir = TestDir::new();
    let broker = broker(&dir);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic(TOPIC, 1);
    received(&mut c, 0);
    // Within the pace of that sync: QoS all with a 50 ms timeout.
    let r = c.produce(
        TOPIC,
        0,
        Qos::All as u8,
        50,
        &batch_of_values(&[payload("p", 1)]),
    );
    assert_eq!(r.code(), ErrorCode::None, "{}", r.message());
}

#[test]
fn a_parked_fetch_is_not_held_back_by_the_pace() {
    let dir = TestDir::new();
    let broker = broker(&dir);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic(TOPIC, 1);
    // The topic's creation was synced; offset 0 is written, but F may be
    // held back below it for 100 ms. A fetch parked at the end (offset 0)
    // gets it within its 50 ms.
    received(&mut c, 0);
    let r = c
        .fetch(&FetchRequest {
            topic: TOPIC,
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 50,
            min_bytes: 1,
        })
        .ok();
    let f = FetchResponse::decode(&r.body).expect("a fetch answer");
    let got = common::decode_fetched(f.batches, 0);
    assert_eq!(got.first().map(|r| r.offset), Some(0), "answered empty");
}
