//! The catalog: topics, their partitions, each partition's next offset and
//! its index. Owned by the writer; readers get the indexes through
//! `Arc<PartitionIndex>` handles.

use super::append_log::{append_log, AppendWriter};
use super::checkpoint::TopicMeta;
use super::index::{IndexEntry, PartitionIndex};
use std::collections::HashMap;
use std::sync::Arc;

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
