//! Control records: broker metadata changes carried in the journal itself.
//!
//! Creating a topic is written as a control batch (kind
//! [`BatchKind::Control`]) in the same stream as the data, so that the
//! journal alone is the history of the broker: recovery replays topic
//! creations it finds after the checkpoint, and a replica that copies the
//! journal byte for byte agrees with its leader on metadata, in order
//! with the data.
//!
//! A control batch holds exactly one record with an empty key; the
//! record's value is the message, a type and a version (each type is
//! versioned on its own) followed by the type's fields:
//! ```text
//! u16 type = 1 (CreateTopic) | u16 version = 1 | u32 id | u32 partitions |
//! u16 name_len | name (UTF-8)
//!   version 2 adds the topic's settings: | u64 retention_ms |
//!   u64 retention_bytes (each u64::MAX when left to the broker); it is
//!   written only for a topic created with settings of its own
//! u16 type = 2 (Noop)        | u16 version = 1
//! u16 type = 3 (ClusterId)   | u16 version = 1 | u64 id
//! u16 type = 4 (DeleteRecords) | u16 version = 1 | u32 topic_id |
//!   u32 partition | u64 before
//! u16 type = 5 (TopicConfig) | u16 version = 1 | u32 topic_id |
//!   u64 retention_ms | u64 retention_bytes
//! ```
//!
//! TopicConfig replaces a topic's settings (both of them) from there on.
//!
//! DeleteRecords moves a partition's log start up to `before` (at most its
//! next offset when written): the records below it are no longer served,
//! and their bytes leave the disk with the segments retention deletes.
//!
//! A cluster id names a replication group: the group's first leader
//! writes one (a random non-zero number) right after its first no-op, and
//! every member takes it from the journal; consensus messages carry it, so
//! a broker of another group is told apart.
//!
//! A no-op changes nothing. A new Raft leader appends one in its term so
//! that it can commit the entries of earlier terms (Raft §5.4.2): it is
//! the leader's first entry, and its size is fixed ([`NOOP_BATCH_BYTES`])
//! because consensus reserves the journal bytes before the batch exists.

use super::checkpoint::TOPIC_NAME_BYTES_MAX;
use super::error::JournalError;
use super::topic::TopicConfig;
use crate::wire::batch::{
    records, BatchBuilder, BatchKind, BatchView, BATCH_HEADER_LEN, RECORD_OVERHEAD,
};
use crate::wire::codec::{DecodeError, Put, Reader};

/// Control message type of [`Control::CreateTopic`].
pub const CONTROL_CREATE_TOPIC: u16 = 1;
/// Control message type of [`Control::Noop`].
pub const CONTROL_NOOP: u16 = 2;
/// The version of [`Control::CreateTopic`] this broker writes for a
/// topic without settings of its own (and reads).
pub const CONTROL_VERSION: u16 = 1;
/// The version of [`Control::CreateTopic`] with the topic's settings.
pub const CONTROL_CREATE_TOPIC_VERSION_2: u16 = 2;
/// The version of [`Control::Noop`] this broker writes and reads.
pub const CONTROL_NOOP_VERSION: u16 = 1;
/// Control message type of [`Control::ClusterId`].
pub const CONTROL_CLUSTER_ID: u16 = 3;
/// The version of [`Control::ClusterId`] this broker writes and reads.
pub const CONTROL_CLUSTER_ID_VERSION: u16 = 1;
/// Control message type of [`Control::DeleteRecords`].
pub const CONTROL_DELETE_RECORDS: u16 = 4;
/// The version of [`Control::DeleteRecords`] this broker writes and reads.
pub const CONTROL_DELETE_RECORDS_VERSION: u16 = 1;
/// Control message type of [`Control::TopicConfig`].
pub const CONTROL_TOPIC_CONFIG: u16 = 5;
/// The version of [`Control::TopicConfig`] this broker writes and reads.
pub const CONTROL_TOPIC_CONFIG_VERSION: u16 = 1;
/// Bytes of the no-op message: its type and version.
const NOOP_VALUE_BYTES: usize = 4;
/// Exact size of an encoded no-op control batch: a header and one record
/// with an empty key, no headers and a [`NOOP_VALUE_BYTES`] value. The
/// consensus `Config::noop_bytes` must equal it.
pub const NOOP_BATCH_BYTES: usize = BATCH_HEADER_LEN + RECORD_OVERHEAD + NOOP_VALUE_BYTES;

