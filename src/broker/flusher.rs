//! The flusher: makes the journal durable in group commits.
//!
//! Each round reads W, fdatasyncs every segment file that holds bytes
//! between what it synced last and W (one call per file covers every
//! request appended since the last round, however many), then publishes
//! F = W. It also writes the checkpoint: when a new topic's control record
//! became durable, every `checkpoint_interval_ms`, and at shutdown.
//!
//! The rule it keeps: F never exceeds a byte that this process has
//! fdatasync'd, or that recovery synced (or found below the checkpoint)
//! when the broker started. It does not trust a list of "dirty" files
//! handed to it: it keeps every segment file and the position `synced`
//! below which everything was synced, and derives the files to sync from
//! the range [synced, W).
//!
//! A cut of the journal's tail (in a replication group) happens under the
//! flush gate (`Shared::flush_gate`): the writer bumps the gate's
//! generation, lowers W and F, cuts the files and rewrites the checkpoint
//! while it holds the gate. The flusher publishes F and writes checkpoints
//! only while holding the gate and only when the generation is the one
//! whose `Reset` it has taken in, so nothing it synced or learned before a
//! cut can be published after it. The writer never waits for the flusher
//! beyond that lock.

use super::shared::{Idle, Shared, Stage};
use crate::journal::checkpoint::{self, Checkpoint};
use crate::journal::log::SegmentFile;
use crate::journal::snapshot::CatalogSnapshot;
use crate::journal::topic::TopicMeta;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the writer tells the flusher.
pub enum FlusherEvent {
    /// A new segment file was started; older ones are complete.
    Segment(SegmentFile),
    /// A topic was created; its control record ends at `end`.
    Topic {
        /// The new topic.
        meta: TopicMeta,
        /// Position one past its control record.
        end: u64,
    },
    /// The catalog at the writer's end: saved in the first checkpoint
    /// whose durable position reaches it.
    Snapshot(Arc<CatalogSnapshot>),
    /// The journal was cut at `at` under gate generation `generation`:
    /// its segment files and topics now.
    Reset {
        /// The gate generation of the cut.
        generation: u64,
        /// The cut position.
        at: u64,
        /// Every segment file, oldest first.
        files: Vec<SegmentFile>,
        /// Every topic left, with the position of its control record
        /// (`None` for a topic known only from the checkpoint).
        topics: Vec<(TopicMeta, Option<u64>)>,
        /// The id the next topic gets (ids are never reused).
        next_topic_id: u32,
    },
}

/// The flusher's state.
pub struct Flusher {
    dir: PathBuf,
    /// Every segment file, oldest first.
    files: Vec<SegmentFile>,
    /// Every journal byte below this position was fdatasync'd.
    synced: u64,
    /// The flush gate generation whose journal `files` and `synced`
    /// describe.
    generation: u64,
    topics: Vec<TopicMeta>,
    /// Topics whose control record is not durable yet, with a position
    /// F must pass for it to be.
    topics_pending: Vec<(TopicMeta, u64)>,
    next_topic_id: u32,
    checkpointed: Option<u64>,
    checkpoint_interval: Duration,
    /// A checkpoint is due once F moved this far past the last one.
    checkpoint_bytes: u64,
    /// Where bytes are counted from until the next checkpoint after a
    /// start or a cut: the checkpoint recovery started from, or the cut.
    recovered_at: u64,
    last_checkpoint: Instant,
    /// The writer's snapshots waiting for F to reach them: the oldest (the
    /// first F reaches) and the newest at most.
    snapshots_waiting: std::collections::VecDeque<Arc<CatalogSnapshot>>,
    /// Position of the snapshot file last written (0: none by this
    /// process).
    snapshot_saved: u64,
    /// Least time between two syncs nobody waits for (0: none).
    pace: Duration,
    /// When the last sync ended.
    last_sync: Instant,
    /// fdatasync(2) of one file; tests record the calls.
    sync_file: fn(&File) -> std::io::Result<()>,
}

impl Flusher {
    /// A flusher for a journal whose segments are `files`, durable below
    /// `synced` (recovery syncs what the checkpoint does not vouch for),
    /// and whose recovered topics are `topics`.
    pub fn new(
        dir: PathBuf,
        files: &[SegmentFile],
        synced: u64,
        topics: Vec<TopicMeta>,
        next_topic_id: u32,
        checkpoint_interval: Duration,
    ) -> Flusher {
        // Only the file holding `synced` and later ones are ever synced
        // again: holding older ones would keep their blocks allocated
        // after retention deletes them.
        let holder = files.partition_point(|f| f.0 <= synced).saturating_sub(1);
        Flusher {
            dir,
            files: files[holder..].to_vec(),
            synced,
            generation: 0,
            topics,
            topics_pending: Vec::new(),
            next_topic_id,
            checkpointed: None,
            checkpoint_interval,
            checkpoint_bytes: u64::MAX,
            recovered_at: synced,
            last_checkpoint: Instant::now(),
            snapshots_waiting: std::collections::VecDeque::new(),
            snapshot_saved: 0,
            pace: Duration::ZERO,
            last_sync: Instant::now(),
            sync_file: File::sync_data,
        }
    }

