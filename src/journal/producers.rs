//! Producer states: what the broker remembers of each (producer,
//! partition) to store a producer's batches exactly once and in order
//! (docs/protocol.md §9.1).
//!
//! A state holds the producer's current epoch on the partition, the
//! sequence its next batch must carry, and where its last `window` batches
//! landed (to answer a retry like its first copy). The rules, for a batch
//! of producer `p`, epoch `e`, sequence `s`:
//!
//! | the broker holds for `p` on the partition | answer |
//! |---|---|
//! | nothing (never seen, evicted, or idle past the expiry) | `s` = 0: store; else `UnknownProducer` |
//! | an epoch above `e` | `ProducerFenced` |
//! | an epoch below `e` | `s` = 0: store (the new epoch replaces the state); else `OutOfOrderSequence` |
//! | epoch `e`, next sequence `n` | `s` = `n`: store; `s` stored and remembered: the first copy's place; `s` < `n` but forgotten: `StaleSequence`; otherwise `OutOfOrderSequence` |
//!
//! States live in one table for all partitions, threaded on a list from
//! the least to the most recently used: a batch moves its state to the
//! recent end in O(1), states idle longer than the expiry are dropped from
//! the old end as batches land (each state is dropped at most once per
//! creation, so the work is amortised O(1) per batch), and creating a state
//! beyond the cap drops the least recently used one. Nothing is allocated
//! per batch: a window grows to its bound once and is reused by the next
//! state created in its slot.
//!
//! Time is the batches' own append time, so the journal decides the
//! states: replaying the journal (recovery, a follower) rebuilds exactly
//! the states the leader had, evictions included.
//!
//! [`ProducerStates::save`] and [`ProducerStates::restore`] take the table
//! out and back in whole (for a catalog snapshot, `journal/snapshot.rs`):
//! the states in recency order and the clock, which is all that decides
//! the answers and the evictions to come, so a restored table goes on
//! exactly as the one saved would have.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

/// Default number of batches remembered per producer and partition to
/// recognise a retry; the Rust client's default
/// `max_in_flight_per_partition` matches it.
pub const PRODUCER_WINDOW_DEFAULT: usize = 64;
/// Largest window a broker accepts.
pub const PRODUCER_WINDOW_MAX: usize = 4096;
/// Default time after its last batch for which a producer's state on a
/// partition is kept: 7 days, as Kafka keeps its producer states
/// (`transactional.id.expiration.ms`).
pub const PRODUCER_IDLE_EXPIRY_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;
/// Default cap on (producer, partition) states, all partitions together.
/// A state takes about [`STATE_BYTES`] plus [`LANDED_BYTES`] per batch of
/// its window, some 2.7 KB with the default window: the cap bounds them to
/// about 44 MB, the order of the broker's rings and write cache, while
/// leaving room for, say, 160 producers writing to 100 partitions each.
pub const PRODUCER_STATES_MAX_DEFAULT: usize = 16 * 1024;
/// Largest cap a broker accepts.
pub const PRODUCER_STATES_MAX_LIMIT: usize = 1 << 24;
/// Memory of one remembered batch.
pub const LANDED_BYTES: usize = std::mem::size_of::<Landed>();
/// Memory of one state besides its window: the state itself and its entry
/// in the lookup table (a `HashMap` keeps about one eighth spare).
pub const STATE_BYTES: usize =
    std::mem::size_of::<State>() + (std::mem::size_of::<(Key, u32)>() + 1) * 8 / 7;

const _: () =
    assert!(PRODUCER_WINDOW_DEFAULT >= 1 && PRODUCER_WINDOW_DEFAULT <= PRODUCER_WINDOW_MAX);
const _: () = assert!(
    PRODUCER_STATES_MAX_DEFAULT >= 1 && PRODUCER_STATES_MAX_DEFAULT <= PRODUCER_STATES_MAX_LIMIT
);
// The memory the docs give (docs/protocol.md §9.1, the default cap): 40
// bytes a remembered batch, at most 128 a state besides, so at most 46 MiB
// for the default cap of default windows.
const _: () = assert!(LANDED_BYTES == 40);
const _: () = assert!(STATE_BYTES <= 128);
const _: () = assert!(
    (STATE_BYTES + PRODUCER_WINDOW_DEFAULT * LANDED_BYTES) * PRODUCER_STATES_MAX_DEFAULT
        <= 46 * 1024 * 1024
);
// Slots are numbered with u32, and `NIL` is not one of them.
const _: () = assert!(PRODUCER_STATES_MAX_LIMIT < u32::MAX as usize);

/// The bounds of the producer states (the broker's `producer_window`,
/// `producer_idle_expiry_ms` and `producer_states_max` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    /// Batches remembered per (producer, partition).
    pub window: usize,
    /// A state whose last batch is older than this is forgotten.
    pub idle_expiry_ms: u64,
    /// Most states kept; creating one more drops the least recently used.
    pub states_max: usize,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        ProducerLimits {
            window: PRODUCER_WINDOW_DEFAULT,
            idle_expiry_ms: PRODUCER_IDLE_EXPIRY_MS_DEFAULT,
            states_max: PRODUCER_STATES_MAX_DEFAULT,
        }
    }
}

