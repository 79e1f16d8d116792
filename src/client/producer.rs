//! The producer: sends record batches pipelined on one connection, tracks
//! their acknowledgements, and survives a broken connection.
//!
//! Every produce request is answered through a completion hook on the
//! connection's reader thread, which files the outcome in the producer's
//! tracker and frees the connection slot at once. So a caller may hold any
//! number of [`Receipt`]s without tying up the connection; only requests
//! not yet answered count against [`ProducerConfig::max_in_flight`].
//!
//! Every failure is reported once: to [`Receipt::wait`] if the caller waits
//! the receipt, otherwise by the next [`Producer::flush`] (which returns the
//! first such failure, by send order, since the previous flush).
//!
//! # Sequences and epochs
//!
//! A batch with a producer id is deduplicated and kept in order by the
//! broker (`docs/protocol.md` §9.1): per (producer id, partition) the
//! broker stores batch `n + 1` of an epoch only after batch `n`, answers a
//! repeat of a stored batch like its first copy, and refuses anything else
//! with `OutOfOrderSequence` without storing it. The producer gives each
//! partition its own *lane*: an epoch (from 0) and the next sequence (from
//! 0 in each epoch), stamped into a batch when it joins the send queue, so
//! sequences follow the order of the wire. When a lane must restart its
//! sequences it *bumps* its epoch: its waiting batches are renumbered from
//! 0 under the new epoch (the producer checksum is recomputed, since it
//! covers these fields) and sent again, in order. That happens when
//! - the first unsettled batch of the lane is answered `OutOfOrderSequence`
//!   or `UnknownProducer`: the broker holds nothing of the lane from that
//!   batch on (its predecessors were acknowledged and then lost with a
//!   leader at a weak QoS, or given up with an unknown outcome and not
//!   stored after all; or the broker evicted the producer after it idled);
//! - the first unsettled batch of the lane is refused for good by a check
//!   that stores nothing (`UnknownTopic`, `InvalidBatch`,
//!   `RecordTooLarge`, ...): its receipt fails, and the batches behind it
//!   must not wait for a sequence that will never be stored.
//!
//! The same answers for a later batch of the lane only say that a batch
//! before it is missing: the producer resends from the gap, in order.
//!
//! # Retries
//!
//! The producer keeps the bytes of every request until it is answered (a
//! pooled buffer per request, so the steady state allocates nothing). When
//! the connection fails, or a request is answered with an error that
//! [`ClientError::is_retriable`] calls retriable, the producer's retry
//! thread drops the connection, waits a backoff, reconnects to the
//! addresses given at connect, and resends every unanswered request **in
//! the original order** with the **same bytes** (unless its lane bumped its
//! epoch). The broker stores a batch it already has only once and answers
//! the retry with the first copy's offset. Sends made meanwhile queue behind
//! the resends.
//!
//! Tearing the connection down for a retriable *answer* too (not only for a
//! dead socket) keeps the order: every request sent after the failed one
//! is resent after it. A `Timeout` answer is retried as well, because the
//! retry of a batch that was stored in the end is answered, not stored.
//!
//! What is retried, and for how long, is [`RetryConfig`]:
//! - a receipt settles at most `deadline_ms` after its send call: no try
//!   starts later, and a try still under way then is given up (its receipt
//!   fails with [`ClientError::Timeout`]: the outcome is unknown). A
//!   request also fails once it has been tried `attempts_max` times (a send
//!   counts, and so does a failed reconnection while it waits; a resend
//!   after a `NotLeader` answer does not, since the batch was not stored and
//!   only the leader moved);
//! - errors that are not retriable (`UnknownTopic`, `InvalidBatch`,
//!   `RecordTooLarge`, `StaleSequence`, `ProducerFenced`, ...) fail the
//!   receipt at once;
//! - `CorruptBatch` is retried once;
//! - a batch without a producer id (`producer_id` 0, as a caller may pass
//!   to [`Producer::send`]) is never resent once it may have reached the
//!   broker: its receipt fails instead, since a second copy would be
//!   stored twice. A `NotLeader` answer says the batch was not stored, so
//!   such a batch is resent to the leader after it like any other.
//! - after `NotLeader`, the reconnection goes first to the leader that the
//!   answer names (docs/protocol.md §4; a host name is resolved), then
//!   around the address list.
//!
//! # Silent brokers
//!
//! No call waits for ever. The connection gives up on a broker that stays
//! silent while requests wait ([`Liveness`]); a request still unanswered
//! [`ANSWER_GRACE`] after the broker's own deadline (`timeout_ms`) has
//! passed makes the producer replace the connection; and every wait
//! ([`Receipt::wait`], [`Producer::flush`], a send at `max_in_flight`)
//! fails the requests whose delivery deadline passed.
//!
//! The broker remembers the last `producer_window` (default 64) batches of
//! each producer and partition. So that every batch a resend may repeat is
//! still remembered, the producer keeps at most
//! [`ProducerConfig::max_in_flight_per_partition`] batches with a producer
//! id unanswered per partition (`send` blocks beyond it, like at
//! `max_in_flight`); it must not exceed the broker's `producer_window`.

use super::connection::{Completion, Connection, ConnectionConfig, Liveness, ResponseRef};
use super::error::ClientError;
use crate::wire::api::{NotLeaderBody, ProduceRequest, ProduceResponse};
use crate::wire::batch::{
    stamp_producer, BatchBuilder, BatchView, ProducerStamp, BATCH_HEADER_LEN,
};
use crate::wire::frame::REQUEST_HEADER_LEN;
use crate::wire::{ApiKey, ErrorCode, Qos};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default broker-side deadline of a produce request.
pub const PRODUCE_TIMEOUT_MS_DEFAULT: u32 = 30_000;
/// Default bound on produce requests awaiting their answer.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 1024;
/// Default bound on batches with a producer id awaiting their answer per
/// partition. It must not exceed the broker's `producer_window` (default
/// 64), or a resend after a failover may find its first copy forgotten and
/// be refused with `StaleSequence`.
pub const MAX_IN_FLIGHT_PER_PARTITION_DEFAULT: usize = 64;
/// Default number of tries of one request.
pub const RETRY_ATTEMPTS_MAX_DEFAULT: u32 = 10;
/// Default pause before the first reconnection; it doubles with every
/// failure in a row.
pub const RETRY_BACKOFF_MS_DEFAULT: u64 = 50;
/// The longest pause between reconnections (unless `backoff_ms` itself is
/// longer).
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Default time from a send call within which its receipt settles.
pub const RETRY_DEADLINE_MS_DEFAULT: u64 = 60_000;
/// How long past the broker's own deadline (`timeout_ms`, by which it
/// answers `Timeout` at the latest) the producer waits for an answer before
/// it takes the connection for broken and replaces it.
pub const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// How long the retry thread waits for one TCP connection.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request buffer above this capacity is freed after its answer instead
/// of kept for the next request.
const REQUEST_BUFFER_KEEP_BYTES: usize = 1024 * 1024;

const _: () = assert!(RETRY_BACKOFF_MS_DEFAULT <= RETRY_BACKOFF_MS_MAX);
const _: () = assert!(RETRY_ATTEMPTS_MAX_DEFAULT > 1);
const _: () = assert!(MAX_IN_FLIGHT_PER_PARTITION_DEFAULT > 0);
const _: () = assert!(MAX_IN_FLIGHT_PER_PARTITION_DEFAULT <= MAX_IN_FLIGHT_DEFAULT);
const _: () = assert!(RETRY_DEADLINE_MS_DEFAULT >= PRODUCE_TIMEOUT_MS_DEFAULT as u64);

/// How a producer retries a request whose connection failed or whose
/// answer is a retriable error (see the [module docs](self#retries)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Tries of one request, the first send included; 1 (or 0) turns
    /// retries off: the producer then never reconnects, and a broken
    /// connection fails its requests and every later send.
    pub attempts_max: u32,
    /// Pause before a reconnection, doubled with every failure in a row
    /// (capped at [`RETRY_BACKOFF_MS_MAX`]) and reset by a success.
    pub backoff_ms: u64,
    /// Every receipt settles within this time of its send call (the time a
    /// send waits for room counts): no try starts later, and a try under
    /// way then is given up with [`ClientError::Timeout`] (the outcome is
    /// unknown: the batch may still be stored). Keep it above
    /// [`ProducerConfig::timeout_ms`], so that a broker that is only slow
    /// can answer before.
    pub deadline_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts_max: RETRY_ATTEMPTS_MAX_DEFAULT,
            backoff_ms: RETRY_BACKOFF_MS_DEFAULT,
            deadline_ms: RETRY_DEADLINE_MS_DEFAULT,
        }
    }
}

impl RetryConfig {
    /// No retries: every request is sent once, as before retries existed.
    pub const fn none() -> RetryConfig {
        RetryConfig {
            attempts_max: 1,
            backoff_ms: RETRY_BACKOFF_MS_DEFAULT,
            deadline_ms: RETRY_DEADLINE_MS_DEFAULT,
        }
    }

    /// True when a request may be tried more than once.
    pub fn is_enabled(&self) -> bool {
        self.attempts_max > 1
    }

    /// The pause after `failures` failures in a row (at least one).
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let cap = RETRY_BACKOFF_MS_MAX.max(self.backoff_ms);
        Duration::from_millis(self.backoff_ms.saturating_mul(1 << doublings).min(cap))
    }
}

/// How a producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerConfig {
    /// The acknowledgement level of every request (DESIGN.md §2).
    pub qos: Qos,
    /// How long the broker may take to reach the QoS position before it
    /// answers `Timeout` (the data may still commit later).
    pub timeout_ms: u32,
    /// Requests sent but not yet answered; `send` blocks at this bound.
    /// Not used at QoS none, where nothing is answered.
    pub max_in_flight: usize,
    /// Batches with a producer id sent to one partition and not yet
    /// answered; `send` blocks at this bound. It must not exceed the
    /// broker's `producer_window` (default 64), so that the broker still
    /// recognises every batch a resend repeats.
    pub max_in_flight_per_partition: usize,
    /// Retries after a broken connection or a retriable error. Not used at
    /// QoS none, where nothing is answered (a send that finds the
    /// connection broken fails, and the producer reconnects meanwhile).
    pub retry: RetryConfig,
    /// When the connection gives up on a silent broker.
    pub liveness: Liveness,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            qos: Qos::All,
            timeout_ms: PRODUCE_TIMEOUT_MS_DEFAULT,
            max_in_flight: MAX_IN_FLIGHT_DEFAULT,
            max_in_flight_per_partition: MAX_IN_FLIGHT_PER_PARTITION_DEFAULT,
            retry: RetryConfig::default(),
            liveness: Liveness::default(),
        }
    }
}

/// The broker's acknowledgement of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    /// Offset of the batch's first record; `u64::MAX` at QoS none.
    pub base_offset: u64,
    /// Broker append time, Unix ms; 0 at QoS none.
    pub append_time_ms: i64,
}

impl ProduceAck {
    /// The acknowledgement of a QoS none send, which the broker never gives.
    pub const UNACKNOWLEDGED: ProduceAck = ProduceAck {
        base_offset: u64::MAX,
        append_time_ms: 0,
    };
}

/// The current time in Unix milliseconds, as record timestamps use it.
pub fn unix_time_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when a broker answer `code` to a produce says that this try
/// stored nothing: the broker refused the batch before appending it, or
/// took it back with a divergent tail (`NotLeader`). A batch without a
/// producer id may be sent again only after such an answer.
fn stored_nothing(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::NotLeader
                | ErrorCode::OutOfOrderSequence
                | ErrorCode::UnknownProducer
                | ErrorCode::StorageFull
        )
    )
}

/// True when a non-retriable broker answer `code` refused the batch by a
/// check that stores nothing and would refuse every copy of it alike, so
/// that no earlier copy can have been stored either. (`StaleSequence` may
/// answer a batch that was stored; `ProducerFenced` is not cured by a new
/// epoch of ours, the broker's is newer.)
fn refused_for_good(code: Option<ErrorCode>) -> bool {
    code.is_some_and(|c| {
        !matches!(
            c,
            ErrorCode::StaleSequence
                | ErrorCode::ProducerFenced
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
                | ErrorCode::Internal
        ) && !ClientError::Broker {
            code: c,
            message: String::new(),
        }
        .is_retriable()
    })
}

