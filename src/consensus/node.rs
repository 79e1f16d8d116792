//! The Raft state machine of one node, applied to journal byte positions.
//!
//! Sans-IO in the raft-rs `RawNode` style: the caller feeds it
//! [`Node::tick`]s, received [`Message`]s ([`Node::step`]), proposals
//! ([`Node::propose`]) and its own journal positions
//! ([`Node::report_written`], [`Node::report_flushed`]); the node answers
//! with a [`Ready`] ([`Node::ready`]) that the caller applies and hands back
//! ([`Node::advance`]). The node owns no thread, socket, clock or entropy:
//! time is ticks, randomness comes from the seed in [`Config`].
//!
//! Rules and where they live:
//! - terms and votes (Raft §5.1, §5.2): [`Node::step`], `handle_vote_request`;
//! - pre-vote and leader stickiness (thesis §9.6, §4.2.3): `campaign`, `in_lease`;
//! - the election restriction (§5.4.1): `handle_vote_request`;
//! - log matching and truncation of a divergent tail (§5.3): `handle_append`;
//! - pipelined replication with probe/replicate progress: `send_appends`,
//!   `handle_ack`, `handle_reject`;
//! - R and C, and committing only through the leader's own term (§5.4.2):
//!   `advance_positions`;
//! - check-quorum and leadership transfer (thesis §6.2, §3.10): `tick_leader`,
//!   [`Node::transfer_leader`].

use super::config::{INCARNATION_MAX, INCARNATION_RANDOM_BITS, POSITION_MAX, TERM_MAX};
use super::log::Log;
use super::mutation::{self, Mutation};
use super::progress::{Progress, ProgressState};
use super::quorum::{
    election_result, majority_position_counting, vote_result, Answer, VoteResult, VOTERS_MAX,
};
use super::rng::SplitMix64;
use super::{
    Alert, Config, ConsensusError, Entry, HardState, Message, MessageKind, NodeId, Ready, Role,
    SoftState,
};

/// What a peer's replication looks like from the leader, for status pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: NodeId,
    /// Its progress as the leader tracks it.
    pub progress: Progress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Campaign {
    /// Ask for pre-votes; the term stays.
    Pre,
    /// Bump the term, vote for self, ask for votes. `transfer` when the
    /// leader handed over leadership (voters then ignore their lease).
    Real { transfer: bool },
}

/// Outputs gathered between two calls of [`Node::ready`].
#[derive(Debug, Default)]
struct Outbox {
    messages: Vec<Message>,
    noops: Vec<Entry>,
    /// Recycled buffer for `Ready::entries`.
    entries: Vec<Entry>,
    hard_state_changed: bool,
    /// Soft state as last handed out.
    soft: Option<SoftState>,
    /// A snapshot to install, not yet handed out.
    install: Option<(u64, u64)>,
    /// A `Ready` carrying an install is out and `advance` has not been
    /// called: the install may not be durable yet.
    install_outstanding: bool,
    /// Lowest truncation not yet handed out.
    truncate: Option<u64>,
    /// Entries starting at or after this position have not been handed out.
    unsynced_from: u64,
    /// Follower: positions changed; acknowledge them to the leader.
    ack: bool,
    /// Leader: entries or a commit position may need sending.
    replicate: bool,
    /// R and C as last handed out.
    replicated: u64,
    committed: u64,
    /// A `Ready` is out and `advance` has not been called.
    outstanding: bool,
    /// Alerts not yet handed out.
    alerts: Vec<Alert>,
    /// The last alert raised: the same one is not raised again.
    last_alert: Option<Alert>,
}

/// One node of a replication group. See the module documentation and
/// `docs/consensus.md` for the contract.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    /// This node's index in `cfg.voters`.
    slot: usize,
    term: u64,
    voted_for: Option<NodeId>,
    /// See `HardState::voted_incarnation`.
    voted_incarnation: u64,
    role: Role,
    leader: Option<NodeId>,
    log: Log,
    /// This node's journal positions, as its writer and flusher report them.
    written: u64,
    flushed: u64,
    /// Follower: end of the prefix known to equal the current leader's log
    /// (reset whenever the term or the leader changes).
    matched: u64,
    /// Highest commit position known (leader: decided; follower: the
    /// leader's, within `matched`). Never decreases.
    commit: u64,
    /// Leader: highest own-term position held in memory by a majority.
    replicated: u64,
    rng: SplitMix64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    /// Not caught up: ticks since the last round of probes.
    probe_elapsed: u32,
    /// This round's randomised election timeout.
    election_timeout: u32,
    /// Leader: one record per voter (this node's slot is unused).
    progress: Vec<Progress>,
    /// Candidate and pre-candidate: one answer per voter.
    votes: Vec<Option<Answer>>,
    /// Leader: leadership is being handed to this node.
    transferee: Option<NodeId>,
    /// See `HardState::caught_up`.
    caught_up: bool,
    /// Not caught up: `(term, pos)`, a commit position `pos` that the leader
    /// of `term` announced to this incarnation, at the end of an entry of
    /// `term`; caught up once the journal holds it durably, if `term` is
    /// still the current term (see `check_caught_up`).
    catch_up_at: Option<(u64, u64)>,
    /// This data directory's incarnation (see `HardState::incarnation`).
    incarnation: u64,
    /// Per voter: the highest incarnation heard from it since this node
    /// started (0: none). Incarnations are ordered by creation, so messages
    /// from a lower one come from a replaced directory and are refused.
    incarnations: Vec<u64>,
    /// Not caught up: per voter, whether it has sent a message addressed
    /// to this incarnation, with a term at most this node's, since this
    /// node started (so it had heard of it, and had used whatever an
    /// earlier incarnation promised it only in terms up to this node's).
    confirmed: Vec<bool>,
    /// The group's cluster id (0: not known yet).
    cluster_id: u64,
    out: Outbox,
}

impl Node {
    /// A node starting (or restarting) with the persisted `hard_state` and
    /// the journal's `entries` as recovery found them. Everything in
    /// `entries` must be durable: it counts as written and flushed.
    ///
    /// A node on a new (or wiped, or damaged-and-cut) data directory starts
    /// with a fresh `hard_state.incarnation` (above any earlier one of the
    /// same node id) and `hard_state.caught_up` false: see
    /// [`HardState::caught_up`] and [`HardState::incarnation`].
    ///
    /// # Errors
    /// [`ConsensusError::InvalidConfig`] for a bad `config`;
    /// [`ConsensusError::InvalidState`] if the entries are not contiguous
    /// from 0 with non-decreasing terms, hold a term above
    /// `hard_state.term`, end beyond [`POSITION_MAX`], the term is above
    /// [`TERM_MAX`], or the vote names a non-voter.
    pub fn new(
        config: Config,
        hard_state: HardState,
        entries: Vec<Entry>,
    ) -> Result<Node, ConsensusError> {
        Node::with_snapshot(config, hard_state, (0, 0), entries)
    }

