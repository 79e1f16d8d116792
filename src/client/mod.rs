//! The Rust client: blocking calls over full-duplex, pipelined connections.
//!
//! - [`connection`]: one TCP connection; a locked writing side that sends
//!   whole request frames, a reader thread that matches each response to
//!   its waiter by correlation id, so many requests are in flight at once.
//! - [`admin`]: topics, metadata, offsets, ping, cluster status.
//! - [`cluster`]: the status of a whole replication group.
//! - [`producer`]: pipelined produce with receipts, `max_in_flight`
//!   backpressure and `flush`; exactly-once, in-order delivery per
//!   partition (producer id, epoch and sequence per partition), with
//!   retries over a new connection when the old one breaks or falls
//!   silent, and a delivery deadline for every receipt ([`RetryConfig`]).
//! - [`consumer`]: reads one partition with long-polling fetches.
//! - [`error`]: the error type, [`ClientError`].
//!
//! Every call blocks its caller, never the connection: other threads keep
//! sending on it, and answers come back in whatever order the broker gives.
//! No call blocks for ever: a connection whose broker falls silent is
//! closed ([`connection::Liveness`]).
//!
//! ```no_run
//! use hutong::client::{Admin, Consumer, Producer, ProducerConfig, StartFrom};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), hutong::client::ClientError> {
//! let admin = Admin::connect("127.0.0.1:7070")?;
//! admin.create_topic("orders", 1)?;
//! let producer = Producer::connect("127.0.0.1:7070", ProducerConfig::default())?;
//! let ack = producer.send_records("orders", 0, &[(b"k", b"hello")])?.wait()?;
//! let mut consumer = Consumer::connect("127.0.0.1:7070", "orders", 0, StartFrom::Earliest)?;
//! for record in consumer.poll(Duration::from_secs(1))? {
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # let _ = ack;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod producer;

#[cfg(test)]
mod fake;

pub use admin::Admin;
pub use connection::{
    Completion, Connection, ConnectionConfig, Pipeline, Response, ResponseRef, Ticket,
};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartFrom};
pub use error::ClientError;
pub use producer::{ProduceAck, Producer, ProducerConfig, Receipt, RetryConfig};
