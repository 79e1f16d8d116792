//! The broker: the produce pipeline of DESIGN.md §1 as threads around plain
//! logic. Start one with [`Broker::start`].
//!
//! Threads, in the order a produce request meets them:
//! [`reactor`] (sockets) → [`writer`] (journal tail, W) → [`flusher`]
//! (fdatasync, F) and [`replicator`] (R, C) → [`responder`] (answers) →
//! back to the reactor. [`reader`] serves fetches beside them.
//! Stages talk through SPSC rings ([`ring`]) and the atomic positions in
//! [`shared`].

pub mod flusher;
pub mod reactor;
pub mod reader;
pub mod replicator;
pub mod responder;
pub mod ring;
pub mod shared;
pub mod writer;

use crate::config::Config;
use crate::journal::log::Journal;
use ringbuf::traits::Split;
use ringbuf::HeapRb;
use shared::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

/// Why the broker could not start or stopped with a failure.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Opening or recovering the journal failed.
    #[error("{0}")]
    Journal(#[from] crate::journal::error::JournalError),
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

fn stage_of(name: &str) -> Option<shared::Stage> {
    use shared::Stage;
    match name {
        "writer" => Some(Stage::Writer),
        "flusher" => Some(Stage::Flusher),
        "replicator" => Some(Stage::Replicator),
        "responder" => Some(Stage::Responder),
        "reader" => Some(Stage::Reader),
        _ => None,
    }
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
}

/// Asks a running broker to shut down; cheap to clone and send.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Starts a graceful shutdown: stop accepting and reading, answer or
    /// fail every request already taken in, flush, checkpoint, stop the
    /// threads. Returns at once; [`Broker::wait`] waits for the end.
    pub fn shutdown(&self) {
        self.shared.request_shutdown();
    }
}

impl Broker {
    /// Opens (and recovers) the journal in `config.data_dir`, binds
    /// `config.listen` and starts the pipeline threads.
    ///
    /// # Errors
    /// [`BrokerError`] when the config is invalid, the data directory is
    /// locked by another broker, damaged or unreadable, or the address
    /// cannot be bound.
    pub fn start(config: Config) -> Result<Broker, BrokerError> {
        config.validate()?;
        let config = Arc::new(config);
        let journal = Journal::open(&config.data_dir, config.segment_bytes)?;
        let report = journal.report();
        eprintln!(
            "hutong: journal {} recovered: {} bytes, {} topics, {} batches{}",
            config.data_dir.display(),
            journal.end(),
            journal.catalog().len(),
            report.batches,
            match &report.truncated {
                Some((at, why)) => format!("; cut a damaged tail at position {at}: {why}"),
                None => String::new(),
            }
        );
        let std_listener = std::net::TcpListener::bind(config.listen).map_err(|source| BrokerError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = std_listener.local_addr().map_err(|source| BrokerError::Listen {
            addr: config.listen,
            source,
        })?;
        std_listener.set_nonblocking(true).map_err(|source| BrokerError::Listen {
            addr: config.listen,
            source,
        })?;
        let listener = mio::net::TcpListener::from_std(std_listener);
        let io = |what: &str, e: std::io::Error| BrokerError::Thread(format!("{what}: {e}"));
        let poll = mio::Poll::new().map_err(|e| io("creating the poll", e))?;
        let waker = mio::Waker::new(poll.registry(), reactor::WAKER).map_err(|e| io("creating the waker", e))?;
        let shared = Arc::new(Shared::new(journal.end(), waker));

        let (to_writer, writer_requests) = ring::message_ring(config.request_ring_bytes);
        let (to_reader, reader_requests) = ring::message_ring(config.read_request_ring_bytes);
        let (responder_out, from_responder) = ring::message_ring(config.response_ring_bytes);
        let (reader_out, from_reader) = ring::message_ring(config.fetch_ring_bytes);
        let (pending_tx, pending_rx) = HeapRb::new(config.pending_max).split();
        let (reader_events_tx, reader_events_rx) = std::sync::mpsc::channel();
        let (flusher_events_tx, flusher_events_rx) = std::sync::mpsc::channel();

        for t in journal.catalog().topics() {
            let _ = reader_events_tx.send(reader::ReaderEvent::Topic {
                meta: t.meta.clone(),
                indexes: t.index_handles(),
            });
        }
        let flusher = flusher::Flusher::new(
            config.data_dir.clone(),
            journal.segment_files(),
            journal.checkpoint_topics(),
            Duration::from_millis(config.checkpoint_interval_ms),
        );
        let reader = reader::Reader::new(journal.segment_files().to_vec(), reader_events_rx, config.fetch_bytes_max);
        let writer = writer::Writer::new(journal, config.clone(), reader_events_tx, flusher_events_tx);
        let reactor = reactor::Reactor::new(
            poll,
            listener,
            shared.clone(),
            config.clone(),
            to_writer,
            to_reader,
            from_responder,
            from_reader,
        )
        .map_err(|e| io("registering the listener", e))?;

        let mut threads = Vec::new();
        let mut spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| -> Result<(), BrokerError> {
            let s = shared.clone();
            let stage = stage_of(name);
            let body = move || {
                // A panicking stage must not leave the others waiting for
                // it forever: report it and let the shutdown go on.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    s.fail(format!("the {name} thread panicked"));
                    match stage {
                        Some(stage) => s.mark_done(stage),
                        None => s.reactor_drained.store(true, std::sync::atomic::Ordering::Release),
                    }
                }
            };
            let handle = std::thread::Builder::new()
                .name(format!("hutong-{name}"))
                .spawn(body)
                .map_err(|e| io("spawning a thread", e))?;
            threads.push((name, handle));
            Ok(())
        };
        let s = shared.clone();
        spawn("writer", Box::new(move || writer::run(s, writer, writer_requests, pending_tx)))?;
        let s = shared.clone();
        spawn("flusher", Box::new(move || flusher::run(s, flusher, flusher_events_rx)))?;
        let s = shared.clone();
        spawn("replicator", Box::new(move || replicator::run(s)))?;
        let s = shared.clone();
        let pending_max = config.pending_max;
        spawn(
            "responder",
            Box::new(move || responder::run(s, pending_rx, responder_out, pending_max)),
        )?;
        let s = shared.clone();
        spawn("reader", Box::new(move || reader::run(s, reader, reader_requests, reader_out)))?;
        spawn("reactor", Box::new(move || reactor.run()))?;
        Ok(Broker {
            local_addr,
            shared,
            threads,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that can stop the broker from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// Blocks until the broker has shut down.
    ///
    /// # Errors
    /// [`BrokerError::Thread`] when a pipeline thread panicked or a stage
    /// hit a fatal error.
    pub fn wait(self) -> Result<(), BrokerError> {
        let mut failure = None;
        for (name, handle) in self.threads {
            if handle.join().is_err() {
                failure.get_or_insert(format!("the {name} thread panicked"));
            }
        }
        let fatal = self.shared.fatal.lock().ok().and_then(|f| f.clone());
        match failure.or(fatal) {
            Some(msg) => Err(BrokerError::Thread(msg)),
            None => Ok(()),
        }
    }
}