/// Where an earlier batch of a producer landed.
///
/// `first_seq..=last_seq` are the sequences the batch took. hutong counts
/// batches, so both are the batch's `producer_seq`; a Kafka listener, whose
/// sequences count records, would put `baseSequence` and
/// `baseSequence + recordCount - 1` there (docs/protocol.md §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// The batch's first producer sequence.
    pub first_seq: u64,
    /// Its last producer sequence.
    pub last_seq: u64,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Journal position one past it.
    pub end: u64,
    /// When the broker appended it, Unix ms.
    pub append_time_ms: i64,
}

/// What the broker makes of a producer's batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next batch of its producer (or one without producer id): store
    /// it.
    New,
    /// A retry of a batch already stored: answer with where it landed.
    Duplicate(Landed),
    /// Below the producer's next sequence but older than the remembered
    /// window: it may be a duplicate, so it is refused rather than stored
    /// twice (`StaleSequence`).
    Stale,
    /// Neither the next sequence nor a stored one: a gap, or a new epoch
    /// that does not start at 0 (`OutOfOrderSequence`).
    OutOfOrder,
    /// No state for the producer on the partition, and the sequence is not
    /// 0 (`UnknownProducer`).
    UnknownProducer,
    /// The epoch is older than the producer's on the partition
    /// (`ProducerFenced`).
    Fenced,
}

/// A batch's producer fields, as the producer states see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// Producer id; 0 = none.
    pub id: u64,
    /// Producer epoch.
    pub epoch: u32,
    /// First producer sequence.
    pub first_seq: u64,
}

/// Which state: a producer on a partition (by topic id, which stays
/// valid when topics are removed, unlike a catalog slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The topic's id.
    pub topic_id: u32,
    /// The partition.
    pub partition: u32,
    /// The producer id (never 0).
    pub producer_id: u64,
}

/// One producer state as a snapshot saves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// Whose state.
    pub key: Key,
    /// The producer's epoch on the partition.
    pub epoch: u32,
    /// The sequence its next batch in `epoch` must carry.
    pub next_seq: u64,
    /// Append time of its latest batch, for the idle expiry.
    pub last_ms: i64,
    /// Its remembered batches. Oldest first.
    pub window: Vec<Landed>,
}

/// Every producer state, least recently used first, and the expiry clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedStates {
    /// The latest append time landed (`i64::MIN` before the first).
    pub clock_ms: i64,
    /// The states, least recently used first.
    pub states: Vec<SavedState>,
}

impl Default for SavedStates {
    /// What a table without states saves: the clock of
    /// [`ProducerStates::new`] as well as no state.
    fn default() -> Self {
        SavedStates {
            clock_ms: i64::MIN,
            states: Vec::new(),
        }
    }
}

/// No slot: the end of the recency list.
const NIL: u32 = u32::MAX;

/// One producer's state on one partition.
struct State {
    key: Key,
    epoch: u32,
    /// The sequence its next batch in `epoch` must carry.
    next_seq: u64,
    /// Its last batches, oldest first, contiguous in sequence.
    window: VecDeque<Landed>,
    /// Append time of its latest batch, for the idle expiry.
    last_ms: i64,
    /// Neighbours on the recency list (slot numbers, `NIL` at the ends).
    older: u32,
    newer: u32,
}

/// Every producer state of the journal.
pub struct ProducerStates {
    limits: ProducerLimits,
    by_key: HashMap<Key, u32>,
    /// States by slot; a free slot keeps its window's memory for reuse.
    slots: Vec<State>,
    free: Vec<u32>,
    /// Ends of the recency list.
    oldest: u32,
    newest: u32,
    /// The latest append time landed: the clock of the idle expiry.
    clock_ms: i64,
}

