//! The responder: answers each produce (and create-topic) request once the
//! journal position its QoS needs is reached, or with `Timeout` when its
//! deadline passes first.
//!
//! Entries arrive from the writer in journal order, so within one QoS level
//! their end positions only grow: completing a level is popping a prefix.
//! Four FIFO queues (one per level) plus one for immediate errors keep every
//! completion O(1); a periodic sweep finds expired entries.

use super::ring::{MessageProducer, FLAG_COUNTED};
use super::shared::{Shared, Stage};
use crate::wire::api::{ErrorBody, NotLeaderBody, ProduceResponse};
use crate::wire::frame::{finish_frame, ResponseHeader};
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
    /// Offset of the first record (produce).
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

/// What the writer hands the responder through the pending ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToResponder {
    /// A request waiting for its answer.
    Request(Pending),
    /// The journal was cut at this position (a divergent tail): every
    /// waiting request whose batch ends above it lost its batch.
    Cut(u64),
}

/// How often expired entries are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(2);

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
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    pending: Pending,
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

    /// Takes in what the writer sent. The caller checks
    /// [`Responder::has_room`] first.
    pub fn take(&mut self, item: ToResponder) {
        match item {
            ToResponder::Request(p) => self.admit(p),
            ToResponder::Cut(at) => self.cut(at),
        }
    }

    /// Queues an entry. The caller checks [`Responder::has_room`] first.
    pub fn admit(&mut self, p: Pending) {
        self.queues[queue_of(&p)].push_back(Slot {
            pending: p,
            done: false,
        });
        self.len += 1;
    }

    /// The journal was cut at `at`: requests whose batches end above it
    /// are answered `NotLeader` (their writes did not happen; a retry goes
    /// to the new leader). Those below keep waiting: their batches may
    /// still commit under the new leader.
    fn cut(&mut self, at: u64) {
        for q in 1..self.queues.len() {
            for i in (0..self.queues[q].len()).rev() {
                let slot = self.queues[q][i];
                if slot.pending.end <= at {
                    break;
                }
                if slot.done {
                    continue;
                }
                self.queues[q][i].done = true;
                self.queues[0].push_back(Slot {
                    pending: Pending {
                        error: ErrorCode::NotLeader,
                        ..slot.pending
                    },
                    done: false,
                });
                self.len += 1;
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
        let flags = if p.counted { FLAG_COUNTED } else { 0 };
        let header = ResponseHeader {
            correlation_id: p.correlation_id,
            api_key: p.api.as_u16(),
            error_code: code.as_u16(),
        };
        if code != ErrorCode::None {
            self.scratch.clear();
            header.write(&mut self.scratch);
            if code == ErrorCode::NotLeader {
                NotLeaderBody {
                    message: code.message(),
                    leader_id: self.leader.0,
                    leader_addr: &self.leader.1,
                }
                .encode(&mut self.scratch);
            } else {
                ErrorBody {
                    message: code.message(),
                }
                .encode(&mut self.scratch);
            }
            finish_frame(&mut self.scratch, 0);
            return out.push(p.conn, flags, &[&self.scratch]);
        }
        if p.api == ApiKey::Produce {
            let body = ProduceResponse {
                base_offset: p.base_offset,
                append_time_ms: p.append_time_ms,
            }
            .to_bytes();
            out.push(p.conn, flags, &[&header.to_bytes(body.len()), &body])
        } else {
            out.push(p.conn, flags, &[&header.to_bytes(0)])
        }
    }
}

/// The responder thread: pulls entries from the pending ring, answers them
/// into the completion ring and wakes the reactor.
pub fn run(
    shared: Arc<Shared>,
    mut pending: HeapCons<ToResponder>,
    mut out: MessageProducer,
    capacity: usize,
) {
    shared.register(Stage::Responder);
    let mut r = Responder::new(capacity);
    let mut idle = super::shared::Idle::new();
    loop {
        // Positions first, then the ring: a `Cut` is pushed
        // before W moves past the cut again, so whoever sees the new W here
        // also finds the `Cut` below and fails the cut requests before
        // comparing them with positions that now hold other bytes.
        let p = &shared.positions;
        let marks = Marks {
            written: p.written.get(),
            flushed: p.flushed.get(),
            replicated: p.replicated.get(),
            committed: p.committed.get(),
        };
        let leader = shared.cluster.leader_id();
        if leader != r.leader_id() {
            r.set_leader(leader, shared.cluster.addr_of(leader));
        }
        let mut pulled = 0;
        while r.has_room() {
            match pending.try_pop() {
                Some(item) => {
                    r.take(item);
                    pulled += 1;
                }
                None => break,
            }
        }
        if pulled > 0 {
            // The writer may be waiting for room in the pending ring.
            shared.wake(Stage::Writer);
        }
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
        let (answered, outcome) = r.step(marks, Instant::now(), &mut out, fail_rest);
        if answered > 0 {
            shared.wake_reactor();
        }
        if outcome == StepOutcome::RingFull {
            shared
                .completion_ring_full
                .store(true, std::sync::atomic::Ordering::Release);
            shared.wake_reactor();
        }
        if upstream_done && r.is_empty() {
            shared.mark_done(Stage::Responder);
            return;
        }
        if pulled > 0 || answered > 0 {
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
        r.take(ToResponder::Cut(150));
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
