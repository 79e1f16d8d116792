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
//! # Retries
//!
//! The producer keeps the bytes of every request until it is answered (a
//! pooled buffer per request, so the steady state allocates nothing). When
//! the connection fails, or a request is answered with an error that
//! [`ClientError::is_retriable`] calls retriable, the producer's retry
//! thread drops the connection, waits a backoff, reconnects to the
//! addresses given at connect, and resends every unanswered request **in
//! the original order** with the **same bytes**. A batch carries its
//! producer id and sequence number (`docs/protocol.md` §9.1), so the broker
//! stores a batch it already has only once and answers the retry with the
//! first copy's offset. Sends made meanwhile queue behind the resends.
//!
//! Tearing the connection down for a retriable *answer* too (not only for a
//! dead socket) keeps the order: every request sent after the failed one
//! is resent after it. A `Timeout` answer is retried as well, because the
//! retry of a batch that was stored in the end is answered, not stored.
//!
//! What is retried, and for how long, is [`RetryConfig`]:
//! - a request fails with its last error once it has been tried
//!   `attempts_max` times (a send counts, and so does a failed reconnection
//!   while it waits; a resend after a `NotLeader` answer does not, since
//!   the batch was not stored and only the leader moved) or `deadline_ms`
//!   after it was first sent;
//! - errors that are not retriable (`UnknownTopic`, `InvalidBatch`,
//!   `RecordTooLarge`, `StaleSequence`, ...) fail the receipt at once;
//! - `CorruptBatch` is retried once;
//! - a batch without a producer id (`producer_id` 0, as a caller may pass
//!   to [`Producer::send`]) is never resent once it may have reached the
//!   broker: its receipt fails instead, since a second copy would be
//!   stored twice. The exception is a `NotLeader` answer, which says the
//!   batch was not stored.
//! - after `NotLeader`, the reconnection goes first to the leader that the
//!   answer names (docs/protocol.md §4), then around the address list. Only batches with a non-zero producer id (every batch
//!   [`Producer::send_records`] builds) are safe to retry.
//!
//! The broker remembers the last [`IDEMPOTENCE_WINDOW`] batches of each
//! producer and partition. So that every batch a resend may repeat is
//! still remembered, a producer with retries keeps at most that many
//! batches with a producer id unanswered per partition (`send` blocks
//! beyond it, like at `max_in_flight`).

use super::connection::{Completion, Connection, ConnectionConfig, ResponseRef};
use super::error::ClientError;
use crate::wire::api::{NotLeaderBody, ProduceRequest, ProduceResponse};
use crate::wire::batch::{BatchBuilder, BatchView, BATCH_HEADER_LEN};
use crate::wire::frame::REQUEST_HEADER_LEN;
use crate::wire::{ApiKey, ErrorCode, Qos};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default broker-side deadline of a produce request.
pub const PRODUCE_TIMEOUT_MS_DEFAULT: u32 = 30_000;
/// Default bound on produce requests awaiting their answer.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 1024;
/// Default number of tries of one request.
pub const RETRY_ATTEMPTS_MAX_DEFAULT: u32 = 10;
/// Default pause before the first reconnection; it doubles with every
/// failure in a row.
pub const RETRY_BACKOFF_MS_DEFAULT: u64 = 50;
/// The longest pause between reconnections (unless `backoff_ms` itself is
/// longer).
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Default time from a request's first send after which it is not tried
/// again.
pub const RETRY_DEADLINE_MS_DEFAULT: u64 = 60_000;
/// Batches the broker remembers per producer and partition to recognise a
/// retry (`docs/protocol.md` §9.1); older ones are refused with
/// `StaleSequence`.
pub const IDEMPOTENCE_WINDOW: usize = 64;
/// How long the retry thread waits for one TCP connection.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request buffer above this capacity is freed after its answer instead
/// of kept for the next request.
const REQUEST_BUFFER_KEEP_BYTES: usize = 1024 * 1024;

