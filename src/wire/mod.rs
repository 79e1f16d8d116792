//! The wire protocol: frames, headers, message bodies, the consensus
//! messages brokers exchange (`replicate`), the record batch and error
//! codes. Pure encoding and decoding: no IO, no threads.

pub mod api;
pub mod batch;
pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
pub mod replicate;

pub use api::{ApiKey, Qos};
pub use error::ErrorCode;