impl ProducerStates {
    /// No state yet.
    pub fn new(limits: ProducerLimits) -> ProducerStates {
        debug_assert!(limits.window >= 1 && limits.states_max >= 1);
        ProducerStates {
            limits: ProducerLimits {
                window: limits.window.clamp(1, PRODUCER_WINDOW_MAX),
                states_max: limits.states_max.clamp(1, PRODUCER_STATES_MAX_LIMIT),
                ..limits
            },
            by_key: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            oldest: NIL,
            newest: NIL,
            clock_ms: i64::MIN,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> ProducerLimits {
        self.limits
    }

    /// Number of states held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no state is held.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// True when a state last used at `last_ms` is too old at `now_ms`.
    /// (In i128: append times come from the journal and may be absurd.)
    fn expired(&self, last_ms: i64, now_ms: i64) -> bool {
        i128::from(now_ms) - i128::from(last_ms) > i128::from(self.limits.idle_expiry_ms)
    }

    /// The live state of `key` at `now_ms`.
    fn live(&self, key: &Key, now_ms: i64) -> Option<&State> {
        let slot = *self.by_key.get(key)?;
        let s = &self.slots[slot as usize];
        (!self.expired(s.last_ms, now_ms)).then_some(s)
    }

    /// Classifies a batch of producer `batch.id` (0: no identity, always
    /// new) on the partition of `key` at broker time `now_ms`.
    pub fn check(&self, key: &Key, batch: ProducerBatch, now_ms: i64) -> SeqCheck {
        if batch.id == 0 {
            return SeqCheck::New;
        }
        let Some(s) = self.live(key, now_ms) else {
            return if batch.first_seq == 0 {
                SeqCheck::New
            } else {
                SeqCheck::UnknownProducer
            };
        };
        let seq = batch.first_seq;
        if batch.epoch < s.epoch {
            return SeqCheck::Fenced;
        }
        if batch.epoch > s.epoch {
            return if seq == 0 {
                SeqCheck::New
            } else {
                SeqCheck::OutOfOrder
            };
        }
        if seq == s.next_seq {
            return SeqCheck::New;
        }
        if seq > s.next_seq {
            return SeqCheck::OutOfOrder;
        }
        // Below the next sequence: stored, remembered or not. The window is
        // contiguous and ordered, so a binary search finds the batch.
        match s.window.front() {
            Some(oldest) if seq >= oldest.first_seq => {
                let at = s.window.partition_point(|l| l.last_seq < seq);
                match s.window.get(at) {
                    Some(l) if l.first_seq == seq => SeqCheck::Duplicate(*l),
                    // Inside a stored batch but not where it starts: not a
                    // copy of anything stored.
                    _ => SeqCheck::OutOfOrder,
                }
            }
            _ => SeqCheck::Stale,
        }
    }

    /// Records that a batch of producer `batch.id` (not 0) landed on the
    /// partition of `key`. The journal is the authority: whatever the
    /// checks said when the batch was appended, landing it makes its epoch
    /// the state's and its sequences the last ones, so that replaying a
    /// journal always rebuilds the same states.
    pub fn land(&mut self, key: Key, batch: ProducerBatch, landed: Landed) {
        debug_assert_ne!(batch.id, 0);
        let now = landed.append_time_ms;
        self.clock_ms = self.clock_ms.max(now);
        let slot = match self.by_key.get(&key) {
            Some(&slot) => {
                self.unlink(slot);
                let stale = self.expired(self.slots[slot as usize].last_ms, now);
                let s = &mut self.slots[slot as usize];
                if stale || s.epoch != batch.epoch {
                    // An expired state is as good as none; a new epoch
                    // starts its sequences afresh.
                    s.window.clear();
                    s.epoch = batch.epoch;
                }
                slot
            }
            None => self.create(key, batch.epoch),
        };
        let window = self.limits.window;
        let s = &mut self.slots[slot as usize];
        if s.window.len() >= window {
            s.window.pop_front();
        }
        s.window.push_back(landed);
        s.next_seq = landed.last_seq.saturating_add(1);
        s.last_ms = now;
        self.push_newest(slot);
        self.expire_oldest();
    }

    /// Takes a slot for a new state of `key`, dropping the least recently
    /// used state when the cap is reached.
    fn create(&mut self, key: Key, epoch: u32) -> u32 {
        if self.by_key.len() >= self.limits.states_max && self.oldest != NIL {
            self.evict(self.oldest);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot as usize];
                s.key = key;
                s.epoch = epoch;
                s.next_seq = 0;
                s.window.clear();
                slot
            }
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(State {
                    key,
                    epoch,
                    next_seq: 0,
                    window: VecDeque::new(),
                    last_ms: 0,
                    older: NIL,
                    newer: NIL,
                });
                slot
            }
        };
        self.by_key.insert(key, slot);
        slot
    }

    /// Drops the state in `slot` (on the recency list).
    fn evict(&mut self, slot: u32) {
        self.unlink(slot);
        let s = &mut self.slots[slot as usize];
        self.by_key.remove(&s.key);
        s.window.clear();
        self.free.push(slot);
    }

    /// Drops the least recently used states while they are idle past the
    /// expiry.
    fn expire_oldest(&mut self) {
        while self.oldest != NIL
            && self.expired(self.slots[self.oldest as usize].last_ms, self.clock_ms)
        {
            self.evict(self.oldest);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (older, newer) = {
            let s = &self.slots[slot as usize];
            (s.older, s.newer)
        };
        match older {
            NIL if self.oldest == slot => self.oldest = newer,
            NIL => return, // not on the list
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
        let s = &mut self.slots[slot as usize];
        s.older = NIL;
        s.newer = NIL;
    }

    /// Puts `slot` (not on the list) at the least recently used end.
    fn push_oldest(&mut self, slot: u32) {
        let oldest = self.oldest;
        {
            let s = &mut self.slots[slot as usize];
            s.older = NIL;
            s.newer = oldest;
        }
        match oldest {
            NIL => self.newest = slot,
            o => self.slots[o as usize].older = slot,
        }
        self.oldest = slot;
    }

    fn push_newest(&mut self, slot: u32) {
        let newest = self.newest;
        {
            let s = &mut self.slots[slot as usize];
            s.older = newest;
            s.newer = NIL;
        }
        match newest {
            NIL => self.oldest = slot,
            n => self.slots[n as usize].newer = slot,
        }
        self.newest = slot;
    }

    /// The states in recency order (least recently used first) and the
    /// clock: everything [`ProducerStates::restore`] needs to go on as
    /// this table would. O(states + remembered batches).
    pub fn save(&self) -> SavedStates {
        let mut states = Vec::with_capacity(self.by_key.len());
        let mut at = self.oldest;
        while at != NIL {
            let s = &self.slots[at as usize];
            states.push(SavedState {
                key: s.key,
                epoch: s.epoch,
                next_seq: s.next_seq,
                last_ms: s.last_ms,
                window: s.window.iter().copied().collect(),
            });
            at = s.newer;
        }
        SavedStates {
            clock_ms: self.clock_ms,
            states,
        }
    }

    /// A table holding `saved` under `limits`, which may differ from the
    /// limits the states were saved under: each window keeps its newest
    /// `limits.window` batches, the least recently used states beyond
    /// `limits.states_max` are dropped, and so are those idle past the
    /// expiry at the saved clock, from the least recently used end as
    /// [`ProducerStates::land`] drops them (a state idle past the expiry
    /// behind a live one stays, as it would have in the table saved, and
    /// [`ProducerStates::check`] takes it for unknown). A key saved twice
    /// is restored once, from its later (more recently used) copy.
    ///
    /// Restored under the limits it was saved under, the table answers
    /// every check and goes on landing batches, evicting and expiring
    /// states exactly as the table saved would have. O(states +
    /// remembered batches); never panics, whatever `saved` holds.
    pub fn restore(limits: ProducerLimits, saved: &SavedStates) -> ProducerStates {
        let mut p = ProducerStates::new(limits);
        let ProducerLimits {
            window, states_max, ..
        } = p.limits;
        p.clock_ms = saved.clock_ms;
        let kept = saved.states.len().min(states_max);
        p.by_key.reserve(kept);
        p.slots.reserve(kept);
        // Newest first: the first copy met of a key is its latest, and the
        // cap keeps the most recently used.
        for s in saved.states.iter().rev() {
            if p.by_key.len() >= states_max {
                break;
            }
            let slot = p.slots.len() as u32;
            match p.by_key.entry(s.key) {
                Entry::Occupied(_) => continue,
                Entry::Vacant(e) => e.insert(slot),
            };
            let newest = &s.window[s.window.len().saturating_sub(window)..];
            p.slots.push(State {
                key: s.key,
                epoch: s.epoch,
                next_seq: s.next_seq,
                window: newest.iter().copied().collect(),
                last_ms: s.last_ms,
                older: NIL,
                newer: NIL,
            });
            p.push_oldest(slot);
        }
        p.expire_oldest();
        p
    }

    /// Forgets every batch at or above journal position `at`, and every
    /// state of the topics `removed`. A state keeps its epoch, and its next
    /// sequence becomes that of the first batch it forgets (the producer
    /// resends from there); one left with neither a remembered batch nor an
    /// earlier sequence goes. O(states): truncations are rare.
    ///
    /// Recovery of the journal cut at `at` rebuilds fuller windows (batches
    /// below the cut that had left the window), and when a cut takes a
    /// whole window, it knows the exact next sequence where this keeps the
    /// window's oldest. Neither matters to a producer that keeps at most
    /// `window` batches unanswered per partition: every batch it may
    /// resend is at or after the window's oldest, so it gets the same
    /// answer from both. (A window taken whole means more than `window`
    /// batches of one producer were in the cut tail, all acknowledged below
    /// QoS `all` but one window's worth: those are lost with the old
    /// leader, as such acknowledgements may be.)
    pub fn cut(&mut self, at: u64, removed: &[u32]) {
        for slot in 0..self.slots.len() as u32 {
            let key = self.slots[slot as usize].key;
            if self.by_key.get(&key) != Some(&slot) {
                // A free slot.
                continue;
            }
            if removed.contains(&key.topic_id) {
                self.evict(slot);
                continue;
            }
            let s = &mut self.slots[slot as usize];
            let mut first_cut = None;
            while s.window.back().is_some_and(|l| l.end > at) {
                first_cut = s.window.pop_back().map(|l| l.first_seq);
            }
            if let Some(seq) = first_cut {
                s.next_seq = seq;
                if s.window.is_empty() && seq == 0 {
                    self.evict(slot);
                }
            }
        }
        // A state evicted from the least recently used end may leave one
        // idle past the expiry there, which a table restored from a save
        // would drop at once (`restore`): drop it here too, so that both
        // go on alike.
        self.expire_oldest();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    fn key(producer_id: u64) -> Key {
        Key {
            topic_id: 1,
            partition: 0,
            producer_id,
        }
    }

    fn batch(id: u64, epoch: u32, seq: u64) -> ProducerBatch {
        ProducerBatch {
            id,
            epoch,
            first_seq: seq,
        }
    }

    /// Where batch `seq` lands in these tests: offset `seq`, its end at
    /// `100 * (seq + 1)`.
    fn landed(seq: u64, append_time_ms: i64) -> Landed {
        Landed {
            first_seq: seq,
            last_seq: seq,
            base_offset: seq,
            end: 100 * (seq + 1),
            append_time_ms,
        }
    }

    fn states(window: usize, states_max: usize) -> ProducerStates {
        ProducerStates::new(ProducerLimits {
            window,
            idle_expiry_ms: 7 * DAY_MS as u64,
            states_max,
        })
    }

    /// Lands batches `seqs` of producer `id`, epoch `epoch`, at time `t`.
    fn land_all(p: &mut ProducerStates, id: u64, epoch: u32, seqs: std::ops::Range<u64>, t: i64) {
        for seq in seqs {
            assert_eq!(p.check(&key(id), batch(id, epoch, seq), t), SeqCheck::New);
            p.land(key(id), batch(id, epoch, seq), landed(seq, t));
        }
    }

    #[test]
    fn a_batch_without_producer_id_is_always_new() {
        let p = states(4, 10);
        assert_eq!(p.check(&key(0), batch(0, 0, 9), 0), SeqCheck::New);
        assert!(p.is_empty());
    }

    #[test]
    fn an_unknown_producer_starts_at_sequence_zero_of_any_epoch() {
        let p = states(4, 10);
        assert_eq!(p.check(&key(7), batch(7, 0, 0), 0), SeqCheck::New);
        assert_eq!(p.check(&key(7), batch(7, 5, 0), 0), SeqCheck::New);
        assert_eq!(
            p.check(&key(7), batch(7, 0, 1), 0),
            SeqCheck::UnknownProducer
        );
    }

    #[test]
    fn the_next_batch_must_carry_the_next_sequence() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 0, 0..3, 0);
        assert_eq!(p.check(&key(7), batch(7, 0, 3), 0), SeqCheck::New);
        assert_eq!(
            p.check(&key(7), batch(7, 0, 5), 0),
            SeqCheck::OutOfOrder,
            "a gap"
        );
        assert_eq!(
            p.check(&key(8), batch(8, 0, 3), 0),
            SeqCheck::UnknownProducer,
            "another producer has its own sequence"
        );
    }

    #[test]
    fn a_lower_sequence_never_stored_is_out_of_order() {
        // The finding of issue 9: 15 after 10 and 20 was stored. With
        // strict sequences 20 cannot follow 10, and neither can 15.
        let mut p = states(64, 10);
        land_all(&mut p, 7, 0, 0..11, 0);
        assert_eq!(p.check(&key(7), batch(7, 0, 20), 0), SeqCheck::OutOfOrder);
        assert_eq!(p.check(&key(7), batch(7, 0, 15), 0), SeqCheck::OutOfOrder);
    }

    #[test]
    fn a_batch_refused_before_landing_leaves_a_gap_the_next_cannot_jump() {
        // Batch 5 got StorageFull (or StorageError, CorruptBatch, or a
        // NotLeader from a leader whose hand-over was abandoned): it did
        // not land. Batch 6 must wait for it.
        let mut p = states(64, 10);
        land_all(&mut p, 7, 0, 0..5, 0);
        assert_eq!(p.check(&key(7), batch(7, 0, 6), 0), SeqCheck::OutOfOrder);
        land_all(&mut p, 7, 0, 5..7, 0);
    }

    #[test]
    fn a_retry_within_the_window_is_answered_like_the_first_copy() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 0, 0..6, 0);
        assert_eq!(
            p.check(&key(7), batch(7, 0, 3), 0),
            SeqCheck::Duplicate(landed(3, 0))
        );
        assert_eq!(
            p.check(&key(7), batch(7, 0, 5), 0),
            SeqCheck::Duplicate(landed(5, 0))
        );
        assert_eq!(
            p.check(&key(7), batch(7, 0, 1), 0),
            SeqCheck::Stale,
            "stored, but older than the window"
        );
    }

    #[test]
    fn a_new_epoch_starts_at_zero_and_replaces_the_old_one() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 0, 0..3, 0);
        assert_eq!(p.check(&key(7), batch(7, 1, 2), 0), SeqCheck::OutOfOrder);
        land_all(&mut p, 7, 1, 0..2, 0);
        assert_eq!(
            p.check(&key(7), batch(7, 0, 3), 0),
            SeqCheck::Fenced,
            "the old epoch is fenced"
        );
        assert_eq!(
            p.check(&key(7), batch(7, 0, 1), 0),
            SeqCheck::Fenced,
            "even a copy of one of its stored batches"
        );
        assert_eq!(
            p.check(&key(7), batch(7, 1, 1), 0),
            SeqCheck::Duplicate(landed(1, 0))
        );
        assert_eq!(p.check(&key(7), batch(7, 1, 2), 0), SeqCheck::New);
    }

    #[test]
    fn a_sequence_inside_a_stored_batch_but_not_its_start_is_out_of_order() {
        // Kafka counts records: a batch may take sequences 10..=14.
        let mut p = states(4, 10);
        let span = |first, last| Landed {
            first_seq: first,
            last_seq: last,
            ..landed(0, 0)
        };
        p.land(key(7), batch(7, 0, 0), span(0, 9));
        p.land(key(7), batch(7, 0, 10), span(10, 14));
        assert_eq!(p.check(&key(7), batch(7, 0, 15), 0), SeqCheck::New);
        assert_eq!(
            p.check(&key(7), batch(7, 0, 10), 0),
            SeqCheck::Duplicate(span(10, 14))
        );
        assert_eq!(p.check(&key(7), batch(7, 0, 12), 0), SeqCheck::OutOfOrder);
    }

    #[test]
    fn a_producer_idle_past_the_expiry_is_unknown_and_may_start_again() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 3, 0..3, 0);
        let later = 7 * DAY_MS + 1;
        assert_eq!(p.check(&key(7), batch(7, 3, 3), 7 * DAY_MS), SeqCheck::New);
        assert_eq!(
            p.check(&key(7), batch(7, 3, 3), later),
            SeqCheck::UnknownProducer
        );
        assert_eq!(
            p.check(&key(7), batch(7, 2, 0), later),
            SeqCheck::New,
            "nothing is fenced any more"
        );
        // Starting again in the same epoch does not meet the old window.
        land_all(&mut p, 7, 3, 0..2, later);
        assert_eq!(p.check(&key(7), batch(7, 3, 2), later), SeqCheck::New);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn idle_states_are_evicted_as_later_batches_land() {
        let mut p = states(4, 100);
        land_all(&mut p, 1, 0, 0..2, 0);
        land_all(&mut p, 2, 0, 0..2, DAY_MS);
        assert_eq!(p.len(), 2);
        // Producer 3 writes eight days later: producer 1 (7 days idle and a
        // bit) goes, producer 2 (idle 7 days exactly) stays.
        land_all(&mut p, 3, 0, 0..1, 8 * DAY_MS);
        assert_eq!(p.len(), 2);
        assert!(p.by_key.contains_key(&key(2)) && !p.by_key.contains_key(&key(1)));
        land_all(&mut p, 3, 0, 1..2, 8 * DAY_MS + 1);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_cap_evicts_the_least_recently_used_state() {
        let mut p = states(4, 3);
        land_all(&mut p, 1, 0, 0..1, 0);
        land_all(&mut p, 2, 0, 0..1, 0);
        land_all(&mut p, 3, 0, 0..1, 0);
        // Producer 1 writes again: producer 2 is now the least recent.
        land_all(&mut p, 1, 0, 1..2, 0);
        land_all(&mut p, 4, 0, 0..1, 0);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.check(&key(2), batch(2, 0, 1), 0),
            SeqCheck::UnknownProducer,
            "evicted"
        );
        assert_eq!(p.check(&key(1), batch(1, 0, 2), 0), SeqCheck::New);
        assert_eq!(p.check(&key(3), batch(3, 0, 1), 0), SeqCheck::New);
        // Evicted slots are reused: the table does not grow.
        land_all(&mut p, 5, 0, 0..1, 0);
        assert_eq!((p.len(), p.slots.len()), (3, 3));
    }

    #[test]
    fn the_recency_list_survives_any_order_of_touches() {
        let mut p = states(2, 4);
        let order = [1u64, 2, 3, 1, 4, 4, 2, 5, 1, 6, 3, 3, 7, 2];
        let mut next = HashMap::new();
        for id in order {
            let seq = next.entry(id).or_insert(0u64);
            if p.check(&key(id), batch(id, 0, *seq), 0) == SeqCheck::UnknownProducer {
                *seq = 0;
            }
            p.land(key(id), batch(id, 0, *seq), landed(*seq, 0));
            *seq += 1;
        }
        // Walk the list both ways: every state once, in opposite orders.
        let mut forward = Vec::new();
        let mut at = p.oldest;
        while at != NIL {
            forward.push(p.slots[at as usize].key.producer_id);
            at = p.slots[at as usize].newer;
        }
        let mut backward = Vec::new();
        let mut at = p.newest;
        while at != NIL {
            backward.push(p.slots[at as usize].key.producer_id);
            at = p.slots[at as usize].older;
        }
        backward.reverse();
        assert_eq!(forward, backward);
        assert_eq!(forward, vec![6, 3, 7, 2], "least recent first");
    }

    #[test]
    fn a_cut_forgets_the_batches_above_it_and_resumes_before_them() {
        let mut p = states(64, 10);
        land_all(&mut p, 7, 0, 0..10, 0);
        // Batches 6.. end above 650.
        p.cut(650, &[]);
        assert_eq!(p.check(&key(7), batch(7, 0, 6), 0), SeqCheck::New);
        assert_eq!(
            p.check(&key(7), batch(7, 0, 5), 0),
            SeqCheck::Duplicate(landed(5, 0))
        );
        assert_eq!(p.check(&key(7), batch(7, 0, 7), 0), SeqCheck::OutOfOrder);
    }

    #[test]
    fn a_cut_below_a_whole_window_keeps_the_epoch_and_the_next_sequence() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 2, 0..10, 0);
        // The window holds 6..=9; the cut takes them all.
        p.cut(600, &[]);
        assert_eq!(p.check(&key(7), batch(7, 2, 6), 0), SeqCheck::New);
        assert_eq!(p.check(&key(7), batch(7, 2, 5), 0), SeqCheck::Stale);
        assert_eq!(p.check(&key(7), batch(7, 1, 0), 0), SeqCheck::Fenced);
    }

    #[test]
    fn a_cut_deeper_than_the_window_resumes_at_the_oldest_batch_remembered() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 0, 0..10, 0);
        // The window holds 6..=9; the cut at 350 takes 3.. in truth. A
        // producer with at most 4 batches unanswered resends from 6 at the
        // lowest, which is stored next; anything older it cannot resend.
        p.cut(350, &[]);
        assert_eq!(p.check(&key(7), batch(7, 0, 6), 0), SeqCheck::New);
        assert_eq!(p.check(&key(7), batch(7, 0, 3), 0), SeqCheck::Stale);
    }

    #[test]
    fn a_cut_of_everything_a_producer_stored_forgets_it() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 0, 0..3, 0);
        land_all(&mut p, 8, 0, 0..1, 0);
        p.cut(0, &[]);
        assert!(p.is_empty());
        assert_eq!(
            p.check(&key(7), batch(7, 0, 3), 0),
            SeqCheck::UnknownProducer
        );
        // The list is consistent after the evictions.
        land_all(&mut p, 9, 0, 0..1, 0);
        assert_eq!((p.oldest, p.newest), (p.by_key[&key(9)], p.by_key[&key(9)]));
    }

    #[test]
    fn a_cut_forgets_the_states_of_removed_topics() {
        let mut p = states(4, 10);
        land_all(&mut p, 7, 0, 0..3, 0);
        p.cut(u64::MAX, &[1]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_table_without_states_saves_the_default() {
        assert_eq!(states(4, 10).save(), SavedStates::default());
        let restored = ProducerStates::restore(states(4, 10).limits(), &SavedStates::default());
        assert!(restored.is_empty());
        assert_eq!(restored.clock_ms, i64::MIN);
    }

    #[test]
    fn a_saved_table_lists_its_states_least_recently_used_first() {
        let mut p = states(2, 10);
        land_all(&mut p, 1, 0, 0..3, 10);
        land_all(&mut p, 2, 4, 0..1, 30);
        land_all(&mut p, 1, 0, 3..4, 20);
        let saved = p.save();
        assert_eq!(saved.clock_ms, 30, "the latest time, not the last");
        let ids: Vec<u64> = saved.states.iter().map(|s| s.key.producer_id).collect();
        assert_eq!(ids, vec![2, 1]);
        assert_eq!(
            saved.states[1],
            SavedState {
                key: key(1),
                epoch: 0,
                next_seq: 4,
                last_ms: 20,
                window: vec![landed(2, 10), landed(3, 20)],
            }
        );
    }

    #[test]
    fn restoring_under_smaller_limits_keeps_the_newest_batches_and_states() {
        let mut p = states(8, 10);
        land_all(&mut p, 1, 0, 0..6, 0);
        land_all(&mut p, 2, 0, 0..6, DAY_MS);
        land_all(&mut p, 3, 0, 0..6, 2 * DAY_MS);
        land_all(&mut p, 4, 0, 0..6, 3 * DAY_MS);
        let saved = p.save();
        let smaller = ProducerLimits {
            window: 3,
            // At the clock (day 3) producer 1 (day 0) is idle past it.
            idle_expiry_ms: (2 * DAY_MS) as u64,
            // Producer 2 is the least recently used of those left.
            states_max: 2,
        };
        let q = ProducerStates::restore(smaller, &saved);
        assert_eq!(q.limits(), smaller);
        assert_eq!(q.len(), 2);
        let now = 3 * DAY_MS;
        for id in [1, 2] {
            assert_eq!(
                q.check(&key(id), batch(id, 0, 6), now),
                SeqCheck::UnknownProducer,
                "producer {id} is dropped"
            );
        }
        for (id, t) in [(3, 2 * DAY_MS), (4, 3 * DAY_MS)] {
            assert_eq!(q.check(&key(id), batch(id, 0, 6), now), SeqCheck::New);
            assert_eq!(
                q.check(&key(id), batch(id, 0, 3), now),
                SeqCheck::Duplicate(landed(3, t)),
                "the window keeps the newest three"
            );
            assert_eq!(q.check(&key(id), batch(id, 0, 2), now), SeqCheck::Stale);
        }
        // The restored table is bounded by its own limits from then on.
        let mut q = q;
        land_all(&mut q, 5, 0, 0..1, now);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q.check(&key(3), batch(3, 0, 6), now),
            SeqCheck::UnknownProducer
        );
        assert_eq!(q.save().states[0].window.len(), 3);
    }

    #[test]
    fn restoring_under_larger_limits_keeps_everything_saved() {
        let mut p = states(2, 2);
        land_all(&mut p, 1, 0, 0..5, 0);
        land_all(&mut p, 2, 0, 0..5, 0);
        let saved = p.save();
        let q = ProducerStates::restore(
            ProducerLimits {
                window: 64,
                idle_expiry_ms: PRODUCER_IDLE_EXPIRY_MS_DEFAULT,
                states_max: 100,
            },
            &saved,
        );
        assert_eq!(q.save(), saved);
    }

    #[test]
    fn a_key_saved_twice_is_restored_from_its_later_copy() {
        let state = |epoch, next_seq| SavedState {
            key: key(7),
            epoch,
            next_seq,
            last_ms: 0,
            window: vec![],
        };
        let other = SavedState {
            key: key(8),
            ..state(0, 1)
        };
        let saved = SavedStates {
            clock_ms: 0,
            states: vec![state(1, 5), other.clone(), state(2, 9)],
        };
        let q = ProducerStates::restore(states(4, 10).limits(), &saved);
        assert_eq!(q.len(), 2);
        assert_eq!(q.check(&key(7), batch(7, 2, 9), 0), SeqCheck::New);
        assert_eq!(q.check(&key(7), batch(7, 1, 5), 0), SeqCheck::Fenced);
        // In the later copy's place on the recency list.
        assert_eq!(q.save().states, vec![other, state(2, 9)]);
    }

    /// What the property test does to a table, built once from a [`Op`]
    /// and done to both tables.
    #[derive(Debug, Clone, Copy)]
    enum Action {
        Land(Key, ProducerBatch, Landed),
        Cut(u64, Option<u32>),
    }

    /// One step of the property test's journal.
    #[derive(Debug, Clone)]
    enum Op {
        /// Producer `id` lands a batch on `partition` of topic `topic_id`
        /// in `epoch`, with sequence `seq` (None: one past the last it
        /// landed there), `dt_ms` after the previous batch (earlier when
        /// negative: append times may go back).
        Land {
            topic_id: u32,
            partition: u32,
            id: u64,
            epoch: u32,
            seq: Option<u64>,
            dt_ms: i64,
        },
        /// The journal is cut `back` batches from its end, removing topic
        /// 1 too when `remove`.
        Cut { back: u64, remove: bool },
    }

    /// The journal the ops build: where the next batch goes, the time,
    /// and each key's last sequence.
    #[derive(Default)]
    struct Journal {
        position: u64,
        now_ms: i64,
        last_seq: HashMap<Key, u64>,
    }

    const BATCH_BYTES: u64 = 100;
    const PROP_EXPIRY_MS: u64 = 100;

    impl Journal {
        fn action(&mut self, op: &Op) -> Action {
            match *op {
                Op::Land {
                    topic_id,
                    partition,
                    id,
                    epoch,
                    seq,
                    dt_ms,
                } => {
                    let key = Key {
                        topic_id,
                        partition,
                        producer_id: id,
                    };
                    let seq = seq.unwrap_or_else(|| self.last_seq.get(&key).map_or(0, |s| s + 1));
                    self.last_seq.insert(key, seq);
                    self.now_ms += dt_ms;
                    let landed = Landed {
                        first_seq: seq,
                        last_seq: seq,
                        base_offset: self.position / BATCH_BYTES,
                        end: self.position + BATCH_BYTES,
                        append_time_ms: self.now_ms,
                    };
                    self.position += BATCH_BYTES;
                    Action::Land(key, batch(id, epoch, seq), landed)
                }
                Op::Cut { back, remove } => {
                    self.position = self.position.saturating_sub(back * BATCH_BYTES);
                    Action::Cut(self.position, remove.then_some(1))
                }
            }
        }
    }

    fn act(p: &mut ProducerStates, action: Action) {
        match action {
            Action::Land(key, b, landed) => p.land(key, b, landed),
            Action::Cut(at, removed) => p.cut(at, removed.as_slice()),
        }
    }

    /// Both tables answer alike for every key, epoch and sequence the
    /// ops can use, around `now_ms` and the expiry.
    fn same_answers(a: &ProducerStates, b: &ProducerStates, now_ms: i64) {
        let expiry = PROP_EXPIRY_MS as i64;
        for topic_id in 0..2 {
            for partition in 0..2 {
                for id in 1..=3 {
                    let key = Key {
                        topic_id,
                        partition,
                        producer_id: id,
                    };
                    for epoch in 0..3 {
                        for seq in 0..8 {
                            for now in [now_ms, now_ms + expiry, now_ms + expiry + 1] {
                                let probe = batch(id, epoch, seq);
                                assert_eq!(
                                    a.check(&key, probe, now),
                                    b.check(&key, probe, now),
                                    "{key:?} epoch {epoch} seq {seq} at {now}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let land = (
            0..2u32,
            0..2u32,
            1..=3u64,
            0..3u32,
            prop_oneof![3 => Just(None), 1 => (0..6u64).prop_map(Some)],
            -30..80i64,
        )
            .prop_map(|(topic_id, partition, id, epoch, seq, dt_ms)| Op::Land {
                topic_id,
                partition,
                id,
                epoch,
                seq,
                dt_ms,
            });
        let cut = (0..4u64, prop::bool::weighted(0.25))
            .prop_map(|(back, remove)| Op::Cut { back, remove });
        prop_oneof![8 => land, 1 => cut]
    }

    proptest! {
        #[test]
        fn a_restored_table_answers_and_goes_on_like_the_saved_one(
            window in 1..=4usize,
            states_max in 1..=5usize,
            ops in prop::collection::vec(op(), 0..40),
            split in any::<prop::sample::Index>(),
        ) {
            let limits = ProducerLimits { window, idle_expiry_ms: PROP_EXPIRY_MS, states_max };
            let mut journal = Journal::default();
            let mut saved = ProducerStates::new(limits);
            let split = split.index(ops.len() + 1);
            for op in &ops[..split] {
                act(&mut saved, journal.action(op));
            }
            let mut restored = ProducerStates::restore(limits, &saved.save());
            prop_assert_eq!(restored.save(), saved.save());
            same_answers(&saved, &restored, journal.now_ms);
            for op in &ops[split..] {
                let action = journal.action(op);
                act(&mut saved, action);
                act(&mut restored, action);
                same_answers(&saved, &restored, journal.now_ms);
                prop_assert_eq!(restored.len(), saved.len());
            }
            prop_assert_eq!(restored.save(), saved.save());
        }
    }
}
