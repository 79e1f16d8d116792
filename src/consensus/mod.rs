//! Consensus: Raft's election and commit rules applied to journal byte
//! positions, as a sans-IO state machine (no threads, sockets, clocks or
//! entropy of its own).
//!
//! The log is the journal's sequence of record batches, each seen as an
//! [`Entry`] `{ start, end, term }` of byte positions, contiguous from 0.
//! A [`Node`] takes ticks, messages, proposals and its own journal positions,
//! and hands back a [`Ready`]: hard state to persist, journal changes, messages
//! to send, and the positions to publish, R (majority written, for QoS
//! `replicated`) and C (majority durable, for QoS `all` and for readers).
//! `docs/consensus.md` states the caller's contract.
//!
//! - [`node`]: the state machine (tick, step, propose, ready, advance).
//! - [`quorum`]: majority positions and vote tallies.
//! - [`log`]: entries, boundaries and terms.
//! - [`progress`]: the leader's view of each follower (probe / replicate).
//! - [`message`], [`ready`]: what goes in and out.
//! - [`config`]: limits and defaults; [`rng`]: the seeded generator.
//! - [`check`]: the invariants a harness checks after every call.
//! - `sim` (tests only): the deterministic cluster simulation.

pub mod check;
pub mod config;
pub mod error;
pub mod log;
pub mod message;
pub mod node;
pub mod progress;
pub mod quorum;
pub mod ready;
pub mod rng;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use config::Config;
pub use error::ConsensusError;
pub use log::Entry;
pub use message::{FieldError, Message, MessageKind};
pub use node::{Node, PeerStatus};
pub use progress::{Progress, ProgressState};
pub use ready::{Alert, HardState, Ready, Role, SoftState};

/// Identifies a node of a replication group.
pub type NodeId = u64;

/// Deliberate bugs the tests switch on, one thread at a time, to prove the
/// simulation catches them (see `sim.rs`). Outside tests [`mutation::is`]
/// is a constant `false`, so the hooks compile away.
pub(crate) mod mutation {
    /// A rule to break.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mutation {
        /// The leader commits a majority-flushed position even when its
        /// entry is of an earlier term (breaks §5.4.2).
        CommitPreviousTerm,
        /// Votes are granted without the up-to-date check (breaks §5.4.1).
        VoteWithoutLogCheck,
        /// Granting a vote does not mark the hard state for persisting (it
        /// is persisted only if something else, like a new term, changed
        /// with it).
        VolatileVote,
        /// Followers acknowledge written positions as flushed.
        AckUnflushed,
        /// Followers accept an append whatever the term at `prev_pos`.
        IgnorePrevTerm,
        /// Position reports are judged by their position alone (a boundary
        /// of the log), not by the term that came with it.
        ReportWithoutTerm,
        /// A node votes and campaigns as if caught up, whatever its hard
        /// state says (a wiped node votes again).
        VoteBeforeCaughtUp,
        /// A leader keeps a peer's acknowledgements when the peer's
        /// incarnation changes (its disk was replaced).
        KeepAcksOfOldIncarnation,
        /// A follower sent a snapshot keeps its log when it holds an entry
        /// ending at the snapshot's position, whatever that entry's term.
        InstallIgnoresTerm,
    }

    /// Whether `m` is switched on (never, outside tests).
    #[cfg(not(test))]
    #[inline(always)]
    pub fn is(_m: Mutation) -> bool {
        false
    }

    #[cfg(test)]
    thread_local! {
        static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
    }

    /// Whether `m` is switched on for this thread.
    #[cfg(test)]
    pub fn is(m: Mutation) -> bool {
        ACTIVE.with(|a| a.get() == Some(m))
    }

    /// Switches `m` on for this thread until the guard drops.
    #[cfg(test)]
    pub fn enable(m: Mutation) -> Guard {
        ACTIVE.with(|a| a.set(Some(m)));
        Guard
    }

    /// Switches the mutation off when dropped.
    #[cfg(test)]
    pub struct Guard;

    #[cfg(test)]
    impl Drop for Guard {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(None));
        }
    }
}
