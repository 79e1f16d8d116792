//! A topic as the journal records it, and the journal's bound on
//! partitions. Both the catalog (the live topics) and the checkpoint and
//! start state (their saved copies) build on this module, which depends on
//! none of them.

use crate::wire::codec::{DecodeError, Put, Reader};
pub use crate::wire::topic_config::{TopicConfig, SETTING_DEFAULT};
use std::collections::HashSet;

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

/// Longest topic name the state files hold (its length is a `u16`).
pub const TOPIC_NAME_BYTES_MAX: usize = u16::MAX as usize;

/// Appends a topic as the state files (checkpoint, start state) hold it:
/// `u32 id | u32 partitions | u16 name_len | name`.
///
/// # Panics
/// When the name is longer than [`TOPIC_NAME_BYTES_MAX`]; names are
/// validated long before they reach a state file.
pub fn encode_meta(t: &TopicMeta, out: &mut Vec<u8>) {
    assert!(
        t.name.len() <= TOPIC_NAME_BYTES_MAX,
        "topic name of {} bytes",
        t.name.len()
    );
    out.put_u32(t.id);
    out.put_u32(t.partitions);
    out.put_str(&t.name);
}

/// Reads the topics of a state file one by one, refusing what recovery
/// must not believe: more than [`PARTITIONS_MAX`] partitions in all (it
/// allocates an index for each), or an id used twice (data batches name
/// their topic by id).
#[derive(Default)]
pub struct MetaReader {
    partitions_total: usize,
    ids: HashSet<u32>,
}

impl MetaReader {
    /// Reads the next topic, as [`encode_meta`] wrote it.
    ///
    /// # Errors
    /// The decode error, or `InvalidValue` for a count or id refused above.
    pub fn read(&mut self, r: &mut Reader<'_>) -> Result<TopicMeta, DecodeError> {
        let id = r.u32("topic id")?;
        let partitions = r.u32("topic partitions")?;
        self.partitions_total = self.partitions_total.saturating_add(partitions as usize);
        if self.partitions_total > PARTITIONS_MAX {
            return Err(DecodeError::InvalidValue {
                field: "topic partitions",
            });
        }
        if !self.ids.insert(id) {
            return Err(DecodeError::InvalidValue { field: "topic id" });
        }
        let name = r.str("topic name")?.to_owned();
        Ok(TopicMeta {
            id,
            name,
            partitions,
        })
    }
}
