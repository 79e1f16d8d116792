//! The error codes carried in every response header.
//!
//! The numbers are part of the protocol: never renumber, only append.

/// A stable numeric error code, sent as a `u16` in the response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An unexpected broker-side failure; the message says what.
    Internal = 1,
    /// The request body could not be decoded (truncated, bad UTF-8, trailing bytes).
    MalformedRequest = 2,
    /// The API key is not one this broker knows.
    UnsupportedApi = 3,
    /// The API version is not one this broker speaks for that API.
    UnsupportedVersion = 4,
    /// The frame's length is above the broker's maximum frame size; the
    /// connection is closed after this response.
    FrameTooLarge = 5,
    /// The topic does not exist.
    UnknownTopic = 6,
    /// The partition number is not below the topic's partition count.
    UnknownPartition = 7,
    /// CreateTopic named a topic that already exists.
    TopicAlreadyExists = 8,
    /// The topic name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    InvalidTopicName = 9,
    /// The partition count is zero or above the broker's limit.
    InvalidPartitions = 10,
    /// A record batch checksum does not match its bytes.
    CorruptBatch = 11,
    /// A record batch is structurally invalid (length, version, record layout).
    InvalidBatch = 12,
    /// A record batch is larger than the broker's maximum batch size.
    BatchTooLarge = 13,
    /// The QoS byte is not one of the documented levels.
    InvalidQos = 14,
    /// A timeout or wait field is outside its documented bounds.
    InvalidTimeout = 15,
    /// The position the request's QoS needs was not reached before its
    /// deadline. The data may still become durable later.
    Timeout = 16,
    /// The fetch offset is outside the partition's committed range.
    OffsetOutOfRange = 17,
    /// The broker is at a queue limit; retry later.
    Busy = 18,
    /// The journal's disk is full; nothing was written.
    StorageFull = 19,
    /// The journal could not be written or synced.
    StorageError = 20,
    /// The broker is shutting down and did not complete the request.
    ShuttingDown = 21,
    /// This broker is not the leader (replication).
    NotLeader = 22,
    /// A request field holds an absurd value (for example `max_bytes` 0).
    InvalidRequest = 23,
    /// The broker already holds its maximum number of topics or partitions.
    TooManyTopics = 24,
    /// The broker already serves its maximum number of connections.
    TooManyConnections = 25,
    /// A record's key or value is above the broker's size limit.
    RecordTooLarge = 26,
    /// A batch's producer sequence number is older than the broker
    /// remembers for that producer and partition; it may be a duplicate, so
    /// it was not stored.
    StaleSequence = 27,
    /// A batch's producer sequence is neither the next one expected for its
    /// producer, epoch and partition nor a stored duplicate (a gap, or out
    /// of order); nothing was stored. The producer resends from the gap, in
    /// order.
    OutOfOrderSequence = 28,
    /// The broker holds no state for the batch's producer on this partition
    /// (never seen, or evicted after idling) and the batch's sequence is not
    /// 0; nothing was stored. The producer starts a new epoch at sequence 0.
    UnknownProducer = 29,
    /// The batch's producer epoch is older than the one the broker holds for
    /// that producer and partition; nothing was stored.
    ProducerFenced = 30,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::None,
        ErrorCode::Internal,
        ErrorCode::MalformedRequest,
        ErrorCode::UnsupportedApi,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidTopicName,
        ErrorCode::InvalidPartitions,
        ErrorCode::CorruptBatch,
        ErrorCode::InvalidBatch,
        ErrorCode::BatchTooLarge,
        ErrorCode::InvalidQos,
        ErrorCode::InvalidTimeout,
        ErrorCode::Timeout,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::Busy,
        ErrorCode::StorageFull,
        ErrorCode::StorageError,
        ErrorCode::ShuttingDown,
        ErrorCode::NotLeader,
        ErrorCode::InvalidRequest,
        ErrorCode::TooManyTopics,
        ErrorCode::TooManyConnections,
        ErrorCode::RecordTooLarge,
        ErrorCode::StaleSequence,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::UnknownProducer,
        ErrorCode::ProducerFenced,
    ];

    /// The code for a wire value, or `None` for an unknown number.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.get(v as usize).copied()
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The short name used in logs and in the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "None",
            ErrorCode::Internal => "Internal",
            ErrorCode::MalformedRequest => "MalformedRequest",
            ErrorCode::UnsupportedApi => "UnsupportedApi",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::FrameTooLarge => "FrameTooLarge",
            ErrorCode::UnknownTopic => "UnknownTopic",
            ErrorCode::UnknownPartition => "UnknownPartition",
            ErrorCode::TopicAlreadyExists => "TopicAlreadyExists",
            ErrorCode::InvalidTopicName => "InvalidTopicName",
            ErrorCode::InvalidPartitions => "InvalidPartitions",
            ErrorCode::CorruptBatch => "CorruptBatch",
            ErrorCode::InvalidBatch => "InvalidBatch",
            ErrorCode::BatchTooLarge => "BatchTooLarge",
            ErrorCode::InvalidQos => "InvalidQos",
            ErrorCode::InvalidTimeout => "InvalidTimeout",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::OffsetOutOfRange => "OffsetOutOfRange",
            ErrorCode::Busy => "Busy",
            ErrorCode::StorageFull => "StorageFull",
            ErrorCode::StorageError => "StorageError",
            ErrorCode::ShuttingDown => "ShuttingDown",
            ErrorCode::NotLeader => "NotLeader",
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::TooManyTopics => "TooManyTopics",
            ErrorCode::TooManyConnections => "TooManyConnections",
            ErrorCode::RecordTooLarge => "RecordTooLarge",
            ErrorCode::StaleSequence => "StaleSequence",
            ErrorCode::OutOfOrderSequence => "OutOfOrderSequence",
            ErrorCode::UnknownProducer => "UnknownProducer",
            ErrorCode::ProducerFenced => "ProducerFenced",
        }
    }

    /// A default human-readable message for the code, used when the broker
    /// has nothing more specific to say (so the hot path never formats text).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::None => "ok",
            ErrorCode::Internal => "internal broker error",
            ErrorCode::MalformedRequest => "request body could not be decoded",
            ErrorCode::UnsupportedApi => "unknown API key",
            ErrorCode::UnsupportedVersion => "unsupported API version",
            ErrorCode::FrameTooLarge => "frame larger than the maximum frame size",
            ErrorCode::UnknownTopic => "unknown topic",
            ErrorCode::UnknownPartition => "unknown partition",
            ErrorCode::TopicAlreadyExists => "topic already exists",
            ErrorCode::InvalidTopicName => {
                "topic name must be 1-249 bytes of [A-Za-z0-9._-] and not '.' or '..'"
            }
            ErrorCode::InvalidPartitions => "partition count out of range",
            ErrorCode::CorruptBatch => "record batch checksum mismatch",
            ErrorCode::InvalidBatch => "record batch is malformed",
            ErrorCode::BatchTooLarge => "record batch larger than the maximum batch size",
            ErrorCode::InvalidQos => "unknown QoS level",
            ErrorCode::InvalidTimeout => "timeout out of range",
            ErrorCode::Timeout => {
                "QoS position not reached before the deadline; the data may still commit"
            }
            ErrorCode::OffsetOutOfRange => "offset outside the partition's committed range",
            ErrorCode::Busy => "broker queue full, retry later",
            ErrorCode::StorageFull => "journal disk is full",
            ErrorCode::StorageError => "journal write or sync failed",
            ErrorCode::ShuttingDown => "broker is shutting down",
            ErrorCode::NotLeader => "this broker is not the leader",
            ErrorCode::InvalidRequest => "request field out of range",
            ErrorCode::TooManyTopics => "topic or partition limit reached",
            ErrorCode::TooManyConnections => "connection limit reached",
            ErrorCode::RecordTooLarge => "record key or value larger than the broker's limit",
            ErrorCode::StaleSequence => {
                "producer sequence older than the broker remembers; not stored (it may be a duplicate)"
            }
            ErrorCode::OutOfOrderSequence => {
                "producer sequence is not the next one expected; not stored (resend from the gap)"
            }
            ErrorCode::UnknownProducer => {
                "no state for this producer on this partition and the sequence is not 0; not stored"
            }
            ErrorCode::ProducerFenced => {
                "producer epoch older than the broker's for this producer and partition; not stored"
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_numbered_by_position() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.as_u16() as usize, i);
            assert_eq!(ErrorCode::from_u16(i as u16), Some(*code));
        }
        assert_eq!(ErrorCode::from_u16(ErrorCode::ALL.len() as u16), None);
    }
}
