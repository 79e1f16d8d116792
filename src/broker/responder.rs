//! The responder: answers each produce (and create-topic) request once the
//! journal position its QoS needs is reached, or with `Timeout` when its
//! deadline passes first.
//!
//! Entries arrive from the writer in journal order, so within one QoS level
//! their end positions only grow: completing a level is popping a prefix.
//! Four FIFO queues (one per level) plus one for immediate errors keep every
//! completion O(1); a periodic sweep finds expired entries.

use super::ring::{MessageProducer, FLAG_COUNTED};
use super::shared::{Cut, Shared, Stage};
use crate::wire::api::{
    AlterTopicResponse, DeleteRecordsResponse, ErrorBody, NotLeaderBody, ProduceResponse,
};
use crate::wire::frame::{finish_frame, ResponseHeader};
use crate::wire::topic_config::{decode_setting, TopicConfig};
use crate::wire::{ApiKey, ErrorCode, Qos};
use ringbuf::traits::{Consumer, Observer};
use ringbuf::HeapCons;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request waiting for its answer. Plain data, copied through the
/// pending ring without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Connection id (slab key and generation).
    pub conn: u64,
    /// The request's correlation id.
    pub correlation_id: u32,
    /// The request's API.
    pub api: ApiKey,
    /// The QoS level that decides when to answer.
    pub qos: Qos,
    /// Journal position one past the request's bytes.
    pub end: u64,
    /// Offset of the first record (produce); the partition's new log
    /// start (DeleteRecords).
    pub base_offset: u64,
    /// Broker append time, Unix ms.
    pub append_time_ms: i64,
    /// When to give up with `Timeout`.
    pub deadline: Instant,
    /// An error to answer at once instead of waiting.
    pub error: ErrorCode,
    /// Whether the request counted toward its connection's in-flight limit.
    pub counted: bool,
}

impl Pending {
    /// An entry answered at once with `code`.
    pub fn failed(
        conn: u64,
        correlation_id: u32,
        api: ApiKey,
        code: ErrorCode,
        counted: bool,
    ) -> Pending {
        Pending {
            conn,
            correlation_id,
            api,
            qos: Qos::Received,
            end: 0,
            base_offset: 0,
            append_time_ms: 0,
            deadline: Instant::now(),
            error: code,
            counted,
        }
    }
}

/// How often expired entries are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(2);
/// Cuts kept exactly for entries still in the pending ring. A cut that a
/// later one at or below it covers is dropped, which loses nothing; past
/// this many (a storm of leader changes, each above the last, while the
/// responder cannot take entries) the oldest are merged into one that
/// covers a superset of their requests. A request only the merged cut
/// fails is answered `Timeout` (its outcome is unknown), never `NotLeader`
/// ("not stored", which a client takes as leave to resend a batch without
/// a producer id) nor success.
const CUTS_KEPT_MAX: usize = 16;

/// The responder's queues and logic, without the thread.
pub struct Responder {
    /// Immediate errors, then one queue per QoS level above `none`.
    queues: [VecDeque<Slot>; 5],
    len: usize,
    capacity: usize,
    next_sweep: Instant,
    scratch: Vec<u8>,
    /// The leader to name in `NotLeader` answers: id (0: unknown) and address.
    leader: (u64, String),
    /// Requests admitted so far: the next one's sequence number, in the
    /// order the writer queued them.
    admitted: u64,
    /// Cuts that concern requests not admitted yet (still in the ring),
    /// exact, at strictly rising positions in the order they were made.
    cuts: Vec<Cut>,
    /// Cuts merged past `CUTS_KEPT_MAX`: at their lowest position, up to
    /// the last request queued before any of them.
    merged_cuts: Option<Cut>,
    /// The cut log's generation last taken in.
    cuts_seen: u64,
    /// Reused buffer for cuts taken from the log.
    scratch_cuts: Vec<Cut>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    pending: Pending,
    /// The request's place in the writer's queue order.
    seq: u64,
    done: bool,
}