/// A metadata change recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A topic was created with this id, name and partition count.
    CreateTopic {
        /// The broker-assigned topic id.
        id: u32,
        /// The topic's name.
        name: String,
        /// Number of partitions.
        partitions: u32,
        /// Its own settings.
        config: TopicConfig,
    },
    /// Nothing: a new leader's first entry in its term.
    Noop,
    /// The replication group's id (non-zero).
    ClusterId {
        /// The id.
        id: u64,
    },
    /// The records of a partition below an offset are deleted: its log
    /// start moves there.
    DeleteRecords {
        /// The topic's id.
        topic_id: u32,
        /// The partition.
        partition: u32,
        /// The partition's new log start.
        before: u64,
    },
    /// A topic's settings from here on.
    TopicConfig {
        /// The topic's id.
        topic_id: u32,
        /// All of its settings.
        config: TopicConfig,
    },
}

/// Fills `builder` with one record whose value is the encoded control
/// message, finishes the batch and returns its bytes (also left in the
/// builder). The builder is cleared first and must have been made with
/// `BatchBuilder::with_kind(BatchKind::Control)`; the broker then stamps
/// the batch like any other.
///
/// # Panics
/// When a topic name is longer than [`TOPIC_NAME_BYTES_MAX`] (names are
/// validated long before they reach the journal).
pub fn encode<'b>(c: &Control, builder: &'b mut BatchBuilder) -> &'b [u8] {
    builder.clear();
    let mut value = Vec::new();
    match c {
        Control::CreateTopic {
            id,
            name,
            partitions,
            config,
        } => {
            assert!(
                name.len() <= TOPIC_NAME_BYTES_MAX,
                "topic name of {} bytes",
                name.len()
            );
            value.reserve(30 + name.len());
            value.put_u16(CONTROL_CREATE_TOPIC);
            value.put_u16(if config.is_default() {
                CONTROL_VERSION
            } else {
                CONTROL_CREATE_TOPIC_VERSION_2
            });
            value.put_u32(*id);
            value.put_u32(*partitions);
            value.put_str(name);
            if !config.is_default() {
                config.encode(&mut value);
            }
        }
        Control::TopicConfig { topic_id, config } => {
            value.put_u16(CONTROL_TOPIC_CONFIG);
            value.put_u16(CONTROL_TOPIC_CONFIG_VERSION);
            value.put_u32(*topic_id);
            config.encode(&mut value);
        }
        Control::Noop => {
            value.put_u16(CONTROL_NOOP);
            value.put_u16(CONTROL_NOOP_VERSION);
        }
        Control::ClusterId { id } => {
            value.put_u16(CONTROL_CLUSTER_ID);
            value.put_u16(CONTROL_CLUSTER_ID_VERSION);
            value.put_u64(*id);
        }
        Control::DeleteRecords {
            topic_id,
            partition,
            before,
        } => {
            value.put_u16(CONTROL_DELETE_RECORDS);
            value.put_u16(CONTROL_DELETE_RECORDS_VERSION);
            value.put_u32(*topic_id);
            value.put_u32(*partition);
            value.put_u64(*before);
        }
    }
    // The record's timestamp carries no meaning for metadata; the broker's
    // append time is stamped into the header.
    builder.push(0, &[], &value, &[]);
    builder.finish(0, 0)
}

