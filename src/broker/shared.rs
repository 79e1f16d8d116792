//! State every pipeline stage shares: the journal positions, the shutdown
//! protocol and the handles used to wake each stage.

use crate::wire::api::ClusterRole;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A cache-line-padded atomic so that stages publishing different positions
/// do not false-share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Position(AtomicU64);

impl Position {
    /// Reads the position (acquire: bytes below it are visible).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Publishes a new value (release: bytes below it were written first).
    /// Positions only grow.
    pub fn publish(&self, v: u64) {
        debug_assert!(
            v >= self.0.load(Ordering::Relaxed),
            "positions are monotonic"
        );
        self.0.store(v, Ordering::Release);
    }

    /// Stores a value that may be lower than the current one: R when a
    /// leader steps down, W and F when a divergent tail is truncated.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Release);
    }
}

/// The four journal positions of DESIGN.md §1.
#[derive(Debug, Default)]
pub struct Positions {
    /// W: appended to the journal.
    pub written: Position,
    /// F: durable on the local disk.
    pub flushed: Position,
    /// R: held by a majority of replicas.
    pub replicated: Position,
    /// C: durable on a majority; what consumers may read.
    pub committed: Position,
}

impl Positions {
    /// All four positions start at the recovered journal end.
    pub fn at(end: u64) -> Positions {
        let p = Positions::default();
        for pos in [&p.written, &p.flushed, &p.replicated, &p.committed] {
            pos.publish(end);
        }
        p
    }
}

/// Each pipeline stage, for waking and for the shutdown hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Appends requests to the journal.
    Writer = 0,
    /// fdatasyncs the journal.
    Flusher = 1,
    /// Publishes R and C.
    Replicator = 2,
    /// Answers produce requests.
    Responder = 3,
    /// Serves fetch, metadata and list-offsets.
    Reader = 4,
}

const STAGES: usize = 5;

/// What the rest of the broker needs to know about the replication group:
/// the static membership, and the role, term and leader the writer (which
/// runs the consensus state machine) publishes.
pub struct ClusterView {
    /// This node's id (0 when standalone).
    pub node_id: u64,
    /// Every member, this node included: id and address.
    pub peers: Vec<(u64, String)>,
    /// A [`ClusterRole`] code.
    pub role: AtomicU8,
    /// The current term.
    pub term: AtomicU64,
    /// The leader's id, 0 when none is known.
    pub leader: AtomicU64,
    /// Bit `i` set: the replicator lost or (re)made its connection to
    /// `peers[i]`; the writer reports it to the state machine and clears it.
    pub link_changes: AtomicU64,
    /// This member's data directory has caught up with the group (it votes
    /// and campaigns); always true on a standalone broker.
    pub caught_up: AtomicBool,
}

impl ClusterView {
    /// The view of a standalone broker or of a group member.
    pub fn new(node_id: u64, peers: Vec<(u64, String)>) -> ClusterView {
        let role = if peers.is_empty() {
            ClusterRole::Standalone
        } else {
            ClusterRole::Follower
        };
        ClusterView {
            node_id,
            peers,
            role: AtomicU8::new(role.as_u8()),
            term: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            link_changes: AtomicU64::new(0),
            caught_up: AtomicBool::new(true),
        }
    }

    /// True for a member of a replication group.
    pub fn is_clustered(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The known leader's id, 0 when none is known.
    pub fn leader_id(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }

    /// The address of member `id` in this node's peer list ("" for none).
    pub fn addr_of(&self, id: u64) -> &str {
        self.peers
            .iter()
            .find(|(p, _)| *p == id && id != 0)
            .map_or("", |(_, a)| a.as_str())
    }
}

/// A cut of the journal's tail, as the responder must learn of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The cut position: batches ending above it are gone.
    pub at: u64,
    /// How many requests the writer had queued on the pending ring before
    /// the cut. Only those can be waiting for cut bytes: a request queued
    /// later was appended after the cut (or is the retry of a batch below
    /// it).
    pub queued_before: u64,
}

/// Journal cuts the writer made and the responder has not taken in yet.
///
/// They do not travel on the pending ring: a cut must reach the responder
/// before any position past it is compared with a waiting request, however
/// full the ring and the responder's queues are. The writer records a cut
/// before it lowers any position; the responder looks here after reading
/// the positions and before comparing anything (see `Responder::round`).
/// Cuts are rare (a change of leader), so a mutex guards the list; the
/// responder's per-round cost is one atomic load.
#[derive(Debug, Default)]
pub struct CutLog {
    generation: AtomicU64,
    cuts: Mutex<Vec<Cut>>,
}

