//! The client's error type.

use crate::wire::api::ErrorBody;
use crate::wire::codec::DecodeError;
use crate::wire::ErrorCode;
use thiserror::Error;

/// Everything a client call can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The connection is closed (by the broker, by a failed write, or
    /// because the [`Connection`](super::Connection) was dropped).
    #[error("connection closed")]
    Closed,
    /// The broker answered with an error code.
    #[error("broker error {code}: {message}")]
    Broker {
        /// The code from the response header.
        code: ErrorCode,
        /// The broker's message, or the code's default message when the
        /// broker sent none.
        message: String,
    },
    /// A response body could not be decoded.
    #[error("cannot decode response: {0}")]
    Decode(DecodeError),
    /// No response arrived within the time the caller allowed.
    #[error("timed out waiting for the response")]
    Timeout,
    /// The broker broke the protocol (unexpected API key or version, a
    /// frame that cannot be framed, a corrupt fetched batch), or the client
    /// was used beyond its limits.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request is larger than the broker's maximum frame size; it was
    /// not sent.
    #[error("request of {bytes} bytes is above the broker's maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// Size of the encoded frame.
        bytes: usize,
        /// The broker's limit from the handshake.
        max: usize,
    },
}

// Not `#[from]`: that would also make the decode error the `source`, and
// error reports that print the chain would say it twice.
impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> ClientError {
        ClientError::Decode(e)
    }
}

impl ClientError {
    /// The error for a response header's error code and its error body.
    /// An error code this client does not know becomes [`ClientError::Protocol`].
    pub fn from_response(error_code: u16, body: &[u8]) -> ClientError {
        let message = ErrorBody::decode(body).message;
        match ErrorCode::from_u16(error_code) {
            Some(code) => ClientError::Broker {
                code,
                message: if message.is_empty() {
                    code.message().to_string()
                } else {
                    message.to_string()
                },
            },
            None => ClientError::Protocol(format!("unknown error code {error_code}: {message}")),
        }
    }

    /// The broker's error code, when this is a broker error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when sending the **same** request again, after a pause and
    /// possibly on a new connection, can succeed. This is the "retriable"
    /// column of `docs/protocol.md` §8 as the producer applies it:
    ///
    /// | error | retriable | why |
    /// |---|---|---|
    /// | [`Io`](ClientError::Io), [`Closed`](ClientError::Closed) | yes | the connection died; reconnect |
    /// | [`Timeout`](ClientError::Timeout) (no answer in time) | yes | |
    /// | `Timeout` (16) | yes | the batch may be stored; an idempotent retry is answered with the first copy's offset |
    /// | `Busy` (18), `TooManyConnections` (25) | yes | after a backoff |
    /// | `StorageFull` (19), `StorageError` (20) | yes | nothing was stored; the broker may recover (or be restarted) within the deadline |
    /// | `ShuttingDown` (21) | yes | on a new connection, to the restarted broker |
    /// | `NotLeader` (22) | yes | against the leader |
    /// | `CorruptBatch` (11) | yes | the bytes may have been damaged in transit; the producer retries it once |
    /// | `OutOfOrderSequence` (28) | yes | nothing was stored; resent after the batches before it (the producer resends from the gap, in order) |
    /// | `UnknownProducer` (29) | no | not as is: the producer starts a new epoch and renumbers the batch |
    /// | every other broker code | no | the request must change first (`UnknownTopic`, `InvalidBatch`, `RecordTooLarge`, `StaleSequence`, `ProducerFenced`, ...) |
    /// | [`Decode`](ClientError::Decode), [`Protocol`](ClientError::Protocol), [`FrameTooLarge`](ClientError::FrameTooLarge) | no | the broker or the request is broken |
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout => true,
            ClientError::Broker { code, .. } => matches!(
                code,
                ErrorCode::Timeout
                    | ErrorCode::Busy
                    | ErrorCode::TooManyConnections
                    | ErrorCode::StorageFull
                    | ErrorCode::StorageError
                    | ErrorCode::ShuttingDown
                    | ErrorCode::NotLeader
                    | ErrorCode::CorruptBatch
                    | ErrorCode::OutOfOrderSequence
            ),
            ClientError::Decode(_)
            | ClientError::Protocol(_)
            | ClientError::FrameTooLarge { .. } => false,
        }
    }

    /// A copy of this error. `std::io::Error` is not `Clone`, so an IO error
    /// is copied as its kind and text; used where one failure must be
    /// reported to several waiters.
    pub(crate) fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Io(e) => ClientError::Io(std::io::Error::new(e.kind(), e.to_string())),
            ClientError::Closed => ClientError::Closed,
            ClientError::Broker { code, message } => ClientError::Broker {
                code: *code,
                message: message.clone(),
            },
            ClientError::Decode(e) => ClientError::Decode(*e),
            ClientError::Timeout => ClientError::Timeout,
            ClientError::Protocol(m) => ClientError::Protocol(m.clone()),
            ClientError::FrameTooLarge { bytes, max } => ClientError::FrameTooLarge {
                bytes: *bytes,
                max: *max,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::Put;

    #[test]
    fn broker_error_displays_code_name_and_message() {
        let mut body = Vec::new();
        body.put_str("unknown topic");
        let e = ClientError::from_response(ErrorCode::UnknownTopic.as_u16(), &body);
        assert_eq!(e.to_string(), "broker error UnknownTopic: unknown topic");
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
    }

    #[test]
    fn empty_error_body_falls_back_to_the_default_message() {
        let e = ClientError::from_response(ErrorCode::Busy.as_u16(), &[]);
        assert_eq!(
            e.to_string(),
            format!("broker error Busy: {}", ErrorCode::Busy.message())
        );
    }

    #[test]
    fn retriable_errors_follow_the_protocol_table() {
        let broker = |code| ClientError::Broker {
            code,
            message: String::new(),
        };
        let retriable = [
            ErrorCode::Timeout,
            ErrorCode::Busy,
            ErrorCode::TooManyConnections,
            ErrorCode::StorageFull,
            ErrorCode::StorageError,
            ErrorCode::ShuttingDown,
            ErrorCode::NotLeader,
            ErrorCode::CorruptBatch,
            ErrorCode::OutOfOrderSequence,
        ];
        for code in ErrorCode::ALL {
            assert_eq!(
                broker(code).is_retriable(),
                retriable.contains(&code),
                "{code}"
            );
        }
        assert!(ClientError::Closed.is_retriable());
        assert!(ClientError::Io(std::io::ErrorKind::ConnectionReset.into()).is_retriable());
        assert!(!ClientError::Protocol("x".into()).is_retriable());
        assert!(!ClientError::FrameTooLarge { bytes: 2, max: 1 }.is_retriable());
    }

    #[test]
    fn unknown_error_code_is_a_protocol_error() {
        let e = ClientError::from_response(9999, &[]);
        assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");
    }
}
