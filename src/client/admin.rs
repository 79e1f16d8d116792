//! Administrative calls: topics, metadata, offsets, ping.

use super::connection::Connection;
use super::error::ClientError;
use crate::wire::api::{
    AlterTopicRequest, AlterTopicResponse, ClusterStatusResponse, CreateTopicRequest,
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse,
};
pub use crate::wire::api::{TopicConfig, TopicConfigChange, DELETE_TO_END};
use crate::wire::{ApiKey, ErrorCode};
use std::net::ToSocketAddrs;

/// A connection used for administrative requests, one at a time.
#[derive(Debug)]
pub struct Admin {
    conn: Connection,
}

impl Admin {
    /// Connects and performs the handshake.
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Admin, ClientError> {
        Ok(Admin {
            conn: Connection::connect(addr)?,
        })
    }

    /// Wraps an existing connection.
    pub fn from_connection(conn: Connection) -> Admin {
        Admin { conn }
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Creates a topic with `partitions` partitions.
    ///
    /// # Errors
    /// [`ClientError::Broker`] with `TopicAlreadyExists`, `InvalidTopicName`,
    /// `InvalidPartitions` or `TooManyTopics`; connection errors.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), ClientError> {
        let request = CreateTopicRequest {
            name,
            partitions,
            config: TopicConfig::default(),
        };
        self.conn
            .call(ApiKey::CreateTopic, |out| request.encode(out))?
            .into_result()?;
        Ok(())
    }

    /// Creates a topic with settings of its own (CreateTopic version 2;
    /// one without any is created as [`Admin::create_topic`] does).
    ///
    /// # Errors
    /// As [`Admin::create_topic`]; [`ClientError::Broker`] with
    /// `UnsupportedVersion` from a broker without topic settings.
    pub fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), ClientError> {
        if config.is_default() {
            return self.create_topic(name, partitions);
        }
        let version = version_at_least(&self.conn, ApiKey::CreateTopic, 2)?;
        let request = CreateTopicRequest {
            name,
            partitions,
            config,
        };
        self.conn
            .call_version(ApiKey::CreateTopic, version, |out| {
                request.encode_version(version, out)
            })?
            .into_result()?;
        Ok(())
    }

    /// Changes the settings of `topic` named in `change`, durably; returns
    /// its settings now.
    ///
    /// # Errors
    /// Connection errors; [`ClientError::Broker`] with `UnknownTopic`,
    /// `NotLeader` (a member of a replication group that is not its
    /// leader) or `UnsupportedApi` (a broker without the API).
    pub fn alter_topic(
        &self,
        topic: &str,
        change: TopicConfigChange,
    ) -> Result<TopicConfig, ClientError> {
        let request = AlterTopicRequest { topic, change };
        let response = self
            .conn
            .call(ApiKey::AlterTopic, |out| request.encode(out))?
            .into_result()?;
        Ok(AlterTopicResponse::decode(&response.body)?.config)
    }

    /// Deletes the records of `partition` of `topic` below `before`
    /// ([`DELETE_TO_END`]: all of them): the partition's log start moves
    /// there, durably, and fetches below it get `OffsetOutOfRange`. Returns
    /// the log start now (unchanged when it was at or above `before`).
    ///
    /// # Errors
    /// Connection errors; [`ClientError::Broker`] with `UnknownTopic`,
    /// `UnknownPartition`, `InvalidRequest` (`before` beyond the partition's
    /// end), `NotLeader` (a member of a replication group that is not its
    /// leader) or `UnsupportedApi` (a broker without the API).
    pub fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before: u64,
    ) -> Result<u64, ClientError> {
        let request = DeleteRecordsRequest {
            topic,
            partition,
            before,
        };
        let response = self
            .conn
            .call(ApiKey::DeleteRecords, |out| request.encode(out))?
            .into_result()?;
        Ok(DeleteRecordsResponse::decode(&response.body)?.log_start)
    }

    /// Describes `topics`, or every topic when `topics` is empty. A named
    /// topic that does not exist comes back with its own error code
    /// (`UnknownTopic`) rather than failing the call.
    ///
    /// # Errors
    /// Connection errors, [`ClientError::Broker`], [`ClientError::Decode`].
    pub fn metadata(&self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        let request = MetadataRequest {
            topics: topics.to_vec(),
        };
        let response = self
            .conn
            .call(ApiKey::Metadata, |out| request.encode(out))?
            .into_result()?;
        Ok(MetadataResponse::decode(&response.body)?)
    }

    /// As [`Admin::metadata`], with the bytes each partition holds
    /// (Metadata version 2).
    ///
    /// # Errors
    /// As [`Admin::metadata`]; [`ClientError::Broker`] with
    /// `UnsupportedVersion` when the broker does not speak version 2.
    pub fn describe(&self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        let version = version_at_least(&self.conn, ApiKey::Metadata, 2)?;
        let request = MetadataRequest {
            topics: topics.to_vec(),
        };
        let response = self
            .conn
            .call_version(ApiKey::Metadata, version, |out| request.encode(out))?
            .into_result()?;
        Ok(MetadataResponse::decode_version(&response.body, version)?)
    }

    /// The earliest and latest (one past the last committed) offsets of a
    /// partition.
    ///
    /// # Errors
    /// [`ClientError::Broker`] with `UnknownTopic` or `UnknownPartition`;
    /// connection and decode errors.
    pub fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<ListOffsetsResponse, ClientError> {
        list_offsets(&self.conn, topic, partition)
    }

    /// The first offset of `partition` appended at or after `time_ms` (ms
    /// since the Unix epoch; by the broker's append times, as a running
    /// maximum), or the end of the partition when there is none. A time
    /// before the log start gives the log start.
    ///
    /// # Errors
    /// As [`Admin::list_offsets`].
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64, ClientError> {
        let r = list_offsets_at(&self.conn, topic, partition, time_ms)?;
        Ok(r.time_offset.unwrap_or(r.latest))
    }

    /// This broker's view of its replication group: its id, role, term,
    /// the leader it knows, its W/F/R/C positions and the member list.
    ///
    /// # Errors
    /// Connection errors, [`ClientError::Broker`], [`ClientError::Decode`].
    pub fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        let response = self
            .conn
            .call(ApiKey::ClusterStatus, |_| {})?
            .into_result()?;
        Ok(ClusterStatusResponse::decode(&response.body)?)
    }

    /// Sends `payload` in a Ping and returns the echo. The Ping body is the
    /// raw payload, echoed byte for byte.
    ///
    /// # Errors
    /// Connection errors, [`ClientError::Broker`].
    pub fn ping(&self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        let response = self
            .conn
            .call(ApiKey::Ping, |out| out.extend_from_slice(payload))?
            .into_result()?;
        Ok(response.body)
    }
}

