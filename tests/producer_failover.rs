//! The Rust producer across leadership changes of a replication group:
//! it finds the leader, and keeps every acknowledged batch exactly once
//! and in send order when the leader dies under it.

mod common;

use common::cluster::{Cluster, LEADER_TIMEOUT, SMALL_SEGMENTS_TOML};
use common::{bounded, read_partition};
use hutong::client::{Producer, ProducerConfig, RetryConfig};
use hutong::wire::Qos;
use std::sync::{mpsc, Arc};
use std::time::Duration;

const TOPIC: &str = "failover";

#[test]
fn a_not_leader_hint_naming_a_host_is_followed() {
    // Peers configured by host name: a follower's NotLeader answer names
    // the leader as `localhost:PORT`, which the producer must resolve.
    let cluster = Cluster::start_named(3, false, SMALL_SEGMENTS_TOML, "localhost");
    let (leader, _) = cluster.expect_leader();
    cluster.create_topic(TOPIC, 1);
    let follower = cluster.ids().find(|&id| id != leader).expect("a follower");
    // The producer knows only the follower: only the hint leads it on.
    let producer = Producer::connect(
        cluster.addr(follower),
        ProducerConfig {
            retry: RetryConfig {
                attempts_max: 10,
                backoff_ms: 20,
                deadline_ms: 10_000,
            },
            ..ProducerConfig::default()
        },
    )
    .expect("connect to the follower");
    let ack = bounded(Duration::from_secs(60), "produce via a hint", move || {
        producer
            .send_records(TOPIC, 0, &[(b"", b"found the leader")])
            .expect("send")
            .wait()
            .map(|a| a.base_offset)
    });
    assert_eq!(
        ack.map_err(|e| e.to_string()),
        Ok(0),
        "the batch reached the leader named by host"
    );
}

/// Batches the failover test sends, one record each.
const BATCHES: usize = 3_000;

fn value(i: usize) -> Vec<u8> {
    format!("batch {i:06}").into_bytes()
}

fn index_of(value: &[u8]) -> usize {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix("batch "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a stranger in the partition: {value:?}"))
}

#[test]
fn a_leader_killed_under_64_batches_in_flight_loses_duplicates_and_reorders_nothing() {
    let mut cluster = Cluster::start(3, false);
    let (leader, _) = cluster.expect_leader();
    cluster.create_topic(TOPIC, 1);
    let producer = Arc::new(
        Producer::connect(
            &cluster.addrs()[..],
            ProducerConfig {
                qos: Qos::All,
                timeout_ms: 10_000,
                max_in_flight: 64,
                max_in_flight_per_partition: 64,
                retry: RetryConfig {
                    attempts_max: 1_000,
                    backoff_ms: 20,
                    deadline_ms: 90_000,
                },
                ..ProducerConfig::default()
            },
        )
        .expect("connect"),
    );
    let (third_tx, third_rx) = mpsc::channel();
    let sender = std::thread::spawn({
        let producer = Arc::clone(&producer);
        move || {
            let mut receipts = Vec::with_capacity(BATCHES);
            for i in 0..BATCHES {
                if i == BATCHES / 3 {
                    let _ = third_tx.send(());
                }
                let v = value(i);
                let receipt = producer
                    .send_records(TOPIC, 0, &[(b"", &v)])
                    .unwrap_or_else(|e| panic!("send {i}: {e}"));
                receipts.push(receipt);
            }
            receipts
                .into_iter()
                .map(|r| r.wait().map(|a| a.base_offset).map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        }
    });
    third_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a third of the batches are sent");
    let in_flight = producer.outstanding();
    cluster.kill9(leader);
    eprintln!("killed leader {leader} with {in_flight} batches unanswered");
    let outcomes = bounded(Duration::from_secs(180), "the receipts", move || {
        sender.join().expect("sender thread")
    });
    let acked: Vec<usize> = (0..BATCHES).filter(|&i| outcomes[i].is_ok()).collect();
    let failed: Vec<(usize, &String)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().err().map(|e| (i, e)))
        .collect();
    assert!(
        failed.is_empty(),
        "every batch is acknowledged after the failover: {} failed, first {:?}",
        failed.len(),
        failed.first()
    );
    eprintln!(
        "partition sequence after the failover: {:?}",
        producer.sequence_of(TOPIC, 0)
    );
    drop(producer);
    let (_, new_leader) = cluster
        .leader_within(LEADER_TIMEOUT, |id| id != leader)
        .expect("a new leader");
    let stored = bounded(Duration::from_secs(60), "read the partition", move || {
        read_partition(new_leader, TOPIC, 0)
    });
    let order: Vec<usize> = stored.iter().map(|r| index_of(&r.value)).collect();
    let mut seen = vec![0usize; BATCHES];
    for &i in &order {
        seen[i] += 1;
    }
    for &i in &acked {
        assert_eq!(seen[i], 1, "acknowledged batch {i} is stored exactly once");
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "the partition holds the batches in send order"
    );
    // Each receipt's offset is where its batch is.
    for &i in &acked {
        let offset = *outcomes[i].as_ref().expect("acked") as usize;
        assert_eq!(
            order[offset], i,
            "batch {i} is at the offset its receipt gave"
        );
    }
}
