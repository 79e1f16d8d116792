//! The writer: the only thread that mutates the journal tail.
//!
//! It takes produce and create-topic requests from the request ring in
//! batches, validates them without re-encoding, appends them to the journal
//! (assigning offsets), queues one [`Pending`] entry per request for the
//! responder, and publishes W once per batch of requests. What needs no
//! later position (errors, and QoS `received`, which W reaches with the
//! write) it answers itself, straight to the reactor: one thread hand-off
//! less for a client that waits for each answer.

use super::flusher::FlusherEvent;
use super::reader::{ReaderEvent, TopicState};
use super::replica::Replica;
use super::responder::{answered_by_writer, encode_answer, Pending};
use super::retention::Job;
use super::ring::{MessageConsumer, MessageProducer};
use super::shared::{deadline_after, unix_ms, Cut, Idle, Shared, Stage};
use crate::config::{Config, PRODUCE_TIMEOUT_MS_MAX, PRODUCE_TIMEOUT_MS_MIN};
use crate::journal::catalog::SeqCheck;
use crate::journal::error::JournalError;
use crate::journal::log::{check_replicated_batch, Appended, Changed, Journal, Retention};
use crate::journal::offload::Trim;
use crate::journal::snapshot::CatalogSnapshot;
use crate::wire::api::{
    check_topic_name, AlterTopicRequest, CreateTopicRequest, DeleteRecordsRequest, ProduceRequest,
    DELETE_TO_END,
};
use crate::wire::batch::{check_producer_batch_with, BatchError, RecordLimits};
use crate::wire::frame::{RequestHeader, REQUEST_HEADER_LEN};
use crate::wire::replicate::{decode_chunk, decode_message, is_chunk};
use crate::wire::topic_config::{encode_setting, TopicConfig};
use crate::wire::{ApiKey, ErrorCode, Qos};
use ringbuf::traits::{Observer, Producer};
use ringbuf::HeapProd;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests handled between two publications of W; bounds how long the
/// responder waits to see the first of them.
const REQUESTS_PER_ROUND_MAX: usize = 1024;
/// Answers the writer holds for the reactor at most: past this (the
/// reactor's ring full) it takes no more requests until they are out.
const DIRECT_ANSWERS_MAX: usize = 2 * REQUESTS_PER_ROUND_MAX;
/// How long a writer stopping over a fatal error waits for room to send
/// the answers it holds.
const FINISH_GRACE: Duration = Duration::from_secs(2);
/// Timeout of a create-topic request (it waits for QoS `all`).
const CREATE_TOPIC_TIMEOUT_MS: u64 = 30_000;

/// The writer's state and logic, without the thread.
pub struct Writer {
    journal: Journal,
    config: Arc<Config>,
    reader_events: Sender<ReaderEvent>,
    flusher_events: Sender<FlusherEvent>,
    shared: Arc<Shared>,
    /// The consensus node, for a member of a replication group.
    replica: Option<Replica>,
    /// Produce requests waiting for their QoS position, to the responder.
    pending: HeapProd<Pending>,
    /// Requests queued on `pending` so far (see [`Cut::queued_before`]).
    queued: u64,
    /// Requests the writer answers itself ([`answered_by_writer`]), in
    /// the order they came, until they are in `answers`.
    direct: Vec<Pending>,
    /// The writer's completion ring, to the reactor.
    answers: MessageProducer,
    /// Encoding buffer for `answers`.
    scratch: Vec<u8>,
    /// The leader named in `NotLeader` answers: id (0: unknown), address.
    leader: (u64, String),
    /// A fatal error found while applying consensus output.
    fatal: Option<String>,
    /// Retention and indexing ([`Writer::with_janitor`]).
    retention: Option<RetentionClock>,
    /// Where the last catalog snapshot was taken (`None`: none since the
    /// start, and recovery started from none).
    snapshot_at: Option<u64>,
    /// A request that waits for F was queued since the flusher was last
    /// woken.
    flush_wanted: bool,
    /// Records were appended outside of requests (topic retention) since
    /// the last write-out.
    appended_aside: bool,
    /// The snapshot file a leader is sending, as far as it came.
    incoming: Option<Incoming>,
    /// The snapshot whose `InstallSnapshot` message is being stepped.
    installing: Option<CatalogSnapshot>,
    /// A group member's snapshot at a position C has not passed yet.
    group_snapshot: Option<CatalogSnapshot>,
    /// Retention would delete beyond the consensus log's base: compact it.
    compact_for_retention: bool,
}

/// A leader's snapshot file arriving chunk by chunk.
struct Incoming {
    /// Sender, position, term and the file's length.
    key: (u64, u64, u64, u64),
    bytes: Vec<u8>,
}

/// Bytes reserved for an arriving snapshot file at most before its bytes
/// are there (a lying length must not reserve a gigabyte).
const INCOMING_RESERVE_MAX: u64 = 64 << 20;

/// When and how the writer applies retention and hands sealed segments to
/// the indexing stage.
struct RetentionClock {
    /// `None`: no limit, nothing is deleted.
    policy: Option<Retention>,
    every: Duration,
    next: Instant,
    /// A segment was sealed since the last look.
    sealed: bool,
    /// The retention stage, which carries out the decisions and the index
    /// jobs.
    jobs: Sender<Job>,
    /// Its answers to index jobs.
    trims: Receiver<Trim>,
    /// When each topic with retention settings of its own (by id) is
    /// looked at next.
    topic_next: HashMap<u32, Instant>,
    /// Topic retention could not append its last record (logged once).
    topic_failed: bool,
    /// Where the one index job at a time stands.
    indexing: Indexing,
}

/// Whether an index job is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexing {
    /// None: the next look may hand one out.
    Idle,
    /// One is out; its trim has not come back.
    InFlight,
    /// The stage stopped indexing for good.
    Stopped,
}

/// How long a topic's log starts are left alone after a look: a
/// hundredth of its time limit (at most [`TOPIC_PACE_MAX`]), so that a
/// limit that keeps moving costs a record per partition that often and
/// not every check; no pause with a size limit, which moves only when a
/// segment's index is written.
fn topic_pace(ms: Option<u64>, bytes: Option<u64>) -> Duration {
    match (ms, bytes) {
        (Some(ms), None) => Duration::from_millis(ms / 100).min(TOPIC_PACE_MAX),
        _ => Duration::ZERO,
    }
}

/// The longest pause of [`topic_pace`].
const TOPIC_PACE_MAX: Duration = Duration::from_secs(60);

/// One request's outcome: the entry to hand to the responder, if any.
pub type Outcome = Option<Pending>;

impl Writer {
    /// Applies `policy` (if any) every `every` and whenever a segment is
    /// sealed, handing each decision to the retention stage over `jobs`,
    /// with an index job for every sealed segment that became durable; takes
    /// the stage's answers to those from `trims`.
    pub fn with_janitor(
        mut self,
        policy: Option<Retention>,
        every: Duration,
        jobs: Sender<Job>,
        trims: Receiver<Trim>,
    ) -> Writer {
        self.retention = Some(RetentionClock {
            policy,
            every,
            next: Instant::now(),
            sealed: false,
            jobs,
            trims,
            indexing: Indexing::Idle,
            topic_next: HashMap::new(),
            topic_failed: false,
        });
        self
    }

    /// Takes in the indexing stage's trims (the readers get the new index
    /// handles), then applies retention and hands out index jobs when the
    /// interval passed or a segment was sealed since the last look (a few
    /// comparisons per sealed segment and a binary search per partition:
    /// no IO here). Returns how long until the next look, `None` without
    /// the stage.
    pub fn retain(&mut self, now: Instant) -> Option<Duration> {
        let clock = self.retention.as_mut()?;
        let mut changed = Vec::new();
        let mut answered = false;
        while let Ok(trim) = clock.trims.try_recv() {
            clock.indexing = if trim.stopped {
                Indexing::Stopped
            } else {
                Indexing::Idle
            };
            answered = true;
            changed.extend(self.journal.trim(trim));
        }
        changed.sort_unstable();
        changed.dedup();
        for &slot in &changed {
            let indexes = self.journal.catalog().topic(slot).index_handles();
            let _ = self
                .reader_events
                .send(ReaderEvent::Indexes { slot, indexes });
        }
        if !changed.is_empty() {
            // An idle reader would hold the old indexes, and their memory,
            // until its next request.
            self.shared.wake(Stage::Reader);
        }
        let clock = self.retention.as_mut()?;
        let due = now >= clock.next || clock.sealed;
        let flushed = self.shared.positions.flushed.get();
        let mut moved_start = None;
        if due {
            clock.next = now + clock.every;
            clock.sealed = false;
            if let Some(policy) = clock.policy {
                // Below C too: in a replication group a segment above it
                // could still be cut, and its records with it. And below
                // the consensus log's base: what the log still holds, the
                // leader may have to send a follower from the journal.
                let mut settled = flushed.min(self.shared.positions.committed.get());
                if let Some(r) = self.replica.as_ref() {
                    let base = r.node().snapshot().0;
                    // Retention wants more than the base lets it delete:
                    // the log compacts to the next snapshot for it.
                    self.compact_for_retention = self
                        .journal
                        .retention_reach(policy, settled, unix_ms())
                        .is_some_and(|reach| reach > base);
                    settled = settled.min(base);
                }
                if let Some(mut decision) = self.journal.retain(policy, settled, unix_ms()) {
                    if let Some(r) = self.replica.as_ref().filter(|_| decision.state.term == 0) {
                        // The journal knows the term of the batch ending at
                        // its new start unless it was cut into since; the
                        // node does when the start is its log's base.
                        decision.state.term =
                            r.node().term_at(decision.state.position).unwrap_or(0);
                    }
                    moved_start = Some(decision.state.position);
                    if let Some(r) = self.replica.as_ref() {
                        r.segments_changed(super::replicator::SegmentEvent::ForgetBelow(
                            decision.state.position,
                        ));
                    }
                    let _ = clock.jobs.send(Job::Retain(decision));
                }
            }
        }
        if due {
            // Metadata records below F and C can no longer be cut.
            let settled = self.settled();
            self.journal.settle(settled);
            self.topic_retention(now);
        }
        // A snapshot below the journal's start is of no use to the next
        // start: take one at the end.
        if moved_start.is_some_and(|start| self.snapshot_at.is_none_or(|at| at < start)) {
            self.maybe_snapshot(true);
        }
        let clock = self.retention.as_mut()?;
        // One index job at a time: the trim answering it is built from its
        // handles. Only committed segments: a cut never reaches them.
        if (due || answered) && clock.indexing == Indexing::Idle {
            let durable = flushed.min(self.shared.positions.committed.get());
            if let Some(job) = self.journal.index_job(durable) {
                clock.indexing = Indexing::InFlight;
                let _ = clock.jobs.send(Job::Index(job));
            }
        }
        Some(clock.next.saturating_duration_since(now))
    }

