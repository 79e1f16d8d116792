//! The measuring machinery: a window of requests in flight on one
//! connection, acknowledgements counted and checked on the connection's
//! reader thread, and latency from send to answer.
//!
//! A sender thread runs [`drive`]: it asks its [`Source`] for the next
//! request, waits while the window is full, stamps the request's send time
//! in a slot indexed by its tag, and hands it to
//! [`Connection::send_with_completion`], which writes it without waiting for
//! the answer. The [`Window`] is the completion hook: on the reader thread
//! it checks the answer, counts the request's messages, records the latency
//! and frees a place in the window, waking the sender when it waits.
//!
//! To spare wake-ups (each is a futex call and a context switch, costly on
//! two cores), a sender that found the window full sleeps until it has
//! drained to a low-water mark and then refills several places at once.

use crate::report::{self, Actor, Report};
use hdrhistogram::Histogram;
use hutong::client::{ClientError, Completion, Connection, ResponseRef};
use hutong::wire::ApiKey;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a sender waits for its last answers before it gives up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// A sender waiting for a place rechecks at least this often, so a lost
/// wake-up can slow a run down but never hang it.
const PARK_MAX: Duration = Duration::from_millis(50);
/// No sender waits (value of `wake_at`).
const NOBODY: usize = usize::MAX;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's first call: one clock for every thread,
/// so a timestamp written in a message by a producer is comparable with the
/// consumer's receive time.
pub fn now_ns() -> u64 {
    instant_ns(Instant::now())
}

/// An instant in the clock of [`now_ns`].
pub fn instant_ns(t: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_nanos() as u64
}

