//! The request and response bodies of every API, with their codecs.
//!
//! Each request type has `encode` (append the body to a buffer) and `decode`
//! (parse a body, rejecting trailing bytes); each response type likewise.
//! Layouts are documented byte by byte in `docs/protocol.md`.

use super::codec::{DecodeError, Put, Reader};
use super::error::ErrorCode;
pub use super::topic_config::TopicConfig;
use super::topic_config::{decode_setting, encode_setting};
#[cfg(feature = "broker")]
use crate::consensus::Role;

/// The protocol version this broker speaks (negotiated by Handshake).
pub const PROTOCOL_VERSION: u16 = 1;

/// Which API a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Version negotiation.
    Handshake = 0,
    /// Echo.
    Ping = 1,
    /// Create a topic.
    CreateTopic = 2,
    /// Describe topics and their offsets.
    Metadata = 3,
    /// Append one record batch.
    Produce = 4,
    /// Read record batches from an offset, with long polling.
    Fetch = 5,
    /// Earliest and latest offsets of a partition.
    ListOffsets = 6,
    /// One consensus message from a peer broker; never answered
    /// (see [`super::replicate`]).
    Replicate = 7,
    /// This broker's view of its replication group.
    ClusterStatus = 8,
    /// Delete a partition's records below an offset.
    DeleteRecords = 9,
    /// Change a topic's settings.
    AlterTopic = 10,
}

impl ApiKey {
    /// Every API, in numeric order.
    pub const ALL: [ApiKey; 11] = [
        ApiKey::Handshake,
        ApiKey::Ping,
        ApiKey::CreateTopic,
        ApiKey::Metadata,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Replicate,
        ApiKey::ClusterStatus,
        ApiKey::DeleteRecords,
        ApiKey::AlterTopic,
    ];

    /// The API for a wire value, or `None` when unknown.
    pub fn from_u16(v: u16) -> Option<ApiKey> {
        ApiKey::ALL.get(v as usize).copied()
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Lowest and highest version of this API the broker speaks.
    /// Metadata 2 adds each partition's bytes and 3 each topic's
    /// settings; ListOffsets 2 looks an offset up by append time;
    /// CreateTopic 2 carries the topic's settings (docs/protocol.md §7.3,
    /// §7.4, §7.7).
    pub fn versions(self) -> (u16, u16) {
        match self {
            ApiKey::Metadata => (1, 3),
            ApiKey::ListOffsets | ApiKey::CreateTopic => (1, 2),
            _ => (1, 1),
        }
    }
}

/// The acknowledgement level of a produce request (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Qos {
    /// Never answered on success (fire and forget); failures are answered.
    None = 0,
    /// Answered once appended to the leader's journal.
    Received = 1,
    /// Answered once fdatasync'd on the leader.
    Flushed = 2,
    /// Answered once held by a majority of replicas.
    Replicated = 3,
    /// Answered once durable on a majority of replicas (the default).
    All = 4,
}

impl Qos {
    /// The level for a wire value.
    pub fn from_u8(v: u8) -> Option<Qos> {
        match v {
            0 => Some(Qos::None),
            1 => Some(Qos::Received),
            2 => Some(Qos::Flushed),
            3 => Some(Qos::Replicated),
            4 => Some(Qos::All),
            _ => None,
        }
    }

    /// The level for a CLI name.
    pub fn from_name(s: &str) -> Option<Qos> {
        match s {
            "none" => Some(Qos::None),
            "received" => Some(Qos::Received),
            "flushed" => Some(Qos::Flushed),
            "replicated" => Some(Qos::Replicated),
            "all" => Some(Qos::All),
            _ => None,
        }
    }
}

/// Handshake request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest<'a> {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Free-form client name for logs.
    pub client_id: &'a str,
}

impl<'a> HandshakeRequest<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16(self.min_version);
        out.put_u16(self.max_version);
        out.put_str(self.client_id);
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = HandshakeRequest {
            min_version: r.u16("min_version")?,
            max_version: r.u16("max_version")?,
            client_id: r.str("client_id")?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// One API's supported versions, as listed in the handshake response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersions {
    /// The API key.
    pub api_key: u16,
    /// Lowest version.
    pub min_version: u16,
    /// Highest version.
    pub max_version: u16,
}

impl ApiVersions {
    /// Every API with the versions this build speaks, as a broker lists
    /// them in its handshake.
    pub fn spoken() -> Vec<ApiVersions> {
        ApiKey::ALL
            .iter()
            .map(|a| ApiVersions {
                api_key: a.as_u16(),
                min_version: a.versions().0,
                max_version: a.versions().1,
            })
            .collect()
    }
}

