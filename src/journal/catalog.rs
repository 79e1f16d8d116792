//! The catalog: topics, their partitions, each partition's next offset and
//! its index, and the producer states of every partition
//! ([`super::producers`]). Owned by the writer; readers get the indexes
//! through `Arc<PartitionIndex>` handles.

use super::append_log::{append_log, AppendWriter};
use super::deletions::Deletions;
use super::index::{IndexEntries, IndexEntry, PartitionIndex};
use super::offload::Trim;
use super::producers::{Key, ProducerBatch, ProducerStates};
pub use super::producers::{Landed, ProducerLimits, SeqCheck};
use super::snapshot::{CatalogSnapshot, SnapshotTopic};
use super::topic::{TopicConfig, TopicMeta, PARTITIONS_MAX};
use crate::wire::batch::BatchView;
use std::collections::HashMap;
use std::sync::Arc;

/// One partition as the writer sees it.
pub struct Partition {
    /// Offset the next record will get.
    pub next_offset: u64,
    /// One entry per stored batch, in journal order.
    pub index: AppendWriter<IndexEntry>,
    /// The offset the index starts at: its first entry's base offset, or
    /// the next offset while it has none. 0 for a new partition; the log
    /// start the journal's start state records for one recovered after
    /// retention deleted the segments before it, or where the batches
    /// moved to segment index files end ([`Catalog::trim`]).
    pub floor: u64,
    /// The newest append time of the batches below the floor
    /// (`i64::MIN`: none known): where the index's running maximum of
    /// append times resumes.
    pub floor_time_ms: i64,
    /// The sealed segments whose index entries are on disk (in their
    /// segment index files) and no longer in `index`, oldest first, that
    /// hold batches of this partition.
    pub on_disk: std::collections::VecDeque<OnDisk>,
    /// The log start DeleteRecords records set: the settled part (durable,
    /// and committed in a replication group) and the records not settled
    /// yet, which the start state leaves out and a cut takes back.
    /// The DeleteRecords records appended or received since (position,
    /// `before`), which may not be durable yet (nor committed, in a
    /// replication group: a cut drops them): the start state saves only
    /// durable deletions ([`Partition::durable_deleted_below`]).
    pub deletions: Deletions,
}

/// A sealed segment holding batches of a partition whose index entries
/// are on disk: what retention needs to know of the partition's part of it
/// without reading the index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnDisk {
    /// The segment's start position.
    pub start: u64,
    /// The offset of the partition's first batch there.
    pub first_offset: u64,
    /// The offset one past the partition's last record there.
    pub next_offset: u64,
    /// Bytes of the partition's batches there.
    pub bytes: u64,
    /// The running maximum of the partition's append times at its last
    /// batch there.
    pub max_time_ms: i64,
}

/// A reader's handle on one partition: its index and where it starts.
#[derive(Debug, Clone)]
pub struct IndexHandle {
    /// The partition index, shared with the writer.
    pub index: Arc<PartitionIndex>,
    /// [`Partition::floor`], fixed for the life of the index.
    pub floor: u64,
    /// [`Partition::floor_time_ms`], fixed with it.
    pub floor_time_ms: i64,
}

impl Partition {
    /// The partition's first kept offset when the journal starts at
    /// `position`, a segment start: the first batch at or after it, on
    /// disk or in the index, or the next offset when there is none.
    pub fn log_start_at(&self, position: u64) -> u64 {
        match self.on_disk.iter().find(|d| d.start >= position) {
            Some(d) => d.first_offset,
            None => log_start_in(&self.index, self.index.len(), self.floor, position),
        }
    }
}

impl Partition {
    /// The log start a topic's own limits ask for when the journal starts
    /// at `journal_start`: the first batch appended at or after
    /// `cutoff_ms` (by the running maximum of append times; for batches
    /// on disk, the first batch of the oldest sealed segment holding one),
    /// or the partition's end when there is none; and, with `keep_bytes`,
    /// at most as low as the oldest on-disk segment part from which on
    /// the on-disk parts hold that many bytes (the entries still in
    /// memory are not counted: they are kept whatever they hold). 0 when
    /// neither asks for anything. A binary search for the time, a walk
    /// over the kept on-disk parts for the size.
    pub fn retention_start(
        &self,
        journal_start: u64,
        cutoff_ms: Option<i64>,
        keep_bytes: Option<u64>,
    ) -> u64 {
        let mut start = 0;
        let disk_from = self.on_disk.partition_point(|d| d.start < journal_start);
        if let Some(cutoff) = cutoff_ms {
            // Both conditions hold for a prefix: starts and running maxima
            // only grow.
            let k = self
                .on_disk
                .partition_point(|d| d.start < journal_start || d.max_time_ms < cutoff);
            start = match self.on_disk.get(k) {
                Some(d) => d.first_offset,
                None => {
                    let n = self.index.len();
                    let i = super::index::partition_point_in(&self.index, n, |e| {
                        e.end_position() <= journal_start || e.max_time_ms < cutoff
                    });
                    self.index
                        .get(i)
                        .filter(|_| i < n)
                        .map_or(self.next_offset, |e| e.base_offset)
                }
            };
        }
        if let Some(keep) = keep_bytes {
            let mut held = 0u64;
            for d in self.on_disk.range(disk_from..).rev() {
                held = held.saturating_add(d.bytes);
                if held >= keep {
                    start = start.max(d.first_offset);
                    break;
                }
            }
        }
        start
    }

