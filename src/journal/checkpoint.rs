//! The checkpoint: the small state that lets recovery skip most of the
//! journal. Written atomically (temp file, fsync, rename, fsync the
//! directory), so after any crash the file holds either the old or the new
//! checkpoint, never a mixture.
//!
//! ```text
//! offset size field
//!  0     4    magic          "HTCP"
//!  4     2    version        1
//!  6     4    crc            CRC32C of bytes [10, end)
//! 10     8    position       journal position every byte below which is durable
//! 18     4    next_topic_id  id the next created topic gets
//! 22     4    topic_count
//! 26     ...  topic_count × (u32 id | u32 partitions | u16 name_len | name)
//! ```
//! All integers are little-endian; names are UTF-8.

use super::dir::{
    begin_state, decode_state, read_state_file, seal_state, write_atomically, STATE_HEADER_LEN,
};
use super::error::JournalError;
pub use super::topic::TOPIC_NAME_BYTES_MAX;
use super::topic::{encode_meta, MetaReader, TopicMeta};
use crate::wire::codec::{DecodeError, Put, Reader};
use std::path::Path;

/// Name of the checkpoint file in the data directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Name of the temporary file a new checkpoint is written to before the
/// rename; a leftover one (from a crash mid-write) is ignored and replaced.
pub const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
/// First bytes of a checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"HTCP";
/// The only checkpoint format version so far.
pub const CHECKPOINT_VERSION: u16 = 1;
/// Bytes before the checksummed body: magic, version, crc.
const HEADER_LEN: usize = STATE_HEADER_LEN;

/// The state a checkpoint saves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Journal position below which every batch was durable and valid when
    /// the checkpoint was written: recovery only checks headers below it.
    pub position: u64,
    /// Id the next created topic gets.
    pub next_topic_id: u32,
    /// Every topic known at `position`.
    pub topics: Vec<TopicMeta>,
}

/// Encodes a checkpoint in the format of the [module docs](self).
///
/// # Panics
/// When a topic name is longer than [`TOPIC_NAME_BYTES_MAX`]; names are
/// validated long before they reach a checkpoint, and [`write()`] checks
/// first so the broker never gets here with one.
pub fn encode(cp: &Checkpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        HEADER_LEN + 16 + cp.topics.iter().map(|t| 10 + t.name.len()).sum::<usize>(),
    );
    begin_state(&mut out, CHECKPOINT_MAGIC, CHECKPOINT_VERSION);
    out.put_u64(cp.position);
    out.put_u32(cp.next_topic_id);
    out.put_u32(cp.topics.len() as u32);
    for t in &cp.topics {
        encode_meta(t, &mut out);
    }
    seal_state(&mut out);
    out
}

/// Decodes a checkpoint. Any bytes at all give either a checkpoint or an
/// error, never a panic.
///
/// # Errors
/// [`JournalError::Corrupt`] when the magic, version, checksum or layout is
/// wrong (including trailing bytes), the topics hold more than
/// [`PARTITIONS_MAX`] partitions in all, or two topics share an id.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, JournalError> {
    decode_state(
        bytes,
        CHECKPOINT_MAGIC,
        CHECKPOINT_VERSION,
        "checkpoint",
        decode_body,
    )
}

fn decode_body(body: &[u8]) -> Result<Checkpoint, DecodeError> {
    let mut r = Reader::new(body);
    let position = r.u64("position")?;
    let next_topic_id = r.u32("next_topic_id")?;
    let count = r.u32("topic_count")? as usize;
    // The count comes from the file: reserve no more than the remaining
    // bytes could hold (10 bytes per topic at least), so a damaged count
    // cannot make us allocate gigabytes before the reads fail.
    let mut topics = Vec::with_capacity(count.min(r.remaining() / 10));
    let mut metas = MetaReader::default();
    for _ in 0..count {
        topics.push(metas.read(&mut r)?);
    }
    r.finish()?;
    Ok(Checkpoint {
        position,
        next_topic_id,
        topics,
    })
}

/// Writes `dir/checkpoint.tmp`, fsyncs it, renames it over
/// `dir/checkpoint` and fsyncs the directory, so that the new checkpoint
/// replaces the old one atomically and durably.
///
/// # Errors
/// [`JournalError::Io`] (or [`JournalError::StorageFull`]) when a step
/// fails; the old checkpoint is then still in place. A topic name longer
/// than [`TOPIC_NAME_BYTES_MAX`] is refused as an `InvalidInput` IO error
/// before anything is written.
pub fn write(dir: &Path, cp: &Checkpoint) -> Result<(), JournalError> {
    if let Some(t) = cp
        .topics
        .iter()
        .find(|t| t.name.len() > TOPIC_NAME_BYTES_MAX)
    {
        return Err(JournalError::io(
            "writing checkpoint",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "topic {} has a name of {} bytes, above {TOPIC_NAME_BYTES_MAX}",
                    t.id,
                    t.name.len()
                ),
            ),
        ));
    }
    write_atomically(dir, CHECKPOINT_TMP_FILE, CHECKPOINT_FILE, &encode(cp))
}

