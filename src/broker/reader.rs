//! The reader: serves Fetch (with long polling), Metadata and ListOffsets.
//!
//! It runs on its own thread so the reactor never touches the disk: fetched
//! batches are read with `pread` from the segment files (usually the page
//! cache) straight into the response, then handed to the reactor through the
//! fetch completion ring. Only committed data (below C) is ever served.
//! A fetch that cannot be satisfied yet waits here until C moves or its
//! `max_wait_ms` passes.

use super::partition_view::{NoSelection, PartitionView, Selection};
use super::ring::{MessageConsumer, MessageProducer, FLAG_COUNTED};
use super::shared::{deadline_after, Idle, Shared, Stage};
use crate::config::FETCH_WAIT_MS_MAX;
use crate::journal::catalog::IndexHandle;
use crate::journal::deletions::Deletions;
use crate::journal::index::IndexEntry;
use crate::journal::log::SegmentFile;
use crate::journal::reader::JournalReader;
use crate::journal::seg_index::SegmentIndex;
use crate::journal::topic::{TopicConfig, TopicMeta};
use crate::wire::api::{
    check_topic_name, ClusterNode, ClusterRole, ClusterStatusRequest, ClusterStatusResponse,
    ErrorBody, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetRangeBody, PartitionMetadata, TopicMetadata,
};
use crate::wire::frame::{
    finish_frame, finish_frame_before, RequestHeader, ResponseHeader, REQUEST_HEADER_LEN,
};
use crate::wire::{ApiKey, ErrorCode};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the writer tells the reader.
pub enum ReaderEvent {
    /// A topic exists, with read handles on its partition indexes.
    Topic {
        /// Its metadata.
        meta: TopicMeta,
        /// Its own settings.
        config: TopicConfig,
        /// One index per partition.
        indexes: Vec<IndexHandle>,
    },
    /// The topic in `slot` has new settings.
    Configured {
        /// The topic's slot.
        slot: usize,
        /// The settings now.
        config: TopicConfig,
    },
    /// Retention deleted the segments below `position` (the start state
    /// saying so is durable): log starts move up, and the reader lets go
    /// of those files.
    Retained {
        /// The journal's first kept byte.
        position: u64,
    },
    /// A new segment file was started.
    Segment(SegmentFile),
    /// A sealed segment's index is on disk: fetches below the in-memory
    /// indexes' floors read it there.
    Indexed(Arc<SegmentIndex>),
    /// The topic in `slot` has new, smaller in-memory indexes (their
    /// entries below the floor moved to segment index files).
    Indexes {
        /// The topic's slot.
        slot: usize,
        /// One index per partition.
        indexes: Vec<IndexHandle>,
    },
    /// A partition's records below `below` were deleted (DeleteRecords):
    /// its log start moves there once C passes the record.
    Deleted {
        /// The topic's slot.
        slot: usize,
        /// The partition.
        partition: u32,
        /// Where the record starts in the journal (0: known committed).
        at: u64,
        /// Its log start now.
        below: u64,
    },
    /// The journal was cut (a divergent tail): every topic with fresh
    /// index handles, and the segment files now.
    Reset {
        /// Every topic left, in catalog order.
        topics: Vec<TopicState>,
        /// Every segment file, oldest first.
        segments: Vec<SegmentFile>,
    },
}

/// A topic as a cut of the journal left it.
#[derive(Debug, Clone)]
pub struct TopicState {
    /// Its metadata.
    pub meta: TopicMeta,
    /// Its settings (a cut may have taken a change back).
    pub config: TopicConfig,
    /// One index per partition.
    pub indexes: Vec<IndexHandle>,
    /// Each partition's DeleteRecords records as the catalog holds them
    /// (a cut may have taken some back).
    pub deletions: Vec<Deletions>,
}

struct ReaderTopic {
    name: String,
    id: u32,
    config: TopicConfig,
    partitions: Vec<PartitionView>,
}

