//! The Rust producer across leadership changes of a replication group.

mod common;

use common::bounded;
use common::cluster::{Cluster, SMALL_SEGMENTS_TOML};
use hutong::client::{Producer, ProducerConfig, RetryConfig};
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