/// The outcome of one request, kept while its receipt exists.
struct Entry {
    outcome: Option<Result<ProduceAck, ClientError>>,
    /// A flush already reported this entry's error.
    reported: bool,
}

/// One connection as the producer uses it. Connections are numbered
/// (generations) so that a late answer from a replaced connection can be
/// told apart from the answer of the current try.
struct Link {
    conn: Arc<Connection>,
    generation: u64,
    /// The completion hook of every request sent on `conn`.
    hook: Arc<dyn Completion>,
}

/// The sequences of the batches with a producer id that go to one
/// partition (see the [module docs](self#sequences-and-epochs)).
struct Lane {
    /// The producer epoch of its batches.
    epoch: u32,
    /// Sequence of the next batch that joins the send queue.
    next_seq: u64,
    /// Its batches reserved or waiting for their answer, for
    /// `max_in_flight_per_partition`.
    unanswered: usize,
}

/// A request sent (or about to be sent) and not answered yet, in send
/// order.
struct Pending {
    /// The receipt's tag.
    tag: u64,
    /// The encoded Produce request body, resent unchanged but for the
    /// producer stamp.
    body: Arc<Vec<u8>>,
    /// Where the batch starts in `body` (it is the body's tail).
    batch_at: usize,
    /// Its partition's lane, and the producer fields to stamp into the
    /// batch on every send; `None` for a batch sent as it is (no producer
    /// id).
    lane: Option<(usize, ProducerStamp)>,
    /// The connection it is on; `None` while it waits to be (re)sent.
    generation: Option<u64>,
    /// A try of it may have been stored: it was sent, and no answer said
    /// otherwise. A batch without a producer id is not sent again then.
    may_be_stored: bool,
    /// Tries so far (sends and failed reconnections while it waited).
    attempts: u32,
    corrupt_retried: bool,
    /// It settles by then, answered or not.
    deadline: Instant,
    /// When the try under way should have been answered (the broker's own
    /// deadline plus [`ANSWER_GRACE`]).
    answer_by: Option<Instant>,
    /// Why its last try failed.
    last_error: Option<ClientError>,
}

#[derive(Default)]
struct TrackerState {
    next_tag: u64,
    /// Requests reserved, sent or waiting to be sent, not answered yet.
    outstanding: usize,
    /// Entries of live receipts, by receipt tag.
    receipts: HashMap<u64, Entry>,
    /// The earliest failure whose receipt was dropped unwaited, for flush.
    orphan_error: Option<(u64, ClientError)>,
    sleepers: bool,
    /// Unanswered requests in send order.
    pending: VecDeque<Pending>,
    /// Request buffers to reuse; each is held by no one else.
    pool: Vec<Arc<Vec<u8>>>,
    /// Lane index of each (topic, partition) that got a batch with a
    /// producer id.
    lane_ids: HashMap<String, HashMap<u32, usize>>,
    lanes: Vec<Lane>,
    /// The current connection; `None` while the retry thread replaces it.
    link: Option<Arc<Link>>,
    /// Failed connections for the retry thread to shut down and drop (never
    /// dropped under this lock: dropping a connection joins its reader,
    /// which may be waiting for this lock).
    retired: Vec<Arc<Link>>,
    /// Generation of the newest connection.
    generation: u64,
    /// Newest generation known to have failed.
    dead_generation: u64,
    /// The retry thread has a connection to replace.
    recovering: bool,
    /// Failures in a row, for the backoff.
    failures: u32,
    /// The broker's maximum frame size, from the latest handshake.
    max_frame_bytes: usize,
    /// The producer is being dropped: nothing is retried any more.
    closing: bool,
    /// The connection was given up over a `NotLeader` answer: the next
    /// resend follows the leader and is not counted as a try.
    leader_changed: bool,
    /// The connection was given up only to resend under a new epoch: the
    /// broker is fine, so the resend does not wait a backoff.
    renumbered: bool,
}

impl TrackerState {
    fn keep_orphan(&mut self, tag: u64, error: ClientError) {
        if self
            .orphan_error
            .as_ref()
            .is_none_or(|(first, _)| tag < *first)
        {
            self.orphan_error = Some((tag, error));
        }
    }

    /// Files the outcome of request `tag` for its receipt (or for flush).
    fn settle(&mut self, tag: u64, outcome: Result<ProduceAck, ClientError>) {
        match self.receipts.get_mut(&tag) {
            Some(entry) => entry.outcome = Some(outcome),
            None => {
                if let Err(e) = outcome {
                    self.keep_orphan(tag, e);
                }
            }
        }
    }

    fn lane(&mut self, topic: &str, partition: u32) -> usize {
        if let Some(&lane) = self.lane_ids.get(topic).and_then(|p| p.get(&partition)) {
            return lane;
        }
        let lane = self.lanes.len();
        self.lanes.push(Lane {
            epoch: 0,
            next_seq: 0,
            unanswered: 0,
        });
        self.lane_ids
            .entry(topic.to_string())
            .or_default()
            .insert(partition, lane);
        lane
    }

    /// The producer fields of the next batch of `lane` to join the queue.
    fn next_stamp(&mut self, lane: usize, producer_id: u64) -> ProducerStamp {
        let l = &mut self.lanes[lane];
        let seq = l.next_seq;
        l.next_seq += 1;
        ProducerStamp {
            id: producer_id,
            epoch: l.epoch,
            seq,
        }
    }

    /// Position of request `tag` in `pending`; answers mostly come in send
    /// order, so it is usually the first.
    fn find(&self, tag: u64) -> Option<usize> {
        self.pending.iter().position(|p| p.tag == tag)
    }

    /// True when `pending[i]` is the first unsettled batch of its lane.
    fn heads_its_lane(&self, i: usize) -> bool {
        let Some((lane, _)) = self.pending[i].lane else {
            return false;
        };
        !self
            .pending
            .iter()
            .take(i)
            .any(|p| p.lane.is_some_and(|(l, _)| l == lane))
    }

    /// Gives back what a request held: its count, its lane's, its buffer.
    fn release(&mut self, lane: Option<usize>, body: Arc<Vec<u8>>, pool_max: usize) {
        self.outstanding -= 1;
        if let Some(lane) = lane {
            self.lanes[lane].unanswered -= 1;
        }
        if body.capacity() <= REQUEST_BUFFER_KEEP_BYTES && self.pool.len() < pool_max {
            self.pool.push(body);
        }
    }

    /// Notes that the connection of `generation` failed. When it is the
    /// current one, it is retired and true is returned: the retry thread
    /// must be called.
    #[must_use]
    fn connection_failed(&mut self, generation: u64) -> bool {
        self.dead_generation = self.dead_generation.max(generation);
        if self
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            let link = self.link.take().expect("checked above");
            self.retired.push(link);
            self.recovering = true;
            self.failures += 1;
            true
        } else {
            false
        }
    }
}

/// Outstanding requests, their bytes and outcomes, and the connection they
/// go on; shared by the producer, its receipts, its retry thread and the
/// completion hooks.
struct Tracker {
    state: Mutex<TrackerState>,
    /// Senders and receipts wait here for answers.
    cond: Condvar,
    /// The retry thread waits here, apart, so that answers do not wake it.
    retry_cond: Condvar,
    retry: RetryConfig,
    max_in_flight: usize,
    max_in_flight_per_partition: usize,
    /// The broker's deadline of a produce plus [`ANSWER_GRACE`].
    answer_within: Duration,
    /// Where a broker that is not the leader said the leader is
    /// (`host:port`); the next reconnection tries it first.
    leader_hint: Mutex<Option<String>>,
    /// The last `NotLeader` named no leader: the group is electing one, so
    /// the backoff stays short (an election takes well under a second).
    electing: AtomicBool,
    /// Reconnections so far; each starts at the next address of the list,
    /// so a follower that knows no leader yet is not asked again and again.
    reconnects: AtomicUsize,
}

/// A request that holds room under the in-flight bounds and a buffer.
struct Reservation {
    tag: u64,
    body: Arc<Vec<u8>>,
    /// The partition's lane, for a batch the producer stamps.
    lane: Option<usize>,
    /// Where the batch starts in `body`, once encoded.
    batch_at: usize,
    deadline: Instant,
    /// The connection to send on (`None`: it is being replaced).
    link: Option<Arc<Link>>,
    max_frame_bytes: usize,
}

impl Tracker {
    /// Remembers the leader a `NotLeader` answer names, if it names one.
    fn note_leader(&self, body: &[u8]) {
        let hint = NotLeaderBody::decode(body);
        let named = !hint.leader_addr.is_empty();
        self.electing.store(!named, Ordering::Relaxed);
        if named {
            *lock(&self.leader_hint) = Some(hint.leader_addr.to_string());
        }
    }