/// Handshake response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The protocol version both sides will speak.
    pub version: u16,
    /// The largest request frame the broker accepts, length prefix
    /// included (its `frame_bytes_max` setting).
    pub frame_bytes_max: u32,
    /// Broker name and version.
    pub server: String,
    /// Versions of each API.
    pub apis: Vec<ApiVersions>,
}

impl HandshakeResponse {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16(self.version);
        out.put_u32(self.frame_bytes_max);
        out.put_str(&self.server);
        out.put_u16(self.apis.len() as u16);
        for a in &self.apis {
            out.put_u16(a.api_key);
            out.put_u16(a.min_version);
            out.put_u16(a.max_version);
        }
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u16("version")?;
        let frame_bytes_max = r.u32("frame_bytes_max")?;
        let server = r.str("server")?.to_string();
        let n = r.u16("api_count")?;
        let mut apis = Vec::with_capacity(n as usize);
        for _ in 0..n {
            apis.push(ApiVersions {
                api_key: r.u16("api_key")?,
                min_version: r.u16("min_version")?,
                max_version: r.u16("max_version")?,
            });
        }
        r.finish()?;
        Ok(HandshakeResponse {
            version,
            frame_bytes_max,
            server,
            apis,
        })
    }
}

/// CreateTopic request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicRequest<'a> {
    /// Topic name.
    pub name: &'a str,
    /// Number of partitions.
    pub partitions: u32,
    /// The topic's own settings (version 2; version 1 leaves every one to
    /// the broker).
    pub config: TopicConfig,
}

impl<'a> CreateTopicRequest<'a> {
    /// Appends the version 1 body (without settings).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_version(1, out);
    }

    /// Appends the body of `version` (2 adds the settings).
    pub fn encode_version(&self, version: u16, out: &mut Vec<u8>) {
        out.put_str(self.name);
        out.put_u32(self.partitions);
        if version >= 2 {
            self.config.encode(out);
        }
    }

    /// Parses a version 1 body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        CreateTopicRequest::decode_version(body, 1)
    }

    /// Parses a body of `version`.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode_version(body: &'a [u8], version: u16) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = CreateTopicRequest {
            name: r.str("name")?,
            partitions: r.u32("partitions")?,
            config: if version >= 2 {
                TopicConfig::decode(&mut r)?
            } else {
                TopicConfig::default()
            },
        };
        r.finish()?;
        Ok(out)
    }
}

/// AlterTopic request body: changes the settings named in `change`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterTopicRequest<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// What to change.
    pub change: TopicConfigChange,
}

/// Changes to a topic's settings: `None` leaves a setting as it is,
/// `Some(None)` gives it back to the broker, `Some(Some(v))` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicConfigChange {
    /// The time limit, ms (0: none).
    pub retention_ms: Option<Option<u64>>,
    /// The per-partition size limit, bytes (0: none).
    pub retention_bytes: Option<Option<u64>>,
}

impl TopicConfigChange {
    /// `config` with the changes made.
    pub fn apply(&self, config: TopicConfig) -> TopicConfig {
        TopicConfig {
            retention_ms: self.retention_ms.unwrap_or(config.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(config.retention_bytes),
        }
    }
}

/// [`AlterTopicRequest`] `changes` bit: `retention_ms` is changed.
pub const ALTER_RETENTION_MS: u8 = 1;
/// [`AlterTopicRequest`] `changes` bit: `retention_bytes` is changed.
pub const ALTER_RETENTION_BYTES: u8 = 2;

impl<'a> AlterTopicRequest<'a> {
    /// Appends the body: `topic | u8 changes | u64 retention_ms |
    /// u64 retention_bytes`, a setting not changed written as
    /// [`SETTING_DEFAULT`](super::topic_config::SETTING_DEFAULT) and ignored.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_str(self.topic);
        let c = &self.change;
        let mut bits = 0;
        if c.retention_ms.is_some() {
            bits |= ALTER_RETENTION_MS;
        }
        if c.retention_bytes.is_some() {
            bits |= ALTER_RETENTION_BYTES;
        }
        out.put_u8(bits);
        out.put_u64(encode_setting(c.retention_ms.flatten()));
        out.put_u64(encode_setting(c.retention_bytes.flatten()));
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body, a `changes`
    /// byte with a bit this broker does not know, or a setting not changed
    /// that is not written as the default.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let topic = r.str("topic")?;
        let bits = r.u8("changes")?;
        if bits & !(ALTER_RETENTION_MS | ALTER_RETENTION_BYTES) != 0 {
            return Err(DecodeError::InvalidValue { field: "changes" });
        }
        let mut setting = |bit: u8, field: &'static str| -> Result<_, DecodeError> {
            let v = r.u64(field)?;
            if bits & bit == 0 {
                // Not changed: written as the default, so that a body has
                // one encoding.
                return if v == super::topic_config::SETTING_DEFAULT {
                    Ok(None)
                } else {
                    Err(DecodeError::InvalidValue { field })
                };
            }
            Ok(Some(decode_setting(v)))
        };
        let retention_ms = setting(ALTER_RETENTION_MS, "retention_ms")?;
        let retention_bytes = setting(ALTER_RETENTION_BYTES, "retention_bytes")?;
        r.finish()?;
        Ok(AlterTopicRequest {
            topic,
            change: TopicConfigChange {
                retention_ms,
                retention_bytes,
            },
        })
    }
}