/// Checks a successful answer (error answers never reach it).
pub type Check = Box<dyn Fn(u64, ResponseRef<'_>) -> Result<(), String> + Send + Sync>;

/// Requests in flight on one connection, and what their answers said.
pub struct Window {
    capacity: usize,
    low_water: usize,
    mask: u64,
    in_flight: AtomicUsize,
    /// The sender sleeps until `in_flight` is at most this ([`NOBODY`]: it
    /// does not sleep).
    wake_at: AtomicUsize,
    sender: OnceLock<Thread>,
    /// Send time (ns) and message count of each request in flight, by tag.
    send_ns: Box<[AtomicU64]>,
    counts: Box<[AtomicU32]>,
    acked_messages: AtomicU64,
    acked_requests: AtomicU64,
    last_ack_ns: AtomicU64,
    errors: AtomicU64,
    error_messages: Mutex<Vec<String>>,
    latency: Mutex<Histogram<u64>>,
    check: Check,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Window {
    /// A window of `capacity` requests whose answers `check` verifies.
    pub fn new(capacity: usize, check: Check) -> Arc<Window> {
        let capacity = capacity.max(1);
        let slots = capacity.next_power_of_two();
        Arc::new(Window {
            capacity,
            // Refill an eighth of the window at a time (at least one place).
            low_water: capacity - (capacity / 8).max(1),
            mask: slots as u64 - 1,
            in_flight: AtomicUsize::new(0),
            wake_at: AtomicUsize::new(NOBODY),
            sender: OnceLock::new(),
            send_ns: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            acked_messages: AtomicU64::new(0),
            acked_requests: AtomicU64::new(0),
            last_ack_ns: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_messages: Mutex::new(Vec::new()),
            latency: Mutex::new(report::histogram()),
            check,
        })
    }

    /// Messages acknowledged so far.
    pub fn acked_messages(&self) -> u64 {
        self.acked_messages.load(Ordering::Relaxed)
    }

    /// Requests answered with success so far.
    pub fn acked_requests(&self) -> u64 {
        self.acked_requests.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Time of the last acknowledgement, in [`now_ns`]'s clock.
    pub fn last_ack_ns(&self) -> u64 {
        self.last_ack_ns.load(Ordering::Relaxed)
    }

    /// Counts a failure and keeps its message.
    pub fn fail(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut m = lock(&self.error_messages);
        if m.len() < report::ERROR_MESSAGES_MAX {
            m.push(message);
        }
    }

    /// Counts messages confirmed another way (QoS none: by the final Ping).
    pub fn confirm(&self, messages: u64, requests: u64) {
        self.acked_messages.fetch_add(messages, Ordering::Relaxed);
        self.acked_requests.fetch_add(requests, Ordering::Relaxed);
        self.last_ack_ns.fetch_max(now_ns(), Ordering::Relaxed);
    }

    /// Waits until at most `n` requests are in flight, or `timeout` passes.
    /// Only the sender thread calls this.
    fn wait_at_most(&self, n: usize, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.in_flight.load(Ordering::SeqCst) <= n {
                return true;
            }
            self.wake_at.store(n, Ordering::SeqCst);
            // Recheck after announcing the wait: a completion between the
            // first check and the store would not have woken us.
            if self.in_flight.load(Ordering::SeqCst) <= n {
                self.wake_at.store(NOBODY, Ordering::SeqCst);
                return true;
            }
            let park = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.wake_at.store(NOBODY, Ordering::SeqCst);
                        return false;
                    }
                    (d - now).min(PARK_MAX)
                }
                None => PARK_MAX,
            };
            std::thread::park_timeout(park);
            self.wake_at.store(NOBODY, Ordering::SeqCst);
        }
    }

    /// Takes a place in the window, waiting while it is full.
    fn acquire(&self) {
        if self.in_flight.load(Ordering::Relaxed) >= self.capacity {
            self.wait_at_most(self.low_water, None);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Takes a place in the window if one is free, without waiting.
    fn try_acquire(&self) -> bool {
        if self.in_flight.load(Ordering::Relaxed) >= self.capacity {
            return false;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Gives back a place whose request was never sent.
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn begin(&self, tag: u64, send_ns: u64, messages: u32) {
        let i = (tag & self.mask) as usize;
        self.send_ns[i].store(send_ns, Ordering::Relaxed);
        self.counts[i].store(messages, Ordering::Relaxed);
    }

    /// Turns the window's figures into an actor of the report; `elapsed`
    /// runs from `start_ns` to the last acknowledgement.
    pub fn actor(&self, label: String, message_bytes: u64, start_ns: u64) -> Actor {
        let messages = self.acked_messages();
        Actor {
            label,
            messages,
            requests: self.acked_requests(),
            payload_bytes: messages * message_bytes,
            elapsed: Duration::from_nanos(self.last_ack_ns().saturating_sub(start_ns)),
            latency: lock(&self.latency).clone(),
        }
    }

    /// Files this window's figures and failures in `report` as one actor.
    pub fn file(&self, report: &mut Report, label: String, message_bytes: u64, start_ns: u64) {
        let kept = lock(&self.error_messages).clone();
        for e in &kept {
            report.error(format!("{label}: {e}"));
        }
        report.errors += self.errors().saturating_sub(kept.len() as u64);
        report.add_actor(self.actor(label, message_bytes, start_ns));
    }
}

impl Completion for Window {
    fn complete(&self, tag: u64, response: Result<ResponseRef<'_>, ClientError>) {
        let now = now_ns();
        let i = (tag & self.mask) as usize;
        let checked = response
            .and_then(ResponseRef::into_result)
            .map_err(|e| e.to_string())
            .and_then(|r| (self.check)(tag, r));
        match checked {
            Ok(()) => {
                let sent = self.send_ns[i].load(Ordering::Relaxed);
                let count = self.counts[i].load(Ordering::Relaxed);
                self.acked_messages
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                self.acked_requests.fetch_add(1, Ordering::Relaxed);
                report::record(&mut lock(&self.latency), now.saturating_sub(sent));
                self.last_ack_ns.fetch_max(now, Ordering::Relaxed);
            }
            Err(e) => self.fail(format!("request {tag}: {e}")),
        }
        let left = self.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        let wake_at = self.wake_at.load(Ordering::SeqCst);
        if wake_at != NOBODY
            && left <= wake_at
            && self.wake_at.swap(NOBODY, Ordering::SeqCst) != NOBODY
        {
            if let Some(t) = self.sender.get() {
                t.unpark();
            }
        }
    }
}

/// Where a sender's requests come from.
pub trait Source {
    /// The API of every request.
    fn api(&self) -> ApiKey;
    /// Prepares the next request and returns how many messages it carries,
    /// or `None` when there are no more.
    fn next(&mut self) -> Option<u32>;
    /// Appends the body of the request prepared by `next`.
    fn encode(&mut self, out: &mut Vec<u8>);
    /// True when the broker answers only failures (produce at QoS none).
    fn no_reply(&self) -> bool {
        false
    }
}

/// When a sender stops and how fast it goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Stop sending at this instant (otherwise when the source runs dry).
    pub deadline: Option<Instant>,
    /// Open loop: messages per second for this sender. Each request's
    /// latency is then measured from when it should have been sent, which
    /// corrects for coordinated omission.
    pub rate: Option<f64>,
}

/// Sends every request of `source` through `window` and waits for their
/// answers. Stops early at the first failure. Failures are counted in the
/// window.
pub fn drive(conn: &Connection, window: &Arc<Window>, source: &mut dyn Source, pace: Pace) {
    let _ = window.sender.set(std::thread::current());
    let hook: Arc<dyn Completion> = window.clone();
    let api = source.api();
    let no_reply = source.no_reply();
    let start = Instant::now();
    let (mut tag, mut sent_messages) = (0u64, 0u64);
    while window.errors() == 0 {
        if pace.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let Some(count) = source.next() else { break };
        let intended = pace
            .rate
            .map(|r| start + Duration::from_secs_f64(sent_messages as f64 / r));
        if let Some(t) = intended {
            sleep_until(t);
        }
        if no_reply {
            if let Err(e) = conn.send_no_reply(api, |out| source.encode(out)) {
                window.fail(format!("request {tag}: {e}"));
                break;
            }
        } else if intended.is_some() {
            window.acquire();
            window.begin(tag, intended.map_or_else(now_ns, instant_ns), count);
            if let Err(e) = conn.send_with_completion(api, |out| source.encode(out), &hook, tag) {
                window.release();
                window.fail(format!("request {tag}: {e}"));
                break;
            }
        } else {
            // Closed loop: fill every free place of the window through one
            // pipeline, so many requests leave in one write.
            window.acquire();
            let mut pipe = match conn.pipeline() {
                Ok(p) => p,
                Err(e) => {
                    window.release();
                    window.fail(format!("request {tag}: {e}"));
                    break;
                }
            };
            let mut count = count;
            loop {
                window.begin(tag, now_ns(), count);
                if let Err(e) = pipe.send_with_completion(api, |out| source.encode(out), &hook, tag)
                {
                    window.release();
                    window.fail(format!("request {tag}: {e}"));
                    break;
                }
                tag += 1;
                sent_messages += u64::from(count);
                let out_of_time = pace.deadline.is_some_and(|d| Instant::now() >= d);
                if out_of_time || window.errors() > 0 || !window.try_acquire() {
                    break;
                }
                match source.next() {
                    Some(c) => count = c,
                    None => {
                        window.release();
                        break;
                    }
                }
            }
            if let Err(e) = pipe.flush() {
                window.fail(format!("request {tag}: {e}"));
            }
            continue;
        }
        tag += 1;
        sent_messages += u64::from(count);
    }
    if no_reply {
        // Nothing answers a success; a Ping round trip reads every error
        // answer the broker sent before it.
        match conn.call(ApiKey::Ping, |_| {}) {
            Ok(_) => match conn.take_unsolicited_error() {
                Some(e) => window.fail(format!(
                    "{} failed requests, first: {e}",
                    conn.unsolicited_errors()
                )),
                None if window.errors() == 0 => window.confirm(sent_messages, tag),
                None => {}
            },
            Err(e) => window.fail(format!("final ping: {e}")),
        }
        return;
    }
    if !window.wait_at_most(0, Some(DRAIN_TIMEOUT)) {
        window.fail(format!(
            "{} requests still unanswered {DRAIN_TIMEOUT:?} after the last send",
            window.in_flight.load(Ordering::SeqCst)
        ));
    }
}

/// Sleeps until `t`: the OS sleep for all but the last 100 µs, then yields,
/// so the bench's own oversleeping does not pose as broker latency.
fn sleep_until(t: Instant) {
    const SPIN: Duration = Duration::from_micros(100);
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::thread::yield_now();
        }
    }
}
