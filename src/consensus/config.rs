//! Every limit and default of the consensus state machine, checked in one
//! place. Times are in ticks: the caller decides how long a tick is (the
//! broker's replicator ticks every few tens of milliseconds).

use super::quorum::VOTERS_MAX;
use super::{ConsensusError, NodeId};

/// Default lower bound (inclusive) of the randomised election timeout.
pub const ELECTION_TICKS_MIN_DEFAULT: u32 = 10;
/// Default upper bound (exclusive) of the randomised election timeout.
pub const ELECTION_TICKS_MAX_DEFAULT: u32 = 20;
/// Default interval between a leader's heartbeats.
pub const HEARTBEAT_TICKS_DEFAULT: u32 = 2;
/// Default time a leader waits for an acknowledgement to move before it
/// assumes messages to that follower were lost and probes again.
pub const RETRANSMIT_TICKS_DEFAULT: u32 = 6;
/// Default time a leader waits for a follower to acknowledge a snapshot it
/// sent before it sends it again (a snapshot is large and slow to install).
pub const SNAPSHOT_RETRANSMIT_TICKS_DEFAULT: u32 = 60;
/// Default bytes of entries in flight to one follower (sent, not yet
/// acknowledged as written).
pub const WINDOW_BYTES_DEFAULT: u64 = 8 << 20;
/// Default bytes of entries in one append message (at least one entry is
/// always sent, however large).
pub const APPEND_BYTES_MAX_DEFAULT: u64 = 1 << 20;
/// Default size of the no-op batch a new leader appends to commit entries of
/// earlier terms (Raft §5.4.2, §8). The broker sets it to the size of its
/// no-op control batch.
pub const NOOP_BYTES_DEFAULT: u64 = 128;

/// Highest term a node adopts, persists or campaigns in. A term grows by
/// one per election round, so a real group never comes near it (at a
/// thousand elections a second it would take about 8,900 years); a term
/// above it can only come from a forged or damaged message, which is
/// refused before it touches any state. A node whose term reaches the limit
/// stops campaigning (and says so in `Ready::alerts`) instead of wrapping to
/// 0, which would strand the group.
pub const TERM_MAX: u64 = 1 << 48;
/// Highest journal position a message may name or a log may reach (4 EiB).
/// Far beyond any disk; it keeps every position sum (an entry's end plus a
/// no-op, a window) from overflowing a `u64`.
pub const POSITION_MAX: u64 = 1 << 62;
/// Random low bits of an incarnation (`HardState::incarnation`): the rest
/// orders incarnations (the creation time in milliseconds, for the broker's
/// directories; one above a newer incarnation heard of, for a node that
/// learns its directory is stale).
pub const INCARNATION_RANDOM_BITS: u32 = 20;
/// Highest incarnation a message may name or a node may take (2^62: a
/// directory made by the clock reaches it in the year 2109). Bounded so
/// that a node addressed as a newer incarnation of itself always has a
/// higher one to take, and one forged number cannot pin it at the top.
pub const INCARNATION_MAX: u64 = 1 << 62;
/// Largest no-op batch a configuration may ask for.
pub const NOOP_BYTES_MAX: u64 = 1 << 20;

const _: () = assert!(TERM_MAX < u64::MAX / 2);
const _: () = assert!(POSITION_MAX < u64::MAX / 2 && NOOP_BYTES_MAX < POSITION_MAX);
const _: () = assert!(NOOP_BYTES_DEFAULT <= NOOP_BYTES_MAX);
const _: () = assert!(HEARTBEAT_TICKS_DEFAULT >= 1);
const _: () = assert!(HEARTBEAT_TICKS_DEFAULT < ELECTION_TICKS_MIN_DEFAULT);
const _: () = assert!(ELECTION_TICKS_MIN_DEFAULT < ELECTION_TICKS_MAX_DEFAULT);
const _: () = assert!(RETRANSMIT_TICKS_DEFAULT >= HEARTBEAT_TICKS_DEFAULT);
const _: () = assert!(SNAPSHOT_RETRANSMIT_TICKS_DEFAULT >= RETRANSMIT_TICKS_DEFAULT);
const _: () =
    assert!(APPEND_BYTES_MAX_DEFAULT >= 1 && APPEND_BYTES_MAX_DEFAULT <= WINDOW_BYTES_DEFAULT);
const _: () = assert!(NOOP_BYTES_DEFAULT >= 1);