    /// Whether the partition holds a batch in the segment `[start, end)`
    /// that is neither deleted (below the log start durable DeleteRecords
    /// records set, every byte below `durable` being durable) nor older
    /// than `cutoff_ms` (`None`: no batch is too old).
    pub fn holds_in(&self, start: u64, end: u64, durable: u64, cutoff_ms: Option<i64>) -> bool {
        let (next, newest) = match self.on_disk.binary_search_by_key(&start, |d| d.start) {
            Ok(k) => (self.on_disk[k].next_offset, self.on_disk[k].max_time_ms),
            Err(_) => {
                let n = self.index.len();
                let lo = super::index::entries_below_in(&self.index, n, start);
                let hi = super::index::entries_below_in(&self.index, n, end);
                match self.index.get(hi.wrapping_sub(1)).filter(|_| lo < hi) {
                    Some(last) => (last.next_offset(), last.max_time_ms),
                    None => return false,
                }
            }
        };
        next > self.durable_deleted_below(durable) && cutoff_ms.is_none_or(|c| newest >= c)
    }
}

impl Partition {
    /// Records a DeleteRecords record at journal position `at` moving the
    /// log start to `before`, not settled yet (not durable, or not
    /// committed in a replication group).
    pub fn delete_below(&mut self, at: u64, before: u64) {
        self.deletions.push(at, before);
    }

    /// The log start DeleteRecords set (0: never): records below it are
    /// not served, whatever the segments still hold.
    pub fn deleted_below(&self) -> u64 {
        self.deletions.latest()
    }

    /// Records a log start known durable (recovered, or from a snapshot or
    /// start state).
    pub fn set_deleted_below(&mut self, before: u64) {
        self.deletions.push(0, before);
    }

    /// The log start the durable DeleteRecords records set, when every
    /// byte below `durable` is durable.
    pub fn durable_deleted_below(&self, durable: u64) -> u64 {
        self.deletions.below(durable)
    }

    /// Stops tracking the records below `durable` as pending: they are
    /// durable.
    pub fn settle_deletions(&mut self, durable: u64) {
        self.deletions.settle(durable);
    }
}

impl IndexHandle {
    /// The partition's first kept offset among the first `n` entries (the
    /// visible ones) when the journal starts at position `journal_start`:
    /// the first batch at or after it, or where the visible ones end when
    /// none is.
    pub fn log_start(&self, n: usize, journal_start: u64) -> u64 {
        log_start_in(&*self.index, n, self.floor, journal_start)
    }

    /// One past the last offset among the first `n` entries.
    pub fn end_offset(&self, n: usize) -> u64 {
        end_offset_in(&*self.index, n, self.floor)
    }
}

/// [`IndexHandle::log_start`] over any index.
pub fn log_start_in(
    index: &(impl IndexEntries + ?Sized),
    n: usize,
    floor: u64,
    journal_start: u64,
) -> u64 {
    let k = super::index::entries_below_in(index, n, journal_start);
    match index.entry(k) {
        Some(e) if k < n => e.base_offset,
        _ => end_offset_in(index, n, floor),
    }
}

/// One past the last offset among the first `n` entries of `index`, or
/// `floor` when it has none.
pub fn end_offset_in(index: &(impl IndexEntries + ?Sized), n: usize, floor: u64) -> u64 {
    n.checked_sub(1)
        .and_then(|last| index.entry(last))
        .map_or(floor, IndexEntry::next_offset)
}

impl Partition {
    /// Records a stored (stamped) data batch of this partition that starts
    /// at journal position `position`: its index entry and the next
    /// offset. The caller checked that the batch continues the partition's
    /// offsets. (Its producer's state is [`Catalog::land`]'s part.)
    pub(crate) fn land(&mut self, position: u64, batch: &[u8]) {
        let view = BatchView(batch);
        debug_assert_eq!(view.base_offset(), self.next_offset);
        let before = self
            .index
            .len()
            .checked_sub(1)
            .and_then(|i| self.index.get(i));
        let max_time_ms = before.map_or(self.floor_time_ms, |e| e.max_time_ms);
        self.index.push(IndexEntry {
            base_offset: view.base_offset(),
            position,
            len: batch.len() as u32,
            count: view.record_count(),
            max_time_ms: max_time_ms.max(view.append_time_ms()),
        });
        self.next_offset = view.next_offset();
    }

    /// Forgets every batch at or above journal position `at`, a batch
    /// boundary: the index becomes a new log holding only the entries
    /// below `at` (readers keep the old one valid through their `Arc`s, so
    /// it cannot be cut in place), and the next offset follows the last one
    /// kept. Returns false, changing nothing, when no entry lies at or
    /// above `at`.
    fn cut(&mut self, at: u64) -> bool {
        // DeleteRecords records at or above the cut are gone with it; the
        // settled ones lie below C, which no cut reaches.
        self.deletions.cut(at);
        let keep = super::index::entries_below_in(&self.index, self.index.len(), at);
        if keep == self.index.len() {
            return false;
        }
        let (mut index, _) = append_log();
        for i in 0..keep {
            // In bounds: keep is at most the writer's length.
            if let Some(e) = self.index.get(i) {
                index.push(*e);
            }
        }
        self.next_offset = end_offset_in(&index, keep, self.floor);
        self.index = index;
        true
    }
}