/// Parses the control message of a checked control batch. Any bytes at
/// all give a message or an error, never a panic.
///
/// # Errors
/// [`JournalError::Corrupt`] when the batch is not a control batch of
/// exactly one record, or the message type, version or layout is not one
/// this broker knows.
pub fn decode(batch: &[u8]) -> Result<Control, JournalError> {
    let corrupt = |why: String| JournalError::Corrupt(format!("control batch: {why}"));
    if batch.len() < BATCH_HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes, shorter than a header",
            batch.len()
        )));
    }
    let view = BatchView(batch);
    if view.kind() != Some(BatchKind::Control) {
        return Err(corrupt(format!("kind {:?} is not control", view.kind())));
    }
    if view.record_count() != 1 {
        return Err(corrupt(format!(
            "{} records, expected 1",
            view.record_count()
        )));
    }
    let mut recs = records(batch);
    let record = recs
        .next()
        .ok_or_else(|| corrupt("record malformed".into()))?;
    if recs.next().is_some() {
        return Err(corrupt("more than one record".into()));
    }
    let mut r = Reader::new(record.value);
    let layout = |e: DecodeError| corrupt(e.to_string());
    let kind = r.u16("control type").map_err(layout)?;
    let version = r.u16("control version").map_err(layout)?;
    let supported = match kind {
        CONTROL_CREATE_TOPIC => {
            version == CONTROL_VERSION || version == CONTROL_CREATE_TOPIC_VERSION_2
        }
        CONTROL_NOOP => version == CONTROL_NOOP_VERSION,
        CONTROL_CLUSTER_ID => version == CONTROL_CLUSTER_ID_VERSION,
        CONTROL_DELETE_RECORDS => version == CONTROL_DELETE_RECORDS_VERSION,
        CONTROL_TOPIC_CONFIG => version == CONTROL_TOPIC_CONFIG_VERSION,
        _ => return Err(corrupt(format!("unknown control type {kind}"))),
    };
    if !supported {
        return Err(corrupt(format!(
            "unsupported control version {version} of type {kind}"
        )));
    }
    match kind {
        CONTROL_CREATE_TOPIC => decode_create_topic(&mut r, version).map_err(layout),
        CONTROL_TOPIC_CONFIG => {
            let topic_id = r.u32("topic id").map_err(layout)?;
            let config = TopicConfig::decode(&mut r).map_err(layout)?;
            r.finish().map_err(layout)?;
            Ok(Control::TopicConfig { topic_id, config })
        }
        CONTROL_CLUSTER_ID => {
            let id = r.u64("cluster id").map_err(layout)?;
            r.finish().map_err(layout)?;
            if id == 0 {
                return Err(corrupt("cluster id 0".into()));
            }
            Ok(Control::ClusterId { id })
        }
        CONTROL_DELETE_RECORDS => {
            let topic_id = r.u32("topic id").map_err(layout)?;
            let partition = r.u32("partition").map_err(layout)?;
            let before = r.u64("before").map_err(layout)?;
            r.finish().map_err(layout)?;
            Ok(Control::DeleteRecords {
                topic_id,
                partition,
                before,
            })
        }
        _ => r.finish().map(|()| Control::Noop).map_err(layout),
    }
}