/// The positions the responder compares against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// W.
    pub written: u64,
    /// F.
    pub flushed: u64,
    /// R.
    pub replicated: u64,
    /// C.
    pub committed: u64,
}

impl Marks {
    /// The positions as the stages published them.
    fn read(shared: &Shared) -> Marks {
        let p = &shared.positions;
        Marks {
            written: p.written.get(),
            flushed: p.flushed.get(),
            replicated: p.replicated.get(),
            committed: p.committed.get(),
        }
    }

    fn for_queue(&self, q: usize) -> u64 {
        match q {
            0 => u64::MAX,
            1 => self.written,
            2 => self.flushed,
            3 => self.replicated,
            _ => self.committed,
        }
    }
}

fn queue_of(p: &Pending) -> usize {
    if p.error != ErrorCode::None {
        return 0;
    }
    match p.qos {
        Qos::None | Qos::Received => 1,
        Qos::Flushed => 2,
        Qos::Replicated => 3,
        Qos::All => 4,
    }
}

/// Why a step stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Everything answerable was answered.
    Idle,
    /// The completion ring is full; try again once the reactor drained it.
    RingFull,
}

impl Responder {
    /// A responder holding at most `capacity` waiting entries.
    pub fn new(capacity: usize) -> Responder {
        Responder {
            queues: std::array::from_fn(|_| VecDeque::with_capacity(capacity.min(1 << 16))),
            len: 0,
            capacity,
            next_sweep: Instant::now(),
            scratch: Vec::with_capacity(256),
            leader: (0, String::new()),
            admitted: 0,
            cuts: Vec::with_capacity(CUTS_KEPT_MAX + 1),
            merged_cuts: None,
            cuts_seen: 0,
            scratch_cuts: Vec::new(),
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when another entry fits.
    pub fn has_room(&self) -> bool {
        self.len < self.capacity
    }

    /// Queues the writer's next request. The caller checks
    /// [`Responder::has_room`] first. A request whose batch a cut already
    /// removed is failed at once.
    pub fn admit(&mut self, p: Pending) {
        let seq = self.admitted;
        self.admitted += 1;
        let waits = p.error == ErrorCode::None && queue_of(&p) != 0;
        let fails = |c: &Cut| seq < c.queued_before && p.end > c.at;
        let error = if !waits {
            p.error
        } else if self.cuts.iter().any(fails) {
            ErrorCode::NotLeader
        } else if self.merged_cuts.as_ref().is_some_and(fails) {
            ErrorCode::Timeout
        } else {
            p.error
        };
        let admitted = self.admitted;
        self.cuts.retain(|c| c.queued_before > admitted);
        self.merged_cuts = self.merged_cuts.filter(|c| c.queued_before > admitted);
        let pending = Pending { error, ..p };
        self.queues[queue_of(&pending)].push_back(Slot {
            pending,
            seq,
            done: false,
        });
        self.len += 1;
    }

    /// The journal was cut at `cut.at`: every request queued before the
    /// cut whose batch ends above it is answered `NotLeader` (its write did
    /// not happen; a retry goes to the new leader), whether it waits here
    /// or still in the pending ring. Requests below the cut keep waiting:
    /// their batches may still commit under the new leader.
    ///
    /// Every waiting entry is looked at, not only a suffix: a retried
    /// batch is queued with its first copy's end, which can be lower than
    /// the ends of entries queued before it.
    pub fn apply_cut(&mut self, cut: Cut) {
        for q in 1..self.queues.len() {
            for i in 0..self.queues[q].len() {
                let slot = self.queues[q][i];
                if slot.done || slot.seq >= cut.queued_before || slot.pending.end <= cut.at {
                    continue;
                }
                self.queues[q][i].done = true;
                self.queues[0].push_back(Slot {
                    pending: Pending {
                        error: ErrorCode::NotLeader,
                        ..slot.pending
                    },
                    seq: slot.seq,
                    done: false,
                });
                self.len += 1;
            }
        }
        if cut.queued_before > self.admitted {
            // An earlier cut at or above this one fails nothing this one
            // does not: it concerns fewer requests (queued before it), and
            // fails only batches ending above a higher position.
            self.cuts.retain(|c| c.at < cut.at);
            self.merged_cuts = self.merged_cuts.filter(|c| c.at < cut.at);
            self.cuts.push(cut);
            if self.cuts.len() > CUTS_KEPT_MAX {
                let oldest = self.cuts.remove(0);
                self.merged_cuts = Some(match self.merged_cuts {
                    None => oldest,
                    Some(m) => Cut {
                        at: m.at.min(oldest.at),
                        queued_before: m.queued_before.max(oldest.queued_before),
                    },
                });
            }
        }
    }

    /// Sets the leader named in `NotLeader` answers (0: none known).
    pub fn set_leader(&mut self, id: u64, addr: &str) {
        self.leader = (id, addr.to_string());
    }

    /// The leader named in `NotLeader` answers.
    pub fn leader_id(&self) -> u64 {
        self.leader.0
    }

    /// Answers every entry whose position is reached, then (at most every
    /// `SWEEP_INTERVAL`) every expired one. With `fail_all`, answers
    /// everything left with `code` (shutdown, storage failure).
    pub fn step(
        &mut self,
        marks: Marks,
        now: Instant,
        out: &mut MessageProducer,
        fail_rest: Option<ErrorCode>,
    ) -> (usize, StepOutcome) {
        let mut answered = 0;
        for q in 0..self.queues.len() {
            let reached = marks.for_queue(q);
            while let Some(slot) = self.queues[q].front().copied() {
                if !slot.done {
                    let code = if slot.pending.end <= reached {
                        slot.pending.error
                    } else if let Some(code) = fail_rest {
                        code
                    } else {
                        break;
                    };
                    if !self.answer(&slot.pending, code, out) {
                        return (answered, StepOutcome::RingFull);
                    }
                    answered += 1;
                }
                self.queues[q].pop_front();
                self.len -= 1;
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            for q in 1..self.queues.len() {
                for i in 0..self.queues[q].len() {
                    let slot = self.queues[q][i];
                    if slot.done || slot.pending.deadline > now {
                        continue;
                    }
                    if !self.answer(&slot.pending, ErrorCode::Timeout, out) {
                        return (answered, StepOutcome::RingFull);
                    }
                    self.queues[q][i].done = true;
                    answered += 1;
                }
            }
        }
        (answered, StepOutcome::Idle)
    }

    /// Encodes one answer into the completion ring.
    fn answer(&mut self, p: &Pending, code: ErrorCode, out: &mut MessageProducer) -> bool {
        let leader = (self.leader.0, self.leader.1.as_str());
        encode_answer(p, code, leader, &mut self.scratch, out)
    }
}

/// True when the writer answers `p` itself, right after its write: an
/// error found before anything waits, or QoS `received`, whose position W
/// the writer reaches with the write (docs/architecture.md). The responder
/// gets the rest.
pub fn answered_by_writer(p: &Pending) -> bool {
    p.error != ErrorCode::None || p.qos <= Qos::Received
}

/// Encodes the answer to `p` with `code` into `out`, through `scratch`;
/// `leader` (id, address; 0 and "" when unknown) is named in a `NotLeader`
/// answer. False, pushing nothing, when `out` has no room.
pub fn encode_answer(
    p: &Pending,
    code: ErrorCode,
    leader: (u64, &str),
    scratch: &mut Vec<u8>,
    out: &mut MessageProducer,
) -> bool {
    let flags = if p.counted { FLAG_COUNTED } else { 0 };
    let header = ResponseHeader {
        correlation_id: p.correlation_id,
        api_key: p.api.as_u16(),
        error_code: code.as_u16(),
    };
    if code != ErrorCode::None {
        scratch.clear();
        header.write(scratch);
        if code == ErrorCode::NotLeader {
            NotLeaderBody {
                message: code.message(),
                leader_id: leader.0,
                leader_addr: leader.1,
            }
            .encode(scratch);
        } else {
            ErrorBody {
                message: code.message(),
            }
            .encode(scratch);
        }
        finish_frame(scratch, 0);
        return out.push(p.conn, flags, &[scratch]);
    }
    if p.api == ApiKey::Produce {
        let body = ProduceResponse {
            base_offset: p.base_offset,
            append_time_ms: p.append_time_ms,
        }
        .to_bytes();
        out.push(p.conn, flags, &[&header.to_bytes(body.len()), &body])
    } else if p.api == ApiKey::AlterTopic {
        // The settings ride in `base_offset` and `append_time_ms`.
        let config = TopicConfig {
            retention_ms: decode_setting(p.base_offset),
            retention_bytes: decode_setting(p.append_time_ms as u64),
        };
        let body = AlterTopicResponse { config }.to_bytes();
        out.push(p.conn, flags, &[&header.to_bytes(body.len()), &body])
    } else if p.api == ApiKey::DeleteRecords {
        // The partition's log start rides in `base_offset`.
        let body = DeleteRecordsResponse {
            log_start: p.base_offset,
        }
        .to_bytes();
        out.push(p.conn, flags, &[&header.to_bytes(body.len()), &body])
    } else {
        out.push(p.conn, flags, &[&header.to_bytes(0)])
    }
}

/// What one [`Responder::round`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Entries taken from the pending ring.
    pub pulled: usize,
    /// Answers pushed to the completion ring.
    pub answered: usize,
    /// Whether the completion ring filled up.
    pub outcome: StepOutcome,
    /// Everything upstream finished and nothing is left to answer.
    pub finished: bool,
}

impl Responder {
    /// One round of the responder thread: reads the positions, takes what
    /// the writer sent, answers what can be answered.
    pub fn round(
        &mut self,
        shared: &Shared,
        pending: &mut HeapCons<Pending>,
        out: &mut MessageProducer,
        now: Instant,
    ) -> Round {
        self.round_reading(shared, pending, out, now, || Marks::read(shared))
    }

    /// [`Responder::round`], reading the positions with `marks` (tests
    /// read them at chosen moments).
    fn round_reading(
        &mut self,
        shared: &Shared,
        pending: &mut HeapCons<Pending>,
        out: &mut MessageProducer,
        now: Instant,
        marks: impl FnOnce() -> Marks,
    ) -> Round {
        // The ring first, then the positions, then the cuts.
        // - An entry taken from the ring was queued after every cut the
        //   writer made before it, and the writer lowered the positions for
        //   those cuts before queuing it: positions read after taking it
        //   are never older than those cuts (the ring's release/acquire).
        // - Positions that count bytes written after a cut come with that
        //   cut in the log read after them: the writer records a cut before
        //   it lowers any position or writes past it (release/acquire), so
        //   every entry the cut concerns is failed before it is compared.
        let mut pulled = 0;
        while self.has_room() {
            match pending.try_pop() {
                Some(item) => {
                    self.admit(item);
                    pulled += 1;
                }
                None => break,
            }
        }
        let marks = marks();
        let leader = shared.cluster.leader_id();
        if leader != self.leader_id() {
            self.set_leader(leader, shared.cluster.addr_of(leader));
        }
        let mut cuts = std::mem::take(&mut self.scratch_cuts);
        if shared.cuts.take_new(&mut self.cuts_seen, &mut cuts) {
            for cut in cuts.drain(..) {
                self.apply_cut(cut);
            }
        }
        self.scratch_cuts = cuts;
        let upstream_done = shared.is_done(Stage::Replicator) && pending.is_empty();
        let fail_rest = if upstream_done {
            Some(ErrorCode::ShuttingDown)
        } else if shared
            .storage_failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            Some(ErrorCode::StorageError)
        } else {
            None
        };
        let (answered, outcome) = self.step(marks, now, out, fail_rest);
        Round {
            pulled,
            answered,
            outcome,
            finished: upstream_done && self.is_empty(),
        }
    }
}

/// The responder thread: pulls entries from the pending ring, answers them
/// into the completion ring and wakes the reactor.
pub fn run(
    shared: Arc<Shared>,
    mut pending: HeapCons<Pending>,
    mut out: MessageProducer,
    capacity: usize,
) {
    shared.register(Stage::Responder);
    let mut r = Responder::new(capacity);
    let mut idle = super::shared::Idle::new();
    loop {
        let round = r.round(&shared, &mut pending, &mut out, Instant::now());
        if round.pulled > 0 {
            // The writer may be waiting for room in the pending ring.
            shared.wake(Stage::Writer);
        }
        if round.answered > 0 {
            shared.wake_reactor();
        }
        if round.outcome == StepOutcome::RingFull {
            shared
                .completion_ring_full
                .store(true, std::sync::atomic::Ordering::Release);
            shared.wake_reactor();
        }
        if round.finished {
            shared.mark_done(Stage::Responder);
            return;
        }
        if round.pulled > 0 || round.answered > 0 {
            idle.busy();
        } else {
            let wait = if r.is_empty() {
                Duration::from_millis(100)
            } else {
                SWEEP_INTERVAL
            };
            idle.wait(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ring::message_ring;
    use crate::wire::frame::ResponseHeader as RH;

    fn entry(corr: u32, qos: Qos, end: u64, deadline: Instant) -> Pending {
        Pending {
            conn: 1,
            correlation_id: corr,
            api: ApiKey::Produce,
            qos,
            end,
            base_offset: corr as u64,
            append_time_ms: 0,
            deadline,
            error: ErrorCode::None,
            counted: true,
        }
    }

    fn drain(c: &mut crate::broker::ring::MessageConsumer) -> Vec<(u32, u16)> {
        let mut v = Vec::new();
        while let Some(m) = c.peek() {
            let h = RH::parse(m.payload);
            v.push((h.correlation_id, h.error_code));
            c.pop();
        }
        v
    }

    /// A responder of capacity 1 (so requests wait in its pending ring),
    /// with the writer's end of that ring and the reactor's end of its
    /// answers.
    struct Rig {
        _poll: mio::Poll,
        shared: Arc<Shared>,
        out: MessageProducer,
        inp: crate::broker::ring::MessageConsumer,
        tx: ringbuf::HeapProd<Pending>,
        rx: ringbuf::HeapCons<Pending>,
        r: Responder,
    }

    impl Rig {
        fn new(ring: usize) -> Rig {
            use ringbuf::traits::Split;
            let (poll, shared) = Shared::for_tests(0);
            let (out, inp) = message_ring(1 << 16);
            let (tx, rx) = ringbuf::HeapRb::<Pending>::new(ring).split();
            Rig {
                _poll: poll,
                shared,
                out,
                inp,
                tx,
                rx,
                r: Responder::new(1),
            }
        }

        /// The writer queues request `corr`, whose batch ends at `end`.
        fn queue(&mut self, corr: u32, qos: Qos, end: u64) {
            use ringbuf::traits::Producer;
            let later = Instant::now() + Duration::from_secs(60);
            assert!(self.tx.try_push(entry(corr, qos, end, later)).is_ok());
        }

        /// The writer records a cut.
        fn cut(&self, at: u64, queued_before: u64) {
            self.shared.cuts.record(Cut { at, queued_before });
        }

        /// Runs `rounds` responder rounds; the answers, in order.
        fn answers(&mut self, rounds: usize) -> Vec<(u32, u16)> {
            let mut answered = Vec::new();
            for _ in 0..rounds {
                self.r
                    .round(&self.shared, &mut self.rx, &mut self.out, Instant::now());
                answered.extend(drain(&mut self.inp));
            }
            answered
        }
    }

    #[test]
    fn each_level_is_answered_only_when_its_position_is_reached() {
        let (mut out, mut inp) = message_ring(1 << 16);
        let mut r = Responder::new(16);
        let later = Instant::now() + Duration::from_secs(60);
        r.admit(entry(1, Qos::Received, 100, later));
        r.admit(entry(2, Qos::Flushed, 100, later));
        r.admit(entry(3, Qos::Replicated, 100, later));
        r.admit(entry(4, Qos::All, 100, later));
        let mut m = Marks {
            written: 100,
            ..Marks::default()
        };
        r.step(m, Instant::now(), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(1, 0)]);
        m.flushed = 100;
        r.step(m, Instant::now(), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(2, 0)]);
        m.replicated = 100;
        m.committed = 99;
        r.step(m, Instant::now(), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(3, 0)]);
        m.committed = 100;
        r.step(m, Instant::now(), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(4, 0)]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_cut_fails_the_requests_above_it_with_not_leader_naming_the_leader() {
        let (mut out, mut inp) = message_ring(1 << 16);
        let mut r = Responder::new(16);
        r.set_leader(3, "10.0.0.3:7070");
        let later = Instant::now() + Duration::from_secs(60);
        r.admit(entry(1, Qos::All, 100, later));
        r.admit(entry(2, Qos::All, 200, later));
        r.admit(entry(3, Qos::Replicated, 150, later));
        r.admit(entry(4, Qos::Replicated, 300, later));
        r.apply_cut(Cut {
            at: 150,
            queued_before: 4,
        });
        r.step(Marks::default(), Instant::now(), &mut out, None);
        let not_leader = ErrorCode::NotLeader.as_u16();
        let mut answered = Vec::new();
        while let Some(m) = inp.peek() {
            let h = RH::parse(m.payload);
            let body = NotLeaderBody::decode(&m.payload[crate::wire::frame::RESPONSE_HEADER_LEN..]);
            assert_eq!((body.leader_id, body.leader_addr), (3, "10.0.0.3:7070"));
            answered.push((h.correlation_id, h.error_code));
            inp.pop();
        }
        answered.sort_unstable();
        assert_eq!(answered, vec![(2, not_leader), (4, not_leader)]);
        // Below the cut, requests still wait for their positions, even once
        // W has grown past the cut again with other bytes.
        let m = Marks {
            written: 400,
            flushed: 400,
            replicated: 150,
            committed: 100,
        };
        r.step(m, Instant::now(), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(3, 0), (1, 0)]);
        assert!(r.is_empty());
    }

    #[test]
    fn expired_entries_get_timeout_once_and_later_ones_still_complete() {
        let (mut out, mut inp) = message_ring(1 << 16);
        let mut r = Responder::new(16);
        let now = Instant::now();
        r.admit(entry(1, Qos::All, 10, now + Duration::from_secs(60)));
        r.admit(entry(2, Qos::All, 20, now));
        r.step(Marks::default(), now, &mut out, None);
        assert_eq!(drain(&mut inp), vec![(2, ErrorCode::Timeout.as_u16())]);
        let m = Marks {
            written: 20,
            flushed: 20,
            replicated: 20,
            committed: 20,
        };
        r.step(m, now + Duration::from_secs(1), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(1, 0)]);
        assert!(r.is_empty());
    }

