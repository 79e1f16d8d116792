//! The reactor: one mio event loop that owns every socket.
//!
//! It reads until `WouldBlock`, frames requests with their length prefix,
//! makes the cheap checks (size, API key, version), answers Handshake and
//! Ping itself, and pushes every other request whole into the writer's or
//! the reader's ring. Completions come back through two rings; the reactor
//! appends them to the connections' write buffers and writes until
//! `WouldBlock`. It never touches the disk, never takes a lock and never
//! waits on another thread: when a ring or a limit is full it stops reading
//! that connection (backpressure) and resumes when woken.

use super::ring::{MessageConsumer, MessageProducer, FLAG_COUNTED};
use super::shared::{Shared, Stage};
use crate::config::{Config, SMALL_REQUEST_BYTES_MAX};
use crate::wire::api::{
    ApiVersions, ErrorBody, HandshakeRequest, HandshakeResponse, PROTOCOL_VERSION,
};
use crate::wire::frame::{
    check_frame, finish_frame, RequestHeader, ResponseHeader, REQUEST_HEADER_LEN,
};
use crate::wire::{ApiKey, ErrorCode};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token of the listening socket.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker the other stages use.
pub const WAKER: Token = Token(usize::MAX - 2);
/// Read buffer size a connection starts with (and shrinks back to).
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Write buffer capacity above which an emptied buffer is shrunk.
const WRITE_BUFFER_KEEP_BYTES: usize = 1024 * 1024;
/// Fetch-like requests in flight on one connection; their answers can be
/// large, so they are bounded apart from the general in-flight limit.
const READS_IN_FLIGHT_MAX: usize = 4;
/// Answers at least this large are written from the completion ring
/// straight to an idle socket instead of through the write buffer.
const DIRECT_WRITE_BYTES_MIN: usize = 64 * 1024;
/// How long the reactor keeps polling without sleeping after an event.
const REACTOR_SPIN: Duration = Duration::from_micros(50);
/// How often connections are checked for the partial-frame and idle timeouts.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How long a grown read buffer is kept after its last large frame.
const LARGE_BUFFER_KEEP: Duration = Duration::from_secs(1);
/// How long shutdown waits for clients to take their last responses.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);
/// Client bytes read and dropped per half-closed connection and round.
const SHUTDOWN_DISCARD_BYTES_PER_ROUND: usize = 1 << 20;
/// After its FIN, a connection on which the client sent nothing for this
/// long is closed without waiting for the client's own FIN: a client that
/// is not sending cannot make the close a reset.
const SHUTDOWN_QUIET_CLOSE: Duration = Duration::from_millis(100);

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    generation: u32,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    in_flight: usize,
    reads_in_flight: usize,
    paused: bool,
    dirty: bool,
    close_after_write: bool,
    peer_closed: bool,
    /// Shutdown sent our FIN (`shutdown(Write)`): everything queued for
    /// the client was written; what it still sends is read and dropped
    /// until it closes.
    write_closed: bool,
    /// When bytes last arrived.
    last_read: Instant,
    /// When bytes last arrived or left.
    last_activity: Instant,
    /// When the read buffer last held more than `READ_BUFFER_BYTES`: it is
    /// given back only after `LARGE_BUFFER_KEEP` without such a frame, so a
    /// connection that keeps sending large frames (a peer's appends, a bulk
    /// producer) does not allocate, zero and fault in a new buffer for each.
    large_at: Instant,
}

impl Conn {
    fn id(&self, key: usize) -> u64 {
        ((self.generation as u64) << 32) | key as u64
    }

    fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn finished(&self) -> bool {
        let idle = self.in_flight == 0 && self.reads_in_flight == 0 && self.pending_write() == 0;
        (self.close_after_write && self.pending_write() == 0) || (self.peer_closed && idle)
    }
}

