//! TEMPORARY interface stub; replaced by the real module from branch `snap`.
use super::producers::SavedStates;
use super::topic::TopicMeta;
use crate::wire::codec::{DecodeError, Reader};

/// The catalog as it stood after every batch below `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSnapshot {
    /// Position.
    pub position: u64,
    /// Next topic id.
    pub next_topic_id: u32,
    /// Cluster id.
    pub cluster_id: Option<(u64, u64)>,
    /// Topics.
    pub topics: Vec<SnapshotTopic>,
    /// Producers.
    pub producers: SavedStates,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTopic {
    /// Meta.
    pub meta: TopicMeta,
    /// Created at.
    pub created_at: Option<u64>,
    /// Next offsets.
    pub next_offsets: Vec<u64>,
}

/// Encode.
pub fn encode(_s: &CatalogSnapshot, _out: &mut Vec<u8>) {
    todo!()
}

/// Decode.
pub fn decode(_r: &mut Reader<'_>) -> Result<CatalogSnapshot, DecodeError> {
    todo!()
}
