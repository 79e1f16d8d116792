//! What nodes say to each other. The broker encodes these on the wire; for
//! an `Append` it sends the journal bytes of `entries` along with them (the
//! entries are only their positions and terms).

use super::{Entry, NodeId};

/// One message between two nodes of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// The sender's term (for `PreVote`, the term it would campaign in; for a
    /// granted `PreVoteResp`, that same term).
    pub term: u64,
    /// What it says.
    pub kind: MessageKind,
}

/// The kinds of [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// "Would you vote for me in `term`?" Sent before campaigning, without
    /// bumping the sender's term (Raft thesis §9.6).
    PreVote {
        /// End of the candidate's log.
        last_pos: u64,
        /// Term of its last entry.
        last_term: u64,
    },
    /// Answer to a `PreVote`.
    PreVoteResp {
        /// Yes or no.
        granted: bool,
    },
    /// RequestVote (Raft §5.2).
    Vote {
        /// End of the candidate's log.
        last_pos: u64,
        /// Term of its last entry.
        last_term: u64,
        /// Sent because the leader handed over leadership (`TimeoutNow`):
        /// voters grant it even while they still hear from that leader.
        transfer: bool,
    },
    /// Answer to a `Vote`.
    VoteResp {
        /// Yes or no.
        granted: bool,
    },
    /// AppendEntries over byte ranges (Raft §5.3). The sender (`from`) is
    /// the leader.
    Append {
        /// Position the entries follow; the follower must hold an entry
        /// ending exactly here with `prev_term` (or `prev_pos` is 0).
        prev_pos: u64,
        /// Term of that entry.
        prev_term: u64,
        /// Entries, contiguous from `prev_pos`; empty for a probe.
        entries: Vec<Entry>,
        /// The leader's commit position C.
        commit: u64,
    },
    /// A follower's positions, all within the prefix it knows matches the
    /// leader's log. Answers appends and heartbeats, and follows every
    /// change of its written or flushed position.
    AppendAck {
        /// End of the prefix known to equal the leader's log.
        matched: u64,
        /// Appended to its journal (≤ `matched`).
        written: u64,
        /// Durable in its journal (≤ `written`).
        flushed: u64,
    },
    /// The follower lacks an entry ending at `rejected` with the expected
    /// term. The hint is its largest boundary at or below `rejected` whose
    /// term is at most the expected one: the leader backs up to there in one
    /// step instead of one entry per round trip.
    AppendReject {
        /// `prev_pos` of the refused append.
        rejected: u64,
        /// Where the follower suggests the leader try next.
        hint_pos: u64,
        /// The follower's term at `hint_pos`.
        hint_term: u64,
    },
    /// "I am still the leader"; carries the commit position.
    Heartbeat {
        /// The leader's commit position C.
        commit: u64,
    },
    /// "Campaign now": the leader hands over leadership to a caught-up follower.
    TimeoutNow,
}
