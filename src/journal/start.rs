//! The start state: where the journal begins once retention deleted its
//! oldest segments, and what recovery needs to know of the deleted part.
//!
//! Without it recovery rebuilds the catalog by reading the journal from
//! position 0. Once the first segments are gone, the catalog as it stood at
//! the first kept byte comes from this file instead: every topic known then
//! and each partition's log start (the offset its first kept batch has, or
//! its next offset when it has none). It is written atomically before any
//! segment is deleted, so after a crash at any point of a deletion the file
//! names a position at which a segment exists, and any older segment still
//! on disk is a leftover that recovery deletes.
//!
//! ```text
//! offset size field
//!  0     4    magic          "HTST"
//!  4     2    version        4 (1, without deleted_below, 2, without the
//!                             topic settings, and 3, without term, are
//!                             still read)
//!  6     4    crc            CRC32C of bytes [10, end)
//! 10     8    position       the journal's first kept byte (a segment start)
//! 18     8    term           term of the batch that ended at position (0:
//!                             none, or a standalone journal's; 0 in
//!                             versions 1 to 3)
//! 26     8    cluster_id     the replication group's id, set by a record
//!                             below position; 0: none (versions 1 to 3)
//! 34     8    cluster_id_at  position of that record; u64::MAX: none
//! 42     4    next_topic_id  id the next created topic gets
//! 46     4    topic_count
//! 50     ...  topic_count × (u32 id | u32 partitions | u16 name_len | name
//!                            | u64 retention_ms | u64 retention_bytes
//!                            | partitions × (u64 log_start | u64 deleted_below))
//! ```
//! A topic's `retention_ms` and `retention_bytes` are its own settings,
//! `u64::MAX` for one left to the broker.
//! `log_start` is where the partition's kept batches begin; `deleted_below`
//! the log start DeleteRecords set (0: never), which may lie above it.
//! All integers are little-endian; names are UTF-8.

use super::dir::{begin_state, decode_state, read_state_file, seal_state, write_atomically};
use super::error::JournalError;
use super::topic::{encode_meta, MetaReader, TopicConfig, TopicMeta};
use crate::wire::codec::{DecodeError, Put, Reader};
use std::path::Path;

/// Name of the start state file in the data directory.
pub const START_FILE: &str = "start";
/// The temporary file a new start state is written to before the rename.
pub const START_TMP_FILE: &str = "start.tmp";
/// First bytes of a start state file.
pub const START_MAGIC: [u8; 4] = *b"HTST";
/// The start state format version written.
pub const START_VERSION: u16 = 4;
/// The third version, without the term: still read (as term 0).
pub const START_VERSION_3: u16 = 3;
/// The second version, without the topic settings: still read.
pub const START_VERSION_2: u16 = 2;
/// The first version, without `deleted_below`: still read.
pub const START_VERSION_1: u16 = 1;

/// One topic as it stood at the journal's first kept byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartTopic {
    /// Id, name and partition count.
    pub meta: TopicMeta,
    /// Its own settings.
    pub config: TopicConfig,
    /// Each partition's log start, by partition number: where its kept
    /// batches begin.
    pub log_starts: Vec<u64>,
    /// Each partition's log start as DeleteRecords set it (0: never).
    pub deleted_below: Vec<u64>,
}

/// The state the start file saves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartState {
    /// The journal's first kept byte: the start of its oldest segment.
    pub position: u64,
    /// Term of the batch that ended at `position` (0: none, or a
    /// standalone journal's): where a group member's consensus log starts
    /// when nothing later is known.
    pub term: u64,
    /// The replication group's id and the position of the record that set
    /// it, when that record lies below `position` (recovery meets no
    /// record there).
    pub cluster_id: Option<(u64, u64)>,
    /// Id the next created topic gets.
    pub next_topic_id: u32,
    /// Every topic known at `position`.
    pub topics: Vec<StartTopic>,
}

impl StartState {
    /// The start state of a journal that holds nothing but `snap`: it
    /// begins at the snapshot's position, where every partition's log
    /// start is its next offset (no batch is kept).
    pub fn from_snapshot(snap: &super::snapshot::CatalogSnapshot) -> StartState {
        StartState {
            position: snap.position,
            term: snap.term,
            cluster_id: snap.cluster_id,
            next_topic_id: snap.next_topic_id,
            topics: snap
                .topics
                .iter()
                .map(|t| StartTopic {
                    meta: t.meta.clone(),
                    config: t.config,
                    log_starts: t.next_offsets.clone(),
                    deleted_below: t.deleted_below.clone(),
                })
                .collect(),
        }
    }
}

