//! The producer: sends record batches pipelined on one connection and
//! tracks their acknowledgements.
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

use super::connection::{Completion, Connection, ConnectionConfig, ResponseRef};
use super::error::ClientError;
use crate::wire::api::{ProduceRequest, ProduceResponse};
use crate::wire::batch::BatchBuilder;
use crate::wire::{ApiKey, Qos};
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Default broker-side deadline of a produce request.
pub const PRODUCE_TIMEOUT_MS_DEFAULT: u32 = 30_000;
/// Default bound on produce requests awaiting their answer.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 1024;

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
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            qos: Qos::All,
            timeout_ms: PRODUCE_TIMEOUT_MS_DEFAULT,
            max_in_flight: MAX_IN_FLIGHT_DEFAULT,
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

#[derive(Default)]
struct TrackerState {
    next_seq: u64,
    /// Requests sent (or being sent) and not answered yet.
    outstanding: usize,
    /// Entries of live receipts, by send sequence number.
    receipts: HashMap<u64, Entry>,
    /// The earliest failure whose receipt was dropped unwaited, for flush.
    orphan_error: Option<(u64, ClientError)>,
    sleepers: bool,
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
}

/// Outstanding requests and their outcomes; the completion hook of every
/// produce request.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
    cond: Condvar,
}

impl Tracker {
    fn wait<'a>(&self, mut s: MutexGuard<'a, TrackerState>) -> MutexGuard<'a, TrackerState> {
        s.sleepers = true;
        self.cond.wait(s).unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, s: &mut TrackerState) {
        if s.sleepers {
            s.sleepers = false;
            self.cond.notify_all();
        }
    }

    /// Waits for room under `max_in_flight`, then counts a new request and
    /// opens its receipt entry.
    fn reserve(&self, max_in_flight: usize) -> u64 {
        let mut s = lock(&self.state);
        while s.outstanding >= max_in_flight {
            s = self.wait(s);
        }
        s.outstanding += 1;
        let seq = s.next_seq;
        s.next_seq += 1;
        s.receipts.insert(
            seq,
            Entry {
                outcome: None,
                reported: false,
            },
        );
        seq
    }

    /// Undoes `reserve` for a request that was never sent.
    fn cancel(&self, seq: u64) {
        let mut s = lock(&self.state);
        s.outstanding -= 1;
        s.receipts.remove(&seq);
        self.wake(&mut s);
    }
}

impl Completion for Tracker {
    fn complete(&self, seq: u64, response: Result<ResponseRef<'_>, ClientError>) {
        let outcome = response.and_then(|r| {
            let r = r.into_result()?;
            let p = ProduceResponse::decode(r.body)?;
            Ok(ProduceAck {
                base_offset: p.base_offset,
                append_time_ms: p.append_time_ms,
            })
        });
        let mut s = lock(&self.state);
        s.outstanding -= 1;
        match s.receipts.get_mut(&seq) {
            Some(entry) => entry.outcome = Some(outcome),
            None => {
                if let Err(e) = outcome {
                    s.keep_orphan(seq, e);
                }
            }
        }
        self.wake(&mut s);
    }
}

/// Sends record batches to the broker, pipelined on one connection. All
/// methods take `&self`, so one producer can be shared by threads.
pub struct Producer {
    conn: Connection,
    config: ProducerConfig,
    tracker: Arc<Tracker>,
    /// The tracker as the connection's completion hook.
    hook: Arc<dyn Completion>,
    builder: Mutex<BatchBuilder>,
    /// This producer's identity in the batches it builds, so the broker
    /// can recognise a retried batch and store it once.
    producer_id: u64,
    /// Sequence number of the next batch it builds (increasing across
    /// partitions, so increasing within each).
    next_seq: std::sync::atomic::AtomicU64,
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
            .field("conn", &self.conn)
            .field("config", &self.config)
            .finish()
    }
}

impl Producer {
    /// Connects to the broker at `addr`.
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub fn connect(
        addr: impl ToSocketAddrs,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        let config = ProducerConfig {
            max_in_flight: config.max_in_flight.max(1),
            ..config
        };
        let conn = Connection::connect_with(
            addr,
            &ConnectionConfig {
                in_flight_max: config
                    .max_in_flight
                    .max(super::connection::IN_FLIGHT_MAX_DEFAULT),
                ..ConnectionConfig::default()
            },
        )?;
        let tracker = Arc::new(Tracker::default());
        Ok(Producer {
            conn,
            config,
            hook: tracker.clone(),
            tracker,
            builder: Mutex::new(BatchBuilder::new()),
            producer_id: new_producer_id(),
            next_seq: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The producer's configuration.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Requests sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        lock(&self.tracker.state).outstanding
    }

    /// Sends one finished batch (from [`BatchBuilder::finish`]) to
    /// `topic`/`partition` and returns its receipt without waiting for the
    /// answer. Blocks while `max_in_flight` requests await their answer.
    /// At QoS none the receipt is complete at once.
    ///
    /// # Errors
    /// Connection errors ([`ClientError::Closed`], [`ClientError::Io`],
    /// [`ClientError::FrameTooLarge`]); the request was then not sent, or
    /// its fate is unknown. Broker answers come through the receipt.
    pub fn send(&self, topic: &str, partition: u32, batch: &[u8]) -> Result<Receipt, ClientError> {
        let request = ProduceRequest {
            topic,
            partition,
            qos: self.config.qos as u8,
            timeout_ms: self.config.timeout_ms,
            batch,
        };
        if self.config.qos == Qos::None {
            self.conn
                .send_no_reply(ApiKey::Produce, |out| request.encode(out))?;
            return Ok(Receipt {
                seq: 0,
                tracker: None,
            });
        }
        let seq = self.tracker.reserve(self.config.max_in_flight);
        match self.conn.send_with_completion(
            ApiKey::Produce,
            |out| request.encode(out),
            &self.hook,
            seq,
        ) {
            Ok(()) => Ok(Receipt {
                seq,
                tracker: Some(Arc::clone(&self.tracker)),
            }),
            Err(e) => {
                self.tracker.cancel(seq);
                Err(e)
            }
        }
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
        let now = unix_time_ms();
        let mut builder = lock(&self.builder);
        builder.clear();
        for (key, value) in records {
            builder.push(now, key, value, &[]);
        }
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(topic, partition, builder.finish(self.producer_id, seq))
    }

    /// Waits until every request sent so far (and any sent by other threads
    /// meanwhile) is answered, then returns the first failure, in send
    /// order, that no [`Receipt::wait`] and no earlier flush has reported.
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
            self.conn.call(ApiKey::Ping, |_| {})?.into_result()?;
            return match self.conn.take_unsolicited_error() {
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
        let p = Producer::connect(broker.addr, ProducerConfig::default()).unwrap();
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
}
