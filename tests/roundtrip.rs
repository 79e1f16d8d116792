//! 100,000 messages over 4 partitions come back exactly — same bytes, same
//! per-partition order, offsets 0..n with no gap — at every QoS level.

mod common;

use common::{bounded, key, payload, BrokerProc, TestDir};
use hutong::client::{Admin, Consumer, Producer, ProducerConfig, StartFrom};
use hutong::wire::batch::BatchBuilder;
use hutong::wire::Qos;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MESSAGES: u64 = 100_000;
const PARTITIONS: u32 = 4;
const PER_BATCH: u64 = 100;
const PER_PARTITION: u64 = MESSAGES / PARTITIONS as u64;

/// Message `i` of partition `p`: its key and value.
fn message(p: u32, i: u64) -> (Vec<u8>, Vec<u8>) {
    let seq = p as u64 * PER_PARTITION + i;
    (key(seq), payload("rt", seq))
}

fn produce_all(addr: SocketAddr, qos: Qos) {
    let producer = Producer::connect(
        addr,
        ProducerConfig {
            qos,
            timeout_ms: 30_000,
            ..ProducerConfig::default()
        },
    )
    .expect("producer connects");
    let mut b = BatchBuilder::new();
    let mut receipts = std::collections::VecDeque::new();
    let batches_per_partition = PER_PARTITION / PER_BATCH;
    // Batches go round-robin over the partitions on one connection.
    for n in 0..batches_per_partition {
        for p in 0..PARTITIONS {
            b.clear();
            let ts = common::now_ms();
            for i in n * PER_BATCH..(n + 1) * PER_BATCH {
                let (k, v) = message(p, i);
                b.push(ts, &k, &v, &[]);
            }
            let receipt = producer
                .send("rt", p, b.finish(0, 0))
                .unwrap_or_else(|e| panic!("send batch {n} to partition {p}: {e}"));
            receipts.push_back((p, n * PER_BATCH, receipt));
            // Keep a window of receipts; QoS none has nothing to wait for.
            if qos != Qos::None && receipts.len() >= 512 {
                check_receipt(receipts.pop_front().unwrap());
            }
        }
    }
    producer.flush().expect("flush");
    if qos != Qos::None {
        for r in receipts {
            check_receipt(r);
        }
    }
}

fn check_receipt((p, expected_base, receipt): (u32, u64, hutong::client::Receipt)) {
    let ack = receipt
        .wait()
        .unwrap_or_else(|e| panic!("batch at {p}/{expected_base} not acknowledged: {e}"));
    assert_eq!(
        ack.base_offset, expected_base,
        "partition {p}: batches are appended in send order"
    );
}

fn consume_and_check(addr: SocketAddr, p: u32) {
    let mut consumer =
        Consumer::connect(addr, "rt", p, StartFrom::Earliest).expect("consumer connects");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0u64;
    while next < PER_PARTITION {
        assert!(
            Instant::now() < deadline,
            "partition {p}: only {next} of {PER_PARTITION} messages consumed in time"
        );
        for r in consumer
            .poll(Duration::from_millis(500))
            .unwrap_or_else(|e| panic!("poll {p}: {e}"))
        {
            assert_eq!(r.offset, next, "partition {p}: offsets are contiguous");
            let (k, v) = message(p, next);
            assert_eq!(r.key, k, "partition {p} offset {next}: key");
            assert!(
                r.value == v,
                "partition {p} offset {next}: value bytes differ"
            );
            next += 1;
        }
    }
    assert!(
        consumer
            .poll(Duration::from_millis(50))
            .expect("poll at the end")
            .is_empty(),
        "partition {p}: nothing beyond the messages sent"
    );
    assert_eq!(consumer.position(), PER_PARTITION);
}