/// AlterTopic response body: the topic's settings after the change
/// (`u64 retention_ms | u64 retention_bytes`, [`SETTING_DEFAULT`](super::topic_config::SETTING_DEFAULT) for one
/// left to the broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlterTopicResponse {
    /// The settings now.
    pub config: TopicConfig,
}

impl AlterTopicResponse {
    /// The body as bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = Vec::with_capacity(16);
        self.config.encode(&mut out);
        let mut b = [0u8; 16];
        b.copy_from_slice(&out);
        b
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let config = TopicConfig::decode(&mut r)?;
        r.finish()?;
        Ok(AlterTopicResponse { config })
    }
}

/// DeleteRecords request body: a partition's records below `before` go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRecordsRequest<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition number.
    pub partition: u32,
    /// The partition's new log start; [`DELETE_TO_END`]: its end.
    pub before: u64,
}

/// [`DeleteRecordsRequest::before`] for every record of the partition.
pub const DELETE_TO_END: u64 = u64::MAX;

impl<'a> DeleteRecordsRequest<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_str(self.topic);
        out.put_u32(self.partition);
        out.put_u64(self.before);
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = DeleteRecordsRequest {
            topic: r.str("topic")?,
            partition: r.u32("partition")?,
            before: r.u64("before")?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// DeleteRecords response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteRecordsResponse {
    /// The partition's log start now.
    pub log_start: u64,
}

impl DeleteRecordsResponse {
    /// The body as bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        self.log_start.to_le_bytes()
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = DeleteRecordsResponse {
            log_start: r.u64("log_start")?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// Metadata request body: the topics to describe, or all when empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataRequest<'a> {
    /// Topic names; empty means every topic.
    pub topics: Vec<&'a str>,
}

impl<'a> MetadataRequest<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16(self.topics.len() as u16);
        for t in &self.topics {
            out.put_str(t);
        }
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let n = r.u16("topic_count")?;
        let mut topics = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            topics.push(r.str("topic")?);
        }
        r.finish()?;
        Ok(MetadataRequest { topics })
    }
}

/// One partition in a metadata response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition number.
    pub partition: u32,
    /// First offset still stored.
    pub start_offset: u64,
    /// One past the last committed offset (the high watermark).
    pub end_offset: u64,
    /// Bytes of the batches kept from `start_offset` to `end_offset`
    /// (version 2; 0 when decoded from version 1).
    pub bytes: u64,
}

/// One topic in a metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// [`ErrorCode::UnknownTopic`] for a requested topic that does not exist.
    pub error_code: u16,
    /// Its own settings (version 3; all left to the broker when decoded
    /// from an earlier version, or on error).
    pub config: TopicConfig,
    /// Its partitions (empty on error).
    pub partitions: Vec<PartitionMetadata>,
}

/// Metadata response body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataResponse {
    /// The topics described.
    pub topics: Vec<TopicMetadata>,
}

impl MetadataResponse {
    /// Appends the version 1 body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_version(1, out);
    }

    /// Appends the body of `version` (2 adds each partition's bytes, 3
    /// each topic's settings).
    pub fn encode_version(&self, version: u16, out: &mut Vec<u8>) {
        out.put_u32(self.topics.len() as u32);
        for t in &self.topics {
            out.put_str(&t.name);
            out.put_u16(t.error_code);
            if version >= 3 {
                t.config.encode(out);
            }
            out.put_u32(t.partitions.len() as u32);
            for p in &t.partitions {
                out.put_u32(p.partition);
                out.put_u64(p.start_offset);
                out.put_u64(p.end_offset);
                if version >= 2 {
                    out.put_u64(p.bytes);
                }
            }
        }
    }

    /// Parses a version 1 body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        MetadataResponse::decode_version(body, 1)
    }

    /// Parses a body of `version`.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode_version(body: &[u8], version: u16) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let n = r.u32("topic_count")?;
        let mut topics = Vec::new();
        for _ in 0..n {
            let name = r.str("name")?.to_string();
            let error_code = r.u16("error_code")?;
            let config = if version >= 3 {
                TopicConfig::decode(&mut r)?
            } else {
                TopicConfig::default()
            };
            let np = r.u32("partition_count")?;
            // Never trust a count for an allocation: each entry is at
            // least 20 bytes.
            let mut partitions = Vec::with_capacity((np as usize).min(r.remaining() / 20));
            for _ in 0..np {
                partitions.push(PartitionMetadata {
                    partition: r.u32("partition")?,
                    start_offset: r.u64("start_offset")?,
                    end_offset: r.u64("end_offset")?,
                    bytes: if version >= 2 { r.u64("bytes")? } else { 0 },
                });
            }
            topics.push(TopicMetadata {
                name,
                error_code,
                config,
                partitions,
            });
        }
        r.finish()?;
        Ok(MetadataResponse { topics })
    }
}

