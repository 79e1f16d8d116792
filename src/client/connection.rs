//! One TCP connection to a broker, full duplex.
//!
//! The writing side is a mutex around the socket and one reusable frame
//! buffer: a caller encodes its whole request frame into the buffer and
//! writes it with one `write_all` (or several frames with one `write_all`
//! through a [`Pipeline`]). The reading side is a background thread that
//! reads response frames in large chunks and hands each to the waiter
//! registered under its correlation id, so many requests are in flight at
//! once and answers may come back in any order.
//!
//! Waiters live in a fixed table of slots indexed by correlation id modulo
//! the table size (a power of two). A slot holds its response body in a
//! buffer it keeps between requests, so a steady stream of small requests
//! allocates nothing. A request is answered in one of three ways:
//! - a [`Ticket`], which the caller waits on;
//! - a [`Completion`] hook, called on the reader thread (used by the
//!   producer, whose receipts may outlive many responses);
//! - nothing ([`Connection::send_no_reply`]): an error response that arrives
//!   for it is counted in [`Connection::unsolicited_errors`].
//!
//! When the connection dies, every waiter fails with [`ClientError::Closed`]
//! (or the IO error that killed it) and later sends fail at once.
//!
//! A connection whose broker falls silent is noticed and closed, so that no
//! waiter blocks for ever on a broker that lost power, was frozen or lost
//! its network ([`Liveness`]): TCP keepalive probes an idle connection; the
//! reader wakes up every few hundred milliseconds, and when requests are
//! outstanding but nothing was heard for a while it sends a Ping (which the
//! broker's reactor answers at once, whatever its disk is doing), and
//! closes the connection with a `TimedOut` IO error when still nothing
//! comes; a write that makes no progress for as long fails the same way.

use super::error::ClientError;
use crate::wire::api::{ApiVersions, HandshakeRequest, HandshakeResponse, PROTOCOL_VERSION};
use crate::wire::codec::{le_u32, set_u32};
use crate::wire::frame::{
    check_frame, finish_frame, FrameError, RequestHeader, ResponseHeader, LENGTH_PREFIX_LEN,
    RESPONSE_HEADER_LEN,
};
use crate::wire::ApiKey;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default number of requests one connection keeps in flight (slots in the
/// waiter table). Above the broker's default per-connection limit, so the
/// broker's backpressure, not this table, paces a fast sender.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 8192;
/// Largest waiter table a connection accepts.
pub const IN_FLIGHT_MAX_LIMIT: usize = 1 << 20;
/// Largest response frame the reader accepts; a longer length prefix means
/// framing is lost and the connection is closed.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long [`Connection::connect`] waits for the handshake answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client name sent in the handshake by default.
pub const CLIENT_ID_DEFAULT: &str = "hutong-rust";

/// Request frame limit before the handshake told us the broker's.
const PRE_HANDSHAKE_FRAME_BYTES_MAX: usize = 64 * 1024;
/// Initial (and resting) size of the reader's buffer.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// The reader compacts its buffer when less than this is free at the end.
const READ_SPACE_MIN: usize = 16 * 1024;
/// A [`Pipeline`] writes its buffered frames once they reach this size.
const PIPELINE_FLUSH_BYTES: usize = 64 * 1024;
/// Buffers above this capacity are released after use instead of kept.
const BUFFER_KEEP_BYTES: usize = 4 * 1024 * 1024;
/// A slot's response buffer above this capacity is released after use.
const SLOT_BODY_KEEP_BYTES: usize = 64 * 1024;
/// How often a sender that found every slot taken looks again.
const SLOT_RETRY: Duration = Duration::from_millis(10);

/// Default [`Liveness::ping_after_ms`].
pub const LIVENESS_PING_AFTER_MS_DEFAULT: u64 = 2_000;
/// Default [`Liveness::dead_after_ms`].
pub const LIVENESS_DEAD_AFTER_MS_DEFAULT: u64 = 10_000;
/// How often the reader looks at the silence, at most (it looks at least
/// four times per [`Liveness::ping_after_ms`]).
const LIVENESS_TICK_MAX: Duration = Duration::from_millis(250);
/// The reader's shortest wake-up interval.
const LIVENESS_TICK_MIN: Duration = Duration::from_millis(5);
/// TCP keepalive: an idle connection is probed after this many seconds...
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const KEEPALIVE_IDLE_S: u32 = 10;
/// ...every this many seconds...
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const KEEPALIVE_INTERVAL_S: u32 = 2;
/// ...and dropped by the kernel after this many unanswered probes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const KEEPALIVE_PROBES: u32 = 3;

const _: () = assert!(IN_FLIGHT_MAX_DEFAULT.is_power_of_two());
const _: () = assert!(LIVENESS_PING_AFTER_MS_DEFAULT < LIVENESS_DEAD_AFTER_MS_DEFAULT);
const _: () = assert!(LIVENESS_TICK_MIN.as_millis() < LIVENESS_TICK_MAX.as_millis());
const _: () = assert!(IN_FLIGHT_MAX_LIMIT.is_power_of_two());
const _: () = assert!(READ_SPACE_MIN < READ_BUFFER_BYTES);

/// How a connection tells a silent broker from a slow one.
///
/// "Silent" means: requests are waiting for their answers and not one byte
/// came from the broker. A broker that is only slow to reach a QoS
/// position still answers a Ping at once (its reactor never waits for the
/// disk), so a Ping after `ping_after_ms` of silence tells the two apart;
/// at `dead_after_ms` of silence the connection is closed and every
/// waiter fails with an IO error of kind `TimedOut`. A write that cannot
/// make progress for `dead_after_ms` (the broker stopped reading) fails
/// the same way. An idle connection (nothing outstanding) is left to TCP
/// keepalive, which drops it about 16 s after its peer host vanished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Silence with requests outstanding after which a Ping is sent.
    pub ping_after_ms: u64,
    /// Silence with requests outstanding after which the connection is
    /// closed; raised to at least twice `ping_after_ms`.
    pub dead_after_ms: u64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ping_after_ms: LIVENESS_PING_AFTER_MS_DEFAULT,
            dead_after_ms: LIVENESS_DEAD_AFTER_MS_DEFAULT,
        }
    }
}

impl Liveness {
    /// The values in force: at least 1 ms, and a dead line at least twice
    /// the ping's, so the Ping has time to come back.
    fn effective(self) -> (Duration, Duration) {
        let ping = self.ping_after_ms.max(1);
        let dead = self.dead_after_ms.max(ping.saturating_mul(2));
        (Duration::from_millis(ping), Duration::from_millis(dead))
    }

    /// How often the reader looks at the silence.
    fn tick(self) -> Duration {
        (self.effective().0 / 4).clamp(LIVENESS_TICK_MIN, LIVENESS_TICK_MAX)
    }
}

/// Options of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Requests in flight at once (rounded up to a power of two, at most
    /// [`IN_FLIGHT_MAX_LIMIT`]). A ticket holds its slot until it is waited
    /// or dropped, so this also bounds tickets not yet waited.
    pub in_flight_max: usize,
    /// Name sent in the handshake, for the broker's logs.
    pub client_id: String,
    /// When a silent broker is given up.
    pub liveness: Liveness,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            client_id: CLIENT_ID_DEFAULT.to_string(),
            liveness: Liveness::default(),
        }
    }
}