/// The producer fields of a batch as the producer states take them.
fn producer_batch(view: &BatchView<'_>) -> ProducerBatch {
    ProducerBatch {
        id: view.producer_id(),
        epoch: view.producer_epoch(),
        first_seq: view.producer_seq(),
    }
}

/// One topic as the writer sees it.
pub struct Topic {
    /// Id, name and partition count.
    pub meta: TopicMeta,
    /// Its partitions, indexed by partition number.
    pub partitions: Vec<Partition>,
    /// Journal position of its `CreateTopic` control record, once the
    /// journal wrote, received or recovered it; `None` for a topic known
    /// only from the checkpoint. Truncating the journal at or below it
    /// removes the topic.
    pub created_at: Option<u64>,
    /// Its own settings (retention), as the last record set them.
    pub config: TopicConfig,
    /// The settings records appended by this broker that may not be
    /// durable yet: each one's position and the settings before it.
    pub config_undo: Vec<(u64, TopicConfig)>,
}

impl Topic {
    /// Starts every partition where the start state says its kept batches
    /// begin (the journal's deleted part lies below), with the records
    /// DeleteRecords deleted there. The caller checked the partition count.
    /// The settings are left alone: a catalog snapshot may be newer than
    /// the start state (a full walk takes the start state's itself).
    pub fn continue_from(&mut self, st: &super::start::StartTopic) {
        for ((p, &log_start), &deleted) in self
            .partitions
            .iter_mut()
            .zip(&st.log_starts)
            .zip(&st.deleted_below)
        {
            p.floor = log_start;
            p.next_offset = log_start;
            p.set_deleted_below(deleted);
        }
    }

    /// Takes settings set by a record at journal position `at` that may
    /// not be durable yet (nor committed, in a replication group, where a
    /// cut may undo it: [`Catalog::cut`]); every byte below `durable` is
    /// both.
    pub fn set_config(&mut self, at: u64, config: TopicConfig, durable: u64) {
        self.config_undo.retain(|&(p, _)| p >= durable);
        self.config_undo.push((at, self.config));
        self.config = config;
    }

    /// Undoes the settings records at or above journal position `at`
    /// (a cut).
    fn cut_config(&mut self, at: u64) {
        while let Some(&(p, before)) = self.config_undo.last() {
            if p < at {
                break;
            }
            self.config = before;
            self.config_undo.pop();
        }
    }

    /// The settings the durable records set, when every byte below
    /// `durable` is durable: the start state saves only those.
    pub fn durable_config(&self, durable: u64) -> TopicConfig {
        self.config_undo
            .iter()
            .find(|&&(at, _)| at >= durable)
            .map_or(self.config, |&(_, before)| before)
    }

    /// Read handles on every partition index, for the reader stage.
    pub fn index_handles(&self) -> Vec<IndexHandle> {
        self.partitions
            .iter()
            .map(|p| IndexHandle {
                index: p.index.log().clone(),
                floor: p.floor,
                floor_time_ms: p.floor_time_ms,
            })
            .collect()
    }
}

/// What [`Catalog::cut`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogCut {
    /// Ids of the topics removed (their slots were the last ones).
    pub removed_topic_ids: Vec<u32>,
    /// Slots of the remaining topics whose partition indexes were replaced:
    /// readers must take new handles ([`Topic::index_handles`]).
    pub changed_topics: Vec<usize>,
}

/// Every topic, by position, name and id, and every producer state.
pub struct Catalog {
    topics: Vec<Topic>,
    by_name: HashMap<String, usize>,
    by_id: HashMap<u32, usize>,
    next_topic_id: u32,
    partition_count: usize,
    producers: ProducerStates,
    /// The replication group's id and the journal position of the control
    /// record that set it.
    cluster_id: Option<(u64, u64)>,
    /// Some DeleteRecords or settings record may be kept apart, unsettled
    /// ([`Catalog::settle`]).
    unsettled: bool,
    /// Position below which index entries may have left memory for segment
    /// index files ([`Catalog::trim`]): the journal is never cut below it.
    trimmed_below: u64,
    /// A trim's offer found its index replaced: some entries below
    /// `trimmed_below` are still in memory.
    stale_trims: bool,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new(0, ProducerLimits::default())
    }
}

impl Catalog {
    /// An empty catalog whose first topic id will be `next_topic_id`, with
    /// producer states bounded by `limits`.
    pub fn new(next_topic_id: u32, limits: ProducerLimits) -> Catalog {
        Catalog {
            topics: Vec::new(),
            by_name: HashMap::new(),
            by_id: HashMap::new(),
            next_topic_id,
            partition_count: 0,
            producers: ProducerStates::new(limits),
            cluster_id: None,
            unsettled: false,
            trimmed_below: 0,
            stale_trims: false,
        }
    }

    /// The replication group's id, once a control record set it.
    pub fn cluster_id(&self) -> Option<u64> {
        self.cluster_id.map(|(id, _)| id)
    }

    /// The group's id and the journal position of the record that set it.
    pub fn cluster_id_record(&self) -> Option<(u64, u64)> {
        self.cluster_id
    }

    /// Records the group's id from the control record at `position`.
    pub fn set_cluster_id(&mut self, id: u64, position: u64) {
        self.cluster_id = Some((id, position));
    }

    /// The producer state of `producer_id` on `partition` of the topic in
    /// `slot`.
    fn producer_key(&self, slot: usize, partition: usize, producer_id: u64) -> Key {
        Key {
            topic_id: self.topics[slot].meta.id,
            partition: partition as u32,
            producer_id,
        }
    }

