//! The broker: the produce pipeline of DESIGN.md §1 as threads around plain
//! logic. Start one with [`Broker::start`].

use crate::config::Config;
use std::net::SocketAddr;
use thiserror::Error;

/// Why the broker could not start or stopped with a failure.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Opening or recovering the journal failed.
    #[error("journal: {0}")]
    Journal(String),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A pipeline thread failed.
    #[error("{0}")]
    Thread(String),
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
}

/// Asks a running broker to shut down; cheap to clone and send.
#[derive(Clone)]
pub struct ShutdownHandle {}

impl ShutdownHandle {
    /// Starts a graceful shutdown: stop accepting, answer or fail pending
    /// requests, flush, stop the threads. Returns at once.
    pub fn shutdown(&self) {}
}

impl Broker {
    /// Opens (and recovers) the journal in `config.data_dir`, binds
    /// `config.listen` and starts the pipeline threads.
    ///
    /// # Errors
    /// [`BrokerError`] when the config is invalid, the data directory is
    /// locked by another broker or unreadable, or the address cannot be bound.
    pub fn start(config: Config) -> Result<Broker, BrokerError> {
        config.validate()?;
        Err(BrokerError::Thread("not built yet".into()))
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that can stop the broker from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {}
    }

    /// Blocks until the broker has shut down.
    ///
    /// # Errors
    /// [`BrokerError::Thread`] when a pipeline thread failed.
    pub fn wait(self) -> Result<(), BrokerError> {
        Ok(())
    }
}
