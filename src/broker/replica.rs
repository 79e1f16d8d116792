//! The writer's consensus half: one [`Node`] of the replication group,
//! driven from the writer thread.
//!
//! The state machine lives on the thread that owns the journal tail, so
//! its log and the journal change together: a proposal is appended and
//! proposed in one step, a follower's append and truncation happen right
//! after the message that caused them, and no other thread ever has to
//! agree with the writer about where the journal ends. The replicator
//! thread only carries the messages out (reading the journal bytes of an
//! append with `pread`) and the reactor carries them in.
//!
//! This module holds what is not journal work: ticking, link changes,
//! persisting the hard state, publishing R, C, role, term and leader, and
//! handing messages to the replicator. `writer.rs` applies the journal
//! side of a [`Ready`] (truncation and entries).

use super::replicator::SegmentEvent;
use super::shared::{Shared, Stage};
use crate::consensus::{self, Entry, HardState, Message, Node, Ready, Role};
use crate::journal::error::JournalError;
use crate::journal::hardstate;
use crate::wire::api::ClusterRole;
use ringbuf::traits::Producer;
use ringbuf::HeapProd;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// Messages waiting for the replicator. Raft tolerates a lost message, so
/// when the ring is full (a peer so slow that even its socket buffer is
/// full) a message is dropped rather than stall the writer.
pub const OUTBOX_MESSAGES: usize = 16 * 1024;

/// The consensus side of the writer.
pub struct Replica {
    node: Node,
    dir: PathBuf,
    outbox: HeapProd<Message>,
    tick: Duration,
    next_tick: Instant,
    /// Peer ids by their slot in the static peer list (the bit numbers of
    /// `ClusterView::link_changes`).
    peer_ids: Vec<u64>,
    /// Positions last reported to the node.
    reported_written: u64,
    reported_flushed: u64,
    dropped_messages: u64,
    /// Segment files, for the replicator that reads appends from them.
    segments: Sender<SegmentEvent>,
}

impl Replica {
    /// Starts the node from the persisted hard state in `dir` and the
    /// journal's recovered `entries`, which follow `base` (the position and
    /// term the journal's consensus log starts from:
    /// `Journal::consensus_base`).
    ///
    /// # Errors
    /// A damaged hard state file, or a journal the state machine refuses
    /// (a term above the persisted one).
    pub fn new(
        config: &crate::config::Config,
        base: (u64, u64),
        entries: Vec<Entry>,
        noop_bytes: u64,
        outbox: HeapProd<Message>,
        segments: Sender<SegmentEvent>,
        lost_data: bool,
    ) -> Result<Replica, JournalError> {
        let dir = config.data_dir.clone();
        let persisted = identity(&dir, lost_data)?;
        let hard_state = HardState {
            term: persisted.term,
            voted_for: persisted.voted_for,
            voted_incarnation: persisted.voted_incarnation,
            incarnation: persisted.incarnation,
            caught_up: persisted.caught_up,
        };
        let peer_ids: Vec<u64> = config.peers.iter().map(|p| p.id).collect();
        let mut cfg = consensus::Config::new(config.node_id, peer_ids.clone());
        cfg.noop_bytes = noop_bytes;
        // Elections must not be in lockstep across nodes or restarts.
        cfg.seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ config.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(std::process::id());
        let last = entries.last().map_or(base.0, |e| e.end);
        let node = Node::with_snapshot(cfg, hard_state, base, entries).map_err(|e| {
            let hint = if base.0 > 0 && base.1 == 0 {
                format!(
                    " (the journal starts at {} and no usable snapshot says the term \
                         there: move this member's data directory away and start it empty; \
                         it is sent the leader's snapshot)",
                    base.0
                )
            } else {
                String::new()
            };
            JournalError::Corrupt(format!("consensus state: {e}{hint}"))
        })?;
        let tick = Duration::from_millis(config.tick_ms);
        Ok(Replica {
            node,
            dir,
            outbox,
            tick,
            next_tick: Instant::now() + tick,
            peer_ids,
            reported_written: last,
            reported_flushed: last,
            dropped_messages: 0,
            segments,
        })
    }

    /// Tells the replicator about a new segment file (or, after a cut,
    /// the whole list). It lives as long as the broker; a failed send
    /// means it is gone at shutdown and needs nothing.
    pub fn segments_changed(&self, e: SegmentEvent) {
        let _ = self.segments.send(e);
    }

    /// The follower to hand leadership to, when this node leads.
    pub fn best_transfer_target(&self) -> Option<u64> {
        (self.node.role() == Role::Leader)
            .then(|| self.node.best_transfer_target())
            .flatten()
    }