    #[test]
    fn errors_are_answered_at_once_and_shutdown_fails_the_rest() {
        let (mut out, mut inp) = message_ring(1 << 16);
        let mut r = Responder::new(16);
        let later = Instant::now() + Duration::from_secs(60);
        r.admit(entry(1, Qos::All, 10, later));
        r.admit(Pending::failed(
            1,
            2,
            ApiKey::Produce,
            ErrorCode::UnknownTopic,
            true,
        ));
        r.step(Marks::default(), Instant::now(), &mut out, None);
        assert_eq!(drain(&mut inp), vec![(2, ErrorCode::UnknownTopic.as_u16())]);
        r.step(
            Marks::default(),
            Instant::now(),
            &mut out,
            Some(ErrorCode::ShuttingDown),
        );
        assert_eq!(drain(&mut inp), vec![(1, ErrorCode::ShuttingDown.as_u16())]);
    }

    /// Finding 1 of the correctness review: a retried batch is queued with
    /// its first copy's end, below entries queued before it; a cut must
    /// still fail every entry above it, wherever it sits in its queue.
    #[test]
    fn a_cut_fails_entries_above_it_that_sit_in_front_of_a_retry() {
        let (mut out, mut inp) = message_ring(1 << 16);
        let mut r = Responder::new(16);
        let later = Instant::now() + Duration::from_secs(60);
        r.admit(entry(1, Qos::All, 500, later));
        // The retry of a batch stored earlier, ending at 200.
        r.admit(entry(2, Qos::All, 200, later));
        r.apply_cut(Cut {
            at: 300,
            queued_before: 2,
        });
        // A new leader's bytes take the cut positions and C passes them.
        let m = Marks {
            written: 600,
            flushed: 600,
            replicated: 600,
            committed: 600,
        };
        r.step(m, Instant::now(), &mut out, None);
        let mut answered = drain(&mut inp);
        answered.sort_unstable();
        assert_eq!(
            answered,
            vec![(1, ErrorCode::NotLeader.as_u16()), (2, 0)],
            "the entry whose batch was cut must not succeed"
        );
    }