/// Encodes a start state in the format of the [module docs](self).
///
/// # Panics
/// When a topic's partition count differs from its log starts, or a name
/// is longer than the format holds: the writer builds the state from its
/// catalog, whose names were validated long before.
pub fn encode(st: &StartState) -> Vec<u8> {
    let mut out = Vec::new();
    begin_state(&mut out, START_MAGIC, START_VERSION);
    out.put_u64(st.position);
    out.put_u64(st.term);
    let (id, at) = st.cluster_id.unwrap_or((0, u64::MAX));
    out.put_u64(id);
    out.put_u64(at);
    out.put_u32(st.next_topic_id);
    out.put_u32(st.topics.len() as u32);
    for t in &st.topics {
        assert_eq!(t.meta.partitions as usize, t.log_starts.len());
        assert_eq!(t.log_starts.len(), t.deleted_below.len());
        encode_meta(&t.meta, &mut out);
        t.config.encode(&mut out);
        for (&s, &d) in t.log_starts.iter().zip(&t.deleted_below) {
            out.put_u64(s);
            out.put_u64(d);
        }
    }
    seal_state(&mut out);
    out
}

/// Decodes a start state. Any bytes give a state or an error, never a
/// panic.
///
/// # Errors
/// [`JournalError::Corrupt`] when the magic, version, checksum or layout is
/// wrong (trailing bytes included), the topics hold more than
/// [`PARTITIONS_MAX`] partitions in all, or two topics share an id.
pub fn decode(bytes: &[u8]) -> Result<StartState, JournalError> {
    let version = match bytes.get(4..6) {
        Some(&[lo, hi]) => match u16::from_le_bytes([lo, hi]) {
            v @ (START_VERSION_1 | START_VERSION_2 | START_VERSION_3) => v,
            _ => START_VERSION,
        },
        _ => START_VERSION,
    };
    decode_state(bytes, START_MAGIC, version, "start state", |body| {
        decode_body(body, version)
    })
}

fn decode_body(body: &[u8], version: u16) -> Result<StartState, DecodeError> {
    let mut r = Reader::new(body);
    let position = r.u64("position")?;
    let (term, cluster_id) = if version == START_VERSION {
        let term = r.u64("term")?;
        let id = r.u64("cluster_id")?;
        let at = r.u64("cluster_id_at")?;
        let cluster_id = match (id, at) {
            (0, u64::MAX) => None,
            (id, at) if id != 0 && at < position => Some((id, at)),
            _ => {
                return Err(DecodeError::InvalidValue {
                    field: "cluster_id",
                })
            }
        };
        (term, cluster_id)
    } else {
        (0, None)
    };
    let next_topic_id = r.u32("next_topic_id")?;
    let count = r.u32("topic_count")? as usize;
    // Counts come from the file: reserve only what the remaining bytes
    // could hold, and believe no more partitions than the journal allows.
    let mut topics = Vec::with_capacity(count.min(r.remaining() / 10));
    let mut metas = MetaReader::default();
    for _ in 0..count {
        let meta = metas.read(&mut r)?;
        let config = if version >= START_VERSION_3 {
            TopicConfig::decode(&mut r)?
        } else {
            TopicConfig::default()
        };
        // The count was bounded by the meta reader; the room by what is left.
        let per_partition = if version == START_VERSION_1 { 8 } else { 16 };
        let room = (meta.partitions as usize).min(r.remaining() / per_partition);
        let mut log_starts = Vec::with_capacity(room);
        let mut deleted_below = Vec::with_capacity(room);
        for _ in 0..meta.partitions {
            log_starts.push(r.u64("log start")?);
            deleted_below.push(if version == START_VERSION_1 {
                0
            } else {
                r.u64("deleted below")?
            });
        }
        topics.push(StartTopic {
            meta,
            config,
            log_starts,
            deleted_below,
        });
    }
    r.finish()?;
    Ok(StartState {
        position,
        term,
        cluster_id,
        next_topic_id,
        topics,
    })
}

/// Replaces `dir/start` with `st`, atomically and durably.
///
/// # Errors
/// [`JournalError::Io`] (or [`JournalError::StorageFull`]) when a step
/// fails; the old file is then still in place.
pub fn write(dir: &Path, st: &StartState) -> Result<(), JournalError> {
    write_atomically(dir, START_TMP_FILE, START_FILE, &encode(st))
}