    /// Says what to do with a producer batch for `partition` of the topic
    /// in `slot` at broker time `now_ms`: store it, answer it as a retry of
    /// a stored one, or refuse it (docs/protocol.md §9.1). The caller
    /// checked the partition exists and the batch's header is there.
    pub fn check_seq(&self, slot: usize, partition: usize, batch: &[u8], now_ms: i64) -> SeqCheck {
        let view = BatchView(batch);
        let key = self.producer_key(slot, partition, view.producer_id());
        self.producers.check(&key, producer_batch(&view), now_ms)
    }

    /// Records a stored (stamped) data batch of `partition` of the topic in
    /// `slot` that starts at journal position `position`: its index entry,
    /// the partition's next offset and its producer's state. The one place
    /// where a batch lands, for the writer's appends, replication and
    /// recovery alike. The caller checked that the batch continues the
    /// partition's offsets.
    pub fn land(&mut self, slot: usize, partition: usize, position: u64, batch: &[u8]) {
        self.topics[slot].partitions[partition].land(position, batch);
        let view = BatchView(batch);
        if view.producer_id() == 0 {
            return;
        }
        let key = self.producer_key(slot, partition, view.producer_id());
        let landed = Landed {
            first_seq: view.producer_seq(),
            last_seq: view.producer_seq(),
            base_offset: view.base_offset(),
            end: position + batch.len() as u64,
            append_time_ms: view.append_time_ms(),
        };
        self.producers.land(key, producer_batch(&view), landed);
    }

    /// The producer states (for their counts and limits).
    pub fn producers(&self) -> &ProducerStates {
        &self.producers
    }

    /// The slot of the topic named `name`.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The slot of the topic with id `id`.
    pub fn lookup_id(&self, id: u32) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// The topic in slot `slot`.
    pub fn topic(&self, slot: usize) -> &Topic {
        &self.topics[slot]
    }

    /// The topic in slot `slot`, mutably.
    pub fn topic_mut(&mut self, slot: usize) -> &mut Topic {
        &mut self.topics[slot]
    }

    /// Every topic.
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when there is no topic.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Partitions across all topics.
    pub fn partition_count(&self) -> usize {
        self.partition_count
    }

    /// The id the next new topic gets.
    pub fn next_topic_id(&self) -> u32 {
        self.next_topic_id
    }

    /// True when `partitions` more partitions keep the catalog within
    /// [`PARTITIONS_MAX`].
    pub fn has_room_for(&self, partitions: u32) -> bool {
        self.partition_count.saturating_add(partitions as usize) <= PARTITIONS_MAX
    }

    /// Adds a topic (from a checkpoint, a control record or a create
    /// request) and returns its slot. The caller checked the name is new
    /// and [`Catalog::has_room_for`] its partitions.
    pub fn add(&mut self, meta: TopicMeta) -> usize {
        let slot = self.topics.len();
        self.next_topic_id = self.next_topic_id.max(meta.id.saturating_add(1));
        self.partition_count += meta.partitions as usize;
        self.by_name.insert(meta.name.clone(), slot);
        self.by_id.insert(meta.id, slot);
        let partitions = (0..meta.partitions)
            .map(|_| Partition {
                next_offset: 0,
                index: append_log().0,
                floor: 0,
                floor_time_ms: i64::MIN,
                on_disk: Default::default(),
                deletions: Deletions::default(),
            })
            .collect();
        self.topics.push(Topic {
            meta,
            partitions,
            created_at: None,
            config: TopicConfig::default(),
            config_undo: Vec::new(),
        });
        slot
    }

    /// Forgets everything at or above journal position `at`, a batch
    /// boundary: removes the topics whose control record lies there, cuts
    /// the indexes of the others (see [`Partition::cut`]) and the producer
    /// states ([`ProducerStates::cut`]). The next
    /// topic id is kept: ids are never reused on a broker, so an id a
    /// reader or a stale request still holds cannot come to name another
    /// topic. (Followers take ids from the leader's control records, so
    /// gaps are harmless.)
    ///
    /// # Errors
    /// When a topic to remove precedes one to keep in slot order, changing
    /// nothing: slots are handed out in journal order, so that means the
    /// catalog does not match the journal, and removing a middle slot would
    /// renumber the topics after it.
    pub fn cut(&mut self, at: u64) -> Result<CatalogCut, String> {
        let removed_from = self.check_cut(at)?;
        if self.cluster_id.is_some_and(|(_, p)| p >= at) {
            self.cluster_id = None;
        }
        let mut cut = CatalogCut::default();
        for t in self.topics.drain(removed_from..) {
            self.by_name.remove(&t.meta.name);
            self.by_id.remove(&t.meta.id);
            self.partition_count -= t.partitions.len();
            cut.removed_topic_ids.push(t.meta.id);
        }
        for (slot, t) in self.topics.iter_mut().enumerate() {
            t.cut_config(at);
            // Not `any`: every partition of the topic must be cut.
            let changed = t
                .partitions
                .iter_mut()
                .fold(false, |changed, p| p.cut(at) | changed);
            if changed {
                cut.changed_topics.push(slot);
            }
        }
        self.producers.cut(at, &cut.removed_topic_ids);
        Ok(cut)
    }