    /// Finding 3: a responder with no room must not compare entries it has
    /// not taken yet, whose batches a cut removed, with positions reached
    /// by the bytes written after the cut.
    #[test]
    fn a_full_responder_never_answers_a_cut_request_with_success() {
        let mut g = Rig::new(8);
        g.queue(1, Qos::Received, 100);
        g.queue(2, Qos::Received, 300);
        // The writer cut the journal at 250, then wrote new bytes to 400.
        g.cut(250, 2);
        g.shared.positions.written.set(400);
        assert_eq!(
            g.answers(4),
            vec![(1, 0), (2, ErrorCode::NotLeader.as_u16())],
            "request 2's batch was cut"
        );
    }

    /// Review of issue 9's fixes: a storm of cuts while the responder is
    /// full used to be merged into one that answered `NotLeader` (= "not
    /// stored") to a request whose batch survived every cut; a client
    /// resends such a batch, and one without a producer id is then stored
    /// twice. Cuts that a later, lower one covers are dropped exactly; past
    /// the bound, a request the merged remainder may fail is answered
    /// `Timeout` (outcome unknown), never `NotLeader`.
    #[test]
    fn a_storm_of_cuts_never_answers_not_leader_to_a_batch_that_survived() {
        let mut g = Rig::new(64);
        // Request 1 waits in the responder; the rest stay in the ring.
        g.queue(1, Qos::All, 50);
        assert!(g.answers(1).is_empty());
        // Request 2 (end 250) was queued, then the journal was cut at
        // 100 (it goes).
        g.queue(2, Qos::Received, 250);
        g.cut(100, 2);
        // Request 3 (end 250, written again after the cut), then many cuts
        // at or above 300: it survives every one of them.
        g.queue(3, Qos::Received, 250);
        for i in 0..(CUTS_KEPT_MAX as u64 + 4) {
            g.cut(300 + 10 * i, 3 + i);
        }
        // Requests 4.. each waited behind one of those cuts (ends 1000..):
        // each was cut by the next one.
        for i in 0..(CUTS_KEPT_MAX as u32 + 3) {
            g.queue(4 + i, Qos::Received, 1000 + 10 * u64::from(i));
        }
        let p = &g.shared.positions;
        for position in [&p.written, &p.flushed, &p.replicated, &p.committed] {
            position.set(2000);
        }
        let mut answered = g.answers(64);
        answered.sort_unstable();
        let not_leader = ErrorCode::NotLeader.as_u16();
        assert_eq!(answered[0], (1, 0), "below every cut");
        let timeout = ErrorCode::Timeout.as_u16();
        // Its cut was merged: `Timeout` says the outcome is not known.
        assert_eq!(answered[1], (2, timeout), "cut at 100");
        assert_eq!(
            answered[2].1, timeout,
            "request 3's batch survived every cut, but a merged one may have failed it: {:?}",
            answered[2]
        );
        for &(corr, code) in &answered[3..] {
            assert!(
                code == not_leader || code == timeout,
                "request {corr}'s batch was cut: answered {code}"
            );
        }
        assert_eq!(answered.len(), 3 + CUTS_KEPT_MAX + 3);
    }

