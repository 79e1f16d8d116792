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
//! - [`config`]: every limit and default of the broker.
//! - `log`: the broker's never-panicking log line ([`log!`]).
//!
//! Cargo features: `broker` (default) builds all of the above and the
//! `hutong` binary; `client` alone builds only [`client`] and [`wire`]
//! (without `wire::replicate`, the broker-to-broker messages), for
//! applications that talk to brokers and need none of their machinery.

#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "broker")]
pub mod config;
#[cfg(feature = "broker")]
pub mod consensus;
#[cfg(feature = "broker")]
pub mod journal;
#[cfg(feature = "broker")]
#[macro_use]
pub mod log;
pub mod wire;