/// Produce request body. The record batch is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition number.
    pub partition: u32,
    /// Acknowledgement level.
    pub qos: u8,
    /// How long the broker may take to reach the QoS position.
    pub timeout_ms: u32,
    /// One record batch built with [`super::batch::BatchBuilder`].
    pub batch: &'a [u8],
}

impl<'a> ProduceRequest<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_str(self.topic);
        out.put_u32(self.partition);
        out.put_u8(self.qos);
        out.put_u32(self.timeout_ms);
        out.extend_from_slice(self.batch);
    }

    /// Parses a body; the batch itself is checked separately.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(ProduceRequest {
            topic: r.str("topic")?,
            partition: r.u32("partition")?,
            qos: r.u8("qos")?,
            timeout_ms: r.u32("timeout_ms")?,
            batch: r.rest(),
        })
    }
}

/// Produce response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResponse {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Broker append time, Unix ms.
    pub append_time_ms: i64,
}

impl ProduceResponse {
    /// Bytes of the body.
    pub const LEN: usize = 16;

    /// The body as bytes.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.base_offset.to_le_bytes());
        b[8..].copy_from_slice(&self.append_time_ms.to_le_bytes());
        b
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = ProduceResponse {
            base_offset: r.u64("base_offset")?,
            append_time_ms: r.i64("append_time_ms")?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// Fetch request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition number.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Soft cap on batch bytes returned (at least one batch is returned).
    pub max_bytes: u32,
    /// Longest time to wait for `min_bytes`.
    pub max_wait_ms: u32,
    /// Answer as soon as this many bytes are available.
    pub min_bytes: u32,
}

impl<'a> FetchRequest<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_str(self.topic);
        out.put_u32(self.partition);
        out.put_u64(self.offset);
        out.put_u32(self.max_bytes);
        out.put_u32(self.max_wait_ms);
        out.put_u32(self.min_bytes);
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = FetchRequest {
            topic: r.str("topic")?,
            partition: r.u32("partition")?,
            offset: r.u64("offset")?,
            max_bytes: r.u32("max_bytes")?,
            max_wait_ms: r.u32("max_wait_ms")?,
            min_bytes: r.u32("min_bytes")?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// Bytes of a fetch response body before the batches.
pub const FETCH_PREFIX_LEN: usize = 20;

/// Fetch response body: offsets, then whole stored batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse<'a> {
    /// One past the last committed offset of the partition.
    pub high_watermark: u64,
    /// First offset still stored.
    pub start_offset: u64,
    /// Concatenated stored batches; the first may start before the
    /// requested offset (skip records below it).
    pub batches: &'a [u8],
}

impl<'a> FetchResponse<'a> {
    /// The fixed prefix of the body for `batches_len` bytes of batches.
    pub fn prefix(
        high_watermark: u64,
        start_offset: u64,
        batches_len: usize,
    ) -> [u8; FETCH_PREFIX_LEN] {
        let mut b = [0u8; FETCH_PREFIX_LEN];
        b[..8].copy_from_slice(&high_watermark.to_le_bytes());
        b[8..16].copy_from_slice(&start_offset.to_le_bytes());
        b[16..].copy_from_slice(&(batches_len as u32).to_le_bytes());
        b
    }

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::prefix(
            self.high_watermark,
            self.start_offset,
            self.batches.len(),
        ));
        out.extend_from_slice(self.batches);
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = FetchResponse {
            high_watermark: r.u64("high_watermark")?,
            start_offset: r.u64("start_offset")?,
            batches: r.bytes("batches")?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// ListOffsets request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsRequest<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition number.
    pub partition: u32,
    /// Version 2: look up the first offset appended at or after this time
    /// (ms since the Unix epoch); `None` in version 1.
    pub timestamp_ms: Option<i64>,
}

impl<'a> ListOffsetsRequest<'a> {
    /// Appends the body: version 2 when it has a time, else version 1.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_str(self.topic);
        out.put_u32(self.partition);
        if let Some(t) = self.timestamp_ms {
            out.put_u64(t as u64);
        }
    }