    /// Starts handing leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        if let Err(e) = self.node.transfer_leader(to) {
            crate::log!("cannot hand leadership to node {to}: {e}");
        }
    }

    /// Gives the node the group's id (once the record naming it is
    /// committed); messages from another group are refused from then on.
    pub fn set_cluster_id(&mut self, id: u64) {
        if self.node.cluster_id() != id {
            crate::log!("this node belongs to the group with cluster id {id:#018x}");
            self.node.set_cluster_id(id);
        }
    }

    /// The state machine (read-only).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The term to stamp into a new batch, or the error to answer when this
    /// node may not take writes.
    pub fn leader_term(&self) -> Option<u64> {
        (self.node.role() == Role::Leader).then(|| self.node.term())
    }

    /// True when this node leads and has committed an entry of its own
    /// term. Before that, entries of earlier terms above its commit may
    /// still be cut (a newer leader's log wins) or committed although this
    /// node's log lacks them (a leader of a later term holds them): what its
    /// journal says about a producer's batches is not final yet. From then
    /// on every future leader's log holds this node's up to that entry.
    pub fn leader_settled(&self) -> bool {
        self.node.role() == Role::Leader
            && self.node.term_at(self.node.committed()) == Some(self.node.term())
    }

    /// Reserves `bytes` at the end of the log for a batch the writer just
    /// appended at `position`.
    ///
    /// # Errors
    /// The node refused (no longer leader, or handing leadership over);
    /// the writer then takes the batch back out of the journal.
    pub fn propose(&mut self, position: u64, bytes: u64) -> Result<(), String> {
        let entry = self.node.propose(bytes).map_err(|e| e.to_string())?;
        if entry.start != position {
            // The journal and the log disagree about where the tail is:
            // a bug, and continuing would replicate the wrong bytes.
            return Err(format!(
                "the consensus log ends at {} but the journal at {position}",
                entry.start
            ));
        }
        Ok(())
    }

    /// Takes one message from a peer.
    pub fn step(&mut self, m: Message) {
        let from = m.from;
        if let Err(e) = self.node.step(m) {
            crate::log!("dropping a message from node {from}: {e}");
        }
    }

    /// Feeds time, link changes and the journal positions into the node.
    /// Returns how long the writer may sleep before the next tick.
    pub fn pulse(&mut self, shared: &Shared, now: Instant) -> Duration {
        let changes = shared
            .cluster
            .link_changes
            .swap(0, std::sync::atomic::Ordering::AcqRel);
        for (i, id) in self.peer_ids.iter().enumerate() {
            if changes & (1 << i) != 0 && *id != self.node.id() {
                self.node.report_unreachable(*id);
            }
        }
        let f = shared.positions.flushed.get();
        if f != self.reported_flushed {
            if let Some(term) = self.node.term_at(f) {
                self.node.report_flushed(f, term);
                self.reported_flushed = f;
            }
        }
        let mut ticks = 0;
        while now >= self.next_tick && ticks < 10 {
            self.node.tick();
            self.next_tick += self.tick;
            ticks += 1;
        }
        if now >= self.next_tick {
            // The thread was held up for many ticks (a stop, a slow disk):
            // do not replay them all at once.
            self.next_tick = now + self.tick;
        }
        self.next_tick.saturating_duration_since(now)
    }

    /// Tells the node the journal holds its log up to `w`.
    pub fn report_written(&mut self, w: u64) {
        if w == self.reported_written {
            return;
        }
        if let Some(term) = self.node.term_at(w) {
            self.node.report_written(w, term);
            self.reported_written = w;
        }
    }

    /// Compacts the consensus log to the committed snapshot at `at` (its
    /// file is written) when retention wants to delete beyond the log's
    /// base (`for_retention`: segments go only below it), when the log
    /// holds more than `entries_max` entries, or, on a leader, when every
    /// peer holds `at` durably or a peer waits for a snapshot (it is sent
    /// the one at the log's base, which must be the file's). A peer that
    /// needs what was compacted is then sent the snapshot. Nothing happens
    /// until the node holds `at` durably itself.
    pub fn maybe_compact(&mut self, at: u64, entries_max: usize, for_retention: bool) {
        if at <= self.node.snapshot().0 || at > self.node.flushed() {
            return;
        }
        let leads = self.node.role() == Role::Leader;
        let all_hold = leads && self.node.peers().all(|p| p.progress.flushed >= at);
        let one_waits = leads
            && self
                .node
                .peers()
                .any(|p| p.progress.state == consensus::ProgressState::Snapshot);
        if !(for_retention || all_hold || one_waits || self.node.log().len() > entries_max) {
            return;
        }
        match self.node.compact(at) {
            Ok(()) => {}
            Err(e) => crate::log!("cannot compact the consensus log at {at}: {e}"),
        }
    }

    /// Forgets the positions reported above a truncation point.
    pub fn truncated(&mut self, at: u64) {
        self.reported_written = self.reported_written.min(at);
        self.reported_flushed = self.reported_flushed.min(at);
    }

    /// The next [`Ready`], if the node has one.
    pub fn ready(&mut self) -> Option<Ready> {
        self.node.has_ready().then(|| self.node.ready())
    }

    /// Persists the hard state of `rd`, durably, before anything else of it
    /// is acted on.
    ///
    /// # Errors
    /// The write error: the broker must stop, since a vote it cannot
    /// persist must not be acted on.
    pub fn persist(&self, rd: &Ready) -> Result<(), JournalError> {
        match rd.hard_state {
            Some(hs) => hardstate::write(
                &self.dir,
                &hardstate::Persisted {
                    term: hs.term,
                    voted_for: hs.voted_for,
                    voted_incarnation: hs.voted_incarnation,
                    incarnation: hs.incarnation,
                    caught_up: hs.caught_up,
                },
            ),
            None => Ok(()),
        }
    }

    /// Publishes the outputs of `rd` that are not journal work: messages,
    /// R, C and the soft state; then hands `rd` back to the node.
    pub fn publish(&mut self, mut rd: Ready, shared: &Shared) {
        for alert in rd.alerts.drain(..) {
            crate::log!("consensus alert (this node needs an operator): {alert}");
        }
        let mut sent = false;
        for m in rd.messages.drain(..) {
            if self.outbox.try_push(m).is_err() {
                self.dropped_messages += 1;
                if self.dropped_messages.is_power_of_two() {
                    crate::log!(
                        "replication outbox full: {} messages dropped so far (peers too slow)",
                        self.dropped_messages
                    );
                }
            } else {
                sent = true;
            }
        }
        if sent {
            shared.wake(Stage::Replicator);
        }
        let p = &shared.positions;
        let mut moved = false;
        if let Some(c) = rd.committed {
            if c > p.committed.get() {
                p.committed.publish(c);
                shared.wake(Stage::Reader);
                moved = true;
            }
        }
        if let Some(r) = rd.replicated {
            p.replicated.set(r.max(p.committed.get()));
            moved = true;
        }
        if moved {
            shared.wake(Stage::Responder);
        }
        if let Some(hs) = rd.hard_state {
            let was = shared
                .cluster
                .caught_up
                .swap(hs.caught_up, std::sync::atomic::Ordering::AcqRel);
            if hs.caught_up && !was {
                crate::log!("this data directory has caught up with the group: it votes again");
            }
        }
        if let Some(ss) = rd.soft_state {
            let view = &shared.cluster;
            let code = ClusterRole::from(ss.role).as_u8();
            view.term
                .store(ss.term, std::sync::atomic::Ordering::Release);
            view.leader
                .store(ss.leader.unwrap_or(0), std::sync::atomic::Ordering::Release);
            view.role.store(code, std::sync::atomic::Ordering::Release);
            crate::log!(
                "node {} is {:?} in term {} (leader: {})",
                self.node.id(),
                ss.role,
                ss.term,
                ss.leader.map_or("none".to_string(), |l| l.to_string())
            );
        }
        self.node.advance(rd);
    }
}

