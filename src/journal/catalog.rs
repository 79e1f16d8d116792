//! The catalog: topics, their partitions, each partition's next offset and
//! its index. Owned by the writer; readers get the indexes through
//! `Arc<PartitionIndex>` handles.

use super::append_log::{append_log, AppendWriter};
use super::checkpoint::TopicMeta;
use super::index::{IndexEntry, PartitionIndex};
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

/// The most partitions the journal holds, all topics together. Recovery
/// allocates an index for every partition that a control record or the
/// checkpoint declares (about 370 bytes each), so a damaged or hostile
/// count must be bounded before it is believed: at this limit the catalog
/// takes some 400 MB. It is ten times the default `partitions_max`.
pub const PARTITIONS_MAX: usize = 1 << 20;

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
        self.topics.push(Topic { meta, partitions });
        slot
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
