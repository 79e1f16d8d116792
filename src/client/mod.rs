//! The Rust client: blocking calls over full-duplex, pipelined connections.
pub mod connection;
pub mod error;

#[cfg(test)]
mod fake;

pub use connection::{Connection, Response, Ticket};
pub use error::ClientError;
