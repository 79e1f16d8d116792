//! The consensus layer's one error type.
//!
//! Programmer errors (calling `ready` twice without `advance`, a broken
//! internal invariant) are assertions. Everything that can come from the
//! world — a configuration, persisted state read back from disk, a message
//! decoded from the network, a request the node cannot serve in its current
//! role — is a value of this type. A refused message leaves the node as it
//! was, except that a newer term it carried may already have been adopted
//! (which is always safe).

use super::NodeId;
use thiserror::Error;

/// Why a consensus call was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConsensusError {
    /// The configuration breaks one of its rules (see `Config::validate`).
    #[error("invalid consensus config: {0}")]
    InvalidConfig(&'static str),
    /// The hard state or the journal given to `Node::new` cannot belong
    /// together (for example the journal holds a term above the persisted
    /// term, or is not contiguous).
    #[error("invalid persisted consensus state: {0}")]
    InvalidState(&'static str),
    /// A message breaks the protocol: wrong addressee, an unknown sender,
    /// entries that are not contiguous, a second leader in one term.
    #[error("malformed message from node {from}: {reason}")]
    Malformed {
        /// The sender named in the message.
        from: NodeId,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// The message comes from a member of another group: its cluster id is
    /// not this node's (neither being 0, "not known yet").
    #[error("message from node {from} of cluster {theirs:#x}, this node is in cluster {ours:#x}")]
    WrongCluster {
        /// The sender.
        from: NodeId,
        /// The cluster id in the message.
        theirs: u64,
        /// This node's cluster id.
        ours: u64,
    },
    /// The message comes from an incarnation of the sender (a data
    /// directory) older than the newest this node heard from that node id:
    /// sent before the disk was replaced and delivered late, or sent by a
    /// stale copy. What it says is void.
    #[error("message from node {from}'s incarnation {incarnation:#x}, older than {newest:#x}")]
    StaleIncarnation {
        /// The sender.
        from: NodeId,
        /// The sender's incarnation in the message.
        incarnation: u64,
        /// The newest incarnation heard from the sender.
        newest: u64,
    },
    /// A leader asked this node to replace entries it knows are committed.
    /// Raft's safety makes this impossible between correct nodes, so the
    /// message is refused rather than applied.
    #[error(
        "node {from} asked to replace committed entries at position {pos} (committed {commit})"
    )]
    CommittedConflict {
        /// The sender.
        from: NodeId,
        /// Where the conflicting entry starts.
        pos: u64,
        /// This node's commit position.
        commit: u64,
    },
    /// Only the leader accepts proposals and leadership transfers. `leader`
    /// is the leader this node knows of, for a `NotLeader` redirect.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader as far as this node knows.
        leader: Option<NodeId>,
    },
    /// The leader is handing leadership to `to` and takes no proposals
    /// until the transfer ends (it succeeds, or is abandoned after an
    /// election timeout).
    #[error("leadership transfer to node {to} in progress")]
    TransferInProgress {
        /// The node leadership is being handed to.
        to: NodeId,
    },
    /// A proposal of zero bytes, or one that would overflow the position space.
    #[error("invalid entry length {0}")]
    InvalidLength(u64),
    /// The node id is not a voter of this group.
    #[error("node {0} is not a voter of this group")]
    UnknownNode(NodeId),
}