    /// Also checkpoints whenever `bytes` more became durable since the
    /// last checkpoint (by default only by time); `on_disk` is the position
    /// of the checkpoint recovery started from, where the first count
    /// begins (a crash soon after a start must not leave recovery the
    /// recovered tail plus `bytes`).
    pub fn with_checkpoint_bytes(mut self, bytes: u64, on_disk: u64) -> Flusher {
        self.checkpoint_bytes = bytes.max(1);
        self.recovered_at = self.recovered_at.min(on_disk);
        self
    }

    /// Paces the syncs nobody waits for at least `pace` apart (see
    /// [`pace_left`]).
    pub fn with_pace(mut self, pace: Duration) -> Flusher {
        self.pace = pace;
        self
    }

    /// Position below which every byte was fdatasync'd.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Takes in an event from the writer. Returns true for a `Reset`: the
    /// caller must read W again before syncing, since the W it holds may
    /// predate the cut.
    pub fn event(&mut self, e: FlusherEvent) -> bool {
        match e {
            FlusherEvent::Segment(f) => self.files.push(f),
            FlusherEvent::Snapshot(snap) => {
                // While F does not reach them (a failed fdatasync stops
                // it for good) only the first it would reach and the
                // newest are worth their memory.
                if self.snapshots_waiting.len() >= 2 {
                    self.snapshots_waiting.pop_back();
                }
                self.snapshots_waiting.push_back(snap);
            }
            FlusherEvent::Topic { meta, end } => {
                self.next_topic_id = self.next_topic_id.max(meta.id.saturating_add(1));
                self.topics_pending.push((meta, end));
            }
            FlusherEvent::Reset {
                generation,
                at,
                files,
                topics,
                next_topic_id,
            } => {
                self.generation = generation;
                self.synced = self.synced.min(at);
                // Counted from below the cut until the next checkpoint.
                self.recovered_at = self.recovered_at.min(at);
                self.files = files;
                self.topics.clear();
                self.topics_pending.clear();
                // F is a batch boundary, so a control record starting below
                // it is durable whole; one at or above it is pending until
                // F passes its first byte.
                for (meta, created_at) in topics {
                    match created_at {
                        Some(p) if p >= self.synced => self.topics_pending.push((meta, p + 1)),
                        _ => self.topics.push(meta),
                    }
                }
                self.next_topic_id = next_topic_id;
                self.checkpointed = None;
                // Snapshots above the cut describe batches that are gone.
                self.snapshots_waiting.retain(|s| s.position <= at);
                return true;
            }
        }
        false
    }

    /// Makes everything below `w` durable: fdatasyncs every segment file
    /// holding bytes in [synced, w).
    ///
    /// # Errors
    /// The fdatasync error; nothing above the old `synced` may then be
    /// called durable.
    pub fn sync(&mut self, w: u64) -> std::io::Result<()> {
        if w <= self.synced {
            return Ok(());
        }
        // The file holding byte `synced` (the last starting at or below
        // it), then every later one starting below `w`.
        let first = self
            .files
            .partition_point(|f| f.0 <= self.synced)
            .saturating_sub(1);
        for (start, file) in &self.files[first..] {
            if *start >= w {
                break;
            }
            (self.sync_file)(file)?;
        }
        self.synced = w;
        // Files wholly below what is synced are never synced again (a cut
        // hands over the files it needs in its `Reset`): let go of them, so
        // that retention's deletion frees their blocks.
        let holder = self.files.partition_point(|f| f.0 <= w).saturating_sub(1);
        self.files.drain(..holder);
        Ok(())
    }