    /// Removes the topics known only from the checkpoint (no `CreateTopic`
    /// record was met for them) and returns their names. Only for recovery,
    /// after a cut of acknowledged data, before any reader holds a slot:
    /// the remaining topics may change slots. The next topic id is kept.
    pub fn drop_unrecorded(&mut self) -> Vec<String> {
        let (kept, gone): (Vec<Topic>, Vec<Topic>) = std::mem::take(&mut self.topics)
            .into_iter()
            .partition(|t| t.created_at.is_some());
        self.by_name.clear();
        self.by_id.clear();
        self.partition_count = 0;
        for t in kept {
            let slot = self.topics.len();
            self.by_name.insert(t.meta.name.clone(), slot);
            self.by_id.insert(t.meta.id, slot);
            self.partition_count += t.partitions.len();
            self.topics.push(t);
        }
        gone.into_iter().map(|t| t.meta.name).collect()
    }

    /// Takes in a [`Trim`]: the segment it names is indexed on disk, so
    /// every partition records where its batches there start, and takes
    /// the offered smaller index when it still has the index the offer was
    /// copied from (after copying the entries appended since). Returns the
    /// slots of the topics whose indexes were replaced: readers must take
    /// new handles.
    pub fn trim(&mut self, trim: Trim) -> Vec<usize> {
        self.trimmed_below = self.trimmed_below.max(trim.below);
        let mut changed = Vec::new();
        for offer in trim.offers {
            let Some(slot) = self.lookup_id(offer.topic_id) else {
                continue;
            };
            let Some(p) = self.topics[slot]
                .partitions
                .get_mut(offer.partition as usize)
            else {
                continue;
            };
            for d in offer.firsts {
                if p.on_disk.back().is_none_or(|b| b.start < d.start) {
                    p.on_disk.push_back(d);
                }
            }
            if !Arc::ptr_eq(p.index.log(), &offer.source) {
                // A cut replaced the index meanwhile: the next job trims
                // it again.
                self.stale_trims = true;
                continue;
            }
            let mut index = offer.index;
            for i in offer.copied..p.index.len() {
                if let Some(e) = p.index.get(i) {
                    index.push(*e);
                }
            }
            p.index = index;
            p.floor = offer.floor;
            p.floor_time_ms = offer.floor_time_ms;
            if changed.last() != Some(&slot) {
                changed.push(slot);
            }
        }
        changed
    }

    /// Where index entries may have left memory, and whether some below it
    /// are still there (a trim was refused for an index a cut replaced);
    /// clears the latter.
    pub fn take_trim_state(&mut self) -> (u64, bool) {
        (self.trimmed_below, std::mem::take(&mut self.stale_trims))
    }

    /// Records a DeleteRecords record at journal position `at` (appended,
    /// received or recovered) for partition `partition` of the topic in
    /// `slot`, kept apart until [`Catalog::settle`] passes it. The
    /// partition's own records below `settled` settle here (one partition,
    /// not a sweep).
    pub fn delete_below(
        &mut self,
        slot: usize,
        partition: usize,
        at: u64,
        before: u64,
        settled: u64,
    ) {
        let p = &mut self.topics[slot].partitions[partition];
        p.settle_deletions(settled);
        p.delete_below(at, before);
        self.unsettled = true;
    }

    /// Records a settings record at journal position `at` for the topic in
    /// `slot`, kept apart as [`Catalog::delete_below`] does.
    pub fn set_config(&mut self, slot: usize, at: u64, config: TopicConfig, settled: u64) {
        self.topics[slot].set_config(at, config, settled);
        self.unsettled = true;
    }

    /// Every byte below `position` is durable and committed: the
    /// DeleteRecords and settings records there are settled (no cut undoes
    /// them). A pass over every partition when some record was kept apart
    /// since the last one, else nothing.
    pub fn settle(&mut self, position: u64) {
        if !std::mem::take(&mut self.unsettled) {
            return;
        }
        for t in &mut self.topics {
            t.config_undo.retain(|&(p, _)| p >= position);
            let mut left = !t.config_undo.is_empty();
            for p in &mut t.partitions {
                left |= p.deletions.settle(position);
            }
            self.unsettled |= left;
        }
    }

    /// Forgets the on-disk segments below `position`, which retention
    /// deleted.
    pub fn forget_below(&mut self, position: u64) {
        for t in &mut self.topics {
            for p in &mut t.partitions {
                while p.on_disk.front().is_some_and(|d| d.start < position) {
                    p.on_disk.pop_front();
                }
            }
        }
    }

    /// Checks that [`Catalog::cut`] at `at` can be done, changing nothing;
    /// returns the first slot it would remove.
    ///
    /// # Errors
    /// As [`Catalog::cut`]; also when `at` lies below what
    /// [`Catalog::trim`] took out of memory (only committed segments are
    /// indexed on disk, and the journal is never cut below C).
    pub fn check_cut(&self, at: u64) -> Result<usize, String> {
        if at < self.trimmed_below {
            return Err(format!(
                "a cut at {at} lies below {}, where index entries are on disk",
                self.trimmed_below
            ));
        }
        let removed_from = self
            .topics
            .iter()
            .position(|t| t.created_at.is_some_and(|p| p >= at))
            .unwrap_or(self.topics.len());
        if let Some(t) = self.topics[removed_from..]
            .iter()
            .find(|t| t.created_at.is_none_or(|p| p < at))
        {
            return Err(format!(
                "topic {} (created at {:?}) follows a topic created above the cut at {at}",
                t.meta.name, t.created_at
            ));
        }
        Ok(removed_from)
    }

