//! What nodes say to each other. The broker encodes these on the wire; for
//! an `Append` it sends the journal bytes of `entries` along with them (the
//! entries are only their positions and terms).
//!
//! Every message also says who is talking, beyond the node id: the
//! incarnation of the sender's data directory (a node whose disk was wiped
//! comes back with a new one, and its peers forget what the old one
//! acknowledged or promised), the incarnation of the addressee as the
//! sender last heard it (so a node that came back can tell messages made
//! for it from messages made before it existed), and the group's cluster id
//! (so a node never takes part in another group's elections).

use super::config::{INCARNATION_MAX, POSITION_MAX, TERM_MAX};
use super::log::check_run;
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
    /// The sender's incarnation (`HardState::incarnation`); 0 when it has none.
    pub from_incarnation: u64,
    /// The addressee's incarnation as the sender last heard it; 0 when the
    /// sender has not heard from it since it started.
    pub to_incarnation: u64,
    /// The group's cluster id as the sender knows it; 0 while it knows none.
    pub cluster_id: u64,
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
        /// The voter has caught up (`HardState::caught_up`). A yes from one
        /// that has not counts only if every voter says yes.
        caught_up: bool,
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
        /// As for `PreVoteResp`.
        caught_up: bool,
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
        /// The follower has caught up (`HardState::caught_up`). The
        /// positions of one that has not count toward R and C only where
        /// every voter holds them.
        caught_up: bool,
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
    /// "Take my snapshot": the leader no longer holds the entries the
    /// follower needs next (it compacted its log past them). The broker
    /// sends the snapshot of the committed prefix up to `pos` with it. The
    /// follower that holds an entry ending at `pos` with `snapshot_term`
    /// keeps its log; any other drops its journal and starts again at
    /// `pos` from the snapshot ([`Ready::install`](super::Ready::install)).
    /// Either way it answers with an `AppendAck`.
    InstallSnapshot {
        /// The snapshot's position: the leader's log base, a boundary at or
        /// below `commit`; never 0.
        pos: u64,
        /// Term of the entry that ended at `pos`.
        snapshot_term: u64,
        /// The leader's commit position C.
        commit: u64,
    },
    /// "I am still the leader"; carries the commit position.
    Heartbeat {
        /// The leader's commit position C.
        commit: u64,
    },
    /// "Campaign now": the leader hands over leadership to a caught-up follower.
    TimeoutNow,
    /// "Here is my incarnation": a member that has not caught up asks a
    /// peer it has not heard from since it started to answer (a peer learns
    /// a new incarnation only from a message of it, and in a settled group
    /// followers never write to each other). It changes nobody's term.
    Probe,
    /// The answer to a [`MessageKind::Probe`], addressed to the incarnation
    /// the probe came from.
    ProbeResp,
}

impl Message {
    /// A message from `from` to `to` in `term`, with no incarnations and no
    /// cluster id (what a node that uses neither sends).
    pub fn new(from: NodeId, to: NodeId, term: u64, kind: MessageKind) -> Message {
        Message {
            from,
            to,
            term,
            from_incarnation: 0,
            to_incarnation: 0,
            cluster_id: 0,
            kind,
        }
    }
}

/// A field of a [`Message`] that no correct node sends, whoever receives
/// it (see [`Message::check_fields`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as the wire format names it.
    pub field: &'static str,
    /// The rule it breaks.
    pub reason: &'static str,
}

impl Message {
    /// Checks every rule a message from a correct node keeps whatever the
    /// receiver's state: the term at most [`TERM_MAX`], every position at
    /// most [`POSITION_MAX`], a candidate's last term below the term it
    /// asks for, an append's entries non-empty and contiguous from
    /// `prev_pos` with terms that never decrease from `prev_term` and never
    /// pass the message's term (and no term at position 0), acknowledged
    /// positions in order (`flushed <= written <= matched`), a rejection's
    /// hint at or below the rejected position and its term at or below the
    /// message's, a snapshot above 0, at or below the commit position, of a
    /// term from 1 to the message's. The wire decoder and [`Node::step`](super::Node::step)
    /// both apply it; the node then checks what depends on its own state.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn check_fields(&self) -> Result<(), FieldError> {
        let bad = |field, reason| Err(FieldError { field, reason });
        if self.term > TERM_MAX {
            return bad("term", "term above TERM_MAX");
        }
        if self.from_incarnation > INCARNATION_MAX {
            return bad("from_incarnation", "incarnation above INCARNATION_MAX");
        }
        if self.to_incarnation > INCARNATION_MAX {
            return bad("to_incarnation", "incarnation above INCARNATION_MAX");
        }
        match &self.kind {
            MessageKind::PreVote {
                last_pos,
                last_term,
                ..
            }
            | MessageKind::Vote {
                last_pos,
                last_term,
                ..
            } => {
                if *last_pos > POSITION_MAX {
                    return bad("last_pos", "position above POSITION_MAX");
                }
                // A candidate's log holds terms below the one it asks for.
                if *last_term >= self.term {
                    return bad("last_term", "candidate's last term is not below its term");
                }
            }
            MessageKind::Append {
                prev_pos,
                prev_term,
                entries,
                commit,
            } => {
                let last = entries.last().map_or(*prev_pos, |e| e.end);
                if *prev_pos > POSITION_MAX || last > POSITION_MAX {
                    return bad("entry.end", "position above POSITION_MAX");
                }
                if *commit > POSITION_MAX {
                    return bad("commit", "position above POSITION_MAX");
                }
                if *prev_term > self.term {
                    return bad("prev_term", "prev_term above the message's term");
                }
                if *prev_pos == 0 && *prev_term != 0 {
                    return bad("prev_term", "a term at position 0");
                }
                if let Err(reason) = check_run(entries, *prev_pos, *prev_term, self.term) {
                    return bad("entry.term", reason);
                }
            }
            MessageKind::AppendAck {
                matched,
                written,
                flushed,
                ..
            } => {
                if *matched > POSITION_MAX {
                    return bad("matched", "position above POSITION_MAX");
                }
                if flushed > written || written > matched {
                    return bad("flushed", "acknowledged positions out of order");
                }
            }
            MessageKind::AppendReject {
                rejected,
                hint_pos,
                hint_term,
            } => {
                if *rejected > POSITION_MAX {
                    return bad("rejected", "position above POSITION_MAX");
                }
                if hint_pos > rejected {
                    return bad("hint_pos", "reject hint above the rejected position");
                }
                if *hint_term > self.term {
                    return bad("hint_term", "reject hint term above the message's term");
                }
            }
            MessageKind::Heartbeat { commit } => {
                if *commit > POSITION_MAX {
                    return bad("commit", "position above POSITION_MAX");
                }
            }
            MessageKind::InstallSnapshot {
                pos,
                snapshot_term,
                commit,
            } => {
                if *commit > POSITION_MAX {
                    return bad("commit", "position above POSITION_MAX");
                }
                if *pos == 0 || pos > commit {
                    return bad("pos", "a snapshot at 0 or above the commit position");
                }
                if *snapshot_term == 0 || *snapshot_term > self.term {
                    return bad(
                        "snapshot_term",
                        "snapshot term 0 or above the message's term",
                    );
                }
            }
            MessageKind::PreVoteResp { .. }
            | MessageKind::VoteResp { .. }
            | MessageKind::TimeoutNow
            | MessageKind::Probe
            | MessageKind::ProbeResp => {}
        }
        Ok(())
    }
}