fn round_trip(qos: Qos) {
    let dir = TestDir::new();
    let config = dir.small_segments_config();
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let addr = broker.addr();
    bounded(Duration::from_secs(120), "round trip", move || {
        let admin = Admin::connect(addr).expect("admin connects");
        admin.create_topic("rt", PARTITIONS).expect("create topic");
        let t0 = Instant::now();
        produce_all(addr, qos);
        if qos != Qos::All {
            // Only QoS all is answered once the data is committed (C >= end).
            // ListOffsets shows the committed end, which the others may
            // reach after their answer (C follows F, R = W on one node),
            // so wait until the broker shows every message.
            common::wait_until(Duration::from_secs(30), "all messages listed", || {
                (0..PARTITIONS).all(|p| {
                    admin.list_offsets("rt", p).expect("list offsets").latest == PER_PARTITION
                })
            });
        }
        for p in 0..PARTITIONS {
            let o = admin.list_offsets("rt", p).expect("list offsets");
            assert_eq!((o.earliest, o.latest), (0, PER_PARTITION), "partition {p}");
        }
        let produced = t0.elapsed();
        let consumers: Vec<_> = (0..PARTITIONS)
            .map(|p| std::thread::spawn(move || consume_and_check(addr, p)))
            .collect();
        for c in consumers {
            if let Err(panic) = c.join() {
                std::panic::resume_unwind(panic);
            }
        }
        eprintln!(
            "qos {qos:?}: produced in {produced:?}, round trip in {:?}",
            t0.elapsed()
        );
    });
}

#[test]
fn round_trip_is_exact_at_qos_none() {
    round_trip(Qos::None);
}

#[test]
fn round_trip_is_exact_at_qos_received() {
    round_trip(Qos::Received);
}

#[test]
fn round_trip_is_exact_at_qos_flushed() {
    round_trip(Qos::Flushed);
}

#[test]
fn round_trip_is_exact_at_qos_replicated() {
    round_trip(Qos::Replicated);
}

#[test]
fn round_trip_is_exact_at_qos_all() {
    round_trip(Qos::All);
}

#[test]
fn tailing_consumers_see_every_message_in_order_while_it_is_written() {
    const TAIL_PARTITIONS: u32 = 2;
    const TAIL_MESSAGES: u64 = 30_000; // per partition
    const TAIL_BATCH: u64 = 50;
    let dir = TestDir::new();
    let config = dir.small_segments_config();
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let addr = broker.addr();
    let value = |p: u32, i: u64| payload(&format!("tail{p}"), i);
    bounded(Duration::from_secs(60), "tailing consumers", move || {
        Admin::connect(addr)
            .expect("admin")
            .create_topic("tail", TAIL_PARTITIONS)
            .expect("create");
        // Consumers start at the (empty) end and long-poll while the
        // producer writes, across segment rolls.
        let consumers: Vec<_> = (0..TAIL_PARTITIONS)
            .map(|p| {
                let mut c = Consumer::connect(addr, "tail", p, StartFrom::Latest).expect("connect");
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(45);
                    let mut next = 0u64;
                    while next < TAIL_MESSAGES {
                        assert!(Instant::now() < deadline, "tail/{p}: stuck at {next}");
                        for r in c.poll(Duration::from_millis(200)).expect("poll") {
                            assert_eq!(r.offset, next, "tail/{p}: contiguous offsets");
                            assert!(r.value == value(p, next), "tail/{p}@{next}: bytes");
                            next += 1;
                        }
                    }
                })
            })
            .collect();
        let producer = Producer::connect(
            addr,
            ProducerConfig {
                qos: Qos::Received,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        let mut b = BatchBuilder::new();
        for n in 0..TAIL_MESSAGES / TAIL_BATCH {
            for p in 0..TAIL_PARTITIONS {
                b.clear();
                for i in n * TAIL_BATCH..(n + 1) * TAIL_BATCH {
                    b.push(common::now_ms(), b"", &value(p, i), &[]);
                }
                // Dropped receipts are checked by flush.
                drop(producer.send("tail", p, b.finish(0, 0)).expect("send"));
            }
        }
        producer.flush().expect("every batch acknowledged");
        for c in consumers {
            if let Err(panic) = c.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}