    /// Cuts each at or below the last (the usual storm: every new leader
    /// cuts back further) stay exact however many there are: each one
    /// covers the ones before it.
    #[test]
    fn falling_cuts_stay_exact_however_many() {
        let mut g = Rig::new(64);
        g.queue(1, Qos::All, 50);
        assert!(g.answers(1).is_empty());
        let cuts = CUTS_KEPT_MAX as u32 * 2;
        for i in 0..cuts {
            g.queue(2 + i, Qos::Received, 2000 - u64::from(i));
            g.cut(1000 - u64::from(i), 2 + u64::from(i));
        }
        g.shared.positions.written.set(3000);
        g.shared.positions.committed.set(3000);
        let mut answered = g.answers(64);
        answered.sort_unstable();
        let mut want = vec![(1, 0)];
        want.extend((0..cuts).map(|i| (2 + i, ErrorCode::NotLeader.as_u16())));
        assert_eq!(answered, want);
    }

    /// A cut concerns only the requests queued before it: the batches of
    /// those queued after it were appended after the cut, above it.
    #[test]
    fn requests_queued_after_a_cut_are_not_failed_by_it() {
        let mut g = Rig::new(8);
        g.queue(1, Qos::Received, 300);
        g.cut(250, 1);
        // Written after the cut: its batch ends at 320, above 250.
        g.queue(2, Qos::Received, 320);
        g.shared.positions.written.set(400);
        assert_eq!(
            g.answers(4),
            vec![(1, ErrorCode::NotLeader.as_u16()), (2, 0)]
        );
    }