impl CutLog {
    /// Records a cut (writer).
    pub fn record(&self, cut: Cut) {
        self.cuts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(cut);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Moves the cuts recorded since `seen` into `into` (responder).
    /// Returns false, without locking, when there are none.
    pub fn take_new(&self, seen: &mut u64, into: &mut Vec<Cut>) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return false;
        }
        into.append(
            &mut self
                .cuts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        *seen = generation;
        true
    }
}

/// What the stages share besides their rings.
pub struct Shared {
    /// The replication group as this node sees it.
    pub cluster: ClusterView,
    /// Journal positions.
    pub positions: Positions,
    /// Journal cuts on their way to the responder.
    pub cuts: CutLog,
    /// The flush gate: the number of journal cuts so far. The writer holds
    /// it while it cuts; the flusher holds it to publish F or write a
    /// checkpoint (see `flusher`).
    flush_gate: Mutex<u64>,
    /// Set once by a shutdown request.
    shutdown: AtomicBool,
    /// Set by each stage when it has finished its part of the shutdown.
    done: [AtomicBool; STAGES],
    /// Set by the reactor once it stopped forwarding requests.
    pub reactor_drained: AtomicBool,
    /// Thread handles, filled in when the stages start.
    threads: [OnceLock<Thread>; STAGES],
    /// The reactor's waker.
    pub waker: mio::Waker,
    /// The replicator's waker, when it waits in a poll of its own (a member
    /// of a replication group owns its outbound peer sockets).
    pub replicator_waker: OnceLock<mio::Waker>,
    /// The writer found the request ring full; wake the reactor when it has room.
    pub request_ring_full: AtomicBool,
    /// The writer, responder or reader found its completion ring full.
    pub completion_ring_full: AtomicBool,
    /// The reader's request ring was full.
    pub read_ring_full: AtomicBool,
    /// Set when fdatasync failed: durability can no longer be promised.
    pub storage_failed: AtomicBool,
    /// The highest journal end a request waiting for F needs durable (QoS
    /// `flushed` or `all`), raised by the writer as it queues one: the
    /// flusher syncs at once up to it instead of pacing.
    pub flush_wanted: AtomicU64,
    /// Set by the reader while fetches are parked waiting for data: the
    /// flusher does not pace then (C, what they wait for, follows F).
    pub fetches_waiting: AtomicBool,
    /// The position of the last catalog snapshot the flusher wrote to the
    /// `snapshot` file (0: none since the start): a group member compacts
    /// its consensus log only to a snapshot whose file is there to send.
    pub snapshot_saved: AtomicU64,
    /// Set by the flusher while it holds a sync back until a deadline it
    /// wakes at by itself: the writer need not wake it for new bytes then,
    /// only for a request that waits for F.
    pub flusher_holding: AtomicBool,
    /// The first fatal error any stage hit (not on the hot path).
    pub fatal: Mutex<Option<String>>,
}

impl Shared {
    /// Shared state for a journal recovered up to `end`.
    pub fn new(end: u64, waker: mio::Waker, cluster: ClusterView) -> Shared {
        Shared {
            cluster,
            positions: Positions::at(end),
            cuts: CutLog::default(),
            flush_gate: Mutex::new(0),
            shutdown: AtomicBool::new(false),
            done: Default::default(),
            reactor_drained: AtomicBool::new(false),
            threads: Default::default(),
            waker,
            replicator_waker: OnceLock::new(),
            request_ring_full: AtomicBool::new(false),
            completion_ring_full: AtomicBool::new(false),
            read_ring_full: AtomicBool::new(false),
            storage_failed: AtomicBool::new(false),
            flush_wanted: AtomicU64::new(0),
            fetches_waiting: AtomicBool::new(false),
            snapshot_saved: AtomicU64::new(0),
            flusher_holding: AtomicBool::new(false),
            fatal: Mutex::new(None),
        }
    }

    /// A standalone broker's shared state for unit tests of the stages,
    /// with a waker on a poll nobody waits on (keep the poll alive).
    #[cfg(test)]
    pub fn for_tests(end: u64) -> (mio::Poll, std::sync::Arc<Shared>) {
        let poll = mio::Poll::new().expect("a poll for the test");
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("a waker");
        let shared = Shared::new(end, waker, ClusterView::new(0, Vec::new()));
        (poll, std::sync::Arc::new(shared))
    }

