//! What a node hands its caller: state to persist, journal changes to make,
//! messages to send, positions to publish.

use super::{Entry, Message, NodeId};

/// The state that must survive a crash: Raft's `currentTerm` and
/// `votedFor`, and whether this node's data directory has caught up. Write
/// them atomically (temp file, fsync, rename, fsync the directory) before
/// sending any message of the [`Ready`] that carried it.
///
/// The default is the state of a new data directory: term 0, no vote, not
/// caught up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Whom it voted for in `term`, if anyone.
    pub voted_for: Option<NodeId>,
    /// The incarnation of the data directory it voted for (the vote's
    /// `from_incarnation`); 0 with no vote, or when unknown (a vote read
    /// from a file written before votes recorded it). A vote is repeated in
    /// its term only to the same node *and* incarnation: a node that lost
    /// its disk and asks again in the same term is a different candidate,
    /// and its old self may already lead the term.
    pub voted_incarnation: u64,
    /// This data directory's incarnation: non-zero, made with the directory
    /// and kept with it, and ordered: a directory made later has a higher
    /// one (the broker takes the creation time in milliseconds, shifted
    /// left by [`INCARNATION_RANDOM_BITS`](super::config::INCARNATION_RANDOM_BITS),
    /// with random low bits). Peers refuse messages from an incarnation
    /// below the highest they heard from this node id, and void what a
    /// lower one promised when a higher one appears. The node raises it
    /// itself when a peer addresses a higher one (this directory is a stale
    /// copy); it then reports it here, with `caught_up` false. 0: none
    /// (peers cannot tell a wiped disk from a restart).
    pub incarnation: u64,
    /// This data directory has durably held the log up to a commit position
    /// that a leader of the group announced after the directory was made
    /// (in that leader's own term, so everything committed before is
    /// below it), or it led the group's first term to its first commit.
    ///
    /// Until then the node may have been wiped and restarted empty: it does
    /// not know which votes it cast or which entries it acknowledged, so it
    /// grants no vote or pre-vote and does not campaign, except in a group
    /// where no member has caught up (a new group electing its first
    /// leader, which needs every member's vote). A directory made before
    /// this field existed has voted all along: treat it as caught up.
    pub caught_up: bool,
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; its term is unchanged.
    PreCandidate,
    /// Campaigning in its (bumped) term.
    Candidate,
    /// Leads its term: takes proposals, replicates, decides R and C.
    Leader,
}

/// Volatile state the caller may want to react to: who leads (for
/// `NotLeader` redirects) and whether this node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader of the current term as far as this node knows.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
}

/// Something the node cannot do and the caller should log (the node has no
/// logger of its own). Each is reported once, not at every tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// The election timeout fired but the term is at
    /// [`TERM_MAX`](super::config::TERM_MAX): the node will not campaign,
    /// since the next term cannot be represented. Only a forged or damaged
    /// term gets a group there; it needs an operator.
    TermExhausted {
        /// The node's term.
        term: u64,
    },
    /// The election timeout fired but the log ends so close to
    /// [`POSITION_MAX`](super::config::POSITION_MAX) that a leader's no-op
    /// would not fit: the node will not campaign.
    PositionsExhausted {
        /// End of the node's log.
        last_pos: u64,
    },
    /// A peer addressed a newer incarnation of this node than its own: this
    /// data directory is a restored backup or a copy (or was made with a
    /// clock running behind). The node took incarnation `now`, above
    /// `known`, and catches up again before it votes; an operator should
    /// find out how the stale directory came to run.
    StaleIncarnation {
        /// This directory's incarnation until now.
        was: u64,
        /// The newer incarnation a peer knows of.
        known: u64,
        /// The incarnation it took.
        now: u64,
    },
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alert::TermExhausted { term } => write!(
                f,
                "not campaigning: term {term} is at the limit TERM_MAX (a forged or damaged term?)"
            ),
            Alert::PositionsExhausted { last_pos } => write!(
                f,
                "not campaigning: the log ends at {last_pos}, too close to POSITION_MAX for a no-op"
            ),
            Alert::StaleIncarnation { was, known, now } => write!(
                f,
                "this data directory (incarnation {was:#x}) is older than one a peer knows \
                 ({known:#x}): a restored backup or a copy? It takes incarnation {now:#x} and \
                 catches up again before it votes"
            ),
        }
    }
}

/// Everything a node asks its caller to do, taken with `Node::ready` and
/// returned with `Node::advance`. Apply in this order:
///
/// 1. persist `hard_state` (if any) durably;
/// 2. if `install` is set, replace the whole journal by the snapshot that
///    came with the leader's `InstallSnapshot` at that position, durably;
///    then cut the journal at `truncate` (if any), then append `entries` in order
///    (`noops` lists the entries among them that are the leader's own no-op
///    batches; the rest are proposals or entries received from the leader);
/// 3. only then send `messages`;
/// 4. publish `replicated` and `committed`; react to `soft_state`.
#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed.
    pub soft_state: Option<SoftState>,
    /// Term or vote changed: persist before sending `messages`.
    pub hard_state: Option<HardState>,
    /// `(pos, term)`: drop the whole journal and start it again at `pos`
    /// from the snapshot that came with the leader's
    /// [`InstallSnapshot`](super::MessageKind::InstallSnapshot) for `pos`
    /// (an entry of `term` ended there). Durable before `messages` go out:
    /// the node counts `pos` as written and flushed at once.
    pub install: Option<(u64, u64)>,
    /// Remove every journal byte at or after this position (an entry
    /// boundary) before appending `entries`; the first entry starts here.
    pub truncate: Option<u64>,
    /// Entries to append to the journal, contiguous, starting at the
    /// journal's end (after `truncate`).
    pub entries: Vec<Entry>,
    /// The no-op batches among `entries` (a new leader's first entry).
    pub noops: Vec<Entry>,
    /// Messages to send, after steps 1 and 2.
    pub messages: Vec<Message>,
    /// New replication position R (on the leader: held by a majority in
    /// memory, in its own term; elsewhere equal to C). It falls back to C
    /// when leadership is lost; otherwise it only grows.
    pub replicated: Option<u64>,
    /// New commit position C (durable on a majority). Only grows.
    pub committed: Option<u64>,
    /// Things the node could not do, for the caller's log.
    pub alerts: Vec<Alert>,
}