    /// [`Node::new`] for a journal that starts with a snapshot of the
    /// committed prefix up to `snapshot.0`, where an entry of term
    /// `snapshot.1` ended (`(0, 0)`: no snapshot); `entries` follow it. The
    /// snapshot counts as committed.
    ///
    /// # Errors
    /// As [`Node::new`]; also [`ConsensusError::InvalidState`] for a
    /// snapshot of term 0 above position 0 (or the reverse), or whose term
    /// is above `hard_state.term`.
    pub fn with_snapshot(
        config: Config,
        hard_state: HardState,
        snapshot: (u64, u64),
        entries: Vec<Entry>,
    ) -> Result<Node, ConsensusError> {
        config.validate()?;
        if hard_state.term > TERM_MAX {
            return Err(ConsensusError::InvalidState(
                "the persisted term is above TERM_MAX",
            ));
        }
        let (base, base_term) = snapshot;
        if (base == 0) != (base_term == 0) {
            return Err(ConsensusError::InvalidState(
                "a snapshot above position 0 needs a term, and one at 0 has none",
            ));
        }
        let log = Log::with_base(base, base_term, entries)?;
        if log.last_pos() > POSITION_MAX {
            return Err(ConsensusError::InvalidState(
                "the journal ends beyond POSITION_MAX",
            ));
        }
        if log.last_term() > hard_state.term {
            return Err(ConsensusError::InvalidState(
                "the journal holds a term above the persisted term",
            ));
        }
        if hard_state
            .voted_for
            .is_some_and(|v| !config.voters.contains(&v))
        {
            return Err(ConsensusError::InvalidState(
                "the persisted vote names a node outside the group",
            ));
        }
        if hard_state.incarnation > INCARNATION_MAX
            || hard_state.voted_incarnation > INCARNATION_MAX
        {
            return Err(ConsensusError::InvalidState(
                "the persisted incarnation is above INCARNATION_MAX",
            ));
        }
        if hard_state.voted_for.is_none() && hard_state.voted_incarnation != 0 {
            return Err(ConsensusError::InvalidState(
                "the persisted vote names an incarnation but no node",
            ));
        }
        let slot = config.voters.iter().position(|v| *v == config.id).ok_or(
            ConsensusError::InvalidConfig("id must be one of the voters"),
        )?;
        let n = config.voters.len();
        let last = log.last_pos();
        let rng = SplitMix64::new(config.seed);
        let mut node = Node {
            slot,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            voted_incarnation: hard_state.voted_incarnation,
            role: Role::Follower,
            leader: None,
            log,
            written: last,
            flushed: last,
            matched: 0,
            commit: base,
            replicated: base,
            rng,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            probe_elapsed: 0,
            election_timeout: 0,
            progress: vec![Progress::new(0); n],
            votes: vec![None; n],
            transferee: None,
            caught_up: hard_state.caught_up,
            catch_up_at: None,
            incarnation: hard_state.incarnation,
            incarnations: vec![0; n],
            confirmed: (0..n).map(|i| i == slot).collect(),
            cluster_id: 0,
            out: Outbox {
                unsynced_from: last,
                ..Outbox::default()
            },
            cfg: config,
        };
        node.reset_election_timer();
        node.out.soft = Some(node.soft_state());
        Ok(node)
    }

    // ----- inputs ------------------------------------------------------