/// ListOffsets on any connection; shared by [`Admin`] and the consumer.
pub(crate) fn list_offsets(
    conn: &Connection,
    topic: &str,
    partition: u32,
) -> Result<ListOffsetsResponse, ClientError> {
    let request = ListOffsetsRequest {
        topic,
        partition,
        timestamp_ms: None,
    };
    let response = conn
        .call(ApiKey::ListOffsets, |out| request.encode(out))?
        .into_result()?;
    Ok(ListOffsetsResponse::decode(&response.body)?)
}

/// The highest version of `api` the connection and its broker share, when
/// it is at least `least`.
fn version_at_least(conn: &Connection, api: ApiKey, least: u16) -> Result<u16, ClientError> {
    match conn.version_for(api) {
        Some(v) if v >= least => Ok(v),
        _ => Err(ClientError::Broker {
            code: ErrorCode::UnsupportedVersion,
            message: format!(
                "the broker does not speak {api:?} version {least} (a broker from before it \
                 was added)"
            ),
        }),
    }
}

/// ListOffsets version 2: the range, and the first offset appended at or
/// after `time_ms`.
pub(crate) fn list_offsets_at(
    conn: &Connection,
    topic: &str,
    partition: u32,
    time_ms: i64,
) -> Result<ListOffsetsResponse, ClientError> {
    let version = version_at_least(conn, ApiKey::ListOffsets, 2)?;
    let request = ListOffsetsRequest {
        topic,
        partition,
        timestamp_ms: Some(time_ms),
    };
    let response = conn
        .call_version(ApiKey::ListOffsets, version, |out| request.encode(out))?
        .into_result()?;
    Ok(ListOffsetsResponse::decode_version(
        &response.body,
        version,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake;
    use crate::wire::api::{PartitionMetadata, TopicMetadata};
    use crate::wire::ErrorCode;

    /// Against a broker that speaks Metadata 2, `describe` asks for it
    /// and decodes each partition's bytes.
    #[test]
    fn describe_asks_a_broker_that_speaks_it_for_its_highest_version() {
        use crate::wire::api::ApiVersions;
        let broker = fake::spawn_raw(|mut c| {
            let req = c.read_request().unwrap();
            c.answer_handshake_with(&req, 1, ApiVersions::spoken());
            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_key, ApiKey::Metadata.as_u16());
            assert_eq!(req.header.api_version, 3);
            let mut body = Vec::new();
            MetadataResponse {
                topics: vec![TopicMetadata {
                    config: Default::default(),
                    name: "orders".into(),
                    error_code: 0,
                    partitions: vec![PartitionMetadata {
                        partition: 0,
                        start_offset: 2,
                        end_offset: 9,
                        bytes: 700,
                    }],
                }],
            }
            .encode_version(3, &mut body);
            c.reply(&req, 0, &body);
            c.read_request();
        });
        let admin = Admin::connect(broker.addr).unwrap();
        let md = admin.describe(&["orders"]).unwrap();
        assert_eq!(md.topics[0].partitions[0].bytes, 700);
        drop(admin);
        broker.join();
    }

    /// Version 2 requests go only to a broker that says it speaks them;
    /// against an older one they fail here, and nothing is sent.
    #[test]
    fn time_lookups_and_describe_need_a_broker_that_speaks_version_2() {
        let broker = fake::spawn(|mut c| {
            // Only the Ping below arrives.
            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_key, ApiKey::Ping.as_u16());
            c.reply(&req, 0, &req.body);
            c.read_request();
        });
        let admin = Admin::connect(broker.addr).unwrap();
        for err in [
            admin.offset_for_time("orders", 0, 5).unwrap_err(),
            admin.describe(&["orders"]).unwrap_err(),
        ] {
            assert_eq!(err.code(), Some(ErrorCode::UnsupportedVersion), "{err}");
        }
        assert_eq!(admin.ping(b"still here").unwrap(), b"still here");
        drop(admin);
        broker.join();
    }

    #[test]
    fn admin_calls_encode_requests_and_decode_answers() {
        let broker = fake::spawn(|mut c| {
            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_key, ApiKey::CreateTopic.as_u16());
            let create = CreateTopicRequest::decode(&req.body).unwrap();
            assert_eq!((create.name, create.partitions), ("orders", 3));
            c.reply(&req, 0, &[]);

            let req = c.read_request().unwrap();
            let create = CreateTopicRequest::decode(&req.body).unwrap();
            assert_eq!(create.name, "orders");
            c.reply_error(&req, ErrorCode::TopicAlreadyExists, "");

            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_key, ApiKey::Metadata.as_u16());
            assert_eq!(
                MetadataRequest::decode(&req.body).unwrap().topics,
                vec!["orders"]
            );
            let mut body = Vec::new();
            MetadataResponse {
                topics: vec![TopicMetadata {
                    config: Default::default(),
                    name: "orders".into(),
                    error_code: 0,
                    partitions: vec![PartitionMetadata {
                        partition: 0,
                        start_offset: 2,
                        end_offset: 9,
                        bytes: 0,
                    }],
                }],
            }
            .encode(&mut body);
            c.reply(&req, 0, &body);

            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_version, 1);
            let lo = ListOffsetsRequest::decode(&req.body).unwrap();
            assert_eq!((lo.topic, lo.partition), ("orders", 1));
            let mut body = Vec::new();
            ListOffsetsResponse {
                earliest: 4,
                latest: 10,
                time_offset: None,
            }
            .encode(&mut body);
            c.reply(&req, 0, &body);

            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_key, ApiKey::Ping.as_u16());
            c.reply(&req, 0, &req.body);
            c.read_request();
        });
        let admin = Admin::connect(broker.addr).unwrap();
        admin.create_topic("orders", 3).unwrap();
        let err = admin.create_topic("orders", 3).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
        let md = admin.metadata(&["orders"]).unwrap();
        assert_eq!(md.topics[0].partitions[0].end_offset, 9);
        let lo = admin.list_offsets("orders", 1).unwrap();
        assert_eq!((lo.earliest, lo.latest), (4, 10));
        assert_eq!(admin.ping(b"ni hao").unwrap(), b"ni hao");
        drop(admin);
        broker.join();
    }
}