    /// Takes the flush gate (see `flusher`). Held for a cut or one
    /// publication, never across a wait for another stage.
    pub fn lock_flush_gate(&self) -> std::sync::MutexGuard<'_, u64> {
        self.flush_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lowers W, F and R to a cut at `at`, with the flush gate held (the
    /// writer's part of a truncation; see `flusher`). Lowers only: W is
    /// below `at` when the cut lies in bytes still in the write cache,
    /// which are not in the file yet, and must not be raised over them.
    pub fn lower_positions_to(&self, _gate: &std::sync::MutexGuard<'_, u64>, at: u64) {
        let p = &self.positions;
        for pos in [&p.written, &p.flushed, &p.replicated] {
            if pos.get() > at {
                pos.set(at);
            }
        }
    }

    /// Records the calling thread as `stage` so others can wake it.
    pub fn register(&self, stage: Stage) {
        let _ = self.threads[stage as usize].set(std::thread::current());
    }

    /// Wakes a stage (a no-op syscall-free store when it is not parked).
    pub fn wake(&self, stage: Stage) {
        if stage == Stage::Replicator {
            if let Some(w) = self.replicator_waker.get() {
                if let Err(e) = w.wake() {
                    crate::log!("cannot wake the replicator: {e}");
                }
                return;
            }
        }
        if let Some(t) = self.threads[stage as usize].get() {
            t.unpark();
        }
    }

    /// Wakes the reactor.
    pub fn wake_reactor(&self) {
        if let Err(e) = self.waker.wake() {
            crate::log!("cannot wake the reactor: {e}");
        }
    }

    /// Wakes the reactor and every stage, so each re-reads the shutdown
    /// state.
    fn wake_all(&self) {
        self.wake_reactor();
        for s in [
            Stage::Writer,
            Stage::Flusher,
            Stage::Replicator,
            Stage::Responder,
            Stage::Reader,
        ] {
            self.wake(s);
        }
    }

    /// Asks every stage to shut down.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.wake_all();
    }

    /// True once shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Marks a stage as finished with its shutdown work, and wakes the rest.
    pub fn mark_done(&self, stage: Stage) {
        self.done[stage as usize].store(true, Ordering::Release);
        self.wake_all();
    }

    /// True once `stage` has finished its shutdown work.
    pub fn is_done(&self, stage: Stage) -> bool {
        self.done[stage as usize].load(Ordering::Acquire)
    }

    /// Records a fatal error and starts a shutdown.
    pub fn fail(&self, what: String) {
        crate::log!("fatal: {what}");
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(what);
        }
        self.request_shutdown();
    }
}

/// How an idle stage waits: a short spin to catch work that is about to
/// arrive (cheap on latency), then a park (cheap on a 2-core machine).
pub struct Idle {
    spins: u32,
    spin_rounds: u32,
}

/// Spins before parking; kept short because busy-spinning a core is a bug
/// on 2-core machines.
const SPIN_ROUNDS: u32 = 100;

impl Idle {
    /// A fresh idle state with the default spin.
    pub fn new() -> Idle {
        Idle::with_spin_rounds(SPIN_ROUNDS)
    }

    /// A fresh idle state that spins `spin_rounds` rounds before parking
    /// (0: park at once, for relays whose wake-up is not on the latency path).
    pub fn with_spin_rounds(spin_rounds: u32) -> Idle {
        Idle {
            spins: 0,
            spin_rounds,
        }
    }

    /// Call after a round that did work.
    pub fn busy(&mut self) {
        self.spins = 0;
    }

    /// Call after a round that found nothing to do: spins a little, then
    /// parks for at most `max_wait`.
    pub fn wait(&mut self, max_wait: Duration) {
        if self.spins < self.spin_rounds {
            self.spins += 1;
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            std::thread::yield_now();
            return;
        }
        std::thread::park_timeout(max_wait);
    }
}

impl Default for Idle {
    fn default() -> Self {
        Idle::new()
    }
}

/// Milliseconds since the Unix epoch, for broker timestamps.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `now + ms`, saturating far in the future.
pub fn deadline_after(now: Instant, ms: u64) -> Instant {
    now.checked_add(Duration::from_millis(ms))
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}