    /// Moves the log starts of the topics with retention limits of their
    /// own (and, while such a topic holds segments from time retention,
    /// of those on the broker's time limit), as DeleteRecords records (the
    /// same the API appends), each topic at most as often as
    /// [`topic_pace`] says. In a replication group the leader does it and
    /// the records replicate like any other.
    fn topic_retention(&mut self, now: Instant) {
        let Ok(term) = self.write_term() else {
            return;
        };
        let now_ms = unix_ms();
        let durable = self.settled();
        // While a topic's longer limit keeps segments from time retention,
        // the topics on the broker's limit move their log starts by it.
        let broker_ms = self
            .retention
            .as_ref()
            .and_then(|c| c.policy)
            .and_then(|p| p.ms)
            .filter(|_| self.journal.retention_held());
        for slot in 0..self.journal.catalog().len() {
            let t = self.journal.catalog().topic(slot);
            let (id, config) = (t.meta.id, t.config);
            let ms = config.effective_ms(broker_ms);
            if ms.is_none() && config.bytes_limit().is_none() {
                continue;
            }
            let Some(clock) = self.retention.as_mut() else {
                return;
            };
            if clock.topic_next.get(&id).is_some_and(|&next| now < next) {
                continue;
            }
            clock
                .topic_next
                .insert(id, now + topic_pace(ms, config.bytes_limit()));
            for (partition, before) in self.journal.retention_moves(slot, now_ms, broker_ms) {
                match self
                    .journal
                    .delete_records(slot, partition, before, durable, term, now_ms)
                {
                    Ok(appended) => {
                        self.appended_aside = true;
                        self.announce_roll(&appended);
                        if self.propose(&appended).is_err() {
                            // Taken back out: no longer the leader.
                            return;
                        }
                        let _ = self.reader_events.send(ReaderEvent::Deleted {
                            slot,
                            partition,
                            at: appended.position,
                            below: before,
                        });
                        if let Some(clock) = self.retention.as_mut() {
                            clock.topic_failed = false;
                        }
                    }
                    Err(e) => {
                        if let Some(clock) = self.retention.as_mut() {
                            if !std::mem::replace(&mut clock.topic_failed, true) {
                                crate::log!(
                                    "retention: cannot move the log start of topic {} \
                                     partition {partition}: {e}; trying again later",
                                    self.journal.catalog().topic(slot).meta.name
                                );
                            }
                            // Again at the next check, not a pace later.
                            clock.topic_next.remove(&id);
                        }
                        return;
                    }
                }
            }
        }
    }