    /// The version [`ListOffsetsRequest::encode`] writes.
    pub fn version(&self) -> u16 {
        if self.timestamp_ms.is_some() {
            2
        } else {
            1
        }
    }

    /// Parses a version 1 body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        ListOffsetsRequest::decode_version(body, 1)
    }

    /// Parses a body of `version`.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode_version(body: &'a [u8], version: u16) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = ListOffsetsRequest {
            topic: r.str("topic")?,
            partition: r.u32("partition")?,
            timestamp_ms: if version >= 2 {
                Some(r.u64("timestamp_ms")? as i64)
            } else {
                None
            },
        };
        r.finish()?;
        Ok(out)
    }
}

/// ListOffsets response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOffsetsResponse {
    /// First offset still stored.
    pub earliest: u64,
    /// One past the last committed offset.
    pub latest: u64,
    /// Version 2: the first offset of the first batch appended at or after
    /// the time asked for (by the running maximum of append times), or
    /// `latest` when there is none; `None` in version 1.
    pub time_offset: Option<u64>,
}

impl ListOffsetsResponse {
    /// Appends the body: version 2 when it has a time offset.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(self.earliest);
        out.put_u64(self.latest);
        if let Some(o) = self.time_offset {
            out.put_u64(o);
        }
    }

    /// Parses a version 1 body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        ListOffsetsResponse::decode_version(body, 1)
    }

    /// Parses a body of `version`.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body.
    pub fn decode_version(body: &[u8], version: u16) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let out = ListOffsetsResponse {
            earliest: r.u64("earliest")?,
            latest: r.u64("latest")?,
            time_offset: if version >= 2 {
                Some(r.u64("time_offset")?)
            } else {
                None
            },
        };
        r.finish()?;
        Ok(out)
    }
}

/// The role a broker reports in a [`ClusterStatusResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ClusterRole {
    /// Follows a leader (or waits for one).
    Follower = 0,
    /// Asking for pre-votes.
    PreCandidate = 1,
    /// Campaigning for leadership.
    Candidate = 2,
    /// Leads the group.
    Leader = 3,
    /// Not part of any replication group: a single broker.
    Standalone = 4,
}

impl ClusterRole {
    /// The role for a wire value, or `None` when unknown.
    pub fn from_u8(v: u8) -> Option<ClusterRole> {
        match v {
            0 => Some(ClusterRole::Follower),
            1 => Some(ClusterRole::PreCandidate),
            2 => Some(ClusterRole::Candidate),
            3 => Some(ClusterRole::Leader),
            4 => Some(ClusterRole::Standalone),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

#[cfg(feature = "broker")]
impl From<Role> for ClusterRole {
    fn from(role: Role) -> ClusterRole {
        match role {
            Role::Follower => ClusterRole::Follower,
            Role::PreCandidate => ClusterRole::PreCandidate,
            Role::Candidate => ClusterRole::Candidate,
            Role::Leader => ClusterRole::Leader,
        }
    }
}

/// One member of the replication group in a [`ClusterStatusResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The member's node id.
    pub id: u64,
    /// The address it serves clients and peers on, as configured.
    pub addr: String,
}

/// ClusterStatus request body: empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterStatusRequest;

impl ClusterStatusRequest {
    /// Appends the body (nothing).
    pub fn encode(&self, _out: &mut Vec<u8>) {}

    /// Parses a body, which must be empty (bodies are exact).
    ///
    /// # Errors
    /// [`DecodeError::TrailingBytes`] for any byte.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Reader::new(body).finish()?;
        Ok(ClusterStatusRequest)
    }
}

/// ClusterStatus response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatusResponse {
    /// This broker's node id; 0 for a standalone broker.
    pub node_id: u64,
    /// This broker's role.
    pub role: ClusterRole,
    /// Its current term (0 for a standalone broker).
    pub term: u64,
    /// The leader it knows of; 0 when none is known.
    pub leader_id: u64,
    /// Journal position appended on this broker.
    pub written: u64,
    /// Journal position durable on this broker.
    pub flushed: u64,
    /// Replication position R: held by a majority.
    pub replicated: u64,
    /// Commit position C: durable on a majority.
    pub committed: u64,
    /// This member's data directory has caught up with the group since it
    /// was made (or lost data): until then it grants no vote and does not
    /// campaign. Always true on a standalone broker.
    pub caught_up: bool,
    /// Every member of the group, this broker included; empty when standalone.
    pub nodes: Vec<ClusterNode>,
}