const _: () = assert!(RETRY_BACKOFF_MS_DEFAULT <= RETRY_BACKOFF_MS_MAX);
const _: () = assert!(RETRY_ATTEMPTS_MAX_DEFAULT > 1);
const _: () = assert!(IDEMPOTENCE_WINDOW > 0);

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
    /// No try of a request starts later than this after its first send;
    /// its receipt then fails with the last error. A try under way is not
    /// cut short: the broker answers it within the request's `timeout_ms`.
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
    /// Retries after a broken connection or a retriable error. Not used at
    /// QoS none, where nothing is answered (a send that finds the
    /// connection broken fails, and the producer reconnects meanwhile).
    pub retry: RetryConfig,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            qos: Qos::All,
            timeout_ms: PRODUCE_TIMEOUT_MS_DEFAULT,
            max_in_flight: MAX_IN_FLIGHT_DEFAULT,
            retry: RetryConfig::default(),
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

/// The outcome of one request, kept while its receipt exists.
struct Entry {
    outcome: Option<Result<ProduceAck, ClientError>>,
    /// A flush already reported this entry's error.
    reported: bool,
}

/// One connection as the producer uses it. Connections are numbered
/// (epochs) so that a late answer from a replaced connection can be told
/// apart from the answer of the current try.
struct Link {
    conn: Arc<Connection>,
    epoch: u64,
    /// The completion hook of every request sent on `conn`.
    hook: Arc<dyn Completion>,
}

/// A request sent (or about to be sent) and not answered yet, in send
/// order.
struct Pending {
    /// The receipt's tag.
    tag: u64,
    /// The encoded Produce request body, resent unchanged.
    body: Arc<Vec<u8>>,
    /// Its partition's counter of unanswered batches, when it is capped.
    lane: Option<usize>,
    /// The batch carries a producer id, so a resend is stored once.
    stamped: bool,
    /// The connection it is on; `None` while it waits to be (re)sent.
    epoch: Option<u64>,
    /// It was handed to a connection at least once.
    ever_sent: bool,
    /// Tries so far (sends and failed reconnections while it waited).
    attempts: u32,
    corrupt_retried: bool,
    /// No try starts after this.
    deadline: Instant,
    /// Why its last try failed.
    last_error: Option<ClientError>,
}

#[derive(Default)]
struct TrackerState {
    next_seq: u64,
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
    /// Counter index of each capped (topic, partition).
    lanes: HashMap<String, HashMap<u32, usize>>,
    /// Unanswered capped requests per lane.
    lane_counts: Vec<usize>,
    /// The current connection; `None` while the retry thread replaces it.
    link: Option<Arc<Link>>,
    /// Failed connections for the retry thread to shut down and drop (never
    /// dropped under this lock: dropping a connection joins its reader,
    /// which may be waiting for this lock).
    retired: Vec<Arc<Link>>,
    /// Epoch of the newest connection.
    epoch: u64,
    /// Newest epoch known to have failed.
    dead_epoch: u64,
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
}