/// A response: its header and its body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response header.
    pub header: ResponseHeader,
    /// The body: the API's response body, or an error body when
    /// `header.error_code` is not zero.
    pub body: Vec<u8>,
}

impl Response {
    /// Turns an error response into [`ClientError::Broker`].
    ///
    /// # Errors
    /// [`ClientError::Broker`] (or [`ClientError::Protocol`] for an error
    /// code this client does not know) when `header.error_code` is not zero.
    pub fn into_result(self) -> Result<Response, ClientError> {
        check_error(&self.header, &self.body)?;
        Ok(self)
    }
}

/// A response borrowed from the reader's buffer, as given to a [`Completion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseRef<'a> {
    /// The response header.
    pub header: ResponseHeader,
    /// The body bytes.
    pub body: &'a [u8],
}

impl<'a> ResponseRef<'a> {
    /// Turns an error response into [`ClientError::Broker`].
    ///
    /// # Errors
    /// As [`Response::into_result`].
    pub fn into_result(self) -> Result<ResponseRef<'a>, ClientError> {
        check_error(&self.header, self.body)?;
        Ok(self)
    }
}

fn check_error(header: &ResponseHeader, body: &[u8]) -> Result<(), ClientError> {
    match header.error_code {
        0 => Ok(()),
        code => Err(ClientError::from_response(code, body)),
    }
}

/// Receives the outcome of a request sent with
/// [`Connection::send_with_completion`].
pub trait Completion: Send + Sync {
    /// Called exactly once per request, on the connection's reader thread
    /// (or on the thread that drops the connection), with the `tag` given at
    /// send time. It must be quick and must not block or send on the same
    /// connection: the reader reads nothing else while it runs.
    fn complete(&self, tag: u64, response: Result<ResponseRef<'_>, ClientError>);
}

/// Locks a mutex, ignoring poisoning: every critical section in this module
/// leaves its state consistent before anything that could panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turns on TCP keepalive, so that the kernel drops a connection whose peer
/// host vanished (power loss, a cut cable) while nothing was outstanding.
fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: u32| {
        let value = value as libc::c_int;
        // SAFETY: `fd` is an open socket owned by `stream` for the whole
        // call, and the option value is a live `c_int` of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    #[cfg(target_os = "linux")]
    {
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    }
    Ok(())
}

/// Who waits for a request's answer.
enum Waiter {
    /// A [`Ticket`] will take the response from the slot.
    Ticket,
    /// The ticket was dropped; the response is discarded.
    Abandoned,
    /// The hook takes the response on the reader thread.
    Completion { hook: Arc<dyn Completion>, tag: u64 },
}

enum Phase {
    Free,
    Waiting(Waiter),
    /// The response is in the slot for its ticket.
    Ready,
    /// The request failed; the error is for its ticket.
    Failed(ClientError),
}

struct SlotState {
    id: u32,
    api_key: u16,
    phase: Phase,
    header: ResponseHeader,
    body: Vec<u8>,
    /// Someone waits on the condvar; wake-ups are skipped otherwise, since
    /// a futex wake is a syscall even with no sleeper.
    sleepers: bool,
}

struct Slot {
    state: Mutex<SlotState>,
    cond: Condvar,
}

impl Slot {
    fn wake(&self, s: &mut SlotState) {
        if s.sleepers {
            s.sleepers = false;
            self.cond.notify_all();
        }
    }
}

/// Why the connection closed.
enum CloseReason {
    /// The broker closed it, or we shut it down.
    Eof,
    Io(std::io::ErrorKind, String),
    Protocol(String),
}

impl CloseReason {
    fn to_error(&self) -> ClientError {
        match self {
            CloseReason::Eof => ClientError::Closed,
            CloseReason::Io(kind, msg) => ClientError::Io(std::io::Error::new(*kind, msg.clone())),
            CloseReason::Protocol(msg) => ClientError::Protocol(msg.clone()),
        }
    }
}

/// State shared by the writing side, the reader thread and the tickets.
struct Shared {
    slots: Box<[Slot]>,
    mask: u32,
    /// The writing side. The reader thread takes it too, with `try_lock`,
    /// to send its liveness Ping.
    writer: Mutex<WriteState>,
    /// Requests on the wire without their answer yet (slots in
    /// `Phase::Waiting`), for the reader's silence check.
    waiting: AtomicUsize,
    closed: AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
    unsolicited_errors: AtomicU64,
    /// The first unsolicited error since the last `take_unsolicited_error`.
    first_unsolicited: Mutex<Option<ClientError>>,
}

impl Shared {
    fn new(slots: usize, writer: WriteState) -> Shared {
        debug_assert!(slots.is_power_of_two());
        Shared {
            writer: Mutex::new(writer),
            waiting: AtomicUsize::new(0),
            slots: (0..slots)
                .map(|_| Slot {
                    state: Mutex::new(SlotState {
                        id: 0,
                        api_key: 0,
                        phase: Phase::Free,
                        header: ResponseHeader {
                            correlation_id: 0,
                            api_key: 0,
                            error_code: 0,
                        },
                        body: Vec::new(),
                        sleepers: false,
                    }),
                    cond: Condvar::new(),
                })
                .collect(),
            mask: (slots - 1) as u32,
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            unsolicited_errors: AtomicU64::new(0),
            first_unsolicited: Mutex::new(None),
        }
    }

    fn slot(&self, id: u32) -> &Slot {
        &self.slots[(id & self.mask) as usize]
    }

    fn close_error(&self) -> ClientError {
        lock(&self.close_reason)
            .as_ref()
            .map_or(ClientError::Closed, CloseReason::to_error)
    }

    /// Hands one whole response frame to its waiter.
    fn deliver(&self, frame: &[u8]) {
        let header = ResponseHeader::parse(frame);
        let body = &frame[RESPONSE_HEADER_LEN..];
        let slot = self.slot(header.correlation_id);
        let mut s = lock(&slot.state);
        let waiter = match std::mem::replace(&mut s.phase, Phase::Free) {
            Phase::Waiting(w) if s.id == header.correlation_id => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                w
            }
            other => {
                s.phase = other;
                drop(s);
                self.unsolicited(&header, body);
                return;
            }
        };
        let mismatch = (header.api_key != s.api_key).then(|| {
            ClientError::Protocol(format!(
                "response {} carries API key {} for a request of API key {}",
                header.correlation_id, header.api_key, s.api_key
            ))
        });
        match waiter {
            Waiter::Ticket => {
                match mismatch {
                    Some(e) => s.phase = Phase::Failed(e),
                    None => {
                        s.header = header;
                        s.body.clear();
                        s.body.extend_from_slice(body);
                        s.phase = Phase::Ready;
                    }
                }
                slot.wake(&mut s);
            }
            Waiter::Abandoned => slot.wake(&mut s),
            Waiter::Completion { hook, tag } => {
                slot.wake(&mut s);
                drop(s);
                let response = match mismatch {
                    Some(e) => Err(e),
                    None => Ok(ResponseRef { header, body }),
                };
                hook.complete(tag, response);
            }
        }
    }

    /// A response no one waits for: the answer to a no-reply request (only
    /// errors are sent for those) or to a request whose waiter is gone.
    fn unsolicited(&self, header: &ResponseHeader, body: &[u8]) {
        if header.error_code != 0 {
            lock(&self.first_unsolicited)
                .get_or_insert_with(|| ClientError::from_response(header.error_code, body));
            self.unsolicited_errors.fetch_add(1, Ordering::Release);
        }
    }

