//! What a leader knows about one follower (after raft-rs `tracker/progress.rs`).
//!
//! - **Probe**: the leader does not know where the follower's log stops
//!   matching its own. It sends one append at `next` and waits for its
//!   answer (or `retransmit_ticks`) before sending another; a rejection
//!   moves `next` back to the follower's hint.
//! - **Replicate**: the follower matched at `next`; the leader streams
//!   appends from `next` without waiting, as long as fewer than
//!   `window_bytes` are unacknowledged. A rejection or `retransmit_ticks`
//!   without progress sends it back to Probe from the last acknowledged
//!   position; an unreachable report (the peer may have crashed) from the
//!   last acknowledged *flushed* position.
//! - **Snapshot**: the follower needs entries the leader compacted away.
//!   The leader sends one `InstallSnapshot` at its log base (`next`) and
//!   waits for an acknowledgement at or past it (or
//!   `snapshot_retransmit_ticks`) before it replicates from there.

/// Replication mode of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Finding the last position where the logs agree; one append in flight.
    Probe,
    /// Streaming; many appends in flight, bounded by bytes.
    Replicate,
    /// Waiting for a snapshot at `next` to be installed.
    Snapshot,
}

/// A leader's record of one follower. Invariant:
/// `flushed <= written <= matched <= next <= leader's last position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// End of the prefix the follower acknowledged as equal to the leader's log.
    pub matched: u64,
    /// Its acknowledged written position.
    pub written: u64,
    /// Its acknowledged flushed position.
    pub flushed: u64,
    /// Where the next append starts (an entry boundary of the leader's log).
    pub next: u64,
    /// Probe or Replicate.
    pub state: ProgressState,
    /// Probe and Snapshot: an append or a snapshot is in flight; wait for
    /// an answer.
    pub(crate) paused: bool,
    /// Heard from since the last check-quorum.
    pub(crate) active: bool,
    /// Ticks since `matched` last moved or, in Probe, since the probe was
    /// sent: when it reaches `retransmit_ticks`, the leader sends again.
    pub(crate) idle_ticks: u32,
    /// Commit position last sent to it.
    pub(crate) commit_sent: u64,
    /// End of the furthest append sent to it in this term: it cannot
    /// acknowledge or reject anything beyond.
    pub(crate) sent: u64,
    /// Ticks since the leader last heard from it (an ack or a rejection).
    pub(crate) silent_ticks: u32,
    /// It acknowledged something since its link was last made: `matched`
    /// is not a leftover of an earlier connection (or process).
    pub(crate) acked_since_link: bool,
    /// Its last acknowledgement said it has caught up (see
    /// `HardState::caught_up`); otherwise its positions count toward R and
    /// C only where every voter holds them.
    pub caught_up: bool,
}

impl Progress {
    /// A follower the leader knows nothing about yet: probe at `next`.
    pub(crate) fn new(next: u64) -> Progress {
        Progress {
            matched: 0,
            written: 0,
            flushed: 0,
            next,
            state: ProgressState::Probe,
            paused: false,
            active: false,
            idle_ticks: 0,
            commit_sent: 0,
            sent: 0,
            silent_ticks: u32::MAX,
            acked_since_link: false,
            caught_up: false,
        }
    }

    /// Takes an acknowledgement: positions only grow; an answer at or past
    /// `next` ends probing.
    pub(crate) fn on_ack(&mut self, matched: u64, written: u64, flushed: u64) {
        self.active = true;
        self.silent_ticks = 0;
        self.acked_since_link = true;
        if matched > self.matched {
            self.matched = matched;
            self.idle_ticks = 0;
        }
        self.flushed = self.flushed.max(flushed);
        self.written = self.written.max(written).max(self.flushed);
        self.matched = self.matched.max(self.written);
        if self.state != ProgressState::Replicate && matched >= self.next {
            // The probe at `next` (or a later one) succeeded. Other acks
            // (heartbeat answers, position reports) do not free a probe:
            // if each did, every one of them would start another probe,
            // whose answer would start another, without end.
            self.state = ProgressState::Replicate;
            self.paused = false;
            self.idle_ticks = 0;
        }
        self.next = self.next.max(self.matched);
    }

    /// Whether a rejection of an append at `rejected` tells the leader
    /// nothing new, and must be ignored. In Probe, only the answer to the
    /// probe at `next` counts. In Replicate, only a rejection at `matched`
    /// (the follower lost what it acknowledged): one below is older than
    /// the acknowledgement, and one above means the appends before it have
    /// not arrived yet, reordered or lost. Going back to Probe for each of
    /// those would resend the whole window once per rejection, and under
    /// heavy reordering the resent windows' own rejections multiply the
    /// traffic without end (the simulation found this); a lost append is
    /// resent when `matched` stops moving for `retransmit_ticks`.
    ///
    /// In Snapshot, every rejection answers an append sent before: stale.
    pub(crate) fn is_stale_reject(&self, rejected: u64) -> bool {
        rejected < self.flushed
            || match self.state {
                ProgressState::Replicate => rejected != self.matched,
                ProgressState::Probe => rejected != self.next,
                ProgressState::Snapshot => true,
            }
    }

    /// Whether it is ready to take over leadership from a leader whose log
    /// ends at `last_pos`: heard from within `live_ticks`, and it
    /// acknowledged the whole log since its link was last made.
    pub(crate) fn ready_to_lead(&self, last_pos: u64, live_ticks: u32) -> bool {
        self.acked_since_link && self.matched == last_pos && self.silent_ticks < live_ticks
    }

    /// The follower needs what lies below the leader's log `base`: send it
    /// the snapshot there. Its acknowledged positions are all below `base`.
    pub(crate) fn snapshot_at(&mut self, base: u64) {
        debug_assert!(self.flushed <= base);
        self.next = base;
        self.matched = self.matched.min(base);
        self.written = self.written.min(base);
        self.flushed = self.flushed.min(base);
        self.state = ProgressState::Snapshot;
        self.paused = false;
        self.idle_ticks = 0;
    }

    /// Goes back to probing at `next` (an entry boundary at or above
    /// `flushed`). Written and matched positions above it are forgotten:
    /// the follower may have lost them in a crash.
    pub(crate) fn probe_from(&mut self, next: u64) {
        debug_assert!(next >= self.flushed);
        self.next = next;
        self.matched = self.matched.min(next);
        self.written = self.written.min(next);
        self.state = ProgressState::Probe;
        self.paused = false;
        self.idle_ticks = 0;
    }
}