/// Reads `dir/checkpoint`.
///
/// # Errors
/// [`JournalError::Corrupt`] when the file exists but does not decode;
/// [`JournalError::Io`] when it cannot be read.
pub fn read(dir: &Path) -> Result<Option<Checkpoint>, JournalError> {
    read_state_file(dir, CHECKPOINT_FILE)?
        .map(|bytes| decode(&bytes))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::topic::PARTITIONS_MAX;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn sample() -> Checkpoint {
        Checkpoint {
            position: 0x0102_0304_0506_0708,
            next_topic_id: 3,
            topics: vec![
                TopicMeta {
                    id: 1,
                    name: "orders".into(),
                    partitions: 8,
                },
                TopicMeta {
                    id: 2,
                    name: "胡同".into(),
                    partitions: 1,
                },
            ],
        }
    }

    #[test]
    fn encoding_follows_the_documented_layout() {
        let cp = Checkpoint {
            position: 0x1122,
            next_topic_id: 7,
            topics: vec![TopicMeta {
                id: 6,
                name: "ab".into(),
                partitions: 2,
            }],
        };
        let bytes = encode(&cp);
        let body: &[u8] = &[
            0x22, 0x11, 0, 0, 0, 0, 0, 0, // position
            7, 0, 0, 0, // next_topic_id
            1, 0, 0, 0, // topic_count
            6, 0, 0, 0, // id
            2, 0, 0, 0, // partitions
            2, 0, b'a', b'b', // name
        ];
        assert_eq!(&bytes[..6], b"HTCP\x01\x00");
        assert_eq!(&bytes[6..10], &crc32c::crc32c(body).to_le_bytes());
        assert_eq!(&bytes[10..], body);
    }

    #[test]
    fn checkpoints_round_trip() {
        for cp in [Checkpoint::default(), sample()] {
            assert_eq!(decode(&encode(&cp)).unwrap(), cp);
        }
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Err(JournalError::Corrupt(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_corrupt() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(
                matches!(decode(&bad), Err(JournalError::Corrupt(_))),
                "byte {i} not covered"
            );
        }
    }

    #[test]
    fn trailing_bytes_and_wrong_versions_are_corrupt_even_with_a_valid_crc() {
        let mut long = encode(&sample());
        long.push(0);
        let crc = crc32c::crc32c(&long[HEADER_LEN..]);
        long[6..10].copy_from_slice(&crc.to_le_bytes());
        let err = decode(&long).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");

        let mut v2 = encode(&sample());
        v2[4] = 2;
        let err = decode(&v2).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn a_huge_topic_count_fails_without_allocating_for_it() {
        let mut bytes = encode(&Checkpoint::default());
        bytes[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[HEADER_LEN..]);
        bytes[6..10].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(JournalError::Corrupt(_))));
    }

    #[test]
    fn more_partitions_than_the_journal_holds_are_corrupt() {
        let topic = |id: u32, partitions: u32| TopicMeta {
            id,
            name: format!("t{id}"),
            partitions,
        };
        let half = (PARTITIONS_MAX / 2) as u32;
        let at_limit = Checkpoint {
            topics: vec![topic(1, half), topic(2, half)],
            ..Checkpoint::default()
        };
        assert_eq!(decode(&encode(&at_limit)).unwrap(), at_limit);
        let beyond = Checkpoint {
            topics: vec![topic(1, half), topic(2, half + 1)],
            ..Checkpoint::default()
        };
        let err = decode(&encode(&beyond)).unwrap_err();
        assert!(err.to_string().contains("topic partitions"), "{err}");
    }

    #[test]
    fn two_topics_with_one_id_are_corrupt() {
        let mut cp = sample();
        cp.topics[1].id = cp.topics[0].id;
        let err = decode(&encode(&cp)).unwrap_err();
        assert!(err.to_string().contains("topic id"), "{err}");
    }

    #[test]
    fn a_missing_checkpoint_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn written_checkpoint_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &Checkpoint::default()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(Checkpoint::default()));
        write(dir.path(), &sample()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(CHECKPOINT_TMP_FILE).exists());
    }

    #[test]
    fn a_leftover_temp_file_from_a_crash_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample()).unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_TMP_FILE), b"torn garbage").unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(sample()));
        write(dir.path(), &Checkpoint::default()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(Checkpoint::default()));
    }

    #[test]
    fn a_damaged_checkpoint_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample()).unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(JournalError::Corrupt(_))));
    }

    #[test]
    fn an_overlong_topic_name_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            topics: vec![TopicMeta {
                id: 1,
                name: "x".repeat(TOPIC_NAME_BYTES_MAX + 1),
                partitions: 1,
            }],
            ..Checkpoint::default()
        };
        assert!(matches!(
            write(dir.path(), &cp),
            Err(JournalError::Io { .. })
        ));
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    /// Up to 20 of these stay within `PARTITIONS_MAX` partitions in all.
    fn topic() -> impl Strategy<Value = TopicMeta> {
        let partitions = 0..=(PARTITIONS_MAX / 20) as u32;
        (any::<u32>(), "\\PC{0,40}", partitions).prop_map(|(id, name, partitions)| TopicMeta {
            id,
            name,
            partitions,
        })
    }

    proptest! {
        #[test]
        fn any_checkpoint_round_trips(
            position in any::<u64>(),
            next_topic_id in any::<u32>(),
            mut topics in prop::collection::vec(topic(), 0..20),
        ) {
            // A checkpoint never lists one id twice.
            let mut ids = HashSet::new();
            topics.retain(|t| ids.insert(t.id));
            let cp = Checkpoint { position, next_topic_id, topics };
            prop_assert_eq!(decode(&encode(&cp)).unwrap(), cp);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut with_magic = b"HTCP\x01\x00".to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic);
        }

        #[test]
        fn random_bodies_with_a_valid_crc_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = b"HTCP\x01\x00".to_vec();
            bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = decode(&bytes);
        }
    }
}