impl ClusterStatusResponse {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(self.node_id);
        out.put_u8(self.role.as_u8());
        out.put_u64(self.term);
        out.put_u64(self.leader_id);
        out.put_u64(self.written);
        out.put_u64(self.flushed);
        out.put_u64(self.replicated);
        out.put_u64(self.committed);
        out.put_u8(u8::from(self.caught_up));
        out.put_u16(self.nodes.len() as u16);
        for n in &self.nodes {
            out.put_u64(n.id);
            out.put_str(&n.addr);
        }
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated or over-long body or an unknown role.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let node_id = r.u64("node_id")?;
        let role = ClusterRole::from_u8(r.u8("role")?)
            .ok_or(DecodeError::InvalidValue { field: "role" })?;
        let term = r.u64("term")?;
        let leader_id = r.u64("leader_id")?;
        let written = r.u64("written")?;
        let flushed = r.u64("flushed")?;
        let replicated = r.u64("replicated")?;
        let committed = r.u64("committed")?;
        let caught_up = match r.u8("caught_up")? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::InvalidValue { field: "caught_up" }),
        };
        let n = r.u16("node_count")?;
        // Never trust a count for an allocation: each node is at least 10 bytes.
        let mut nodes = Vec::with_capacity((n as usize).min(r.remaining() / 10));
        for _ in 0..n {
            nodes.push(ClusterNode {
                id: r.u64("node.id")?,
                addr: r.str("node.addr")?.to_string(),
            });
        }
        r.finish()?;
        Ok(ClusterStatusResponse {
            node_id,
            role,
            term,
            leader_id,
            written,
            flushed,
            replicated,
            committed,
            caught_up,
            nodes,
        })
    }
}

/// The body of every response whose error code is not `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    /// Human-readable detail.
    pub message: &'a str,
}

impl<'a> ErrorBody<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_str(self.message);
    }

    /// Parses a body; a body that does not parse yields an empty message,
    /// since the error code alone already says what happened.
    pub fn decode(body: &'a [u8]) -> Self {
        let message = Reader::new(body).str("message").unwrap_or("");
        ErrorBody { message }
    }
}

/// The body of an `OffsetOutOfRange` error: the ordinary error body, then
/// the partition's range so that a client can jump to a valid offset
/// without asking ListOffsets (docs/protocol.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRangeBody<'a> {
    /// Human-readable detail.
    pub message: &'a str,
    /// The partition's first kept offset (its log start).
    pub start_offset: u64,
    /// One past its last committed offset (the high watermark).
    pub end_offset: u64,
}

impl<'a> OffsetRangeBody<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        ErrorBody {
            message: self.message,
        }
        .encode(out);
        out.put_u64(self.start_offset);
        out.put_u64(self.end_offset);
    }

    /// Parses a body leniently: `None` for the range when the trailer is
    /// missing or incomplete (an older broker, or another error's body);
    /// bytes after it are ignored, for later additions.
    pub fn decode(body: &'a [u8]) -> (&'a str, Option<(u64, u64)>) {
        let mut r = Reader::new(body);
        let Ok(message) = r.str("message") else {
            return ("", None);
        };
        let range = r
            .u64("start_offset")
            .and_then(|start| Ok((start, r.u64("end_offset")?)))
            .ok();
        (message, range)
    }
}

/// The body of a [`ErrorCode::NotLeader`] response: the ordinary error body
/// followed by where the leader is, so a client can go there directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLeaderBody<'a> {
    /// Human-readable detail.
    pub message: &'a str,
    /// The leader's node id; 0 when unknown.
    pub leader_id: u64,
    /// The leader's address; empty when unknown.
    pub leader_addr: &'a str,
}

impl<'a> NotLeaderBody<'a> {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        ErrorBody {
            message: self.message,
        }
        .encode(out);
        out.put_u64(self.leader_id);
        out.put_str(self.leader_addr);
    }

    /// Parses a body leniently, like [`ErrorBody::decode`]: a body without
    /// a complete leader trailer (an older broker, or another error's body)
    /// yields leader 0 at the empty address, and bytes after the trailer are
    /// ignored so that a later version may extend it.
    pub fn decode(body: &'a [u8]) -> Self {
        let mut r = Reader::new(body);
        let Ok(message) = r.str("message") else {
            return NotLeaderBody {
                message: "",
                leader_id: 0,
                leader_addr: "",
            };
        };
        let leader = r
            .u64("leader_id")
            .and_then(|id| Ok((id, r.str("leader_addr")?)));
        let (leader_id, leader_addr) = leader.unwrap_or((0, ""));
        NotLeaderBody {
            message,
            leader_id,
            leader_addr,
        }
    }
}