/// Where routed requests go.
struct Routes {
    to_writer: MessageProducer,
    /// Consensus messages from peers, to the writer on a ring of their own:
    /// acknowledgements must reach it even while produce requests wait for
    /// room (they are what frees that room).
    to_peers: MessageProducer,
    to_reader: MessageProducer,
    pushed_writer: bool,
    pushed_reader: bool,
}

/// Why frame processing stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Every whole frame was handled; more bytes are needed.
    NeedBytes,
    /// A limit or ring is full: stop reading until woken.
    Blocked,
    /// Framing was lost: answer, then close.
    Close,
}

/// The rings that bring answers to the reactor, one per stage that
/// answers.
pub struct Completions {
    /// Errors and QoS `received` answers, given by the writer itself.
    pub from_writer: MessageConsumer,
    /// Answers that waited for F, R or C.
    pub from_responder: MessageConsumer,
    /// Fetch and other read answers.
    pub from_reader: MessageConsumer,
}

/// The reactor's state.
pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    next_generation: u32,
    shared: Arc<Shared>,
    config: Arc<Config>,
    routes: Routes,
    completions: Completions,
    paused: Vec<usize>,
    dirty: Vec<usize>,
    /// The time of the current loop round (one clock read per round).
    now: Instant,
    next_sweep: Instant,
}