    /// The catalog as it stands after every batch below `position` (the
    /// journal's end): what recovery restores instead of reading the
    /// journal below it. Copies the producer states: O(states + their
    /// windows).
    pub fn snapshot(&self, position: u64) -> CatalogSnapshot {
        CatalogSnapshot {
            position,
            // The catalog knows no terms: a group member's writer sets it.
            term: 0,
            next_topic_id: self.next_topic_id,
            cluster_id: self.cluster_id,
            topics: self
                .topics
                .iter()
                .map(|t| SnapshotTopic {
                    meta: t.meta.clone(),
                    created_at: t.created_at,
                    config: t.config,
                    next_offsets: t.partitions.iter().map(|p| p.next_offset).collect(),
                    deleted_below: t.partitions.iter().map(Partition::deleted_below).collect(),
                })
                .collect(),
            producers: self.producers.save(),
        }
    }

    /// A catalog holding `snap`'s topics (in its slot order, with their
    /// creation positions), producer states (under `limits`) and group
    /// id, whose partitions have no entry yet and start at offset 0:
    /// recovery sets where each one's kept batches start, takes their
    /// entries from the journal above that, and checks that they end at
    /// the snapshot's next offsets.
    ///
    /// # Errors
    /// When the snapshot cannot be a catalog: two topics with one name or
    /// id, or more partitions than the journal holds.
    pub fn restore(snap: &CatalogSnapshot, limits: ProducerLimits) -> Result<Catalog, String> {
        let mut catalog = Catalog::new(snap.next_topic_id, limits);
        for t in &snap.topics {
            if catalog.lookup(&t.meta.name).is_some() || catalog.lookup_id(t.meta.id).is_some() {
                return Err(format!("topic {} appears twice", t.meta.name));
            }
            if !catalog.has_room_for(t.meta.partitions) {
                return Err(format!(
                    "more than {PARTITIONS_MAX} partitions (topic {})",
                    t.meta.name
                ));
            }
            let slot = catalog.add(t.meta.clone());
            catalog.topics[slot].created_at = t.created_at;
            catalog.topics[slot].config = t.config;
            for (p, &below) in catalog.topics[slot]
                .partitions
                .iter_mut()
                .zip(&t.deleted_below)
            {
                p.set_deleted_below(below);
            }
        }
        catalog.next_topic_id = catalog.next_topic_id.max(snap.next_topic_id);
        catalog.producers = ProducerStates::restore(limits, &snap.producers);
        catalog.cluster_id = snap.cluster_id;
        Ok(catalog)
    }

    /// Takes the producer states a snapshot saved (under `limits`): a walk
    /// from a journal that begins at that snapshot continues them.
    pub fn restore_producers(
        &mut self,
        saved: &super::producers::SavedStates,
        limits: ProducerLimits,
    ) {
        self.producers = ProducerStates::restore(limits, saved);
    }

    /// Makes the next topic id at least `id` (ids known to be taken).
    pub fn raise_next_topic_id(&mut self, id: u32) {
        self.next_topic_id = self.next_topic_id.max(id);
    }

    /// Records that index entries below `position` are on disk, not in
    /// memory (recovery took them from segment index files).
    pub fn set_trimmed_below(&mut self, position: u64) {
        self.trimmed_below = self.trimmed_below.max(position);
    }