impl ReaderTopic {
    fn new(meta: TopicMeta, config: TopicConfig, indexes: Vec<IndexHandle>) -> ReaderTopic {
        ReaderTopic {
            name: meta.name,
            id: meta.id,
            config,
            partitions: indexes.into_iter().map(PartitionView::new).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct WaitingFetch {
    conn: u64,
    flags: u32,
    correlation_id: u32,
    topic: usize,
    partition: u32,
    offset: u64,
    max_bytes: usize,
    min_bytes: usize,
    deadline: Instant,
}

/// A request could not be answered because the completion ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// The reader's state and logic, without the thread.
pub struct Reader {
    topics: Vec<ReaderTopic>,
    by_name: HashMap<String, usize>,
    journal: JournalReader,
    waiting: Vec<WaitingFetch>,
    /// Waiting fetches whose topic a cut removed: answered `UnknownTopic`
    /// at the next recheck (the reactor counts them in flight until then).
    orphaned: Vec<WaitingFetch>,
    events: Receiver<ReaderEvent>,
    fetch_bytes_max: usize,
    out: Vec<u8>,
    /// The broker's shared state, for ClusterStatus (absent in unit tests).
    shared: Option<Arc<super::shared::Shared>>,
    /// The journal's first kept byte, as the last `Retained` event said.
    journal_start: u64,
    /// The journal ranges of the fetch being answered.
    runs: Vec<(u64, u64)>,
    /// Index entries read from a segment index file.
    scratch: Vec<IndexEntry>,
    /// The partitions (slot, partition) holding DeleteRecords records not
    /// committed yet, settled at each recheck.
    unsettled: Vec<(usize, u32)>,
}

impl Reader {
    /// A reader over `segments`, learning of new topics and segments from `events`.
    pub fn new(
        segments: Vec<SegmentFile>,
        events: Receiver<ReaderEvent>,
        fetch_bytes_max: usize,
    ) -> Reader {
        Reader {
            topics: Vec::new(),
            by_name: HashMap::new(),
            journal: JournalReader::new(segments),
            journal_start: 0,
            waiting: Vec::new(),
            orphaned: Vec::new(),
            events,
            fetch_bytes_max,
            out: Vec::with_capacity(64 * 1024),
            shared: None,
            runs: Vec::new(),
            scratch: Vec::new(),
            unsettled: Vec::new(),
        }
    }

    /// Lets the reader answer ClusterStatus from the broker's shared state.
    pub fn with_shared(mut self, shared: Arc<super::shared::Shared>) -> Reader {
        self.shared = Some(shared);
        self
    }

    /// Takes in every event the writer sent so far.
    pub fn drain_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                ReaderEvent::Topic {
                    meta,
                    config,
                    indexes,
                } => {
                    self.by_name.insert(meta.name.clone(), self.topics.len());
                    self.topics.push(ReaderTopic::new(meta, config, indexes));
                }
                ReaderEvent::Configured { slot, config } => {
                    if let Some(t) = self.topics.get_mut(slot) {
                        t.config = config;
                    }
                }
                ReaderEvent::Segment(f) => self.journal.add_segment(f),
                ReaderEvent::Indexed(index) => {
                    let by_id: HashMap<u32, usize> = self
                        .topics
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (t.id, i))
                        .collect();
                    for (i, s) in index.sections().iter().enumerate() {
                        let partition = by_id
                            .get(&s.topic_id)
                            .and_then(|&t| self.topics[t].partitions.get_mut(s.partition as usize));
                        if let Some(p) = partition {
                            p.add_section(&index, i);
                        }
                    }
                }
                ReaderEvent::Deleted {
                    slot,
                    partition,
                    at,
                    below,
                } => {
                    if let Some(p) = self
                        .topics
                        .get_mut(slot)
                        .and_then(|t| t.partitions.get_mut(partition as usize))
                    {
                        // Listed once: when its first record starts waiting.
                        if p.delete_below(at, below) {
                            self.unsettled.push((slot, partition));
                        }
                    }
                }
                ReaderEvent::Indexes { slot, indexes } => {
                    if let Some(t) = self.topics.get_mut(slot) {
                        for (p, h) in t.partitions.iter_mut().zip(indexes) {
                            p.replace_memory(h);
                        }
                    }
                }
                ReaderEvent::Retained { position } => {
                    self.journal_start = self.journal_start.max(position);
                    self.journal.forget_below(self.journal_start);
                    for p in self.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                        p.forget_below(self.journal_start);
                    }
                }
                ReaderEvent::Reset { topics, segments } => {
                    // What is on disk lies below C and outlives any cut:
                    // the topics kept keep it.
                    let mut old: HashMap<u32, ReaderTopic> =
                        self.topics.drain(..).map(|t| (t.id, t)).collect();
                    self.by_name.clear();
                    self.unsettled.clear();
                    for state in topics {
                        let TopicState {
                            meta,
                            config,
                            indexes,
                            deletions,
                        } = state;
                        self.by_name.insert(meta.name.clone(), self.topics.len());
                        let mut topic = match old.remove(&meta.id) {
                            Some(mut kept) if kept.partitions.len() == indexes.len() => {
                                for (p, h) in kept.partitions.iter_mut().zip(indexes) {
                                    p.replace_memory(h);
                                }
                                kept.config = config;
                                kept
                            }
                            _ => ReaderTopic::new(meta, config, indexes),
                        };
                        let slot = self.topics.len();
                        for (n, (p, d)) in topic.partitions.iter_mut().zip(deletions).enumerate() {
                            // The list was emptied above: each once.
                            if !d.pending().is_empty() {
                                self.unsettled.push((slot, n as u32));
                            }
                            p.set_deletions(d);
                        }
                        self.topics.push(topic);
                    }
                    self.journal.reset(segments);
                    // A fetch on a topic whose creation was cut has no topic
                    // to wait on any more: it is answered `UnknownTopic`.
                    let topics = &self.topics;
                    let orphaned = &mut self.orphaned;
                    self.waiting.retain(|w| {
                        let kept = topics
                            .get(w.topic)
                            .is_some_and(|t| (w.partition as usize) < t.partitions.len());
                        if !kept {
                            orphaned.push(*w);
                        }
                        kept
                    });
                }
            }
        }
    }

    /// Fetches waiting for data or for their answer.
    pub fn waiting(&self) -> usize {
        self.waiting.len() + self.orphaned.len()
    }

    fn topic(&mut self, name: &str) -> Option<usize> {
        if let Some(t) = self.by_name.get(name) {
            return Some(*t);
        }
        // The topic may have been created after the last drain.
        self.drain_events();
        self.by_name.get(name).copied()
    }

    /// Handles one request frame. `committed` is C.
    ///
    /// # Errors
    /// [`RingFull`] when the answer does not fit in the ring now; the
    /// caller keeps the request and retries later.
    pub fn handle(
        &mut self,
        conn: u64,
        flags: u32,
        frame: &[u8],
        committed: u64,
        now: Instant,
        out: &mut MessageProducer,
    ) -> Result<(), RingFull> {
        let h = RequestHeader::parse(frame);
        let body = &frame[REQUEST_HEADER_LEN..];
        let api = ApiKey::from_u16(h.api_key);
        let result = match api {
            Some(ApiKey::Fetch) => {
                return self.fetch(conn, flags, h.correlation_id, body, committed, now, out)
            }
            Some(ApiKey::Metadata) => self.metadata(body, committed, h.api_version),
            Some(ApiKey::ClusterStatus) => self.cluster_status(body),
            Some(ApiKey::ListOffsets) => self.list_offsets(body, committed, h.api_version),
            _ => Err(ErrorCode::Internal),
        };
        let code = match result {
            Ok(()) => ErrorCode::None,
            Err(code) => {
                self.out.clear();
                ErrorBody {
                    message: code.message(),
                }
                .encode(&mut self.out);
                code
            }
        };
        let header = ResponseHeader {
            correlation_id: h.correlation_id,
            api_key: h.api_key,
            error_code: code.as_u16(),
        };
        let head = header.to_bytes(self.out.len());
        if out.push(conn, flags & FLAG_COUNTED, &[&head, &self.out]) {
            Ok(())
        } else {
            Err(RingFull)
        }
    }

    /// This node's view of its replication group: its own role, term,
    /// leader and positions, and the member list. A client asks every
    /// member to see the whole group.
    fn cluster_status(&mut self, body: &[u8]) -> Result<(), ErrorCode> {
        ClusterStatusRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        let shared = self.shared.as_ref().ok_or(ErrorCode::Internal)?;
        let view = &shared.cluster;
        let p = &shared.positions;
        let status = ClusterStatusResponse {
            node_id: view.node_id,
            role: ClusterRole::from_u8(view.role.load(Ordering::Acquire))
                .unwrap_or(ClusterRole::Follower),
            term: view.term.load(Ordering::Acquire),
            leader_id: view.leader.load(Ordering::Acquire),
            written: p.written.get(),
            flushed: p.flushed.get(),
            replicated: p.replicated.get(),
            committed: p.committed.get(),
            caught_up: view.caught_up.load(Ordering::Acquire),
            nodes: view
                .peers
                .iter()
                .map(|(id, addr)| ClusterNode {
                    id: *id,
                    addr: addr.clone(),
                })
                .collect(),
        };
        self.out.clear();
        status.encode(&mut self.out);
        Ok(())
    }

    fn metadata(&mut self, body: &[u8], committed: u64, version: u16) -> Result<(), ErrorCode> {
        let req = MetadataRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        self.drain_events();
        let journal_start = self.journal_start;
        let describe = |t: &ReaderTopic| TopicMetadata {
            name: t.name.clone(),
            error_code: 0,
            config: t.config,
            partitions: t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (start_offset, end_offset) = p.offsets(committed, journal_start);
                    PartitionMetadata {
                        partition: i as u32,
                        start_offset,
                        end_offset,
                        // A sum over the in-memory entries: only asked for
                        // in version 2.
                        bytes: if version >= 2 {
                            p.bytes(committed, journal_start)
                        } else {
                            0
                        },
                    }
                })
                .collect(),
        };
        let topics = if req.topics.is_empty() {
            self.topics.iter().map(describe).collect()
        } else {
            req.topics
                .iter()
                .map(|name| {
                    let found = check_topic_name(name)
                        .and_then(|()| self.by_name.get(*name).ok_or(ErrorCode::UnknownTopic));
                    match found {
                        Ok(&t) => describe(&self.topics[t]),
                        Err(code) => TopicMetadata {
                            name: name.to_string(),
                            error_code: code.as_u16(),
                            config: TopicConfig::default(),
                            partitions: Vec::new(),
                        },
                    }
                })
                .collect()
        };
        self.out.clear();
        MetadataResponse { topics }.encode_version(version, &mut self.out);
        Ok(())
    }

    fn list_offsets(&mut self, body: &[u8], committed: u64, version: u16) -> Result<(), ErrorCode> {
        let req = ListOffsetsRequest::decode_version(body, version)
            .map_err(|_| ErrorCode::MalformedRequest)?;
        check_topic_name(req.topic)?;
        let t = self.topic(req.topic).ok_or(ErrorCode::UnknownTopic)?;
        let p = self.topics[t]
            .partitions
            .get(req.partition as usize)
            .ok_or(ErrorCode::UnknownPartition)?;
        let (earliest, latest) = p.offsets(committed, self.journal_start);
        let time_offset = match req.timestamp_ms {
            None => None,
            Some(t) => Some(
                p.offset_for_time(t, committed, self.journal_start)
                    .map_err(|e| {
                        crate::log!("list offsets: cannot read a segment index file: {e}");
                        ErrorCode::StorageError
                    })?,
            ),
        };
        self.out.clear();
        ListOffsetsResponse {
            earliest,
            latest,
            time_offset,
        }
        .encode(&mut self.out);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch(
        &mut self,
        conn: u64,
        flags: u32,
        correlation_id: u32,
        body: &[u8],
        committed: u64,
        now: Instant,
        out: &mut MessageProducer,
    ) -> Result<(), RingFull> {
        let parsed = self.parse_fetch(body, now);
        let w = match parsed {
            Ok((topic, partition, offset, max_bytes, min_bytes, deadline)) => WaitingFetch {
                conn,
                flags,
                correlation_id,
                topic,
                partition,
                offset,
                max_bytes,
                min_bytes,
                deadline,
            },
            Err(code) => {
                return self.answer_error(conn, flags, correlation_id, ApiKey::Fetch, code, out)
            }
        };
        match self.try_answer(&w, committed, now, false, out) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.waiting.push(w);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn parse_fetch(
        &mut self,
        body: &[u8],
        now: Instant,
    ) -> Result<(usize, u32, u64, usize, usize, Instant), ErrorCode> {
        let req = FetchRequest::decode(body).map_err(|_| ErrorCode::MalformedRequest)?;
        if req.max_wait_ms > FETCH_WAIT_MS_MAX {
            return Err(ErrorCode::InvalidTimeout);
        }
        if req.max_bytes == 0 {
            return Err(ErrorCode::InvalidRequest);
        }
        check_topic_name(req.topic)?;
        let t = self.topic(req.topic).ok_or(ErrorCode::UnknownTopic)?;
        if req.partition as usize >= self.topics[t].partitions.len() {
            return Err(ErrorCode::UnknownPartition);
        }
        Ok((
            t,
            req.partition,
            req.offset,
            (req.max_bytes as usize).min(self.fetch_bytes_max),
            req.min_bytes as usize,
            deadline_after(now, req.max_wait_ms as u64),
        ))
    }

    /// Answers `w` if it has enough data, its deadline passed, or `force`.
    /// Returns whether it was answered.
    fn try_answer(
        &mut self,
        w: &WaitingFetch,
        committed: u64,
        now: Instant,
        force: bool,
        out: &mut MessageProducer,
    ) -> Result<bool, RingFull> {
        let view = &self.topics[w.topic].partitions[w.partition as usize];
        let selected = view.select(
            w.offset,
            w.max_bytes,
            committed,
            self.journal_start,
            &mut self.runs,
            &mut self.scratch,
        );
        let avail = match selected {
            Ok(a) => a,
            Err(NoSelection::OutOfRange { start, end }) => {
                self.answer_out_of_range(w, OutOfRange { start, end }, out)?;
                return Ok(true);
            }
            Err(NoSelection::Io(e)) => {
                crate::log!("fetch: cannot read a segment index file: {e}");
                self.answer_storage_error(w, out)?;
                return Ok(true);
            }
        };
        // `min_bytes` 0 is always enough: such a fetch is answered at once,
        // even with nothing to return (docs/protocol.md §7.6).
        let enough = avail.bytes >= w.min_bytes;
        if !(enough || force || now >= w.deadline) {
            return Ok(false);
        }
        let head_len = crate::wire::frame::RESPONSE_HEADER_LEN + crate::wire::api::FETCH_PREFIX_LEN;
        if !out.fits(head_len + avail.bytes) {
            return Err(RingFull);
        }
        self.fetch_head(w, &avail);
        let (head, journal, runs) = (&self.out, &self.journal, &self.runs);
        // The batches go from the page cache straight into the ring (one
        // copy), read in runs of batches adjacent in the journal.
        let pushed: Option<std::io::Result<()>> = out.push_in_place(
            w.conn,
            w.flags & FLAG_COUNTED,
            head.len() + avail.bytes,
            |room| {
                room.put(head);
                for &(start, end) in runs {
                    room.fill((end - start) as usize, |dst, done| {
                        journal.read_exact_at(dst, start + done as u64)
                    })?;
                }
                Ok(())
            },
        );
        match pushed {
            None => unreachable!("room was checked"),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => {
                crate::log!("fetch read failed: {e}");
                self.answer_storage_error(w, out)?;
                Ok(true)
            }
        }
    }

    /// Answers `w` with `StorageError` (the cause was logged).
    fn answer_storage_error(
        &mut self,
        w: &WaitingFetch,
        out: &mut MessageProducer,
    ) -> Result<(), RingFull> {
        self.answer_error(
            w.conn,
            w.flags,
            w.correlation_id,
            ApiKey::Fetch,
            ErrorCode::StorageError,
            out,
        )
    }

    /// Writes the fetch answer's response header and body prefix to
    /// `self.out`; the batches (`avail.bytes` of them) follow it on the wire.
    fn fetch_head(&mut self, w: &WaitingFetch, avail: &Selection) {
        self.out.clear();
        let header = ResponseHeader {
            correlation_id: w.correlation_id,
            api_key: ApiKey::Fetch.as_u16(),
            error_code: 0,
        };
        header.write(&mut self.out);
        self.out.extend_from_slice(&FetchResponse::prefix(
            avail.high_watermark,
            avail.start_offset,
            avail.bytes,
        ));
        finish_frame_before(&mut self.out, 0, avail.bytes as u64);
    }

    /// Answers a fetch for an offset outside its partition's range with
    /// `OffsetOutOfRange` and the range (docs/protocol.md §4).
    fn answer_out_of_range(
        &mut self,
        w: &WaitingFetch,
        range: OutOfRange,
        out: &mut MessageProducer,
    ) -> Result<(), RingFull> {
        let message = format!(
            "offset {} is outside the partition's range {}..{}",
            w.offset, range.start, range.end
        );
        let body = OffsetRangeBody {
            message: &message,
            start_offset: range.start,
            end_offset: range.end,
        };
        let code = ErrorCode::OffsetOutOfRange;
        self.push_error(
            w.conn,
            w.flags,
            w.correlation_id,
            ApiKey::Fetch,
            code,
            out,
            |b| body.encode(b),
        )
    }

    fn answer_error(
        &mut self,
        conn: u64,
        flags: u32,
        correlation_id: u32,
        api: ApiKey,
        code: ErrorCode,
        out: &mut MessageProducer,
    ) -> Result<(), RingFull> {
        let message = code.message();
        self.push_error(conn, flags, correlation_id, api, code, out, |b| {
            ErrorBody { message }.encode(b)
        })
    }

    /// Pushes an error answer whose body `encode_body` writes.
    #[allow(clippy::too_many_arguments)]
    fn push_error(
        &mut self,
        conn: u64,
        flags: u32,
        correlation_id: u32,
        api: ApiKey,
        code: ErrorCode,
        out: &mut MessageProducer,
        encode_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), RingFull> {
        self.out.clear();
        ResponseHeader {
            correlation_id,
            api_key: api.as_u16(),
            error_code: code.as_u16(),
        }
        .write(&mut self.out);
        encode_body(&mut self.out);
        finish_frame(&mut self.out, 0);
        if out.push(conn, flags & FLAG_COUNTED, &[&self.out]) {
            Ok(())
        } else {
            Err(RingFull)
        }
    }

    /// Folds the DeleteRecords records C (`committed`) passed into their
    /// partitions' log starts (they count from then on either way: this
    /// only keeps the lists short).
    fn settle_deletions(&mut self, committed: u64) {
        let topics = &mut self.topics;
        self.unsettled.retain(|&(slot, partition)| {
            topics
                .get_mut(slot)
                .and_then(|t| t.partitions.get_mut(partition as usize))
                .is_some_and(|p| p.settle_deletions(committed))
        });
    }

    /// Answers every waiting fetch that can be answered now (all of them
    /// with `force`). Returns how many were answered.
    pub fn recheck(
        &mut self,
        committed: u64,
        now: Instant,
        force: bool,
        out: &mut MessageProducer,
    ) -> Result<usize, RingFull> {
        self.settle_deletions(committed);
        let mut answered = 0;
        while let Some(w) = self.orphaned.last().copied() {
            self.answer_error(
                w.conn,
                w.flags,
                w.correlation_id,
                ApiKey::Fetch,
                ErrorCode::UnknownTopic,
                out,
            )?;
            self.orphaned.pop();
            answered += 1;
        }
        let mut i = 0;
        while i < self.waiting.len() {
            let w = self.waiting[i];
            if self.try_answer(&w, committed, now, force, out)? {
                self.waiting.swap_remove(i);
                answered += 1;
            } else {
                i += 1;
            }
        }
        Ok(answered)
    }

    /// The earliest deadline among waiting fetches.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    /// True when fetches wait only for their answer (see `orphaned`).
    pub fn has_orphans(&self) -> bool {
        !self.orphaned.is_empty()
    }
}

/// The range of a partition a fetch fell outside of.
#[derive(Debug, Clone, Copy)]
struct OutOfRange {
    start: u64,
    end: u64,
}

/// Requests handled per round before waiting fetches are looked at again.
const REQUESTS_PER_ROUND_MAX: usize = 256;

/// Answers the requests waiting in `requests`, at most
/// [`REQUESTS_PER_ROUND_MAX`]. Returns how many it answered and whether the
/// answer ring filled up (the request that did not fit stays in the ring);
/// `committed` ends as the last C it loaded.
///
/// Each request sees C as it is once the reader has taken the request up
/// (and whatever was announced below that C): a client answered at QoS
/// `flushed` or `all` (a produce, a DeleteRecords) sees what the answer
/// promised in its next request, even when that request arrived while the
/// reader was between loading C for the round and looking at the ring.
fn serve_requests(
    shared: &Shared,
    reader: &mut Reader,
    requests: &mut MessageConsumer,
    out: &mut MessageProducer,
    now: Instant,
    committed: &mut u64,
) -> (usize, bool) {
    let mut worked = 0;
    while worked < REQUESTS_PER_ROUND_MAX {
        let Some(m) = requests.peek() else { break };
        let (conn, flags) = (m.conn, m.flags);
        // C before the events: every segment or topic holding bytes below
        // C was announced before C could cover it.
        *committed = shared.positions.committed.get();
        reader.drain_events();
        if reader
            .handle(conn, flags, m.payload, *committed, now, out)
            .is_err()
        {
            return (worked, true);
        }
        requests.pop();
        worked += 1;
    }
    (worked, false)
}

/// The reader thread.
pub fn run(
    shared: Arc<Shared>,
    mut reader: Reader,
    mut requests: MessageConsumer,
    mut out: MessageProducer,
) {
    shared.register(Stage::Reader);
    let mut idle = Idle::new();
    let mut last_committed = u64::MAX;
    loop {
        // Load C before draining events: every segment or topic holding
        // bytes below C was announced before C could cover it.
        let mut committed = shared.positions.committed.get();
        reader.drain_events();
        let now = Instant::now();
        let (mut worked, mut blocked) = serve_requests(
            &shared,
            &mut reader,
            &mut requests,
            &mut out,
            now,
            &mut committed,
        );
        if worked > 0 && shared.read_ring_full.swap(false, Ordering::AcqRel) {
            shared.wake_reactor();
        }
        let stopping = shared.reactor_drained.load(Ordering::Acquire) && requests.is_empty();
        let due = reader.has_orphans() || reader.next_deadline().is_some_and(|d| d <= now);
        if !blocked && (committed != last_committed || due || stopping) {
            match reader.recheck(committed, now, stopping, &mut out) {
                Ok(n) => {
                    worked += n;
                    last_committed = committed;
                }
                Err(RingFull) => blocked = true,
            }
        }
        if worked > 0 {
            shared.wake_reactor();
        }
        if blocked {
            shared.completion_ring_full.store(true, Ordering::Release);
            shared.wake_reactor();
        }
        // Parked fetches wait for C, which follows F: the flusher must
        // not pace while they do.
        let parked = reader.waiting() > 0;
        if shared.fetches_waiting.load(Ordering::Relaxed) != parked {
            shared.fetches_waiting.store(parked, Ordering::Release);
            if parked {
                shared.wake(Stage::Flusher);
            }
        }
        if stopping && reader.waiting() == 0 && !blocked {
            shared.mark_done(Stage::Reader);
            return;
        }
        if worked > 0 {
            idle.busy();
            continue;
        }
        let wait = reader
            .next_deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        idle.wait(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ring::message_ring_in_place as message_ring;
    use crate::journal::append_log::append_log;
    use crate::wire::frame::request_frame;

    /// A request that reaches the ring after the reader loaded C for its
    /// round (it was preempted between the load and the look at the ring)
    /// is still answered with C as it is when the request is taken up: a
    /// producer answered at QoS `flushed` that asks for the latest offset
    /// next sees its own batch (`producer_retry` saw 93 batches missing
    /// on a busy machine).
    #[test]
    fn a_request_sees_c_as_it_is_when_taken_up_not_as_the_round_began() {
        let (_poll, shared) = super::super::shared::Shared::for_tests(0);
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let mut reader = Reader::new(Vec::new(), events_rx, 1 << 20);
        let index = two_batches();
        events_tx
            .send(ReaderEvent::Topic {
                meta: TopicMeta {
                    id: 0,
                    name: "t".into(),
                    partitions: 1,
                },
                config: TopicConfig::default(),
                indexes: vec![IndexHandle {
                    index,
                    floor: 0,
                    floor_time_ms: i64::MIN,
                }],
            })
            .unwrap();
        shared.positions.committed.publish(100);
        // The round begins: C is loaded (100, one batch).
        let mut committed = shared.positions.committed.get();
        reader.drain_events();
        // Meanwhile the second batch becomes durable, its producer is
        // answered and asks for the latest offset.
        shared.positions.committed.publish(200);
        let (mut requests_in, mut requests) = message_ring(1 << 16);
        let frame = request_frame(ApiKey::ListOffsets.as_u16(), 1, 1, |out| {
            ListOffsetsRequest {
                topic: "t",
                partition: 0,
                timestamp_ms: None,
            }
            .encode(out)
        });
        assert!(requests_in.push(7, 0, &[&frame]));
        let (mut out, mut answers) = message_ring(1 << 16);
        let served = serve_requests(
            &shared,
            &mut reader,
            &mut requests,
            &mut out,
            Instant::now(),
            &mut committed,
        );
        assert_eq!(served, (1, false));
        assert_eq!(committed, 200);
        let m = answers.peek().expect("an answer");
        let r = ListOffsetsResponse::decode(&m.payload[crate::wire::frame::RESPONSE_HEADER_LEN..])
            .unwrap();
        assert_eq!((r.earliest, r.latest), (0, 10), "both batches are durable");
    }

    /// A partition index of two batches of 5 records: offsets 0..5 at
    /// position 0 and 5..10 at 100, 100 bytes each.
    fn two_batches() -> Arc<crate::journal::index::PartitionIndex> {
        let (mut writer, index) = append_log();
        for (offset, position) in [(0u64, 0u64), (5, 100)] {
            writer.push(IndexEntry {
                base_offset: offset,
                position,
                len: 100,
                count: 5,
                max_time_ms: 1,
            });
        }
        index
    }

    fn fetch_frame(topic: &str, correlation_id: u32) -> Vec<u8> {
        fetch_frame_at(topic, correlation_id, 0)
    }

    fn fetch_frame_at(topic: &str, correlation_id: u32, offset: u64) -> Vec<u8> {
        request_frame(ApiKey::Fetch.as_u16(), 1, correlation_id, |out| {
            FetchRequest {
                topic,
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 30_000,
                min_bytes: 1,
            }
            .encode(out)
        })
    }

    /// A cut that takes back a DeleteRecords or settings record (a group
    /// member's divergent tail) moves the log start and the settings the
    /// reader reports back to what they were.
    #[test]
    fn a_cut_takes_back_a_deletion_and_settings() {
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let mut reader = Reader::new(Vec::new(), events_rx, 1 << 20);
        let index = two_batches();
        let meta = TopicMeta {
            id: 0,
            name: "t".into(),
            partitions: 1,
        };
        let handle = IndexHandle {
            index,
            floor: 0,
            floor_time_ms: i64::MIN,
        };
        let limited = TopicConfig {
            retention_ms: Some(7),
            retention_bytes: None,
        };
        for e in [
            ReaderEvent::Topic {
                meta: meta.clone(),
                config: TopicConfig::default(),
                indexes: vec![handle.clone()],
            },
            // A record after the data, at position 200.
            ReaderEvent::Deleted {
                slot: 0,
                partition: 0,
                at: 200,
                below: 5,
            },
            ReaderEvent::Configured {
                slot: 0,
                config: limited,
            },
        ] {
            events_tx.send(e).unwrap();
        }
        let describe = |reader: &mut Reader, committed: u64| {
            let mut body = Vec::new();
            MetadataRequest { topics: vec![] }.encode(&mut body);
            reader.metadata(&body, committed, 3).unwrap();
            let md = MetadataResponse::decode_version(&reader.out, 3).unwrap();
            (md.topics[0].partitions[0].start_offset, md.topics[0].config)
        };
        reader.drain_events();
        // The deletion counts once C passes the record, never before.
        assert_eq!(describe(&mut reader, 200), (0, limited));
        assert_eq!(describe(&mut reader, 260), (5, limited));
        let reset = |deletions| ReaderEvent::Reset {
            topics: vec![TopicState {
                meta: meta.clone(),
                config: TopicConfig::default(),
                indexes: vec![handle.clone()],
                deletions,
            }],
            segments: Vec::new(),
        };
        let held = |settled: u64, pending: &[(u64, u64)]| {
            let mut d = Deletions::default();
            d.push(0, settled);
            for &(at, before) in pending {
                d.push(at, before);
            }
            vec![d]
        };
        // A cut keeps the record (it lies below the cut).
        events_tx.send(reset(held(0, &[(200, 5)]))).unwrap();
        reader.drain_events();
        assert_eq!(describe(&mut reader, 200), (0, TopicConfig::default()));
        assert_eq!(describe(&mut reader, 260), (5, TopicConfig::default()));
        // A cut below the record takes it back.
        events_tx.send(reset(held(0, &[]))).unwrap();
        reader.drain_events();
        assert_eq!(describe(&mut reader, 260), (0, TopicConfig::default()));
        // Settled ones count at once; rechecks fold the passed ones in.
        events_tx.send(reset(held(2, &[(200, 5)]))).unwrap();
        reader.drain_events();
        assert_eq!(describe(&mut reader, 200), (2, TopicConfig::default()));
        let (mut out, _inp) = message_ring(1 << 16);
        reader
            .recheck(260, Instant::now(), false, &mut out)
            .unwrap();
        assert!(reader.unsettled.is_empty(), "folded once C passed it");
        assert_eq!(describe(&mut reader, 260), (5, TopicConfig::default()));
    }

    /// Finding 4: a fetch waiting on a topic whose creation a cut removed
    /// is answered (the reactor counts it in flight until then), not
    /// forgotten.
    #[test]
    fn a_cut_answers_the_fetches_waiting_on_a_removed_topic() {
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let mut reader = Reader::new(Vec::new(), events_rx, 1 << 20);
        let (mut out, mut inp) = message_ring(1 << 16);
        let (_writer, index) = append_log();
        events_tx
            .send(ReaderEvent::Topic {
                config: Default::default(),
                meta: TopicMeta {
                    id: 0,
                    name: "gone".into(),
                    partitions: 1,
                },
                indexes: vec![IndexHandle {
                    index,
                    floor: 0,
                    floor_time_ms: i64::MIN,
                }],
            })
            .unwrap();
        let now = Instant::now();
        reader
            .handle(7, FLAG_COUNTED, &fetch_frame("gone", 5), 0, now, &mut out)
            .unwrap();
        assert!(inp.peek().is_none(), "nothing to fetch yet: it waits");
        assert_eq!(reader.waiting(), 1);
        events_tx
            .send(ReaderEvent::Reset {
                topics: Vec::new(),
                segments: Vec::new(),
            })
            .unwrap();
        reader.drain_events();
        reader.recheck(0, now, false, &mut out).unwrap();
        let m = inp.peek().expect("the waiting fetch is answered");
        let h = ResponseHeader::parse(m.payload);
        assert_eq!((m.conn, m.flags), (7, FLAG_COUNTED));
        assert_eq!(
            (h.correlation_id, h.error_code),
            (5, ErrorCode::UnknownTopic.as_u16())
        );
        inp.pop();
        assert_eq!(reader.waiting(), 0);
    }

    /// The error code and the range trailer of the answer at the ring's head.
    fn out_of_range(inp: &mut crate::broker::ring::MessageConsumer) -> (u16, Option<(u64, u64)>) {
        let m = inp.peek().expect("an answer");
        let h = ResponseHeader::parse(m.payload);
        let body = &m.payload[crate::wire::frame::RESPONSE_HEADER_LEN..];
        let (_, range) = OffsetRangeBody::decode(body);
        let r = (h.error_code, range);
        inp.pop();
        r
    }

    fn list_offsets(reader: &mut Reader, topic: &str, committed: u64) -> (u64, u64) {
        let (mut out, mut inp) = message_ring(1 << 16);
        let frame = request_frame(ApiKey::ListOffsets.as_u16(), 1, 1, |out| {
            ListOffsetsRequest {
                topic,
                partition: 0,
                timestamp_ms: None,
            }
            .encode(out)
        });
        reader
            .handle(1, 0, &frame, committed, Instant::now(), &mut out)
            .unwrap();
        let m = inp.peek().expect("an answer");
        let r = ListOffsetsResponse::decode(&m.payload[crate::wire::frame::RESPONSE_HEADER_LEN..])
            .unwrap();
        (r.earliest, r.latest)
    }

    /// Retention moved the journal's start to position 100: the partition
    /// starts at the first batch kept there; a fetch below it gets
    /// `OffsetOutOfRange` with the range, ListOffsets says where it starts,
    /// and a partition whose index is empty starts and ends at its floor.
    #[test]
    fn log_starts_follow_the_journal_start() {
        use crate::journal::index::IndexEntry;
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let mut reader = Reader::new(Vec::new(), events_rx, 1 << 20);
        let (mut out, mut inp) = message_ring(1 << 16);
        let (mut writer, index) = append_log();
        for (base_offset, position, count) in [(0, 0, 10), (10, 100, 5), (15, 200, 5)] {
            writer.push(IndexEntry {
                base_offset,
                position,
                len: 100,
                count,
                max_time_ms: 0,
            });
        }
        let (_empty_writer, empty) = append_log();
        for (name, handle) in [
            (
                "kept",
                IndexHandle {
                    index,
                    floor: 0,
                    floor_time_ms: i64::MIN,
                },
            ),
            (
                "idle",
                IndexHandle {
                    index: empty,
                    floor: 42,
                    floor_time_ms: i64::MIN,
                },
            ),
        ] {
            events_tx
                .send(ReaderEvent::Topic {
                    config: Default::default(),
                    meta: TopicMeta {
                        id: 0,
                        name: name.into(),
                        partitions: 1,
                    },
                    indexes: vec![handle],
                })
                .unwrap();
        }
        reader.drain_events();
        assert_eq!(list_offsets(&mut reader, "kept", 300), (0, 20));
        events_tx
            .send(ReaderEvent::Retained { position: 100 })
            .unwrap();
        reader.drain_events();
        assert_eq!(list_offsets(&mut reader, "kept", 300), (10, 20));
        assert_eq!(list_offsets(&mut reader, "idle", 300), (42, 42));
        let now = Instant::now();
        for (topic, offset, range) in [("kept", 9, (10, 20)), ("idle", 41, (42, 42))] {
            reader
                .handle(1, 0, &fetch_frame_at(topic, 1, offset), 300, now, &mut out)
                .unwrap();
            assert_eq!(
                out_of_range(&mut inp),
                (ErrorCode::OffsetOutOfRange.as_u16(), Some(range)),
                "a fetch of {topic} at {offset}"
            );
        }
        // A later, lower start never moves it back.
        events_tx
            .send(ReaderEvent::Retained { position: 0 })
            .unwrap();
        reader.drain_events();
        assert_eq!(list_offsets(&mut reader, "kept", 300), (10, 20));
    }

    /// Review finding: a fetch from the last batch of a segment indexed on disk,
    /// with plenty of committed data after it, must not wait for
    /// `max_wait_ms` because the selection stops at the segment's end.
    #[test]
    fn a_fetch_at_the_end_of_an_indexed_segment_goes_on_into_memory() {
        use crate::journal::index::IndexEntry;
        use crate::journal::seg_index::{self, SectionSource};
        let dir = tempfile::tempdir().unwrap();
        let e = |base_offset, position| IndexEntry {
            base_offset,
            position,
            len: 100,
            count: 1,
            max_time_ms: 0,
        };
        // Segment [0, 1000): offsets 0 and 1; memory: offsets 2..12 in [1000, ..).
        let disk = vec![e(0, 0), e(1, 100)];
        seg_index::write(
            dir.path(),
            0,
            1000,
            &[SectionSource {
                topic_id: 0,
                partition: 0,
                entries: &disk,
                range: 0..2,
            }],
        )
        .unwrap();
        let index = std::sync::Arc::new(
            crate::journal::seg_index::SegmentIndex::open(dir.path(), 0)
                .unwrap()
                .unwrap(),
        );
        let (mut w, mem) = append_log();
        for k in 0..10u64 {
            w.push(e(2 + k, 1000 + 100 * k));
        }
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let mut reader = Reader::new(Vec::new(), events_rx, 1 << 20);
        let (mut out, mut inp) = message_ring(1 << 16);
        events_tx
            .send(ReaderEvent::Topic {
                config: Default::default(),
                meta: TopicMeta {
                    id: 0,
                    name: "t".into(),
                    partitions: 1,
                },
                indexes: vec![IndexHandle {
                    index: mem,
                    floor: 2,
                    floor_time_ms: 0,
                }],
            })
            .unwrap();
        events_tx.send(ReaderEvent::Indexed(index)).unwrap();
        reader.drain_events();
        let frame = request_frame(ApiKey::Fetch.as_u16(), 1, 9, |out| {
            FetchRequest {
                topic: "t",
                partition: 0,
                offset: 1,
                max_bytes: 1 << 20,
                max_wait_ms: 30_000,
                min_bytes: 300,
            }
            .encode(out)
        });
        let committed = 1000 + 100 * 10;
        let _ = reader.handle(1, 0, &frame, committed, Instant::now(), &mut out);
        assert_eq!(list_offsets(&mut reader, "t", committed), (0, 12));
        assert!(
            inp.peek().is_some() || reader.waiting() == 0,
            "1000 committed bytes follow offset 1, yet the fetch (min_bytes 300) waits 30 s"
        );
    }
}
