//! The catalog: topics, their partitions, each partition's next offset and
//! its index. Owned by the writer; readers get the indexes through
//! `Arc<PartitionIndex>` handles.

use super::append_log::{append_log, AppendWriter};
use super::index::{IndexEntry, PartitionIndex};
use super::topic::{TopicMeta, PARTITIONS_MAX};
use crate::wire::batch::BatchView;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Batches remembered per producer and partition for spotting retries.
pub const PRODUCER_WINDOW: usize = 64;

/// Where an earlier batch of a producer landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// The batch's producer sequence number.
    pub seq: u64,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Journal position one past it.
    pub end: u64,
    /// When the broker appended it, Unix ms.
    pub append_time_ms: i64,
}

/// What the partition knows of a producer's batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not seen: append it.
    New,
    /// A retry of a batch already stored: answer with where it landed.
    Duplicate(Landed),
    /// Older than the remembered window: it may be a duplicate, so it is
    /// refused rather than stored twice.
    Stale,
}

/// One partition as the writer sees it.
pub struct Partition {
    /// Offset the next record will get.
    pub next_offset: u64,
    /// One entry per stored batch, in journal order.
    pub index: AppendWriter<IndexEntry>,
    /// The last batches of each producer (by producer id), oldest first.
    producers: HashMap<u64, VecDeque<Landed>>,
}

impl Partition {
    /// Classifies batch `seq` of producer `producer_id` (0 = no producer
    /// identity: always new).
    pub fn check_seq(&self, producer_id: u64, seq: u64) -> SeqCheck {
        if producer_id == 0 {
            return SeqCheck::New;
        }
        let Some(window) = self.producers.get(&producer_id) else {
            return SeqCheck::New;
        };
        if let Some(l) = window.iter().find(|l| l.seq == seq) {
            return SeqCheck::Duplicate(*l);
        }
        match (window.front(), window.len()) {
            (Some(oldest), PRODUCER_WINDOW) if seq < oldest.seq => SeqCheck::Stale,
            _ => SeqCheck::New,
        }
    }

    /// Records a stored (stamped) data batch of this partition that starts
    /// at journal position `position`: its index entry, the next offset and
    /// its producer's window. The one place where a batch lands, for the
    /// writer's appends, replication and recovery alike. The caller checked
    /// that the batch continues the partition's offsets.
    pub fn land(&mut self, position: u64, batch: &[u8]) {
        let view = BatchView(batch);
        debug_assert_eq!(view.base_offset(), self.next_offset);
        self.index.push(IndexEntry {
            base_offset: view.base_offset(),
            position,
            len: batch.len() as u32,
            count: view.record_count(),
        });
        self.next_offset = view.next_offset();
        self.record_seq(
            view.producer_id(),
            Landed {
                seq: view.producer_seq(),
                base_offset: view.base_offset(),
                end: position + batch.len() as u64,
                append_time_ms: view.append_time_ms(),
            },
        );
    }

    /// Forgets every batch at or above journal position `at`, a batch
    /// boundary: the index becomes a new log holding only the entries
    /// below `at` (readers keep the old one valid through their `Arc`s, so
    /// it cannot be cut in place), the next offset follows the last one
    /// kept, and producer windows drop the batches that ended above `at`.
    /// Returns false, changing nothing, when no entry lies at or above `at`.
    ///
    /// A trimmed producer window may hold fewer batches than recovery would
    /// rebuild from the journal (it remembers older ones the window had
    /// already evicted). That only narrows retry detection for sequence
    /// numbers older than every batch kept, which no producer retries after
    /// losing its newer ones.
    fn cut(&mut self, at: u64) -> bool {
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
        self.next_offset = keep
            .checked_sub(1)
            .and_then(|last| index.get(last))
            .map_or(0, IndexEntry::next_offset);
        self.index = index;
        self.producers.retain(|_, window| {
            while window.back().is_some_and(|l| l.end > at) {
                window.pop_back();
            }
            !window.is_empty()
        });
        true
    }