    /// Marks the connection closed and fails every waiter. A sender checks
    /// `closed` while holding the slot lock it registers under, so either
    /// it sees the flag or this sweep sees its registration.
    fn close(&self, reason: CloseReason) {
        {
            let mut r = lock(&self.close_reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.closed.store(true, Ordering::SeqCst);
        for slot in self.slots.iter() {
            let mut s = lock(&slot.state);
            if !matches!(s.phase, Phase::Waiting(_)) {
                continue;
            }
            let Phase::Waiting(waiter) = std::mem::replace(&mut s.phase, Phase::Free) else {
                unreachable!("checked above");
            };
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            match waiter {
                Waiter::Ticket => {
                    s.phase = Phase::Failed(self.close_error());
                    slot.wake(&mut s);
                }
                Waiter::Abandoned => slot.wake(&mut s),
                Waiter::Completion { hook, tag } => {
                    slot.wake(&mut s);
                    drop(s);
                    hook.complete(tag, Err(self.close_error()));
                }
            }
        }
    }

    /// Takes back a completion request whose frame could not be written.
    /// Returns false when its hook was already called.
    fn reclaim(&self, id: u32) -> bool {
        let slot = self.slot(id);
        let mut s = lock(&slot.state);
        if s.id == id && matches!(s.phase, Phase::Waiting(Waiter::Completion { .. })) {
            s.phase = Phase::Free;
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            slot.wake(&mut s);
            true
        } else {
            false
        }
    }

    /// True when at least one slot's request is still on the wire.
    fn any_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Sends a Ping whose answer nobody waits for (any byte from the broker
    /// proves it alive), unless a sender holds the writing side: then it is
    /// writing, and a write that makes no progress fails on its own. True
    /// when the Ping was written.
    fn ping(&self) -> bool {
        let Ok(mut w) = self.writer.try_lock() else {
            return false;
        };
        let queued = w.enqueue(self, ApiKey::Ping, |_| {}, None, usize::MAX);
        queued.is_ok() && w.write_all_buffered(self).is_ok()
    }
}

/// The reader thread: reads response frames and delivers them until the
/// socket closes, framing is lost or the broker falls silent, then fails
/// every remaining waiter.
fn read_loop(mut stream: TcpStream, shared: &Shared, liveness: Liveness) {
    let reason = read_frames(&mut stream, shared, liveness);
    // Closed first, so that a write the shutdown interrupts reports why.
    shared.close(reason);
    let _ = stream.shutdown(Shutdown::Both);
}

/// The reader's view of the broker's silence ([`Liveness`]).
struct Silence {
    /// Since when nothing was heard while requests were outstanding.
    since: Instant,
    /// A Ping went out during this silence.
    pinged: bool,
    ping_after: Duration,
    dead_after: Duration,
}

impl Silence {
    fn new(liveness: Liveness) -> Silence {
        let (ping_after, dead_after) = liveness.effective();
        Silence {
            since: Instant::now(),
            pinged: false,
            ping_after,
            dead_after,
        }
    }

    /// Bytes came in.
    fn heard(&mut self) {
        self.since = Instant::now();
        self.pinged = false;
    }

    /// The read timed out: pings when the silence is long enough, and says
    /// why the connection must close when it is too long.
    fn check(&mut self, shared: &Shared) -> Option<CloseReason> {
        if !shared.any_waiting() {
            // Silence without a question is not a symptom.
            self.heard();
            return None;
        }
        let quiet = self.since.elapsed();
        if quiet >= self.dead_after {
            return Some(CloseReason::Io(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the broker sent nothing for {} ms while {} requests awaited their answer",
                    quiet.as_millis(),
                    shared.waiting.load(Ordering::Acquire)
                ),
            ));
        }
        if quiet >= self.ping_after && !self.pinged {
            self.pinged = shared.ping();
        }
        None
    }
}

fn read_frames(stream: &mut TcpStream, shared: &Shared, liveness: Liveness) -> CloseReason {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut silence = Silence::new(liveness);
    loop {
        // Deliver every whole frame buffered; learn how long the next is.
        let need = loop {
            let pending = &buf[start..end];
            match check_frame(pending, RESPONSE_HEADER_LEN, RESPONSE_FRAME_BYTES_MAX) {
                Ok(Some(total)) => {
                    shared.deliver(&pending[..total]);
                    start += total;
                }
                Ok(None) if pending.len() >= LENGTH_PREFIX_LEN => {
                    break le_u32(pending, 0) as usize + LENGTH_PREFIX_LEN;
                }
                Ok(None) => break LENGTH_PREFIX_LEN,
                Err(FrameError::TooLarge { len, max }) => {
                    return CloseReason::Protocol(format!(
                        "response frame of {len} bytes is above the client limit of {max}"
                    ));
                }
                Err(FrameError::TooShort { len }) => {
                    return CloseReason::Protocol(format!(
                        "response frame of {len} bytes is shorter than a response header"
                    ));
                }
            }
        };
        // Make room for the rest of that frame.
        if start == end {
            start = 0;
            end = 0;
            if buf.len() > BUFFER_KEEP_BYTES {
                buf = vec![0u8; READ_BUFFER_BYTES];
            }
        } else if start + need > buf.len() || buf.len() - end < READ_SPACE_MIN {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if start + need > buf.len() {
            buf.resize(start + need, 0);
        }
        match stream.read(&mut buf[end..]) {
            Ok(0) => return CloseReason::Eof,
            Ok(n) => {
                end += n;
                silence.heard();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The read timeout: the reader's clock tick.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(reason) = silence.check(shared) {
                    return reason;
                }
            }
            Err(e) => return CloseReason::Io(e.kind(), e.to_string()),
        }
    }
}

/// The writing side: the socket, one reusable frame buffer and the next
/// correlation id. Only touched under the connection's writer mutex.
struct WriteState {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u32,
}

impl WriteState {
    /// Encodes one request frame at the end of the buffer, registers its
    /// waiter (when it has one) and stamps the correlation id. Nothing is
    /// written unless every slot is taken, in which case the frames buffered
    /// before this one are written first, since their answers free slots.
    fn enqueue(
        &mut self,
        shared: &Shared,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
        waiter: Option<Waiter>,
        max_frame_bytes: usize,
    ) -> Result<u32, ClientError> {
        let version = api.versions().0;
        self.enqueue_version(shared, api, version, body_encoder, waiter, max_frame_bytes)
    }

    /// [`WriteState::enqueue`] at API version `version` (the body must be
    /// of that version).
    fn enqueue_version(
        &mut self,
        shared: &Shared,
        api: ApiKey,
        version: u16,
        body_encoder: impl FnOnce(&mut Vec<u8>),
        waiter: Option<Waiter>,
        max_frame_bytes: usize,
    ) -> Result<u32, ClientError> {
        let mut start = self.buf.len();
        RequestHeader {
            api_key: api.as_u16(),
            api_version: version,
            correlation_id: 0,
            flags: 0,
        }
        .write(&mut self.buf);
        body_encoder(&mut self.buf);
        let bytes = self.buf.len() - start;
        if bytes > max_frame_bytes {
            self.buf.truncate(start);
            return Err(ClientError::FrameTooLarge {
                bytes,
                max: max_frame_bytes,
            });
        }
        finish_frame(&mut self.buf, start);
        let id = match waiter {
            None => {
                let id = self.next_id;
                self.next_id = id.wrapping_add(1);
                id
            }
            Some(w) => match self.register(shared, api, w, &mut start) {
                Ok(id) => id,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            },
        };
        set_u32(&mut self.buf, start + 8, id);
        Ok(id)
    }

    /// Claims a free slot for `waiter`. `frame_start` is where the frame
    /// being registered starts; it moves to 0 if earlier frames are written.
    fn register(
        &mut self,
        shared: &Shared,
        api: ApiKey,
        waiter: Waiter,
        frame_start: &mut usize,
    ) -> Result<u32, ClientError> {
        let slots = shared.slots.len();
        loop {
            for _ in 0..slots {
                let id = self.next_id;
                self.next_id = id.wrapping_add(1);
                let mut s = lock(&shared.slot(id).state);
                if matches!(s.phase, Phase::Free) {
                    if shared.closed.load(Ordering::SeqCst) {
                        return Err(shared.close_error());
                    }
                    s.id = id;
                    s.api_key = api.as_u16();
                    s.phase = Phase::Waiting(waiter);
                    shared.waiting.fetch_add(1, Ordering::AcqRel);
                    return Ok(id);
                }
            }
            // Every slot is taken: put our earlier frames on the wire so
            // their answers can free slots, then wait for one.
            self.write_out(*frame_start, shared)?;
            *frame_start = 0;
            if shared.closed.load(Ordering::SeqCst) {
                return Err(shared.close_error());
            }
            if !shared.any_waiting() {
                return Err(ClientError::Protocol(format!(
                    "all {slots} request slots of this connection hold answers no one has \
                     taken; wait or drop tickets before sending more"
                )));
            }
            let slot = shared.slot(self.next_id);
            let mut s = lock(&slot.state);
            if !matches!(s.phase, Phase::Free) {
                s.sleepers = true;
                drop(slot.cond.wait_timeout(s, SLOT_RETRY));
            }
        }
    }

    /// Writes the first `end` bytes of the buffer and drops them from it,
    /// whether or not the write succeeded. A failed write leaves the stream
    /// in an unknown state, so it is shut down: the reader thread then fails
    /// every waiter.
    ///
    /// When the reader closed the connection meanwhile (which is what
    /// unblocks a write to a silent broker), its reason is the error.
    fn write_out(&mut self, end: usize, shared: &Shared) -> Result<(), ClientError> {
        if end == 0 {
            return Ok(());
        }
        let result = self.stream.write_all(&self.buf[..end]);
        self.buf.drain(..end);
        if self.buf.is_empty() && self.buf.capacity() > BUFFER_KEEP_BYTES {
            self.buf = Vec::with_capacity(PIPELINE_FLUSH_BYTES);
        }
        result.map_err(|e| {
            let _ = self.stream.shutdown(Shutdown::Both);
            if shared.closed.load(Ordering::SeqCst) {
                return shared.close_error();
            }
            match e.kind() {
                // The write timeout ran out: the broker stopped reading.
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the broker read nothing of a request for too long",
                    ))
                }
                _ => ClientError::Io(e),
            }
        })
    }

    fn write_all_buffered(&mut self, shared: &Shared) -> Result<(), ClientError> {
        self.write_out(self.buf.len(), shared)
    }
}