    /// A writer appending to `journal`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        journal: Journal,
        config: Arc<Config>,
        reader_events: Sender<ReaderEvent>,
        flusher_events: Sender<FlusherEvent>,
        shared: Arc<Shared>,
        replica: Option<Replica>,
        pending: HeapProd<Pending>,
        answers: MessageProducer,
    ) -> Writer {
        Writer {
            snapshot_at: journal.report().snapshot_position,
            flush_wanted: false,
            appended_aside: false,
            journal,
            config,
            reader_events,
            flusher_events,
            shared,
            replica,
            pending,
            queued: 0,
            direct: Vec::with_capacity(DIRECT_ANSWERS_MAX),
            answers,
            scratch: Vec::with_capacity(256),
            leader: (0, String::new()),
            fatal: None,
            retention: None,
            incoming: None,
            installing: None,
            group_snapshot: None,
            compact_for_retention: false,
        }
    }

    /// Hands the flusher a snapshot of the catalog at the journal's end
    /// (where the next start begins, [`crate::journal::snapshot`]) when
    /// `checkpoint_bytes` were appended since the last one and that one is
    /// durable, or when `force`d (at the stop, and when retention moved the
    /// journal's start past the last one). A group member's snapshot is
    /// handed over only once committed ([`Writer::maybe_group_snapshot`]).
    /// Returns whether it took one. Its cost is a copy of the producer
    /// states, once per `checkpoint_bytes`.
    pub fn maybe_snapshot(&mut self, force: bool) -> bool {
        if self.replica.is_some() {
            return self.maybe_group_snapshot();
        }
        let end = self.journal.end();
        if self.snapshot_at == Some(end) {
            return false;
        }
        let last = self.snapshot_at.unwrap_or(0);
        let due = force
            || (end.saturating_sub(last) >= self.config.checkpoint_bytes
                && last <= self.shared.positions.flushed.get());
        if !due {
            return false;
        }
        let snap = self.journal.catalog().snapshot(end);
        let _ = self
            .flusher_events
            .send(FlusherEvent::Snapshot(Arc::new(snap)));
        self.snapshot_at = Some(end);
        true
    }

    /// A group member's snapshots: taken at the journal's end every
    /// `checkpoint_bytes` as a standalone broker's, with the term of the
    /// batch ending there, but handed to the flusher (which writes the file
    /// once F passes it) only once C passes it, so that the `snapshot` file
    /// always lies at a committed position: a restart may start the
    /// consensus log there, and no cut can reach below it. The consensus
    /// log is then compacted there by [`Replica::maybe_compact`]'s rule.
    /// Returns whether it handed one over.
    fn maybe_group_snapshot(&mut self) -> bool {
        let committed = self.shared.positions.committed.get();
        let mut handed = false;
        if let Some(p) = self.group_snapshot.take() {
            if p.position <= committed {
                self.snapshot_at = Some(p.position);
                let _ = self
                    .flusher_events
                    .send(FlusherEvent::Snapshot(Arc::new(p)));
                handed = true;
            } else {
                self.group_snapshot = Some(p);
            }
        }
        let end = self.journal.end();
        let last = self.snapshot_at.unwrap_or(0);
        if self.group_snapshot.is_none()
            && end.saturating_sub(last) >= self.config.checkpoint_bytes
            && last <= self.shared.positions.flushed.get()
        {
            let Some(r) = self.replica.as_ref() else {
                return handed;
            };
            if let Some(term) = r.node().term_at(end).filter(|t| *t > 0) {
                let mut snap = self.journal.catalog().snapshot(end);
                snap.term = term;
                self.group_snapshot = Some(snap);
            }
        }
        // Segments go only below the log's base: when retention wants more,
        // the log follows the snapshot, and a follower that needs what
        // was deleted is sent it.
        let retains = self.compact_for_retention;
        // Only to a snapshot whose file the flusher wrote: the one a peer
        // that needs it is sent.
        let saved = self
            .shared
            .snapshot_saved
            .load(std::sync::atomic::Ordering::Acquire);
        if let (true, Some(r)) = (saved > 0, self.replica.as_mut()) {
            r.maybe_compact(saved, self.config.consensus_log_entries_max, retains);
        }
        handed
    }

    /// True when another request's entry fits, wherever it goes.
    pub fn has_room(&self) -> bool {
        !self.pending.is_full() && self.direct.len() < DIRECT_ANSWERS_MAX
    }

    /// Hands a request's entry to the responder, or keeps it to answer
    /// itself ([`answered_by_writer`]). Returns false, queuing nothing,
    /// when there is no room (check [`Writer::has_room`] before handling a
    /// request).
    pub fn queue(&mut self, p: Pending) -> bool {
        if answered_by_writer(&p) {
            if self.direct.len() >= DIRECT_ANSWERS_MAX {
                return false;
            }
            self.direct.push(p);
            return true;
        }
        let end = p.end;
        let needs_f = matches!(p.qos, Qos::Flushed | Qos::All);
        if self.pending.try_push(p).is_err() {
            return false;
        }
        if needs_f {
            // The flusher syncs at once for it rather than pacing.
            self.shared
                .flush_wanted
                .fetch_max(end, std::sync::atomic::Ordering::Release);
            self.flush_wanted = true;
        }
        self.queued += 1;
        true
    }

    /// True when answers of its own wait to go out.
    pub fn has_answers(&self) -> bool {
        !self.direct.is_empty()
    }

    /// Answers, in order, the requests of its own whose position W has
    /// reached (all of them after a write) and the errors. Returns how
    /// many went out; stops early when the reactor's ring is full (the
    /// reactor wakes the writer once it has drained it).
    pub fn answer_direct(&mut self) -> usize {
        let leader = self.shared.cluster.leader_id();
        if leader != self.leader.0 {
            self.leader = (leader, self.shared.cluster.addr_of(leader).to_string());
        }
        let w = self.journal.written();
        let mut sent = 0;
        for p in &self.direct {
            if p.error == ErrorCode::None && p.end > w {
                break;
            }
            let leader = (self.leader.0, self.leader.1.as_str());
            if !encode_answer(p, p.error, leader, &mut self.scratch, &mut self.answers) {
                // The reactor wakes this thread once it has drained the
                // ring; woken now, it cannot miss the flag.
                self.shared
                    .completion_ring_full
                    .store(true, std::sync::atomic::Ordering::Release);
                self.shared.wake_reactor();
                break;
            }
            sent += 1;
        }
        self.direct.drain(..sent);
        sent
    }

    /// The thread is stopping over a fatal error: fails with `code` every
    /// answer of its own still waiting for W, and sends them all, waiting
    /// for the reactor to make room for at most `grace`. The reactor keeps
    /// draining until this stage is done.
    pub fn finish_direct(&mut self, code: ErrorCode, grace: Duration) {
        let w = self.journal.written();
        for p in &mut self.direct {
            if p.error == ErrorCode::None && p.end > w {
                p.error = code;
            }
        }
        let until = Instant::now() + grace;
        loop {
            if self.answer_direct() > 0 {
                self.shared.wake_reactor();
            }
            if self.direct.is_empty() || Instant::now() >= until {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
        if !self.direct.is_empty() {
            crate::log!(
                "{} answers could not be sent before the writer stopped",
                self.direct.len()
            );
        }
    }

    /// Hands every appended batch to the kernel and returns the new W.
    ///
    /// # Errors
    /// The write error; W must then stay where it was.
    pub fn write_out(&mut self) -> Result<u64, JournalError> {
        self.journal.write_out()?;
        Ok(self.journal.written())
    }

    /// Handles one request frame from connection `conn`.
    pub fn handle(
        &mut self,
        conn: u64,
        counted: bool,
        frame: &[u8],
        now: Instant,
        now_ms: i64,
    ) -> Outcome {
        let h = RequestHeader::parse(frame);
        let body = &frame[REQUEST_HEADER_LEN..];
        let Some(api) = ApiKey::from_u16(h.api_key) else {
            // The reactor answers unknown APIs itself and routes only
            // Produce, CreateTopic and Replicate here: this is a routing
            // bug, and no answer can carry the frame's unknown key.
            crate::log!(
                "BUG: the writer was handed a frame of unknown API {}",
                h.api_key
            );
            return None;
        };
        let fail = |code| Some(Pending::failed(conn, h.correlation_id, api, code, counted));
        if self.fatal.is_some() {
            // The writer is stopping over a fatal error (reported by `run`
            // after this round); nothing more may be appended. Peers get no
            // answer, as ever.
            if h.api_key == ApiKey::Replicate.as_u16() {
                return None;
            }
            return fail(ErrorCode::StorageError);
        }
        match api {
            ApiKey::Produce => match self.produce(body, now, now_ms) {
                Ok((qos, appended, append_time_ms, deadline)) => {
                    (qos != Qos::None).then_some(Pending {
                        conn,
                        correlation_id: h.correlation_id,
                        api: ApiKey::Produce,
                        qos,
                        end: appended.end,
                        base_offset: appended.base_offset,
                        append_time_ms,
                        deadline,
                        error: ErrorCode::None,
                        counted,
                    })
                }
                Err(code) => fail(code),
            },
            ApiKey::CreateTopic => match self.create_topic(body, h.api_version, now_ms) {
                Ok(appended) => Some(Pending {
                    conn,
                    correlation_id: h.correlation_id,
                    api: ApiKey::CreateTopic,
                    qos: Qos::All,
                    end: appended.end,
                    base_offset: 0,
                    append_time_ms: now_ms,
                    deadline: deadline_after(now, CREATE_TOPIC_TIMEOUT_MS),
                    error: ErrorCode::None,
                    counted,
                }),
                Err(code) => fail(code),
            },
            ApiKey::DeleteRecords => match self.delete_records(body, now_ms) {
                // Answered once durable, as a topic creation is: the record
                // appended, or (nothing to delete) every byte so far, which
                // holds the record that set the log start answered.
                Ok((end, log_start)) => Some(Pending {
                    conn,
                    correlation_id: h.correlation_id,
                    api: ApiKey::DeleteRecords,
                    qos: Qos::All,
                    end,
                    base_offset: log_start,
                    append_time_ms: now_ms,
                    deadline: deadline_after(now, CREATE_TOPIC_TIMEOUT_MS),
                    error: ErrorCode::None,
                    counted,
                }),
                Err(code) => fail(code),
            },
            ApiKey::AlterTopic => match self.alter_topic(body, now_ms) {
                // Answered once durable, as DeleteRecords is; the settings
                // now ride in `base_offset` and `append_time_ms` as the
                // wire writes them.
                Ok((end, config)) => Some(Pending {
                    conn,
                    correlation_id: h.correlation_id,
                    api: ApiKey::AlterTopic,
                    qos: Qos::All,
                    end,
                    base_offset: encode_setting(config.retention_ms),
                    append_time_ms: encode_setting(config.retention_bytes) as i64,
                    deadline: deadline_after(now, CREATE_TOPIC_TIMEOUT_MS),
                    error: ErrorCode::None,
                    counted,
                }),
                Err(code) => fail(code),
            },
            ApiKey::Replicate => {
                self.replicate(body);
                None
            }
            // The reactor routes only these APIs here.
            _ => fail(ErrorCode::Internal),
        }
    }

    /// Every byte below it is durable and committed (F and C): the
    /// DeleteRecords and settings records there are settled, no cut
    /// reaches them.
    fn settled(&self) -> u64 {
        let p = &self.shared.positions;
        p.flushed.get().min(p.committed.get())
    }

    /// The term to stamp into new batches: 0 on a standalone broker, the
    /// current term on a leader; `NotLeader` on any other group member.
    fn write_term(&self) -> Result<u64, ErrorCode> {
        match &self.replica {
            None => Ok(0),
            Some(r) => r.leader_term().ok_or(ErrorCode::NotLeader),
        }
    }

    /// `code`, a refusal that rests on the producer states the journal
    /// holds, once those are final; `Busy` before. A leader that has not
    /// committed in its own term may still see batches of earlier terms cut
    /// from its journal, or committed by a later leader although its journal
    /// lacks them: a gap answer then would make the client renumber a batch
    /// that ends up stored under its old number too (stored twice), and a
    /// fence or a stale answer would be just as unfounded. `Busy` stores
    /// nothing and asks for the same batch again after a backoff, by which
    /// time the leader's first entry is normally committed.
    fn refusal(&self, code: ErrorCode) -> ErrorCode {
        match &self.replica {
            Some(r) if !r.leader_settled() => ErrorCode::Busy,
            _ => code,
        }
    }

    /// Hands a batch just appended at `appended` to the consensus log; if
    /// the node refuses it, takes it back out of the journal.
    fn propose(&mut self, appended: &Appended) -> Result<(), ErrorCode> {
        let Some(r) = self.replica.as_mut() else {
            return Ok(());
        };
        let bytes = appended.end - appended.position;
        match r.propose(appended.position, bytes) {
            Ok(()) => Ok(()),
            Err(why) => {
                crate::log!("proposal refused ({why}); taking the batch back out");
                if let Err(e) = self.truncate(appended.position) {
                    self.fatal
                        .get_or_insert(format!("cannot take back a refused batch: {e}"));
                }
                Err(ErrorCode::NotLeader)
            }
        }
    }

    fn produce(
        &mut self,
        body: &[u8],
        now: Instant,
        now_ms: i64,
    ) -> Result<(Qos, Appended, i64, Instant), ErrorCode> {
        let req = ProduceRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        let term = self.write_term()?;
        let qos = Qos::from_u8(req.qos).ok_or(ErrorCode::InvalidQos)?;
        if !(PRODUCE_TIMEOUT_MS_MIN..=PRODUCE_TIMEOUT_MS_MAX).contains(&req.timeout_ms) {
            return Err(ErrorCode::InvalidTimeout);
        }
        if req.batch.len() > self.config.batch_bytes_max {
            return Err(ErrorCode::BatchTooLarge);
        }
        check_topic_name(req.topic)?;
        let slot = match self.journal.catalog().lookup(req.topic) {
            Some(slot) => slot,
            None if self.config.auto_create_topics => {
                self.add_topic(req.topic, self.config.auto_create_partitions, now_ms)?
                    .1
            }
            None => return Err(ErrorCode::UnknownTopic),
        };
        if req.partition as usize >= self.journal.catalog().topic(slot).partitions.len() {
            return Err(ErrorCode::UnknownPartition);
        }
        let limits = RecordLimits {
            key_bytes_max: self.config.record_key_bytes_max,
            value_bytes_max: self.config.record_value_bytes_max,
        };
        let count = check_producer_batch_with(req.batch, limits).map_err(|e| match e {
            BatchError::Crc => ErrorCode::CorruptBatch,
            BatchError::RecordTooLarge => ErrorCode::RecordTooLarge,
            _ => ErrorCode::InvalidBatch,
        })?;
        let deadline = deadline_after(now, req.timeout_ms as u64);
        // Strict sequences per (producer, partition) (docs/protocol.md
        // §9.1): a batch that does not follow its producer's last one is
        // refused before anything is written, so that a batch refused for a
        // passing reason (StorageFull below, a proposal taken back) is never
        // overtaken by the ones behind it.
        match self
            .journal
            .check_seq(slot, req.partition, req.batch, now_ms)
        {
            SeqCheck::New => {}
            // A retry of a batch that is already stored: answer as the
            // first copy will be answered, once its position is reached.
            SeqCheck::Duplicate(first) => {
                let appended = Appended {
                    position: first.end,
                    end: first.end,
                    base_offset: first.base_offset,
                    rolled: None,
                };
                return Ok((qos, appended, first.append_time_ms, deadline));
            }
            SeqCheck::Stale => return Err(self.refusal(ErrorCode::StaleSequence)),
            SeqCheck::OutOfOrder => return Err(self.refusal(ErrorCode::OutOfOrderSequence)),
            SeqCheck::UnknownProducer => return Err(self.refusal(ErrorCode::UnknownProducer)),
            SeqCheck::Fenced => return Err(self.refusal(ErrorCode::ProducerFenced)),
        }
        let appended = self
            .journal
            .append_data(slot, req.partition, req.batch, count, term, now_ms)
            .map_err(storage_code)?;
        self.announce_roll(&appended);
        self.propose(&appended)?;
        Ok((qos, appended, now_ms, deadline))
    }

    fn create_topic(
        &mut self,
        body: &[u8],
        version: u16,
        now_ms: i64,
    ) -> Result<Appended, ErrorCode> {
        let req = CreateTopicRequest::decode_version(body, version)
            .map_err(|_| ErrorCode::MalformedRequest)?;
        self.write_term()?;
        check_topic_name(req.name)?;
        if req.partitions == 0 || req.partitions > self.config.partitions_per_topic_max {
            return Err(ErrorCode::InvalidPartitions);
        }
        if self.journal.catalog().lookup(req.name).is_some() {
            return Err(ErrorCode::TopicAlreadyExists);
        }
        Ok(self
            .add_topic_with(req.name, req.partitions, req.config, now_ms)?
            .0)
    }

    /// Changes a topic's settings ([`AlterTopicRequest`]): appends the
    /// control record and tells the reader. Returns the journal position
    /// that must be durable before the answer (the record's end, or the
    /// journal's end when nothing changes) and the settings now.
    fn alter_topic(&mut self, body: &[u8], now_ms: i64) -> Result<(u64, TopicConfig), ErrorCode> {
        let req = AlterTopicRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        let term = self.write_term()?;
        check_topic_name(req.topic)?;
        let slot = self
            .journal
            .catalog()
            .lookup(req.topic)
            .ok_or(ErrorCode::UnknownTopic)?;
        let now = self.journal.catalog().topic(slot).config;
        let config = req.change.apply(now);
        if config == now {
            return Ok((self.journal.end(), config));
        }
        let appended = self
            .journal
            .set_topic_config(slot, config, self.settled(), term, now_ms)
            .map_err(storage_code)?;
        self.announce_roll(&appended);
        self.propose(&appended)?;
        let _ = self
            .reader_events
            .send(ReaderEvent::Configured { slot, config });
        // The new limits apply at the next look, not a second later.
        if let Some(clock) = self.retention.as_mut() {
            clock.next = Instant::now();
            clock
                .topic_next
                .remove(&self.journal.catalog().topic(slot).meta.id);
        }
        Ok((appended.end, config))
    }

    /// Deletes a partition's records below an offset
    /// ([`DeleteRecordsRequest`]): appends the control record and tells
    /// the reader, which stops serving them once the record is committed.
    /// Returns the journal position that must be committed before the
    /// answer (the record's end,
    /// or the journal's end when the log start is there already) and the
    /// partition's log start.
    fn delete_records(&mut self, body: &[u8], now_ms: i64) -> Result<(u64, u64), ErrorCode> {
        let req = DeleteRecordsRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        let term = self.write_term()?;
        check_topic_name(req.topic)?;
        let catalog = self.journal.catalog();
        let slot = catalog.lookup(req.topic).ok_or(ErrorCode::UnknownTopic)?;
        let p = catalog
            .topic(slot)
            .partitions
            .get(req.partition as usize)
            .ok_or(ErrorCode::UnknownPartition)?;
        let before = if req.before == DELETE_TO_END {
            p.next_offset
        } else {
            req.before
        };
        if before > p.next_offset {
            // A new leader may not hold yet what an earlier one appended.
            return Err(self.refusal(ErrorCode::InvalidRequest));
        }
        let log_start = p.log_start_at(self.journal.start()).max(p.deleted_below());
        if before <= log_start {
            return Ok((self.journal.end(), log_start));
        }
        let appended = self
            .journal
            .delete_records(slot, req.partition, before, self.settled(), term, now_ms)
            .map_err(storage_code)?;
        self.announce_roll(&appended);
        // A refused proposal takes the record back out (a cut, which the
        // reader learns): the reader hears of the deletion only after.
        self.propose(&appended)?;
        let _ = self.reader_events.send(ReaderEvent::Deleted {
            slot,
            partition: req.partition,
            at: appended.position,
            below: before,
        });
        Ok((appended.end, before))
    }

    fn add_topic(
        &mut self,
        name: &str,
        partitions: u32,
        now_ms: i64,
    ) -> Result<(Appended, usize), ErrorCode> {
        self.add_topic_with(name, partitions, TopicConfig::default(), now_ms)
    }

    fn add_topic_with(
        &mut self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        now_ms: i64,
    ) -> Result<(Appended, usize), ErrorCode> {
        let catalog = self.journal.catalog();
        if catalog.len() >= self.config.topics_max
            || catalog.partition_count() + partitions as usize > self.config.partitions_max
        {
            return Err(ErrorCode::TooManyTopics);
        }
        let term = self.write_term()?;
        let (appended, slot) = self
            .journal
            .create_topic_with(name, partitions, config, term, now_ms)
            .map_err(storage_code)?;
        self.announce_roll(&appended);
        self.announce_topic(slot, appended.end);
        self.propose(&appended)?;
        Ok((appended, slot))
    }

    /// Tells the reader and the flusher about the topic in `slot`, whose
    /// control record ends at `end`.
    fn announce_topic(&self, slot: usize, end: u64) {
        let topic = self.journal.catalog().topic(slot);
        // The receivers live as long as the broker; a send fails only
        // during teardown, when nobody needs the event any more.
        let _ = self.reader_events.send(ReaderEvent::Topic {
            meta: topic.meta.clone(),
            config: topic.config,
            indexes: topic.index_handles(),
        });
        let _ = self.flusher_events.send(FlusherEvent::Topic {
            meta: topic.meta.clone(),
            end,
        });
    }

    /// Takes one consensus message from a peer (API Replicate). An append
    /// is checked batch by batch before the node sees it, so a damaged one
    /// is dropped whole (the leader sends it again) instead of being half
    /// accepted.
    fn replicate(&mut self, body: &[u8]) {
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if is_chunk(body) {
            self.take_chunk(body);
            return;
        }
        let (m, payload) = match decode_message(body) {
            Ok(x) => x,
            Err(e) => {
                crate::log!("dropping a malformed replication message: {e}");
                return;
            }
        };
        let me = r.node().id();
        if m.to != me || !self.config.peers.iter().any(|p| p.id == m.from) || m.from == me {
            crate::log!(
                "dropping a replication message from node {} to node {} (this is node {me})",
                m.from,
                m.to
            );
            return;
        }
        if let crate::consensus::MessageKind::InstallSnapshot {
            pos, snapshot_term, ..
        } = m.kind
        {
            if !self.ready_to_install(m.from, pos, snapshot_term) {
                return;
            }
        }
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        let mut from = 0;
        if let crate::consensus::MessageKind::Append {
            prev_pos, entries, ..
        } = &m.kind
        {
            from = *prev_pos;
            for e in entries {
                let bytes = &payload[(e.start - prev_pos) as usize..(e.end - prev_pos) as usize];
                if let Err(why) = check_replicated_batch(bytes, e.term) {
                    crate::log!(
                        "dropping an append from node {}: batch at {} is damaged: {why}",
                        m.from,
                        e.start
                    );
                    return;
                }
            }
        }
        r.step(m);
        self.apply_ready(from, payload);
    }

    /// Takes one chunk of a snapshot file a leader is sending (Replicate
    /// kind 12): chunks come in order on one connection; one that does not
    /// continue the file being received starts a new one (offset 0) or is
    /// dropped, and the leader sends the whole file again when it sends
    /// the snapshot again.
    fn take_chunk(&mut self, body: &[u8]) {
        let Some(r) = self.replica.as_ref() else {
            return;
        };
        let c = match decode_chunk(body) {
            Ok(c) => c,
            Err(e) => {
                crate::log!("dropping a malformed snapshot chunk: {e}");
                return;
            }
        };
        let me = r.node().id();
        let ours = r.node().cluster_id();
        if c.term < r.node().term() {
            // From a leader of an earlier term: stale, and it must not
            // spoil a transfer of the current leader's.
            return;
        }
        if c.to != me
            || c.from == me
            || !self.config.peers.iter().any(|p| p.id == c.from)
            || (ours != 0 && c.cluster_id != 0 && c.cluster_id != ours)
        {
            crate::log!(
                "dropping a snapshot chunk from node {} to node {} (this is node {me})",
                c.from,
                c.to
            );
            return;
        }
        let key = (c.from, c.pos, c.snapshot_term, c.total_len);
        match self.incoming.as_mut() {
            Some(inc) if inc.key == key && inc.bytes.len() as u64 == c.offset => {
                inc.bytes.extend_from_slice(c.bytes);
            }
            _ if c.offset == 0 => {
                let mut bytes = Vec::with_capacity(c.total_len.min(INCOMING_RESERVE_MAX) as usize);
                bytes.extend_from_slice(c.bytes);
                self.incoming = Some(Incoming { key, bytes });
            }
            _ => self.incoming = None,
        }
    }

    /// Whether the `InstallSnapshot` message from `from` for `pos` and
    /// `term` may be stepped: the node keeps its log when it holds the
    /// snapshot's last entry (or a later snapshot); otherwise it drops its
    /// journal for the snapshot, whose file must have come whole before
    /// the message and say what the message says. If not, the message is
    /// dropped (the leader sends the snapshot again).
    fn ready_to_install(&mut self, from: u64, pos: u64, term: u64) -> bool {
        let Some(r) = self.replica.as_ref() else {
            return false;
        };
        let node = r.node();
        if pos < node.snapshot().0 || node.term_at(pos) == Some(term) {
            // Not needed: the node keeps its log.
            self.incoming = None;
            return true;
        }
        let file = match self.incoming.take() {
            Some(inc) if (inc.key.0, inc.key.1, inc.key.2) == (from, pos, term) => inc,
            _ => {
                crate::log!(
                    "dropping node {from}'s snapshot at {pos}: its file did not come whole \
                     before it"
                );
                return false;
            }
        };
        if file.bytes.len() as u64 != file.key.3 {
            crate::log!("dropping node {from}'s snapshot at {pos}: its file came in part");
            return false;
        }
        match crate::journal::snapshot::decode_file(&file.bytes) {
            Ok(snap) if (snap.position, snap.term) == (pos, term) => {
                self.installing = Some(snap);
                true
            }
            Ok(snap) => {
                crate::log!(
                    "dropping node {from}'s snapshot at {pos} (term {term}): its file is at {} \
                     (term {})",
                    snap.position,
                    snap.term
                );
                false
            }
            Err(e) => {
                crate::log!("dropping node {from}'s snapshot at {pos}: {e}");
                false
            }
        }
    }

    /// The node dropped its log for the leader's snapshot at `pos`: the
    /// journal follows, on disk (crash-safe, `Journal::install`), and the
    /// broker restarts in place (the same process id, arguments and
    /// output), so that every stage starts from the installed journal as
    /// recovery finds it, with nothing of the old one in memory.
    fn install(&mut self, pos: u64, term: u64) -> Result<(), String> {
        let snap = self
            .installing
            .take()
            .filter(|s| (s.position, s.term) == (pos, term))
            .ok_or_else(|| format!("the snapshot at {pos} to install is not here"))?;
        crate::log!(
            "installing the leader's snapshot at {pos} (term {term}): this member's journal \
             held nothing the group still replicates from; its data below {pos} is gone"
        );
        // No start state, deletion, checkpoint or snapshot of the other
        // stages may land after the install's: the retention stage stops,
        // and the flusher's generation moves on with the gate held until
        // the process is replaced.
        if let Some(clock) = &self.retention {
            let (done, stopped) = std::sync::mpsc::sync_channel(1);
            if clock.jobs.send(Job::Stop(done)).is_ok()
                && stopped.recv_timeout(Duration::from_secs(30)).is_err()
            {
                return Err("the retention stage did not stop for the snapshot install".into());
            }
        }
        let shared = self.shared.clone();
        let mut gate = shared.lock_flush_gate();
        *gate += 1;
        self.journal
            .install_files(&snap)
            .map_err(|e| format!("cannot install the snapshot at {pos}: {e}"))?;
        let why =
            super::restart_in_place(&format!("continuing from the snapshot installed at {pos}"));
        drop(gate);
        Err(why)
    }

    /// Runs the consensus clock and applies whatever the node has to say.
    /// Returns how long the thread may sleep before the next tick.
    pub fn pulse(&mut self, now: Instant) -> Option<Duration> {
        let r = self.replica.as_mut()?;
        r.report_written(self.journal.written());
        let wait = r.pulse(&self.shared, now);
        self.apply_ready(0, &[]);
        self.settle_cluster_id();
        Some(wait)
    }

    /// The group's id: the first leader of a new group writes it into the
    /// journal after its no-op; every member hands it to its node once the
    /// record is committed (an uncommitted one may still be cut and
    /// replaced by another leader's).
    fn settle_cluster_id(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        match self.journal.catalog().cluster_id_record() {
            Some((id, position)) => {
                if position < self.shared.positions.committed.get() {
                    r.set_cluster_id(id);
                }
            }
            None => {
                let Some(term) = r.leader_term() else {
                    return;
                };
                // After this term's no-op: a leader's first entry is its no-op.
                if r.node().log().last().is_none_or(|e| e.term != term) {
                    return;
                }
                // Random and non-zero (0 means "not known yet").
                let id = crate::journal::hardstate::random_bits().max(1);
                match self.journal.append_cluster_id(id, term, unix_ms()) {
                    Ok(appended) => {
                        crate::log!("writing the group's cluster id {id:#018x}");
                        self.announce_roll(&appended);
                        // A refused proposal takes the record back out.
                        let _ = self.propose(&appended);
                    }
                    // Tried again at the next pulse.
                    Err(e) => crate::log!("cannot write the group's cluster id yet: {e}"),
                }
            }
        }
    }

    /// Applies the node's `Ready`, in the order the consensus contract
    /// demands: hard state, truncation, entries, then messages and
    /// positions. `payload` holds the journal bytes from position `from`
    /// of the append just stepped (empty otherwise).
    fn apply_ready(&mut self, from: u64, payload: &[u8]) {
        // After a fatal error a `Ready` was left unapplied (and unadvanced):
        // the node must not be asked again; the thread is stopping.
        if self.fatal.is_some() {
            return;
        }
        loop {
            let Some(r) = self.replica.as_mut() else {
                return;
            };
            let Some(rd) = r.ready() else {
                return;
            };
            if let Err(e) = r.persist(&rd) {
                self.fatal
                    .get_or_insert(format!("cannot persist the term and vote: {e}"));
                return;
            }
            if let Some((pos, term)) = rd.install {
                // Returns only when it cannot go on.
                if let Err(why) = self.install(pos, term) {
                    self.fatal.get_or_insert(why);
                }
                return;
            }
            if let Some(at) = rd.truncate {
                if let Err(e) = self.truncate(at) {
                    self.fatal
                        .get_or_insert(format!("cannot truncate the journal at {at}: {e}"));
                    return;
                }
            }
            for e in &rd.entries {
                if e.end <= self.journal.end() {
                    // This node's own proposal, appended when it was made.
                    continue;
                }
                if let Err(why) = self.append_entry(e, rd.noops.contains(e), from, payload) {
                    self.fatal.get_or_insert(why);
                    return;
                }
            }
            // Appends read their bytes from the file: write the cache out
            // before any message leaves.
            if self.journal.written() < self.journal.end() {
                match self.write_out() {
                    Ok(w) => self.shared.positions.written.publish(w),
                    Err(e) => {
                        self.fatal
                            .get_or_insert(format!("journal write failed: {e}"));
                        return;
                    }
                }
                self.shared.wake(Stage::Flusher);
            }
            let r = self.replica.as_mut().expect("checked above");
            r.report_written(self.journal.written());
            r.publish(rd, &self.shared);
        }
    }

    /// Appends one entry a `Ready` asks for: the leader's no-op, or a batch
    /// received from the leader (its bytes at `e.start - from` in `payload`).
    fn append_entry(
        &mut self,
        e: &crate::consensus::Entry,
        noop: bool,
        from: u64,
        payload: &[u8],
    ) -> Result<(), String> {
        if e.start != self.journal.end() {
            return Err(format!(
                "entry [{}, {}) does not continue the journal, which ends at {}",
                e.start,
                e.end,
                self.journal.end()
            ));
        }
        if noop {
            let appended = self
                .journal
                .append_noop(e.term, super::shared::unix_ms())
                .map_err(|err| format!("cannot append the leader's no-op: {err}"))?;
            self.announce_roll(&appended);
            return Ok(());
        }
        let lo = e.start.checked_sub(from).map(|x| x as usize);
        let hi = e.end.checked_sub(from).map(|x| x as usize);
        let bytes = match (lo, hi) {
            (Some(lo), Some(hi)) if hi <= payload.len() => &payload[lo..hi],
            _ => {
                return Err(format!(
                    "entry [{}, {}) to append but its bytes did not come with it",
                    e.start, e.end
                ))
            }
        };
        let crate::journal::log::Replicated {
            appended,
            created,
            changed,
        } = self
            .journal
            .append_replicated(bytes)
            .map_err(|err| format!("cannot append a replicated batch at {}: {err}", e.start))?;
        self.announce_roll(&appended);
        if let Some(slot) = created {
            self.announce_topic(slot, appended.end);
        }
        match changed {
            Some(Changed::Deleted {
                slot,
                partition,
                below,
            }) => {
                let _ = self.reader_events.send(ReaderEvent::Deleted {
                    slot,
                    partition,
                    at: appended.position,
                    below,
                });
            }
            Some(Changed::Configured { slot, config }) => {
                let _ = self
                    .reader_events
                    .send(ReaderEvent::Configured { slot, config });
            }
            None => {}
        }
        Ok(())
    }

    /// Cuts the journal at `at`: tells the responder first (every request
    /// queued so far whose batch ends above `at` fails), then, holding the
    /// flush gate, lowers W, F and R, cuts the files, the catalog and the
    /// checkpoint and tells the flusher; then the replicator and the reader.
    /// Nothing here waits for another stage beyond the gate's lock.
    fn truncate(&mut self, at: u64) -> Result<(), JournalError> {
        let shared = self.shared.clone();
        crate::log!(
            "truncating the journal from {} to {at} (a divergent tail from an old leader)",
            self.journal.end()
        );
        // A cut the journal would refuse must change nothing, not even the
        // positions or the cut log.
        self.journal.check_cut(at)?;
        // Before any position can pass `at` again (see `Responder::round`).
        shared.cuts.record(Cut {
            at,
            queued_before: self.queued,
        });
        // Its own answers wait on this thread: a batch the cut removes was
        // not written (its answer has not gone out, it goes out after the
        // next write).
        for p in &mut self.direct {
            if p.error == ErrorCode::None && p.end > at {
                p.error = ErrorCode::NotLeader;
            }
        }
        let cut = {
            let mut gate = shared.lock_flush_gate();
            *gate += 1;
            shared.lower_positions_to(&gate, at);
            let p = &shared.positions;
            let cut = self.journal.truncate(at, p.flushed.get())?;
            let catalog = self.journal.catalog();
            let _ = self.flusher_events.send(FlusherEvent::Reset {
                generation: *gate,
                at,
                files: cut.files.clone(),
                topics: catalog
                    .topics()
                    .iter()
                    .map(|t| (t.meta.clone(), t.created_at))
                    .collect(),
                next_topic_id: catalog.next_topic_id(),
            });
            // The cut wrote the cache out first: the file now ends at `at`.
            p.written.set(self.journal.written());
            cut
        };
        shared.wake(Stage::Flusher);
        // A snapshot waiting for C describes batches that are gone.
        self.group_snapshot = self.group_snapshot.take().filter(|s| s.position <= at);
        if let Some(r) = &self.replica {
            r.segments_changed(super::replicator::SegmentEvent::Reset(cut.files.clone()));
        }
        let topics = self
            .journal
            .catalog()
            .topics()
            .iter()
            .map(|t| TopicState {
                meta: t.meta.clone(),
                config: t.config,
                indexes: t.index_handles(),
                deletions: t.partitions.iter().map(|p| p.deletions.clone()).collect(),
            })
            .collect();
        let _ = self.reader_events.send(ReaderEvent::Reset {
            topics,
            segments: cut.files,
        });
        shared.wake(Stage::Reader);
        if let Some(r) = self.replica.as_mut() {
            r.truncated(at);
        }
        shared.wake(Stage::Responder);
        Ok(())
    }

    /// Graceful shutdown of a leader: hands leadership to the follower that
    /// holds the most of the log. When it holds everything (the usual case:
    /// it acknowledged the last batches as they were written) it is told to
    /// campaign at once, so the group has a new leader within a round trip
    /// instead of an election timeout; otherwise the others elect one as
    /// after a crash.
    pub fn hand_over(&mut self) {
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        if let Some(to) = r.best_transfer_target() {
            crate::log!("shutting down: handing leadership to node {to}");
            r.transfer_leader(to);
            self.apply_ready(0, &[]);
        }
    }

    /// The fatal error found while applying consensus output, if any.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    fn announce_roll(&mut self, appended: &Appended) {
        if let Some(file) = &appended.rolled {
            if let Some(clock) = self.retention.as_mut() {
                clock.sealed = true;
            }
            if let Some(r) = &self.replica {
                r.segments_changed(super::replicator::SegmentEvent::Segment(file.clone()));
            }
            let _ = self
                .flusher_events
                .send(FlusherEvent::Segment(file.clone()));
            let _ = self.reader_events.send(ReaderEvent::Segment(file.clone()));
        }
    }
}

