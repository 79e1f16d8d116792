//! The writer: the only thread that mutates the journal tail.
//!
//! It takes produce and create-topic requests from the request ring in
//! batches, validates them without re-encoding, appends them to the journal
//! (assigning offsets), queues one [`Pending`] entry per request for the
//! responder, and publishes W once per batch of requests.

use super::flusher::FlusherEvent;
use super::reader::ReaderEvent;
use super::responder::Pending;
use super::ring::MessageConsumer;
use super::shared::{deadline_after, unix_ms, Idle, Shared, Stage};
use crate::config::{Config, PRODUCE_TIMEOUT_MS_MAX, PRODUCE_TIMEOUT_MS_MIN};
use crate::journal::catalog::SeqCheck;
use crate::journal::error::JournalError;
use crate::journal::log::{Appended, Journal};
use crate::wire::api::{check_topic_name, CreateTopicRequest, ProduceRequest};
use crate::wire::batch::{check_producer_batch_with, BatchError, RecordLimits};
use crate::wire::frame::{RequestHeader, REQUEST_HEADER_LEN};
use crate::wire::{ApiKey, ErrorCode, Qos};
use ringbuf::traits::{Observer, Producer};
use ringbuf::HeapProd;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests handled between two publications of W; bounds how long the
/// responder waits to see the first of them.
const REQUESTS_PER_ROUND_MAX: usize = 1024;
/// Timeout of a create-topic request (it waits for QoS `all`).
const CREATE_TOPIC_TIMEOUT_MS: u64 = 30_000;

/// The writer's state and logic, without the thread.
pub struct Writer {
    journal: Journal,
    config: Arc<Config>,
    term: u64,
    reader_events: Sender<ReaderEvent>,
    flusher_events: Sender<FlusherEvent>,
}

/// One request's outcome: the entry to hand to the responder, if any.
pub type Outcome = Option<Pending>;

impl Writer {
    /// A writer appending to `journal`.
    pub fn new(
        journal: Journal,
        config: Arc<Config>,
        reader_events: Sender<ReaderEvent>,
        flusher_events: Sender<FlusherEvent>,
    ) -> Writer {
        Writer {
            journal,
            config,
            term: 0,
            reader_events,
            flusher_events,
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
        let fail = |code| {
            Some(Pending::failed(
                conn,
                h.correlation_id,
                api_of(h.api_key),
                code,
                counted,
            ))
        };
        match ApiKey::from_u16(h.api_key) {
            Some(ApiKey::Produce) => match self.produce(body, now, now_ms) {
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
            Some(ApiKey::CreateTopic) => match self.create_topic(body, now_ms) {
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
            // The reactor routes only these two APIs here.
            _ => fail(ErrorCode::Internal),
        }
    }

    fn produce(
        &mut self,
        body: &[u8],
        now: Instant,
        now_ms: i64,
    ) -> Result<(Qos, Appended, i64, Instant), ErrorCode> {
        let req = ProduceRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        let qos = Qos::from_u8(req.qos).ok_or(ErrorCode::InvalidQos)?;
        if !(PRODUCE_TIMEOUT_MS_MIN..=PRODUCE_TIMEOUT_MS_MAX).contains(&req.timeout_ms) {
            return Err(ErrorCode::InvalidTimeout);
        }
        if req.batch.len() > self.config.batch_bytes_max {
            return Err(ErrorCode::BatchTooLarge);
        }
        let slot = match self.journal.catalog().lookup(req.topic) {
            Some(slot) => slot,
            None if self.config.auto_create_topics => {
                check_topic_name(req.topic)?;
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
        match self.journal.check_seq(slot, req.partition, req.batch) {
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
            SeqCheck::Stale => return Err(ErrorCode::StaleSequence),
        }
        let appended = self
            .journal
            .append_data(slot, req.partition, req.batch, count, self.term, now_ms)
            .map_err(storage_code)?;
        self.announce_roll(&appended);
        Ok((qos, appended, now_ms, deadline))
    }

    fn create_topic(&mut self, body: &[u8], now_ms: i64) -> Result<Appended, ErrorCode> {
        let req = CreateTopicRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        check_topic_name(req.name)?;
        if req.partitions == 0 || req.partitions > self.config.partitions_per_topic_max {
            return Err(ErrorCode::InvalidPartitions);
        }
        if self.journal.catalog().lookup(req.name).is_some() {
            return Err(ErrorCode::TopicAlreadyExists);
        }
        Ok(self.add_topic(req.name, req.partitions, now_ms)?.0)
    }

    fn add_topic(
        &mut self,
        name: &str,
        partitions: u32,
        now_ms: i64,
    ) -> Result<(Appended, usize), ErrorCode> {
        let catalog = self.journal.catalog();
        if catalog.len() >= self.config.topics_max
            || catalog.partition_count() + partitions as usize > self.config.partitions_max
        {
            return Err(ErrorCode::TooManyTopics);
        }
        let (appended, slot) = self
            .journal
            .create_topic(name, partitions, self.term, now_ms)
            .map_err(storage_code)?;
        self.announce_roll(&appended);
        let topic = self.journal.catalog().topic(slot);
        // The receivers live as long as the broker; a send fails only
        // during teardown, when nobody needs the event any more.
        let _ = self.reader_events.send(ReaderEvent::Topic {
            meta: topic.meta.clone(),
            indexes: topic.index_handles(),
        });
        let _ = self.flusher_events.send(FlusherEvent::Topic {
            meta: topic.meta.clone(),
            end: appended.end,
        });
        Ok((appended, slot))
    }

    fn announce_roll(&self, appended: &Appended) {
        if let Some(file) = &appended.rolled {
            let _ = self
                .flusher_events
                .send(FlusherEvent::Segment(file.clone()));
            let _ = self.reader_events.send(ReaderEvent::Segment(file.clone()));
        }
    }
}

fn api_of(key: u16) -> ApiKey {
    ApiKey::from_u16(key).unwrap_or(ApiKey::Produce)
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
    mut pending: HeapProd<Pending>,
) {
    shared.register(Stage::Writer);
    let mut idle = Idle::new();
    loop {
        let now = Instant::now();
        let now_ms = unix_ms();
        let mut handled = 0;
        let mut queued = 0;
        while handled < REQUESTS_PER_ROUND_MAX && !pending.is_full() {
            let Some(m) = requests.peek() else { break };
            let counted = m.flags & super::ring::FLAG_COUNTED != 0;
            if let Some(p) = writer.handle(m.conn, counted, m.payload, now, now_ms) {
                // Room was checked above: one request yields at most one entry.
                let pushed = pending.try_push(p).is_ok();
                debug_assert!(pushed);
                queued += 1;
            }
            requests.pop();
            handled += 1;
        }
        if handled > 0 {
            match writer.write_out() {
                Ok(w) => shared.positions.written.publish(w),
                Err(e) => {
                    // Requests of this round hold offsets whose bytes did not
                    // reach the file; they will time out, and the broker stops
                    // rather than hand out those offsets again.
                    shared.fail(format!("journal write failed: {e}"));
                    shared.mark_done(Stage::Writer);
                    return;
                }
            }
            // The responder first: QoS `received` answers need nothing else.
            if queued > 0 {
                shared.wake(Stage::Responder);
            }
            shared.wake(Stage::Flusher);
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
        if shared
            .reactor_drained
            .load(std::sync::atomic::Ordering::Acquire)
            && requests.is_empty()
        {
            shared.mark_done(Stage::Writer);
            return;
        }
        idle.wait(Duration::from_millis(100));
    }
}
