//! The flusher: makes the journal durable in group commits.
//!
//! Each round reads W, fdatasyncs every segment file that holds bytes below
//! it (one call covers every request appended since the last round, however
//! many), then publishes F = W. It also writes the checkpoint: when a new
//! topic's control record became durable, every `checkpoint_interval_ms`,
//! and at shutdown.

use super::shared::{Idle, Shared, Stage};
use crate::journal::checkpoint::{self, Checkpoint};
use crate::journal::log::SegmentFile;
use crate::journal::topic::TopicMeta;
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
    /// The writer is about to cut the journal at `at` (a divergent tail):
    /// stop checkpointing until the `Reset` that follows, and never call
    /// anything above `at` durable again.
    Truncate {
        /// The cut position.
        at: u64,
    },
    /// The journal was cut: its segment files and topics now.
    Reset {
        /// Every segment file, oldest first.
        files: Vec<SegmentFile>,
        /// Every topic left.
        topics: Vec<TopicMeta>,
    },
}

/// The flusher's state.
pub struct Flusher {
    dir: PathBuf,
    /// Segments that may hold unsynced bytes, oldest first; the last is active.
    dirty: Vec<SegmentFile>,
    topics: Vec<TopicMeta>,
    topics_pending: Vec<(TopicMeta, u64)>,
    checkpointed: Option<u64>,
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    /// A truncation is under way: no checkpoint until the journal is cut.
    cutting: bool,
}

impl Flusher {
    /// A flusher for a journal whose segments are `files` and whose
    /// recovered topics are `topics`.
    pub fn new(
        dir: PathBuf,
        files: &[SegmentFile],
        topics: Vec<TopicMeta>,
        checkpoint_interval: Duration,
    ) -> Flusher {
        Flusher {
            dir,
            dirty: files.last().cloned().into_iter().collect(),
            topics,
            topics_pending: Vec::new(),
            checkpointed: None,
            checkpoint_interval,
            last_checkpoint: Instant::now(),
            cutting: false,
        }
    }

    /// Takes in an event from the writer. Returns the cut position of a
    /// `Truncate`.
    pub fn event(&mut self, e: FlusherEvent) -> Option<u64> {
        match e {
            FlusherEvent::Segment(f) => self.dirty.push(f),
            FlusherEvent::Topic { meta, end } => self.topics_pending.push((meta, end)),
            FlusherEvent::Truncate { at } => {
                self.cutting = true;
                self.topics_pending.retain(|(_, end)| *end <= at);
                return Some(at);
            }
            FlusherEvent::Reset { files, topics } => {
                self.cutting = false;
                self.dirty = files.last().cloned().into_iter().collect();
                self.topics = topics;
                self.topics_pending.clear();
                self.checkpointed = None;
            }
        }
        None
    }

    /// Makes everything below `w` durable.
    ///
    /// # Errors
    /// The fdatasync error; nothing below `w` may then be called durable.
    pub fn sync(&mut self, w: u64) -> std::io::Result<()> {
        // `sync_data` is fdatasync(2).
        // Every segment but the last is complete: sync it once and forget it.
        while self.dirty.len() > 1 {
            self.dirty[0].1.sync_data()?;
            self.dirty.remove(0);
        }
        if let Some((start, file)) = self.dirty.first() {
            if *start < w {
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Writes a checkpoint at durable position `f` when a new topic became
    /// durable, when the interval passed, or when `force`d.
    ///
    /// # Errors
    /// The checkpoint write error.
    pub fn maybe_checkpoint(
        &mut self,
        f: u64,
        now: Instant,
        force: bool,
    ) -> Result<bool, crate::journal::error::JournalError> {
        if self.cutting {
            return Ok(false);
        }
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
        let due = now.duration_since(self.last_checkpoint) >= self.checkpoint_interval && stale;
        if !(new_topic || due || (force && stale)) {
            return Ok(false);
        }
        let next_topic_id = self
            .topics
            .iter()
            .map(|t| t.id.saturating_add(1))
            .max()
            .unwrap_or(0);
        checkpoint::write(
            &self.dir,
            &Checkpoint {
                position: f,
                next_topic_id,
                topics: self.topics.clone(),
            },
        )?;
        self.checkpointed = Some(f);
        self.last_checkpoint = now;
        Ok(true)
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
        let mut cut = None;
        while let Ok(e) = events.try_recv() {
            if let Some(at) = flusher.event(e) {
                cut = Some(at);
            }
        }
        if let Some(at) = cut {
            // W was lowered before the event was sent, but the W read above
            // may predate that: start the round again. F may hold bytes
            // that are about to be cut; it can only vouch for what stays.
            if shared.positions.flushed.get() > at {
                shared.positions.flushed.set(at);
            }
            shared
                .cluster
                .truncations_seen
                .fetch_add(1, Ordering::AcqRel);
            shared.wake(Stage::Writer);
            continue;
        }
        let f = shared.positions.flushed.get();
        let mut worked = false;
        if w > f && !shared.storage_failed.load(Ordering::Acquire) {
            match flusher.sync(w) {
                Ok(()) => {
                    shared.positions.flushed.publish(w);
                    shared.wake(Stage::Replicator);
                    if shared.cluster.is_clustered() {
                        // The writer runs the consensus node, which counts
                        // this node's flushed position toward C.
                        shared.wake(Stage::Writer);
                    }
                    worked = true;
                }
                Err(e) => {
                    // After a failed fdatasync the page cache state is
                    // unknown; never claim durability again in this process.
                    crate::log!("fdatasync failed, flushed requests will fail: {e}");
                    shared.storage_failed.store(true, Ordering::Release);
                    shared.wake(Stage::Responder);
                }
            }
        }
        let writer_done = shared.is_done(Stage::Writer) && w == shared.positions.written.get();
        let f = shared.positions.flushed.get();
        if let Err(e) = flusher.maybe_checkpoint(f, Instant::now(), writer_done) {
            crate::log!("checkpoint write failed (recovery will verify more of the journal): {e}");
        }
        if writer_done && (f == w || shared.storage_failed.load(Ordering::Acquire)) {
            shared.mark_done(Stage::Flusher);
            return;
        }
        if worked {
            idle.busy();
        } else {
            idle.wait(Duration::from_millis(50));
        }
    }
}