fn storage_code(e: JournalError) -> ErrorCode {
    match e {
        JournalError::StorageFull(_) => ErrorCode::StorageFull,
        other => {
            crate::log!("journal append failed: {other}");
            ErrorCode::StorageError
        }
    }
}

/// The writer thread: drains the request ring in rounds, publishes W after
/// each round and wakes the stages downstream.
pub fn run(
    shared: Arc<Shared>,
    mut writer: Writer,
    mut requests: MessageConsumer,
    mut peers: MessageConsumer,
) {
    shared.register(Stage::Writer);
    let mut idle = Idle::new();
    loop {
        let now = Instant::now();
        let now_ms = unix_ms();
        let mut handled = 0;
        let queued_before = writer.queued;
        // Answers held over from a round whose ring was full go first: they
        // make room for this round's requests (`has_room`).
        let mut answered = 0;
        if writer.has_answers() {
            answered = writer.answer_direct();
        }
        // Peers first: their acknowledgements move R and C, which is what
        // lets the responder take more waiting requests off the pending ring.
        while handled < REQUESTS_PER_ROUND_MAX {
            let Some(m) = peers.peek() else { break };
            let outcome = writer.handle(m.conn, false, m.payload, now, now_ms);
            debug_assert!(outcome.is_none(), "peer messages are never answered");
            peers.pop();
            handled += 1;
        }
        while handled < REQUESTS_PER_ROUND_MAX && writer.has_room() {
            let Some(m) = requests.peek() else { break };
            let counted = m.flags & super::ring::FLAG_COUNTED != 0;
            if let Some(p) = writer.handle(m.conn, counted, m.payload, now, now_ms) {
                // Room was checked above, and one request yields at most
                // one entry (cuts travel apart, in the cut log).
                let pushed = writer.queue(p);
                debug_assert!(pushed);
            }
            requests.pop();
            handled += 1;
        }
        let next_tick = match (writer.pulse(now), writer.retain(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        writer.maybe_snapshot(false);
        // Retention may have appended records of its own: they go out with
        // the round's.
        let wrote = handled > 0 || std::mem::take(&mut writer.appended_aside);
        if let Some(why) = writer.take_fatal() {
            writer.finish_direct(ErrorCode::StorageError, FINISH_GRACE);
            shared.fail(why);
            shared.mark_done(Stage::Writer);
            return;
        }
        if wrote {
            match writer.write_out() {
                Ok(w) => shared.positions.written.publish(w),
                Err(e) => {
                    // Requests of this round hold offsets whose bytes did not
                    // reach the file: the ones waiting here fail, the others
                    // time out, and the broker stops rather than hand out
                    // those offsets again.
                    writer.finish_direct(ErrorCode::StorageError, FINISH_GRACE);
                    shared.fail(format!("journal write failed: {e}"));
                    shared.mark_done(Stage::Writer);
                    return;
                }
            }
        }
        // Its own answers first: nothing else stands between them and the
        // client (QoS `received`: W was just published).
        if writer.has_answers() {
            answered += writer.answer_direct();
        }
        if answered > 0 {
            shared.wake_reactor();
        }
        if wrote {
            if writer.queued != queued_before {
                shared.wake(Stage::Responder);
            }
            // A flusher holding a sync back wakes at its deadline by
            // itself; a request waiting for F must not wait for that.
            if std::mem::take(&mut writer.flush_wanted)
                || !shared
                    .flusher_holding
                    .load(std::sync::atomic::Ordering::Acquire)
            {
                shared.wake(Stage::Flusher);
            }
            shared.wake(Stage::Replicator);
            if shared
                .request_ring_full
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                shared.wake_reactor();
            }
            idle.busy();
            continue;
        }
        if answered > 0 {
            idle.busy();
            continue;
        }
        if shared
            .reactor_drained
            .load(std::sync::atomic::Ordering::Acquire)
            && requests.is_empty()
            && peers.is_empty()
            && !writer.has_answers()
        {
            writer.hand_over();
            // Sent before the writer says it is done: the flusher's last
            // checkpoint saves it, and the next start reads nothing.
            writer.maybe_snapshot(true);
            shared.mark_done(Stage::Writer);
            return;
        }
        idle.wait(next_tick.map_or(Duration::from_millis(100), |t| {
            t.min(Duration::from_millis(100))
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::shared::ClusterView;
    use crate::wire::frame::finish_frame;
    use ringbuf::traits::Split;
    use ringbuf::HeapRb;

    /// A standalone broker's writer over a fresh journal in `dir`.
    fn writer(dir: &std::path::Path) -> Writer {
        writer_and_rings(dir).0
    }

    /// [`writer`], with the responder's end of its pending ring and the
    /// reactor's end of its own answers.
    fn writer_and_rings(
        dir: &std::path::Path,
    ) -> (Writer, ringbuf::HeapCons<Pending>, MessageConsumer) {
        let (w, rx, answers, _poll) = writer_with_poll(dir, 1 << 16);
        (w, rx, answers)
    }

    /// [`writer_and_rings`] with an answer ring of `answer_ring_bytes`, and
    /// the reactor's poll (its waker is the one in `Shared`).
    fn writer_with_poll(
        dir: &std::path::Path,
        answer_ring_bytes: usize,
    ) -> (
        Writer,
        ringbuf::HeapCons<Pending>,
        MessageConsumer,
        mio::Poll,
    ) {
        let config = Config {
            data_dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            write_cache_bytes: 1 << 20,
            batch_bytes_max: 64 << 10,
            ..Config::default()
        };
        let journal = Journal::open(dir, config.segment_bytes, config.write_cache_bytes).unwrap();
        let (poll, shared) = Shared::for_tests(journal.end());
        let (pending, pending_rx) = HeapRb::new(16).split();
        let (answers, answers_rx) = crate::broker::ring::message_ring(answer_ring_bytes);
        let w = Writer::new(
            journal,
            Arc::new(config),
            std::sync::mpsc::channel().0,
            std::sync::mpsc::channel().0,
            shared,
            None,
            pending,
            answers,
        );
        (w, pending_rx, answers_rx, poll)
    }

    /// The writer of a one-member replication group (node 1) over a fresh
    /// journal in `dir`: it elects itself within a few ticks, and commits
    /// what the test says is flushed.
    fn group_writer(dir: &std::path::Path) -> Writer {
        let config = Config {
            data_dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            write_cache_bytes: 1 << 20,
            batch_bytes_max: 64 << 10,
            node_id: 1,
            peers: vec![crate::config::Peer {
                id: 1,
                addr: "127.0.0.1:1".into(),
            }],
            ..Config::default()
        };
        let mut journal = Journal::open_with(
            dir,
            config.segment_bytes,
            config.write_cache_bytes,
            crate::journal::log::Recovery::default(),
        )
        .unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let shared = Arc::new(Shared::new(
            journal.end(),
            waker,
            ClusterView::new(1, vec![(1, "127.0.0.1:1".into())]),
        ));
        let (outbox, outbox_rx) = HeapRb::new(64).split();
        std::mem::forget(outbox_rx);
        let replica = crate::broker::replica::Replica::new(
            &config,
            journal.consensus_base(),
            journal.take_entries(),
            crate::journal::control::NOOP_BATCH_BYTES as u64,
            outbox,
            std::sync::mpsc::channel().0,
            false,
        )
        .unwrap();
        let (pending, pending_rx) = HeapRb::new(16).split();
        std::mem::forget(pending_rx);
        let (answers, answers_rx) = crate::broker::ring::message_ring(1 << 16);
        std::mem::forget(answers_rx);
        Writer::new(
            journal,
            Arc::new(config),
            std::sync::mpsc::channel().0,
            std::sync::mpsc::channel().0,
            shared,
            Some(replica),
            pending,
            answers,
        )
    }

    fn frame(api_key: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        RequestHeader {
            api_key,
            api_version: 1,
            correlation_id: 7,
            flags: 0,
        }
        .write(&mut f);
        f.extend_from_slice(body);
        finish_frame(&mut f, 0);
        f
    }

    /// The reactor answers unknown APIs itself; should a frame of one ever
    /// reach the writer (a routing bug), it must not be answered as if it
    /// were a Produce, under another API's key.
    #[test]
    fn a_frame_of_an_unknown_api_is_not_answered_as_a_produce() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let outcome = w.handle(1, true, &frame(999, b""), Instant::now(), 0);
        assert!(
            outcome.is_none(),
            "no Produce answer for API 999: {outcome:?}"
        );
        // A known API's failure keeps its own key.
        let create = w.handle(
            1,
            true,
            &create_topic_frame("no/slashes"),
            Instant::now(),
            0,
        );
        let create = create.expect("a failed create is answered");
        assert_eq!(
            (create.api, create.error),
            (ApiKey::CreateTopic, ErrorCode::InvalidTopicName)
        );
    }

    /// A CreateTopic of `name` with one partition.
    fn create_topic_frame(name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        CreateTopicRequest {
            config: Default::default(),
            name,
            partitions: 1,
        }
        .encode(&mut body);
        frame(ApiKey::CreateTopic.as_u16(), &body)
    }

    fn produce_frame(topic: &str, qos: Qos) -> Vec<u8> {
        producer_frame(topic, qos, 0, 0)
    }

    /// A Produce of one 100-byte record to partition 0 of `topic`, stamped
    /// with `producer` (0: none) and `seq`.
    fn producer_frame(topic: &str, qos: Qos, producer: u64, seq: u64) -> Vec<u8> {
        let mut b = crate::wire::batch::BatchBuilder::new();
        b.push(0, b"", &[7u8; 100], &[]);
        let mut body = Vec::new();
        ProduceRequest {
            topic,
            partition: 0,
            qos: qos as u8,
            timeout_ms: 30_000,
            batch: b.finish(producer, seq),
        }
        .encode(&mut body);
        frame(ApiKey::Produce.as_u16(), &body)
    }

    /// Every answer waiting in `ring`: (correlation id, API, error code,
    /// envelope flags), in order.
    fn take_answers(ring: &mut MessageConsumer) -> Vec<(u32, u16, u16, u32)> {
        let mut answers = Vec::new();
        while let Some(m) = ring.peek() {
            let h = crate::wire::frame::ResponseHeader::parse(m.payload);
            answers.push((h.correlation_id, h.api_key, h.error_code, m.flags));
            ring.pop();
        }
        answers
    }

    /// Review of the cut protocol: `Writer::truncate` records the cut with
    /// the number of requests queued before it and lowers the positions;
    /// the responder then fails exactly the queued requests whose batches
    /// it removed, and so does the writer for the ones it answers itself
    /// (QoS `received`). A cut the journal refuses changes nothing at all.
    #[test]
    fn a_cut_fails_exactly_the_queued_requests_above_it() {
        use crate::broker::responder::Responder;
        use crate::broker::ring::message_ring;
        for qos in [Qos::Received, Qos::Flushed] {
            let dir = tempfile::tempdir().unwrap();
            let (mut w, mut rx, mut direct) = writer_and_rings(dir.path());
            let shared = w.shared.clone();
            let now = Instant::now();
            let mut ends = Vec::new();
            let create = w.handle(1, true, &create_topic_frame("t"), now, 0);
            assert!(w.queue(create.expect("created")));
            for _ in 0..3 {
                let p = w
                    .handle(1, true, &produce_frame("t", qos), now, 0)
                    .expect("a produce is answered");
                assert_eq!(p.error, ErrorCode::None);
                ends.push(p.end);
                assert!(w.queue(p));
            }
            let written = w.write_out().unwrap();
            shared.positions.written.publish(written);
            // Not a batch boundary: refused, and nothing moved.
            assert!(w.truncate(ends[1] - 1).is_err());
            assert_eq!(shared.positions.written.get(), written);
            let mut none = Vec::new();
            assert!(!shared.cuts.take_new(&mut 0, &mut none), "no cut recorded");
            // The third batch goes.
            w.truncate(ends[1]).unwrap();
            assert_eq!(shared.positions.written.get(), ends[1]);
            assert_eq!(shared.positions.flushed.get(), 0);
            // The flusher syncs what is left.
            shared.positions.flushed.set(ends[1]);
            w.answer_direct();
            let mut r = Responder::new(16);
            let (mut out, mut inp) = message_ring(1 << 16);
            r.round(&shared, &mut rx, &mut out, Instant::now());
            let mut answers: Vec<(u16, u16)> = [&mut inp, &mut direct]
                .into_iter()
                .flat_map(take_answers)
                .map(|(_, api, code, _)| (api, code))
                .collect();
            let produce = ApiKey::Produce.as_u16();
            answers.sort_unstable();
            assert_eq!(
                answers,
                vec![
                    (produce, 0),
                    (produce, 0),
                    (produce, ErrorCode::NotLeader.as_u16())
                ],
                "{qos:?}: the create waits for C; the third produce's batch was cut"
            );
        }
    }

    /// Snapshots by bytes once the last one is durable, and at the stop.
    #[test]
    fn a_standalone_writer_snapshots_its_catalog_by_bytes_and_at_its_stop() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            segment_bytes: 1 << 20,
            write_cache_bytes: 1 << 20,
            batch_bytes_max: 64 << 10,
            checkpoint_bytes: 1,
            ..Config::default()
        };
        let journal = Journal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let (_poll, shared) = Shared::for_tests(journal.end());
        let (flusher_tx, flusher_rx) = std::sync::mpsc::channel();
        let mut w = Writer::new(
            journal,
            Arc::new(config),
            std::sync::mpsc::channel().0,
            flusher_tx,
            shared.clone(),
            None,
            HeapRb::new(16).split().0,
            crate::broker::ring::message_ring(1 << 16).0,
        );
        let snapshots = || -> Vec<u64> {
            flusher_rx
                .try_iter()
                .filter_map(|e| match e {
                    FlusherEvent::Snapshot(s) => Some(s.position),
                    _ => None,
                })
                .collect()
        };
        let now = Instant::now();
        assert!(!w.maybe_snapshot(false), "nothing appended");
        let _ = w.handle(1, true, &create_topic_frame("t"), now, 0);
        let _ = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
        assert!(w.maybe_snapshot(false), "the bytes");
        let first = w.journal.end();
        assert_eq!(snapshots(), vec![first]);
        let _ = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
        assert!(!w.maybe_snapshot(false), "the last one is not durable yet");
        shared.positions.flushed.set(first);
        assert!(w.maybe_snapshot(false), "now it is");
        let second = w.journal.end();
        assert_eq!(snapshots(), vec![second]);
        assert!(!w.maybe_snapshot(true), "nothing new, even at the stop");
        let _ = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
        assert!(w.maybe_snapshot(true), "at the stop");
        assert_eq!(snapshots(), vec![w.journal.end()]);
    }

    /// DeleteRecords is answered by a standalone writer and, in a
    /// replication group, by the leader only: any other member answers
    /// `NotLeader`.
    #[test]
    fn delete_records_is_answered_standalone_and_by_a_groups_leader_only() {
        let body = |topic: &str, before: u64| {
            let mut b = Vec::new();
            DeleteRecordsRequest {
                topic,
                partition: 0,
                before,
            }
            .encode(&mut b);
            frame(ApiKey::DeleteRecords.as_u16(), &b)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut w = group_writer(dir.path());
        let p = w
            .handle(1, true, &body("t", 1), Instant::now(), 0)
            .expect("answered");
        assert_eq!(p.error, ErrorCode::NotLeader);

        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let now = Instant::now();
        let _ = w.handle(1, true, &create_topic_frame("t"), now, 0);
        let _ = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
        let p = w
            .handle(1, true, &body("t", DELETE_TO_END), now, 0)
            .unwrap();
        assert_eq!((p.error, p.qos), (ErrorCode::None, Qos::All), "durably");
        assert!(p.base_offset > 0, "the new log start: {}", p.base_offset);
        let again = w.handle(1, true, &body("t", 0), now, 0).unwrap();
        assert_eq!(
            (again.qos, again.base_offset),
            (Qos::All, p.base_offset),
            "nothing to delete, answered once what set the log start is durable"
        );
        let bad = w
            .handle(1, true, &body("t", p.base_offset + 1), now, 0)
            .unwrap();
        assert_eq!(bad.error, ErrorCode::InvalidRequest);
    }

    /// Review: a DeleteRecords whose `before` is at or below a log start
    /// set by a record not yet durable (a retry after a timeout, a second
    /// admin) is answered at once with that log start, before the record
    /// that set it is durable: a crash then moves the log start the client
    /// was told about back.
    #[test]
    fn a_log_start_not_yet_durable_is_not_answered_at_once() {
        let body = |before: u64| {
            let mut b = Vec::new();
            DeleteRecordsRequest {
                topic: "t",
                partition: 0,
                before,
            }
            .encode(&mut b);
            frame(ApiKey::DeleteRecords.as_u16(), &b)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let now = Instant::now();
        let _ = w.handle(1, true, &create_topic_frame("t"), now, 0);
        for _ in 0..3 {
            let _ = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
        }
        let first = w.handle(1, true, &body(2), now, 0).unwrap();
        assert_eq!(
            (first.error, first.qos, first.base_offset),
            (ErrorCode::None, Qos::All, 2)
        );
        // The same request again, before the first record is durable.
        let again = w.handle(1, true, &body(2), now, 0).unwrap();
        assert_eq!(again.base_offset, 2);
        assert!(
            again.qos == Qos::All && again.end >= first.end,
            "answered with log start 2 at {:?} (end {}) before the record at {} is durable",
            again.qos,
            again.end,
            first.end
        );
    }

    /// A group member's snapshot waits for C: forcing (the stop) hands
    /// over nothing that is not committed.
    #[test]
    fn a_group_writer_hands_over_no_snapshot_c_has_not_passed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = group_writer(dir.path());
        assert!(!w.maybe_snapshot(true));
        assert!(w.group_snapshot.is_none());
    }

    /// QoS `received` is answered by the writer itself once its write is
    /// out, in the order the requests came, errors included; nothing of it
    /// goes to the responder.
    #[test]
    fn the_writer_answers_qos_received_and_errors_itself_after_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, rx, mut direct) = writer_and_rings(dir.path());
        let now = Instant::now();
        let create = w.handle(1, true, &create_topic_frame("t"), now, 0);
        assert!(w.queue(create.expect("created")));
        let p = w
            .handle(1, true, &produce_frame("t", Qos::Received), now, 0)
            .expect("answered");
        assert!(w.queue(p));
        let bad = w
            .handle(1, true, &produce_frame("nope", Qos::Received), now, 0)
            .expect("answered");
        assert_eq!(bad.error, ErrorCode::UnknownTopic);
        assert!(w.queue(bad));
        // In order: the error waits behind the batch, which waits for its
        // write (both go out in the same round of the thread).
        assert_eq!(w.answer_direct(), 0, "nothing before the write");
        w.write_out().unwrap();
        assert_eq!(w.answer_direct(), 2);
        assert!(!w.has_answers());
        let answers: Vec<(u16, u32)> = take_answers(&mut direct)
            .into_iter()
            .map(|(_, _, code, flags)| (code, flags))
            .collect();
        let counted = crate::broker::ring::FLAG_COUNTED;
        assert_eq!(
            answers,
            vec![(0, counted), (ErrorCode::UnknownTopic.as_u16(), counted)]
        );
        use ringbuf::traits::Observer;
        assert_eq!(
            rx.occupied_len(),
            1,
            "only the create waits for the responder"
        );
    }

    /// Pulses a one-member group's writer until it leads; returns the
    /// clock it got there at.
    fn elect(w: &mut Writer) -> Instant {
        let tick = Duration::from_millis(w.config.tick_ms);
        let mut now = Instant::now();
        for _ in 0..1000 {
            if w.replica.as_ref().unwrap().leader_term().is_some() {
                break;
            }
            now += tick;
            w.pulse(now);
        }
        assert!(
            w.replica.as_ref().unwrap().leader_term().is_some(),
            "elected"
        );
        now
    }

    /// Review of issue 9's fixes: a leader that has not committed in its own
    /// term answered gaps from producer states that a newer leader may
    /// still overrule (its journal's tail of earlier terms may be cut, or
    /// committed elsewhere although it lacks it). A gap answer makes the
    /// client renumber the batch under a new epoch, so the batch could end
    /// up stored twice. Until its first entry is committed it answers
    /// `Busy` (nothing stored, send the same batch again).
    #[test]
    fn a_new_leader_answers_no_producer_refusal_before_it_commits_in_its_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = group_writer(dir.path());
        let shared = w.shared.clone();
        let now = elect(&mut w);
        assert!(
            !w.replica.as_ref().unwrap().leader_settled(),
            "nothing flushed yet"
        );
        let create = w.handle(1, true, &create_topic_frame("t"), now, 0);
        assert_eq!(create.expect("answered").error, ErrorCode::None);
        // Producer 5 was never seen, and its batch is not its first.
        let p = w
            .handle(1, true, &producer_frame("t", Qos::Received, 5, 3), now, 0)
            .expect("answered");
        assert_eq!(p.error, ErrorCode::Busy, "no gap answer before the commit");
        // The no-op and the topic become durable: the leader commits in its term.
        let written = w.write_out().unwrap();
        shared.positions.written.publish(written);
        shared.positions.flushed.publish(written);
        w.pulse(now);
        assert!(w.replica.as_ref().unwrap().leader_settled());
        let p = w
            .handle(1, true, &producer_frame("t", Qos::Received, 5, 3), now, 0)
            .expect("answered");
        assert_eq!(p.error, ErrorCode::UnknownProducer);
        // A first batch is taken either way.
        let p = w
            .handle(1, true, &producer_frame("t", Qos::Received, 5, 0), now, 0)
            .expect("answered");
        assert_eq!(p.error, ErrorCode::None);
    }

    /// Review of the writer's own answers: when its ring is full it wakes
    /// the reactor (which wakes the writer once it has drained), and a
    /// writer stopping over a fatal error sends every answer it holds, as
    /// the responder did for the entries it held, while the reactor drains.
    #[test]
    fn held_answers_wake_the_reactor_and_all_go_out_when_the_writer_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _rx, mut answers, mut poll) = writer_with_poll(dir.path(), 4096);
        let count = 500;
        for i in 0..count {
            let p = Pending::failed(7, i, ApiKey::Produce, ErrorCode::UnknownTopic, true);
            assert!(w.queue(p));
        }
        let sent = w.answer_direct();
        assert!(
            sent > 0 && sent < count as usize,
            "the ring holds some: {sent}"
        );
        assert!(w
            .shared
            .completion_ring_full
            .load(std::sync::atomic::Ordering::Acquire));
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(
            events.iter().any(|e| e.token() == mio::Token(0)),
            "the reactor was woken"
        );
        // The reactor drains while the writer stops.
        let drainer = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(30);
            while seen.len() < count as usize && Instant::now() < until {
                seen.extend(take_answers(&mut answers).into_iter().map(|a| a.0));
                std::thread::yield_now();
            }
            seen
        });
        w.finish_direct(ErrorCode::StorageError, Duration::from_secs(30));
        assert!(!w.has_answers());
        let seen = drainer.join().unwrap();
        assert_eq!(
            seen,
            (0..count).collect::<Vec<_>>(),
            "every answer, once, in order"
        );
    }
    /// An AlterTopic frame setting `t`'s time limit to `ms`.
    fn alter_time_frame(ms: u64) -> Vec<u8> {
        let mut body = Vec::new();
        AlterTopicRequest {
            topic: "t",
            change: crate::wire::api::TopicConfigChange {
                retention_ms: Some(Some(ms)),
                retention_bytes: None,
            },
        }
        .encode(&mut body);
        frame(ApiKey::AlterTopic.as_u16(), &body)
    }

    /// Review finding: `topic_retention` paces each topic by a hundredth
    /// of the time limit it had at its last look, and `alter_topic` only
    /// moves the clock's `next`, not the topic's `topic_next`: a topic
    /// altered from a long time limit to a short one keeps its expired
    /// records for up to a hundredth of the old limit (a year here, for a
    /// limit of a century; forever, until a restart, for u64::MAX - 1).
    #[test]
    fn review_an_alteration_applies_at_the_next_look_whatever_the_old_pace() {
        let dir = tempfile::tempdir().unwrap();
        let (jobs, _jobs_rx) = std::sync::mpsc::channel();
        let (_trims_tx, trims) = std::sync::mpsc::channel();
        let mut w = writer(dir.path()).with_janitor(None, Duration::from_secs(1), jobs, trims);
        let now = Instant::now();
        let create = w.handle(1, true, &create_topic_frame("t"), now, 0);
        assert_eq!(create.expect("answered").error, ErrorCode::None);
        // One record stamped at broker time 0 (1970).
        let p = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
        assert_eq!(p.expect("answered").error, ErrorCode::None);
        w.write_out().unwrap();
        let deleted = |w: &Writer| w.journal.catalog().topic(0).partitions[0].deleted_below();
        // A century: the record is kept.
        const CENTURY_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
        let a = w.handle(1, true, &alter_time_frame(CENTURY_MS), Instant::now(), 0);
        assert_eq!(a.expect("answered").error, ErrorCode::None);
        w.retain(Instant::now());
        assert_eq!(deleted(&w), 0, "kept for a century");
        // Now a second: the record is long expired.
        let a = w.handle(1, true, &alter_time_frame(1_000), Instant::now(), 0);
        assert_eq!(a.expect("answered").error, ErrorCode::None);
        w.retain(Instant::now());
        assert_eq!(
            deleted(&w),
            1,
            "the new limit applies at the next look, not a year later"
        );
    }

    /// Review (test gap): in a replication group only the leader moves log
    /// starts by a topic's own limits. A member that does not lead
    /// appends nothing of its own, whatever its catalog asks for: its
    /// journal is the leader's, byte for byte.
    #[test]
    fn review_a_group_member_that_does_not_lead_moves_no_log_start_by_topic_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (jobs, _jobs_rx) = std::sync::mpsc::channel();
        let (_trims_tx, trims) = std::sync::mpsc::channel();
        // Never pulsed: it does not lead.
        let mut w =
            group_writer(dir.path()).with_janitor(None, Duration::from_secs(1), jobs, trims);
        assert!(w.replica.as_ref().unwrap().leader_term().is_none());
        // As if received from a leader: a topic with a one-second limit
        // and a record stamped in 1970.
        let limited = TopicConfig {
            retention_ms: Some(1_000),
            retention_bytes: None,
        };
        let (_, slot) = w.journal.create_topic_with("t", 1, limited, 1, 0).unwrap();
        let mut b = crate::wire::batch::BatchBuilder::new();
        b.push(0, b"", &[7u8; 100], &[]);
        let batch = b.finish(0, 0);
        w.journal.append_data(slot, 0, batch, 1, 1, 0).unwrap();
        assert!(
            !w.journal.retention_moves(slot, unix_ms(), None).is_empty(),
            "the limit asks for a move"
        );
        let end = w.journal.end();
        w.retain(Instant::now());
        assert_eq!(w.journal.end(), end, "nothing appended by a follower");
        // Not even appended and taken back out (a refused proposal).
        let mut none = Vec::new();
        assert!(
            !w.shared.cuts.take_new(&mut 0, &mut none),
            "no cut recorded: {none:?}"
        );
        assert_eq!(
            w.journal.catalog().topic(slot).partitions[0].deleted_below(),
            0
        );
    }

    /// Review (test gap): a group member settles DeleteRecords records only
    /// below C as well as F. On a follower F runs ahead of C (it flushes
    /// what it received before the leader says it is committed), and a
    /// record settled there could no longer be taken back by a cut.
    #[test]
    fn review_a_group_writer_settles_deletions_below_c_only() {
        let dir = tempfile::tempdir().unwrap();
        let (jobs, _jobs_rx) = std::sync::mpsc::channel();
        let (_trims_tx, trims) = std::sync::mpsc::channel();
        let every = Duration::from_secs(1);
        let mut w = group_writer(dir.path()).with_janitor(None, every, jobs, trims);
        let shared = w.shared.clone();
        let now = elect(&mut w);
        let create = w.handle(1, true, &create_topic_frame("t"), now, 0);
        assert_eq!(create.expect("answered").error, ErrorCode::None);
        for _ in 0..2 {
            let p = w.handle(1, true, &produce_frame("t", Qos::Received), now, 0);
            assert_eq!(p.expect("answered").error, ErrorCode::None);
        }
        let mut body = Vec::new();
        DeleteRecordsRequest {
            topic: "t",
            partition: 0,
            before: 1,
        }
        .encode(&mut body);
        let d = w
            .handle(
                1,
                true,
                &frame(ApiKey::DeleteRecords.as_u16(), &body),
                now,
                0,
            )
            .expect("answered");
        assert_eq!(
            (d.error, d.qos, d.base_offset),
            (ErrorCode::None, Qos::All, 1)
        );
        let written = w.write_out().unwrap();
        shared.positions.written.publish(written);
        let pending = |w: &Writer| {
            w.journal.catalog().topic(0).partitions[0]
                .deletions
                .pending()
                .len()
        };
        let at_record = w.journal.catalog().topic(0).partitions[0]
            .deletions
            .pending()[0]
            .0;
        // F past the record, C at its start.
        shared.positions.flushed.set(written);
        shared.positions.committed.set(at_record);
        let mut at = Instant::now();
        w.retain(at);
        assert_eq!(
            pending(&w),
            1,
            "not committed: a cut may still take it back"
        );
        // C past it, F at its start.
        shared.positions.committed.set(written);
        shared.positions.flushed.set(at_record);
        at += every;
        w.retain(at);
        assert_eq!(pending(&w), 1, "not durable");
        shared.positions.flushed.set(written);
        at += every;
        w.retain(at);
        assert_eq!(pending(&w), 0, "settled below F and C");
        assert_eq!(
            w.journal.catalog().topic(0).partitions[0].deleted_below(),
            1
        );
    }
}
