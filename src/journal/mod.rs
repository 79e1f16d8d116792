//! The journal: one append-only stream of record batches shared by every
//! partition, addressed by byte position, split into preallocated segment
//! files. No threads, no sockets.

pub mod append_log;
pub mod catalog;
pub mod checkpoint;
pub mod control;
pub mod deletions;
pub mod dir;
pub mod error;
pub mod hardstate;
pub mod index;
pub mod lock;
pub mod log;
pub mod offload;
pub mod producers;
pub mod reader;
mod resume;
pub mod scan;
pub mod seg_index;
pub mod segment;
pub mod snapshot;
pub mod start;
pub mod topic;
