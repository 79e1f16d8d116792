//! hutong: a persistent, replicated, low-latency message broker.
//!
//! The produce path, module by module:
//!
//! ```text
//!  producers ─TCP─▶ broker::reactor (mio, one thread, every socket)
//!                     │ frame + cheap checks        request ring (SPSC)
//!                     ▼
//!                   broker::writer ── journal (segments, index) ── W
//!                     │ pending ring (SPSC)
//!          ┌──────────┼─────────────┐
//!          ▼          ▼             ▼
//!   broker::flusher  broker::replicator   broker::responder
//!   fdatasync → F    R (=W), C (=F)       answers when W/F/R/C reach the
//!                    on one node          request's QoS position, or Timeout
//!                                           │ completion ring (SPSC) + Waker
//!                                           ▼
//!                                        reactor writes the responses
//! ```
//! Fetch, Metadata and ListOffsets go to `broker::reader`, which reads the
//! journal with `pread` so the reactor never touches the disk.
//!
//! - [`wire`]: frames, message bodies, the record batch, error codes.
//! - [`journal`]: segments, checksums, index, checkpoint, recovery.
//! - [`broker`]: the pipeline threads.
//! - [`consensus`]: the sans-IO Raft rules over journal positions (not yet
//!   wired into the broker; replication will drive it from the replicator).
//! - [`client`]: the blocking, pipelined Rust client.
//! - [`config`]: every limit and default.
//! - `log`: the broker's never-panicking log line ([`log!`]).

pub mod broker;
pub mod client;
pub mod config;
pub mod consensus;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod journal;
#[macro_use]
pub mod log;
pub mod wire;