impl TrackerState {
    fn keep_orphan(&mut self, seq: u64, error: ClientError) {
        if self
            .orphan_error
            .as_ref()
            .is_none_or(|(first, _)| seq < *first)
        {
            self.orphan_error = Some((seq, error));
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
        if let Some(&lane) = self.lanes.get(topic).and_then(|p| p.get(&partition)) {
            return lane;
        }
        let lane = self.lane_counts.len();
        self.lane_counts.push(0);
        self.lanes
            .entry(topic.to_string())
            .or_default()
            .insert(partition, lane);
        lane
    }

    /// Position of request `tag` in `pending`; answers mostly come in send
    /// order, so it is usually the first.
    fn find(&self, tag: u64) -> Option<usize> {
        self.pending.iter().position(|p| p.tag == tag)
    }

    /// Gives back what a request held: its count, its lane, its buffer.
    fn release(&mut self, lane: Option<usize>, body: Arc<Vec<u8>>, pool_max: usize) {
        self.outstanding -= 1;
        if let Some(lane) = lane {
            self.lane_counts[lane] -= 1;
        }
        if body.capacity() <= REQUEST_BUFFER_KEEP_BYTES && self.pool.len() < pool_max {
            self.pool.push(body);
        }
    }

    /// Notes that the connection of `epoch` failed. When it is the current
    /// one, it is retired and true is returned: the retry thread must be
    /// called.
    #[must_use]
    fn connection_failed(&mut self, epoch: u64) -> bool {
        self.dead_epoch = self.dead_epoch.max(epoch);
        if self.link.as_ref().is_some_and(|l| l.epoch == epoch) {
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
    /// Where a broker that is not the leader said the leader is; the next
    /// reconnection tries it first.
    leader_hint: Mutex<Option<SocketAddr>>,
    /// The last `NotLeader` named no leader: the group is electing one, so
    /// the backoff stays short (an election takes well under a second).
    electing: std::sync::atomic::AtomicBool,
    /// Reconnections so far; each starts at the next address of the list,
    /// so a follower that knows no leader yet is not asked again and again.
    reconnects: std::sync::atomic::AtomicUsize,
}

/// A request that holds room under the in-flight bounds and a buffer.
struct Reservation {
    tag: u64,
    body: Arc<Vec<u8>>,
    lane: Option<usize>,
    stamped: bool,
    deadline: Instant,
    /// The connection to send on (`None`: it is being replaced).
    link: Option<Arc<Link>>,
    max_frame_bytes: usize,
}

impl Tracker {
    /// Remembers the leader a `NotLeader` answer names, if it names one.
    fn note_leader(&self, body: &[u8]) {
        let hint = NotLeaderBody::decode(body);
        let addr = hint.leader_addr.parse::<SocketAddr>().ok();
        self.electing
            .store(addr.is_none(), std::sync::atomic::Ordering::Relaxed);
        if addr.is_some() {
            *lock(&self.leader_hint) = addr;
        }
    }

    fn wait<'a>(&self, mut s: MutexGuard<'a, TrackerState>) -> MutexGuard<'a, TrackerState> {
        s.sleepers = true;
        self.cond.wait(s).unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that the connection of `epoch` failed and calls the retry
    /// thread when it has a connection to replace.
    fn fail_connection(&self, s: &mut TrackerState, epoch: u64) {
        if s.connection_failed(epoch) {
            self.retry_cond.notify_one();
        }
    }

    fn wake(&self, s: &mut TrackerState) {
        if s.sleepers {
            s.sleepers = false;
            self.cond.notify_all();
        }
    }

    /// Waits for room under `max_in_flight` (and, for a batch that may be
    /// retried, under [`IDEMPOTENCE_WINDOW`] for its partition), then
    /// counts a new request, opens its receipt entry and hands out a
    /// request buffer and the current connection.
    fn reserve(&self, topic: &str, partition: u32, stamped: bool) -> Reservation {
        let deadline = Instant::now() + Duration::from_millis(self.retry.deadline_ms);
        let mut s = lock(&self.state);
        let lane = (stamped && self.retry.is_enabled()).then(|| s.lane(topic, partition));
        while s.outstanding >= self.max_in_flight
            || lane.is_some_and(|l| s.lane_counts[l] >= IDEMPOTENCE_WINDOW)
        {
            s = self.wait(s);
        }
        s.outstanding += 1;
        if let Some(l) = lane {
            s.lane_counts[l] += 1;
        }
        let tag = s.next_seq;
        s.next_seq += 1;
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
            stamped,
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
    fn unqueue(&self, tag: u64) {
        let mut s = lock(&self.state);
        if let Some(i) = s.find(tag) {
            let p = s.pending.remove(i).expect("found above");
            s.receipts.remove(&tag);
            s.release(p.lane, p.body, self.max_in_flight);
        }
        self.wake(&mut s);
    }

    /// Removes `pending[i]` and files its outcome.
    fn finish(&self, s: &mut TrackerState, i: usize, outcome: Result<ProduceAck, ClientError>) {
        let p = s.pending.remove(i).expect("a pending request");
        s.release(p.lane, p.body, self.max_in_flight);
        s.settle(p.tag, outcome);
    }

    /// Whether the request at `pending[i]` may not be sent again: it has
    /// used its tries or its time, or it has no producer id and may have
    /// reached the broker.
    fn exhausted(&self, p: &Pending, now: Instant) -> bool {
        p.attempts >= self.retry.attempts_max.max(1)
            || now >= p.deadline
            || (p.ever_sent && !p.stamped)
    }

    /// Fails every waiting request that may not be sent again.
    fn expire(&self, s: &mut TrackerState, now: Instant) {
        let mut i = 0;
        while i < s.pending.len() {
            if s.pending[i].epoch.is_none() && self.exhausted(&s.pending[i], now) {
                let e = s.pending[i].last_error.take();
                self.finish(s, i, Err(e.unwrap_or(ClientError::Closed)));
            } else {
                i += 1;
            }
        }
    }

    /// Files the answer (or failure) of request `tag` sent on the
    /// connection of `epoch`; called by that connection's hook.
    fn complete(&self, epoch: u64, tag: u64, outcome: Result<ProduceAck, ClientError>) {
        let mut s = lock(&self.state);
        // Not found: a second answer to a request already settled (by an
        // earlier connection, or given up).
        if let Some(i) = s.find(tag) {
            let current = s.pending[i].epoch == Some(epoch);
            match outcome {
                Ok(ack) => {
                    if current {
                        s.failures = 0;
                    }
                    self.finish(&mut s, i, Ok(ack));
                }
                // A retriable failure on a connection the request has left
                // says nothing: a newer try is under way.
                Err(e) if !current && e.is_retriable() => {}
                Err(e) => {
                    let p = &s.pending[i];
                    let corrupt = e.code() == Some(ErrorCode::CorruptBatch);
                    // `NotLeader` says the batch was not stored (or was cut
                    // with an old leader's divergent tail), so even a batch
                    // without a producer id can go to the leader once more.
                    let not_stored = e.code() == Some(ErrorCode::NotLeader);
                    let retry = current
                        && self.retry.is_enabled()
                        && !s.closing
                        && (p.stamped || not_stored)
                        && e.is_retriable()
                        && !(corrupt && p.corrupt_retried);
                    if retry {
                        s.leader_changed |= not_stored;
                        let p = &mut s.pending[i];
                        p.corrupt_retried |= corrupt;
                        p.epoch = None;
                        p.last_error = Some(e);
                        self.fail_connection(&mut s, epoch);
                    } else {
                        self.finish(&mut s, i, Err(e));
                    }
                }
            }
        }
        self.wake(&mut s);
    }
}

/// The completion hook of the requests on one connection.
struct EpochHook {
    tracker: Arc<Tracker>,
    epoch: u64,
}

impl Completion for EpochHook {
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
        self.tracker.complete(self.epoch, tag, outcome);
    }
}

fn new_link(tracker: &Arc<Tracker>, conn: Connection, epoch: u64) -> Arc<Link> {
    Arc::new(Link {
        conn: Arc::new(conn),
        epoch,
        hook: Arc::new(EpochHook {
            tracker: Arc::clone(tracker),
            epoch,
        }),
    })
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
    /// This producer's identity in the batches it builds, so the broker
    /// can recognise a retried batch and store it once.
    producer_id: u64,
    /// Sequence number of the next batch it builds (increasing across
    /// partitions, so increasing within each).
    next_seq: AtomicU64,
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
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect_with(&addrs[..], &conn_config)?;
        let tracker = Arc::new(Tracker {
            state: Mutex::new(TrackerState {
                epoch: 1,
                max_frame_bytes: conn.max_frame_bytes(),
                ..TrackerState::default()
            }),
            cond: Condvar::new(),
            retry_cond: Condvar::new(),
            retry: config.retry,
            max_in_flight: config.max_in_flight,
            leader_hint: Mutex::new(None),
            electing: std::sync::atomic::AtomicBool::new(false),
            reconnects: std::sync::atomic::AtomicUsize::new(0),
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
            next_seq: AtomicU64::new(1),
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

    /// The producer id stamped into the batches [`Producer::send_records`]
    /// builds.
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Requests sent and not answered yet (including those waiting to be
    /// resent).
    pub fn outstanding(&self) -> usize {
        lock(&self.tracker.state).outstanding
    }

    /// Sends one finished batch (from [`BatchBuilder::finish`]) to
    /// `topic`/`partition` and returns its receipt without waiting for the
    /// answer. Blocks while `max_in_flight` requests await their answer.
    /// At QoS none the receipt is complete at once.
    ///
    /// The batch keeps the producer id and sequence number the caller
    /// finished it with. Only a batch with a non-zero producer id is
    /// retried once it may have reached the broker (the broker stores such
    /// a batch once however often it arrives); one with producer id 0
    /// fails its receipt instead. Give each batch a new sequence number
    /// (increasing per partition) when you use a producer id.
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
        if self.config.qos == Qos::None {
            return self.send_unanswered(&request);
        }
        let stamped = batch.len() >= BATCH_HEADER_LEN && BatchView(batch).producer_id() != 0;
        let mut r = self.tracker.reserve(topic, partition, stamped);
        encode_into(&mut r, &request);
        self.submit(r)
    }

    /// Takes the next sequence number of this producer, for a batch the
    /// caller builds itself and stamps with [`Producer::producer_id`]
    /// (`BatchBuilder::finish(producer_id, seq)`), so that [`Producer::send`]
    /// may retry it safely.
    pub fn next_sequence(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Builds one batch of `(key, value)` records stamped with the current
    /// time, this producer's id and its next sequence number, and sends it
    /// like [`Producer::send`]. Sending the same batch bytes again (a retry)
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
        // Room first, so that no thread waits while holding the builder.
        let mut reserved =
            (self.config.qos != Qos::None).then(|| self.tracker.reserve(topic, partition, true));
        let now = unix_time_ms();
        let mut builder = lock(&self.builder);
        builder.clear();
        for (key, value) in records {
            builder.push(now, key, value, &[]);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let request = ProduceRequest {
            topic,
            partition,
            qos: self.config.qos as u8,
            timeout_ms: self.config.timeout_ms,
            batch: builder.finish(self.producer_id, seq),
        };
        match reserved.as_mut() {
            None => self.send_unanswered(&request),
            Some(r) => {
                encode_into(r, &request);
                drop(builder);
                self.submit(reserved.expect("matched above"))
            }
        }
    }

    /// Sends a QoS none request on the current connection. A failed send
    /// calls the retry thread, so later sends find a new connection.
    fn send_unanswered(&self, request: &ProduceRequest<'_>) -> Result<Receipt, ClientError> {
        let link = lock(&self.tracker.state).link.clone();
        let Some(link) = link else {
            return Err(ClientError::Closed);
        };
        let sent = link
            .conn
            .send_no_reply(ApiKey::Produce, |out| request.encode(out));
        if let Err(e) = sent {
            if self.config.retry.is_enabled() && e.is_retriable() {
                let mut s = lock(&self.tracker.state);
                self.tracker.fail_connection(&mut s, link.epoch);
                self.tracker.wake(&mut s);
            }
            return Err(e);
        }
        Ok(Receipt {
            seq: 0,
            tracker: None,
        })
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
                self.queue(&mut s, r, last_error);
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
                self.tracker.fail_connection(&mut s, link.epoch);
                self.tracker.wake(&mut s);
                drop(s);
                continue;
            };
            let mut s = lock(&self.tracker.state);
            if s.link.as_ref().is_none_or(|l| l.epoch != link.epoch) {
                // Replaced since the reservation: look again.
                drop(s);
                continue;
            }
            s.pending.push_back(Pending {
                tag,
                body: Arc::clone(&r.body),
                lane: r.lane,
                stamped: r.stamped,
                epoch: Some(link.epoch),
                ever_sent: true,
                attempts: 1,
                corrupt_retried: false,
                deadline: r.deadline,
                last_error: None,
            });
            drop(s);
            let sent = pipe.send_with_completion(
                ApiKey::Produce,
                |out| out.extend_from_slice(&r.body),
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
                        p.epoch = None;
                        p.ever_sent = false;
                        p.last_error = Some(e);
                    }
                    self.tracker.fail_connection(&mut s, link.epoch);
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
            seq: tag,
            tracker: Some(Arc::clone(&self.tracker)),
        }
    }

    /// Puts a reserved request in `pending` unsent, for the retry thread.
    fn queue(&self, s: &mut TrackerState, r: Reservation, error: ClientError) {
        debug_assert!(
            r.link.is_none(),
            "no connection handle dropped under the lock"
        );
        s.pending.push_back(Pending {
            tag: r.tag,
            body: r.body,
            lane: r.lane,
            stamped: r.stamped,
            epoch: None,
            ever_sent: false,
            attempts: 0,
            corrupt_retried: false,
            deadline: r.deadline,
            last_error: Some(error),
        });
        self.tracker.wake(s);
    }

    /// Waits until every request sent so far (and any sent by other threads
    /// meanwhile) is answered, then returns the first failure, in send
    /// order, that no [`Receipt::wait`] and no earlier flush has reported.
    /// Requests being retried are waited for until their retries end.
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
        for (seq, entry) in s.receipts.iter_mut() {
            if let Some(Err(e)) = &entry.outcome {
                if !entry.reported {
                    entry.reported = true;
                    if first.as_ref().is_none_or(|(f, _)| seq < f) {
                        first = Some((*seq, e.duplicate()));
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

/// The retry thread: waits for a failed connection, then backs off,
/// reconnects and resends until the connection is replaced, and again.
fn retry_loop(tracker: &Arc<Tracker>, addrs: &[SocketAddr], config: &ConnectionConfig) {
    let mut resend = Vec::new();
    loop {
        let retired = {
            let mut s = lock(&tracker.state);
            while !s.recovering && !s.closing {
                s = tracker
                    .retry_cond
                    .wait(s)
                    .unwrap_or_else(|p| p.into_inner());
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

/// Sleeps the backoff, failing the requests whose tries or time run out
/// meanwhile. False when the producer is closing.
fn back_off(tracker: &Tracker) -> bool {
    let mut s = lock(&tracker.state);
    // After a leader change the pause stays at its shortest: straight to a
    // named leader, or asking again while the group elects one (a new
    // leader is named within an election timeout, 250-500 ms by default).
    let leader_changing = lock(&tracker.leader_hint).is_some()
        || tracker
            .electing
            .swap(false, std::sync::atomic::Ordering::Relaxed);
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
            .filter(|p| p.epoch.is_none())
            .map(|p| p.deadline)
            .fold(until, Instant::min);
        s = tracker
            .retry_cond
            .wait_timeout(s, next.saturating_duration_since(now))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Connects to the leader a broker named last, if any, else to the first
/// of `addrs` that answers, starting one further along the list each time.
fn reconnect(
    tracker: &Tracker,
    addrs: &[SocketAddr],
    config: &ConnectionConfig,
) -> Result<Connection, ClientError> {
    let mut last = ClientError::Closed;
    let hint = lock(&tracker.leader_hint).take();
    let turn = tracker
        .reconnects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rotated = (0..addrs.len()).map(|i| &addrs[(turn + i) % addrs.len()]);
    for addr in hint.iter().chain(rotated) {
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
    for p in s.pending.iter_mut().filter(|p| p.epoch.is_none()) {
        p.attempts += 1;
        if hopeless {
            p.attempts = p.attempts.max(tracker.retry.attempts_max);
        }
        p.last_error = Some(e.duplicate());
    }
    tracker.expire(&mut s, Instant::now());
    tracker.wake(&mut s);
}

/// Resends every unanswered request on `conn`, in order, then makes it the
/// producer's connection. Requests queued meanwhile are sent after them;
/// the connection is published only when nothing is left to send, while
/// its writing side is still locked, so nothing overtakes a resend.
fn resume(tracker: &Arc<Tracker>, conn: Connection, resend: &mut Vec<(u64, Arc<Vec<u8>>)>) {
    let (epoch, counts) = {
        let mut s = lock(&tracker.state);
        s.epoch += 1;
        // A resend after `NotLeader` goes to where the leader now is; it is
        // not a try of an uncertain outcome, so it does not count toward
        // `attempts_max` (the deadline still bounds it).
        (s.epoch, !std::mem::take(&mut s.leader_changed))
    };
    let link = new_link(tracker, conn, epoch);
    let Ok(mut pipe) = link.conn.pipeline() else {
        lock(&tracker.state).failures += 1;
        return;
    };
    loop {
        let mut s = lock(&tracker.state);
        if s.closing {
            break;
        }
        if s.dead_epoch >= epoch {
            // It failed already; the requests on it are waiting again.
            s.failures += 1;
            for p in s.pending.iter_mut().filter(|p| p.epoch == Some(epoch)) {
                p.epoch = None;
            }
            break;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < s.pending.len() {
            let p = &s.pending[i];
            if p.epoch == Some(epoch) {
                i += 1;
                continue;
            }
            if tracker.exhausted(p, now) {
                let e = s.pending[i].last_error.take();
                tracker.finish(&mut s, i, Err(e.unwrap_or(ClientError::Closed)));
                continue;
            }
            let p = &mut s.pending[i];
            p.epoch = Some(epoch);
            p.ever_sent = true;
            if counts {
                p.attempts += 1;
            }
            resend.push((p.tag, Arc::clone(&p.body)));
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
        for (tag, body) in resend.drain(..) {
            let sent = pipe.send_with_completion(
                ApiKey::Produce,
                |out| out.extend_from_slice(&body),
                &link.hook,
                tag,
            );
            if let Err(e) = sent {
                // Not registered: no hook comes for it.
                let mut s = lock(&tracker.state);
                if let Some(i) = s.find(tag) {
                    if e.is_retriable() {
                        s.pending[i].epoch = None;
                        s.pending[i].last_error = Some(e);
                        s.dead_epoch = s.dead_epoch.max(epoch);
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
    seq: u64,
    /// `None` at QoS none: nothing to wait for.
    tracker: Option<Arc<Tracker>>,
}
impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("seq", &self.seq)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Receipt {
    /// Waits for the broker's answer.
    ///
    /// # Errors
    /// [`ClientError::Broker`] with the broker's error (`Timeout` when the
    /// QoS position was not reached in time, `UnknownTopic`, ...),
    /// [`ClientError::Closed`] or [`ClientError::Io`] when the connection
    /// died first, [`ClientError::Decode`] for a malformed answer.
    pub fn wait(mut self) -> Result<ProduceAck, ClientError> {
        let Some(tracker) = self.tracker.take() else {
            return Ok(ProduceAck::UNACKNOWLEDGED);
        };
        let mut s = lock(&tracker.state);
        loop {
            match s.receipts.get(&self.seq) {
                Some(Entry { outcome: None, .. }) => s = tracker.wait(s),
                Some(_) => {
                    let entry = s.receipts.remove(&self.seq);
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
                .get(&self.seq)
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
        if let Some(entry) = s.receipts.remove(&self.seq) {
            if let Some(Err(e)) = entry.outcome {
                if !entry.reported {
                    s.keep_orphan(self.seq, e);
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

    fn fail_second(mut c: FakeConn) {
        for i in 0..4 {
            let (req, _) = read_produce(&mut c);
            if i == 1 {
                c.reply_error(&req, ErrorCode::UnknownTopic, "unknown topic");
            } else {
                ack(&mut c, &req, i);
            }
        }
        ack_all(c);
    }

    #[test]
    fn flush_reports_the_first_failure_of_dropped_receipts_once() {
        let broker = fake::spawn(fail_second);
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
        let broker = fake::spawn(fail_second);
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
        let receipts: Vec<_> = (0..4)
            .map(|_| p.send_records("t", 0, &[(b"", b"x")]).unwrap())
            .collect();
        assert_eq!(p.flush().unwrap_err().code(), Some(ErrorCode::UnknownTopic));
        p.flush().unwrap();
        // The receipt still tells its own outcome.
        let outcomes: Vec<_> = receipts.into_iter().map(Receipt::wait).collect();
        assert!(outcomes[1].is_err());
        assert_eq!(outcomes[3].as_ref().unwrap().base_offset, 3);
        p.flush().unwrap();
        drop(p);
        broker.join();
    }

    #[test]
    fn a_failure_seen_through_its_receipt_is_not_reported_by_flush() {
        let broker = fake::spawn(fail_second);
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
    }

    #[test]
    fn qos_none_receipts_are_complete_and_flush_reports_error_answers() {
        let broker = fake::spawn(|mut c| {
            let (req, _) = read_produce(&mut c);
            let p = ProduceRequest::decode(&req.body).unwrap();
            assert_eq!(p.qos, Qos::None as u8);
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

    /// A partition of the fake that stores a batch with a producer id once,
    /// as the broker does (docs/protocol.md §9.1).
    #[derive(Default)]
    struct DedupLog {
        next_offset: u64,
        stored: HashMap<(u64, u64), u64>,
    }

    impl DedupLog {
        /// Stores the batch of a produce request body (once) and returns
        /// its base offset.
        fn store(&mut self, body: &[u8]) -> u64 {
            let p = ProduceRequest::decode(body).unwrap();
            let count = check_producer_batch(p.batch).unwrap() as u64;
            let (id, seq) = id_and_seq(body);
            assert_ne!(id, 0, "only stamped batches go to a dedup log");
            let next = &mut self.next_offset;
            *self.stored.entry((id, seq)).or_insert_with(|| {
                let base = *next;
                *next += count;
                base
            })
        }
    }

    /// The producer id and sequence number of a produce request's batch.
    fn id_and_seq(body: &[u8]) -> (u64, u64) {
        let view = BatchView(ProduceRequest::decode(body).unwrap().batch);
        (view.producer_id(), view.producer_seq())
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

    /// A fake connection that stores and acks every produce request through
    /// `log` until the client leaves.
    fn ack_all_dedup(mut c: FakeConn, log: &mut DedupLog) {
        while let Some(req) = c.read_request() {
            let offset = log.store(&req.body);
            ack(&mut c, &req, offset);
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
                    assert_eq!(log.stored.len(), 10, "every batch is stored once");
                    assert_eq!(log.next_offset, 10);
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
        assert_eq!(id_and_seq(&retry), (p.producer_id(), 1));
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
        let codes = [
            ErrorCode::UnknownTopic,
            ErrorCode::InvalidBatch,
            ErrorCode::RecordTooLarge,
            ErrorCode::StaleSequence,
        ];
        let broker = fake::spawn_seq(1, move |_, mut c| {
            for code in codes {
                let (req, _) = read_produce(&mut c);
                c.reply_error(&req, code, "no");
            }
            // No resend, and the same connection carries the next request.
            let (req, _) = read_produce(&mut c);
            assert_eq!(id_and_seq(&req.body).1, 5, "the next batch, not a resend");
            ack(&mut c, &req, 0);
            ack_all(c);
        });
        let p = Producer::connect(broker.addr, quick_retry(10)).unwrap();
        let receipts: Vec<_> = codes
            .iter()
            .map(|_| p.send_records("t", 0, &[(b"", b"x")]).unwrap())
            .collect();
        for (r, code) in receipts.into_iter().zip(codes) {
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
                let seqs: Vec<u64> = seen.iter().map(|b| id_and_seq(b).1).collect();
                assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
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
        assert_eq!(offsets, (0..12).collect::<Vec<_>>());
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
            let mut held: Vec<Request> = (0..IDEMPOTENCE_WINDOW)
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
                for _ in 0..IDEMPOTENCE_WINDOW + 6 {
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

    #[test]
    fn the_window_matches_the_brokers() {
        assert_eq!(IDEMPOTENCE_WINDOW, crate::journal::catalog::PRODUCER_WINDOW);
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