/// One connection to a broker. Cheap to share between threads (`&self`
/// everywhere); dropping it closes the socket and fails every waiter.
pub struct Connection {
    shared: Arc<Shared>,
    stream: TcpStream,
    reader: Option<JoinHandle<()>>,
    max_frame_bytes: usize,
    server: String,
    /// The broker's API versions, from the handshake.
    apis: Vec<ApiVersions>,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("local_addr", &self.local_addr)
            .field("peer_addr", &self.peer_addr)
            .field("server", &self.server)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connects with the default [`ConnectionConfig`] and performs the
    /// handshake.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the TCP connection fails; the handshake's
    /// errors (see [`Connection::connect_with`]).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Connection, ClientError> {
        Connection::connect_with(addr, &ConnectionConfig::default())
    }

    /// Connects (TCP_NODELAY), starts the reader thread and performs the
    /// handshake (protocol version 1), remembering the broker's maximum
    /// frame size.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the TCP connection fails,
    /// [`ClientError::Broker`] when the broker refuses the handshake,
    /// [`ClientError::Protocol`] when it answers with another version,
    /// [`ClientError::Timeout`] when it does not answer within
    /// [`HANDSHAKE_TIMEOUT`].
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        config: &ConnectionConfig,
    ) -> Result<Connection, ClientError> {
        Connection::start(TcpStream::connect(addr)?, config)
    }

    /// As [`Connection::connect_with`], to one address, giving up on the
    /// TCP connection after `timeout` (the handshake has its own
    /// [`HANDSHAKE_TIMEOUT`]).
    ///
    /// # Errors
    /// As [`Connection::connect_with`]; [`ClientError::Io`] with kind
    /// `TimedOut` when the TCP connection is not up in time.
    pub fn connect_timeout_with(
        addr: &SocketAddr,
        timeout: Duration,
        config: &ConnectionConfig,
    ) -> Result<Connection, ClientError> {
        Connection::start(TcpStream::connect_timeout(addr, timeout)?, config)
    }

    /// Starts the reader thread on a connected stream and performs the
    /// handshake.
    fn start(stream: TcpStream, config: &ConnectionConfig) -> Result<Connection, ClientError> {
        stream.set_nodelay(true)?;
        let (_, dead_after) = config.liveness.effective();
        // The reader's clock: a read returns at least this often.
        stream.set_read_timeout(Some(config.liveness.tick()))?;
        // A write that makes no progress this long means the broker stopped
        // reading; it fails, and the connection with it.
        stream.set_write_timeout(Some(dead_after))?;
        set_keepalive(&stream)?;
        let local_addr = stream.local_addr()?;
        let peer_addr = stream.peer_addr()?;
        let read_half = stream.try_clone()?;
        let write_half = stream.try_clone()?;
        let slots = config
            .in_flight_max
            .clamp(1, IN_FLIGHT_MAX_LIMIT)
            .next_power_of_two();
        let shared = Arc::new(Shared::new(
            slots,
            WriteState {
                stream: write_half,
                buf: Vec::with_capacity(PIPELINE_FLUSH_BYTES),
                next_id: 0,
            },
        ));
        let liveness = config.liveness;
        let reader = std::thread::Builder::new()
            .name("hutong-client-reader".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || read_loop(read_half, &shared, liveness)
            })?;
        let mut conn = Connection {
            shared,
            stream,
            reader: Some(reader),
            max_frame_bytes: PRE_HANDSHAKE_FRAME_BYTES_MAX,
            server: String::new(),
            apis: Vec::new(),
            local_addr,
            peer_addr,
        };
        conn.handshake(&config.client_id)?;
        Ok(conn)
    }

    fn handshake(&mut self, client_id: &str) -> Result<(), ClientError> {
        let request = HandshakeRequest {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_id,
        };
        let response = self
            .send(ApiKey::Handshake, |out| request.encode(out))?
            .wait_timeout(HANDSHAKE_TIMEOUT)?
            .into_result()?;
        let hs = HandshakeResponse::decode(&response.body)?;
        if hs.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "broker chose protocol version {}, this client speaks {PROTOCOL_VERSION}",
                hs.version
            )));
        }
        self.max_frame_bytes = hs.frame_bytes_max as usize;
        self.server = hs.server;
        self.apis = hs.apis;
        Ok(())
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, WriteState>, ClientError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(self.shared.close_error());
        }
        match self.shared.writer.lock() {
            Ok(w) => Ok(w),
            // A body encoder panicked mid-frame: the buffer holds half a
            // frame, so the stream cannot be trusted any more.
            Err(poisoned) => {
                let w = poisoned.into_inner();
                let _ = w.stream.shutdown(Shutdown::Both);
                Err(ClientError::Closed)
            }
        }
    }

    /// Encodes a request (header, then the body written by `body_encoder`),
    /// writes it and returns a ticket for its response. Never waits for the
    /// response; blocks only while the socket's send buffer is full or every
    /// slot of the waiter table is taken.
    ///
    /// # Errors
    /// [`ClientError::FrameTooLarge`] (nothing sent), [`ClientError::Io`]
    /// when the write fails, [`ClientError::Closed`] when the connection is
    /// closed, [`ClientError::Protocol`] when every slot holds an answer no
    /// one has taken.
    pub fn send(
        &self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Ticket, ClientError> {
        self.send_version(api, api.versions().0, body_encoder)
    }

    /// [`Connection::send`] at API version `version` (the body must be of
    /// that version; see [`Connection::version_for`]).
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_version(
        &self,
        api: ApiKey,
        version: u16,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Ticket, ClientError> {
        let mut w = self.lock_writer()?;
        let id = w.enqueue_version(
            &self.shared,
            api,
            version,
            body_encoder,
            Some(Waiter::Ticket),
            self.max_frame_bytes,
        )?;
        // From here the ticket owns the slot: if the write fails, dropping
        // it lets the reader's close sweep free the slot.
        let ticket = Ticket {
            shared: Arc::clone(&self.shared),
            id,
            taken: false,
        };
        w.write_all_buffered(&self.shared)?;
        Ok(ticket)
    }

    /// Sends a request that the broker answers only on failure (a produce
    /// at QoS none). No waiter is registered; an error answer that arrives
    /// later is counted by [`Connection::unsolicited_errors`].
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_no_reply(
        &self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ClientError> {
        let mut w = self.lock_writer()?;
        w.enqueue(&self.shared, api, body_encoder, None, self.max_frame_bytes)?;
        w.write_all_buffered(&self.shared)
    }

    /// Sends a request whose answer goes to `hook` on the reader thread,
    /// with `tag`. On `Ok`, the hook is called exactly once (with the
    /// response, or with the error that closed the connection); on `Err`,
    /// never.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_with_completion(
        &self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
        hook: &Arc<dyn Completion>,
        tag: u64,
    ) -> Result<(), ClientError> {
        let mut w = self.lock_writer()?;
        let waiter = Waiter::Completion {
            hook: Arc::clone(hook),
            tag,
        };
        let id = w.enqueue(
            &self.shared,
            api,
            body_encoder,
            Some(waiter),
            self.max_frame_bytes,
        )?;
        match w.write_all_buffered(&self.shared) {
            Ok(()) => Ok(()),
            Err(e) if self.shared.reclaim(id) => Err(e),
            // The close sweep already gave the hook the error.
            Err(_) => Ok(()),
        }
    }

    /// The highest version of `api` both this client and the broker speak
    /// (from the handshake), or `None` when they share none. Requests sent
    /// with [`Connection::send`] and [`Connection::call`] use the API's
    /// first version, which every broker speaks.
    pub fn version_for(&self, api: ApiKey) -> Option<u16> {
        let (ours_min, ours_max) = api.versions();
        // An API the broker does not list is one it does not speak.
        let theirs = self.apis.iter().find(|a| a.api_key == api.as_u16())?;
        let (theirs_min, theirs_max) = (theirs.min_version, theirs.max_version);
        let v = ours_max.min(theirs_max);
        (v >= ours_min.max(theirs_min)).then_some(v)
    }

    /// Sends a request at API version `version` (the body must be of that
    /// version; see [`Connection::version_for`]) and waits for its
    /// response.
    ///
    /// # Errors
    /// As [`Connection::call`].
    pub fn call_version(
        &self,
        api: ApiKey,
        version: u16,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response, ClientError> {
        self.send_version(api, version, body_encoder)?.wait()
    }

    /// Sends a request and waits for its response.
    ///
    /// # Errors
    /// As [`Connection::send`] and [`Ticket::wait`]. An error response is
    /// returned as `Ok`; use [`Response::into_result`].
    pub fn call(
        &self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response, ClientError> {
        self.send(api, body_encoder)?.wait()
    }

    /// Locks the writing side to send several requests with as few writes
    /// as possible; see [`Pipeline`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the connection is closed.
    pub fn pipeline(&self) -> Result<Pipeline<'_>, ClientError> {
        Ok(Pipeline {
            conn: self,
            w: self.lock_writer()?,
        })
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The broker's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The broker's maximum request frame size, from the handshake.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The broker's name and version, from the handshake.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Requests this connection keeps in flight at most.
    pub fn in_flight_max(&self) -> usize {
        self.shared.slots.len()
    }

    /// Shuts the socket down without waiting: the reader thread then fails
    /// every request still waiting for its answer with
    /// [`ClientError::Closed`], and later sends fail. Unlike dropping the
    /// connection, this works while other threads still hold it.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// True once the connection is closed; every later send fails.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Error answers that matched no waiter: failures of requests sent with
    /// [`Connection::send_no_reply`] (and of requests whose ticket was
    /// dropped before the answer arrived, which the broker should never
    /// send for a no-reply request).
    pub fn unsolicited_errors(&self) -> u64 {
        self.shared.unsolicited_errors.load(Ordering::Acquire)
    }

    /// Takes the first of the errors counted by
    /// [`Connection::unsolicited_errors`] since the previous take.
    pub fn take_unsolicited_error(&self) -> Option<ClientError> {
        lock(&self.shared.first_unsolicited).take()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The writing side of a connection, held to send a group of requests with
/// few writes: frames are buffered and written once
/// `PIPELINE_FLUSH_BYTES` (64 KiB) are buffered, on [`Pipeline::flush`] and
/// on drop. Other senders on the connection wait meanwhile, so keep it
/// short. Waiting on a ticket before its frame is flushed never returns.
pub struct Pipeline<'a> {
    conn: &'a Connection,
    w: MutexGuard<'a, WriteState>,
}

impl Pipeline<'_> {
    /// Buffers a request and returns its ticket.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send(
        &mut self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Ticket, ClientError> {
        let conn = self.conn;
        let id = self.w.enqueue(
            &conn.shared,
            api,
            body_encoder,
            Some(Waiter::Ticket),
            conn.max_frame_bytes,
        )?;
        let ticket = Ticket {
            shared: Arc::clone(&conn.shared),
            id,
            taken: false,
        };
        self.flush_if_full()?;
        Ok(ticket)
    }

    /// Buffers a request answered only on failure.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_no_reply(
        &mut self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ClientError> {
        let conn = self.conn;
        self.w
            .enqueue(&conn.shared, api, body_encoder, None, conn.max_frame_bytes)?;
        self.flush_if_full()
    }

    /// Buffers a request whose answer goes to `hook` with `tag` (see
    /// [`Connection::send_with_completion`]), so that many of them leave in
    /// one write.
    ///
    /// # Errors
    /// As [`Connection::send`]. A write that fails later closes the
    /// connection, and the close sweep hands the hook the error.
    pub fn send_with_completion(
        &mut self,
        api: ApiKey,
        body_encoder: impl FnOnce(&mut Vec<u8>),
        hook: &Arc<dyn Completion>,
        tag: u64,
    ) -> Result<(), ClientError> {
        let conn = self.conn;
        let waiter = Waiter::Completion {
            hook: Arc::clone(hook),
            tag,
        };
        self.w.enqueue(
            &conn.shared,
            api,
            body_encoder,
            Some(waiter),
            conn.max_frame_bytes,
        )?;
        let _ = self.flush_if_full();
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<(), ClientError> {
        if self.w.buf.len() >= PIPELINE_FLUSH_BYTES {
            self.w.write_all_buffered(&self.conn.shared)?;
        }
        Ok(())
    }

    /// Writes every buffered frame.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the write fails; the connection is then
    /// closed and the tickets fail.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.w.write_all_buffered(&self.conn.shared)
    }
}

impl Drop for Pipeline<'_> {
    fn drop(&mut self) {
        // A failure closes the connection, which fails the tickets.
        let _ = self.w.write_all_buffered(&self.conn.shared);
    }
}

/// The claim on one response. Wait for it with [`Ticket::wait`]; dropping
/// it discards the response when it comes.
pub struct Ticket {
    shared: Arc<Shared>,
    id: u32,
    taken: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

impl Ticket {
    /// Waits for the response. An error response is returned as `Ok`; use
    /// [`Response::into_result`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] or [`ClientError::Io`] when the connection
    /// died first, [`ClientError::Protocol`] when the answer carries the
    /// wrong API key.
    pub fn wait(self) -> Result<Response, ClientError> {
        self.wait_with(None, take_response)
    }

    /// Waits for the response at most `timeout`; after a timeout the
    /// response is discarded when it comes.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], or as [`Ticket::wait`].
    pub fn wait_timeout(self, timeout: Duration) -> Result<Response, ClientError> {
        self.wait_with(Some(timeout), take_response)
    }

    /// True when [`Ticket::wait`] would not block.
    pub fn is_ready(&self) -> bool {
        !matches!(
            lock(&self.shared.slot(self.id).state).phase,
            Phase::Waiting(_)
        )
    }

    /// The request's correlation id.
    pub fn correlation_id(&self) -> u32 {
        self.id
    }

    /// Waits, then lets `read` look at the response in place, without
    /// copying the body out of the slot (its buffer is reused for the next
    /// request that lands in the slot).
    ///
    /// # Errors
    /// As [`Ticket::wait_timeout`] (timeout `None` waits without limit).
    pub fn wait_with<T>(
        mut self,
        timeout: Option<Duration>,
        read: impl FnOnce(ResponseHeader, &mut Vec<u8>) -> T,
    ) -> Result<T, ClientError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let slot = self.shared.slot(self.id);
        let mut s = lock(&slot.state);
        debug_assert_eq!(s.id, self.id, "a ticket owns its slot");
        let result = loop {
            match s.phase {
                Phase::Ready => {
                    let header = s.header;
                    let out = read(header, &mut s.body);
                    if s.body.capacity() > SLOT_BODY_KEEP_BYTES {
                        s.body = Vec::new();
                    }
                    s.phase = Phase::Free;
                    break Ok(out);
                }
                Phase::Failed(_) => {
                    let Phase::Failed(e) = std::mem::replace(&mut s.phase, Phase::Free) else {
                        unreachable!("matched above");
                    };
                    break Err(e);
                }
                Phase::Waiting(_) => {
                    s.sleepers = true;
                    s = match deadline {
                        None => slot.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                // Dropping the ticket abandons the slot.
                                return Err(ClientError::Timeout);
                            }
                            slot.cond
                                .wait_timeout(s, deadline - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                    };
                }
                Phase::Free => {
                    break Err(ClientError::Protocol(
                        "ticket's slot was freed under it".into(),
                    ))
                }
            }
        };
        // The slot is free: wake a sender that waits for one.
        slot.wake(&mut s);
        drop(s);
        self.taken = true;
        result
    }
}

fn take_response(header: ResponseHeader, body: &mut Vec<u8>) -> Response {
    Response {
        header,
        body: std::mem::take(body),
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let slot = self.shared.slot(self.id);
        let mut s = lock(&slot.state);
        if s.id != self.id {
            return;
        }
        match s.phase {
            Phase::Waiting(Waiter::Ticket) => s.phase = Phase::Waiting(Waiter::Abandoned),
            Phase::Ready | Phase::Failed(_) => {
                s.phase = Phase::Free;
                slot.wake(&mut s);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::{self, FakeConn};
    use crate::wire::ErrorCode;

    const BOUND: Duration = Duration::from_secs(10);

    fn echo_all(mut c: FakeConn) {
        while let Some(req) = c.read_request() {
            c.reply(&req, 0, &req.body);
        }
    }

    #[test]
    fn connect_performs_the_handshake_and_keeps_the_frame_limit() {
        let broker = fake::spawn(|_c| {});
        let conn = Connection::connect(broker.addr).unwrap();
        assert_eq!(conn.max_frame_bytes(), fake::MAX_FRAME_BYTES);
        assert_eq!(conn.server(), fake::SERVER);
        assert_eq!(conn.peer_addr(), broker.addr);
        assert_eq!(conn.local_addr().ip(), broker.addr.ip());
        broker.join();
    }

    #[test]
    fn handshake_with_another_version_is_a_protocol_error() {
        let broker = fake::spawn_raw(|mut c| {
            let req = c.read_request().unwrap();
            assert_eq!(req.header.api_key, ApiKey::Handshake.as_u16());
            c.answer_handshake(&req, 2);
            c.read_request();
        });
        let err = Connection::connect(broker.addr).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        broker.join();
    }

    #[test]
    fn responses_answered_out_of_order_reach_their_own_tickets() {
        let broker = fake::spawn(|mut c| {
            let mut reqs: Vec<_> = (0..16).map(|_| c.read_request().unwrap()).collect();
            reqs.reverse();
            for req in &reqs {
                c.reply(req, 0, &req.body);
            }
            c.read_request();
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let tickets: Vec<_> = (0u32..16)
            .map(|i| {
                conn.send(ApiKey::Ping, |out| out.extend_from_slice(&i.to_le_bytes()))
                    .unwrap()
            })
            .collect();
        // The last ticket is answered first.
        for (i, t) in tickets.into_iter().enumerate() {
            let r = t.wait_timeout(BOUND).unwrap();
            assert_eq!(r.header.api_key, ApiKey::Ping.as_u16());
            assert_eq!(r.body, (i as u32).to_le_bytes());
        }
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_dropped_connection_fails_every_waiter_with_closed() {
        let broker = fake::spawn(|mut c| {
            for _ in 0..3 {
                c.read_request().unwrap();
            }
            // Dropping `c` closes the socket without answering.
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let tickets: Vec<_> = (0..3)
            .map(|_| conn.send(ApiKey::Ping, |_| {}).unwrap())
            .collect();
        for t in tickets {
            let err = t.wait_timeout(BOUND).unwrap_err();
            assert!(matches!(err, ClientError::Closed), "{err:?}");
        }
        broker.join();
        let err = conn.send(ApiKey::Ping, |_| {}).unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
        assert!(conn.is_closed());
    }

    #[test]
    fn dropping_the_connection_fails_outstanding_tickets() {
        let broker = fake::spawn(|mut c| while c.read_request().is_some() {});
        let conn = Connection::connect(broker.addr).unwrap();
        let ticket = conn.send(ApiKey::Ping, |_| {}).unwrap();
        drop(conn);
        let err = ticket.wait_timeout(BOUND).unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
        broker.join();
    }

    #[test]
    fn an_error_response_becomes_a_broker_error() {
        let broker = fake::spawn(|mut c| {
            let req = c.read_request().unwrap();
            c.reply_error(&req, ErrorCode::UnknownTopic, "unknown topic");
            c.read_request();
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let r = conn.call(ApiKey::Ping, |_| {}).unwrap();
        let err = r.into_result().unwrap_err();
        assert_eq!(err.to_string(), "broker error UnknownTopic: unknown topic");
        drop(conn);
        broker.join();
    }

    #[test]
    fn an_error_for_a_no_reply_request_is_counted() {
        let broker = fake::spawn(|mut c| {
            let req = c.read_request().unwrap();
            c.reply_error(&req, ErrorCode::UnknownTopic, "no such topic");
            // A ping after it proves the error was read first.
            let ping = c.read_request().unwrap();
            c.reply(&ping, 0, &[]);
            c.read_request();
        });
        let conn = Connection::connect(broker.addr).unwrap();
        conn.send_no_reply(ApiKey::Produce, |out| out.push(1))
            .unwrap();
        conn.send(ApiKey::Ping, |_| {})
            .unwrap()
            .wait_timeout(BOUND)
            .unwrap();
        assert_eq!(conn.unsolicited_errors(), 1);
        let first = conn.take_unsolicited_error().unwrap();
        assert_eq!(first.code(), Some(ErrorCode::UnknownTopic));
        assert!(conn.take_unsolicited_error().is_none());
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_wrong_api_key_in_the_answer_is_a_protocol_error() {
        let broker = fake::spawn(|mut c| {
            let req = c.read_request().unwrap();
            c.reply_raw(req.header.correlation_id, ApiKey::Fetch.as_u16(), 0, &[]);
            c.read_request();
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let err = conn.call(ApiKey::Ping, |_| {}).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        drop(conn);
        broker.join();
    }

    #[test]
    fn wait_timeout_gives_up_and_the_late_answer_is_discarded() {
        let broker = fake::spawn(|mut c| {
            let slow = c.read_request().unwrap();
            let next = c.read_request().unwrap();
            c.reply(&slow, 0, b"late");
            c.reply(&next, 0, b"next");
            c.read_request();
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let slow = conn.send(ApiKey::Ping, |_| {}).unwrap();
        let err = slow.wait_timeout(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout), "{err:?}");
        let r = conn
            .send(ApiKey::Ping, |_| {})
            .unwrap()
            .wait_timeout(BOUND)
            .unwrap();
        assert_eq!(r.body, b"next");
        assert_eq!(conn.unsolicited_errors(), 0);
        drop(conn);
        broker.join();
    }

    #[test]
    fn slots_are_reused_when_tickets_are_waited_or_dropped() {
        let broker = fake::spawn(echo_all);
        let config = ConnectionConfig {
            in_flight_max: 4,
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect_with(broker.addr, &config).unwrap();
        assert_eq!(conn.in_flight_max(), 4);
        for i in 0u32..100 {
            let t = conn
                .send(ApiKey::Ping, |out| out.extend_from_slice(&i.to_le_bytes()))
                .unwrap();
            if i % 2 == 0 {
                drop(t);
            } else {
                assert_eq!(t.wait_timeout(BOUND).unwrap().body, i.to_le_bytes());
            }
        }
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_full_table_of_untaken_answers_is_an_error_not_a_hang() {
        let broker = fake::spawn(echo_all);
        let config = ConnectionConfig {
            in_flight_max: 2,
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect_with(broker.addr, &config).unwrap();
        let held: Vec<_> = (0..2)
            .map(|_| conn.send(ApiKey::Ping, |_| {}).unwrap())
            .collect();
        let deadline = Instant::now() + BOUND;
        while !held.iter().all(Ticket::is_ready) {
            assert!(Instant::now() < deadline, "answers never came");
            std::thread::sleep(Duration::from_millis(1));
        }
        let err = conn.send(ApiKey::Ping, |_| {}).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        drop(held);
        conn.call(ApiKey::Ping, |_| {}).unwrap();
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_sender_waits_for_a_slot_while_answers_are_on_the_way() {
        let broker = fake::spawn(|mut c| {
            let first = c.read_request().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c.reply(&first, 0, b"1");
            echo_all(c);
        });
        let config = ConnectionConfig {
            in_flight_max: 1,
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect_with(broker.addr, &config).unwrap();
        let first = conn.send(ApiKey::Ping, |_| {}).unwrap();
        drop(first);
        // The only slot is abandoned but still on the wire: this send waits.
        let second = conn.send(ApiKey::Ping, |out| out.push(2)).unwrap();
        assert_eq!(second.wait_timeout(BOUND).unwrap().body, [2]);
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_frame_above_the_broker_limit_is_refused_locally() {
        let broker = fake::spawn(echo_all);
        let conn = Connection::connect(broker.addr).unwrap();
        let big = vec![0u8; fake::MAX_FRAME_BYTES];
        let err = conn
            .send(ApiKey::Ping, |out| out.extend_from_slice(&big))
            .unwrap_err();
        assert!(matches!(err, ClientError::FrameTooLarge { .. }), "{err:?}");
        // The connection is still usable.
        let r = conn.call(ApiKey::Ping, |out| out.push(7)).unwrap();
        assert_eq!(r.body, [7]);
        drop(conn);
        broker.join();
    }

    #[test]
    fn many_threads_share_one_connection() {
        let broker = fake::spawn(echo_all);
        let conn = Connection::connect(broker.addr).unwrap();
        std::thread::scope(|s| {
            for t in 0u32..4 {
                let conn = &conn;
                s.spawn(move || {
                    let mut pending = std::collections::VecDeque::new();
                    for i in 0u32..2000 {
                        let v = t * 1_000_000 + i;
                        let ticket = conn
                            .send(ApiKey::Ping, |out| out.extend_from_slice(&v.to_le_bytes()))
                            .unwrap();
                        pending.push_back((v, ticket));
                        if pending.len() > 64 {
                            let (v, t) = pending.pop_front().unwrap();
                            assert_eq!(t.wait_timeout(BOUND).unwrap().body, v.to_le_bytes());
                        }
                    }
                    for (v, t) in pending {
                        assert_eq!(t.wait_timeout(BOUND).unwrap().body, v.to_le_bytes());
                    }
                });
            }
        });
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_pipeline_writes_its_requests_together() {
        let broker = fake::spawn(echo_all);
        let conn = Connection::connect(broker.addr).unwrap();
        let tickets = {
            let mut p = conn.pipeline().unwrap();
            let tickets: Vec<_> = (0u8..100)
                .map(|i| p.send(ApiKey::Ping, |out| out.push(i)).unwrap())
                .collect();
            p.send_no_reply(ApiKey::Ping, |_| {}).unwrap();
            p.flush().unwrap();
            tickets
        };
        for (i, t) in tickets.into_iter().enumerate() {
            assert_eq!(t.wait_timeout(BOUND).unwrap().body, [i as u8]);
        }
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_pipeline_with_a_full_table_writes_what_it_holds_first() {
        let broker = fake::spawn(echo_all);
        let config = ConnectionConfig {
            in_flight_max: 2,
            ..ConnectionConfig::default()
        };
        let conn = Connection::connect_with(broker.addr, &config).unwrap();
        let mut p = conn.pipeline().unwrap();
        for i in 0u8..10 {
            // Dropped tickets stay on the wire until answered; the pipeline
            // must write them out to get their slots back.
            drop(p.send(ApiKey::Ping, |out| out.push(i)).unwrap());
        }
        drop(p);
        assert_eq!(
            conn.call(ApiKey::Ping, |out| out.push(9)).unwrap().body,
            [9]
        );
        drop(conn);
        broker.join();
    }

    type Outcome = (u64, Result<Vec<u8>, String>);

    struct Collect(Mutex<Vec<Outcome>>);

    impl Completion for Collect {
        fn complete(&self, tag: u64, response: Result<ResponseRef<'_>, ClientError>) {
            let r = response.map(|r| r.body.to_vec()).map_err(|e| e.to_string());
            lock(&self.0).push((tag, r));
        }
    }

    #[test]
    fn completion_hooks_get_each_answer_or_the_close_error_once() {
        let broker = fake::spawn(|mut c| {
            let a = c.read_request().unwrap();
            let _b = c.read_request().unwrap();
            c.reply(&a, 0, b"a");
            // Closing without answering b.
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let collect = Arc::new(Collect(Mutex::new(Vec::new())));
        let hook: Arc<dyn Completion> = collect.clone();
        conn.send_with_completion(ApiKey::Ping, |_| {}, &hook, 10)
            .unwrap();
        conn.send_with_completion(ApiKey::Ping, |_| {}, &hook, 11)
            .unwrap();
        broker.join();
        let deadline = Instant::now() + BOUND;
        while lock(&collect.0).len() < 2 {
            assert!(Instant::now() < deadline, "hooks never called");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(conn);
        let got = lock(&collect.0).clone();
        assert_eq!(
            got,
            vec![
                (10, Ok(b"a".to_vec())),
                (11, Err(ClientError::Closed.to_string()))
            ]
        );
    }

    #[test]
    fn unframeable_response_closes_the_connection_with_a_protocol_error() {
        let broker = fake::spawn(|mut c| {
            c.read_request().unwrap();
            c.write_raw(&2u32.to_le_bytes());
            c.read_request();
        });
        let conn = Connection::connect(broker.addr).unwrap();
        let err = conn.call(ApiKey::Ping, |_| {}).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        drop(conn);
        broker.join();
    }

    /// Liveness short enough for tests: a Ping after 50 ms of silence, the
    /// connection given up after 300 ms.
    fn quick_liveness() -> ConnectionConfig {
        ConnectionConfig {
            liveness: Liveness {
                ping_after_ms: 50,
                dead_after_ms: 300,
            },
            ..ConnectionConfig::default()
        }
    }

    fn is_timed_out_io(e: &ClientError) -> bool {
        matches!(e, ClientError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
    }

    #[test]
    fn a_silent_broker_is_pinged_then_given_up_and_every_waiter_fails() {
        let broker = fake::spawn(|mut c| {
            c.read_request().expect("the request");
            let ping = c.read_request().expect("a liveness ping");
            assert_eq!(ping.header.api_key, ApiKey::Ping.as_u16());
            // Neither is answered; the client leaves on its own.
            while c.read_request().is_some() {}
        });
        let conn = Connection::connect_with(broker.addr, &quick_liveness()).unwrap();
        let started = Instant::now();
        let ticket = conn.send(ApiKey::Produce, |out| out.push(1)).unwrap();
        let err = ticket.wait_timeout(BOUND).unwrap_err();
        assert!(is_timed_out_io(&err), "given up as silent: {err:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(conn.is_closed());
        let err = conn.send(ApiKey::Ping, |_| {}).unwrap_err();
        assert!(is_timed_out_io(&err), "later sends fail too: {err:?}");
        broker.join();
    }

    #[test]
    fn a_slow_broker_that_answers_pings_keeps_its_connection() {
        let broker = fake::spawn(|mut c| {
            let slow = c.read_request().expect("the request");
            // Ten times the silence limit, answering every liveness ping.
            let until = Instant::now() + Duration::from_millis(3000);
            let mut pings = 0;
            while Instant::now() < until {
                if c.request_arrives_within(Duration::from_millis(10)) {
                    let ping = c.read_request().expect("a ping");
                    assert_eq!(ping.header.api_key, ApiKey::Ping.as_u16());
                    c.reply(&ping, 0, &[]);
                    pings += 1;
                }
            }
            assert!(pings >= 2, "the client pinged while it waited ({pings})");
            c.reply(&slow, 0, b"late but fine");
            echo_all(c);
        });
        let conn = Connection::connect_with(broker.addr, &quick_liveness()).unwrap();
        let r = conn
            .send(ApiKey::Produce, |out| out.push(1))
            .unwrap()
            .wait_timeout(BOUND)
            .unwrap();
        assert_eq!(r.body, b"late but fine");
        assert!(!conn.is_closed());
        drop(conn);
        broker.join();
    }

    #[test]
    fn an_idle_connection_is_not_pinged() {
        let broker = fake::spawn(|mut c| {
            assert!(
                !c.request_arrives_within(Duration::from_millis(500)),
                "nothing is outstanding, so nothing is sent"
            );
            echo_all(c);
        });
        let conn = Connection::connect_with(broker.addr, &quick_liveness()).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert!(!conn.is_closed(), "silence without a question is fine");
        assert_eq!(
            conn.call(ApiKey::Ping, |out| out.push(3)).unwrap().body,
            [3]
        );
        drop(conn);
        broker.join();
    }

    #[test]
    fn a_write_to_a_broker_that_stopped_reading_fails_instead_of_blocking() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let broker = fake::spawn(move |_c| {
            // Reads nothing more until the client is done.
            let _ = done_rx.recv_timeout(BOUND);
        });
        let conn = Connection::connect_with(broker.addr, &quick_liveness()).unwrap();
        let big = vec![0u8; fake::MAX_FRAME_BYTES / 2];
        let started = Instant::now();
        let err = loop {
            assert!(started.elapsed() < BOUND, "the writes never failed");
            match conn.send(ApiKey::Ping, |out| out.extend_from_slice(&big)) {
                Ok(ticket) => drop(ticket),
                Err(e) => break e,
            }
        };
        assert!(is_timed_out_io(&err), "{err:?}");
        done_tx.send(()).unwrap();
        broker.join();
    }

    #[test]
    fn large_responses_grow_the_read_buffer() {
        let broker = fake::spawn(echo_all);
        let conn = Connection::connect(broker.addr).unwrap();
        let big: Vec<u8> = (0..READ_BUFFER_BYTES * 2).map(|i| i as u8).collect();
        let tickets: Vec<_> = (0..3)
            .map(|_| {
                conn.send(ApiKey::Ping, |out| out.extend_from_slice(&big))
                    .unwrap()
            })
            .collect();
        for t in tickets {
            assert!(t.wait_timeout(BOUND).unwrap().body == big);
        }
        drop(conn);
        broker.join();
    }
}
