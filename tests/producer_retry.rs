//! A producer with retries rides through a broker restart on the same
//! address: every receipt succeeds, and the partition holds every message
//! exactly once, in send order. The broker recognises the batches it
//! already had by their producer id and sequence number (protocol §9.1).

mod common;

use common::{bounded, payload, read_partition, BrokerProc, RawConn, TestDir};
use hutong::client::{Producer, ProducerConfig};
use hutong::wire::Qos;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const TOPIC: &str = "retry";
const MESSAGES: usize = 20_000;
const PER_BATCH: usize = 4;
const BATCHES: usize = MESSAGES / PER_BATCH;
const _: () = assert!(MESSAGES.is_multiple_of(PER_BATCH));

fn value(seq: usize) -> Vec<u8> {
    payload("retry", seq as u64)
}

/// Produces every message with one pipelined producer at QoS flushed,
/// restarts the broker with `restart` once half of them are sent, and
/// checks the receipts and the partition.
fn every_message_is_stored_once_across(what: &str, restart: impl FnOnce(&mut BrokerProc, &Path)) {
    let dir = TestDir::new();
    let mut broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    RawConn::connect(addr).create_topic(TOPIC, 1);

    let producer = Arc::new(
        Producer::connect(
            addr,
            ProducerConfig {
                qos: Qos::Flushed,
                timeout_ms: 10_000,
                ..ProducerConfig::default()
            },
        )
        .expect("producer connects"),
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let (half_tx, half_rx) = mpsc::channel();
    let sender = std::thread::spawn({
        let producer = Arc::clone(&producer);
        let sent = Arc::clone(&sent);
        move || {
            let mut receipts = Vec::with_capacity(BATCHES);
            for batch in 0..BATCHES {
                if batch == BATCHES / 2 {
                    let _ = half_tx.send(());
                }
                let values: Vec<Vec<u8>> = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
                    .map(value)
                    .collect();
                let records: Vec<(&[u8], &[u8])> =
                    values.iter().map(|v| (&b""[..], v.as_slice())).collect();
                let receipt = producer
                    .send_records(TOPIC, 0, &records)
                    .unwrap_or_else(|e| panic!("send of batch {batch} failed: {e}"));
                receipts.push(receipt);
                sent.fetch_add(PER_BATCH, Ordering::Relaxed);
            }
            receipts
                .into_iter()
                .map(|r| r.wait().map(|ack| ack.base_offset))
                .collect::<Vec<_>>()
        }
    });

    half_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("half of the messages are sent");
    let outstanding = producer.outstanding();
    let started = Instant::now();
    restart(&mut broker, &dir.data);
    let sent_then = sent.load(Ordering::Relaxed);
    eprintln!(
        "{what}: restarted after {sent_then} of {MESSAGES} messages were sent, {outstanding} \
         requests unanswered; back after {:?}",
        started.elapsed()
    );
    assert!(
        sent_then < MESSAGES,
        "the restart came after the producer was done"
    );

    let outcomes = bounded(
        Duration::from_secs(120),
        "the producer's receipts",
        move || sender.join().expect("sender thread"),
    );
    for (batch, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(offset) => assert_eq!(
                *offset,
                (batch * PER_BATCH) as u64,
                "batch {batch} is acknowledged at its place in send order"
            ),
            Err(e) => panic!("batch {batch} failed: {e}"),
        }
    }
    producer.flush().expect("nothing failed unseen");
    drop(producer);

    let stored = bounded(
        Duration::from_secs(60),
        "reading the partition",
        move || read_partition(addr, TOPIC, 0),
    );
    assert_eq!(
        stored.len(),
        MESSAGES,
        "every message is stored exactly once"
    );
    for (seq, record) in stored.iter().enumerate() {
        assert!(
            record.value == value(seq),
            "offset {seq} holds {:?}, not message {seq}",
            String::from_utf8_lossy(&record.value[..record.value.len().min(20)])
        );
    }
}

/// Restarts the broker on the address and data directory it had.
fn start_again(broker: &mut BrokerProc, data: &Path) {
    *broker = BrokerProc::start_at(&broker.addr().to_string(), data, &[]);
}

#[test]
fn a_producer_rides_through_kill_9_and_restart_without_loss_or_duplicate() {
    every_message_is_stored_once_across("kill -9", |broker, data| {
        broker.kill9();
        start_again(broker, data);
    });
}

#[test]
fn a_producer_rides_through_a_graceful_restart_without_loss_or_duplicate() {
    every_message_is_stored_once_across("SIGTERM", |broker, data| {
        let status = broker.terminate();
        assert!(status.success(), "the broker exits 0 on SIGTERM: {status}");
        start_again(broker, data);
    });
}

#[test]
fn a_producer_waits_through_a_second_without_broker_and_loses_nothing() {
    every_message_is_stored_once_across("kill -9, 1 s down", |broker, data| {
        broker.kill9();
        // Reconnections are refused meanwhile and back off.
        std::thread::sleep(Duration::from_secs(1));
        start_again(broker, data);
    });
}