/// Reads `dir/start`; `None` when the journal never lost a segment.
///
/// # Errors
/// [`JournalError::Corrupt`] when the file exists but does not decode;
/// [`JournalError::Io`] when it cannot be read.
pub fn read(dir: &Path) -> Result<Option<StartState>, JournalError> {
    read_state_file(dir, START_FILE)?
        .map(|bytes| decode(&bytes))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> StartState {
        StartState {
            position: 1 << 40,
            term: 1 << 20,
            cluster_id: Some((0xC1, 77)),
            next_topic_id: 9,
            topics: vec![
                StartTopic {
                    meta: TopicMeta {
                        id: 3,
                        name: "orders".into(),
                        partitions: 2,
                    },
                    config: TopicConfig {
                        retention_ms: Some(60_000),
                        retention_bytes: Some(0),
                    },
                    log_starts: vec![17, 0],
                    deleted_below: vec![20, 0],
                },
                StartTopic {
                    meta: TopicMeta {
                        id: 8,
                        name: "胡同".into(),
                        partitions: 1,
                    },
                    config: TopicConfig::default(),
                    log_starts: vec![u64::MAX],
                    deleted_below: vec![0],
                },
            ],
        }
    }

    #[test]
    fn a_start_state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), &sample()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(sample()));
    }

    /// A start state written before DeleteRecords existed reads with no
    /// records deleted.
    #[test]
    fn a_version_1_start_state_reads_without_deleted_records() {
        let mut v1 = Vec::new();
        begin_state(&mut v1, START_MAGIC, START_VERSION_1);
        v1.put_u64(1 << 40);
        v1.put_u32(9);
        v1.put_u32(1);
        encode_meta(
            &TopicMeta {
                id: 3,
                name: "orders".into(),
                partitions: 2,
            },
            &mut v1,
        );
        v1.put_u64(17);
        v1.put_u64(0);
        seal_state(&mut v1);
        let st = decode(&v1).unwrap();
        assert_eq!(st.topics[0].log_starts, vec![17, 0]);
        assert_eq!(st.topics[0].deleted_below, vec![0, 0]);
        assert_eq!(st.topics[0].config, TopicConfig::default());
        let v4 = encode(&sample());
        assert_eq!(&v4[4..6], &[4, 0]);
    }

    /// A start state written before topics had settings reads with every
    /// setting left to the broker; the current one carries them after
    /// the name.
    #[test]
    fn a_version_2_start_state_reads_without_settings() {
        let meta = TopicMeta {
            id: 3,
            name: "o".into(),
            partitions: 1,
        };
        let mut v2 = Vec::new();
        begin_state(&mut v2, START_MAGIC, START_VERSION_2);
        v2.put_u64(1 << 40);
        v2.put_u32(9);
        v2.put_u32(1);
        encode_meta(&meta, &mut v2);
        v2.put_u64(17);
        v2.put_u64(20);
        seal_state(&mut v2);
        let st = decode(&v2).unwrap();
        assert_eq!(st.topics[0].log_starts, vec![17]);
        assert_eq!(st.topics[0].deleted_below, vec![20]);
        assert_eq!(st.topics[0].config, TopicConfig::default());

        let config = TopicConfig {
            retention_ms: None,
            retention_bytes: Some(5),
        };
        let v4 = encode(&StartState {
            term: 7,
            topics: vec![StartTopic {
                config,
                ..st.topics[0].clone()
            }],
            ..st
        });
        // Header (10), position, term, cluster id and its position, next
        // id, count (40), the topic (4+4+2+1).
        assert_eq!(&v4[18..26], &7u64.to_le_bytes());
        assert_eq!(
            &v4[26..42],
            &[&0u64.to_le_bytes()[..], &u64::MAX.to_le_bytes()].concat()[..]
        );
        let at = 10 + 40 + 11;
        assert_eq!(&v4[at..at + 8], &u64::MAX.to_le_bytes());
        assert_eq!(&v4[at + 8..at + 16], &5u64.to_le_bytes());
        let back = decode(&v4).unwrap();
        assert_eq!((back.term, back.topics[0].config), (7, config));
    }

    /// A start state written before it carried the term reads with term 0.
    #[test]
    fn a_version_3_start_state_reads_with_term_0() {
        let mut v3 = Vec::new();
        begin_state(&mut v3, START_MAGIC, START_VERSION_3);
        v3.put_u64(1 << 40);
        v3.put_u32(9);
        v3.put_u32(1);
        encode_meta(
            &TopicMeta {
                id: 3,
                name: "o".into(),
                partitions: 1,
            },
            &mut v3,
        );
        TopicConfig::default().encode(&mut v3);
        v3.put_u64(17);
        v3.put_u64(20);
        seal_state(&mut v3);
        let st = decode(&v3).unwrap();
        assert_eq!((st.position, st.term, st.next_topic_id), (1 << 40, 0, 9));
        assert_eq!(st.topics[0].log_starts, vec![17]);
        assert_eq!(st.topics[0].deleted_below, vec![20]);
    }

    #[test]
    fn every_damaged_byte_is_refused() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "byte {i} flipped");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
    }

    proptest! {
        /// Any bytes give a state or an error, never a panic.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
