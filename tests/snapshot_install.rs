//! A group member that falls behind what its leader's consensus log still
//! holds is sent the leader's snapshot (issue 11, deliverable 3): it drops
//! its journal, restarts in place from the snapshot, and from then on holds
//! the same bytes at the same positions as the leader and serves the same
//! offsets, from its new log start on.

mod common;

use common::cluster::{journal_prefix, journal_range, segment_files, Cluster};
use common::{batch_of_values, filler, read_kept, RawConn};
use std::time::Duration;

const TOPIC: &str = "install";
/// Catalog snapshots every MiB and a consensus log of at most 64 entries
/// beyond the last one: the leader compacts past a stopped follower after
/// a few MiB.
const CONFIG: &str = "segment_bytes = 1048576\nbatch_bytes_max = 1048576\n\
                      checkpoint_bytes = 1048576\nconsensus_log_entries_max = 64\n";
const PER_BATCH: u64 = 4;

/// Produces batches `from..from + batches` at QoS all, each at its place.
fn produce(c: &mut RawConn, from: u64, batches: u64) {
    for seq in from..from + batches {
        let values: Vec<Vec<u8>> = (0..PER_BATCH)
            .map(|k| filler(TOPIC, seq * PER_BATCH + k, 2000))
            .collect();
        let offset = c.produce_ok(TOPIC, 0, &batch_of_values(&values));
        assert_eq!(offset, seq * PER_BATCH, "batch {seq} lands at its place");
    }
}

#[test]
fn a_follower_stopped_behind_the_compacted_log_installs_the_leaders_snapshot() {
    let mut cluster = Cluster::start_with(3, false, CONFIG);
    cluster.create_topic(TOPIC, 1);
    let (leader, leader_addr) = cluster.expect_leader();
    let lagging = cluster.ids().find(|&i| i != leader).expect("a follower");
    let mut c = RawConn::connect(leader_addr);
    produce(&mut c, 0, 50);
    cluster.wait_caught_up(Duration::from_secs(60));

    // Stopped (SIGSTOP), then killed, while the leader writes about 4 MiB:
    // several snapshots, and far more than 64 entries beyond them.
    cluster.stop(lagging);
    produce(&mut c, 50, 500);
    cluster.kill9(lagging);
    cluster.restart(lagging);
    produce(&mut c, 550, 20);
    let committed = cluster.wait_caught_up(Duration::from_secs(120));

    let said = cluster.stderr(lagging);
    assert!(
        said.contains("installing the leader's snapshot") && said.contains("restarting in place"),
        "node {lagging} caught up by a snapshot install:\n{said}"
    );
    // The same bytes at the same positions over the range both hold.
    let start = segment_files(cluster.data_dir(lagging))
        .first()
        .map(|s| s.0)
        .expect("a segment");
    assert!(
        start > 0,
        "node {lagging}'s journal now starts at the snapshot"
    );
    let theirs = journal_range(cluster.data_dir(lagging), start, committed)
        .unwrap_or_else(|e| panic!("node {lagging}'s journal: {e}"));
    let ours = journal_prefix(cluster.data_dir(leader), committed)
        .unwrap_or_else(|e| panic!("node {leader}'s journal: {e}"));
    assert!(
        theirs == ours[start as usize..],
        "node {lagging} holds the leader's bytes over {start}..{committed}"
    );
    // The same offsets: the follower serves from its log start on exactly
    // what the leader serves there.
    let end = 570 * PER_BATCH;
    let on_leader = read_kept(&mut RawConn::connect(leader_addr), TOPIC, 0, end);
    let on_follower = read_kept(&mut RawConn::connect(cluster.addr(lagging)), TOPIC, 0, end);
    assert_eq!(on_leader.start, 0);
    assert!(
        on_follower.start > 50 * PER_BATCH && on_follower.start <= 550 * PER_BATCH,
        "node {lagging}'s log starts at the snapshot: {}",
        on_follower.start
    );
    assert!(
        on_follower.records[..] == on_leader.records[on_follower.start as usize..],
        "node {lagging} serves the leader's records from {}",
        on_follower.start
    );
    // And it keeps up with what comes next.
    produce(&mut c, 570, 10);
    cluster.wait_caught_up(Duration::from_secs(60));
    let next = read_kept(
        &mut RawConn::connect(cluster.addr(lagging)),
        TOPIC,
        0,
        580 * PER_BATCH,
    );
    assert_eq!(next.end(), 580 * PER_BATCH);
}
