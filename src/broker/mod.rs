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
pub mod partition_view;
pub mod reactor;
pub mod reader;
pub mod replica;
pub mod replicator;
pub mod responder;
pub mod retention;
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
    #[error(transparent)]
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

/// Replaces this process by a new run of the same program with the same
/// arguments (`execve` of `/proc/self/exe`): the same process id, standard
/// streams and data directory, every thread and open connection gone (the
/// journal lock, sockets and files are opened close-on-exec). What the
/// broker held in memory is rebuilt by recovery, as after a crash; a group
/// member does this after installing its leader's snapshot. Returns only
/// when the exec failed, with why.
pub fn restart_in_place(why: &str) -> String {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    crate::log!("restarting in place: {why}");
    let exe = CString::new("/proc/self/exe").expect("no NUL in a constant");
    // `--repair` and `--verify-journal` are decisions for one start, taken
    // at the first: not again for a journal the broker itself just wrote.
    let args: Result<Vec<CString>, _> = std::env::args_os()
        .filter(|a| a != "--repair" && a != "--verify-journal")
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    let args = match args {
        Ok(a) => a,
        Err(e) => return format!("cannot restart in place: an argument holds a NUL byte: {e}"),
    };
    match nix::unistd::execv(&exe, &args) {
        Ok(never) => match never {},
        Err(e) => format!("cannot restart in place (execv /proc/self/exe): {e}"),
    }
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
        // Damage below the checkpoint (or before the last segment) is data
        // that may have been acknowledged: a standalone broker refuses to
        // start unless told to cut it; a member of a replication group
        // cuts it and fetches it again from the leader (the majority holds
        // it).
        let recovery = crate::journal::log::Recovery {
            damage: if config.repair || config.is_clustered() {
                crate::journal::log::Damage::Cut
            } else {
                crate::journal::log::Damage::Refuse
            },
            // Only the consensus log starts from the recovered entries.
            entries: config.is_clustered(),
            producers: config.producer_limits(),
            // A repair needs the walk that finds damage anywhere.
            from_snapshot: !(config.repair || config.verify_journal),
            ..crate::journal::log::Recovery::default()
        };
        let mut journal = Journal::open_with(
            &config.data_dir,
            config.segment_bytes,
            config.write_cache_bytes,
            recovery,
        )?;
        let report = journal.report();
        crate::log!(
            "journal {} recovered: {} bytes, {} topics, {} batches{}{}",
            config.data_dir.display(),
            journal.end(),
            journal.catalog().len(),
            report.batches,
            match report.snapshot_position {
                Some(at) => format!(
                    " (from the snapshot at {at}; read {} bytes, index files below {})",
                    journal.end() - report.read_from,
                    report.read_from
                ),
                None => String::new(),
            },
            match &report.truncated {
                Some((at, why)) => format!("; cut a damaged tail at position {at}: {why}"),
                None => String::new(),
            }
        );
        let std_listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| BrokerError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = std_listener
            .local_addr()
            .map_err(|source| BrokerError::Listen {
                addr: config.listen,
                source,
            })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|source| BrokerError::Listen {
                addr: config.listen,
                source,
            })?;
        let listener = mio::net::TcpListener::from_std(std_listener);
        let io = |what: &str, e: std::io::Error| BrokerError::Thread(format!("{what}: {e}"));
        let poll = mio::Poll::new().map_err(|e| io("creating the poll", e))?;
        let waker = mio::Waker::new(poll.registry(), reactor::WAKER)
            .map_err(|e| io("creating the waker", e))?;
        let cluster = shared::ClusterView::new(
            config.node_id,
            config
                .peers
                .iter()
                .map(|p| (p.id, p.addr.clone()))
                .collect(),
        );
        let shared = Arc::new(Shared::new(journal.end(), waker, cluster));
        // A group member runs the consensus node on the writer thread and
        // carries its messages on the replicator thread.
        let (segments_tx, segments_rx) = std::sync::mpsc::channel();
        let (replica, carrier) = if config.is_clustered() {
            let (outbox_tx, outbox_rx) = HeapRb::new(replica::OUTBOX_MESSAGES).split();
            let entries = journal.take_entries();
            // Until a leader says what is committed, nothing is: consumers
            // of a restarted member wait for the group.
            shared.positions.committed.set(0);
            shared.positions.replicated.set(0);
            let replica = replica::Replica::new(
                &config,
                journal.consensus_base(),
                entries,
                crate::journal::control::NOOP_BATCH_BYTES as u64,
                outbox_tx,
                segments_tx,
                journal.report().lost.is_some(),
            )?;
            shared.cluster.caught_up.store(
                replica.node().hard_state().caught_up,
                std::sync::atomic::Ordering::Release,
            );
            let courier =
                replicator::Courier::new(&config, journal.segment_files().to_vec(), &shared)
                    .map_err(|e| io("creating the replicator's poll", e))?;
            (Some(replica), Some((courier, outbox_rx)))
        } else {
            (None, None)
        };

        let (to_writer, writer_requests) = ring::message_ring(config.request_ring_bytes);
        // Room for two of the largest appends (a standalone broker gets a
        // token ring: peers' frames are refused before they reach it).
        let peer_ring_bytes = if config.is_clustered() {
            2 * (config.frame_bytes_max + crate::config::RING_ENVELOPE_BYTES)
        } else {
            4096
        };
        let (to_peers, peer_messages) = ring::message_ring(peer_ring_bytes);
        let (to_reader, reader_requests) = ring::message_ring(config.read_request_ring_bytes);
        let (writer_out, from_writer) = ring::message_ring(config.response_ring_bytes);
        let (responder_out, from_responder) = ring::message_ring(config.response_ring_bytes);
        let (reader_out, from_reader) = ring::message_ring_in_place(config.fetch_ring_bytes);
        let (pending_tx, pending_rx) = HeapRb::new(config.pending_max).split();
        let (reader_events_tx, reader_events_rx) = std::sync::mpsc::channel();
        let (flusher_events_tx, flusher_events_rx) = std::sync::mpsc::channel();

        for (slot, t) in journal.catalog().topics().iter().enumerate() {
            let _ = reader_events_tx.send(reader::ReaderEvent::Topic {
                meta: t.meta.clone(),
                config: t.config,
                indexes: t.index_handles(),
            });
            // Settled deletions at once; a group member's recovered ones
            // above C once C passes them.
            for (partition, p) in t.partitions.iter().enumerate() {
                let d = &p.deletions;
                let settled = std::iter::once((0, d.settled())).filter(|&(_, b)| b > 0);
                for (at, below) in settled.chain(d.pending().iter().copied()) {
                    let _ = reader_events_tx.send(reader::ReaderEvent::Deleted {
                        slot,
                        partition: partition as u32,
                        at,
                        below,
                    });
                }
            }
        }
        let _ = reader_events_tx.send(reader::ReaderEvent::Retained {
            position: journal.start(),
        });
        // The index files recovery took instead of reading their segments:
        // the reader serves them, the retention stage checks them.
        let taken = journal.take_indexes();
        for index in &taken {
            let _ = reader_events_tx.send(reader::ReaderEvent::Indexed(index.clone()));
        }
        let policy = crate::journal::log::Retention {
            bytes: config.retention_bytes,
            ms: config.retention_ms_effective(),
        };
        let policy = (policy != crate::journal::log::Retention::default()).then_some(policy);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        if !taken.is_empty() {
            let _ = jobs_tx.send(retention::Job::Verify(taken));
        }
        let (trims_tx, trims_rx) = std::sync::mpsc::channel();
        let janitor_to_reader = reader_events_tx.clone();
        // Recovery synced what the checkpoint does not vouch for: every
        // recovered byte is durable.
        let flusher = flusher::Flusher::new(
            config.data_dir.clone(),
            journal.segment_files(),
            journal.end(),
            journal.checkpoint_topics(),
            journal.catalog().next_topic_id(),
            Duration::from_millis(config.checkpoint_interval_ms),
        )
        .with_checkpoint_bytes(
            config.checkpoint_bytes,
            journal.report().checkpoint_position,
        )
        // A group member's C waits for its F: never held back there.
        .with_pace(if config.is_clustered() {
            Duration::ZERO
        } else {
            Duration::from_micros(config.flush_pace_us)
        });
        let reader = reader::Reader::new(
            journal.segment_files().to_vec(),
            reader_events_rx,
            config.fetch_bytes_max,
        )
        .with_shared(shared.clone());
        let mut writer = writer::Writer::new(
            journal,
            config.clone(),
            reader_events_tx,
            flusher_events_tx,
            shared.clone(),
            replica,
            pending_tx,
            writer_out,
        );
        writer = writer.with_janitor(
            policy,
            Duration::from_millis(config.retention_check_ms),
            jobs_tx,
            trims_rx,
        );
        let reactor = reactor::Reactor::new(
            poll,
            listener,
            shared.clone(),
            config.clone(),
            to_writer,
            to_peers,
            to_reader,
            reactor::Completions {
                from_writer,
                from_responder,
                from_reader,
            },
        )
        .map_err(|e| io("registering the listener", e))?;

        let mut threads = Vec::new();
        let mut spawn =
            |name: &'static str, f: Box<dyn FnOnce() + Send>| -> Result<(), BrokerError> {
                let s = shared.clone();
                let stage = stage_of(name);
                let body = move || {
                    // A panicking stage must not leave the others waiting for
                    // it forever: report it and let the shutdown go on.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                        s.fail(format!("the {name} thread panicked"));
                        match stage {
                            Some(stage) => s.mark_done(stage),
                            None if name == "reactor" => s
                                .reactor_drained
                                .store(true, std::sync::atomic::Ordering::Release),
                            None => {}
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
        spawn(
            "writer",
            Box::new(move || writer::run(s, writer, writer_requests, peer_messages)),
        )?;
        let s = shared.clone();
        spawn(
            "flusher",
            Box::new(move || flusher::run(s, flusher, flusher_events_rx)),
        )?;
        let s = shared.clone();
        match carrier {
            Some((courier, outbox_rx)) => spawn(
                "replicator",
                Box::new(move || replicator::run_cluster(s, courier, outbox_rx, segments_rx)),
            )?,
            None => spawn("replicator", Box::new(move || replicator::run(s)))?,
        }
        let s = shared.clone();
        let pending_max = config.pending_max;
        spawn(
            "responder",
            Box::new(move || responder::run(s, pending_rx, responder_out, pending_max)),
        )?;
        let s = shared.clone();
        spawn(
            "reader",
            Box::new(move || reader::run(s, reader, reader_requests, reader_out)),
        )?;
        let dir = config.data_dir.clone();
        let s = shared.clone();
        let outlets = retention::Outlets {
            reader: janitor_to_reader,
            writer: trims_tx,
            wake_reader: Box::new(move || s.wake(shared::Stage::Reader)),
        };
        spawn(
            "retention",
            Box::new(move || retention::run(dir, jobs_rx, outlets)),
        )?;
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
    /// After a fatal error the stages get [`FATAL_STOP_GRACE`] to finish
    /// their shutdown; a stage still running then (stuck on a disk, say)
    /// is abandoned and the error returned anyway, so that the process can
    /// exit and a supervisor restart it: a half-alive broker that refuses
    /// connections is worse than a dead one.
    ///
    /// # Errors
    /// [`BrokerError::Thread`] when a pipeline thread panicked or a stage
    /// hit a fatal error.
    pub fn wait(self) -> Result<(), BrokerError> {
        let fatal = |shared: &Shared| shared.fatal.lock().ok().and_then(|f| f.clone());
        let mut failed_at = None;
        while !self.threads.iter().all(|(_, h)| h.is_finished()) {
            if fatal(&self.shared).is_some() {
                let since = *failed_at.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= FATAL_STOP_GRACE {
                    let stuck: Vec<&str> = self
                        .threads
                        .iter()
                        .filter(|(_, h)| !h.is_finished())
                        .map(|(name, _)| *name)
                        .collect();
                    let msg = fatal(&self.shared).unwrap_or_default();
                    return Err(BrokerError::Thread(format!(
                        "{msg} (stopping without the {} thread(s), still running after {:?})",
                        stuck.join(", "),
                        FATAL_STOP_GRACE
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut failure = None;
        for (name, handle) in self.threads {
            if handle.join().is_err() {
                failure.get_or_insert(format!("the {name} thread panicked"));
            }
        }
        match failure.or(fatal(&self.shared)) {
            Some(msg) => Err(BrokerError::Thread(msg)),
            None => Ok(()),
        }
    }
}

/// How long [`Broker::wait`] lets the stages finish after a fatal error.
pub const FATAL_STOP_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::api::{
        CreateTopicRequest, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse,
    };
    use crate::wire::batch::{records, BatchBuilder};
    use crate::wire::frame::{check_frame, ResponseHeader, RESPONSE_HEADER_LEN};
    use crate::wire::{ApiKey, ErrorCode, Qos};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn request(api: ApiKey, corr: u32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        crate::wire::frame::request_frame(api.as_u16(), 1, corr, body)
    }

    /// A produce request at QoS all with a 10 s timeout.
    fn produce_frame(topic: &str, partition: u32, corr: u32, batch: &[u8]) -> Vec<u8> {
        request(ApiKey::Produce, corr, |out| {
            ProduceRequest {
                topic,
                partition,
                qos: Qos::All as u8,
                timeout_ms: 10_000,
                batch,
            }
            .encode(out)
        })
    }

    /// Reads one response frame, keeping extra bytes for the next call.
    fn response(s: &mut TcpStream) -> (ResponseHeader, Vec<u8>) {
        thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut chunk = [0u8; 65536];
            loop {
                if let Ok(Some(total)) = check_frame(&buf, RESPONSE_HEADER_LEN, 1 << 30) {
                    let h = ResponseHeader::parse(&buf);
                    let body = buf[RESPONSE_HEADER_LEN..total].to_vec();
                    buf.drain(..total);
                    return (h, body);
                }
                let n = s.read(&mut chunk).expect("response");
                assert!(n > 0, "connection closed");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
    }

    fn start(dir: &std::path::Path) -> Broker {
        Broker::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            batch_bytes_max: 1 << 19,
            ..Config::default()
        })
        .expect("broker starts")
    }

    #[test]
    fn produce_then_fetch_round_trips_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let broker = start(dir.path());
        let mut s = TcpStream::connect(broker.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&request(ApiKey::CreateTopic, 1, |b| {
            CreateTopicRequest {
                config: Default::default(),
                name: "t",
                partitions: 2,
            }
            .encode(b)
        }))
        .unwrap();
        let (h, _) = response(&mut s);
        assert_eq!((h.correlation_id, h.error_code), (1, 0));
        // Enough batches to roll over several 1 MiB segments.
        let mut b = BatchBuilder::new();
        let value = vec![7u8; 1000];
        for i in 0..3000u32 {
            b.clear();
            b.push(i as i64, &i.to_le_bytes(), &value, &[]);
            let batch = b.finish(0, 0).to_vec();
            s.write_all(&produce_frame("t", 1, 100 + i, &batch))
                .unwrap();
        }
        for i in 0..3000u32 {
            let (h, body) = response(&mut s);
            assert_eq!(h.error_code, 0, "{i}");
            assert_eq!(h.correlation_id, 100 + i);
            assert_eq!(
                ProduceResponse::decode(&body).unwrap().base_offset,
                i as u64
            );
        }
        let fetch = |s: &mut TcpStream, offset: u64| {
            s.write_all(&request(ApiKey::Fetch, 9, |out| {
                FetchRequest {
                    topic: "t",
                    partition: 1,
                    offset,
                    max_bytes: 1 << 20,
                    max_wait_ms: 0,
                    min_bytes: 1,
                }
                .encode(out)
            }))
            .unwrap();
            let (h, body) = response(s);
            assert_eq!(h.error_code, 0);
            let f = FetchResponse::decode(&body).unwrap();
            assert_eq!(f.high_watermark, 3000);
            crate::wire::batch::split_batches(f.batches)
                .flat_map(|b| {
                    records(b)
                        .map(|r| (r.offset, r.key.to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        let got = fetch(&mut s, 1500);
        assert!(!got.is_empty());
        assert_eq!(got[0], (1500, 1500u32.to_le_bytes().to_vec()));
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();

        let broker = start(dir.path());
        let mut s = TcpStream::connect(broker.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let got = fetch(&mut s, 2999);
        assert_eq!(got, vec![(2999, 2999u32.to_le_bytes().to_vec())]);
        s.write_all(&request(ApiKey::Fetch, 9, |out| {
            FetchRequest {
                topic: "t",
                partition: 0,
                offset: 5,
                max_bytes: 100,
                max_wait_ms: 0,
                min_bytes: 1,
            }
            .encode(out)
        }))
        .unwrap();
        let (h, _) = response(&mut s);
        assert_eq!(h.error_code, ErrorCode::OffsetOutOfRange.as_u16());
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();
    }

    #[test]
    fn a_second_broker_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let broker = start(dir.path());
        let err = Broker::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        })
        .err()
        .expect("second broker refused");
        assert!(err.to_string().contains("locked"), "{err}");
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();
    }

    #[test]
    fn a_connection_stalled_on_half_a_frame_is_closed_and_others_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            partial_frame_timeout_ms: 300,
            ..Config::default()
        })
        .unwrap();
        let mut stalled: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut s = TcpStream::connect(broker.local_addr()).unwrap();
                s.write_all(&[40, 0, 0]).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect();
        let mut healthy = TcpStream::connect(broker.local_addr()).unwrap();
        healthy
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        healthy
            .write_all(&request(ApiKey::Ping, 5, |b| b.extend_from_slice(b"hi")))
            .unwrap();
        let (h, body) = response(&mut healthy);
        assert_eq!((h.correlation_id, body.as_slice()), (5, &b"hi"[..]));
        for s in &mut stalled {
            let mut b = [0u8; 16];
            // The broker closes the socket: read returns 0 (EOF).
            assert_eq!(s.read(&mut b).unwrap(), 0);
        }
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();
    }

    #[test]
    fn a_record_above_the_value_limit_is_refused_with_record_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            auto_create_topics: true,
            record_value_bytes_max: 1000,
            ..Config::default()
        })
        .unwrap();
        let mut s = TcpStream::connect(broker.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for (corr, size, expect) in [
            (1, 1000, ErrorCode::None),
            (2, 1001, ErrorCode::RecordTooLarge),
        ] {
            let mut b = BatchBuilder::new();
            b.push(0, b"k", &vec![1u8; size], &[]);
            let batch = b.finish(0, 0).to_vec();
            s.write_all(&produce_frame("limits", 0, corr, &batch))
                .unwrap();
            let (h, _) = response(&mut s);
            assert_eq!((h.correlation_id, h.error_code), (corr, expect.as_u16()));
        }
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();
    }

    #[test]
    fn a_retried_batch_is_stored_once_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = BatchBuilder::new();
        b.push(0, b"k", b"once", &[]);
        // Producer 42's first batch: sequence 0 (docs/protocol.md §9.1).
        let batch = b.finish(42, 0).to_vec();
        let produce = |s: &mut TcpStream, corr: u32| {
            s.write_all(&produce_frame("dedup", 0, corr, &batch))
                .unwrap();
            let (h, body) = response(s);
            assert_eq!((h.correlation_id, h.error_code), (corr, 0));
            ProduceResponse::decode(&body).unwrap().base_offset
        };
        for round in 0..2 {
            let broker = Broker::start(Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir.path().to_path_buf(),
                auto_create_topics: true,
                ..Config::default()
            })
            .unwrap();
            let mut s = TcpStream::connect(broker.local_addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // Round 0 stores it and sees the retry; round 1 (after a
            // restart) must still know it from the journal.
            assert_eq!(produce(&mut s, 1), 0, "round {round}");
            assert_eq!(produce(&mut s, 2), 0, "round {round}");
            let mut other = BatchBuilder::new();
            other.push(0, b"k", b"next", &[]);
            let next = other.finish(42, 1 + round).to_vec();
            s.write_all(&produce_frame("dedup", 0, 3, &next)).unwrap();
            let (h, body) = response(&mut s);
            assert_eq!(h.error_code, 0);
            assert_eq!(
                ProduceResponse::decode(&body).unwrap().base_offset,
                1 + round
            );
            broker.shutdown_handle().shutdown();
            broker.wait().unwrap();
        }
    }
}