    /// The metadata of every topic, for a checkpoint.
    pub fn metas(&self) -> Vec<TopicMeta> {
        self.topics.iter().map(|t| t.meta.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::batch::{stamp, BatchBuilder, ProducerStamp, Stamp};

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    /// A partition with three on-disk segment parts (segments at 0, 100,
    /// 200; offsets 0.., 10.., 20..; 1000 bytes each; newest times 10, 20,
    /// 30) and two batches in memory (offsets 30 and 35 at positions 300
    /// and 310, stamped 40 and 50).
    fn spread() -> Partition {
        let mut c = Catalog::new(0, ProducerLimits::default());
        c.add(TopicMeta {
            id: 0,
            name: "t".into(),
            partitions: 1,
        });
        let mut p = c.topics.pop().unwrap().partitions.pop().unwrap();
        for k in 0..3u64 {
            p.on_disk.push_back(OnDisk {
                start: 100 * k,
                first_offset: 10 * k,
                next_offset: 10 * k + 10,
                bytes: 1000,
                max_time_ms: 10 * (k as i64 + 1),
            });
        }
        for (offset, position, time) in [(30, 300, 40), (35, 310, 50)] {
            p.index.push(IndexEntry {
                base_offset: offset,
                position,
                len: 10,
                count: 5,
                max_time_ms: time,
            });
        }
        p.floor = 30;
        p.next_offset = 40;
        p
    }

    #[test]
    fn a_retention_start_follows_times_and_sizes_on_disk_and_in_memory() {
        let p = spread();
        assert_eq!(p.retention_start(0, None, None), 0, "no limit");
        // By time: the first segment part (or batch) that is not all
        // older than the cutoff.
        assert_eq!(p.retention_start(0, Some(10), None), 0);
        assert_eq!(p.retention_start(0, Some(11), None), 10);
        assert_eq!(p.retention_start(0, Some(25), None), 20);
        assert_eq!(p.retention_start(0, Some(31), None), 30, "in memory");
        assert_eq!(p.retention_start(0, Some(45), None), 35);
        assert_eq!(p.retention_start(0, Some(51), None), 40, "the end");
        // By size: whole on-disk parts from the newest back until they
        // hold the limit; memory is kept whatever it holds.
        assert_eq!(p.retention_start(0, None, Some(1)), 20);
        assert_eq!(p.retention_start(0, None, Some(1000)), 20);
        assert_eq!(p.retention_start(0, None, Some(1001)), 10);
        assert_eq!(p.retention_start(0, None, Some(3000)), 0);
        assert_eq!(p.retention_start(0, None, Some(3001)), 0, "not enough");
        // The higher of the two.
        assert_eq!(p.retention_start(0, Some(11), Some(1)), 20);
        // Parts below the journal's start do not count.
        assert_eq!(p.retention_start(100, None, Some(3000)), 0);
        assert_eq!(p.retention_start(100, Some(5), None), 10);
    }

    #[test]
    fn a_partition_holds_a_segment_with_kept_undeleted_batches() {
        let mut p = spread();
        assert!(p.holds_in(100, 200, 0, None));
        assert!(p.holds_in(100, 200, 0, Some(20)));
        assert!(!p.holds_in(100, 200, 0, Some(21)), "all older");
        assert!(p.holds_in(300, 400, 0, Some(50)), "in memory");
        assert!(!p.holds_in(300, 400, 0, Some(51)));
        assert!(!p.holds_in(400, 500, 0, None), "no batch there");
        // Deleted by a durable record only.
        p.delete_below(320, 20);
        assert!(p.holds_in(100, 200, 320, None), "not durable yet");
        assert!(!p.holds_in(100, 200, 321, None));
        assert!(p.holds_in(200, 300, 321, None));
    }

    fn catalog(limits: ProducerLimits) -> Catalog {
        let mut c = Catalog::new(0, limits);
        for (id, name) in [(0, "a"), (1, "b")] {
            c.add(TopicMeta {
                id,
                name: name.into(),
                partitions: 2,
            });
        }
        c
    }

    /// A batch of producer `stamp` as the journal stores it: the next
    /// offsets of `partition` of topic `slot`, appended at `t`.
    fn stored(c: &Catalog, slot: usize, partition: usize, p: ProducerStamp, t: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(t, b"", b"v", &[]);
        let mut batch = b.finish_with(p).to_vec();
        stamp(
            &mut batch,
            &Stamp {
                base_offset: c.topic(slot).partitions[partition].next_offset,
                term: 1,
                append_time_ms: t,
                topic_id: c.topic(slot).meta.id,
                partition: partition as u32,
            },
        );
        batch
    }

    fn probe(id: u64, epoch: u32, seq: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(0, b"", b"v", &[]);
        b.finish_with(ProducerStamp { id, epoch, seq }).to_vec()
    }

    /// A journal of batches, as recovery replays it: (slot, partition,
    /// position, bytes).
    type Journal = Vec<(usize, usize, u64, Vec<u8>)>;

    /// Checks and lands batch `p` on `slot`/`partition` at time `t`,
    /// recording it in `journal`; the check must allow it.
    fn append(
        c: &mut Catalog,
        journal: &mut Journal,
        slot: usize,
        partition: usize,
        p: ProducerStamp,
        t: i64,
    ) {
        let batch = stored(c, slot, partition, p, t);
        assert_eq!(
            c.check_seq(slot, partition, &batch, t),
            SeqCheck::New,
            "{p:?}"
        );
        let position = journal
            .last()
            .map_or(0, |(_, _, pos, b)| pos + b.len() as u64);
        c.land(slot, partition, position, &batch);
        journal.push((slot, partition, position, batch));
    }

    fn replay(limits: ProducerLimits, journal: &Journal) -> Catalog {
        let mut c = catalog(limits);
        for (slot, partition, position, batch) in journal {
            c.land(*slot, *partition, *position, batch);
        }
        c
    }

    /// What both catalogs answer for every producer, epoch and sequence
    /// the scenario used, at `now`.
    fn same_answers(a: &Catalog, b: &Catalog, now: i64) {
        for slot in 0..2 {
            for partition in 0..2 {
                for id in 1..=4 {
                    for epoch in 0..3 {
                        for seq in 0..12 {
                            let batch = probe(id, epoch, seq);
                            assert_eq!(
                                a.check_seq(slot, partition, &batch, now),
                                b.check_seq(slot, partition, &batch, now),
                                "{slot}/{partition} producer {id} epoch {epoch} seq {seq}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn stamp_of(id: u64, epoch: u32, seq: u64) -> ProducerStamp {
        ProducerStamp { id, epoch, seq }
    }

    #[test]
    fn a_landed_batch_extends_the_index_and_its_producers_state() {
        let mut c = catalog(ProducerLimits::default());
        let mut j = Journal::new();
        append(&mut c, &mut j, 1, 1, stamp_of(7, 0, 0), 5);
        append(&mut c, &mut j, 1, 1, stamp_of(7, 0, 1), 5);
        let p = &c.topic(1).partitions[1];
        assert_eq!((p.next_offset, p.index.len()), (2, 2));
        let retry = probe(7, 0, 0);
        assert!(matches!(
            c.check_seq(1, 1, &retry, 5),
            SeqCheck::Duplicate(l) if l.base_offset == 0 && l.end == j[0].3.len() as u64
        ));
        // The same producer on another partition, or topic, starts afresh.
        assert_eq!(
            c.check_seq(1, 0, &probe(7, 0, 2), 5),
            SeqCheck::UnknownProducer
        );
        assert_eq!(
            c.check_seq(0, 1, &probe(7, 0, 2), 5),
            SeqCheck::UnknownProducer
        );
        assert_eq!(c.check_seq(1, 1, &probe(7, 0, 2), 5), SeqCheck::New);
        assert_eq!(c.producers().len(), 1);
    }

    #[test]
    fn recovery_rebuilds_the_same_states_evictions_and_expiries_included() {
        let limits = ProducerLimits {
            window: 4,
            idle_expiry_ms: 7 * DAY_MS as u64,
            states_max: 3,
        };
        let mut c = catalog(limits);
        let mut j = Journal::new();
        // Producer 1 on two partitions, a new epoch for producer 2, then
        // producers 3 and 4 push producer 1's first state out (cap 3), and
        // eight days later producer 4 again: whatever idled expires.
        for seq in 0..6 {
            append(&mut c, &mut j, 0, 0, stamp_of(1, 0, seq), 0);
        }
        append(&mut c, &mut j, 0, 1, stamp_of(1, 0, 0), DAY_MS);
        append(&mut c, &mut j, 1, 0, stamp_of(2, 0, 0), DAY_MS);
        append(&mut c, &mut j, 1, 0, stamp_of(2, 1, 0), DAY_MS);
        append(&mut c, &mut j, 1, 0, stamp_of(2, 1, 1), DAY_MS);
        append(&mut c, &mut j, 1, 1, stamp_of(3, 0, 0), 2 * DAY_MS);
        assert_eq!(c.producers().len(), 3, "the cap evicted one");
        assert_eq!(
            c.check_seq(0, 0, &probe(1, 0, 6), 2 * DAY_MS),
            SeqCheck::UnknownProducer,
            "the least recently used went"
        );
        same_answers(&c, &replay(limits, &j), 2 * DAY_MS);
        append(&mut c, &mut j, 0, 1, stamp_of(4, 0, 0), 9 * DAY_MS);
        assert_eq!(c.producers().len(), 2, "idle states expired");
        let rebuilt = replay(limits, &j);
        assert_eq!(rebuilt.producers().len(), 2);
        same_answers(&c, &rebuilt, 9 * DAY_MS);
    }

    #[test]
    fn a_producer_idle_past_the_expiry_stays_forgotten_after_a_restart() {
        let mut c = catalog(ProducerLimits::default());
        let mut j = Journal::new();
        for seq in 0..3 {
            append(&mut c, &mut j, 0, 0, stamp_of(1, 2, seq), 0);
        }
        // Restarted eight days later, with nothing written meanwhile: the
        // rebuilt state is idle past the expiry, so it is unknown.
        let rebuilt = replay(ProducerLimits::default(), &j);
        let later = 8 * DAY_MS;
        assert_eq!(
            rebuilt.check_seq(0, 0, &probe(1, 2, 3), later),
            SeqCheck::UnknownProducer
        );
        assert_eq!(
            rebuilt.check_seq(0, 0, &probe(1, 0, 0), later),
            SeqCheck::New
        );
        same_answers(&c, &rebuilt, later);
    }

    #[test]
    fn a_cut_agrees_with_recovery_of_the_cut_journal() {
        // Windows that hold every batch: the cut knows all recovery knows.
        // (Deeper cuts: see `ProducerStates::cut`.)
        let limits = ProducerLimits::default();
        let mut c = catalog(limits);
        let mut j = Journal::new();
        for seq in 0..3 {
            append(&mut c, &mut j, 0, 0, stamp_of(1, 0, seq), 0);
        }
        append(&mut c, &mut j, 0, 1, stamp_of(2, 0, 0), 0);
        let at = j.len();
        for seq in 3..9 {
            append(&mut c, &mut j, 0, 0, stamp_of(1, 0, seq), 0);
        }
        append(&mut c, &mut j, 0, 1, stamp_of(2, 0, 1), 0);
        append(&mut c, &mut j, 1, 1, stamp_of(3, 0, 0), 0);
        let position = j[at].2;
        c.cut(position).unwrap();
        j.truncate(at);
        let rebuilt = replay(limits, &j);
        same_answers(&c, &rebuilt, 0);
        assert_eq!(c.check_seq(0, 0, &probe(1, 0, 3), 0), SeqCheck::New);
        assert_eq!(
            c.check_seq(1, 1, &probe(3, 0, 1), 0),
            SeqCheck::UnknownProducer
        );
    }

    #[test]
    fn removing_a_topic_forgets_its_producers() {
        let mut c = catalog(ProducerLimits::default());
        c.topic_mut(1).created_at = Some(1_000_000);
        c.topic_mut(0).created_at = Some(0);
        let mut j = Journal::new();
        append(&mut c, &mut j, 1, 0, stamp_of(5, 0, 0), 0);
        append(&mut c, &mut j, 0, 0, stamp_of(5, 0, 0), 0);
        let cut = c.cut(1_000_000).unwrap();
        assert_eq!(cut.removed_topic_ids, vec![1]);
        assert_eq!(c.producers().len(), 1);
        assert_eq!(c.check_seq(0, 0, &probe(5, 0, 1), 0), SeqCheck::New);
    }
}