    /// Waits for a change, at most until the earliest delivery deadline of
    /// the requests waiting; then fails the requests whose deadline passed,
    /// so that no waiter outlives them.
    fn wait<'a>(&self, mut s: MutexGuard<'a, TrackerState>) -> MutexGuard<'a, TrackerState> {
        s.sleepers = true;
        // Requests join `pending` in the order of their deadlines (bar a
        // race between two senders, which costs microseconds), so the
        // first is the earliest.
        let mut s = match s.pending.front().map(|p| p.deadline) {
            None => self.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.cond
                    .wait_timeout(s, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        if self.expire_overdue(&mut s, Instant::now()) {
            self.wake(&mut s);
        }
        s
    }

    /// Notes that the connection of `generation` failed and calls the
    /// retry thread when it has a connection to replace.
    fn fail_connection(&self, s: &mut TrackerState, generation: u64) {
        if s.connection_failed(generation) {
            self.retry_cond.notify_one();
        }
    }

    fn wake(&self, s: &mut TrackerState) {
        if s.sleepers {
            s.sleepers = false;
            self.cond.notify_all();
        }
    }

    /// Waits for room under `max_in_flight` (and, for a batch the producer
    /// stamps, under `max_in_flight_per_partition` for its partition), then
    /// counts a new request, opens its receipt entry and hands out a
    /// request buffer and the current connection.
    fn reserve(&self, topic: &str, partition: u32, stamped: bool) -> Reservation {
        let deadline = Instant::now() + Duration::from_millis(self.retry.deadline_ms);
        let mut s = lock(&self.state);
        let lane = stamped.then(|| s.lane(topic, partition));
        while s.outstanding >= self.max_in_flight
            || lane.is_some_and(|l| s.lanes[l].unanswered >= self.max_in_flight_per_partition)
        {
            s = self.wait(s);
        }
        s.outstanding += 1;
        if let Some(l) = lane {
            s.lanes[l].unanswered += 1;
        }
        let tag = s.next_tag;
        s.next_tag += 1;
        s.receipts.insert(
            tag,
            Entry {
                outcome: None,
                reported: false,
            },
        );
        let mut body = s.pool.pop().unwrap_or_default();
        if Arc::get_mut(&mut body).is_none() {
            // A resend still holds it for a moment; do not wait for it.
            body = Arc::default();
        }
        Reservation {
            tag,
            body,
            lane,
            batch_at: 0,
            deadline,
            link: s.link.clone(),
            max_frame_bytes: s.max_frame_bytes,
        }
    }

    /// Undoes `reserve` for a request that was never sent.
    fn cancel(&self, r: Reservation) {
        let Reservation {
            tag,
            body,
            lane,
            link,
            ..
        } = r;
        let mut s = lock(&self.state);
        s.receipts.remove(&tag);
        s.release(lane, body, self.max_in_flight);
        self.wake(&mut s);
        drop(s);
        drop(link);
    }

    /// Takes request `tag` out of `pending` and undoes its reservation,
    /// for a request whose send failed without reaching the connection.
    /// Its sequence is given back when no later batch took one, so that
    /// the next batch does not find a gap.
    fn unqueue(&self, tag: u64) {
        let mut s = lock(&self.state);
        if let Some(i) = s.find(tag) {
            let p = s.pending.remove(i).expect("found above");
            if let Some((lane, stamp)) = p.lane {
                let l = &mut s.lanes[lane];
                if l.epoch == stamp.epoch && l.next_seq == stamp.seq + 1 {
                    l.next_seq = stamp.seq;
                }
            }
            s.receipts.remove(&tag);
            s.release(p.lane.map(|(l, _)| l), p.body, self.max_in_flight);
        }
        self.wake(&mut s);
    }

    /// Removes `pending[i]` and files its outcome.
    fn finish(&self, s: &mut TrackerState, i: usize, outcome: Result<ProduceAck, ClientError>) {
        let p = s.pending.remove(i).expect("a pending request");
        s.release(p.lane.map(|(l, _)| l), p.body, self.max_in_flight);
        s.settle(p.tag, outcome);
    }

    /// Fails `pending[i]`, whose delivery deadline passed: with the error
    /// of its last try while it waits to be resent, with
    /// [`ClientError::Timeout`] (an unknown outcome) while a try is under
    /// way.
    fn give_up(&self, s: &mut TrackerState, i: usize) {
        let p = &mut s.pending[i];
        let e = match p.generation {
            Some(_) => ClientError::Timeout,
            None => p.last_error.take().unwrap_or(ClientError::Timeout),
        };
        self.finish(s, i, Err(e));
    }

    /// Whether the request at `pending[i]` may not be sent again: it has
    /// used its tries or its time, or it has no producer id and may have
    /// been stored.
    fn exhausted(&self, p: &Pending, now: Instant) -> bool {
        p.attempts >= self.retry.attempts_max.max(1)
            || now >= p.deadline
            || (p.may_be_stored && p.lane.is_none())
    }

    /// Fails the requests at the front of `pending` whose delivery deadline
    /// passed, sent or not. True when one was failed.
    fn expire_overdue(&self, s: &mut TrackerState, now: Instant) -> bool {
        let mut any = false;
        while s.pending.front().is_some_and(|p| p.deadline <= now) {
            self.give_up(s, 0);
            any = true;
        }
        any
    }

    /// Fails every waiting request that may not be sent again, and every
    /// request whose deadline passed.
    fn expire(&self, s: &mut TrackerState, now: Instant) {
        let mut i = 0;
        while i < s.pending.len() {
            let p = &s.pending[i];
            if now >= p.deadline || (p.generation.is_none() && self.exhausted(p, now)) {
                self.give_up(s, i);
            } else {
                i += 1;
            }
        }
    }

    /// Starts a new epoch for `lane`. With retries, its unsettled batches
    /// move to it: renumbered from 0 in their order and, when a connection
    /// holds them, sent again after it is replaced. Without retries they
    /// stay as they are (they will fail) and only later batches use it.
    ///
    /// Safe only when nothing of the lane from its first unsettled batch on
    /// can be stored under the old epoch (the callers' conditions).
    fn bump(&self, s: &mut TrackerState, lane: usize) {
        let Some(epoch) = s.lanes[lane].epoch.checked_add(1) else {
            // Four billion restarts of one partition's sequences: its
            // batches cannot be told apart from older ones any more.
            let mut i = 0;
            while i < s.pending.len() {
                if s.pending[i].lane.is_some_and(|(l, _)| l == lane) {
                    let e =
                        ClientError::Protocol("producer epochs of this partition exhausted".into());
                    self.finish(s, i, Err(e));
                } else {
                    i += 1;
                }
            }
            return;
        };
        s.lanes[lane].epoch = epoch;
        s.lanes[lane].next_seq = 0;
        if !self.retry.is_enabled() {
            return;
        }
        let mut seq = 0;
        let mut on_wire = None;
        for p in s.pending.iter_mut() {
            let Some((l, stamp)) = p.lane.as_mut() else {
                continue;
            };
            if *l != lane {
                continue;
            }
            stamp.epoch = epoch;
            stamp.seq = seq;
            seq += 1;
            // Its copy on the wire carries the old stamp: it must not be
            // taken for this one's answer.
            if let Some(g) = p.generation.take() {
                on_wire = Some(g);
            }
        }
        s.lanes[lane].next_seq = seq;
        if let Some(g) = on_wire {
            s.renumbered = true;
            self.fail_connection(s, g);
        }
    }

    /// Files the answer (or failure) of request `tag` sent on the
    /// connection of `generation`; called by that connection's hook.
    fn complete(&self, generation: u64, tag: u64, outcome: Result<ProduceAck, ClientError>) {
        let mut s = lock(&self.state);
        // Not found: a second answer to a request already settled (by an
        // earlier connection, or given up).
        if let Some(i) = s.find(tag) {
            let current = s.pending[i].generation == Some(generation);
            match outcome {
                Ok(ack) => {
                    if current {
                        s.failures = 0;
                    }
                    self.finish(&mut s, i, Ok(ack));
                }
                // A try the request has left (it was resent, or renumbered
                // under a new epoch) says nothing about the next one.
                Err(_) if !current => {}
                Err(e) => self.refused(&mut s, i, generation, e),
            }
        }
        self.wake(&mut s);
    }

    /// Handles an error answer (or a failed connection) for the try of
    /// `pending[i]` on the connection of `generation`.
    fn refused(&self, s: &mut TrackerState, i: usize, generation: u64, e: ClientError) {
        let code = e.code();
        let lane = s.pending[i].lane.map(|(l, stamp)| (l, stamp.epoch));
        let head = s.heads_its_lane(i);
        let gap = matches!(
            code,
            Some(ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducer)
        );
        let retrying = self.retry.is_enabled() && !s.closing;
        if let Some((l, epoch)) = lane.filter(|_| gap && head) {
            // Nothing of this lane from here on is stored under its epoch.
            if epoch == s.lanes[l].epoch {
                self.bump(s, l);
            }
            if retrying {
                let p = &mut s.pending[i];
                p.generation = None;
                p.last_error = Some(e);
                s.renumbered = true;
                self.fail_connection(s, generation);
            } else {
                self.finish(s, i, Err(e));
            }
            return;
        }
        let p = &s.pending[i];
        let corrupt = code == Some(ErrorCode::CorruptBatch);
        // A gap answer for a later batch of its lane: resend from the gap.
        let retriable = e.is_retriable() || (gap && lane.is_some());
        let not_stored = stored_nothing(code);
        let retry = retrying
            && retriable
            && (lane.is_some() || not_stored)
            && !(corrupt && p.corrupt_retried);
        if retry {
            s.leader_changed |= code == Some(ErrorCode::NotLeader);
            let p = &mut s.pending[i];
            p.corrupt_retried |= corrupt;
            p.generation = None;
            if not_stored {
                p.may_be_stored = false;
            }
            p.last_error = Some(e);
            self.fail_connection(s, generation);
            return;
        }
        let for_good = refused_for_good(code);
        self.finish(s, i, Err(e));
        // The batches behind a batch that will never be stored would wait
        // for it for ever: they move to a new epoch.
        if let Some((l, epoch)) = lane {
            if head && for_good && epoch == s.lanes[l].epoch {
                self.bump(s, l);
            }
        }
    }
}

/// The completion hook of the requests on one connection.
struct GenerationHook {
    tracker: Arc<Tracker>,
    generation: u64,
}

impl Completion for GenerationHook {
    fn complete(&self, tag: u64, response: Result<ResponseRef<'_>, ClientError>) {
        if let Ok(r) = &response {
            if r.header.error_code == ErrorCode::NotLeader.as_u16() {
                self.tracker.note_leader(r.body);
            }
        }
        let outcome = response.and_then(|r| {
            let r = r.into_result()?;
            let p = ProduceResponse::decode(r.body)?;
            Ok(ProduceAck {
                base_offset: p.base_offset,
                append_time_ms: p.append_time_ms,
            })
        });
        self.tracker.complete(self.generation, tag, outcome);
    }
}

fn new_link(tracker: &Arc<Tracker>, conn: Connection, generation: u64) -> Arc<Link> {
    Arc::new(Link {
        conn: Arc::new(conn),
        generation,
        hook: Arc::new(GenerationHook {
            tracker: Arc::clone(tracker),
            generation,
        }),
    })
}

/// Writes one try of a request into a frame: the body as it was encoded,
/// with the producer fields of the try stamped into its batch (which
/// recomputes the batch's producer checksum).
fn encode_try(out: &mut Vec<u8>, body: &[u8], batch_at: usize, stamp: Option<ProducerStamp>) {
    let at = out.len();
    out.extend_from_slice(body);
    if let Some(stamp) = stamp {
        stamp_producer(&mut out[at + batch_at..], stamp);
    }
}

/// Sends record batches to the broker, pipelined on one connection. All
/// methods take `&self`, so one producer can be shared by threads.
///
/// With retries (the default), a thread of the producer replaces a broken
/// connection, and keeps trying every [`RETRY_BACKOFF_MS_MAX`] ms while the
/// broker stays away. Dropping the producer closes its connection, fails
/// the receipts still waiting with [`ClientError::Closed`], and waits for
/// that thread, which may be in the middle of a reconnection (a TCP
/// connection of at most 5 s and a handshake of at most
/// [`HANDSHAKE_TIMEOUT`](super::connection::HANDSHAKE_TIMEOUT)).
pub struct Producer {
    config: ProducerConfig,
    tracker: Arc<Tracker>,
    builder: Mutex<BatchBuilder>,
    /// This producer's identity in the batches it stamps, so the broker
    /// can recognise a retried batch and store it once.
    producer_id: u64,
    /// Where the broker is; reconnections try them in order.
    addrs: Vec<SocketAddr>,
    /// Reconnects and resends; only when retries are enabled.
    retry_thread: Option<JoinHandle<()>>,
}

/// A producer id that is random enough to be unique among a broker's
/// producers (never 0, which means "no identity").
fn new_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("conn", &self.connection())
            .field("addrs", &self.addrs)
            .field("config", &self.config)
            .finish()
    }
}