    /// One group commit: syncs up to `w` and publishes F = `w` when F is
    /// below it, waking the stages that wait for F. Returns whether it did
    /// any work.
    pub fn flush_to(&mut self, shared: &Shared, w: u64) -> bool {
        // F, not `synced`, decides: a publication refused because of a
        // cut leaves F below what is synced already.
        if w <= shared.positions.flushed.get() || shared.storage_failed.load(Ordering::Acquire) {
            return false;
        }
        match self.sync(w) {
            Ok(()) => {
                if self.publish(shared, w) {
                    // QoS `flushed` waits for F alone, in a group too (where
                    // no other stage wakes the responder for it).
                    shared.wake(Stage::Responder);
                    shared.wake(Stage::Replicator);
                    if shared.cluster.is_clustered() {
                        // The writer runs the consensus node, which counts
                        // this node's flushed position toward C.
                        shared.wake(Stage::Writer);
                    }
                }
            }
            Err(e) => {
                // After a failed fdatasync the page cache state is unknown;
                // never claim durability again in this process.
                crate::log!("fdatasync failed, flushed requests will fail: {e}");
                shared.storage_failed.store(true, Ordering::Release);
                shared.wake(Stage::Responder);
            }
        }
        true
    }

    /// Publishes F = `w` when the journal did not change under the flusher
    /// since its last `Reset` (see the module documentation). Returns
    /// whether it published.
    pub fn publish(&self, shared: &Shared, w: u64) -> bool {
        let gate = shared.lock_flush_gate();
        if *gate != self.generation {
            return false;
        }
        if w > shared.positions.flushed.get() {
            shared.positions.flushed.publish(w);
        }
        true
    }

    /// Writes a checkpoint at the durable position F when a new topic
    /// became durable, when the interval passed, or when `force`d; never
    /// for a journal the writer has cut since the last `Reset`.
    ///
    /// # Errors
    /// The checkpoint write error.
    pub fn maybe_checkpoint(
        &mut self,
        shared: &Shared,
        now: Instant,
        force: bool,
    ) -> Result<bool, crate::journal::error::JournalError> {
        let gate = shared.lock_flush_gate();
        if *gate != self.generation {
            return Ok(false);
        }
        let f = shared.positions.flushed.get().min(self.synced);
        let mut new_topic = false;
        while let Some((_, end)) = self.topics_pending.first() {
            if *end > f {
                break;
            }
            let (meta, _) = self.topics_pending.remove(0);
            self.topics.push(meta);
            new_topic = true;
        }
        let stale = self.checkpointed != Some(f);
        // By bytes from where the last checkpoint stood (recovery's start,
        // for the first), so a crash under load leaves recovery a bounded
        // tail to verify, whatever the interval.
        let moved = f.saturating_sub(self.checkpointed.unwrap_or(self.recovered_at));
        let due = stale
            && (now.duration_since(self.last_checkpoint) >= self.checkpoint_interval
                || moved >= self.checkpoint_bytes);
        if !(new_topic || due || (force && stale)) {
            return Ok(false);
        }
        let next_topic_id = self
            .topics
            .iter()
            .map(|t| t.id.saturating_add(1))
            .max()
            .unwrap_or(0)
            .max(self.next_topic_id);
        checkpoint::write(
            &self.dir,
            &Checkpoint {
                position: f,
                next_topic_id,
                topics: self.topics.clone(),
            },
        )?;
        drop(gate);
        self.checkpointed = Some(f);
        self.last_checkpoint = now;
        Ok(true)
    }

    /// Writes the snapshot file ([`crate::journal::snapshot::write`]) from
    /// the newest of the writer's snapshots that F reached, once each;
    /// never for a journal the writer has cut since the last `Reset`.
    /// Returns whether it wrote one.
    ///
    /// # Errors
    /// The write error; that snapshot is dropped.
    pub fn maybe_save_snapshot(
        &mut self,
        shared: &Shared,
    ) -> Result<bool, crate::journal::error::JournalError> {
        let gate = shared.lock_flush_gate();
        if *gate != self.generation {
            return Ok(false);
        }
        let f = shared.positions.flushed.get().min(self.synced);
        let mut durable = None;
        while self
            .snapshots_waiting
            .front()
            .is_some_and(|s| s.position <= f)
        {
            durable = self.snapshots_waiting.pop_front();
        }
        let Some(snap) = durable.filter(|s| s.position > self.snapshot_saved) else {
            return Ok(false);
        };
        // One that cannot be written is dropped (logged once): the writer
        // takes the next within `checkpoint_bytes`.
        crate::journal::snapshot::write(&self.dir, &snap)?;
        shared
            .snapshot_saved
            .store(snap.position, std::sync::atomic::Ordering::Release);
        drop(gate);
        self.snapshot_saved = snap.position;
        Ok(true)
    }
}

/// How long the flusher may still hold back a sync of what W added, `None`
/// to sync now. A sync nobody waits for (no request at QoS `flushed` or
/// `all`, no fetch parked for data, no shutdown: not `urgent`) only moves F
/// for its own sake; held back until `pace` passed since the last one, it
/// covers every write of that time in one fdatasync instead of one per
/// writer round, which on a small machine leaves the producers the CPU the
/// syncs took. Durability promises do not change: F is what is durable,
/// and every request that needs F gets its sync at once.
pub fn pace_left(pace: Duration, since_last_sync: Duration, urgent: bool) -> Option<Duration> {
    if urgent || since_last_sync >= pace {
        None
    } else {
        Some(pace - since_last_sync)
    }
}

