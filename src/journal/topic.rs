//! A topic as the journal records it, and the journal's bound on
//! partitions. Both the catalog (the live topics) and the checkpoint (their
//! saved copy) build on this module, which depends on neither.

/// One topic: what its control record declares and the checkpoint saves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// Broker-assigned id, stamped into every batch of the topic.
    pub id: u32,
    /// The topic's name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
}

/// The most partitions the journal holds, all topics together. Recovery
/// allocates an index for every partition that a control record or the
/// checkpoint declares (about 370 bytes each), so a damaged or hostile
/// count must be bounded before it is believed: at this limit the catalog
/// takes some 400 MB. It is ten times the default `partitions_max`.
pub const PARTITIONS_MAX: usize = 1 << 20;