impl Producer {
    /// Connects to the broker at `addr` (every address it resolves to is
    /// kept for reconnections; the first that answers is used).
    ///
    /// # Errors
    /// As [`Connection::connect`]; [`ClientError::Io`] with kind
    /// `InvalidInput` when `addr` resolves to nothing.
    pub fn connect(
        addr: impl ToSocketAddrs,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        let config = ProducerConfig {
            max_in_flight: config.max_in_flight.max(1),
            max_in_flight_per_partition: config.max_in_flight_per_partition.max(1),
            ..config
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the broker address resolves to nothing",
            )));
        }
        let conn_config = ConnectionConfig {
            in_flight_max: config
                .max_in_flight
                .max(super::connection::IN_FLIGHT_MAX_DEFAULT),
            liveness: config.liveness,
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect_with(&addrs[..], &conn_config)?;
        let tracker = Arc::new(Tracker {
            state: Mutex::new(TrackerState {
                generation: 1,
                max_frame_bytes: conn.max_frame_bytes(),
                ..TrackerState::default()
            }),
            cond: Condvar::new(),
            retry_cond: Condvar::new(),
            retry: config.retry,
            max_in_flight: config.max_in_flight,
            max_in_flight_per_partition: config.max_in_flight_per_partition,
            answer_within: Duration::from_millis(u64::from(config.timeout_ms)) + ANSWER_GRACE,
            leader_hint: Mutex::new(None),
            electing: AtomicBool::new(false),
            reconnects: AtomicUsize::new(0),
        });
        lock(&tracker.state).link = Some(new_link(&tracker, conn, 1));
        let retry_thread = if config.retry.is_enabled() {
            let shared = Arc::clone(&tracker);
            let addrs = addrs.clone();
            let spawned = std::thread::Builder::new()
                .name("hutong-producer-retry".into())
                .spawn(move || retry_loop(&shared, &addrs, &conn_config));
            match spawned {
                Ok(t) => Some(t),
                Err(e) => {
                    close_tracker(&tracker);
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        Ok(Producer {
            config,
            tracker,
            builder: Mutex::new(BatchBuilder::new()),
            producer_id: new_producer_id(),
            addrs,
            retry_thread,
        })
    }

    /// The producer's configuration.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// The addresses the producer (re)connects to, in the order it tries
    /// them.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The connection requests go on now; `None` while the producer is
    /// reconnecting. It may be replaced at any time.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        let link = lock(&self.tracker.state).link.clone();
        link.map(|l| Arc::clone(&l.conn))
    }

    /// The producer id stamped into the batches it sends with a producer
    /// id.
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// The epoch and the next sequence of `topic`/`partition` (`None`
    /// before its first batch with a producer id): for tests and
    /// diagnostics.
    pub fn sequence_of(&self, topic: &str, partition: u32) -> Option<(u32, u64)> {
        let s = lock(&self.tracker.state);
        let lane = *s.lane_ids.get(topic)?.get(&partition)?;
        let l = &s.lanes[lane];
        Some((l.epoch, l.next_seq))
    }

    /// Requests sent and not answered yet (including those waiting to be
    /// resent).
    pub fn outstanding(&self) -> usize {
        lock(&self.tracker.state).outstanding
    }

    /// Sends one finished batch (from [`BatchBuilder::finish`]) to
    /// `topic`/`partition` and returns its receipt without waiting for the
    /// answer. Blocks while `max_in_flight` requests (or
    /// `max_in_flight_per_partition` batches with a producer id for this
    /// partition) await their answer. At QoS none the receipt is complete
    /// at once.
    ///
    /// A batch finished with any non-zero producer id is made idempotent
    /// and ordered by the producer: it stamps its own producer id, the
    /// partition's epoch and next sequence into it (recomputing its
    /// checksum), and may resend it. A batch finished with producer id 0 is
    /// sent as it is, and resent only after an answer that says it was not
    /// stored (`NotLeader`); its receipt fails instead when its fate is
    /// unknown. At QoS none every batch goes without producer id: nothing
    /// is answered, so nothing could be resent.
    ///
    /// # Errors
    /// [`ClientError::FrameTooLarge`] (nothing sent). Without retries,
    /// connection errors ([`ClientError::Closed`], [`ClientError::Io`]);
    /// the request was then not sent, or its fate is unknown. With
    /// retries, a broken connection is not an error here: the request
    /// waits for the reconnection, and its receipt tells the outcome. At
    /// QoS none, connection errors. Broker answers come through the
    /// receipt.
    pub fn send(&self, topic: &str, partition: u32, batch: &[u8]) -> Result<Receipt, ClientError> {
        let request = ProduceRequest {
            topic,
            partition,
            qos: self.config.qos as u8,
            timeout_ms: self.config.timeout_ms,
            batch,
        };
        let stamped = batch.len() >= BATCH_HEADER_LEN && BatchView(batch).producer_id() != 0;
        if self.config.qos == Qos::None {
            return self.send_unanswered(&request, stamped);
        }
        let mut r = self.tracker.reserve(topic, partition, stamped);
        encode_into(&mut r, &request);
        self.submit(r)
    }

    /// Builds one batch of `(key, value)` records stamped with the current
    /// time and sends it like [`Producer::send`] sends a batch with a
    /// producer id: idempotent and in order. Sending it again (a retry)
    /// stores it once: the broker answers with the first copy's offset.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] for an empty `records`; as [`Producer::send`].
    pub fn send_records(
        &self,
        topic: &str,
        partition: u32,
        records: &[(&[u8], &[u8])],
    ) -> Result<Receipt, ClientError> {
        if records.is_empty() {
            return Err(ClientError::Protocol(
                "a batch needs at least one record".into(),
            ));
        }
        let answered = self.config.qos != Qos::None;
        // Room first, so that no thread waits while holding the builder.
        let mut reserved = answered.then(|| self.tracker.reserve(topic, partition, true));
        let now = unix_time_ms();
        let mut builder = lock(&self.builder);
        builder.clear();
        for (key, value) in records {
            builder.push(now, key, value, &[]);
        }
        // The sequence is stamped when the batch joins the send queue.
        let producer_id = if answered { self.producer_id } else { 0 };
        let request = ProduceRequest {
            topic,
            partition,
            qos: self.config.qos as u8,
            timeout_ms: self.config.timeout_ms,
            batch: builder.finish(producer_id, 0),
        };
        match reserved.as_mut() {
            None => self.send_unanswered(&request, false),
            Some(r) => {
                encode_into(r, &request);
                drop(builder);
                self.submit(reserved.expect("matched above"))
            }
        }
    }

    /// Sends a QoS none request on the current connection, without
    /// producer id (a `stamped` batch has it cleared). A failed send calls
    /// the retry thread, so later sends find a new connection.
    fn send_unanswered(
        &self,
        request: &ProduceRequest<'_>,
        stamped: bool,
    ) -> Result<Receipt, ClientError> {
        let link = lock(&self.tracker.state).link.clone();
        let Some(link) = link else {
            return Err(ClientError::Closed);
        };
        let sent = link.conn.send_no_reply(ApiKey::Produce, |out| {
            let at = out.len();
            request.encode(out);
            if stamped {
                let batch_at = out.len() - request.batch.len();
                debug_assert!(batch_at >= at);
                stamp_producer(&mut out[batch_at..], ProducerStamp::default());
            }
        });
        if let Err(e) = sent {
            if self.config.retry.is_enabled() && e.is_retriable() {
                let mut s = lock(&self.tracker.state);
                self.tracker.fail_connection(&mut s, link.generation);
                self.tracker.wake(&mut s);
            }
            return Err(e);
        }
        Ok(Receipt {
            tag: 0,
            tracker: None,
        })
    }

    /// A new entry of `pending` for reservation `r`, on the connection of
    /// `generation` (sent now) or on none (queued for the retry thread).
    /// A batch the producer stamps takes its lane's next sequence here, so
    /// that sequences follow the order of `pending`, which is the order of
    /// the wire.
    fn pending_of(
        &self,
        s: &mut TrackerState,
        r: &Reservation,
        generation: Option<u64>,
        error: Option<ClientError>,
    ) -> Pending {
        let lane = r.lane.map(|l| (l, s.next_stamp(l, self.producer_id)));
        Pending {
            tag: r.tag,
            body: Arc::clone(&r.body),
            batch_at: r.batch_at,
            lane,
            generation,
            may_be_stored: generation.is_some(),
            attempts: u32::from(generation.is_some()),
            corrupt_retried: false,
            deadline: r.deadline,
            answer_by: generation.map(|_| Instant::now() + self.tracker.answer_within),
            last_error: error,
        }
    }

    /// Sends a reserved, encoded request, or queues it for the retry
    /// thread when the connection is being replaced.
    ///
    /// The request joins `pending` while its connection's writing side is
    /// locked, so `pending` is in wire order, and before its completion is
    /// registered, so its hook always finds it.
    fn submit(&self, mut r: Reservation) -> Result<Receipt, ClientError> {
        let tag = r.tag;
        let bytes = REQUEST_HEADER_LEN + r.body.len();
        if bytes > r.max_frame_bytes {
            let max = r.max_frame_bytes;
            self.tracker.cancel(r);
            return Err(ClientError::FrameTooLarge { bytes, max });
        }
        let retry = self.config.retry.is_enabled();
        let mut last_error = ClientError::Closed;
        loop {
            let Some(link) = r.link.take() else {
                let mut s = lock(&self.tracker.state);
                if let Some(current) = s.link.clone() {
                    drop(s);
                    r.link = Some(current);
                    continue;
                }
                if !retry {
                    drop(s);
                    self.tracker.cancel(r);
                    return Err(last_error);
                }
                // The retry thread is replacing the connection (a missing
                // link always means that): it sends this after the resends.
                let p = self.pending_of(&mut s, &r, None, Some(last_error));
                s.pending.push_back(p);
                self.tracker.wake(&mut s);
                return Ok(self.receipt(tag));
            };
            let pipe = match link.conn.pipeline() {
                Ok(pipe) => Some(pipe),
                Err(e) => {
                    last_error = e;
                    None
                }
            };
            // (Every `continue` and `return` below drops `link` after the
            // tracker lock is released: dropping the last handle of a
            // connection joins its reader thread, which may need the lock.)
            let Some(mut pipe) = pipe else {
                if !retry {
                    self.tracker.cancel(r);
                    return Err(last_error);
                }
                // Closed, and perhaps no one noticed yet.
                let mut s = lock(&self.tracker.state);
                self.tracker.fail_connection(&mut s, link.generation);
                self.tracker.wake(&mut s);
                drop(s);
                continue;
            };
            let mut s = lock(&self.tracker.state);
            if s.link
                .as_ref()
                .is_none_or(|l| l.generation != link.generation)
            {
                // Replaced since the reservation: look again.
                drop(s);
                continue;
            }
            let p = self.pending_of(&mut s, &r, Some(link.generation), None);
            let (batch_at, stamp) = (p.batch_at, p.lane.map(|(_, stamp)| stamp));
            s.pending.push_back(p);
            drop(s);
            let sent = pipe.send_with_completion(
                ApiKey::Produce,
                |out| encode_try(out, &r.body, batch_at, stamp),
                &link.hook,
                tag,
            );
            // Dropping the pipeline writes the frame; a failed write
            // closes the connection, whose reader then calls the hook.
            drop(pipe);
            return match sent {
                Ok(()) => Ok(self.receipt(tag)),
                // Nothing was registered, so no hook comes for it: it waits
                // for the retry thread.
                Err(e) if retry && e.is_retriable() => {
                    let mut s = lock(&self.tracker.state);
                    if let Some(i) = s.find(tag) {
                        let p = &mut s.pending[i];
                        p.generation = None;
                        p.may_be_stored = false;
                        p.last_error = Some(e);
                    }
                    self.tracker.fail_connection(&mut s, link.generation);
                    self.tracker.wake(&mut s);
                    Ok(self.receipt(tag))
                }
                Err(e) => {
                    self.tracker.unqueue(tag);
                    Err(e)
                }
            };
        }
    }

    fn receipt(&self, tag: u64) -> Receipt {
        Receipt {
            tag,
            tracker: Some(Arc::clone(&self.tracker)),
        }
    }

    /// Waits until every request sent so far (and any sent by other threads
    /// meanwhile) is answered or given up at its deadline, then returns the
    /// first failure, in send order, that no [`Receipt::wait`] and no
    /// earlier flush has reported. Requests being retried are waited for
    /// until their retries end.
    ///
    /// At QoS none nothing is answered on success: flush makes a Ping round
    /// trip, which reads every answer the broker sent before it, and
    /// returns the first error answer that arrived since the last flush.
    /// A failure the broker reports only after that is left for the next
    /// flush.
    ///
    /// # Errors
    /// The first unreported failure; connection errors of the Ping.
    pub fn flush(&self) -> Result<(), ClientError> {
        if self.config.qos == Qos::None {
            let link = lock(&self.tracker.state).link.clone();
            let conn = link.as_ref().ok_or(ClientError::Closed)?;
            conn.conn.call(ApiKey::Ping, |_| {})?.into_result()?;
            return match conn.conn.take_unsolicited_error() {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        let mut s = lock(&self.tracker.state);
        while s.outstanding > 0 {
            s = self.tracker.wait(s);
        }
        let mut first = s.orphan_error.take();
        for (tag, entry) in s.receipts.iter_mut() {
            if let Some(Err(e)) = &entry.outcome {
                if !entry.reported {
                    entry.reported = true;
                    if first.as_ref().is_none_or(|(f, _)| tag < f) {
                        first = Some((*tag, e.duplicate()));
                    }
                }
            }
        }
        match first {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

/// Encodes `request` into the reservation's buffer.
fn encode_into(r: &mut Reservation, request: &ProduceRequest<'_>) {
    let body = Arc::get_mut(&mut r.body).expect("a reserved buffer is not shared");
    body.clear();
    request.encode(body);
    // The batch is the rest of a Produce body.
    r.batch_at = body.len() - request.batch.len();
}

impl Drop for Producer {
    fn drop(&mut self) {
        close_tracker(&self.tracker);
        if let Some(t) = self.retry_thread.take() {
            let _ = t.join();
        }
        // The retry thread may have left requests unsent.
        fail_all_pending(&self.tracker);
    }
}

/// Stops retrying and closes the connections: requests on them fail with
/// [`ClientError::Closed`]. Breaks the cycle tracker → link → hook →
/// tracker.
fn close_tracker(tracker: &Tracker) {
    let (link, retired) = {
        let mut s = lock(&tracker.state);
        s.closing = true;
        tracker.wake(&mut s);
        tracker.retry_cond.notify_one();
        (s.link.take(), std::mem::take(&mut s.retired))
    };
    for l in link.iter().chain(retired.iter()) {
        l.conn.shutdown();
    }
    // Outside the lock: dropping the last handle joins the reader, whose
    // close sweep calls the hooks.
    drop(link);
    drop(retired);
    fail_all_pending(tracker);
}

fn fail_all_pending(tracker: &Tracker) {
    let mut s = lock(&tracker.state);
    while !s.pending.is_empty() {
        tracker.finish(&mut s, 0, Err(ClientError::Closed));
    }
    tracker.wake(&mut s);
}

/// The retry thread: waits for a failed connection (or a request the
/// current one leaves unanswered too long), then backs off, reconnects and
/// resends until the connection is replaced, and again.
fn retry_loop(tracker: &Arc<Tracker>, addrs: &[SocketAddr], config: &ConnectionConfig) {
    let mut resend = Vec::new();
    loop {
        let retired = {
            let mut s = lock(&tracker.state);
            while !s.recovering && !s.closing {
                s = watch_answers(tracker, s);
            }
            if s.closing {
                return;
            }
            std::mem::take(&mut s.retired)
        };
        // Its requests fail (and are marked for resending) as the reader
        // notices; the resend below does not wait for that.
        for link in &retired {
            link.conn.shutdown();
        }
        drop(retired);
        if !back_off(tracker) {
            return;
        }
        match reconnect(tracker, addrs, config) {
            Ok(conn) => resume(tracker, conn, &mut resend),
            Err(e) => reconnect_failed(tracker, e),
        }
    }
}

/// Waits for the retry thread's next job, at most until the first request
/// on the current connection is due for an answer; a request still
/// unanswered then means the broker broke its promise to answer by its
/// deadline, so the connection is given up (the requests are resent on
/// another one).
fn watch_answers<'a>(
    tracker: &Tracker,
    mut s: MutexGuard<'a, TrackerState>,
) -> MutexGuard<'a, TrackerState> {
    let current = s.link.as_ref().map(|l| l.generation);
    let due = s
        .pending
        .iter()
        .filter(|p| current.is_some() && p.generation == current)
        .filter_map(|p| p.answer_by)
        .min();
    let now = Instant::now();
    match (current, due) {
        (Some(generation), Some(due)) if due <= now => {
            if let Some(p) = s
                .pending
                .iter_mut()
                .find(|p| p.generation == Some(generation) && p.answer_by.is_some_and(|a| a <= now))
            {
                p.last_error = Some(ClientError::Timeout);
            }
            tracker.fail_connection(&mut s, generation);
            s
        }
        (_, Some(due)) => {
            tracker
                .retry_cond
                .wait_timeout(s, due - now)
                .unwrap_or_else(|p| p.into_inner())
                .0
        }
        // Requests sent meanwhile do not wake this thread: it looks again
        // soon enough that a late answer is noticed within twice the grace.
        (_, None) => {
            tracker
                .retry_cond
                .wait_timeout(s, ANSWER_GRACE)
                .unwrap_or_else(|p| p.into_inner())
                .0
        }
    }
}

/// Sleeps the backoff, failing the requests whose tries or time run out
/// meanwhile. False when the producer is closing.
fn back_off(tracker: &Tracker) -> bool {
    let mut s = lock(&tracker.state);
    if std::mem::take(&mut s.renumbered) {
        // Not a failure of the broker: resend at once.
        s.failures = s.failures.saturating_sub(1);
        tracker.expire(&mut s, Instant::now());
        tracker.wake(&mut s);
        return !s.closing;
    }
    // After a leader change the pause stays at its shortest: straight to a
    // named leader, or asking again while the group elects one (a new
    // leader is named within an election timeout, 250-500 ms by default).
    let leader_changing =
        lock(&tracker.leader_hint).is_some() || tracker.electing.swap(false, Ordering::Relaxed);
    let failures = if leader_changing {
        1
    } else {
        s.failures.max(1)
    };
    let until = Instant::now() + tracker.retry.backoff(failures);
    loop {
        if s.closing {
            return false;
        }
        let now = Instant::now();
        tracker.expire(&mut s, now);
        tracker.wake(&mut s);
        if now >= until {
            return true;
        }
        let next = s
            .pending
            .iter()
            .map(|p| p.deadline)
            .fold(until, Instant::min);
        s = tracker
            .retry_cond
            .wait_timeout(s, next.saturating_duration_since(now))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Connects to the leader a broker named last, if any (every address its
/// `host:port` resolves to), else to the first of `addrs` that answers,
/// starting one further along the list each time.
fn reconnect(
    tracker: &Tracker,
    addrs: &[SocketAddr],
    config: &ConnectionConfig,
) -> Result<Connection, ClientError> {
    let mut last = ClientError::Closed;
    let hint = lock(&tracker.leader_hint).take();
    let named: Vec<SocketAddr> = match hint.as_deref().map(ToSocketAddrs::to_socket_addrs) {
        Some(Ok(resolved)) => resolved.collect(),
        Some(Err(e)) => {
            last = ClientError::Io(e);
            Vec::new()
        }
        None => Vec::new(),
    };
    let turn = tracker.reconnects.fetch_add(1, Ordering::Relaxed);
    let rotated = (0..addrs.len()).map(|i| &addrs[(turn + i) % addrs.len()]);
    for addr in named.iter().chain(rotated) {
        match Connection::connect_timeout_with(addr, RECONNECT_TIMEOUT, config) {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A failed reconnection counts as a try of every waiting request; a
/// reconnection that cannot succeed (a broker speaking another protocol)
/// fails them all.
fn reconnect_failed(tracker: &Tracker, e: ClientError) {
    let mut s = lock(&tracker.state);
    s.failures += 1;
    let hopeless = !e.is_retriable();
    for p in s.pending.iter_mut().filter(|p| p.generation.is_none()) {
        p.attempts += 1;
        if hopeless {
            p.attempts = p.attempts.max(tracker.retry.attempts_max);
        }
        p.last_error = Some(e.duplicate());
    }
    tracker.expire(&mut s, Instant::now());
    tracker.wake(&mut s);
}

/// One request to resend: its tag, bytes, where its batch starts and the
/// producer fields of this try.
type Resend = (u64, Arc<Vec<u8>>, usize, Option<ProducerStamp>);

/// Resends every unanswered request on `conn`, in order, then makes it the
/// producer's connection. Requests queued meanwhile are sent after them;
/// the connection is published only when nothing is left to send, while
/// its writing side is still locked, so nothing overtakes a resend.
fn resume(tracker: &Arc<Tracker>, conn: Connection, resend: &mut Vec<Resend>) {
    let (generation, counts) = {
        let mut s = lock(&tracker.state);
        s.generation += 1;
        // A resend after `NotLeader` goes to where the leader now is; it is
        // not a try of an uncertain outcome, so it does not count toward
        // `attempts_max` (the deadline still bounds it).
        (s.generation, !std::mem::take(&mut s.leader_changed))
    };
    let link = new_link(tracker, conn, generation);
    let Ok(mut pipe) = link.conn.pipeline() else {
        lock(&tracker.state).failures += 1;
        return;
    };
    loop {
        let mut s = lock(&tracker.state);
        if s.closing {
            break;
        }
        if s.dead_generation >= generation {
            // It failed already; the requests on it are waiting again.
            s.failures += 1;
            for p in s
                .pending
                .iter_mut()
                .filter(|p| p.generation == Some(generation))
            {
                p.generation = None;
            }
            break;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < s.pending.len() {
            let p = &s.pending[i];
            if p.generation == Some(generation) {
                i += 1;
                continue;
            }
            if tracker.exhausted(p, now) {
                tracker.give_up(&mut s, i);
                continue;
            }
            let p = &mut s.pending[i];
            p.generation = Some(generation);
            p.may_be_stored = true;
            p.answer_by = Some(now + tracker.answer_within);
            if counts {
                p.attempts += 1;
            }
            resend.push((
                p.tag,
                Arc::clone(&p.body),
                p.batch_at,
                p.lane.map(|(_, stamp)| stamp),
            ));
            i += 1;
        }
        if resend.is_empty() {
            s.max_frame_bytes = link.conn.max_frame_bytes();
            s.link = Some(Arc::clone(&link));
            s.recovering = false;
            tracker.wake(&mut s);
            drop(s);
            // Writes what is buffered; senders may follow.
            drop(pipe);
            return;
        }
        tracker.wake(&mut s);
        drop(s);
        for (tag, body, batch_at, stamp) in resend.drain(..) {
            let sent = pipe.send_with_completion(
                ApiKey::Produce,
                |out| encode_try(out, &body, batch_at, stamp),
                &link.hook,
                tag,
            );
            if let Err(e) = sent {
                // Not registered: no hook comes for it.
                let mut s = lock(&tracker.state);
                if let Some(i) = s.find(tag) {
                    if e.is_retriable() {
                        s.pending[i].generation = None;
                        s.pending[i].may_be_stored = false;
                        s.pending[i].last_error = Some(e);
                        s.dead_generation = s.dead_generation.max(generation);
                    } else {
                        // Above the new broker's frame limit, say.
                        tracker.finish(&mut s, i, Err(e));
                        tracker.wake(&mut s);
                    }
                }
            }
        }
        // A failed write closes the connection; its hooks then mark it dead.
        let _ = pipe.flush();
    }
    resend.clear();
    drop(pipe);
    link.conn.shutdown();
}

/// The claim on one produce request's acknowledgement. Dropping it
/// unwaited leaves a failure for [`Producer::flush`] to report.
pub struct Receipt {
    tag: u64,
    /// `None` at QoS none: nothing to wait for.
    tracker: Option<Arc<Tracker>>,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("tag", &self.tag)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Receipt {
    /// Waits for the broker's answer, at most until the request's delivery
    /// deadline ([`RetryConfig::deadline_ms`] after its send call).
    ///
    /// # Errors
    /// [`ClientError::Broker`] with the broker's error (`Timeout` when the
    /// QoS position was not reached in time, `UnknownTopic`, ...),
    /// [`ClientError::Closed`] or [`ClientError::Io`] when the connection
    /// died first and the request could not be tried again,
    /// [`ClientError::Timeout`] when its deadline passed while a try was
    /// under way (it may still be stored), [`ClientError::Decode`] for a
    /// malformed answer.
    pub fn wait(mut self) -> Result<ProduceAck, ClientError> {
        let Some(tracker) = self.tracker.take() else {
            return Ok(ProduceAck::UNACKNOWLEDGED);
        };
        let mut s = lock(&tracker.state);
        loop {
            match s.receipts.get(&self.tag) {
                Some(Entry { outcome: None, .. }) => s = tracker.wait(s),
                Some(_) => {
                    let entry = s.receipts.remove(&self.tag);
                    return entry
                        .and_then(|e| e.outcome)
                        .expect("checked: the outcome is there");
                }
                None => return Err(ClientError::Protocol("receipt lost its entry".into())),
            }
        }
    }

    /// True when [`Receipt::wait`] would not block.
    pub fn is_ready(&self) -> bool {
        self.tracker.as_ref().is_none_or(|t| {
            lock(&t.state)
                .receipts
                .get(&self.tag)
                .is_none_or(|e| e.outcome.is_some())
        })
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        let Some(tracker) = self.tracker.take() else {
            return;
        };
        let mut s = lock(&tracker.state);
        if let Some(entry) = s.receipts.remove(&self.tag) {
            if let Some(Err(e)) = entry.outcome {
                if !entry.reported {
                    s.keep_orphan(self.tag, e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::{self, FakeConn, Request};
    use crate::wire::batch::{check_producer_batch, records};
    use crate::wire::ErrorCode;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Reads one produce request, checks its batch and returns it.
    /// A fake follower that answers its one produce with `NotLeader`
    /// naming node 2 at `leader_addr`.
    fn not_leader_follower(leader_addr: String) -> fake::FakeBroker {
        fake::spawn_seq(1, move |_, mut c| {
            let (req, _) = read_produce(&mut c);
            let mut body = Vec::new();
            NotLeaderBody {
                message: "not the leader",
                leader_id: 2,
                leader_addr: &leader_addr,
            }
            .encode(&mut body);
            c.reply(&req, ErrorCode::NotLeader.as_u16(), &body);
        })
    }

    fn read_produce(c: &mut FakeConn) -> (Request, u32) {
        let req = c.read_request().expect("a produce request");
        assert_eq!(req.header.api_key, ApiKey::Produce.as_u16());
        let p = ProduceRequest::decode(&req.body).unwrap();
        let count = check_producer_batch(p.batch).expect("a valid batch");
        (req, count)
    }

    fn ack(c: &mut FakeConn, req: &Request, base_offset: u64) {
        let body = ProduceResponse {
            base_offset,
            append_time_ms: 42,
        }
        .to_bytes();
        c.reply(req, 0, &body);
    }

    /// Acks every produce request with consecutive offsets.
    fn ack_all(mut c: FakeConn) {
        let mut next = 0u64;
        while let Some(req) = c.read_request() {
            if req.header.api_key == ApiKey::Ping.as_u16() {
                c.reply(&req, 0, &[]);
                continue;
            }
            let p = ProduceRequest::decode(&req.body).unwrap();
            let count = check_producer_batch(p.batch).unwrap();
            ack(&mut c, &req, next);
            next += count as u64;
        }
    }

    #[test]
    fn receipts_carry_the_base_offsets_and_the_batch_is_well_formed() {
        let broker = fake::spawn(|mut c| {
            let (req, count) = read_produce(&mut c);
            let p = ProduceRequest::decode(&req.body).unwrap();
            assert_eq!((p.topic, p.partition, count), ("orders", 2, 2));
            assert_eq!((p.qos, p.timeout_ms), (Qos::All as u8, 30_000));
            let values: Vec<_> = records(p.batch).map(|r| (r.key, r.value)).collect();
            assert_eq!(
                values,
                vec![(&b"k"[..], &b"v1"[..]), (&b""[..], &b"v2"[..])]
            );
            ack(&mut c, &req, 100);
            ack_all(c);
        });
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        let r = p
            .send_records("orders", 2, &[(b"k", b"v1"), (b"", b"v2")])
            .unwrap();
        assert_eq!(
            r.wait().unwrap(),
            ProduceAck {
                base_offset: 100,
                append_time_ms: 42
            }
        );
        p.flush().unwrap();
        assert_eq!(p.outstanding(), 0);
        drop(p);
        broker.join();
    }

    /// A broker that refuses the second of four batches for good: the
    /// producer moves the two behind it to a new epoch, and resends them on
    /// a new connection, where they are stored at offsets 1 and 2.
    fn fail_second() -> fake::FakeBroker {
        fake::spawn_seq(2, {
            let mut log = DedupLog::default();
            move |index, mut c| {
                if index == 1 {
                    ack_all_dedup(c, &mut log);
                    return;
                }
                // All four are on the wire before the first answer.
                let reqs: Vec<Request> = (0..4).map(|_| read_produce(&mut c).0).collect();
                for (i, req) in reqs.iter().enumerate() {
                    if i == 1 {
                        c.reply_error(req, ErrorCode::UnknownTopic, "unknown topic");
                    } else {
                        answer(&mut c, req, &mut log);
                    }
                }
                while c.read_request().is_some() {}
            }
        })
    }

    #[test]
    fn flush_reports_the_first_failure_of_dropped_receipts_once() {
        let broker = fail_second();
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        for _ in 0..4 {
            drop(p.send_records("t", 0, &[(b"", b"x")]).unwrap());
        }
        let err = p.flush().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn flush_reports_failures_of_receipts_still_held_but_not_twice() {
        let broker = fail_second();
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        let receipts: Vec<_> = (0..4)
            .map(|_| p.send_records("t", 0, &[(b"", b"x")]).unwrap())
            .collect();
        assert_eq!(p.flush().unwrap_err().code(), Some(ErrorCode::UnknownTopic));
        p.flush().unwrap();
        // The receipt still tells its own outcome.
        let outcomes: Vec<_> = receipts.into_iter().map(Receipt::wait).collect();
        assert!(outcomes[1].is_err());
        assert_eq!(outcomes[3].as_ref().unwrap().base_offset, 2);
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn a_failure_seen_through_its_receipt_is_not_reported_by_flush() {
        let broker = fail_second();
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        let receipts: Vec<_> = (0..4)
            .map(|_| p.send_records("t", 0, &[(b"", b"x")]).unwrap())
            .collect();
        let outcomes: Vec<_> = receipts.into_iter().map(Receipt::wait).collect();
        assert_eq!(
            outcomes[1].as_ref().unwrap_err().code(),
            Some(ErrorCode::UnknownTopic)
        );
        assert_eq!(outcomes[0].as_ref().unwrap().base_offset, 0);
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn send_blocks_while_max_in_flight_requests_await_their_answer() {
        let third_seen_early = Arc::new(AtomicBool::new(false));
        let flag = third_seen_early.clone();
        let broker = fake::spawn(move |mut c| {
            let (a, _) = read_produce(&mut c);
            let (b, _) = read_produce(&mut c);
            // Nothing more may come until one of these is answered.
            let early = c.request_arrives_within(Duration::from_millis(100));
            flag.store(early, Ordering::SeqCst);
            ack(&mut c, &a, 0);
            ack(&mut c, &b, 1);
            ack_all(c);
        });
        let config = ProducerConfig {
            max_in_flight: 2,
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let receipts: Vec<_> = (0..3)
            .map(|_| p.send_records("t", 0, &[(b"", b"x")]).unwrap())
            .collect();
        for r in receipts {
            r.wait().unwrap();
        }
        assert!(!third_seen_early.load(Ordering::SeqCst));
        drop(p);
        broker.join();
    }

    #[test]
    fn a_dead_connection_fails_receipts_and_flush_instead_of_hanging() {
        let broker = fake::spawn(|mut c| {
            read_produce(&mut c);
            read_produce(&mut c);
        });
        let config = ProducerConfig {
            retry: RetryConfig::none(),
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let kept = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        drop(p.send_records("t", 0, &[(b"", b"y")]).unwrap());
        broker.join();
        assert!(matches!(kept.wait(), Err(ClientError::Closed)));
        assert!(matches!(p.flush(), Err(ClientError::Closed)));
        assert!(matches!(
            p.send_records("t", 0, &[(b"", b"z")]),
            Err(ClientError::Closed)
        ));
        assert_eq!(
            p.sequence_of("t", 0),
            Some((0, 2)),
            "a send that failed took no sequence"
        );
    }

    #[test]
    fn qos_none_receipts_are_complete_and_flush_reports_error_answers() {
        let broker = fake::spawn(|mut c| {
            let (req, _) = read_produce(&mut c);
            let p = ProduceRequest::decode(&req.body).unwrap();
            assert_eq!(p.qos, Qos::None as u8);
            // Nothing is answered, so nothing could be resent: no producer
            // id, and no sequence for the broker to hold the next ones to.
            assert_eq!(stamp_of(&req.body), ProducerStamp::default());
            let (req, _) = read_produce(&mut c);
            c.reply_error(&req, ErrorCode::UnknownPartition, "no partition 9");
            ack_all(c);
        });
        let config = ProducerConfig {
            qos: Qos::None,
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert!(r.is_ready());
        assert_eq!(r.wait().unwrap(), ProduceAck::UNACKNOWLEDGED);
        p.send_records("t", 9, &[(b"", b"x")]).unwrap();
        let err = p.flush().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownPartition));
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn an_empty_record_list_is_refused() {
        let broker = fake::spawn(ack_all);
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        assert!(matches!(
            p.send_records("t", 0, &[]),
            Err(ClientError::Protocol(_))
        ));
        drop(p);
        broker.join();
    }

    #[test]
    fn many_threads_share_one_producer() {
        let broker = fake::spawn(ack_all);
        let config = ProducerConfig {
            max_in_flight: 8,
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        drop(p.send_records("t", 0, &[(b"", b"x")]).unwrap());
                    }
                });
            }
        });
        p.flush().unwrap();
        let last = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(last.wait().unwrap().base_offset, 2000);
        drop(p);
        broker.join();
    }

    // ----- Retries -----

    /// The partitions of a fake broker, with the broker's sequence rules
    /// (docs/protocol.md §9.1): per (partition, producer id) an epoch and
    /// the base offset of each stored sequence; a repeat is answered like
    /// the first copy, anything but the next sequence is refused.
    #[derive(Default)]
    struct DedupLog {
        /// Next offset of each partition.
        next_offset: HashMap<u32, u64>,
        /// Per (partition, producer id): its epoch and the base offset of
        /// each of its sequences in that epoch.
        producers: HashMap<(u32, u64), (u32, Vec<u64>)>,
        /// The first record value of every stored batch, per partition, in
        /// offset order.
        stored: HashMap<u32, Vec<Vec<u8>>>,
    }

    impl DedupLog {
        /// Stores the batch of a produce request body (once, in sequence
        /// order) and returns its base offset, or the broker's refusal.
        fn try_store(&mut self, body: &[u8]) -> Result<u64, ErrorCode> {
            let p = ProduceRequest::decode(body).unwrap();
            let count = check_producer_batch(p.batch).unwrap() as u64;
            let stamp = BatchView(p.batch).producer();
            assert_ne!(stamp.id, 0, "only stamped batches go to a dedup log");
            let (epoch, seqs) = self
                .producers
                .entry((p.partition, stamp.id))
                .or_insert((stamp.epoch, Vec::new()));
            if seqs.is_empty() && stamp.seq != 0 {
                return Err(ErrorCode::UnknownProducer);
            }
            if stamp.epoch < *epoch {
                return Err(ErrorCode::ProducerFenced);
            }
            if stamp.epoch > *epoch {
                if stamp.seq != 0 {
                    return Err(ErrorCode::OutOfOrderSequence);
                }
                *epoch = stamp.epoch;
                seqs.clear();
            }
            if let Some(&first) = seqs.get(stamp.seq as usize) {
                return Ok(first);
            }
            if stamp.seq as usize != seqs.len() {
                return Err(ErrorCode::OutOfOrderSequence);
            }
            let next = self.next_offset.entry(p.partition).or_default();
            let base = *next;
            *next += count;
            seqs.push(base);
            let value = records(p.batch).next().unwrap().value.to_vec();
            self.stored.entry(p.partition).or_default().push(value);
            Ok(base)
        }

        /// As [`DedupLog::try_store`], for a batch that must be stored.
        fn store(&mut self, body: &[u8]) -> u64 {
            self.try_store(body)
                .unwrap_or_else(|code| panic!("refused with {code}"))
        }

        /// Batches stored in all partitions.
        fn len(&self) -> usize {
            self.stored.values().map(Vec::len).sum()
        }
    }

    /// Answers `req` as `log` does.
    fn answer(c: &mut FakeConn, req: &Request, log: &mut DedupLog) {
        match log.try_store(&req.body) {
            Ok(offset) => ack(c, req, offset),
            Err(code) => c.reply_error(req, code, "refused"),
        }
    }

    /// The producer fields of a produce request's batch.
    fn stamp_of(body: &[u8]) -> ProducerStamp {
        BatchView(ProduceRequest::decode(body).unwrap().batch).producer()
    }

    /// The producer id and sequence number of a produce request's batch.
    fn id_and_seq(body: &[u8]) -> (u64, u64) {
        let stamp = stamp_of(body);
        (stamp.id, stamp.seq)
    }

    /// The first record value of a produce request's batch.
    fn value_of(body: &[u8]) -> Vec<u8> {
        let p = ProduceRequest::decode(body).unwrap();
        records(p.batch).next().unwrap().value.to_vec()
    }

    /// Retries with short pauses, so tests run quickly.
    fn quick_retry(attempts_max: u32) -> ProducerConfig {
        ProducerConfig {
            retry: RetryConfig {
                attempts_max,
                backoff_ms: 5,
                deadline_ms: 30_000,
            },
            ..ProducerConfig::default()
        }
    }

    /// A fake connection that answers every produce request as `log` does
    /// until the client leaves.
    fn ack_all_dedup(mut c: FakeConn, log: &mut DedupLog) {
        while let Some(req) = c.read_request() {
            if req.header.api_key == ApiKey::Ping.as_u16() {
                c.reply(&req, 0, &[]);
                continue;
            }
            answer(&mut c, &req, log);
        }
    }

    fn value(i: usize) -> Vec<u8> {
        format!("m{i}").into_bytes()
    }

    #[test]
    fn a_dropped_connection_is_replaced_and_every_receipt_gets_the_brokers_offset() {
        let broker = fake::spawn_seq(2, {
            let mut log = DedupLog::default();
            let mut first: Vec<Vec<u8>> = Vec::new();
            move |index, mut c| match index {
                0 => {
                    // Stores six, answers two, then the connection drops:
                    // four are stored but unanswered.
                    for i in 0..6 {
                        let (req, _) = read_produce(&mut c);
                        let offset = log.store(&req.body);
                        if i < 2 {
                            ack(&mut c, &req, offset);
                        }
                        first.push(req.body);
                    }
                }
                _ => {
                    // The unanswered four come again first, byte for byte,
                    // in order. The two answers may be lost too: closing a
                    // socket with unread requests resets it, and a reset can
                    // discard answers the client had not read yet; those
                    // two are then resent as well (and stored once).
                    let (req, _) = read_produce(&mut c);
                    let from = first
                        .iter()
                        .position(|b| *b == req.body)
                        .expect("a resend repeats a request of the first connection");
                    assert!(from <= 2, "every unanswered request is resent");
                    let offset = log.store(&req.body);
                    ack(&mut c, &req, offset);
                    for body in &first[from + 1..] {
                        let (req, _) = read_produce(&mut c);
                        assert_eq!(&req.body, body, "a resend repeats the request, in order");
                        let offset = log.store(&req.body);
                        ack(&mut c, &req, offset);
                    }
                    ack_all_dedup(c, &mut log);
                    assert_eq!(log.len(), 10, "every batch is stored once");
                    let want: Vec<Vec<u8>> = (0..10).map(value).collect();
                    assert_eq!(log.stored[&0], want, "in send order");
                }
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let receipts: Vec<_> = (0..10)
            .map(|i| p.send_records("t", 0, &[(b"", &value(i))]).unwrap())
            .collect();
        for (i, r) in receipts.into_iter().enumerate() {
            assert_eq!(r.wait().unwrap().base_offset, i as u64, "receipt {i}");
        }
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn a_retry_carries_the_same_bytes_producer_id_and_sequence() {
        let (tx, rx) = std::sync::mpsc::channel();
        let broker = fake::spawn_seq(2, {
            let mut first = None;
            move |index, mut c| {
                let (req, _) = read_produce(&mut c);
                match index {
                    0 => first = Some(req.body),
                    _ => {
                        tx.send((first.take().unwrap(), req.body.clone())).unwrap();
                        ack(&mut c, &req, 5);
                        ack_all(c);
                    }
                }
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let r = p.send_records("t", 3, &[(b"k", b"v")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 5);
        let (first, retry) = rx.recv().unwrap();
        assert_eq!(first, retry);
        assert_eq!(
            stamp_of(&retry),
            ProducerStamp {
                id: p.producer_id(),
                epoch: 0,
                seq: 0
            },
            "the first batch of the partition's first epoch"
        );
        drop(p);
        broker.join();
    }

    #[test]
    fn a_timeout_answer_is_retried_and_answered_with_the_first_copys_offset() {
        let broker = fake::spawn_seq(2, |index, mut c| {
            let (req, _) = read_produce(&mut c);
            if index == 0 {
                c.reply_error(&req, ErrorCode::Timeout, "not flushed in time");
                // The producer leaves this connection for a new one.
                assert!(c.read_request().is_none());
            } else {
                ack(&mut c, &req, 7);
                ack_all(c);
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 7);
        drop(p);
        broker.join();
    }

    #[test]
    fn non_retriable_errors_fail_the_receipt_at_once_without_a_resend() {
        // Each refusal but StaleSequence (which may answer a stored batch)
        // stores nothing and would refuse any copy: the partition moves to
        // a new epoch, so that the next batch does not wait for a sequence
        // that will never be stored.
        let refusals = [
            (ErrorCode::UnknownTopic, 0),
            (ErrorCode::InvalidBatch, 1),
            (ErrorCode::RecordTooLarge, 2),
            (ErrorCode::StaleSequence, 3),
        ];
        let broker = fake::spawn_seq(1, move |_, mut c| {
            for (code, epoch) in refusals {
                let (req, _) = read_produce(&mut c);
                assert_eq!(
                    (stamp_of(&req.body).epoch, stamp_of(&req.body).seq),
                    (epoch, 0),
                    "the first batch of epoch {epoch}"
                );
                c.reply_error(&req, code, "no");
            }
            // No resend, and the same connection carries the next request.
            let (req, _) = read_produce(&mut c);
            assert_eq!(value_of(&req.body), b"y", "the next batch, not a resend");
            let stamp = stamp_of(&req.body);
            assert_eq!((stamp.epoch, stamp.seq), (3, 1));
            ack(&mut c, &req, 0);
            ack_all(c);
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        for (code, _) in refusals {
            let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
            assert_eq!(r.wait().unwrap_err().code(), Some(code));
        }
        let r = p.send_records("t", 0, &[(b"", b"y")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 0);
        drop(p);
        broker.join();
    }

    #[test]
    fn exhausted_attempts_fail_the_receipt_with_the_last_error() {
        let broker = fake::spawn_seq(3, {
            let mut first: Option<Vec<u8>> = None;
            move |_, mut c| {
                let (req, _) = read_produce(&mut c);
                assert_eq!(first.get_or_insert_with(|| req.body.clone()), &req.body);
                c.reply_error(&req, ErrorCode::Busy, "busy");
                // After the third, the listener is gone: a fourth try would
                // fail to connect, and the receipt would say so, not Busy.
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(3)).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap_err().code(), Some(ErrorCode::Busy));
        broker.join();
        drop(p);
    }

    #[test]
    fn not_leader_answers_do_not_use_up_the_tries_and_the_named_leader_is_asked_next() {
        // Five followers in a row answer NotLeader while "the group elects"
        // (more than the 3 tries allowed); the sixth connection names the
        // leader; the request is stored there, once.
        let leader = fake::spawn_seq(1, |_, mut c| {
            let (req, _) = read_produce(&mut c);
            ack(&mut c, &req, 0);
            ack_all(c);
        });
        let leader_addr = leader.addr.to_string();
        let followers = fake::spawn_seq(6, move |index, mut c| {
            let (req, _) = read_produce(&mut c);
            let mut body = Vec::new();
            NotLeaderBody {
                message: "not the leader",
                leader_id: if index == 5 { 7 } else { 0 },
                leader_addr: if index == 5 { &leader_addr } else { "" },
            }
            .encode(&mut body);
            c.reply(&req, ErrorCode::NotLeader.as_u16(), &body);
        });
        let p = Producer::connect(followers.addr, quick_retry(3)).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 0);
        drop(p);
        followers.join();
        leader.join();
    }

    #[test]
    fn the_deadline_fails_a_request_whose_broker_stays_away() {
        let broker = fake::spawn_seq(1, |_, mut c| {
            read_produce(&mut c);
        });
        let config = ProducerConfig {
            retry: RetryConfig {
                attempts_max: u32::MAX,
                backoff_ms: 10,
                deadline_ms: 300,
            },
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let started = Instant::now();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        broker.join();
        let err = r.wait().unwrap_err();
        assert!(err.is_retriable(), "the last connection error: {err:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "given up before the deadline"
        );
        drop(p);
    }

    #[test]
    fn resends_keep_the_original_order_and_later_sends_follow_them() {
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let broker = fake::spawn_seq(2, {
            let mut first: Vec<Vec<u8>> = Vec::new();
            let mut log = DedupLog::default();
            move |index, mut c| {
                if index == 0 {
                    for _ in 0..8 {
                        first.push(read_produce(&mut c).0.body);
                    }
                    drop(c);
                    closed_tx.send(()).unwrap();
                    return;
                }
                let mut seen = Vec::new();
                for _ in 0..12 {
                    let (req, _) = read_produce(&mut c);
                    let offset = log.store(&req.body);
                    ack(&mut c, &req, offset);
                    seen.push(req.body);
                }
                assert_eq!(&seen[..8], &first[..], "resent in the original order");
                // Each partition has its own sequence from 0.
                let seqs: Vec<u64> = seen.iter().map(|b| id_and_seq(b).1).collect();
                assert_eq!(seqs, (0..12).map(|i| i / 2).collect::<Vec<_>>());
                ack_all(c);
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let mut receipts: Vec<_> = (0..8)
            .map(|i| p.send_records("t", i % 2, &[(b"", b"x")]).unwrap())
            .collect();
        closed_rx.recv().unwrap();
        receipts.extend((8..12).map(|i| p.send_records("t", i % 2, &[(b"", b"x")]).unwrap()));
        let offsets: Vec<u64> = receipts
            .into_iter()
            .map(|r| r.wait().unwrap().base_offset)
            .collect();
        // Two partitions, alternating.
        assert_eq!(offsets, (0..12).map(|i| i / 2).collect::<Vec<_>>());
        drop(p);
        broker.join();
    }

    #[test]
    fn a_batch_without_producer_id_is_not_resent_once_it_may_have_reached_the_broker() {
        let broker = fake::spawn_seq(2, |index, mut c| {
            let (req, _) = read_produce(&mut c);
            assert_eq!(id_and_seq(&req.body), (0, 0));
            let value = records(ProduceRequest::decode(&req.body).unwrap().batch)
                .next()
                .unwrap()
                .value
                .to_vec();
            if index == 0 {
                assert_eq!(value, b"first");
                return;
            }
            assert_eq!(value, b"second", "the first is not resent");
            ack(&mut c, &req, 1);
            ack_all(c);
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let mut b = BatchBuilder::new();
        b.push(0, b"", b"first", &[]);
        let r = p.send("t", 0, b.finish(0, 0)).unwrap();
        assert!(matches!(r.wait(), Err(ClientError::Closed)));
        b.clear();
        b.push(0, b"", b"second", &[]);
        let r = p.send("t", 0, b.finish(0, 0)).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 1);
        drop(p);
        broker.join();
    }

    #[test]
    fn a_batch_without_producer_id_is_resent_to_the_leader_after_not_leader() {
        let leader = fake::spawn_seq(1, |_, mut c| {
            let (req, _) = read_produce(&mut c);
            assert_eq!(id_and_seq(&req.body).0, 0, "still without producer id");
            ack(&mut c, &req, 0);
            ack_all(c);
        });
        let leader_addr = leader.addr.to_string();
        let follower = not_leader_follower(leader_addr);
        let p = Producer::connect(follower.addr, quick_retry(3)).unwrap();
        let mut b = BatchBuilder::new();
        b.push(0, b"", b"unstamped", &[]);
        let r = p.send("t", 0, b.finish(0, 0)).unwrap();
        assert_eq!(
            r.wait().map(|a| a.base_offset).map_err(|e| e.to_string()),
            Ok(0),
            "NotLeader says the batch was not stored, so it goes to the leader"
        );
        drop(p);
        follower.join();
        leader.join();
    }

    #[test]
    fn each_partition_has_its_own_sequence_from_zero() {
        let broker = fake::spawn(|mut c| {
            let mut seen = Vec::new();
            for _ in 0..5 {
                let (req, _) = read_produce(&mut c);
                let p = ProduceRequest::decode(&req.body).unwrap().partition;
                seen.push((p, stamp_of(&req.body)));
                ack(&mut c, &req, 0);
            }
            let id = seen[0].1.id;
            assert_ne!(id, 0);
            let want: Vec<(u32, ProducerStamp)> = [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)]
                .into_iter()
                .map(|(p, seq)| (p, ProducerStamp { id, epoch: 0, seq }))
                .collect();
            assert_eq!(seen, want);
            ack_all(c);
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        for partition in [0, 1, 0, 0, 1] {
            p.send_records("t", partition, &[(b"", b"x")])
                .unwrap()
                .wait()
                .unwrap();
        }
        assert_eq!(p.sequence_of("t", 0), Some((0, 3)));
        assert_eq!(p.sequence_of("t", 1), Some((0, 2)));
        assert_eq!(p.sequence_of("t", 2), None);
        drop(p);
        broker.join();
    }

    #[test]
    fn a_batch_refused_for_a_passing_reason_is_resent_before_the_batches_behind_it() {
        // Batch 1 gets StorageFull (nothing stored); 2 and 3 are then out of
        // order. The producer resends 1, 2, 3 in order on a new connection.
        let broker = fake::spawn_seq(2, {
            let mut log = DedupLog::default();
            move |index, mut c| {
                if index == 0 {
                    // All four are on the wire before the first answer.
                    let reqs: Vec<Request> = (0..4).map(|_| read_produce(&mut c).0).collect();
                    for (i, req) in reqs.iter().enumerate() {
                        if i == 1 {
                            c.reply_error(req, ErrorCode::StorageFull, "disk full");
                        } else {
                            answer(&mut c, req, &mut log);
                        }
                    }
                    while c.read_request().is_some() {}
                    return;
                }
                ack_all_dedup(c, &mut log);
                let want: Vec<Vec<u8>> = (0..4).map(value).collect();
                assert_eq!(log.stored[&0], want, "stored in send order");
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let receipts: Vec<_> = (0..4)
            .map(|i| p.send_records("t", 0, &[(b"", &value(i))]).unwrap())
            .collect();
        let offsets: Vec<u64> = receipts
            .into_iter()
            .map(|r| r.wait().unwrap().base_offset)
            .collect();
        assert_eq!(offsets, vec![0, 1, 2, 3]);
        assert_eq!(
            p.sequence_of("t", 0),
            Some((0, 4)),
            "no new epoch was needed"
        );
        drop(p);
        broker.join();
    }

    /// Sends three batches to a broker that acknowledges them, then a
    /// fourth once that broker is gone; `second` plays the broker that
    /// takes over, with a log that `seed` prepares from the first broker's
    /// requests. Returns what the fourth batch's tries carried.
    fn fourth_batch_after_a_lost_tail(
        config: ProducerConfig,
        seed: impl FnOnce(&[Vec<u8>], &mut DedupLog) + Send + 'static,
    ) -> (Vec<ProducerStamp>, Duration) {
        let (tries_tx, tries_rx) = std::sync::mpsc::channel();
        // Connection 0 is the old broker; 1 and 2 the new one (a new epoch
        // starts on a new connection, so that no answer to the old numbers
        // can be taken for one to the new).
        let broker = fake::spawn_seq(3, {
            let mut first = Vec::new();
            let mut seed = Some(seed);
            let mut log = DedupLog::default();
            move |index, mut c| {
                if index == 0 {
                    let mut old = DedupLog::default();
                    for _ in 0..3 {
                        let (req, _) = read_produce(&mut c);
                        answer(&mut c, &req, &mut old);
                        first.push(req.body);
                    }
                    return;
                }
                if let Some(seed) = seed.take() {
                    seed(&first, &mut log);
                }
                while let Some(req) = c.read_request() {
                    tries_tx.send(stamp_of(&req.body)).unwrap();
                    answer(&mut c, &req, &mut log);
                }
            }
        });
        let p = Producer::connect(broker.addr, config).unwrap();
        for i in 0..3 {
            p.send_records("t", 0, &[(b"", &value(i))])
                .unwrap()
                .wait()
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.connection().is_none_or(|c| c.is_closed()) {
            assert!(Instant::now() < deadline, "the close was never noticed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        let r = p.send_records("t", 0, &[(b"", &value(3))]).unwrap();
        r.wait().expect("the fourth batch is stored");
        let took = started.elapsed();
        assert_eq!(p.sequence_of("t", 0), Some((1, 1)), "a new epoch");
        drop(p);
        broker.join();
        (tries_rx.try_iter().collect(), took)
    }

    #[test]
    fn unknown_producer_at_the_head_of_a_partition_starts_a_new_epoch() {
        // The new broker knows nothing of the producer (evicted, or the
        // batches were lost with the old leader at a weak QoS).
        let (tries, _) = fourth_batch_after_a_lost_tail(quick_retry(10), |_, _| {});
        let seqs: Vec<(u32, u64)> = tries.iter().map(|t| (t.epoch, t.seq)).collect();
        assert_eq!(seqs, vec![(0, 3), (1, 0)]);
    }

    #[test]
    fn out_of_order_at_the_head_of_a_partition_starts_a_new_epoch() {
        // The new broker holds batch 0 only: 1 and 2 were acknowledged at a
        // weak QoS and lost. Resending 3 cannot fill that gap.
        let (tries, _) = fourth_batch_after_a_lost_tail(quick_retry(10), |first, log| {
            log.store(&first[0]);
        });
        let seqs: Vec<(u32, u64)> = tries.iter().map(|t| (t.epoch, t.seq)).collect();
        assert_eq!(seqs, vec![(0, 3), (1, 0)]);
    }

    #[test]
    fn a_new_epoch_is_sent_without_a_backoff() {
        // The reconnection after the lost broker waits one backoff (1 s);
        // the one that only resends under a new epoch must not wait the
        // next (2 s): the broker is fine.
        let config = ProducerConfig {
            retry: RetryConfig {
                attempts_max: 10,
                backoff_ms: 1_000,
                deadline_ms: 30_000,
            },
            ..ProducerConfig::default()
        };
        let (tries, took) = fourth_batch_after_a_lost_tail(config, |_, _| {});
        assert_eq!(tries.len(), 2);
        assert!(took < Duration::from_millis(2_500), "{took:?}");
    }

    #[test]
    fn a_batch_refused_for_good_moves_the_batches_behind_it_to_a_new_epoch() {
        let broker = fake::spawn_seq(2, {
            let mut log = DedupLog::default();
            move |index, mut c| {
                if index == 0 {
                    // All three are on the wire before the first answer.
                    let reqs: Vec<Request> = (0..3).map(|_| read_produce(&mut c).0).collect();
                    c.reply_error(&reqs[0], ErrorCode::RecordTooLarge, "too large");
                    for req in &reqs[1..] {
                        // Nothing of the producer is stored: the broker
                        // knows it not, and would answer UnknownProducer.
                        assert!(log.try_store(&req.body).is_err(), "behind the gap");
                    }
                    while c.read_request().is_some() {}
                    return;
                }
                let mut stamps = Vec::new();
                for _ in 0..2 {
                    let (req, _) = read_produce(&mut c);
                    stamps.push((stamp_of(&req.body).epoch, stamp_of(&req.body).seq));
                    answer(&mut c, &req, &mut log);
                }
                assert_eq!(stamps, vec![(1, 0), (1, 1)], "renumbered under epoch 1");
                assert_eq!(log.stored[&0], vec![value(1), value(2)]);
                ack_all_dedup(c, &mut log);
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let receipts: Vec<_> = (0..3)
            .map(|i| p.send_records("t", 0, &[(b"", &value(i))]).unwrap())
            .collect();
        let outcomes: Vec<Result<u64, Option<ErrorCode>>> = receipts
            .into_iter()
            .map(|r| r.wait().map(|a| a.base_offset).map_err(|e| e.code()))
            .collect();
        assert_eq!(
            outcomes,
            vec![Err(Some(ErrorCode::RecordTooLarge)), Ok(0), Ok(1)]
        );
        drop(p);
        broker.join();
    }

    #[test]
    fn a_receipt_settles_by_its_deadline_even_while_its_try_is_unanswered() {
        // The broker answers pings (it is alive) but never the produce.
        let broker = fake::spawn(|mut c| {
            assert!(
                c.answer_only_pings(Duration::from_secs(20)),
                "the client left"
            );
        });
        let config = ProducerConfig {
            timeout_ms: 10_000,
            retry: RetryConfig {
                attempts_max: 10,
                backoff_ms: 5,
                deadline_ms: 300,
            },
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let started = Instant::now();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        let err = r.wait().unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, ClientError::Timeout),
            "an unknown outcome: {err:?}"
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "settled late: {took:?}");
        p.send_records("t", 0, &[(b"", b"y")]).unwrap();
        assert!(p.flush().is_err(), "flush too returns by the deadline");
        drop(p);
        broker.join();
    }

    #[test]
    fn a_connection_that_leaves_a_request_unanswered_past_its_deadline_is_replaced() {
        // The first connection answers pings but not the produce, beyond the
        // broker's deadline plus the grace; the producer resends elsewhere.
        let broker = fake::spawn_seq(2, |index, mut c| {
            if index == 0 {
                assert!(
                    c.answer_only_pings(ANSWER_GRACE + Duration::from_secs(5)),
                    "the producer kept waiting on a connection that never answers"
                );
                return;
            }
            ack_all(c);
        });
        let config = ProducerConfig {
            timeout_ms: 100,
            ..quick_retry(10)
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let started = Instant::now();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 0);
        assert!(started.elapsed() >= ANSWER_GRACE);
        drop(p);
        broker.join();
    }

    #[test]
    fn a_not_leader_hint_naming_a_host_is_resolved() {
        let leader = fake::spawn_seq(1, |_, mut c| {
            let (req, _) = read_produce(&mut c);
            ack(&mut c, &req, 0);
            ack_all(c);
        });
        let leader_addr = format!("localhost:{}", leader.addr.port());
        let follower = not_leader_follower(leader_addr);
        let p = Producer::connect(follower.addr, quick_retry(3)).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 0);
        drop(p);
        follower.join();
        leader.join();
    }

    #[test]
    fn a_corrupt_batch_answer_is_retried_once() {
        let broker = fake::spawn_seq(2, |index, mut c| {
            let (req, _) = read_produce(&mut c);
            c.reply_error(&req, ErrorCode::CorruptBatch, "crc");
            if index == 1 {
                assert!(!c.request_arrives_within(Duration::from_millis(200)));
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap_err().code(), Some(ErrorCode::CorruptBatch));
        broker.join();
        drop(p);
    }

    #[test]
    fn at_most_a_window_of_batches_per_partition_awaits_its_answer() {
        let (full_tx, full_rx) = std::sync::mpsc::channel();
        let broker = fake::spawn(move |mut c| {
            let mut held: Vec<Request> = (0..MAX_IN_FLIGHT_PER_PARTITION_DEFAULT)
                .map(|_| read_produce(&mut c).0)
                .collect();
            full_tx.send(()).unwrap();
            // Another partition is not held up...
            let (other, _) = read_produce(&mut c);
            assert_eq!(ProduceRequest::decode(&other.body).unwrap().partition, 1);
            // ...but partition 0 is.
            assert!(!c.request_arrives_within(Duration::from_millis(200)));
            held.push(other);
            for (i, req) in held.iter().enumerate() {
                ack(&mut c, req, i as u64);
            }
            ack_all(c);
        });
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..MAX_IN_FLIGHT_PER_PARTITION_DEFAULT + 6 {
                    drop(p.send_records("t", 0, &[(b"", b"x")]).unwrap());
                }
            });
            full_rx.recv().unwrap();
            drop(p.send_records("t", 1, &[(b"", b"y")]).unwrap());
        });
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn a_connection_lost_while_idle_is_replaced_by_the_next_send() {
        let broker = fake::spawn_seq(2, |index, c| {
            if index == 1 {
                ack_all(c);
            }
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.connection().unwrap().is_closed() {
            assert!(Instant::now() < deadline, "the close was never noticed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        assert_eq!(r.wait().unwrap().base_offset, 0);
        drop(p);
        broker.join();
    }

    #[test]
    fn dropping_the_producer_while_it_reconnects_fails_the_waiting_receipts() {
        let broker = fake::spawn_seq(1, |_, mut c| {
            read_produce(&mut c);
        });
        let config = ProducerConfig {
            retry: RetryConfig {
                attempts_max: u32::MAX,
                backoff_ms: 10,
                deadline_ms: 60_000,
            },
            ..ProducerConfig::default()
        };
        let p = Producer::connect(broker.addr, config).unwrap();
        let r = p.send_records("t", 0, &[(b"", b"x")]).unwrap();
        broker.join();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!r.is_ready(), "still retrying");
        drop(p);
        assert!(matches!(r.wait(), Err(ClientError::Closed)));
    }

    #[cfg(feature = "broker")]
    #[test]
    fn the_default_in_flight_bound_per_partition_matches_the_brokers_window() {
        assert_eq!(
            MAX_IN_FLIGHT_PER_PARTITION_DEFAULT,
            crate::config::PRODUCER_WINDOW_DEFAULT
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = RetryConfig::default();
        let ms = |f| r.backoff(f).as_millis() as u64;
        assert_eq!((ms(1), ms(2), ms(3)), (50, 100, 200));
        assert_eq!(ms(7), RETRY_BACKOFF_MS_MAX);
        assert_eq!(ms(u32::MAX), RETRY_BACKOFF_MS_MAX);
    }
}