/// The flusher thread.
pub fn run(shared: Arc<Shared>, mut flusher: Flusher, events: Receiver<FlusherEvent>) {
    shared.register(Stage::Flusher);
    let mut idle = Idle::new();
    loop {
        // Read W before the events: every event about bytes below W was
        // sent before W was published, so it is already in the channel.
        let w = shared.positions.written.get();
        let mut reset = false;
        while let Ok(e) = events.try_recv() {
            reset |= flusher.event(e);
        }
        if reset {
            // The W read above may predate the cut: read it again.
            continue;
        }
        let f = shared.positions.flushed.get();
        let urgent = shared.flush_wanted.load(Ordering::Acquire) > f
            || shared.fetches_waiting.load(Ordering::Acquire)
            || shared.reactor_drained.load(Ordering::Acquire)
            || shared.storage_failed.load(Ordering::Acquire);
        let held = (w > f)
            .then(|| pace_left(flusher.pace, flusher.last_sync.elapsed(), urgent))
            .flatten();
        let worked = held.is_none() && flusher.flush_to(&shared, w);
        if worked {
            flusher.last_sync = Instant::now();
        }
        let writer_done = shared.is_done(Stage::Writer) && w == shared.positions.written.get();
        if writer_done {
            // The writer's last snapshot was sent before it said it was
            // done: take it in for the last checkpoint.
            while let Ok(e) = events.try_recv() {
                flusher.event(e);
            }
        }
        if let Err(e) = flusher.maybe_checkpoint(&shared, Instant::now(), writer_done) {
            crate::log!("checkpoint write failed (recovery will verify more of the journal): {e}");
        }
        if let Err(e) = flusher.maybe_save_snapshot(&shared) {
            crate::log!("snapshot write failed (a restart will read more of the journal): {e}");
        }
        let f = shared.positions.flushed.get();
        if writer_done && (f == w || shared.storage_failed.load(Ordering::Acquire)) {
            shared.mark_done(Stage::Flusher);
            return;
        }
        if worked {
            idle.busy();
        } else if let Some(left) = held {
            // Not a spin. The writer wakes it early only for a request
            // that waits for F (or the reader for a parked fetch).
            shared.flusher_holding.store(true, Ordering::Release);
            std::thread::park_timeout(left);
            shared.flusher_holding.store(false, Ordering::Release);
        } else {
            idle.wait(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;

    thread_local! {
        /// Inodes of the files synced, in call order.
        static SYNCED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    fn record_sync(f: &File) -> std::io::Result<()> {
        let ino = f.metadata()?.ino();
        SYNCED.with(|s| s.borrow_mut().push(ino));
        Ok(())
    }

    fn ino(f: &SegmentFile) -> u64 {
        f.1.metadata().unwrap().ino()
    }

    /// The writer's side of the journal over real (empty) files: segment
    /// files, batch boundaries, and for each file the lowest position
    /// written since its last fdatasync (the flusher's syncs are recorded).
    struct Model {
        dir: tempfile::TempDir,
        files: Vec<SegmentFile>,
        /// Batch boundaries, the last one being the journal's end.
        boundaries: Vec<u64>,
        dirty_from: HashMap<u64, u64>,
        next_name: u64,
    }

    /// Capacity of the model's segments.
    const SEGMENT: u64 = 100;

    impl Model {
        fn new() -> Model {
            let mut m = Model {
                dir: tempfile::tempdir().unwrap(),
                files: Vec::new(),
                boundaries: vec![0],
                dirty_from: HashMap::new(),
                next_name: 0,
            };
            m.segment(0);
            m
        }

        fn end(&self) -> u64 {
            *self.boundaries.last().unwrap()
        }

        fn segment(&mut self, start: u64) -> SegmentFile {
            // A fresh name each time: a cut may delete a file and a later
            // roll create one at the same start.
            let path = self.dir.path().join(format!("{}.seg", self.next_name));
            self.next_name += 1;
            let f = (start, Arc::new(File::create(path).unwrap()));
            self.files.push(f.clone());
            f
        }

        /// Appends a batch of `len` bytes, rolling first when the active
        /// segment cannot hold it. Returns the new segment, if any.
        fn write(&mut self, len: u64) -> Option<SegmentFile> {
            let end = self.end();
            let active = self.files.last().unwrap().0;
            let rolled = (end > active && end - active + len > SEGMENT).then(|| self.segment(end));
            let f = self.files.last().unwrap();
            let from = self.dirty_from.entry(ino(f)).or_insert(u64::MAX);
            *from = (*from).min(end);
            self.boundaries.push(end + len);
            rolled
        }

        /// Cuts at boundary number `k` (counted from the end): as
        /// `Journal::truncate` does, later files go and the holder's tail
        /// is zeroed and synced.
        fn cut(&mut self, k: usize) -> u64 {
            let keep = self.boundaries.len().saturating_sub(k).max(1);
            self.boundaries.truncate(keep);
            let at = self.end();
            let holder = self.files.iter().rposition(|f| f.0 <= at).unwrap();
            for f in self.files.drain(holder + 1..) {
                self.dirty_from.remove(&ino(&f));
            }
            self.dirty_from.remove(&ino(&self.files[holder]));
            at
        }

        fn take_syncs(&mut self) {
            for ino in SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut())) {
                self.dirty_from.remove(&ino);
            }
        }

        /// The rule: no byte below `f` was written since its file's last
        /// fdatasync.
        fn assert_durable_below(&mut self, f: u64) {
            self.take_syncs();
            for file in &self.files {
                if let Some(from) = self.dirty_from.get(&ino(file)) {
                    assert!(
                        *from >= f,
                        "segment {} holds bytes from {from} below F = {f} that were never synced",
                        file.0
                    );
                }
            }
        }
    }

    fn flusher(m: &Model) -> Flusher {
        let mut fl = Flusher::new(
            m.dir.path().to_path_buf(),
            &m.files,
            0,
            Vec::new(),
            0,
            Duration::from_secs(3600),
        );
        fl.sync_file = record_sync;
        fl
    }

    /// Finding 2: a roll followed by a cut inside the new segment, before
    /// the next sync, must not leave the older segment unsynced below F.
    #[test]
    fn a_cut_after_a_roll_keeps_the_older_segment_to_sync() {
        let mut m = Model::new();
        let mut fl = flusher(&m);
        m.write(50);
        fl.sync(50).unwrap();
        m.assert_durable_below(50);
        // More bytes in segment 0, a roll to segment 1, bytes there.
        m.write(50);
        let seg1 = m.write(50).expect("rolled");
        fl.event(FlusherEvent::Segment(seg1));
        // The writer cuts at 120 before the flusher's next round (the
        // cut zeroes and syncs segment 1 from 120 on).
        m.boundaries.insert(3, 120);
        let at = m.cut(1);
        assert_eq!(at, 120);
        fl.event(FlusherEvent::Reset {
            generation: 1,
            at,
            files: m.files.clone(),
            topics: Vec::new(),
            next_topic_id: 0,
        });
        fl.sync(120).unwrap();
        m.assert_durable_below(120);
    }

    /// Under load the interval alone would leave recovery gigabytes to
    /// verify after a crash: a checkpoint also follows every
    /// `checkpoint_bytes` made durable.
    #[test]
    fn a_checkpoint_follows_every_checkpoint_bytes_made_durable() {
        let (_poll, shared) = Shared::for_tests(0);
        let mut m = Model::new();
        let mut fl = flusher(&m).with_checkpoint_bytes(100, 0);
        let durable = |fl: &mut Flusher, m: &mut Model, upto: u64| {
            if let Some(s) = m.write(upto - m.end()) {
                fl.event(FlusherEvent::Segment(s));
            }
            shared.positions.written.set(upto);
            fl.sync(upto).unwrap();
            assert!(fl.publish(&shared, upto));
            fl.maybe_checkpoint(&shared, Instant::now(), false).unwrap()
        };
        let written = |m: &Model| checkpoint::read(m.dir.path()).unwrap().map(|c| c.position);
        assert!(!durable(&mut fl, &mut m, 80), "80 bytes: not yet");
        assert_eq!(written(&m), None);
        assert!(durable(&mut fl, &mut m, 130), "130 bytes since the start");
        assert_eq!(written(&m), Some(130));
        assert!(!durable(&mut fl, &mut m, 200), "70 since the last one");
        assert!(durable(&mut fl, &mut m, 230));
        assert_eq!(written(&m), Some(230));
    }

    /// A sync nobody waits for is held back until the pace passed since
    /// the last one; anything urgent, or no pace, syncs at once.
    #[test]
    fn syncs_nobody_waits_for_are_paced() {
        let ms = Duration::from_millis;
        assert_eq!(pace_left(ms(1), ms(0), false), Some(ms(1)));
        assert_eq!(
            pace_left(ms(1), Duration::from_micros(300), false),
            Some(Duration::from_micros(700))
        );
        assert_eq!(pace_left(ms(1), ms(1), false), None, "the pace passed");
        assert_eq!(pace_left(ms(1), ms(5), false), None);
        assert_eq!(pace_left(ms(1), ms(0), true), None, "someone waits");
        assert_eq!(pace_left(Duration::ZERO, ms(0), false), None, "no pace");
    }

    fn snapshot_at(position: u64) -> Arc<CatalogSnapshot> {
        Arc::new(CatalogSnapshot {
            position,
            term: 0,
            next_topic_id: 0,
            cluster_id: None,
            topics: Vec::new(),
            producers: Default::default(),
        })
    }

    /// The snapshot file is written only once F reaches a snapshot, once
    /// per snapshot (the newest durable one), and never for one above a
    /// cut.
    #[test]
    fn the_snapshot_file_is_the_newest_durable_snapshot_written_once() {
        use crate::journal::snapshot;
        let (_poll, shared) = Shared::for_tests(0);
        let mut m = Model::new();
        let mut fl = flusher(&m);
        let durable = |fl: &mut Flusher, m: &mut Model, upto: u64| {
            if let Some(s) = m.write(upto - m.end()) {
                fl.event(FlusherEvent::Segment(s));
            }
            shared.positions.written.set(upto);
            fl.sync(upto).unwrap();
            assert!(fl.publish(&shared, upto));
            let wrote = fl.maybe_save_snapshot(&shared).unwrap();
            let saved = snapshot::read(m.dir.path()).unwrap().map(|s| s.position);
            (wrote, saved)
        };
        fl.event(FlusherEvent::Snapshot(snapshot_at(60)));
        assert_eq!(
            durable(&mut fl, &mut m, 40),
            (false, None),
            "60 is not durable yet"
        );
        assert_eq!(durable(&mut fl, &mut m, 70), (true, Some(60)));
        assert_eq!(durable(&mut fl, &mut m, 75), (false, Some(60)), "once");
        fl.event(FlusherEvent::Snapshot(snapshot_at(80)));
        fl.event(FlusherEvent::Snapshot(snapshot_at(90)));
        assert_eq!(
            durable(&mut fl, &mut m, 95),
            (true, Some(90)),
            "the newest durable"
        );
        // The writer's snapshot at 99, then a cut at 95 (in a group).
        fl.event(FlusherEvent::Snapshot(snapshot_at(99)));
        m.write(4);
        fl.event(FlusherEvent::Reset {
            generation: 0,
            at: 95,
            files: m.files.clone(),
            topics: Vec::new(),
            next_topic_id: 0,
        });
        m.boundaries.pop();
        assert_eq!(
            durable(&mut fl, &mut m, 120),
            (false, Some(90)),
            "99 was cut"
        );
    }

    /// Review finding (snapshots): after a failed fdatasync F never moves
    /// again in this process, yet the broker goes on taking writes (QoS
    /// `none`/`received` are answered, only `flushed` fails) and the
    /// writer goes on taking a snapshot every `checkpoint_interval_ms`
    /// with data appended and every `checkpoint_bytes`. Each one (a copy
    /// of every producer state, up to some 41 MiB with the default caps)
    /// waits in `snapshots_waiting` for an F that never comes: memory
    /// grows without bound. Only the oldest waiting one (the first F can
    /// reach) and the newest are ever worth keeping.
    #[test]
    fn snapshots_waiting_for_an_f_that_no_longer_moves_stay_bounded() {
        let (_poll, shared) = Shared::for_tests(0);
        let m = Model::new();
        let mut fl = flusher(&m).with_checkpoint_bytes(10, 0);
        // The fdatasync failed: F stays at 0 for good.
        shared.storage_failed.store(true, Ordering::Release);
        for k in 1..=1_000u64 {
            // One writer round after another: W moves, a snapshot is sent.
            shared.positions.written.set(k * 10);
            fl.event(FlusherEvent::Snapshot(snapshot_at(k * 10)));
            assert!(!fl.flush_to(&shared, k * 10), "F cannot move");
            let _ = fl.maybe_checkpoint(&shared, Instant::now(), false);
        }
        assert!(
            fl.snapshots_waiting.len() <= 2,
            "{} snapshots held waiting for an F that cannot move",
            fl.snapshots_waiting.len()
        );
    }

    /// Review finding (snapshots): the snapshot, which holds every producer
    /// state, is encoded, written and fsynced again in every checkpoint,
    /// whether or not it changed: with a trickle of writes that is once per
    /// `checkpoint_interval_ms` (5 s). 10,000 producer states (100
    /// producers on 100 partitions) with full default windows make a 26 MB
    /// checkpoint: 5 MB/s of disk writes (some 450 GB a day) for a broker
    /// that takes a few bytes a second, and each rewrite holds up the
    /// flusher's group commits (QoS `flushed`) for its write and fsync.
    #[test]
    fn an_unchanged_snapshot_is_not_written_again_at_every_checkpoint() {
        use crate::journal::producers::{Key, Landed, SavedState, SavedStates};
        use crate::journal::snapshot::SnapshotTopic;
        let (_poll, shared) = Shared::for_tests(0);
        let mut m = Model::new();
        let mut fl = Flusher::new(
            m.dir.path().to_path_buf(),
            &m.files,
            0,
            Vec::new(),
            0,
            Duration::from_secs(5),
        );
        fl.sync_file = record_sync;
        let partitions = 100u32;
        let states = (0..partitions)
            .flat_map(|partition| {
                (1..=100u64).map(move |producer_id| SavedState {
                    key: Key {
                        topic_id: 0,
                        partition,
                        producer_id,
                    },
                    epoch: 0,
                    next_seq: 64,
                    last_ms: 1_000,
                    window: (0..64)
                        .map(|seq| Landed {
                            first_seq: seq,
                            last_seq: seq,
                            base_offset: seq,
                            end: seq + 1,
                            append_time_ms: 1_000,
                        })
                        .collect(),
                })
            })
            .collect();
        let snap = Arc::new(CatalogSnapshot {
            position: 5,
            term: 0,
            next_topic_id: 1,
            cluster_id: None,
            topics: vec![SnapshotTopic {
                meta: TopicMeta {
                    id: 0,
                    name: "t".into(),
                    partitions,
                },
                created_at: None,
                config: Default::default(),
                next_offsets: vec![0; partitions as usize],
                deleted_below: vec![0; partitions as usize],
            }],
            producers: SavedStates {
                clock_ms: 1_000,
                states,
            },
        });
        fl.event(FlusherEvent::Snapshot(snap));
        let t0 = Instant::now();
        let checkpoint_path = m.dir.path().join(checkpoint::CHECKPOINT_FILE);
        let snapshot_path = m.dir.path().join(crate::journal::snapshot::SNAPSHOT_FILE);
        let mut written = 0u64;
        let mut one = 0u64;
        // A trickle: a few bytes in each 5 s interval, for a minute.
        for k in 1..=12u64 {
            if let Some(s) = m.write(5) {
                fl.event(FlusherEvent::Segment(s));
            }
            shared.positions.written.set(m.end());
            fl.sync(m.end()).unwrap();
            assert!(fl.publish(&shared, m.end()));
            let now = t0 + Duration::from_secs(6 * k);
            if fl.maybe_checkpoint(&shared, now, false).unwrap() {
                written += std::fs::metadata(&checkpoint_path).unwrap().len();
            }
            if fl.maybe_save_snapshot(&shared).unwrap() {
                one = std::fs::metadata(&snapshot_path).unwrap().len();
                written += one;
            }
        }
        assert!(one > 20_000_000, "a {one}-byte snapshot");
        assert!(
            written <= 2 * one,
            "{written} bytes of checkpoints and snapshots written in a minute for 60 bytes of \
             data, the same {one}-byte snapshot each time"
        );
    }

    /// Review finding: after a start the count begins at the checkpoint
    /// recovery started from, not at the recovered end (a crash loop whose
    /// runs each write less than `checkpoint_bytes` in less than the
    /// interval grew the tail to verify with every restart).
    #[test]
    fn the_first_checkpoint_by_bytes_counts_from_the_checkpoint_recovery_started_from() {
        let (_poll, shared) = Shared::for_tests(90);
        let mut m = Model::new();
        m.write(90);
        let mut fl = Flusher::new(
            m.dir.path().to_path_buf(),
            &m.files,
            90,
            Vec::new(),
            0,
            Duration::from_secs(3600),
        )
        .with_checkpoint_bytes(100, 0);
        fl.sync_file = record_sync;
        if let Some(s) = m.write(20) {
            fl.event(FlusherEvent::Segment(s));
        }
        shared.positions.written.set(110);
        fl.sync(110).unwrap();
        assert!(fl.publish(&shared, 110));
        assert!(
            fl.maybe_checkpoint(&shared, Instant::now(), false).unwrap(),
            "a crash now would leave recovery 110 > 100 bytes to verify"
        );
    }

    /// Finding 6: whatever the flusher synced or read before a cut, it
    /// cannot publish an F above the cut afterwards.
    #[test]
    fn a_flush_that_straddles_a_cut_publishes_nothing() {
        let (_poll, shared) = Shared::for_tests(0);
        let mut m = Model::new();
        let mut fl = flusher(&m);
        m.write(80);
        shared.positions.written.set(80);
        let w = shared.positions.written.get();
        fl.sync(w).unwrap();
        // The writer cuts at 30 and writes new bytes up to 90 meanwhile.
        {
            let mut gate = shared.lock_flush_gate();
            *gate += 1;
            shared.positions.written.set(30);
        }
        assert!(!fl.publish(&shared, w), "a stale round publishes nothing");
        assert_eq!(shared.positions.flushed.get(), 0);
        assert!(!fl.maybe_checkpoint(&shared, Instant::now(), true).unwrap());
        fl.event(FlusherEvent::Reset {
            generation: 1,
            at: 30,
            files: m.files.clone(),
            topics: Vec::new(),
            next_topic_id: 0,
        });
        assert_eq!(fl.synced(), 30);
        shared.positions.written.set(90);
        fl.sync(90).unwrap();
        assert!(fl.publish(&shared, 90));
        assert_eq!(shared.positions.flushed.get(), 90);
    }

    /// Finding 6: answers at QoS `flushed` wait for F alone; in a group no
    /// other stage wakes the responder for it, so the flusher must (they
    /// waited for the responder's 2 ms sweep).
    #[test]
    fn moving_f_wakes_the_responder() {
        let (_poll, shared) = Shared::for_tests(0);
        let m = Model::new();
        let mut fl = flusher(&m);
        // This thread plays the responder.
        shared.register(Stage::Responder);
        shared.positions.written.set(10);
        assert!(fl.flush_to(&shared, 10));
        assert_eq!(shared.positions.flushed.get(), 10);
        let t0 = Instant::now();
        std::thread::park_timeout(Duration::from_secs(20));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the responder was not woken when F moved"
        );
    }

    /// One step of the interleaving model.
    #[derive(Debug, Clone)]
    enum Step {
        /// The writer appends a batch and publishes W.
        Write(u64),
        /// The writer cuts `k` batches off the end.
        Cut(usize),
        /// The flusher reads W (its round's first step).
        ReadW,
        /// The flusher takes in the writer's events (after reading W).
        Drain,
        /// The flusher syncs up to the W it read, and publishes (after
        /// draining; a `Reset` among the events starts the round again).
        SyncPublish,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1u64..60).prop_map(Step::Write),
            1 => (0usize..4).prop_map(Step::Cut),
            2 => Just(Step::ReadW),
            2 => Just(Step::Drain),
            2 => Just(Step::SyncPublish),
        ]
    }

    fn run_model(steps: &[Step]) {
        let (_poll, shared) = Shared::for_tests(0);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut m = Model::new();
        let mut fl = flusher(&m);
        // The W of the flusher's round, once its events were drained.
        let mut w_read = None;
        let mut w_drained = None;
        for s in steps {
            match s {
                Step::Write(len) => {
                    if let Some(f) = m.write(*len) {
                        tx.send(FlusherEvent::Segment(f)).unwrap();
                    }
                    shared.positions.written.set(m.end());
                }
                Step::Cut(k) => {
                    // As `Writer::truncate` does, under the gate.
                    let mut gate = shared.lock_flush_gate();
                    *gate += 1;
                    let at = m.cut(*k);
                    shared.lower_positions_to(&gate, at);
                    tx.send(FlusherEvent::Reset {
                        generation: *gate,
                        at,
                        files: m.files.clone(),
                        topics: Vec::new(),
                        next_topic_id: 0,
                    })
                    .unwrap();
                }
                Step::ReadW => {
                    w_read = Some(shared.positions.written.get());
                    w_drained = None;
                }
                Step::Drain => {
                    let mut reset = false;
                    while let Ok(e) = rx.try_recv() {
                        reset |= fl.event(e);
                    }
                    // After a `Reset` the round starts again from ReadW.
                    let w = w_read.take();
                    w_drained = if reset { None } else { w };
                }
                Step::SyncPublish => {
                    if let Some(w) = w_drained.take() {
                        if w > shared.positions.flushed.get() {
                            fl.sync(w).unwrap();
                            fl.publish(&shared, w);
                        }
                    }
                }
            }
            m.assert_durable_below(shared.positions.flushed.get());
            assert!(shared.positions.flushed.get() <= m.end());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// F never covers a byte that was not fdatasync'd after it was
        /// written, whatever the interleaving of writer rounds, rolls,
        /// cuts and the flusher's reads, syncs and publications.
        #[test]
        fn f_never_covers_an_unsynced_byte(steps in prop::collection::vec(step(), 1..60)) {
            run_model(&steps);
        }
    }
}