    /// Remembers where a producer's batch landed.
    pub fn record_seq(&mut self, producer_id: u64, landed: Landed) {
        if producer_id == 0 {
            return;
        }
        let window = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| VecDeque::with_capacity(PRODUCER_WINDOW));
        if window.len() == PRODUCER_WINDOW {
            window.pop_front();
        }
        window.push_back(landed);
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
}

impl Topic {
    /// Read handles on every partition index, for the reader stage.
    pub fn index_handles(&self) -> Vec<Arc<PartitionIndex>> {
        self.partitions
            .iter()
            .map(|p| p.index.log().clone())
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

/// Every topic, by position, name and id.
#[derive(Default)]
pub struct Catalog {
    topics: Vec<Topic>,
    by_name: HashMap<String, usize>,
    by_id: HashMap<u32, usize>,
    next_topic_id: u32,
    partition_count: usize,
}

impl Catalog {
    /// An empty catalog whose first topic id will be `next_topic_id`.
    pub fn new(next_topic_id: u32) -> Catalog {
        Catalog {
            next_topic_id,
            ..Catalog::default()
        }
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
                producers: HashMap::new(),
            })
            .collect();
        self.topics.push(Topic {
            meta,
            partitions,
            created_at: None,
        });
        slot
    }

    /// Forgets everything at or above journal position `at`, a batch
    /// boundary: removes the topics whose control record lies there and
    /// cuts the indexes of the others (see [`Partition::cut`]). The next
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
        let mut cut = CatalogCut::default();
        for t in self.topics.drain(removed_from..) {
            self.by_name.remove(&t.meta.name);
            self.by_id.remove(&t.meta.id);
            self.partition_count -= t.partitions.len();
            cut.removed_topic_ids.push(t.meta.id);
        }
        for (slot, t) in self.topics.iter_mut().enumerate() {
            // Not `any`: every partition of the topic must be cut.
            let changed = t
                .partitions
                .iter_mut()
                .fold(false, |changed, p| p.cut(at) | changed);
            if changed {
                cut.changed_topics.push(slot);
            }
        }
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

    /// Checks that [`Catalog::cut`] at `at` can be done, changing nothing;
    /// returns the first slot it would remove.
    ///
    /// # Errors
    /// As [`Catalog::cut`].
    pub fn check_cut(&self, at: u64) -> Result<usize, String> {
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

    /// The metadata of every topic, for a checkpoint.
    pub fn metas(&self) -> Vec<TopicMeta> {
        self.topics.iter().map(|t| t.meta.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(seq: u64) -> Landed {
        Landed {
            seq,
            base_offset: seq * 10,
            end: seq * 100,
            append_time_ms: 5,
        }
    }

    #[test]
    fn a_retried_batch_is_recognised_and_points_at_the_first_copy() {
        let mut c = Catalog::new(0);
        let slot = c.add(TopicMeta {
            id: 0,
            name: "t".into(),
            partitions: 1,
        });
        let p = &mut c.topic_mut(slot).partitions[0];
        assert_eq!(p.check_seq(7, 1), SeqCheck::New);
        p.record_seq(7, landed(1));
        assert_eq!(p.check_seq(7, 1), SeqCheck::Duplicate(landed(1)));
        assert_eq!(p.check_seq(8, 1), SeqCheck::New, "another producer");
        assert_eq!(p.check_seq(0, 1), SeqCheck::New, "no producer identity");
        assert_eq!(p.check_seq(7, 2), SeqCheck::New);
    }

    #[test]
    fn a_batch_older_than_the_window_is_stale() {
        let mut c = Catalog::new(0);
        let slot = c.add(TopicMeta {
            id: 0,
            name: "t".into(),
            partitions: 1,
        });
        let p = &mut c.topic_mut(slot).partitions[0];
        for seq in 10..10 + PRODUCER_WINDOW as u64 + 5 {
            p.record_seq(3, landed(seq));
        }
        assert_eq!(p.check_seq(3, 12), SeqCheck::Stale);
        assert_eq!(p.check_seq(3, 20), SeqCheck::Duplicate(landed(20)));
        assert_eq!(p.check_seq(3, 1000), SeqCheck::New);
    }
}
