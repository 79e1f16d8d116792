//! The wire protocol: frames, headers, message bodies, the consensus
//! messages brokers exchange (`replicate`), the record batch and error
//! codes. Pure encoding and decoding: no IO, no threads.
//!
//! `replicate` speaks the consensus module's types and exists only with
//! the broker feature; everything else is shared with the client.

pub mod api;
pub mod batch;
pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
#[cfg(feature = "broker")]
pub mod replicate;
pub mod topic_config;

pub use api::{ApiKey, Qos};
pub use error::ErrorCode;
