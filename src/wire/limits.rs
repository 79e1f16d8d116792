//! The bounds the wire protocol itself fixes (docs/protocol.md §10), which
//! a client needs as much as the broker: they are not settings.
//!
//! The broker's settings and their defaults live in `config` (broker
//! feature), which re-exports these so that every limit the broker applies
//! can be read in one place.

/// Kibibyte.
pub const KIB: usize = 1024;
/// Mebibyte.
pub const MIB: usize = 1024 * KIB;

/// Largest request frame, length prefix included, for any API other than
/// Produce and Replicate (their bodies are small).
pub const SMALL_REQUEST_BYTES_MAX: usize = 64 * KIB;
/// Lower bound of a produce request's `timeout_ms`.
pub const PRODUCE_TIMEOUT_MS_MIN: u32 = 1;
/// Upper bound of a produce request's `timeout_ms`.
pub const PRODUCE_TIMEOUT_MS_MAX: u32 = 600_000;
/// Upper bound of a fetch request's `max_wait_ms`.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;

const _: () =
    assert!(PRODUCE_TIMEOUT_MS_MIN >= 1 && PRODUCE_TIMEOUT_MS_MIN <= PRODUCE_TIMEOUT_MS_MAX);