/// Checks a topic name: 1-249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// [`ErrorCode::InvalidTopicName`].
pub fn check_topic_name(name: &str) -> Result<(), ErrorCode> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::InvalidTopicName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_request_round_trips_with_its_batch() {
        let req = ProduceRequest {
            topic: "t",
            partition: 3,
            qos: Qos::All as u8,
            timeout_ms: 5000,
            batch: b"batchbytes",
        };
        let mut out = Vec::new();
        req.encode(&mut out);
        assert_eq!(ProduceRequest::decode(&out), Ok(req));
    }

    #[test]
    fn topic_settings_travel_as_documented() {
        let change = TopicConfigChange {
            retention_ms: Some(None),
            retention_bytes: None,
        };
        let mut out = Vec::new();
        AlterTopicRequest { topic: "t", change }.encode(&mut out);
        let mut want = vec![1u8, 0, b't', ALTER_RETENTION_MS];
        want.extend_from_slice(&u64::MAX.to_le_bytes());
        want.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(out, want);
        assert_eq!(
            AlterTopicRequest::decode(&out),
            Ok(AlterTopicRequest { topic: "t", change })
        );
        // A value for a setting not changed, or an unknown bit, is refused.
        let mut bad = want.clone();
        bad[4 + 8] = 7;
        assert!(AlterTopicRequest::decode(&bad).is_err());
        let mut bad = want.clone();
        bad[3] = 4;
        assert!(AlterTopicRequest::decode(&bad).is_err());
        let config = TopicConfig {
            retention_ms: Some(0),
            retention_bytes: Some(5),
        };
        assert_eq!(
            change.apply(config),
            TopicConfig {
                retention_ms: None,
                retention_bytes: Some(5)
            }
        );
        let resp = AlterTopicResponse { config }.to_bytes();
        assert_eq!(
            AlterTopicResponse::decode(&resp),
            Ok(AlterTopicResponse { config })
        );
        // CreateTopic 2 appends the settings to the body of version 1.
        let req = CreateTopicRequest {
            name: "t",
            partitions: 3,
            config,
        };
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        req.encode(&mut v1);
        req.encode_version(2, &mut v2);
        assert_eq!(&v2[..v1.len()], &v1[..]);
        assert_eq!(&v2[v1.len()..v1.len() + 8], &0u64.to_le_bytes());
        assert_eq!(&v2[v1.len() + 8..], &5u64.to_le_bytes());
        assert_eq!(CreateTopicRequest::decode_version(&v2, 2), Ok(req.clone()));
        assert_eq!(
            CreateTopicRequest::decode(&v1).map(|r| r.config),
            Ok(TopicConfig::default())
        );
    }

    #[test]
    fn metadata_round_trips() {
        let resp = MetadataResponse {
            topics: vec![TopicMetadata {
                config: Default::default(),
                name: "orders".into(),
                error_code: 0,
                partitions: vec![PartitionMetadata {
                    partition: 0,
                    start_offset: 0,
                    end_offset: 9,
                    bytes: 0,
                }],
            }],
        };
        let mut out = Vec::new();
        resp.encode(&mut out);
        assert_eq!(MetadataResponse::decode(&out), Ok(resp.clone()));
        // Version 2 carries each partition's bytes, 8 more per partition.
        let mut with_bytes = resp;
        with_bytes.topics[0].partitions[0].bytes = 12_345;
        let mut v2 = Vec::new();
        with_bytes.encode_version(2, &mut v2);
        assert_eq!(v2.len(), out.len() + 8);
        assert_eq!(
            MetadataResponse::decode_version(&v2, 2),
            Ok(with_bytes.clone())
        );
        assert!(MetadataResponse::decode_version(&out, 2).is_err());
        // Version 3 carries each topic's settings after its error code.
        let mut with_config = with_bytes;
        with_config.topics[0].config = TopicConfig {
            retention_ms: Some(60_000),
            retention_bytes: None,
        };
        let mut v3 = Vec::new();
        with_config.encode_version(3, &mut v3);
        assert_eq!(v3.len(), v2.len() + 16);
        let at = 4 + 2 + "orders".len() + 2;
        assert_eq!(&v3[at..at + 8], &60_000u64.to_le_bytes());
        assert_eq!(&v3[at + 8..at + 16], &u64::MAX.to_le_bytes());
        assert_eq!(MetadataResponse::decode_version(&v3, 3), Ok(with_config));
    }

    #[test]
    fn list_offsets_version_2_carries_a_time_and_the_offset_found() {
        let req = ListOffsetsRequest {
            topic: "orders",
            partition: 3,
            timestamp_ms: Some(-5),
        };
        assert_eq!(req.version(), 2);
        let mut out = Vec::new();
        req.encode(&mut out);
        assert_eq!(ListOffsetsRequest::decode_version(&out, 2), Ok(req));
        assert!(
            ListOffsetsRequest::decode(&out).is_err(),
            "8 bytes too many for v1"
        );
        let resp = ListOffsetsResponse {
            earliest: 1,
            latest: 9,
            time_offset: Some(4),
        };
        let mut out = Vec::new();
        resp.encode(&mut out);
        assert_eq!(out.len(), 24);
        assert_eq!(ListOffsetsResponse::decode_version(&out, 2), Ok(resp));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut out = Vec::new();
        ListOffsetsRequest {
            topic: "a",
            partition: 0,
            timestamp_ms: None,
        }
        .encode(&mut out);
        out.push(0);
        assert!(matches!(
            ListOffsetsRequest::decode(&out),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn cluster_status_has_its_documented_bytes() {
        let resp = ClusterStatusResponse {
            node_id: 2,
            role: ClusterRole::Follower,
            term: 7,
            leader_id: 1,
            written: 300,
            flushed: 256,
            replicated: 250,
            committed: 200,
            caught_up: true,
            nodes: vec![
                ClusterNode {
                    id: 1,
                    addr: "a:1".into(),
                },
                ClusterNode {
                    id: 2,
                    addr: "b:2".into(),
                },
            ],
        };
        let mut out = Vec::new();
        resp.encode(&mut out);
        let le = |v: u64| v.to_le_bytes();
        let expected = [
            &le(2)[..], // node_id
            &[0],       // role: follower
            &le(7),     // term
            &le(1),     // leader_id
            &le(300),   // written
            &le(256),   // flushed
            &le(250),   // replicated
            &le(200),   // committed
            &[1],       // caught_up
            &[2, 0],    // node_count
            &le(1),     // node 0 id
            &[3, 0],    // node 0 addr length
            b"a:1",     // node 0 addr
            &le(2),     // node 1 id
            &[3, 0],    // node 1 addr length
            b"b:2",     // node 1 addr
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(ClusterStatusResponse::decode(&out), Ok(resp));
        out[57] = 2;
        assert_eq!(
            ClusterStatusResponse::decode(&out),
            Err(DecodeError::InvalidValue { field: "caught_up" })
        );
        out[57] = 1;
        out[8] = 5;
        assert_eq!(
            ClusterStatusResponse::decode(&out),
            Err(DecodeError::InvalidValue { field: "role" })
        );
    }

    #[test]
    #[cfg(feature = "broker")]
    fn cluster_roles_follow_consensus_roles() {
        assert_eq!(ClusterRole::from(Role::Follower).as_u8(), 0);
        assert_eq!(ClusterRole::from(Role::PreCandidate).as_u8(), 1);
        assert_eq!(ClusterRole::from(Role::Candidate).as_u8(), 2);
        assert_eq!(ClusterRole::from(Role::Leader).as_u8(), 3);
        for v in 0..=u8::MAX {
            let role = ClusterRole::from_u8(v);
            assert_eq!(role.map(ClusterRole::as_u8), (v <= 4).then_some(v));
        }
    }

    #[test]
    fn not_leader_body_extends_the_error_body() {
        let body = NotLeaderBody {
            message: "no",
            leader_id: 3,
            leader_addr: "h:9",
        };
        let mut out = Vec::new();
        body.encode(&mut out);
        let expected = [
            &[2, 0][..], // message length
            b"no",       // message
            &3u64.to_le_bytes(),
            &[3, 0], // leader_addr length
            b"h:9",
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(NotLeaderBody::decode(&out), body);
        // An old client reads the same message from it.
        assert_eq!(ErrorBody::decode(&out).message, "no");
    }

    #[test]
    fn not_leader_body_without_a_trailer_means_leader_unknown() {
        let unknown = |message| NotLeaderBody {
            message,
            leader_id: 0,
            leader_addr: "",
        };
        let mut plain = Vec::new();
        ErrorBody { message: "no" }.encode(&mut plain);
        assert_eq!(NotLeaderBody::decode(&plain), unknown("no"));
        // A trailer cut anywhere counts as absent.
        let mut full = Vec::new();
        NotLeaderBody {
            message: "no",
            leader_id: 3,
            leader_addr: "h:9",
        }
        .encode(&mut full);
        for cut in plain.len()..full.len() {
            assert_eq!(NotLeaderBody::decode(&full[..cut]), unknown("no"), "{cut}");
        }
        assert_eq!(NotLeaderBody::decode(&[]), unknown(""));
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(check_topic_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(250)] {
            assert_eq!(
                check_topic_name(bad),
                Err(ErrorCode::InvalidTopicName),
                "{bad}"
            );
        }
    }
}
