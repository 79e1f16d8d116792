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
//! - [`client`]: the blocking, pipelined Rust client.
//! - [`config`]: every limit and default.

pub mod broker;
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod journal;
pub mod wire;