    /// Review of the fix for finding 3: positions read before a cut must
    /// not be compared with a request queued after it. Here the responder
    /// reads F = 1200 (old-term bytes), then the writer cuts at 1000, lowers
    /// F, appends a new batch ending at 1150 and queues its request.
    #[test]
    fn positions_read_before_a_cut_never_answer_a_request_queued_after_it() {
        let (_poll, shared) = Shared::for_tests(0);
        shared.positions.written.set(1200);
        shared.positions.flushed.set(1200);
        let (mut out, mut inp) = message_ring(1 << 16);
        let (mut tx, mut rx) = ringbuf::HeapRb::<Pending>::new(8).split();
        use ringbuf::traits::{Producer, Split};
        let mut r = Responder::new(8);
        let later = Instant::now() + Duration::from_secs(60);
        let stale = Marks::read(&shared);
        r.round_reading(&shared, &mut rx, &mut out, Instant::now(), || {
            // The writer runs while the responder holds `stale`.
            shared.cuts.record(Cut {
                at: 1000,
                queued_before: 0,
            });
            shared.lower_positions_to(&shared.lock_flush_gate(), 1000);
            shared.positions.written.set(1150);
            tx.try_push(entry(1, Qos::Flushed, 1150, later)).unwrap();
            stale
        });
        for _ in 0..3 {
            r.round(&shared, &mut rx, &mut out, Instant::now());
        }
        assert!(
            drain(&mut inp).is_empty(),
            "request 1 was answered before its batch was flushed"
        );
        shared.positions.flushed.set(1150);
        r.round(&shared, &mut rx, &mut out, Instant::now());
        assert_eq!(drain(&mut inp), vec![(1, 0)]);
    }

    #[test]
    fn a_full_ring_keeps_the_entry_for_later() {
        let (mut out, mut inp) = message_ring(64);
        let mut r = Responder::new(16);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..4 {
            r.admit(entry(i, Qos::Received, 1, later));
        }
        let m = Marks {
            written: 1,
            ..Marks::default()
        };
        let (n, outcome) = r.step(m, Instant::now(), &mut out, None);
        assert_eq!((n, outcome), (1, StepOutcome::RingFull));
        assert_eq!(drain(&mut inp).len(), 1);
        let (n, _) = r.step(m, Instant::now(), &mut out, None);
        assert_eq!(n, 1);
        assert_eq!(r.len(), 2);
    }
}