impl Reactor {
    /// A reactor serving `listener`, registered with `poll` (whose waker is
    /// in `shared`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        poll: Poll,
        mut listener: TcpListener,
        shared: Arc<Shared>,
        config: Arc<Config>,
        to_writer: MessageProducer,
        to_peers: MessageProducer,
        to_reader: MessageProducer,
        completions: Completions,
    ) -> std::io::Result<Reactor> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            listener: Some(listener),
            conns: Slab::with_capacity(1024),
            next_generation: 0,
            shared,
            config,
            routes: Routes {
                to_writer,
                to_peers,
                to_reader,
                pushed_writer: false,
                pushed_reader: false,
            },
            completions,
            paused: Vec::new(),
            dirty: Vec::new(),
            now: Instant::now(),
            next_sweep: Instant::now() + SWEEP_INTERVAL,
        })
    }

    /// Runs the event loop until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut grace_until: Option<Instant> = None;
        let mut spin_until = Instant::now();
        loop {
            let timeout = if grace_until.is_some() {
                Duration::from_millis(10)
            } else if self.now < spin_until {
                // Right after traffic, poll without sleeping for a few tens
                // of microseconds: the next request of a ping-pong client
                // usually arrives within that, and catching it awake saves
                // the wake-up of an idle CPU (most of a round trip).
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            if timeout.is_zero() {
                // Spinning keeps this CPU awake for the next event, but on
                // a 2-core machine the writer (and above QoS received the
                // responder) that must run before the answer comes back
                // needs a CPU too: a
                // zero-timeout poll never gives one up, a yield does (the
                // stage it hands to is usually the one this request
                // waits for). One request in flight at QoS received: p50
                // 82-100 µs without the yield, 38-46 µs with it
                // (docs/benchmarks.md, issue 10).
                std::thread::yield_now();
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.shared.fail(format!("reactor poll failed: {e}"));
                }
            }
            self.now = Instant::now();
            if !events.is_empty() {
                spin_until = self.now + REACTOR_SPIN;
            }
            if self.now >= self.next_sweep {
                self.next_sweep = self.now + SWEEP_INTERVAL;
                self.close_stalled();
            }
            let draining = self.shared.shutting_down();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        if event.is_writable() {
                            self.flush(key);
                        }
                        if event.is_readable() || event.is_read_closed() {
                            if !draining {
                                self.read(key);
                            } else if self.conns.get(key).is_some_and(|c| c.write_closed) {
                                self.discard_input(key);
                            }
                        }
                        self.close_if_finished(key);
                    }
                }
            }
            self.drain_completions();
            if !draining {
                self.resume_paused();
            }
            self.flush_dirty();
            if self.routes.pushed_writer {
                self.routes.pushed_writer = false;
                self.shared.wake(Stage::Writer);
            }
            if self.routes.pushed_reader {
                self.routes.pushed_reader = false;
                self.shared.wake(Stage::Reader);
            }
            if draining {
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                    // No request is pushed after this: the stages may finish.
                    self.shared.reactor_drained.store(true, Ordering::Release);
                    self.shared.request_shutdown();
                }
                let stages_done = self.shared.is_done(Stage::Writer)
                    && self.shared.is_done(Stage::Responder)
                    && self.shared.is_done(Stage::Reader);
                let c = &self.completions;
                let drained = c.from_writer.is_empty()
                    && c.from_responder.is_empty()
                    && c.from_reader.is_empty();
                if stages_done && drained {
                    let until =
                        *grace_until.get_or_insert_with(|| Instant::now() + SHUTDOWN_WRITE_GRACE);
                    self.half_close_written();
                    self.close_quiet_half_closed();
                    if self.conns.is_empty() || Instant::now() >= until {
                        return;
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.config.connections_max {
                        let mut frame = Vec::new();
                        error_frame(
                            &mut frame,
                            0,
                            0,
                            ErrorCode::TooManyConnections,
                            ErrorCode::TooManyConnections.message(),
                        );
                        // Best effort: a fresh socket's buffer takes a small frame.
                        let _ = stream.write(&frame);
                        crate::log!("refused connection from {peer}: connection limit reached");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        crate::log!("cannot register connection from {peer}: {e}");
                        continue;
                    }
                    entry.insert(Conn {
                        stream,
                        peer,
                        generation: self.next_generation,
                        rbuf: vec![0; READ_BUFFER_BYTES],
                        rstart: 0,
                        rend: 0,
                        wbuf: Vec::new(),
                        wpos: 0,
                        in_flight: 0,
                        reads_in_flight: 0,
                        paused: false,
                        dirty: false,
                        close_after_write: false,
                        peer_closed: false,
                        write_closed: false,
                        last_read: self.now,
                        last_activity: self.now,
                        large_at: self.now,
                    });
                    // Data may already be waiting (edge-triggered).
                    self.read(key);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically EMFILE: keep serving the connections we have.
                    crate::log!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads and routes until `WouldBlock`, a full limit, or an error.
    fn read(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.paused || conn.close_after_write {
            return;
        }
        loop {
            match process_frames(conn, key, &mut self.routes, &self.config, &self.shared) {
                Stop::NeedBytes => {}
                Stop::Blocked => {
                    conn.paused = true;
                    self.paused.push(key);
                    break;
                }
                Stop::Close => {
                    conn.close_after_write = true;
                    break;
                }
            }
            if conn.peer_closed {
                break;
            }
            make_room(conn, self.config.frame_bytes_max, self.now);
            match conn.stream.read(&mut conn.rbuf[conn.rend..]) {
                Ok(0) => {
                    conn.peer_closed = true;
                    break;
                }
                Ok(n) => {
                    conn.rend += n;
                    conn.last_read = self.now;
                    conn.last_activity = self.now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // Reset by peer and the like: nothing more to send.
                    conn.peer_closed = true;
                    conn.close_after_write = true;
                    conn.wpos = conn.wbuf.len();
                    break;
                }
            }
        }
        if conn.pending_write() > 0 && !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn resume_paused(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let paused = std::mem::take(&mut self.paused);
        for key in paused {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.paused {
                    conn.paused = false;
                    self.read(key);
                    self.close_if_finished(key);
                }
            }
        }
    }

    fn drain_completions(&mut self) {
        for stage in [Stage::Writer, Stage::Responder, Stage::Reader] {
            let from_reader = stage == Stage::Reader;
            let ring = match stage {
                Stage::Writer => &mut self.completions.from_writer,
                Stage::Responder => &mut self.completions.from_responder,
                _ => &mut self.completions.from_reader,
            };
            while let Some(m) = ring.peek_split() {
                let key = (m.conn & 0xffff_ffff) as usize;
                let generation = (m.conn >> 32) as u32;
                if let Some(conn) = self.conns.get_mut(key) {
                    if conn.generation == generation {
                        if conn.wpos == conn.wbuf.len() {
                            conn.wbuf.clear();
                            conn.wpos = 0;
                        }
                        // A large answer (a fetch) with nothing queued
                        // before it goes from the ring to the socket, not
                        // through the write buffer: one copy of up to
                        // `fetch_bytes_max` less on the one thread that
                        // serves every socket. Small ones are gathered and
                        // written once per round.
                        // A frame that wraps around the ring's end comes in
                        // two parts, written with one `writev`.
                        let mut rest = m.parts;
                        if conn.wbuf.is_empty() && m.len() >= DIRECT_WRITE_BYTES_MIN {
                            rest = write_parts(conn, rest, self.now);
                        }
                        conn.wbuf.extend_from_slice(rest[0]);
                        conn.wbuf.extend_from_slice(rest[1]);
                        if m.flags & FLAG_COUNTED != 0 {
                            conn.in_flight = conn.in_flight.saturating_sub(1);
                        }
                        if from_reader {
                            conn.reads_in_flight = conn.reads_in_flight.saturating_sub(1);
                        }
                        if !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(key);
                        }
                    }
                }
                ring.pop();
            }
        }
        if self
            .shared
            .completion_ring_full
            .swap(false, Ordering::AcqRel)
        {
            self.shared.wake(Stage::Writer);
            self.shared.wake(Stage::Responder);
            self.shared.wake(Stage::Reader);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
            }
            self.flush(key);
            self.close_if_finished(key);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Writes queued responses until `WouldBlock`.
    fn flush(&mut self, key: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (wpos, len) = (conn.wpos, conn.wbuf.len());
        if wpos < len {
            let wbuf = std::mem::take(&mut conn.wbuf);
            let left = write_some(conn, &wbuf[wpos..], now).len();
            conn.wbuf = wbuf;
            conn.wpos = len - left;
        }
        self.finish_flush(key);
    }

    /// Resets an emptied write buffer (shrinking a grown one).
    fn finish_flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.wpos == conn.wbuf.len() {
            conn.wbuf.clear();
            conn.wpos = 0;
            if conn.wbuf.capacity() > WRITE_BUFFER_KEEP_BYTES {
                conn.wbuf.shrink_to(READ_BUFFER_BYTES);
            }
        }
    }

    /// At the end of a shutdown: sends a FIN on every connection whose
    /// answers are all written, then reads and drops what the client still
    /// sends until it closes. Closing a socket that holds unread input
    /// would send a reset instead, which destroys the answers still in the
    /// kernel's buffers on both sides.
    fn half_close_written(&mut self) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.write_closed && c.pending_write() == 0)
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.write_closed = true;
                conn.last_read = self.now;
                if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                    // Not connected any more: nothing to wait for.
                    conn.peer_closed = true;
                }
            }
            // Input may be waiting already (edge-triggered: no new event).
            self.discard_input(key);
        }
    }

    /// Reads what the clients of half-closed connections sent, and closes
    /// those that sent nothing for [`SHUTDOWN_QUIET_CLOSE`].
    fn close_quiet_half_closed(&mut self) {
        let half_closed: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.write_closed)
            .map(|(key, _)| key)
            .collect();
        for key in half_closed {
            self.discard_input(key);
        }
        let now = Instant::now();
        let quiet: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.write_closed && now.saturating_duration_since(c.last_read) >= SHUTDOWN_QUIET_CLOSE
            })
            .map(|(key, _)| key)
            .collect();
        for key in quiet {
            // The reads above found nothing for a while (else `last_read`
            // would be recent), so the close finds no unread input.
            if let Some(mut conn) = self.conns.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// Reads and drops input on a half-closed connection until
    /// `WouldBlock`; closes the connection at the client's EOF.
    fn discard_input(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut sink = [0u8; 16 * 1024];
        // Bounded, so that a client that keeps sending cannot hold the
        // loop (and the grace deadline) here; the rest is read on the next
        // round (`close_quiet_half_closed` comes back to every half-closed
        // connection, as readiness is edge-triggered).
        let mut budget = SHUTDOWN_DISCARD_BYTES_PER_ROUND;
        while !conn.peer_closed && budget > 0 {
            match conn.stream.read(&mut sink) {
                Ok(0) => conn.peer_closed = true,
                Ok(n) => {
                    conn.last_read = self.now;
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => conn.peer_closed = true,
            }
        }
        if conn.peer_closed {
            let mut conn = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Closes connections that sat on half a frame, or on nothing at all,
    /// for longer than their timeouts: a stalled or idle client must not
    /// hold a slot (and its buffers) for ever.
    fn close_stalled(&mut self) {
        let partial = Duration::from_millis(self.config.partial_frame_timeout_ms);
        let idle = Duration::from_millis(self.config.idle_connection_timeout_ms);
        let now = self.now;
        for (_, c) in self.conns.iter_mut() {
            let grown = c.rbuf.len() > READ_BUFFER_BYTES;
            if grown
                && c.rstart == c.rend
                && now.saturating_duration_since(c.large_at) >= LARGE_BUFFER_KEEP
            {
                c.rstart = 0;
                c.rend = 0;
                c.rbuf.truncate(READ_BUFFER_BYTES);
                c.rbuf.shrink_to_fit();
            }
        }
        let stalled: Vec<(usize, &'static str)> = self
            .conns
            .iter()
            .filter_map(|(key, c)| {
                let holds_partial = c.rstart < c.rend && !c.paused;
                let quiet = c.in_flight == 0
                    && c.reads_in_flight == 0
                    && c.pending_write() == 0
                    && c.rstart == c.rend;
                if holds_partial && now.saturating_duration_since(c.last_read) >= partial {
                    Some((
                        key,
                        "half a frame received, then nothing within partial_frame_timeout_ms",
                    ))
                } else if quiet && now.saturating_duration_since(c.last_activity) >= idle {
                    Some((key, "idle for idle_connection_timeout_ms"))
                } else {
                    None
                }
            })
            .collect();
        for (key, why) in stalled {
            let mut conn = self.conns.remove(key);
            crate::log!("closing connection from {}: {why}", conn.peer);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn close_if_finished(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if !conn.finished() {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
    }
}

/// Moves a partial frame to the front of the read buffer and grows the
/// buffer when the frame being read is larger than it.
fn make_room(conn: &mut Conn, frame_bytes_max: usize, now: Instant) {
    if conn.rstart == conn.rend {
        conn.rstart = 0;
        conn.rend = 0;
    }
    if conn.rend > READ_BUFFER_BYTES {
        conn.large_at = now;
    }
    if conn.rend < conn.rbuf.len() {
        return;
    }
    if conn.rstart > 0 {
        conn.rbuf.copy_within(conn.rstart..conn.rend, 0);
        conn.rend -= conn.rstart;
        conn.rstart = 0;
    }
    if conn.rend == conn.rbuf.len() {
        // The buffered frame is bigger than the buffer; its size was
        // checked against frame_bytes_max before we get here.
        let want = (conn.rbuf.len() * 2).min(frame_bytes_max.max(READ_BUFFER_BYTES));
        conn.rbuf.resize(want.max(conn.rbuf.len() + 1), 0);
        conn.large_at = now;
    }
}

/// Handles every whole frame buffered on `conn`.
fn process_frames(
    conn: &mut Conn,
    key: usize,
    routes: &mut Routes,
    config: &Config,
    shared: &Shared,
) -> Stop {
    let id = conn.id(key);
    loop {
        let buf = &conn.rbuf[conn.rstart..conn.rend];
        let total = match check_frame(buf, REQUEST_HEADER_LEN, config.frame_bytes_max) {
            Ok(Some(total)) => total,
            Ok(None) => return Stop::NeedBytes,
            Err(e) => {
                let corr = if buf.len() >= 12 {
                    u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]])
                } else {
                    0
                };
                let api = if buf.len() >= 12 {
                    u16::from_le_bytes([buf[4], buf[5]])
                } else {
                    0
                };
                crate::log!("closing connection from {}: {:?}", conn.peer, e);
                let msg = match e {
                    crate::wire::frame::FrameError::TooLarge { .. } => {
                        ErrorCode::FrameTooLarge.message()
                    }
                    crate::wire::frame::FrameError::TooShort { .. } => {
                        "frame shorter than a request header"
                    }
                };
                error_frame(&mut conn.wbuf, corr, api, e.code(), msg);
                conn.rstart = conn.rend;
                return Stop::Close;
            }
        };
        if conn.in_flight >= config.in_flight_per_connection_max
            || conn.pending_write() >= config.connection_write_bytes_max
        {
            return Stop::Blocked;
        }
        let frame = &conn.rbuf[conn.rstart..conn.rstart + total];
        let h = RequestHeader::parse(frame);
        match ApiKey::from_u16(h.api_key) {
            None => error_frame(
                &mut conn.wbuf,
                h.correlation_id,
                h.api_key,
                ErrorCode::UnsupportedApi,
                ErrorCode::UnsupportedApi.message(),
            ),
            Some(api) if !(api.versions().0..=api.versions().1).contains(&h.api_version) => {
                error_frame(
                    &mut conn.wbuf,
                    h.correlation_id,
                    h.api_key,
                    ErrorCode::UnsupportedVersion,
                    ErrorCode::UnsupportedVersion.message(),
                )
            }
            Some(ApiKey::Replicate) if !shared.cluster.is_clustered() => error_frame(
                &mut conn.wbuf,
                h.correlation_id,
                h.api_key,
                ErrorCode::InvalidRequest,
                "this broker is not a member of a replication group",
            ),
            Some(api)
                if api != ApiKey::Produce
                    && api != ApiKey::Replicate
                    && total > SMALL_REQUEST_BYTES_MAX =>
            {
                error_frame(
                    &mut conn.wbuf,
                    h.correlation_id,
                    h.api_key,
                    ErrorCode::FrameTooLarge,
                    "requests other than Produce are limited to 64 KiB",
                )
            }
            Some(ApiKey::Handshake) => {
                handshake(&mut conn.wbuf, &h, &frame[REQUEST_HEADER_LEN..], config)
            }
            Some(ApiKey::Ping) => {
                let body = &frame[REQUEST_HEADER_LEN..];
                let head = ResponseHeader {
                    correlation_id: h.correlation_id,
                    api_key: h.api_key,
                    error_code: 0,
                };
                conn.wbuf.extend_from_slice(&head.to_bytes(body.len()));
                conn.wbuf.extend_from_slice(body);
            }
            Some(ApiKey::Replicate) => {
                // Never answered, so not counted in flight.
                if !routes.to_peers.push(id, 0, &[frame]) {
                    shared.request_ring_full.store(true, Ordering::Release);
                    routes.pushed_writer = true;
                    return Stop::Blocked;
                }
                routes.pushed_writer = true;
            }
            Some(
                ApiKey::Produce | ApiKey::CreateTopic | ApiKey::DeleteRecords | ApiKey::AlterTopic,
            ) => {
                // Produce at QoS none is never answered on success.
                let counted =
                    !(h.api_key == ApiKey::Produce.as_u16() && produce_qos(frame) == Some(0));
                let flags = if counted { FLAG_COUNTED } else { 0 };
                if !routes.to_writer.push(id, flags, &[frame]) {
                    shared.request_ring_full.store(true, Ordering::Release);
                    routes.pushed_writer = true;
                    return Stop::Blocked;
                }
                routes.pushed_writer = true;
                conn.in_flight += counted as usize;
            }
            Some(
                ApiKey::Fetch | ApiKey::Metadata | ApiKey::ListOffsets | ApiKey::ClusterStatus,
            ) => {
                if conn.reads_in_flight >= READS_IN_FLIGHT_MAX {
                    return Stop::Blocked;
                }
                if !routes.to_reader.push(id, FLAG_COUNTED, &[frame]) {
                    shared.read_ring_full.store(true, Ordering::Release);
                    routes.pushed_reader = true;
                    return Stop::Blocked;
                }
                routes.pushed_reader = true;
                conn.in_flight += 1;
                conn.reads_in_flight += 1;
            }
        }
        conn.rstart += total;
    }
}

/// The QoS byte of a produce frame, if the frame is long enough to hold it.
fn produce_qos(frame: &[u8]) -> Option<u8> {
    let at = REQUEST_HEADER_LEN;
    let topic_len = u16::from_le_bytes([*frame.get(at)?, *frame.get(at + 1)?]) as usize;
    frame.get(at + 2 + topic_len + 4).copied()
}

fn handshake(out: &mut Vec<u8>, h: &RequestHeader, body: &[u8], config: &Config) {
    let req = match HandshakeRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            return error_frame(
                out,
                h.correlation_id,
                h.api_key,
                ErrorCode::MalformedRequest,
                &e.to_string(),
            );
        }
    };
    if !(req.min_version..=req.max_version).contains(&PROTOCOL_VERSION) {
        return error_frame(
            out,
            h.correlation_id,
            h.api_key,
            ErrorCode::UnsupportedVersion,
            "this broker speaks protocol version 1 only",
        );
    }
    let start = out.len();
    ResponseHeader {
        correlation_id: h.correlation_id,
        api_key: h.api_key,
        error_code: 0,
    }
    .write(out);
    HandshakeResponse {
        version: PROTOCOL_VERSION,
        frame_bytes_max: config.frame_bytes_max as u32,
        server: concat!("hutong ", env!("CARGO_PKG_VERSION")).to_string(),
        apis: ApiVersions::spoken(),
    }
    .encode(out);
    finish_frame(out, start);
}

/// Appends an error response frame to `out`.
pub fn error_frame(
    out: &mut Vec<u8>,
    correlation_id: u32,
    api_key: u16,
    code: ErrorCode,
    message: &str,
) {
    let start = out.len();
    ResponseHeader {
        correlation_id,
        api_key,
        error_code: code.as_u16(),
    }
    .write(out);
    ErrorBody { message }.encode(out);
    finish_frame(out, start);
}

/// [`write_some`] of a frame in two parts, with `writev` while the first
/// part is not fully written; returns what is left of each part.
fn write_parts<'a>(conn: &mut Conn, parts: [&'a [u8]; 2], now: Instant) -> [&'a [u8]; 2] {
    let [mut first, second] = parts;
    while !first.is_empty() && !second.is_empty() {
        let iov = [IoSlice::new(first), IoSlice::new(second)];
        match conn.stream.write_vectored(&iov) {
            Ok(0) => return [first, second],
            Ok(n) if n < first.len() => first = &first[n..],
            Ok(n) => {
                let second = &second[n - first.len()..];
                conn.last_activity = now;
                return [&[], write_some(conn, second, now)];
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return [first, second],
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.peer_closed = true;
                conn.close_after_write = true;
                return [&[], &[]];
            }
        }
        conn.last_activity = now;
    }
    if first.is_empty() {
        [&[], write_some(conn, second, now)]
    } else {
        [write_some(conn, first, now), &[]]
    }
}

/// Writes as much of `bytes` to `conn`'s socket as it takes now; returns
/// what is left. A write error marks the peer gone (the connection closes
/// once nothing is left to write) and drops the rest.
fn write_some<'a>(conn: &mut Conn, mut bytes: &'a [u8], now: Instant) -> &'a [u8] {
    while !bytes.is_empty() {
        match conn.stream.write(bytes) {
            Ok(0) => break,
            Ok(n) => {
                bytes = &bytes[n..];
                conn.last_activity = now;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                conn.peer_closed = true;
                conn.close_after_write = true;
                return &[];
            }
        }
    }
    bytes
}