/// The hard state of this data directory, with its identity settled and
/// persisted before the node starts: a directory without a hard state (new,
/// or wiped), or one whose journal lost acknowledged data (`lost_data`, cut
/// by recovery), gets a fresh incarnation (above the one it had, even if the
/// clock went back) and has not caught up; a version 1 file gets an
/// incarnation and keeps voting as before.
///
/// # Errors
/// A damaged hard state file, or one that cannot be written.
fn identity(dir: &std::path::Path, lost_data: bool) -> Result<hardstate::Persisted, JournalError> {
    let read = hardstate::read(dir)?;
    let mut hs = read.unwrap_or_default();
    let fresh = read.is_none() || lost_data;
    if fresh {
        let max = crate::consensus::config::INCARNATION_MAX;
        if hs.incarnation >= max {
            return Err(JournalError::Corrupt(format!(
                "the hard state's incarnation {:#018x} leaves no higher one below {max:#018x} \
                 to take for this directory (a forged peer message may have set it): give \
                 the member an empty data directory",
                hs.incarnation
            )));
        }
        hs.incarnation = hardstate::new_incarnation().max(hs.incarnation + 1);
        hs.caught_up = false;
        crate::log!(
            "this data directory {}: new incarnation {:#018x}; it votes again once it has \
             caught up with the group",
            if lost_data {
                "lost acknowledged data"
            } else {
                "starts without a hard state"
            },
            hs.incarnation
        );
    } else if hs.incarnation == 0 {
        hs.incarnation = hardstate::new_incarnation();
    }
    if read != Some(hs) {
        hardstate::write(dir, &hs)?;
    }
    Ok(hs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_at_finds_boundaries_only() {
        let log = vec![
            Entry {
                start: 0,
                end: 10,
                term: 1,
            },
            Entry {
                start: 10,
                end: 25,
                term: 2,
            },
        ];
        let node = Node::new(
            consensus::Config::new(1, vec![1, 2, 3]),
            HardState {
                term: 2,
                voted_for: None,
                caught_up: true,
                ..HardState::default()
            },
            log,
        )
        .unwrap();
        // The replica reports W and F with these terms.
        assert_eq!(node.term_at(0), Some(0));
        assert_eq!(node.term_at(10), Some(1));
        assert_eq!(node.term_at(25), Some(2));
        assert_eq!(node.term_at(11), None);
        assert_eq!(node.term_at(30), None);
    }
}