/// How one node of a replication group behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must be one of `voters`.
    pub id: NodeId,
    /// Every voter of the group, this node included (at most
    /// [`VOTERS_MAX`], no duplicates).
    pub voters: Vec<NodeId>,
    /// Seed of the generator that draws election timeouts. Give each node
    /// (and each restart of it) a different seed, or timeouts collide.
    pub seed: u64,
    /// Election timeouts are drawn from `[election_ticks_min,
    /// election_ticks_max)`. `election_ticks_min` is also the lease: a node
    /// that heard from a leader fewer ticks ago refuses (pre-)votes, and a
    /// leader that did not hear from a quorum within it steps down.
    pub election_ticks_min: u32,
    /// Exclusive upper bound of the election timeout.
    pub election_ticks_max: u32,
    /// Ticks between heartbeats (must be below `election_ticks_min`).
    pub heartbeat_ticks: u32,
    /// Ticks without progress after which a leader re-sends from the last
    /// acknowledged position.
    pub retransmit_ticks: u32,
    /// Ticks a leader waits for a snapshot it sent to be acknowledged
    /// before sending it again.
    pub snapshot_retransmit_ticks: u32,
    /// Bytes of entries in flight per follower.
    pub window_bytes: u64,
    /// Bytes of entries per append message (one entry at least).
    pub append_bytes_max: u64,
    /// Size of the no-op batch a new leader appends.
    pub noop_bytes: u64,
}

impl Config {
    /// The defaults for node `id` of a group of `voters`.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            seed: id,
            election_ticks_min: ELECTION_TICKS_MIN_DEFAULT,
            election_ticks_max: ELECTION_TICKS_MAX_DEFAULT,
            heartbeat_ticks: HEARTBEAT_TICKS_DEFAULT,
            retransmit_ticks: RETRANSMIT_TICKS_DEFAULT,
            snapshot_retransmit_ticks: SNAPSHOT_RETRANSMIT_TICKS_DEFAULT,
            window_bytes: WINDOW_BYTES_DEFAULT,
            append_bytes_max: APPEND_BYTES_MAX_DEFAULT,
            noop_bytes: NOOP_BYTES_DEFAULT,
        }
    }

    /// Checks every rule of the configuration.
    ///
    /// # Errors
    /// [`ConsensusError::InvalidConfig`] naming the first rule broken.
    pub fn validate(&self) -> Result<(), ConsensusError> {
        let fail = |why| Err(ConsensusError::InvalidConfig(why));
        if self.voters.is_empty() || self.voters.len() > VOTERS_MAX {
            return fail("voters must hold 1 to VOTERS_MAX nodes");
        }
        if !self.voters.contains(&self.id) {
            return fail("id must be one of the voters");
        }
        for (i, v) in self.voters.iter().enumerate() {
            if self.voters[..i].contains(v) {
                return fail("voters must not repeat");
            }
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks_min {
            return fail("heartbeat_ticks must be at least 1 and below election_ticks_min");
        }
        if self.election_ticks_min >= self.election_ticks_max {
            return fail("election_ticks_min must be below election_ticks_max");
        }
        if self.retransmit_ticks == 0 || self.snapshot_retransmit_ticks == 0 {
            return fail("retransmit_ticks and snapshot_retransmit_ticks must be at least 1");
        }
        if self.append_bytes_max == 0 || self.window_bytes < self.append_bytes_max {
            return fail("append_bytes_max must be at least 1 and at most window_bytes");
        }
        if self.noop_bytes == 0 || self.noop_bytes > NOOP_BYTES_MAX {
            return fail("noop_bytes must be 1 to NOOP_BYTES_MAX");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::new(1, vec![1, 2, 3]).validate().unwrap();
        Config::new(1, vec![1]).validate().unwrap();
    }

    #[test]
    fn validate_refuses_each_broken_rule() {
        let ok = Config::new(1, vec![1, 2, 3]);
        type Break = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Break)> = vec![
            ("no voters", Box::new(|c| c.voters.clear())),
            (
                "too many voters",
                Box::new(|c| c.voters = (1..=10).collect()),
            ),
            ("id not a voter", Box::new(|c| c.id = 9)),
            ("duplicate voter", Box::new(|c| c.voters = vec![1, 2, 2])),
            ("heartbeat 0", Box::new(|c| c.heartbeat_ticks = 0)),
            (
                "heartbeat too slow",
                Box::new(|c| c.heartbeat_ticks = c.election_ticks_min),
            ),
            (
                "empty election range",
                Box::new(|c| c.election_ticks_max = c.election_ticks_min),
            ),
            ("retransmit 0", Box::new(|c| c.retransmit_ticks = 0)),
            (
                "snapshot retransmit 0",
                Box::new(|c| c.snapshot_retransmit_ticks = 0),
            ),
            ("append 0", Box::new(|c| c.append_bytes_max = 0)),
            (
                "window below append",
                Box::new(|c| c.window_bytes = c.append_bytes_max - 1),
            ),
            ("noop 0", Box::new(|c| c.noop_bytes = 0)),
            (
                "noop too large",
                Box::new(|c| c.noop_bytes = NOOP_BYTES_MAX + 1),
            ),
        ];
        for (name, breakit) in cases {
            let mut c = ok.clone();
            breakit(&mut c);
            assert!(
                matches!(c.validate(), Err(ConsensusError::InvalidConfig(_))),
                "{name}"
            );
        }
    }
}