fn decode_create_topic(r: &mut Reader<'_>, version: u16) -> Result<Control, DecodeError> {
    let id = r.u32("topic id")?;
    let partitions = r.u32("partitions")?;
    let name = r.str("topic name")?.to_owned();
    let config = if version == CONTROL_CREATE_TOPIC_VERSION_2 {
        TopicConfig::decode(r)?
    } else {
        TopicConfig::default()
    };
    r.finish()?;
    Ok(Control::CreateTopic {
        id,
        name,
        partitions,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::batch::{check_stored_batch, stamp, Stamp};
    use proptest::prelude::*;

    fn create(id: u32, name: &str, partitions: u32) -> Control {
        Control::CreateTopic {
            id,
            name: name.into(),
            partitions,
            config: TopicConfig::default(),
        }
    }

    /// Encodes and stamps like the broker does before appending.
    fn stored(c: &Control) -> Vec<u8> {
        let mut b = BatchBuilder::with_kind(BatchKind::Control);
        let mut bytes = encode(c, &mut b).to_vec();
        stamp(
            &mut bytes,
            &Stamp {
                base_offset: 0,
                term: 1,
                append_time_ms: 42,
                topic_id: 0,
                partition: 0,
            },
        );
        bytes
    }

    /// A stored control batch whose one record's value is `value`.
    fn with_value(value: &[u8]) -> Vec<u8> {
        let mut b = BatchBuilder::with_kind(BatchKind::Control);
        b.push(0, &[], value, &[]);
        let mut bytes = b.finish(0, 0).to_vec();
        stamp(&mut bytes, &Stamp::default());
        bytes
    }

    #[test]
    fn an_encoded_control_batch_passes_the_stored_check_and_decodes() {
        for c in [
            create(1, "orders", 8),
            create(u32::MAX, "", 1),
            create(7, "胡同", 3),
        ] {
            let bytes = stored(&c);
            assert_eq!(check_stored_batch(&bytes), Ok(BatchKind::Control));
            assert_eq!(BatchView(&bytes).record_count(), 1);
            assert_eq!(decode(&bytes).unwrap(), c);
        }
    }

    #[test]
    fn the_message_follows_the_documented_layout() {
        let bytes = stored(&create(0x0102, "ab", 5));
        let record = records(&bytes).next().unwrap();
        assert!(record.key.is_empty());
        assert_eq!(
            record.value,
            &[1, 0, 1, 0, 0x02, 0x01, 0, 0, 5, 0, 0, 0, 2, 0, b'a', b'b']
        );
    }

    #[test]
    fn encoding_clears_what_the_builder_held() {
        let mut b = BatchBuilder::with_kind(BatchKind::Control);
        b.push(5, b"k", b"leftover", &[]);
        b.push(6, b"k", b"leftover", &[]);
        let bytes = encode(&create(3, "t", 1), &mut b).to_vec();
        assert_eq!(BatchView(&bytes).record_count(), 1);
        assert_eq!(decode(&bytes).unwrap(), create(3, "t", 1));
    }

    #[test]
    fn a_data_batch_is_not_a_control_message() {
        let mut b = BatchBuilder::new();
        let bytes = encode(&create(1, "t", 1), &mut b).to_vec();
        assert!(matches!(decode(&bytes), Err(JournalError::Corrupt(_))));
    }

    #[test]
    fn unknown_types_versions_and_layouts_are_corrupt() {
        let cases: [(&[u8], &str); 6] = [
            (
                &[9, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                "unknown control type 9",
            ),
            (&[1, 0, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0], "version 3"),
            (&[1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 9], "trailing"),
            (
                &[1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 3, 0, b'a'],
                "truncated",
            ),
            (&[1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0xff], "UTF-8"),
            (&[1], "truncated"),
        ];
        for (value, why) in cases {
            match decode(&with_value(value)) {
                Err(JournalError::Corrupt(m)) => assert!(m.contains(why), "{m} lacks {why}"),
                other => panic!("{value:?}: expected Corrupt, got {other:?}"),
            }
        }
        // The same value decodes once it is well formed.
        let good = [1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(decode(&with_value(&good)).unwrap(), create(1, "", 1));
    }

    #[test]
    fn a_noop_has_the_documented_layout_and_its_declared_size() {
        let bytes = stored(&Control::Noop);
        assert_eq!(bytes.len(), NOOP_BATCH_BYTES);
        assert_eq!(check_stored_batch(&bytes), Ok(BatchKind::Control));
        assert_eq!(records(&bytes).next().unwrap().value, &[2, 0, 1, 0]);
        assert_eq!(decode(&bytes).unwrap(), Control::Noop);
    }

    #[test]
    fn a_cluster_id_has_the_documented_layout_and_refuses_zero() {
        let bytes = stored(&Control::ClusterId { id: 0x0102 });
        assert_eq!(check_stored_batch(&bytes), Ok(BatchKind::Control));
        assert_eq!(
            records(&bytes).next().unwrap().value,
            &[3, 0, 1, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(decode(&bytes).unwrap(), Control::ClusterId { id: 0x0102 });
        for (value, why) in [
            (&[3u8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], "cluster id 0"),
            (&[3, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9][..], "trailing"),
            (&[3, 0, 1, 0, 1][..], "truncated"),
            (
                &[3, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
                "version 2 of type 3",
            ),
        ] {
            match decode(&with_value(value)) {
                Err(JournalError::Corrupt(m)) => assert!(m.contains(why), "{m} lacks {why}"),
                other => panic!("{value:?}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn delete_records_has_the_documented_layout() {
        let c = Control::DeleteRecords {
            topic_id: 5,
            partition: 2,
            before: 0x0309,
        };
        let bytes = stored(&c);
        assert_eq!(check_stored_batch(&bytes), Ok(BatchKind::Control));
        assert_eq!(
            records(&bytes).next().unwrap().value,
            &[4, 0, 1, 0, 5, 0, 0, 0, 2, 0, 0, 0, 9, 3, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(decode(&bytes).unwrap(), c);
        for (value, why) in [
            (
                &[
                    4u8, 0, 1, 0, 5, 0, 0, 0, 2, 0, 0, 0, 9, 3, 0, 0, 0, 0, 0, 0, 1,
                ][..],
                "trailing",
            ),
            (&[4, 0, 1, 0, 5, 0, 0, 0, 2, 0][..], "truncated"),
            (&[4, 0, 2, 0][..], "version 2 of type 4"),
        ] {
            match decode(&with_value(value)) {
                Err(JournalError::Corrupt(m)) => assert!(m.contains(why), "{m} lacks {why}"),
                other => panic!("{value:?}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn topic_settings_have_the_documented_layout() {
        // A topic without settings of its own is created as version 1.
        let plain = stored(&create(5, "t", 2));
        assert_eq!(&records(&plain).next().unwrap().value[..4], &[1, 0, 1, 0]);
        let config = TopicConfig {
            retention_ms: Some(3),
            retention_bytes: None,
        };
        let c = Control::CreateTopic {
            id: 5,
            name: "t".into(),
            partitions: 2,
            config,
        };
        let bytes = stored(&c);
        let mut want = vec![1u8, 0, 2, 0, 5, 0, 0, 0, 2, 0, 0, 0, 1, 0, b't'];
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(records(&bytes).next().unwrap().value, &want[..]);
        assert_eq!(decode(&bytes).unwrap(), c);

        let c = Control::TopicConfig {
            topic_id: 9,
            config: TopicConfig {
                retention_ms: None,
                retention_bytes: Some(0),
            },
        };
        let bytes = stored(&c);
        let mut want = vec![5u8, 0, 1, 0, 9, 0, 0, 0];
        want.extend_from_slice(&u64::MAX.to_le_bytes());
        want.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(records(&bytes).next().unwrap().value, &want[..]);
        assert_eq!(decode(&bytes).unwrap(), c);
        for (value, why) in [
            (&want[..want.len() - 1], "truncated"),
            (&[5, 0, 2, 0][..], "version 2 of type 5"),
            (&[1, 0, 3, 0][..], "version 3 of type 1"),
        ] {
            match decode(&with_value(value)) {
                Err(JournalError::Corrupt(m)) => assert!(m.contains(why), "{m} lacks {why}"),
                other => panic!("{value:?}: expected Corrupt, got {other:?}"),
            }
        }
        // Version 2 without its settings is truncated.
        match decode(&with_value(&[
            1, 0, 2, 0, 5, 0, 0, 0, 2, 0, 0, 0, 1, 0, b't',
        ])) {
            Err(JournalError::Corrupt(m)) => assert!(m.contains("truncated"), "{m}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_noop_with_another_version_or_trailing_bytes_is_corrupt() {
        for (value, why) in [
            (&[2u8, 0, 2, 0][..], "version 2 of type 2"),
            (&[2, 0, 1, 0, 0][..], "trailing"),
            (&[2, 0][..], "truncated"),
        ] {
            match decode(&with_value(value)) {
                Err(JournalError::Corrupt(m)) => assert!(m.contains(why), "{m} lacks {why}"),
                other => panic!("{value:?}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_control_batch_with_two_records_is_corrupt() {
        let value = [1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        let mut b = BatchBuilder::with_kind(BatchKind::Control);
        b.push(0, &[], &value, &[]);
        b.push(0, &[], &value, &[]);
        let bytes = b.finish(0, 0).to_vec();
        assert!(matches!(decode(&bytes), Err(JournalError::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn any_create_topic_round_trips(id in any::<u32>(), name in "\\PC{0,60}", partitions in any::<u32>()) {
            let c = Control::CreateTopic { id, name, partitions, config: TopicConfig::default() };
            prop_assert_eq!(decode(&stored(&c)).unwrap(), c);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_values_never_panic(value in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode(&with_value(&value));
        }
    }
}