    /// Advances time by one tick: followers and candidates count towards an
    /// election, the leader towards heartbeats, retransmission and its
    /// check-quorum.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed = self.election_elapsed.saturating_add(1);
                if self.election_elapsed >= self.election_timeout {
                    self.campaign(Campaign::Pre);
                }
                self.tick_probes();
            }
        }
    }

    /// A member that has not caught up needs every peer to address its
    /// incarnation (see `check_caught_up`); a follower hears only from its
    /// leader, so every `heartbeat_ticks` it probes the peers it has not
    /// heard from at this incarnation.
    fn tick_probes(&mut self) {
        if self.caught_up {
            return;
        }
        self.probe_elapsed = self.probe_elapsed.saturating_add(1);
        if self.probe_elapsed < self.cfg.heartbeat_ticks {
            return;
        }
        self.probe_elapsed = 0;
        for s in 0..self.cfg.voters.len() {
            if s != self.slot && !self.confirmed[s] {
                self.send(self.cfg.voters[s], self.term, MessageKind::Probe);
            }
        }
    }

    /// Takes one message received from a peer.
    ///
    /// # Errors
    /// [`ConsensusError::Malformed`], [`ConsensusError::WrongCluster`],
    /// [`ConsensusError::StaleIncarnation`] or
    /// [`ConsensusError::CommittedConflict`] when the message is wrong for
    /// this node (docs/consensus.md, "Refused inputs"); the node ignores it.
    /// Never panics, whatever the message.
    pub fn step(&mut self, m: Message) -> Result<(), ConsensusError> {
        let s = self.check_message(&m)?;
        self.note_incarnation(s, m.from_incarnation);
        // Only a message of this group's current business may say this
        // directory is stale: not one of an older term, nor one without the
        // group's id once it is known (it changes persisted state and takes
        // the node's full weight away until it catches up again).
        let current =
            m.term >= self.term && (self.cluster_id == 0 || m.cluster_id == self.cluster_id);
        if m.to_incarnation > self.incarnation && current {
            self.renew_incarnation(m.to_incarnation);
        }
        let (term, addressed) = (m.term, m.to_incarnation == self.incarnation);
        self.handle(s, m)?;
        // Made for this incarnation: the sender had heard of it, so it had
        // stopped counting what an earlier one promised, and had counted it
        // only in terms up to its own, which is at most the message's term
        // (a pre-vote names the next one). That bound is what makes this a
        // confirmation, so it must lie within this node's term (a higher
        // one was adopted above, unless the kind changes no term): see
        // `check_caught_up`.
        if !self.caught_up && addressed && term <= self.term && !self.confirmed[s] {
            self.confirmed[s] = true;
            self.check_caught_up();
        }
        Ok(())
    }

    /// `step` for a message that passed the checks, from the peer in slot `s`.
    fn handle(&mut self, s: usize, m: Message) -> Result<(), ConsensusError> {
        if m.term > self.term {
            if let MessageKind::PreVote { .. } | MessageKind::Vote { .. } = m.kind {
                let transfer = matches!(m.kind, MessageKind::Vote { transfer: true, .. });
                if !transfer && self.in_lease() {
                    // Leader stickiness: a live leader exists, so this
                    // candidate is disruptive (partitioned, or slow). Do not
                    // even adopt its term.
                    return Ok(());
                }
            }
            match m.kind {
                // A pre-vote does not change terms, and a granted pre-vote
                // answer carries the term we *would* campaign in. A probe
                // changes no term either: it comes from a member that has
                // not caught up (possibly behind, possibly partitioned).
                MessageKind::PreVote { .. }
                | MessageKind::PreVoteResp { granted: true, .. }
                | MessageKind::Probe => {}
                MessageKind::Append { .. }
                | MessageKind::InstallSnapshot { .. }
                | MessageKind::Heartbeat { .. }
                | MessageKind::TimeoutNow => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.kind {
                // Tell a stale leader there is a newer term, so it steps down.
                MessageKind::Append { .. }
                | MessageKind::InstallSnapshot { .. }
                | MessageKind::Heartbeat { .. } => self.send(
                    m.from,
                    self.term,
                    MessageKind::AppendAck {
                        matched: 0,
                        written: 0,
                        flushed: 0,
                        caught_up: self.may_vote(),
                    },
                ),
                // Tell a pre-candidate with a stale term why it cannot win.
                MessageKind::PreVote { .. } => self.send(
                    m.from,
                    self.term,
                    MessageKind::PreVoteResp {
                        granted: false,
                        caught_up: self.may_vote(),
                    },
                ),
                // Answered at this node's term, which the prober adopts.
                MessageKind::Probe => self.send(m.from, self.term, MessageKind::ProbeResp),
                _ => {}
            }
            return Ok(());
        }

        match m.kind {
            MessageKind::PreVote {
                last_pos,
                last_term,
            } => self.handle_vote_request(&m, last_pos, last_term, true),
            MessageKind::Vote {
                last_pos,
                last_term,
                ..
            } => self.handle_vote_request(&m, last_pos, last_term, false),
            MessageKind::PreVoteResp { granted, caught_up } => {
                let answers_our_round = if granted {
                    self.term.checked_add(1) == Some(m.term)
                } else {
                    m.term == self.term
                };
                if self.role == Role::PreCandidate && answers_our_round {
                    self.record_vote(s, granted, caught_up);
                }
            }
            MessageKind::VoteResp { granted, caught_up } => {
                if self.role == Role::Candidate {
                    self.record_vote(s, granted, caught_up);
                }
            }
            MessageKind::Append {
                prev_pos,
                prev_term,
                ref entries,
                commit,
            } => {
                self.accept_leader(m.from)?;
                self.handle_append(m.from, prev_pos, prev_term, entries, commit)?;
                self.learn_catch_up_point(&m, commit);
            }
            MessageKind::InstallSnapshot {
                pos,
                snapshot_term,
                commit,
            } => {
                self.accept_leader(m.from)?;
                self.handle_install(m.from, pos, snapshot_term, commit)?;
                self.learn_catch_up_point(&m, commit);
            }
            MessageKind::Heartbeat { commit } => {
                // What matches the leader's log so far (nothing, if it is
                // news that `from` leads).
                let matched = if self.leader == Some(m.from) {
                    self.matched
                } else {
                    0
                };
                self.check_commit(m.from, commit, matched, 0, &[])?;
                self.accept_leader(m.from)?;
                self.learn_commit(commit);
                self.out.ack = true;
                self.learn_catch_up_point(&m, commit);
            }
            MessageKind::AppendAck {
                matched,
                written,
                flushed,
                caught_up,
            } => {
                if self.role == Role::Leader {
                    self.progress[s].caught_up = caught_up;
                    self.handle_ack(s, matched, written, flushed);
                }
            }
            MessageKind::AppendReject {
                rejected,
                hint_pos,
                hint_term,
            } => {
                if self.role == Role::Leader {
                    self.handle_reject(s, rejected, hint_pos, hint_term);
                }
            }
            // Answered so that the prober hears from this node at its
            // incarnation (see `step`'s confirmation above).
            MessageKind::Probe => self.send(m.from, self.term, MessageKind::ProbeResp),
            MessageKind::ProbeResp => {}
            MessageKind::TimeoutNow => match self.leader {
                Some(l) if l != m.from => {
                    return Err(ConsensusError::Malformed {
                        from: m.from,
                        reason: "TimeoutNow from a node that does not lead this term",
                    });
                }
                Some(_) if self.role == Role::Follower => {
                    self.campaign(Campaign::Real { transfer: true })
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// Appends a new entry of `bytes` bytes at the end of the leader's log,
    /// in the current term, and returns it. The entry appears in the next
    /// [`Ready::entries`]; the caller writes the batch there (stamped with
    /// `entry.term`).
    ///
    /// # Errors
    /// [`ConsensusError::NotLeader`] (with the known leader, for a
    /// redirect), [`ConsensusError::TransferInProgress`], or
    /// [`ConsensusError::InvalidLength`] for 0 bytes or a position overflow.
    pub fn propose(&mut self, bytes: u64) -> Result<Entry, ConsensusError> {
        if self.role != Role::Leader {
            return Err(ConsensusError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.transferee {
            return Err(ConsensusError::TransferInProgress { to });
        }
        let start = self.log.last_pos();
        let end = match start.checked_add(bytes) {
            Some(end) if bytes > 0 && end <= POSITION_MAX => end,
            _ => return Err(ConsensusError::InvalidLength(bytes)),
        };
        let e = Entry {
            start,
            end,
            term: self.term,
        };
        self.log.append(e);
        self.out.replicate = true;
        Ok(e)
    }

    /// The caller's journal holds the log up to `pos` (in memory, maybe not
    /// yet durable), where an entry of `term` ends. Reports that do not
    /// match the log (the tail was truncated and rewritten since) are
    /// ignored, so a late report can never vouch for replaced bytes.
    pub fn report_written(&mut self, pos: u64, term: u64) {
        if pos <= self.written || !self.reported_pair_matches(pos, term) {
            return;
        }
        self.written = pos;
        self.on_own_position_change();
    }

    /// The caller's journal holds the log up to `pos` durably (fdatasync'd),
    /// where an entry of `term` ends. Ignored when it does not match the log.
    pub fn report_flushed(&mut self, pos: u64, term: u64) {
        if pos <= self.flushed || !self.reported_pair_matches(pos, term) {
            return;
        }
        self.flushed = pos;
        self.written = self.written.max(pos);
        self.check_caught_up();
        self.on_own_position_change();
    }

    /// Whether a position report is about the log as it is: an entry of
    /// `term` ends at `pos`. By log matching, the log below `pos` is then
    /// the one the reporter wrote or synced; after a truncation and rewrite
    /// the pair of the old bytes no longer matches.
    fn reported_pair_matches(&self, pos: u64, term: u64) -> bool {
        self.log
            .term_at(pos)
            .is_some_and(|t| t == term || mutation::is(Mutation::ReportWithoutTerm))
    }

    /// The connection to `peer` broke or was made again: messages to it may
    /// have been lost, and the peer itself may have crashed and lost what
    /// it held only in memory. The leader goes back to probing it from its
    /// acknowledged *flushed* position and forgets its acknowledged written
    /// and matched positions above that, so R never counts bytes the peer
    /// may have lost. Harmless on a non-leader.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(s) = self.slot_of(peer).filter(|s| *s != self.slot) {
            let pr = &mut self.progress[s];
            let from = pr.flushed;
            pr.probe_from(from);
            pr.acked_since_link = false;
            self.out.replicate = true;
        }
    }

    /// Hands leadership to `to` (graceful shutdown): the leader stops taking
    /// proposals, brings `to` up to date, then tells it to campaign at once
    /// (`TimeoutNow`). Abandoned if `to` has not taken over within an
    /// election timeout. Transferring to itself does nothing.
    ///
    /// # Errors
    /// [`ConsensusError::NotLeader`], or [`ConsensusError::UnknownNode`] if
    /// `to` is not a voter.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ConsensusError> {
        if self.role != Role::Leader {
            return Err(ConsensusError::NotLeader {
                leader: self.leader,
            });
        }
        let s = self.slot_of(to).ok_or(ConsensusError::UnknownNode(to))?;
        if s == self.slot || self.transferee == Some(to) {
            return Ok(());
        }
        self.transferee = Some(to);
        // The transfer gets one full election timeout.
        self.election_elapsed = 0;
        if self.ready_to_lead(s) {
            self.send(to, self.term, MessageKind::TimeoutNow);
        } else {
            self.out.replicate = true;
        }
        Ok(())
    }

    /// The group's cluster id, as the caller learned it (the first leader of
    /// a new group writes one into the journal as a control record); 0
    /// forgets it. From then on, messages that carry another non-zero
    /// cluster id are refused ([`ConsensusError::WrongCluster`]), and this
    /// node's messages carry it. Set it only once the record is committed
    /// (an uncommitted one may be replaced by another leader's).
    pub fn set_cluster_id(&mut self, cluster_id: u64) {
        self.cluster_id = cluster_id;
    }

    /// The caller holds a durable snapshot of the committed prefix up to
    /// `pos` and may drop the journal below it: the log forgets the entries
    /// there (it keeps `pos` and its term). A follower that needs them from
    /// this node as leader is sent the snapshot instead
    /// ([`MessageKind::InstallSnapshot`]). Compacting at or below the
    /// current base does nothing.
    ///
    /// # Errors
    /// [`ConsensusError::InvalidState`] if `pos` is above C or above the
    /// flushed position, or is not an entry boundary.
    pub fn compact(&mut self, pos: u64) -> Result<(), ConsensusError> {
        if pos <= self.log.base() {
            return Ok(());
        }
        if pos > self.commit || pos > self.flushed || self.log.term_at(pos).is_none() {
            return Err(ConsensusError::InvalidState(
                "compacting above C, above the flushed position or off an entry boundary",
            ));
        }
        self.log.compact(pos);
        Ok(())
    }

    // ----- outputs -----------------------------------------------------

    /// Whether [`Node::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        let o = &self.out;
        !o.messages.is_empty()
            || !o.alerts.is_empty()
            || o.hard_state_changed
            || o.install.is_some()
            || o.truncate.is_some()
            || o.unsynced_from != self.log.last_pos()
            || (o.ack && self.leader.is_some_and(|l| l != self.cfg.id))
            || (o.replicate && self.role == Role::Leader)
            || o.soft != Some(self.soft_state())
            || self.committed() > o.committed
            || self.replicated() != o.replicated
    }

    /// Everything the caller must do now, in the order documented on
    /// [`Ready`]. Call [`Node::advance`] with it once applied.
    ///
    /// # Panics
    /// If the previous `Ready` was not handed back with `advance`.
    pub fn ready(&mut self) -> Ready {
        assert!(
            !self.out.outstanding,
            "Node::ready called again before Node::advance"
        );
        self.out.outstanding = true;
        self.flush_outbox();
        let soft = self.soft_state();
        let soft_state = (self.out.soft != Some(soft)).then(|| {
            self.out.soft = Some(soft);
            soft
        });
        let hard_state =
            std::mem::take(&mut self.out.hard_state_changed).then(|| self.hard_state());
        let mut entries = std::mem::take(&mut self.out.entries);
        entries.extend_from_slice(self.log.entries_from(self.out.unsynced_from));
        self.out.unsynced_from = self.log.last_pos();
        let committed = (self.committed() > self.out.committed).then(|| {
            self.out.committed = self.committed();
            self.out.committed
        });
        let replicated = (self.replicated() != self.out.replicated).then(|| {
            self.out.replicated = self.replicated();
            self.out.replicated
        });
        Ready {
            soft_state,
            hard_state,
            install: {
                let install = self.out.install.take();
                self.out.install_outstanding = install.is_some();
                install
            },
            truncate: self.out.truncate.take(),
            entries,
            noops: std::mem::take(&mut self.out.noops),
            messages: std::mem::take(&mut self.out.messages),
            replicated,
            committed,
            alerts: std::mem::take(&mut self.out.alerts),
        }
    }

    /// Takes back an applied [`Ready`] (its buffers are reused).
    ///
    /// # Panics
    /// If no `Ready` is outstanding.
    pub fn advance(&mut self, mut ready: Ready) {
        assert!(self.out.outstanding, "Node::advance without Node::ready");
        self.out.outstanding = false;
        self.out.install_outstanding = false;
        ready.entries.clear();
        self.out.entries = ready.entries;
        if self.out.messages.is_empty() {
            ready.messages.clear();
            self.out.messages = ready.messages;
        }
        if self.out.noops.is_empty() {
            ready.noops.clear();
            self.out.noops = ready.noops;
        }
    }

    // ----- queries -----------------------------------------------------

    /// The log's base: the position of the snapshot it starts from (0 when
    /// it was never compacted), and the term of the entry that ended there.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.log.base(), self.log.base_term())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Term, vote and catch-up, as they must be persisted.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
            voted_incarnation: self.voted_incarnation,
            incarnation: self.incarnation,
            caught_up: self.caught_up,
        }
    }

    /// The group's cluster id as set by [`Node::set_cluster_id`] (0: none).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Role, leader and term.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// The log: the journal's entries as this node sees them (including
    /// entries not yet handed out by `ready`).
    pub fn log(&self) -> &[Entry] {
        self.log.entries()
    }

    /// The term of the entry ending exactly at `pos` (0 at position 0), or
    /// `None` when `pos` is not an entry boundary of the log.
    pub fn term_at(&self, pos: u64) -> Option<u64> {
        self.log.term_at(pos)
    }

    /// End of the log.
    pub fn last_pos(&self) -> u64 {
        self.log.last_pos()
    }

    /// This node's written position W, as reported.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// This node's flushed position F, as reported.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// The commit position C: durable on a majority, and present in this
    /// node's journal (`C <= W`). Never decreases.
    pub fn committed(&self) -> u64 {
        self.commit.min(self.written).max(self.out.committed)
    }

    /// The replication position R. On the leader: the highest position of
    /// its own term held (written) by a majority, at least C and at most W.
    /// On any other node: C.
    pub fn replicated(&self) -> u64 {
        let c = self.committed();
        match self.role {
            Role::Leader => self.replicated.min(self.written).max(c),
            _ => c,
        }
    }

    /// The leader's view of each peer (empty on a non-leader).
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        let leading = self.role == Role::Leader;
        self.cfg
            .voters
            .iter()
            .zip(&self.progress)
            .enumerate()
            .filter(move |(i, _)| leading && *i != self.slot)
            .map(|(_, (id, pr))| PeerStatus {
                id: *id,
                progress: *pr,
            })
    }

    /// The follower best placed to take over leadership, for a graceful
    /// shutdown: one that was heard from within the minimum election
    /// timeout and acknowledged the leader's whole log in this term since
    /// its link was last made (a follower that restarted may have lost what
    /// it acknowledged before; handing over to it would fail and leave the
    /// group waiting for an election). `None` when no follower qualifies,
    /// on a non-leader, or in a single-node group: then shut down without
    /// a hand-over.
    pub fn best_transfer_target(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        (0..self.cfg.voters.len())
            .filter(|s| *s != self.slot && self.ready_to_lead(*s))
            .map(|s| self.cfg.voters[s])
            .min()
    }

    /// Whether the follower in slot `s` could take over leadership now.
    fn ready_to_lead(&self, s: usize) -> bool {
        self.progress[s].ready_to_lead(self.log.last_pos(), self.cfg.election_ticks_min)
    }

    // ----- elections ---------------------------------------------------

    /// Whether this node heard from a live leader (or is one) within the
    /// minimum election timeout: then it refuses to help depose it.
    fn in_lease(&self) -> bool {
        self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks_min
    }

    /// Whether this node has caught up (`HardState::caught_up`): its votes
    /// and acknowledged positions count fully, not only when unanimous.
    fn may_vote(&self) -> bool {
        self.caught_up || mutation::is(Mutation::VoteBeforeCaughtUp)
    }

    /// The peer in slot `s` says its incarnation is `incarnation` (not
    /// below the highest heard: `check_message` refused those). When it
    /// rose, the peer's disk was replaced: what it acknowledged (on a
    /// leader) or granted (on a candidate) is void.
    fn note_incarnation(&mut self, s: usize, incarnation: u64) {
        let now = self.incarnations[s];
        if incarnation <= now {
            return;
        }
        self.incarnations[s] = incarnation;
        if now == 0 || mutation::is(Mutation::KeepAcksOfOldIncarnation) {
            return; // first heard of since this node started
        }
        match self.role {
            Role::Leader => {
                // Probe it afresh. What was sent this term stays sent: an
                // answer to it is no lie.
                let sent = self.progress[s].sent;
                self.progress[s] = Progress::new(self.log.last_pos());
                self.progress[s].sent = sent;
                self.out.replicate = true;
            }
            Role::Candidate | Role::PreCandidate => {
                self.votes[s] = None;
                self.tally();
            }
            Role::Follower => {}
        }
    }

    /// A peer addressed this node as incarnation `known`, above its own: a
    /// newer directory of this node id exists (this one is a restored
    /// backup or a copy, or was made with a clock running behind). What
    /// that directory promised (votes, acknowledged bytes) this one does
    /// not know, exactly as if it had lost its disk: it takes an
    /// incarnation above `known` (peers then void what the newer one
    /// promised, as for any replaced disk) and catches up again before its
    /// vote and positions count fully. The new incarnation leaves in the
    /// next `Ready`'s hard state, which is persisted before any message
    /// that carries it. It is `known` plus one plus up to 20 random bits,
    /// so that two copies of one directory that both learn of `known` part
    /// ways, and so that it stays just above `known`: a random 64-bit value
    /// could lie above every incarnation a later directory, made by the
    /// clock, would get.
    fn renew_incarnation(&mut self, known: u64) {
        let was = self.incarnation;
        let spread = self.rng.below(1 << INCARNATION_RANDOM_BITS);
        // `known` is at most INCARNATION_MAX (`check_fields`): no overflow.
        let renewed = (known + 1 + spread).min(INCARNATION_MAX);
        if renewed <= known {
            // At the bound: no higher one to take. Keep this one and say so
            // (nothing a clock makes comes near it before 2109).
            self.alert(Alert::StaleIncarnation {
                was,
                known,
                now: was,
            });
            return;
        }
        self.incarnation = renewed;
        self.caught_up = false;
        self.catch_up_at = None;
        for (i, c) in self.confirmed.iter_mut().enumerate() {
            *c = i == self.slot;
        }
        self.probe_elapsed = 0;
        self.out.hard_state_changed = true;
        self.alert(Alert::StaleIncarnation {
            was,
            known,
            now: self.incarnation,
        });
        if self.role != Role::Follower {
            // Its election counted this directory's own vote at full weight.
            self.become_follower(self.term, None);
        }
    }

    /// A node that has not caught up learns from its leader's append or
    /// heartbeat `m` the commit position `commit`. Made for this
    /// incarnation (not before the leader heard of it), the first one of
    /// the term is the point to catch up to (see `check_caught_up`), even
    /// beyond what this node holds yet: a wiped member that fetches the
    /// journal catches up once it has fetched that far, instead of chasing
    /// a commit position that moves on while it fetches.
    fn learn_catch_up_point(&mut self, m: &Message, commit: u64) {
        if self.caught_up
            || self.role != Role::Follower
            || self.leader != Some(m.from)
            || m.to_incarnation != self.incarnation
        {
            return;
        }
        if commit > 0 {
            self.learn_catch_up_at(commit);
        }
        // The point, or more of the leader's log that matches it.
        self.check_caught_up();
    }

    /// `pos` is a commit position that the current term's leader (this
    /// node, or its leader) announced to this incarnation. The first one of
    /// a term is the catch-up point; later ones of the same term lie above
    /// it and add nothing (see `check_caught_up`).
    fn learn_catch_up_at(&mut self, pos: u64) {
        if self.catch_up_at.is_none_or(|(term, _)| term != self.term) {
            self.catch_up_at = Some((self.term, pos));
        }
    }

    /// Caught up once, in the current term `T`, the journal durably holds
    /// the leader's log up to the catch-up point (a commit position of
    /// `T`'s leader, announced to this incarnation, at the end of an entry
    /// of `T`) and every peer has addressed this incarnation with a term at
    /// most `T`. A peer counts an earlier incarnation's vote or
    /// acknowledgement only until it hears of this one, and so only in a
    /// term at most `T`: a vote in such a term, or a commit by a leader of
    /// such a term. `T`'s leader holds every entry committed in earlier
    /// terms, and announced the catch-up point after it heard of this
    /// incarnation, after the last commit it made with the old one's help:
    /// the point lies beyond every such commit. Holding an entry of `T`,
    /// this node grants no vote in `T` or below (a candidate there has an
    /// older last term). So its yes and its positions can count as anyone's
    /// (docs/consensus.md, "Members that lost their disk"). A catch-up
    /// point of an earlier term proves nothing: it may lie below what a
    /// newer leader committed with the old disk's help (simulation seed
    /// 19289). Said through the hard state, so a restart votes normally.
    ///
    /// Never while an installed snapshot may not be durable yet (not
    /// handed out, or handed out and not taken back with `advance`): the
    /// hard state that says so is persisted before the install is applied
    /// (`Ready`'s order), and a crash between the two would leave a
    /// directory that claims to have caught up over its old journal.
    fn check_caught_up(&mut self) {
        let Some((term, at)) = self.catch_up_at else {
            return;
        };
        if self.out.install.is_some() || self.out.install_outstanding {
            return;
        }
        // A follower knows the leader's log only up to `matched` (a leader
        // holds its own).
        let holds = self.role == Role::Leader || self.matched >= at;
        if self.caught_up || term != self.term || !holds {
            return;
        }
        if self.log.term_at(at) != Some(term) {
            // The leader has not committed in its own term yet: earlier
            // terms' commits may lie above this one. A later one will do.
            self.catch_up_at = None;
            return;
        }
        if self.flushed >= at && self.confirmed.iter().all(|c| *c) {
            self.caught_up = true;
            self.catch_up_at = None;
            self.out.hard_state_changed = true;
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.election_timeout = self.rng.range(
            u64::from(self.cfg.election_ticks_min),
            u64::from(self.cfg.election_ticks_max),
        ) as u32;
    }

    /// Why this node cannot campaign now, if it cannot: the next term or a
    /// leader's no-op would pass a limit.
    fn campaign_blocked(&self) -> Option<Alert> {
        let last_pos = self.log.last_pos();
        if self.term >= TERM_MAX {
            Some(Alert::TermExhausted { term: self.term })
        } else if last_pos > POSITION_MAX - self.cfg.noop_bytes {
            Some(Alert::PositionsExhausted { last_pos })
        } else {
            None
        }
    }

    /// Hands `a` to the caller unless it was the last alert raised.
    fn alert(&mut self, a: Alert) {
        if self.out.last_alert != Some(a) {
            self.out.last_alert = Some(a);
            self.out.alerts.push(a);
        }
    }

    fn campaign(&mut self, kind: Campaign) {
        if let Some(why) = self.campaign_blocked() {
            // Wait a whole timeout before looking again.
            self.reset_election_timer();
            self.alert(why);
            return;
        }
        self.out.last_alert = None;
        // Below TERM_MAX (checked above): the next term cannot overflow.
        let term = match kind {
            Campaign::Pre => {
                self.role = Role::PreCandidate;
                self.term + 1
            }
            Campaign::Real { .. } => {
                self.term += 1;
                self.voted_for = Some(self.cfg.id);
                self.voted_incarnation = self.incarnation;
                self.out.hard_state_changed = true;
                self.role = Role::Candidate;
                self.term
            }
        };
        self.leader = None;
        self.matched = 0;
        self.transferee = None;
        self.reset_election_timer();
        self.votes.fill(None);
        // Its own vote counts like anyone's: fully only if it caught up.
        self.votes[self.slot] = Some(Answer::new(true, self.may_vote()));
        let (last_pos, last_term) = (self.log.last_pos(), self.log.last_term());
        for i in 0..self.cfg.voters.len() {
            if i == self.slot {
                continue;
            }
            let to = self.cfg.voters[i];
            let msg = match kind {
                Campaign::Pre => MessageKind::PreVote {
                    last_pos,
                    last_term,
                },
                Campaign::Real { transfer } => MessageKind::Vote {
                    last_pos,
                    last_term,
                    transfer,
                },
            };
            self.send(to, term, msg);
        }
        self.tally();
    }

    /// Answers the vote or pre-vote request `m`.
    fn handle_vote_request(&mut self, m: &Message, last_pos: u64, last_term: u64, pre: bool) {
        let (from, term) = (m.from, m.term);
        // One vote per term (§5.2), first come first served; a pre-vote for
        // a later term promises nothing, so it needs no free vote. The vote
        // is repeated only to the incarnation it went to: the same node id
        // on a new disk forgot that its old self asked (and may lead this
        // term with it). A vote whose incarnation is unknown (0, from a
        // version 1 file) is repeated to no candidate that has one: refusing
        // costs at most one more election round.
        let same_candidate =
            self.voted_for == Some(from) && self.voted_incarnation == m.from_incarnation;
        let can_vote = same_candidate
            || (self.voted_for.is_none() && self.leader.is_none())
            || (pre && term > self.term);
        // The election restriction (§5.4.1): the candidate's log must be at
        // least as up-to-date as ours: higher last term, or same last term
        // and at least as long.
        let up_to_date = (last_term, last_pos) >= (self.log.last_term(), self.log.last_pos());
        let up_to_date = up_to_date || mutation::is(Mutation::VoteWithoutLogCheck);
        let granted = can_vote && up_to_date;
        // A node that has not caught up since its data directory was made
        // may have voted or acknowledged entries in a life it forgot: its
        // yes says so, and counts only if every voter says yes.
        let caught_up = self.may_vote();
        if pre {
            let reply_term = if granted { term } else { self.term };
            self.send(
                from,
                reply_term,
                MessageKind::PreVoteResp { granted, caught_up },
            );
        } else {
            if granted {
                self.election_elapsed = 0;
                self.voted_for = Some(from);
                self.voted_incarnation = m.from_incarnation;
                // The vote must be durable before the answer leaves.
                if !mutation::is(Mutation::VolatileVote) {
                    self.out.hard_state_changed = true;
                }
            }
            self.send(
                from,
                self.term,
                MessageKind::VoteResp { granted, caught_up },
            );
        }
    }

    fn record_vote(&mut self, s: usize, granted: bool, caught_up: bool) {
        if self.votes[s].is_none() {
            self.votes[s] = Some(Answer::new(granted, caught_up));
        }
        self.tally();
    }

    fn tally(&mut self) {
        match election_result(&self.votes) {
            VoteResult::Won if self.role == Role::PreCandidate => {
                self.campaign(Campaign::Real { transfer: false })
            }
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.voted_incarnation = 0;
            self.out.hard_state_changed = true;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.matched = 0;
        self.transferee = None;
        self.replicated = 0;
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.transferee = None;
        self.replicated = 0;
        self.reset_election_timer();
        let next = self.log.last_pos();
        for (i, pr) in self.progress.iter_mut().enumerate() {
            if i != self.slot {
                *pr = Progress::new(next);
            }
        }
        // Entries of earlier terms commit only through one of ours (§5.4.2):
        // append a no-op at once so they do not wait for the next proposal.
        let noop = Entry {
            start: next,
            end: next + self.cfg.noop_bytes,
            term: self.term,
        };
        self.log.append(noop);
        self.out.noops.push(noop);
        self.out.replicate = true;
        self.advance_positions();
    }

    /// A message from `from` as the leader of the current term.
    fn accept_leader(&mut self, from: NodeId) -> Result<(), ConsensusError> {
        match self.role {
            Role::Leader => {
                return Err(ConsensusError::Malformed {
                    from,
                    reason: "a second leader in this term",
                });
            }
            Role::Candidate | Role::PreCandidate => self.become_follower(self.term, Some(from)),
            Role::Follower => match self.leader {
                None => {
                    self.leader = Some(from);
                    self.matched = 0;
                }
                Some(l) if l != from => {
                    return Err(ConsensusError::Malformed {
                        from,
                        reason: "a second leader in this term",
                    });
                }
                Some(_) => {}
            },
        }
        self.election_elapsed = 0;
        Ok(())
    }

    // ----- the follower's log ------------------------------------------

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_pos: u64,
        prev_term: u64,
        entries: &[Entry],
        commit: u64,
    ) -> Result<(), ConsensusError> {
        let base = self.log.base();
        // The end of what the leader sent: never acknowledge more (its
        // check refuses an acknowledgement past what it sent, and the
        // follower would then never be heard again).
        let sent_end = entries.last().map_or(prev_pos, |e| e.end);
        let (prev_pos, prev_term, entries) = if prev_pos < base {
            // Our log up to its base is a snapshot of the committed prefix,
            // which every leader holds: it matches the leader's there. Skip
            // what lies below the base (a late append, or one sent before
            // the leader heard of the snapshot).
            let skip = entries.partition_point(|e| e.end <= base);
            if entries.get(skip).is_some_and(|e| e.start != base) {
                return Err(ConsensusError::Malformed {
                    from,
                    reason: "an entry spans a committed snapshot position",
                });
            }
            (base, self.log.base_term(), &entries[skip..])
        } else {
            (prev_pos, prev_term, entries)
        };
        let prev_ok = match self.log.term_at(prev_pos) {
            Some(t) => t == prev_term || mutation::is(Mutation::IgnorePrevTerm),
            None => false,
        };
        if !prev_ok {
            // Log matching (§5.3) fails here: refuse, with a hint at our
            // largest boundary that can still agree with the leader.
            let (hint_pos, hint_term) = self
                .log
                .last_boundary_at_or_below(prev_pos.min(self.log.last_pos()), prev_term)
                .unwrap_or((base, self.log.base_term()));
            self.send(
                from,
                self.term,
                MessageKind::AppendReject {
                    rejected: prev_pos,
                    hint_pos,
                    hint_term,
                },
            );
            return Ok(());
        }
        self.check_commit(from, commit, self.matched, prev_pos, entries)?;
        // Skip what we already hold; cut at the first conflict; append the rest.
        let bad = |reason| Err(ConsensusError::Malformed { from, reason });
        let mut first_new = entries.len();
        for (i, e) in entries.iter().enumerate() {
            if e.start >= self.log.last_pos() {
                first_new = i;
                break;
            }
            let Some(held) = self.log.entry_at(e.start) else {
                // Entries follow `prev_pos`, a boundary, and each other.
                return bad("entries start inside an entry");
            };
            if held == e {
                continue;
            }
            if held.term >= self.term {
                // Only this term's leader makes entries of its term, and it
                // never changes them: a different one is a lie.
                return bad("an append rewrites an entry of its leader's own term");
            }
            if e.start < self.commit {
                return Err(ConsensusError::CommittedConflict {
                    from,
                    pos: e.start,
                    commit: self.commit,
                });
            }
            self.truncate(e.start);
            first_new = i;
            break;
        }
        if let Some(first) = entries.get(first_new) {
            if first.start != self.log.last_pos() || first.term < self.log.last_term() {
                return bad("entries do not continue the log");
            }
        }
        for e in &entries[first_new..] {
            self.log.append(*e);
        }
        self.matched = self.matched.max(sent_end);
        self.learn_commit(commit);
        self.out.ack = true;
        Ok(())
    }

    /// The leader sent its snapshot at `pos` (an entry of `term` ended
    /// there), as it no longer holds the entries this node needs.
    fn handle_install(
        &mut self,
        from: NodeId,
        pos: u64,
        term: u64,
        commit: u64,
    ) -> Result<(), ConsensusError> {
        let base = self.log.base();
        let holds = self
            .log
            .term_at(pos)
            .is_some_and(|t| t == term || mutation::is(Mutation::InstallIgnoresTerm));
        if pos < base || holds {
            // This log holds the snapshot's last entry, so it matches the
            // leader's up to there (log matching); or it starts from a later
            // snapshot of the committed prefix (a late message). Keep it,
            // and acknowledge what was sent: the leader then appends from
            // `pos`, and what lies below this node's base is skipped.
            self.matched = self.matched.max(pos);
            self.learn_commit(commit);
            self.out.ack = true;
            return Ok(());
        }
        if pos <= self.commit {
            // Up to C this log is the committed one, where the leader says
            // an entry of `term` ends at `pos`: it does not here.
            return Err(ConsensusError::CommittedConflict {
                from,
                pos,
                commit: self.commit,
            });
        }
        // Everything past C may go: nothing there is known committed.
        self.log.install(pos, term);
        self.written = pos;
        self.flushed = pos;
        self.matched = pos;
        self.out.install = Some((pos, term));
        self.out.truncate = None;
        self.out.unsynced_from = pos;
        self.out.noops.clear();
        self.learn_commit(commit);
        self.out.ack = true;
        self.check_caught_up();
        Ok(())
    }

    /// A leader's commit position is an entry boundary of its log. Within
    /// what this node will know matches that log (`matched`, or the end of
    /// `entries` appended after `prev_pos`) it must be one of this node's
    /// boundaries too; beyond, it is clamped to that prefix.
    fn check_commit(
        &self,
        from: NodeId,
        commit: u64,
        matched: u64,
        prev_pos: u64,
        entries: &[Entry],
    ) -> Result<(), ConsensusError> {
        let end = entries.last().map_or(prev_pos, |e| e.end);
        let boundary = if commit >= matched.max(end) {
            true
        } else if commit > prev_pos && commit <= end {
            entries.iter().any(|e| e.end == commit)
        } else {
            // Below the base: inside the snapshot, which nothing can check.
            commit < self.log.base() || self.log.term_at(commit).is_some()
        };
        if boundary {
            Ok(())
        } else {
            Err(ConsensusError::Malformed {
                from,
                reason: "commit position is not an entry boundary",
            })
        }
    }

    /// Removes the log's tail from boundary `pos` on.
    fn truncate(&mut self, pos: u64) {
        assert!(
            pos >= self.commit,
            "truncating committed entries at {pos} (commit {})",
            self.commit
        );
        self.log.truncate(pos);
        self.written = self.written.min(pos);
        self.flushed = self.flushed.min(pos);
        self.matched = self.matched.min(pos);
        self.out.noops.retain(|e| e.start < pos);
        if pos < self.out.unsynced_from {
            // The caller's journal holds bytes past `pos`: it must cut them.
            self.out.truncate = Some(pos);
            self.out.unsynced_from = pos;
        }
    }

    /// The leader says `commit` is committed; we may only believe it for the
    /// prefix we know matches the leader's log.
    fn learn_commit(&mut self, commit: u64) {
        self.commit = self.commit.max(commit.min(self.matched));
    }

    fn on_own_position_change(&mut self) {
        if self.role == Role::Leader {
            self.advance_positions();
        } else {
            self.out.ack = true;
        }
    }

    // ----- the leader --------------------------------------------------

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed = self.heartbeat_elapsed.saturating_add(1);
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        for pr in &mut self.progress {
            pr.idle_ticks = pr.idle_ticks.saturating_add(1);
            pr.silent_ticks = pr.silent_ticks.saturating_add(1);
        }
        if self.election_elapsed >= self.cfg.election_ticks_min {
            self.election_elapsed = 0;
            // Check-quorum: a leader that has not heard from a majority for a
            // whole election timeout may be cut off; stop acting as leader
            // so clients go find the real one.
            let mut heard = [None; VOTERS_MAX];
            for (i, pr) in self.progress.iter_mut().enumerate() {
                heard[i] = (i == self.slot || pr.active).then_some(true);
                pr.active = false;
            }
            if vote_result(&heard[..self.cfg.voters.len()]) != VoteResult::Won {
                self.become_follower(self.term, None);
                return;
            }
            // A transfer that has not happened in a full timeout is abandoned.
            self.transferee = None;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            let commit = self.committed();
            for i in 0..self.cfg.voters.len() {
                if i == self.slot {
                    continue;
                }
                let pr = &mut self.progress[i];
                let (idle, resend) = (pr.idle_ticks, self.cfg.retransmit_ticks);
                // Nothing acknowledged for a while: appends (or their
                // answers) were probably lost. Resend from what we know.
                match pr.state {
                    ProgressState::Replicate if idle >= resend && pr.matched < pr.next => {
                        let from = pr.matched;
                        pr.probe_from(from);
                    }
                    // The probe or its answer was lost: probe again.
                    ProgressState::Probe if idle >= resend && pr.paused => pr.paused = false,
                    // The snapshot was lost, or is still being installed.
                    ProgressState::Snapshot
                        if idle >= self.cfg.snapshot_retransmit_ticks && pr.paused =>
                    {
                        pr.paused = false
                    }
                    _ => {}
                }
                pr.commit_sent = commit;
                let to = self.cfg.voters[i];
                self.send(to, self.term, MessageKind::Heartbeat { commit });
            }
            self.out.replicate = true;
        }
    }

    fn handle_ack(&mut self, s: usize, matched: u64, written: u64, flushed: u64) {
        self.progress[s].on_ack(matched, written, flushed);
        self.advance_positions();
        let from = self.cfg.voters[s];
        if self.transferee == Some(from) && self.ready_to_lead(s) {
            self.send(from, self.term, MessageKind::TimeoutNow);
        }
        self.out.replicate = true;
    }

    fn handle_reject(&mut self, s: usize, rejected: u64, hint_pos: u64, hint_term: u64) {
        let pr = &mut self.progress[s];
        pr.active = true;
        pr.silent_ticks = 0;
        if pr.is_stale_reject(rejected) {
            return;
        }
        // Our largest boundary at or below the follower's hint whose term is
        // at most the hint's: every entry between it and `rejected` is one the
        // follower lacks or holds with another term.
        let log = &self.log;
        let next = match log.last_boundary_at_or_below(hint_pos.min(rejected), hint_term) {
            // A hint that makes no progress (a confused peer): one entry back.
            Some((next, _)) if next >= rejected && rejected > 0 => log
                .last_boundary_at_or_below(rejected - 1, u64::MAX)
                .map(|b| b.0),
            found => found.map(|b| b.0),
        };
        match next {
            Some(next) => pr.probe_from(next.max(pr.flushed)),
            // The agreement point lies below the base: what the follower
            // flushed is still ours to send from, or else the snapshot.
            None if pr.flushed >= log.base() => {
                let from = pr.flushed;
                pr.probe_from(from);
            }
            None => pr.snapshot_at(log.base()),
        }
        self.out.replicate = true;
    }

    /// Sends whatever each follower's progress allows, and the commit
    /// position to followers that have not seen it.
    fn send_appends(&mut self) {
        let commit = self.committed();
        let last = self.log.last_pos();
        let (base, base_term) = (self.log.base(), self.log.base_term());
        for i in 0..self.cfg.voters.len() {
            if i == self.slot {
                continue;
            }
            let to = self.cfg.voters[i];
            loop {
                let pr = &mut self.progress[i];
                if pr.next < base && pr.state != ProgressState::Snapshot {
                    // It needs entries this log no longer holds.
                    pr.snapshot_at(base);
                }
                let can_send = match pr.state {
                    ProgressState::Probe | ProgressState::Snapshot => !pr.paused,
                    ProgressState::Replicate => {
                        pr.next < last && pr.next.saturating_sub(pr.matched) < self.cfg.window_bytes
                    }
                };
                if !can_send {
                    break;
                }
                if pr.state == ProgressState::Snapshot {
                    // The latest snapshot (the base may have moved since).
                    pr.next = base;
                    pr.paused = true;
                    pr.idle_ticks = 0;
                    pr.sent = pr.sent.max(base);
                    pr.commit_sent = commit;
                    let kind = MessageKind::InstallSnapshot {
                        pos: base,
                        snapshot_term: base_term,
                        commit,
                    };
                    let m = self.message(to, self.term, kind);
                    self.out.messages.push(m);
                    break;
                }
                let Some(prev_term) = self.log.term_at(pr.next) else {
                    // Every input that moves `next` is checked to be an
                    // entry boundary, so this is a bug; probing again from
                    // a boundary below is still correct, a crash is not.
                    debug_assert!(false, "next {} is not an entry boundary", pr.next);
                    match self.log.last_boundary_at_or_below(pr.next, u64::MAX) {
                        Some((below, _)) => {
                            pr.flushed = pr.flushed.min(below);
                            pr.probe_from(below);
                        }
                        None => pr.snapshot_at(base),
                    }
                    continue;
                };
                let prev_pos = pr.next;
                let entries = self
                    .log
                    .batch_from(prev_pos, self.cfg.append_bytes_max)
                    .to_vec();
                let end = entries.last().map_or(prev_pos, |e| e.end);
                pr.sent = pr.sent.max(end);
                pr.commit_sent = commit;
                match pr.state {
                    ProgressState::Probe => {
                        pr.paused = true;
                        pr.idle_ticks = 0;
                    }
                    ProgressState::Replicate => pr.next = end,
                    ProgressState::Snapshot => unreachable!("a snapshot was sent above"),
                }
                let probing = pr.state == ProgressState::Probe;
                let kind = MessageKind::Append {
                    prev_pos,
                    prev_term,
                    entries,
                    commit,
                };
                let m = self.message(to, self.term, kind);
                self.out.messages.push(m);
                if probing {
                    break;
                }
            }
            let pr = &mut self.progress[i];
            if pr.commit_sent < commit {
                pr.commit_sent = commit;
                self.send(to, self.term, MessageKind::Heartbeat { commit });
            }
        }
    }

    /// Recomputes R (majority of written) and C (majority of flushed). Both
    /// move only to a position whose entry is of the leader's own term: an
    /// entry of an earlier term on a majority can still be replaced by a
    /// later leader (Raft §5.4.2, figure 8), and commits only as part of a
    /// prefix that ends in the current term.
    fn advance_positions(&mut self) {
        let n = self.cfg.voters.len();
        let (mut written, mut flushed) = ([0u64; VOTERS_MAX], [0u64; VOTERS_MAX]);
        let mut counts = [false; VOTERS_MAX];
        for i in 0..n {
            let pr = &self.progress[i];
            (written[i], flushed[i], counts[i]) = if i == self.slot {
                (self.written, self.flushed, self.may_vote())
            } else if pr.acked_since_link {
                let counts = pr.caught_up || mutation::is(Mutation::VoteBeforeCaughtUp);
                (pr.written, pr.flushed, counts)
            } else {
                // Its link was made again (it may have restarted, perhaps
                // on a new disk) and it has not spoken since: count it when
                // it does, once its incarnation is known to be the same.
                (0, 0, false)
            };
        }
        let counts = &counts[..n];
        let r = majority_position_counting(&written[..n], counts).min(self.written);
        let c = majority_position_counting(&flushed[..n], counts).min(self.written);
        let own_term = |pos| self.log.term_at(pos) == Some(self.term);
        let (c_own, r_own) = (own_term(c), own_term(r));
        let commit_ok = c_own || mutation::is(Mutation::CommitPreviousTerm);
        if c > self.commit && commit_ok {
            self.commit = c;
            self.out.replicate = true;
            if !self.caught_up && c_own {
                // A leader holds every committed entry; this commit is of
                // its own term, so everything committed before is below.
                self.learn_catch_up_at(c);
                self.check_caught_up();
            }
        }
        if r > self.replicated && r_own {
            self.replicated = r;
        }
    }

    // ----- plumbing ----------------------------------------------------

    fn flush_outbox(&mut self) {
        if self.role == Role::Leader {
            if std::mem::take(&mut self.out.replicate) {
                self.send_appends();
            }
        } else {
            self.out.replicate = false;
            if std::mem::take(&mut self.out.ack) {
                if let Some(leader) = self.leader.filter(|l| *l != self.cfg.id) {
                    let matched = self.matched;
                    let written = self.written.min(matched);
                    let flushed = if mutation::is(Mutation::AckUnflushed) {
                        written
                    } else {
                        self.flushed.min(matched)
                    };
                    let caught_up = self.may_vote();
                    self.send(
                        leader,
                        self.term,
                        MessageKind::AppendAck {
                            matched,
                            written,
                            flushed,
                            caught_up,
                        },
                    );
                }
            }
        }
    }

    fn send(&mut self, to: NodeId, term: u64, kind: MessageKind) {
        let m = self.message(to, term, kind);
        self.out.messages.push(m);
    }

    /// A message from this node, with its incarnation, the addressee's as
    /// last heard, and the cluster id.
    fn message(&self, to: NodeId, term: u64, kind: MessageKind) -> Message {
        let to_incarnation = self.slot_of(to).map_or(0, |s| self.incarnations[s]);
        Message {
            from: self.cfg.id,
            to,
            term,
            from_incarnation: self.incarnation,
            to_incarnation,
            cluster_id: self.cluster_id,
            kind,
        }
    }

    fn slot_of(&self, id: NodeId) -> Option<usize> {
        self.cfg.voters.iter().position(|v| *v == id)
    }

    /// Refuses messages that no correct peer sends, before they touch
    /// state, and returns the sender's slot. Two kinds of checks: what no
    /// correct node ever sends (an unknown or own sender, a term or position
    /// beyond the limits, positions out of order, entries that do not follow
    /// `prev_pos`), and what no correct peer sends to *this* node in its
    /// current state (a leader is told of positions it never sent, or that
    /// are not boundaries of its log, which it never changes in its term).
    fn check_message(&self, m: &Message) -> Result<usize, ConsensusError> {
        let bad = |reason| {
            Err(ConsensusError::Malformed {
                from: m.from,
                reason,
            })
        };
        if m.to != self.cfg.id {
            return bad("addressed to another node");
        }
        let Some(s) = self.slot_of(m.from).filter(|s| *s != self.slot) else {
            return bad("sender is not another voter of this group");
        };
        if m.cluster_id != 0 && self.cluster_id != 0 && m.cluster_id != self.cluster_id {
            return Err(ConsensusError::WrongCluster {
                from: m.from,
                theirs: m.cluster_id,
                ours: self.cluster_id,
            });
        }
        if m.from_incarnation != 0 && m.from_incarnation < self.incarnations[s] {
            // From a directory older than one heard from this node id: sent
            // before the disk was replaced and delivered late, or from a
            // stale copy (a restored backup). What it says is void.
            return Err(ConsensusError::StaleIncarnation {
                from: m.from,
                incarnation: m.from_incarnation,
                newest: self.incarnations[s],
            });
        }
        // What no correct node sends, whoever receives it. A term above
        // TERM_MAX, in particular, would strand the group at a term it can
        // never leave.
        if let Err(e) = m.check_fields() {
            return bad(e.reason);
        }
        if m.term != self.term || self.role != Role::Leader {
            return Ok(s);
        }
        // This node leads the message's term: it knows what it sent.
        let pr = &self.progress[s];
        // Below the base nothing can be checked: the log forgot it.
        let boundary = |p: u64| p < self.log.base() || self.log.term_at(p).is_some();
        match &m.kind {
            MessageKind::Append { .. }
            | MessageKind::InstallSnapshot { .. }
            | MessageKind::Heartbeat { .. }
            | MessageKind::TimeoutNow => bad("a second leader in this term"),
            MessageKind::AppendAck {
                matched,
                written,
                flushed,
                ..
            } => {
                if *matched > pr.sent {
                    bad("acknowledged past what the leader sent")
                } else if !(boundary(*matched) && boundary(*written) && boundary(*flushed)) {
                    bad("acknowledged a position that is not an entry boundary")
                } else {
                    Ok(s)
                }
            }
            MessageKind::AppendReject { rejected, .. } => {
                if *rejected > pr.sent {
                    bad("rejected an append the leader never sent")
                } else if !boundary(*rejected) {
                    bad("rejected a position that is not an entry boundary")
                } else {
                    Ok(s)
                }
            }
            _ => Ok(s),
        }
    }
}
