//! [`Journal`]: opening (with recovery) and appending.
//!
//! The journal is one stream of record batches addressed by byte position.
//! It is cut into segment files named by their start position; a batch never
//! spans two segments, and a new segment starts exactly where the previous
//! one's data ends, so positions are contiguous.
//!
//! Appending copies a batch into the write cache, a preallocated buffer,
//! and stamps it there; [`Journal::write_out`] then hands the whole cache to
//! the kernel with one `pwrite` per writer round, however many batches it
//! holds. The flusher's fdatasync makes the file durable; readers `pread`.
//! (An earlier version wrote through a shared memory map; every group
//! commit then write-protected the tail pages again, costing a page fault
//! and a TLB shoot-down per round, and an IO error would have been a
//! SIGBUS instead of an error code.)

use super::catalog::{Catalog, ProducerLimits, SeqCheck};
use super::checkpoint;
use super::control::{self, Control};
use super::error::JournalError;
use super::lock::{lock_dir, DirLock};
use super::offload::{IndexJob, JobPartition, Trim};
use super::resume;
use super::scan::{header_crc_ok, scan, ScanStop};
use super::seg_index::SegmentIndex;
use super::segment::{list_segments, segment_file_name, Segment};
use super::snapshot::{self, CatalogSnapshot};
use super::start::{self, StartState, StartTopic};
use super::topic::{TopicConfig, TopicMeta, PARTITIONS_MAX};
use crate::consensus::Entry;
use crate::wire::batch::{
    check_stored_batch, declared_len, stamp, BatchBuilder, BatchKind, BatchView, Stamp,
    BATCH_HEADER_LEN,
};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment file as other threads see it: where it starts and the file.
pub type SegmentFile = (u64, Arc<File>);

/// Where a batch landed.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Position of the batch's first byte.
    pub position: u64,
    /// Position one past its last byte (the new W).
    pub end: u64,
    /// Offset of its first record.
    pub base_offset: u64,
    /// The new segment, when this append rolled to one.
    pub rolled: Option<SegmentFile>,
}

/// What [`Journal::append_replicated`] did.
#[derive(Debug, Clone)]
pub struct Replicated {
    /// Where the batch landed (the same position as on the leader).
    pub appended: Appended,
    /// The catalog slot of the topic the batch created, when it was a
    /// `CreateTopic` control record of a new topic.
    pub created: Option<usize>,
    /// What else a control record changed that readers must know.
    pub changed: Option<Changed>,
}

/// A metadata change a replicated control record made besides creating a
/// topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// A partition's log start moved (DeleteRecords).
    Deleted {
        /// The topic's slot.
        slot: usize,
        /// The partition.
        partition: u32,
        /// Its log start now.
        below: u64,
    },
    /// A topic's settings changed.
    Configured {
        /// The topic's slot.
        slot: usize,
        /// Its settings now.
        config: TopicConfig,
    },
}

/// What [`Journal::truncate`] changed, for the threads that hold handles
/// on the journal's files and indexes.
#[derive(Debug, Clone)]
pub struct Truncated {
    /// Ids of the topics whose creation was cut; they were the catalog's
    /// last slots and are gone.
    pub removed_topic_ids: Vec<u32>,
    /// Slots of the remaining topics whose partition indexes were replaced
    /// by shorter ones; take new handles with
    /// [`Topic::index_handles`](super::catalog::Topic::index_handles).
    pub changed_topics: Vec<usize>,
    /// Every segment file now, oldest first (files above the cut were
    /// deleted).
    pub files: Vec<SegmentFile>,
}

/// A segment no longer appended to, as retention judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Position of its first byte.
    pub start: u64,
    /// Position one past its last batch (the next segment's start).
    pub end: u64,
    /// The newest append time among its data batches (ms since the
    /// epoch); `i64::MIN` for a segment without any. Control records do
    /// not count: time retention is about the data, and a segment taken
    /// from its index file at a start knows only its data's times.
    pub newest_ms: i64,
    /// The term of its last batch: of the batch ending at `end`, which a
    /// start state there records (0: unknown, or a standalone journal's).
    pub end_term: u64,
}

/// What one look of retention found ([`Journal::retain`]).
struct RetentionScan {
    /// The oldest sealed segments to delete.
    k: usize,
    /// The topic that holds the first segment time retention keeps.
    held_by: Option<usize>,
    /// What to say once about the segment retention stopped at.
    warn: Option<Warn>,
}

/// Why retention keeps a segment it would otherwise delete by time.
enum Warn {
    /// A topic with a longer time limit holds it (topic slot, segment).
    HeldBy(usize, u64),
    /// Its newest stamp is this far ahead of the clock (segment, ms).
    Future(u64, i64),
}

/// What retention keeps ([`Journal::retain`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Journal bytes kept; 0: no size limit.
    pub bytes: u64,
    /// Segments whose newest batch is older than this are deleted; `None`:
    /// no time limit.
    pub ms: Option<u64>,
}

/// The oldest append time a time limit of `ms` keeps at broker time
/// `now_ms`.
fn cutoff_at(now_ms: i64, ms: u64) -> i64 {
    now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// How far ahead of the broker's clock a segment's newest stamp must be for
/// retention to say that it holds time retention back: a day.
const FUTURE_STAMP_MS: i64 = 24 * 3600 * 1000;

/// A decision of [`Journal::retain`]: the journal now starts at
/// `state.position`. The caller writes `state` ([`start::write`]) before it
/// deletes any of `files`, and only then tells readers.
#[derive(Debug, Clone)]
pub struct Retained {
    /// The start state to write first.
    pub state: StartState,
    /// The segment files to delete, oldest first (each at
    /// `dir/segment_file_name(start)`).
    pub files: Vec<SegmentFile>,
}

/// What recovery found and did, for the startup log.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Position recovery resumed from the checkpoint at.
    pub checkpoint_position: u64,
    /// Batches found.
    pub batches: u64,
    /// Position and reason of a cut tail, if one was cut.
    pub truncated: Option<(u64, String)>,
    /// Segment files removed after a cut.
    pub removed_segments: Vec<PathBuf>,
    /// Start positions of the segments fdatasync'd because they hold bytes
    /// the checkpoint does not vouch for.
    pub synced_segments: Vec<u64>,
    /// What a [`Damage::Cut`] recovery dropped beyond a torn tail.
    pub lost: Option<LostData>,
    /// Segments older than the start state's position that an interrupted
    /// retention pass had not deleted yet, deleted now.
    pub leftover_segments: Vec<PathBuf>,
    /// Segment index files without a sealed segment (left by a deletion or
    /// a cut a crash interrupted) and unfinished ones, deleted now.
    pub stray_index_files: Vec<PathBuf>,
    /// The position of the checkpoint's catalog snapshot recovery started
    /// from (`None`: it read the whole journal).
    pub snapshot_position: Option<u64>,
    /// Where the segments recovery read begin: below, it took the segment
    /// index files' directories and read nothing else.
    pub read_from: u64,
    /// The term of the batch ending at `snapshot_position` (0 without one,
    /// or for a standalone broker's snapshot).
    pub snapshot_term: u64,
    /// The start state's term: of the batch that ended at the journal's
    /// first byte (0 without one, or for a standalone broker's).
    pub start_term: u64,
    /// Where a group member's consensus log starts, and the term there
    /// ([`Journal::consensus_base`]).
    pub consensus_base: (u64, u64),
}

/// How [`Journal::open_with`] recovers.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// What to do with damage recovery may not cut on its own.
    pub damage: Damage,
    /// Keep every batch's `(start, end, term)` for
    /// [`Journal::take_entries`] (a replication group's consensus log
    /// starts from them; a standalone broker has no use for them, and they
    /// cost 24 bytes per batch).
    pub entries: bool,
    /// fdatasync(2) of one segment file, by recovery and at every roll;
    /// tests record the calls.
    pub sync_file: fn(&File) -> std::io::Result<()>,
    /// Bounds of the producer states recovery rebuilds (evictions
    /// included, as when the batches were first appended).
    pub producers: ProducerLimits,
    /// Start from the catalog snapshot when there is a usable one
    /// (without `entries` only); false reads and checks every batch.
    pub from_snapshot: bool,
}

impl Default for Recovery {
    /// Refuse damage, keep the entries, sync with fdatasync, default
    /// producer limits.
    fn default() -> Recovery {
        Recovery {
            damage: Damage::Refuse,
            entries: true,
            sync_file: File::sync_data,
            producers: ProducerLimits::default(),
            from_snapshot: true,
        }
    }
}

/// What recovery does with damage it may not cut on its own (anywhere but
/// a torn tail of the last segment above the checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Refuse to open: the data may have been acknowledged. A standalone
    /// broker's default.
    Refuse,
    /// Cut the journal there and report what was dropped: `hutong broker
    /// --repair`, and a member of a replication group (the majority still
    /// holds the data; the member fetches it again).
    Cut,
}

/// Data a recovery would drop, or dropped, at damage it may not cut on
/// its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostData {
    /// Journal position of the damage: the cut.
    pub position: u64,
    /// What is wrong there.
    pub why: String,
    /// The segment holding the damage; its bytes from `position` on go.
    pub segment: PathBuf,
    /// Bytes between the cut and the checkpoint's durable position: data
    /// that was certainly acknowledged at QoS `flushed` or stronger.
    pub durable_bytes: u64,
    /// The later segments, deleted by a cut.
    pub later_segments: Vec<PathBuf>,
    /// Bytes of valid batches those later segments hold.
    pub later_bytes: u64,
}

impl LostData {
    /// Measures what cutting at `position` in `segments[0]` would drop
    /// (with no segment at all, in the journal directory `dir`).
    fn measure(
        dir: &Path,
        segments: &[(u64, PathBuf)],
        position: u64,
        durable: u64,
        why: String,
    ) -> LostData {
        let later = segments.get(1..).unwrap_or(&[]);
        let mut later_bytes = 0u64;
        for (start, path) in later {
            // Best effort, for the message only: a segment that cannot be
            // read counts as nothing.
            if let Ok(seg) = Segment::open(path, *start) {
                later_bytes += scan(seg.bytes(), *start, 0, |_, _| Ok(())).valid_len as u64;
            }
        }
        LostData {
            position,
            why,
            segment: segments
                .first()
                .map_or_else(|| dir.to_path_buf(), |s| s.1.clone()),
            durable_bytes: durable.saturating_sub(position),
            later_segments: later.iter().map(|(_, p)| p.clone()).collect(),
            later_bytes,
        }
    }

    /// What is dropped, in words.
    pub fn describe(&self) -> String {
        format!(
            "damage at journal position {} in {}: {}; a cut there drops the rest of that \
             segment and {} later segment(s) holding {} bytes of valid batches; {} bytes \
             above the cut were recorded as durable by the checkpoint (acknowledged data)",
            self.position,
            self.segment.display(),
            self.why,
            self.later_segments.len(),
            self.later_bytes,
            self.durable_bytes,
        )
    }

    /// The refusal to start, in words.
    fn refusal(&self) -> String {
        format!(
            "{}. Refusing to start: restore the data directory from a backup or a \
             replica, or run `hutong broker --repair` to cut the journal at {} (what is \
             dropped is logged)",
            self.describe(),
            self.position
        )
    }
}

/// The segment being appended to.
struct Active {
    start: u64,
    capacity: usize,
    file: Arc<File>,
}

/// The journal, owned by the writer thread.
pub struct Journal {
    dir: PathBuf,
    _lock: DirLock,
    segment_bytes: usize,
    active: Active,
    files: Vec<SegmentFile>,
    /// Batches appended but not yet handed to the kernel, starting at
    /// journal position `written`. Preallocated; never grows.
    cache: Vec<u8>,
    /// Position up to which bytes were written to the file (pwrite).
    written: u64,
    /// Position one past the last appended byte (cache included).
    end: u64,
    catalog: Catalog,
    /// The journal's first kept byte (0 until retention deletes a segment).
    start: u64,
    /// Every segment but the active one, oldest first.
    sealed: Vec<Sealed>,
    /// The newest append time in the active segment.
    active_newest_ms: i64,
    /// The term of the last batch appended (0: unknown since a cut, or a
    /// standalone journal's): a segment sealed now ends with it.
    last_term: u64,
    /// The start of the last segment retention warned about for a stamp
    /// from the future (one line per segment, not one per check).
    warned: u64,
    /// The topic (slot) whose own time limit kept the oldest segment from
    /// time retention at the last look, if one did.
    held_by: Option<usize>,
    /// Every byte below it is durable and committed: no cut reaches the
    /// metadata records there ([`Journal::settle`]).
    settled: u64,
    /// Sealed segments from here on have not been handed out as
    /// [`IndexJob`]s yet.
    indexing_from: u64,
    /// The index files recovery took from disk, until
    /// [`Journal::take_indexes`].
    indexes: Vec<Arc<SegmentIndex>>,
    control: BatchBuilder,
    report: RecoveryReport,
    /// Every batch recovery found, until [`Journal::take_entries`].
    entries: Vec<Entry>,
    /// fdatasync(2), as [`Recovery::sync_file`].
    sync_file: fn(&File) -> std::io::Result<()>,
}

impl Journal {
    /// Opens `dir` as [`Journal::open_with`] does, refusing to cut
    /// anything but a torn tail ([`Damage::Refuse`]) and keeping the
    /// entries.
    ///
    /// # Errors
    /// As [`Journal::open_with`].
    pub fn open(
        dir: &Path,
        segment_bytes: usize,
        cache_bytes: usize,
    ) -> Result<Journal, JournalError> {
        Journal::open_with(dir, segment_bytes, cache_bytes, Recovery::default())
    }

    /// Locks `dir` (creating it if needed), then recovers: reads the
    /// checkpoint, scans every segment, and rebuilds the catalog and
    /// indexes.
    ///
    /// The first damaged batch found decides what happens (one policy for
    /// every segment). Where a crash can leave one — in the last segment,
    /// at or above the checkpoint's position — it is a torn tail and is
    /// cut. Anywhere else the bytes were durable (below the checkpoint) or
    /// are followed by later segments that may hold acknowledged data:
    /// with [`Damage::Refuse`] the journal refuses to open, naming the
    /// segment, the position and how much would be lost; with
    /// [`Damage::Cut`] it cuts there (later segments are deleted, the
    /// checkpoint lowered) and says what it dropped in
    /// [`RecoveryReport::lost`].
    ///
    /// # Errors
    /// [`JournalError::Locked`] when another broker holds the directory;
    /// [`JournalError::Corrupt`] for damage [`Damage::Refuse`] does not
    /// cut, a stray or misnamed segment file; IO errors otherwise.
    pub fn open_with(
        dir: &Path,
        segment_bytes: usize,
        cache_bytes: usize,
        recovery: Recovery,
    ) -> Result<Journal, JournalError> {
        let lock = lock_dir(dir)?;
        let start_state = start::read(dir)?;
        let base = start_state.as_ref().map_or(0, |st| st.position);
        let (cp, cp_readable) = match checkpoint::read(dir) {
            Ok(cp) => (cp.unwrap_or_default(), true),
            Err(e) => {
                crate::log!("ignoring unreadable checkpoint, verifying the whole journal: {e}");
                (checkpoint::Checkpoint::default(), false)
            }
        };
        // Read once: for the start, and for the check below that it does
        // not describe batches beyond the journal's end.
        let stored_snap = snapshot::read(dir);
        // A start state and a group's snapshot at the same position, which
        // the checkpoint does not pass, with no segment from there on, were
        // written by an install (a group member sent its leader's snapshot,
        // `Journal::install`) that nothing followed yet: every segment
        // below goes, and there is no segment at all to walk.
        let installed = matches!(
            (&stored_snap, &start_state),
            (Ok(Some(sn)), Some(st))
                if sn.position == st.position && st.position > 0 && sn.term > 0
        ) && cp.position <= base
            && list_segments(dir)?.iter().all(|(start, _)| *start < base);
        let leftover_segments = remove_below(dir, base, installed)?;
        let mut report = RecoveryReport {
            checkpoint_position: cp.position,
            start_term: start_state.as_ref().map_or(0, |st| st.term),
            leftover_segments,
            ..RecoveryReport::default()
        };
        // Older segments are trusted up to the checkpoint (header checks
        // only); the last one is always fully verified.
        let last_start = list_segments(dir)?.last().map_or(0, |s| s.0);
        let mut verify_from = cp.position.min(last_start);
        // A journal restarts from its catalog snapshot when it can. A group
        // member's consensus log then starts there too, so it takes only a
        // group's snapshot (of a committed position, with its term); one
        // left by a standalone broker says nothing of terms.
        let snap = match &stored_snap {
            // An installed journal holds nothing the snapshot does not (its
            // producer windows), so it always starts from it.
            Ok(Some(snap)) if installed => Some(snap),
            _ if !recovery.from_snapshot || !cp_readable => None,
            Ok(Some(snap)) if recovery.entries && snap.term == 0 => None,
            Ok(snap) => snap.as_ref(),
            Err(e) => {
                crate::log!("ignoring the unreadable snapshot, reading the whole journal: {e}");
                None
            }
        };
        // A group's snapshot at exactly the journal's start (an install
        // wrote both): a walk starts its producer states from it.
        let begins_at = match &stored_snap {
            Ok(Some(sn)) if base > 0 && sn.position == base && sn.term > 0 => Some(sn),
            _ => None,
        };
        let resumed = snap.and_then(|snap| {
            resume::resume(
                dir,
                &cp,
                snap,
                start_state.as_ref(),
                recovery.producers,
                recovery.entries,
            )
            .map_err(|why| {
                crate::log!(
                    "recovery cannot start from the snapshot ({why}): reading the whole \
                         journal"
                )
            })
            .ok()
        });
        if installed && resumed.is_none() {
            return Err(JournalError::Corrupt(format!(
                "this journal replaced itself by its leader's snapshot at {base} but cannot \
                 start from it (see above); nothing else holds what the snapshot says: move \
                 the data directory away and start the member empty, it is sent the \
                 leader's snapshot again"
            )));
        }
        let mut indexes = Vec::new();
        let mut indexed_below = base;
        let mut indexed_batches = 0;
        let mut pass = match resumed {
            Some(r) => {
                report.snapshot_position = snap.map(|s| s.position);
                report.snapshot_term = snap.map_or(0, |s| s.term);
                report.read_from = r.indexed_below;
                indexes = r.indexes;
                indexed_below = r.indexed_below;
                indexed_batches = r.indexed_batches;
                verify_from = r.indexed_below;
                r.pass
            }
            None => scan_journal(
                dir,
                &cp,
                start_state.as_ref(),
                verify_from,
                &recovery,
                installed,
                begins_at,
            )?,
        };
        // Where batches were only header-checked, damage may lie earlier
        // than where the walk noticed it: a record count (outside the
        // header checksum) throws the next batch's offsets off, and in a
        // partition's last batch nothing notices it at all. Before acting
        // on damage, or when a partition's last header-checked batch fails
        // its full check, verify everything.
        let suspect =
            pass.damage.is_some() || !last_batches_ok(&pass.catalog, &pass.files, verify_from);
        // (Recovery from a snapshot checks every batch it reads in full, and
        // gives way to this walk for any damage but a torn tail.)
        if suspect && verify_from > 0 && report.snapshot_position.is_none() {
            verify_from = 0;
            drop(pass);
            pass = scan_journal(
                dir,
                &cp,
                start_state.as_ref(),
                verify_from,
                &recovery,
                installed,
                begins_at,
            )?;
        }
        let Scanned {
            listed,
            mut catalog,
            mut files,
            mut active,
            end,
            entries,
            damage,
            newest,
            end_terms,
        } = pass;
        if let Some((at, why, i)) = damage {
            // A crash tears only the last segment (a roll syncs the old one
            // before the new one exists) and only above the checkpoint; with
            // an unreadable checkpoint, nothing is known to be above it.
            let torn_tail = i + 1 == listed.len() && at >= cp.position && cp_readable;
            if torn_tail {
                report.truncated = Some((at, why));
            } else {
                let lost =
                    LostData::measure(dir, listed.get(i..).unwrap_or(&[]), at, cp.position, why);
                if recovery.damage == Damage::Refuse {
                    return Err(JournalError::Corrupt(lost.refusal()));
                }
                crate::log!("REPAIR: {}", lost.describe());
                // Newest first, each removal durable before the next, so a
                // crash leaves contiguous segments (and the same damage
                // for the next start to find).
                for (_, path) in listed.get(i + 1..).unwrap_or(&[]).iter().rev() {
                    std::fs::remove_file(path)
                        .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
                    super::dir::sync_dir(dir)?;
                    report.removed_segments.push(path.clone());
                }
                // Topics known from the checkpoint whose creation the scan
                // did not meet below the cut were created above it: they
                // go, or a leader's later topic with their id would be
                // refused.
                for name in catalog.drop_unrecorded() {
                    crate::log!("REPAIR: topic {name} was created above the cut and is gone");
                }
                // The checkpoint must not vouch for what is gone.
                checkpoint::write(
                    dir,
                    &checkpoint::Checkpoint {
                        position: cp.position.min(at),
                        next_topic_id: catalog.next_topic_id(),
                        topics: catalog.metas(),
                    },
                )?;
                report.truncated = Some((at, lost.why.clone()));
                report.lost = Some(lost);
            }
        }
        // A journal ending below the snapshot (cut at damage, or bytes
        // lost that were durable when it was written) leaves it describing
        // batches that are gone: appends would fill the gap with others.
        match &stored_snap {
            Ok(Some(s)) if s.position > end => {
                crate::log!(
                    "removing the snapshot at {}: the journal ends below it, at {end}",
                    s.position
                );
                snapshot::remove(dir)?;
            }
            Ok(_) => {}
            Err(e) => {
                crate::log!("removing the unreadable snapshot: {e}");
                snapshot::remove(dir)?;
            }
        }
        // The segment holding the end is the active one: zero whatever lies
        // past the valid data (a torn batch, or pages the kernel wrote back
        // after a hole) so it can never be read as data once new batches
        // are appended.
        if let Some(seg) = active.as_mut() {
            seg.zero_from((end - seg.start()) as usize)?;
        }
        // Every recovered byte counts as durable from here on (F starts at
        // the end), but only the bytes below the checkpoint were proven
        // synced by the process that wrote it: a crash can leave written
        // but unsynced bytes that survive in the page cache (kill -9) and
        // would be lost on a power cut. Sync every segment holding bytes
        // at or above the checkpoint.
        let durable_below = cp.position.min(end);
        for (i, (start, file)) in files.iter().enumerate() {
            let next = files.get(i + 1).map_or(u64::MAX, |f| f.0);
            if next > durable_below && *start < end {
                (recovery.sync_file)(file).map_err(|e| {
                    JournalError::io(format!("fdatasync segment {start} during recovery"), e)
                })?;
                report.synced_segments.push(*start);
            }
        }
        let active = match active {
            Some(seg) => seg,
            None => {
                let seg = Segment::create(dir, end, segment_bytes)?;
                files.push((end, seg.file().clone()));
                seg
            }
        };
        // Every file but the active one is sealed; its data ends where the
        // next one starts.
        let mut sealed = Vec::with_capacity(files.len());
        for (i, w) in files.windows(2).enumerate() {
            sealed.push(Sealed {
                start: w[0].0,
                end: w[1].0,
                newest_ms: newest.get(i).copied().unwrap_or(i64::MIN),
                end_term: end_terms.get(i).copied().unwrap_or(0),
            });
        }
        let active_newest_ms = newest.get(files.len() - 1).copied().unwrap_or(i64::MIN);
        let last_term = end_terms
            .iter()
            .rev()
            .copied()
            .find(|t| *t > 0)
            .unwrap_or(0);
        report.stray_index_files = remove_stray_index_files(dir, &sealed)?;
        // From here on the active segment is written with pwrite; its map
        // (used by the scan) is dropped with `active`.
        let active = Active {
            start: active.start(),
            capacity: active.capacity(),
            file: active.file().clone(),
        };
        report.batches = indexed_batches
            + catalog
                .topics()
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| p.index.len() as u64)
                .sum::<u64>();
        let standalone = !recovery.entries;
        // Where a group member's consensus log starts: the snapshot the
        // pass started from; else the journal's start with the start
        // state's term; else, when that term is not known (the start state
        // of a journal whose deleted segments came from index files, or
        // of a cut), the group's snapshot on disk, committed by
        // construction, with the walked entries from there on.
        let mut entries = entries;
        report.consensus_base = match report.snapshot_position {
            Some(at) => (at, report.snapshot_term),
            None if base > 0 && report.start_term == 0 && recovery.entries => match &stored_snap {
                Ok(Some(sn)) if sn.term > 0 && sn.position >= base && sn.position <= end => {
                    entries.retain(|e| e.start >= sn.position);
                    (sn.position, sn.term)
                }
                _ => (base, 0),
            },
            None => (base, report.start_term),
        };
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            _lock: lock,
            segment_bytes,
            active,
            files,
            cache: Vec::with_capacity(cache_bytes),
            written: end,
            end,
            catalog,
            start: base,
            sealed,
            active_newest_ms,
            last_term,
            warned: u64::MAX,
            held_by: None,
            settled: 0,
            indexing_from: indexed_below,
            indexes,
            control: BatchBuilder::with_kind(BatchKind::Control),
            report,
            entries,
            sync_file: recovery.sync_file,
        };
        // A standalone broker's journal is never cut: what it recovered is
        // settled. A group member's tail above C may still be.
        if standalone {
            journal.settle(end);
        }
        Ok(journal)
    }

    /// The `(start, end, term)` of every batch recovery found, in journal
    /// order, for `consensus::Node::new`; empty on later calls (only the
    /// consensus module tracks entries after startup).
    pub fn take_entries(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.entries)
    }

    /// The segment index files recovery took instead of reading their
    /// segments (on the strength of their header checksums), oldest first;
    /// empty on later calls. The reader serves them, and the retention
    /// stage checks their entries in the background.
    pub fn take_indexes(&mut self) -> Vec<Arc<SegmentIndex>> {
        std::mem::take(&mut self.indexes)
    }

    /// Position one past the last appended byte, which may still sit in the
    /// write cache; W is [`Journal::written`].
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery found.
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Topics and partitions.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Every segment file, oldest first.
    pub fn segment_files(&self) -> &[SegmentFile] {
        &self.files
    }

    /// The metadata to put in a checkpoint at the current end.
    pub fn checkpoint_topics(&self) -> Vec<TopicMeta> {
        self.catalog.metas()
    }

    /// Appends a producer batch that passed
    /// [`crate::wire::batch::check_producer_batch`] to partition
    /// `partition` of the topic in slot `topic`, stamping offsets, term and
    /// time. The caller checked the partition exists.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when a new segment cannot be allocated;
    /// nothing is written then.
    pub fn append_data(
        &mut self,
        topic: usize,
        partition: u32,
        batch: &[u8],
        record_count: u32,
        term: u64,
        now_ms: i64,
    ) -> Result<Appended, JournalError> {
        debug_assert_eq!(BatchView(batch).record_count(), record_count);
        let (position, rolled) = self.reserve(batch.len())?;
        let t = self.catalog.topic(topic);
        let topic_id = t.meta.id;
        let base_offset = t.partitions[partition as usize].next_offset;
        let at = self.cache.len();
        self.cache.extend_from_slice(batch);
        stamp(
            &mut self.cache[at..],
            &Stamp {
                base_offset,
                term,
                append_time_ms: now_ms,
                topic_id,
                partition,
            },
        );
        self.catalog
            .land(topic, partition as usize, position, &self.cache[at..]);
        self.end = position + batch.len() as u64;
        self.active_newest_ms = self.active_newest_ms.max(now_ms);
        self.last_term = term;
        Ok(Appended {
            position,
            end: self.end,
            base_offset,
            rolled,
        })
    }

    /// Says what to do with a producer batch for `partition` of the topic
    /// in slot `topic` at broker time `now_ms` ([`Catalog::check_seq`]).
    pub fn check_seq(&self, topic: usize, partition: u32, batch: &[u8], now_ms: i64) -> SeqCheck {
        self.catalog
            .check_seq(topic, partition as usize, batch, now_ms)
    }

    /// Creates a topic: appends its control record and adds it to the
    /// catalog. The caller validated the name, the count and the limits.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when a new segment cannot be allocated;
    /// an `InvalidInput` [`JournalError::Io`], before anything is written,
    /// when the catalog would exceed [`PARTITIONS_MAX`] partitions or the
    /// next topic id is taken (ids are exhausted).
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        term: u64,
        now_ms: i64,
    ) -> Result<(Appended, usize), JournalError> {
        self.create_topic_with(name, partitions, TopicConfig::default(), term, now_ms)
    }

    /// As [`Journal::create_topic`], with settings of the topic's own
    /// (written in the same control record, so the topic never exists
    /// without them).
    ///
    /// # Errors
    /// As [`Journal::create_topic`].
    pub fn create_topic_with(
        &mut self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        term: u64,
        now_ms: i64,
    ) -> Result<(Appended, usize), JournalError> {
        // Recovery refuses a control record beyond the partition limit or
        // reusing a topic id (ids saturate at u32::MAX), so none may be
        // written.
        let refuse = |why: String| {
            JournalError::io(
                "creating topic",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
            )
        };
        if !self.catalog.has_room_for(partitions) {
            return Err(refuse(format!(
                "{partitions} more partitions would exceed the journal's limit of \
                 {PARTITIONS_MAX} in all"
            )));
        }
        let id = self.catalog.next_topic_id();
        if self.catalog.lookup_id(id).is_some() {
            return Err(refuse(format!("topic ids are exhausted ({id} is taken)")));
        }
        let meta = TopicMeta {
            id,
            name: name.to_string(),
            partitions,
        };
        let create = Control::CreateTopic {
            id: meta.id,
            name: meta.name.clone(),
            partitions,
            config,
        };
        let appended = self.append_control(&create, term, now_ms)?;
        let slot = self.catalog.add(meta);
        let t = self.catalog.topic_mut(slot);
        t.created_at = Some(appended.position);
        t.config = config;
        Ok((appended, slot))
    }

    /// Replaces the settings of the topic in `slot`: appends a
    /// [`Control::TopicConfig`] record and applies it. Every byte below
    /// `durable` is settled (F, and C in a replication group): the start
    /// state keeps the settings of durable records only, and a cut undoes
    /// those above it. Returns where it landed.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when a new segment cannot be allocated;
    /// nothing is written then.
    pub fn set_topic_config(
        &mut self,
        slot: usize,
        config: TopicConfig,
        durable: u64,
        term: u64,
        now_ms: i64,
    ) -> Result<Appended, JournalError> {
        let topic_id = self.catalog.topic(slot).meta.id;
        let appended =
            self.append_control(&Control::TopicConfig { topic_id, config }, term, now_ms)?;
        self.catalog
            .set_config(slot, appended.position, config, durable);
        Ok(appended)
    }

    /// Appends a no-op control record ([`Control::Noop`], exactly
    /// [`control::NOOP_BATCH_BYTES`] bytes) stamped with `term`: a new
    /// leader's first entry. It changes nothing else.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when a new segment cannot be allocated;
    /// nothing is written then.
    pub fn append_noop(&mut self, term: u64, now_ms: i64) -> Result<Appended, JournalError> {
        self.append_control(&Control::Noop, term, now_ms)
    }

    /// Appends the replication group's id ([`Control::ClusterId`]),
    /// stamped with `term`, and records it in the catalog. The first leader
    /// of a new group does this right after its no-op.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when a new segment cannot be allocated;
    /// nothing is written then.
    pub fn append_cluster_id(
        &mut self,
        id: u64,
        term: u64,
        now_ms: i64,
    ) -> Result<Appended, JournalError> {
        let appended = self.append_control(&Control::ClusterId { id }, term, now_ms)?;
        self.catalog.set_cluster_id(id, appended.position);
        Ok(appended)
    }

    /// Encodes `c` as a control batch, appends it and stamps it. Control
    /// batches belong to no partition: they carry offset 0 and the topic and
    /// partition `u32::MAX`.
    fn append_control(
        &mut self,
        c: &Control,
        term: u64,
        now_ms: i64,
    ) -> Result<Appended, JournalError> {
        let len = control::encode(c, &mut self.control).len();
        let (position, rolled) = self.reserve(len)?;
        let at = self.cache.len();
        self.cache.extend_from_slice(self.control.finish(0, 0));
        stamp(
            &mut self.cache[at..],
            &Stamp {
                base_offset: 0,
                term,
                append_time_ms: now_ms,
                topic_id: u32::MAX,
                partition: u32::MAX,
            },
        );
        self.end = position + len as u64;
        self.last_term = term;
        Ok(Appended {
            position,
            end: self.end,
            base_offset: 0,
            rolled,
        })
    }

    /// Appends a DeleteRecords control record: the records of `partition`
    /// of the topic in `slot` below `before` (at most its next offset, and
    /// above its current log start, both checked by the caller) are deleted.
    /// Every byte below `durable` is settled (F, and C in a replication
    /// group; see [`Journal::set_topic_config`]). Returns where it landed.
    ///
    /// # Errors
    /// As [`Journal::create_topic`].
    pub fn delete_records(
        &mut self,
        slot: usize,
        partition: u32,
        before: u64,
        durable: u64,
        term: u64,
        now_ms: i64,
    ) -> Result<Appended, JournalError> {
        let topic_id = self.catalog.topic(slot).meta.id;
        let appended = self.append_control(
            &Control::DeleteRecords {
                topic_id,
                partition,
                before,
            },
            term,
            now_ms,
        )?;
        self.catalog
            .delete_below(slot, partition as usize, appended.position, before, durable);
        Ok(appended)
    }

    /// Appends one batch exactly as the leader stored it (already stamped),
    /// at the end of the journal, without re-stamping: a follower's journal
    /// then holds the leader's bytes at the leader's positions. The batch
    /// is checked first ([`check_stored_batch`]: length, both checksums,
    /// layout; then what [`Journal::open`]'s recovery checks: a data batch
    /// continues its partition's offsets in a known topic, a control record
    /// decodes and a `CreateTopic` fits the catalog), and applied exactly as
    /// recovery would.
    ///
    /// # Errors
    /// [`JournalError::Refused`] when a check fails; nothing changed then.
    /// [`JournalError::StorageFull`] when a new segment cannot be
    /// allocated, or an IO error writing the cache out; nothing was appended
    /// then (the cache may have been written out).
    pub fn append_replicated(&mut self, batch: &[u8]) -> Result<Replicated, JournalError> {
        let refuse = |why: String| JournalError::Refused(format!("replicated batch: {why}"));
        check_stored_batch(batch).map_err(|e| refuse(e.to_string()))?;
        let effect = check_batch(&self.catalog, batch).map_err(refuse)?;
        let (position, rolled) = self.reserve(batch.len())?;
        self.cache.extend_from_slice(batch);
        self.end = position + batch.len() as u64;
        self.last_term = BatchView(batch).term();
        if BatchView(batch).kind() == Some(BatchKind::Data) {
            self.active_newest_ms = self.active_newest_ms.max(BatchView(batch).append_time_ms());
        }
        let changed = match effect {
            Effect::DeleteRecords {
                slot,
                partition,
                before,
            } => Some(Changed::Deleted {
                slot,
                partition: partition as u32,
                below: before,
            }),
            Effect::Config(slot, config) => Some(Changed::Configured { slot, config }),
            _ => None,
        };
        let created = apply_effect(&mut self.catalog, position, batch, effect);
        Ok(Replicated {
            appended: Appended {
                position,
                end: self.end,
                base_offset: BatchView(batch).base_offset(),
                rolled,
            },
            created,
            changed,
        })
    }

    /// Tells the journal that every byte below `position` is durable and
    /// committed: DeleteRecords and settings records received from a
    /// leader below it are no longer kept apart for a cut to undo.
    pub fn settle(&mut self, position: u64) {
        if position > self.settled {
            self.settled = position;
            self.catalog.settle(position);
        }
    }

    /// Writes the cached batches to the active segment file with one
    /// `pwrite`, so that readers and the flusher see them. The writer calls
    /// this once per round, before publishing W.
    ///
    /// # Errors
    /// The write error. The cache is kept, so nothing appended is lost from
    /// memory, but W must not move past [`Journal::written`].
    pub fn write_out(&mut self) -> Result<(), JournalError> {
        if self.cache.is_empty() {
            return Ok(());
        }
        let at = self.written - self.active.start;
        self.active
            .file
            .write_all_at(&self.cache, at)
            .map_err(|e| JournalError::io("write journal segment", e))?;
        self.written = self.end;
        self.cache.clear();
        Ok(())
    }

    /// Position up to which appended bytes were handed to the kernel: W,
    /// what the writer publishes.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Replaces the journal by `snap`, a snapshot of the committed prefix
    /// up to its position `P` that the group's leader sent (its log no
    /// longer holds what this journal lacks). Afterwards the journal
    /// begins and ends at `P`, with the snapshot's catalog (topics, next
    /// offsets as log starts, settings, producer states, cluster id), and
    /// appending continues at `P`. Consumes the journal and returns it
    /// reopened by recovery (with `recovery`), so that what the broker runs
    /// on is exactly what a restart would find.
    ///
    /// Crash-safe, in this order: the segments starting at or beyond `P`
    /// are deleted, newest first (what lies beyond `P` was not committed:
    /// a member that held the committed batch ending at `P` is never sent
    /// the snapshot; a crash leaves the old journal with a shorter tail,
    /// which recovery cuts where its data ends); the snapshot file is
    /// written (a crash leaves the old journal, whose recovery removes a
    /// snapshot beyond its end); then the start state at `P` (the commit
    /// point: from here on, recovery deletes every older segment as a
    /// leftover and starts empty at `P` from the snapshot); then recovery
    /// runs.
    ///
    /// # Errors
    /// The IO error of a step (the journal is then the old one or the
    /// installed one, whole, at the next start), or a recovery error.
    pub fn install(
        mut self,
        snap: &CatalogSnapshot,
        recovery: Recovery,
    ) -> Result<Journal, JournalError> {
        let dir = self.dir.clone();
        let (segment_bytes, cache_bytes) = (self.segment_bytes, self.cache.capacity());
        self.install_files(snap)?;
        drop(self);
        Journal::open_with(&dir, segment_bytes, cache_bytes, recovery)
    }

    /// The on-disk part of [`Journal::install`], up to and with its commit
    /// point (the start state at the snapshot): a broker restarts in place
    /// after it, and its recovery does the rest. The journal must not be
    /// used afterwards but to drop it.
    ///
    /// # Errors
    /// As [`Journal::install`].
    pub fn install_files(&mut self, snap: &CatalogSnapshot) -> Result<(), JournalError> {
        let dir = self.dir.clone();
        // First the checkpoint may vouch for nothing at or beyond the
        // segment that holds P (its tail goes now, or with the old
        // journal at the commit point), as a cut does.
        let keep = self
            .files
            .iter()
            .map(|f| f.0)
            .rfind(|start| *start < snap.position)
            .unwrap_or(0);
        if let Some(cp) = checkpoint::read(&dir).ok().flatten() {
            if cp.position > keep {
                checkpoint::write(
                    &dir,
                    &checkpoint::Checkpoint {
                        position: keep,
                        ..cp
                    },
                )?;
            }
        }
        for (start, _) in self.files.iter().rev() {
            if *start < snap.position {
                break;
            }
            let path = dir.join(segment_file_name(*start));
            std::fs::remove_file(&path)
                .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
            super::dir::sync_dir(&dir)?;
        }
        snapshot::write(&dir, snap)?;
        start::write(&dir, &StartState::from_snapshot(snap))
    }

    /// Where a group member's consensus log starts, as recovery found it:
    /// the snapshot recovery started from (its position and term); or else
    /// the journal's first byte with the start state's term (`(0, 0)` for
    /// a journal that begins at position 0); or, when that term is not
    /// known, the group's snapshot on disk (the entries kept are those
    /// after it). `(start, 0)` with a start above 0: none is known.
    pub fn consensus_base(&self) -> (u64, u64) {
        self.report.consensus_base
    }

    /// Cuts the journal at `at`, a batch boundary at or below the end:
    /// everything from `at` on is gone, in memory and on disk, and appending
    /// continues at `at`. Raft calls for this when a follower's uncommitted
    /// tail diverges from the new leader's log.
    ///
    /// `durable` is the position the flusher last made durable (F); the
    /// checkpoint is rewritten so that it vouches for nothing above
    /// `min(durable, at)` nor names a removed topic. Topics whose
    /// `CreateTopic` record lies at or above `at` are removed (they are the
    /// catalog's last slots), partition indexes holding batches at or above
    /// `at` are replaced by shorter ones (the old ones stay valid for
    /// readers that hold them), and the next topic id is kept: see
    /// [`Catalog::cut`].
    ///
    /// On disk, in an order that leaves a journal recovery accepts after a
    /// crash at any step: the checkpoint first (so it never names what is
    /// cut), then the segment files above `at`, newest first, then zeros
    /// over `[at, old end)` of the segment holding `at`, which becomes the
    /// active segment (when `at` is a segment's start, that segment is kept,
    /// empty). A crash before the end leaves a longer prefix of the old
    /// journal, which consensus cuts again.
    ///
    /// The caller must keep the flusher from writing a checkpoint with an
    /// older position or topic list once this returns, and hand the
    /// returned files and index handles to the reader and flusher.
    ///
    /// # Errors
    /// [`JournalError::Refused`], changing nothing, when `at` is beyond the
    /// end or not a batch boundary. IO errors otherwise, after which the
    /// journal is between its old and new states: the broker must stop
    /// (recovery then finds a consistent journal).
    pub fn truncate(&mut self, at: u64, durable: u64) -> Result<Truncated, JournalError> {
        let refuse = |why: String| JournalError::Refused(format!("truncate at {at}: {why}"));
        let (holder, seg_start, seg_file, capacity) = self.prepare_cut(at)?;
        let cut = self.catalog.cut(at).map_err(refuse)?;
        self.entries.retain(|e| e.end <= at);

        let old_position = match checkpoint::read(&self.dir) {
            Ok(cp) => cp.map_or(0, |cp| cp.position),
            // Recovery ignores an unreadable checkpoint; vouching for
            // nothing is the safe replacement.
            Err(_) => 0,
        };
        let position = durable.min(at).min(old_position);
        // A snapshot above the cut describes batches that are about to go
        // (an unreadable one goes too).
        if !snapshot::read(&self.dir).is_ok_and(|s| s.is_none_or(|s| s.position <= at)) {
            snapshot::remove(&self.dir)?;
        }
        checkpoint::write(
            &self.dir,
            &checkpoint::Checkpoint {
                position,
                next_topic_id: self.catalog.next_topic_id(),
                topics: self.catalog.metas(),
            },
        )?;
        // Newest first, each removal durable before the next, so that a
        // crash leaves contiguous segments.
        for (start, _) in self.files.drain(holder + 1..).rev() {
            let path = self.dir.join(segment_file_name(start));
            std::fs::remove_file(&path)
                .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
            super::dir::sync_dir(&self.dir)?;
        }
        // Bytes past the old end were never written, so they are zeros
        // already; the segment's data ends at its capacity at most.
        let data_end = self.end.min(seg_start + capacity as u64);
        zero_range(&seg_file, at - seg_start, data_end - seg_start).map_err(|e| {
            JournalError::io(format!("zero segment {seg_start} from position {at}"), e)
        })?;
        self.active = Active {
            start: seg_start,
            capacity,
            file: seg_file,
        };
        // The segment holding the cut is active again; its newest time is
        // kept as it was (an upper bound: retention may keep it longer).
        if let Some(k) = self.sealed.iter().position(|x| x.start == seg_start) {
            self.active_newest_ms = self.sealed[k].newest_ms;
            self.sealed.truncate(k);
        }
        // The batch now last is not known here.
        self.last_term = 0;
        self.end = at;
        self.written = at;
        Ok(Truncated {
            removed_topic_ids: cut.removed_topic_ids,
            changed_topics: cut.changed_topics,
            files: self.files.clone(),
        })
    }

    /// Checks that [`Journal::truncate`] at `at` would be accepted: `at`
    /// is a batch boundary at or below the end and the catalog can drop
    /// what lies above it. Writes the cache out (the boundary is checked
    /// in the file) but changes nothing else.
    ///
    /// # Errors
    /// [`JournalError::Refused`] when the cut would be refused; IO errors.
    pub fn check_cut(&mut self, at: u64) -> Result<(), JournalError> {
        self.prepare_cut(at).map(|_| ())
    }

    /// The checks of a cut at `at`: returns the index, start, file and
    /// capacity of the segment holding `at`.
    fn prepare_cut(&mut self, at: u64) -> Result<(usize, u64, Arc<File>, usize), JournalError> {
        let refuse = |why: String| JournalError::Refused(format!("truncate at {at}: {why}"));
        if at > self.end {
            return Err(refuse(format!("beyond the end {}", self.end)));
        }
        self.write_out()?;
        // The segment holding `at`: the last starting at or below it.
        let holder = self
            .files
            .iter()
            .rposition(|(start, _)| *start <= at)
            .ok_or_else(|| refuse("below the first segment".into()))?;
        let (seg_start, seg_file) = self.files[holder].clone();
        let capacity = if seg_start == self.active.start {
            self.active.capacity
        } else {
            let len = seg_file
                .metadata()
                .map_err(|e| JournalError::io(format!("stat segment {seg_start}"), e))?
                .len();
            usize::try_from(len)
                .map_err(|_| JournalError::Corrupt(format!("segment {seg_start} is {len} bytes")))?
        };
        {
            let path = self.dir.join(segment_file_name(seg_start));
            let seg = Segment::open(&path, seg_start)?;
            check_boundary(seg.bytes(), (at - seg_start) as usize).map_err(refuse)?;
        }
        self.catalog.check_cut(at).map_err(refuse)?;
        Ok((holder, seg_start, seg_file, capacity))
    }

    /// The journal's first kept byte: 0 until retention deletes a segment.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The segments no longer appended to, oldest first.
    pub fn sealed(&self) -> &[Sealed] {
        &self.sealed
    }

    /// Applies `policy` at broker time `now_ms`: picks the oldest sealed
    /// segments to delete — while the journal minus a segment still holds
    /// `policy.bytes`, or while a segment's newest batch is older than
    /// `policy.ms` — but only segments wholly below `durable` (F), and
    /// always from the oldest on, so that the journal stays contiguous.
    /// The active segment is never deleted.
    ///
    /// On a decision the journal forgets those segments at once (their
    /// files are handed over in the result) and starts at the first kept
    /// byte; the caller writes the returned start state durably, then
    /// deletes the files. Nothing is deleted here: no IO on the writer.
    pub fn retain(&mut self, policy: Retention, durable: u64, now_ms: i64) -> Option<Retained> {
        let scan = self.retention_scan(policy, durable, now_ms);
        let (k, held_by) = (scan.k, scan.held_by);
        match scan.warn {
            Some(Warn::HeldBy(slot, start)) if self.warned != start => {
                self.warned = start;
                let t = self.catalog.topic(slot);
                crate::log!(
                    "retention: topic {} (retention_ms {}) keeps segment {} and every later one \
                     from time retention; the journal grows until that topic's records age out \
                     (retention_bytes still applies); the log starts of topics on the broker's \
                     time limit move past their records older than it meanwhile",
                    t.meta.name,
                    t.config.retention_ms.unwrap_or(0),
                    start
                );
            }
            Some(Warn::Future(start, ahead)) if self.warned != start => {
                self.warned = start;
                crate::log!(
                    "retention: segment {start} holds batches stamped {ahead} ms ahead of the \
                     broker's clock now; time retention keeps it and every later segment until \
                     the clock passes that time (size retention still applies)"
                );
            }
            _ => {}
        }
        self.held_by = held_by;
        let last = self.sealed.get(k.checked_sub(1)?)?;
        let (position, term) = (last.end, last.end_term);
        let mut state = self.start_state_at(position, durable);
        state.term = term;
        let gone = self.files.partition_point(|f| f.0 < position);
        let files = self.files.drain(..gone).collect();
        self.sealed.drain(..k);
        self.start = position;
        self.catalog.forget_below(position);
        Some(Retained { state, files })
    }

    /// Where [`Journal::retain`] would start the journal now, with
    /// `durable` the bound it may delete below, without changing anything:
    /// a group member compacts its consensus log when retention wants to
    /// delete beyond the log's base.
    pub fn retention_reach(&self, policy: Retention, durable: u64, now_ms: i64) -> Option<u64> {
        let k = self.retention_scan(policy, durable, now_ms).k;
        Some(self.sealed.get(k.checked_sub(1)?)?.end)
    }

    /// How many of the oldest sealed segments retention deletes: oldest
    /// first, each segment judged by its own stamps, stopping at the first
    /// one to keep. A clock that was wrong for a while errs on the safe
    /// side: a stamp from the future holds the segments after it back
    /// (a warning), where deleting up to the newest old stamp would delete
    /// recent segments whenever the clock had been behind.
    fn retention_scan(&self, policy: Retention, durable: u64, now_ms: i64) -> RetentionScan {
        let cutoff = policy.ms.map(|ms| cutoff_at(now_ms, ms));
        let mut held = self.end - self.start;
        let mut scan = RetentionScan {
            k: 0,
            held_by: None,
            warn: None,
        };
        for seg in &self.sealed {
            let len = seg.end - seg.start;
            if seg.end > durable {
                break;
            }
            let by_size = policy.bytes > 0 && held - len >= policy.bytes;
            let old = cutoff.is_some_and(|c| seg.newest_ms < c);
            if old && !by_size {
                scan.held_by = self.held_by_topic(seg, durable, policy.ms, now_ms);
            }
            let by_time = old && scan.held_by.is_none();
            if let Some(slot) = scan.held_by.filter(|_| !by_size) {
                scan.warn = Some(Warn::HeldBy(slot, seg.start));
            }
            if !(by_size || by_time) {
                if seg.newest_ms > now_ms.saturating_add(FUTURE_STAMP_MS) && scan.warn.is_none() {
                    scan.warn = Some(Warn::Future(seg.start, seg.newest_ms - now_ms));
                }
                break;
            }
            held -= len;
            scan.k += 1;
        }
        scan
    }

    /// The first topic (slot) whose own time limit is longer than the
    /// broker's `broker_ms` (or none) and that holds a batch in `seg` its
    /// limit keeps (and DeleteRecords did not delete durably): then time
    /// retention keeps the segment. Both the topic's settings now and the
    /// durable ones count (every byte below `durable` is durable), so that
    /// a change a crash may lose releases nothing. Looks only at such
    /// topics' partitions.
    fn held_by_topic(
        &self,
        seg: &Sealed,
        durable: u64,
        broker_ms: Option<u64>,
        now_ms: i64,
    ) -> Option<usize> {
        let holds = |t: &super::catalog::Topic, config: TopicConfig| {
            let Some(ms) = config.retention_ms else {
                return false;
            };
            if ms != 0 && broker_ms.is_none_or(|b| ms <= b) {
                return false;
            }
            let cutoff = (ms != 0).then(|| cutoff_at(now_ms, ms));
            t.partitions
                .iter()
                .any(|p| p.holds_in(seg.start, seg.end, durable, cutoff))
        };
        self.catalog
            .topics()
            .iter()
            .position(|t| holds(t, t.config) || holds(t, t.durable_config(durable)))
    }

    /// Whether a topic's own time limit kept the oldest segment from time
    /// retention at the last look.
    pub fn retention_held(&self) -> bool {
        self.held_by.is_some()
    }

    /// The log starts the settings of the topic in `slot` ask for
    /// ([`Partition::retention_start`](super::catalog::Partition::retention_start)) at broker time
    /// `now_ms`, for each of its partitions whose log start they move up:
    /// `(partition, new log start)`. A topic whose time limit is left to
    /// the broker takes `broker_ms` (`None`: no time limit here; the
    /// writer passes the broker's only while a topic holds segments from
    /// time retention, [`Journal::retention_held`]). Empty for a topic
    /// without limits.
    pub fn retention_moves(
        &self,
        slot: usize,
        now_ms: i64,
        broker_ms: Option<u64>,
    ) -> Vec<(u32, u64)> {
        let t = self.catalog.topic(slot);
        let cutoff = t
            .config
            .effective_ms(broker_ms)
            .map(|ms| cutoff_at(now_ms, ms));
        let keep = t.config.bytes_limit();
        if cutoff.is_none() && keep.is_none() {
            return Vec::new();
        }
        t.partitions
            .iter()
            .enumerate()
            .filter_map(|(n, p)| {
                let now = p.log_start_at(self.start).max(p.deleted_below());
                let wanted = p
                    .retention_start(self.start, cutoff, keep)
                    .min(p.next_offset);
                (wanted > now).then_some((n as u32, wanted))
            })
            .collect()
    }

    /// The sealed segments wholly below `durable` (C) not handed out yet, as
    /// one job for the indexing stage, with a read handle on every
    /// partition index; `None` when there is none. A segment is handed out
    /// once.
    ///
    /// A job without segments only trims: when retention deleted segments
    /// before they were indexed, or a cut made an earlier trim miss, the
    /// entries below the journal start (or below what is indexed) still
    /// have to leave memory.
    pub fn index_job(&mut self, durable: u64) -> Option<IndexJob> {
        let from = self.indexing_from.max(self.start);
        let segments: Vec<(u64, u64)> = self
            .sealed
            .iter()
            .filter(|s| s.start >= from && s.end <= durable)
            .map(|s| (s.start, s.end))
            .collect();
        let (trimmed_below, stale) = self.catalog.take_trim_state();
        let below = self.start.max(trimmed_below);
        match segments.last() {
            Some(&(_, last_end)) => self.indexing_from = last_end,
            None if stale || below > trimmed_below => {}
            None => return None,
        }
        let partitions = self
            .catalog
            .topics()
            .iter()
            .flat_map(|t| {
                t.index_handles()
                    .into_iter()
                    .enumerate()
                    .map(|(i, handle)| JobPartition {
                        topic_id: t.meta.id,
                        partition: i as u32,
                        handle,
                    })
            })
            .collect();
        Some(IndexJob {
            segments,
            below,
            partitions,
        })
    }

    /// Takes in what the indexing stage did for a job
    /// ([`Catalog::trim`](super::catalog::Catalog::trim)); returns the
    /// slots of the topics whose readers need new index handles.
    pub fn trim(&mut self, trim: Trim) -> Vec<usize> {
        let changed = self.catalog.trim(trim);
        // Retention may have deleted some of its segments meanwhile.
        self.catalog.forget_below(self.start);
        changed
    }

    /// The start state of a journal that begins at `position`, a segment
    /// start: every topic whose creation is durable (below `durable`; one
    /// created since is met again by recovery if its record survives, and
    /// must not come back through this file if it does not), with each
    /// partition's log start there.
    fn start_state_at(&self, position: u64, durable: u64) -> StartState {
        let topics = self
            .catalog
            .topics()
            .iter()
            .filter(|t| t.created_at.is_none_or(|p| p < durable))
            .map(|t| StartTopic {
                meta: t.meta.clone(),
                config: t.durable_config(durable),
                log_starts: t
                    .partitions
                    .iter()
                    .map(|p| p.log_start_at(position))
                    .collect(),
                // Only deletions a crash cannot lose: the file outlives the
                // records that made them.
                deleted_below: t
                    .partitions
                    .iter()
                    .map(|p| p.durable_deleted_below(durable))
                    .collect(),
            })
            .collect();
        StartState {
            position,
            // The caller's to fill in when it knows it.
            term: 0,
            // Only a durable record: the file outlives it.
            cluster_id: self
                .catalog
                .cluster_id_record()
                .filter(|&(_, at)| at < durable.min(position)),
            next_topic_id: self.catalog.next_topic_id(),
            topics,
        }
    }

    /// Finds room for `len` bytes at the end: writes the cache out when it
    /// cannot take them, and rolls to a new segment when the active one
    /// cannot hold them.
    fn reserve(&mut self, len: usize) -> Result<(u64, Option<SegmentFile>), JournalError> {
        let used = (self.end - self.active.start) as usize;
        let rolls = used + len > self.active.capacity;
        if rolls || self.cache.len() + len > self.cache.capacity() {
            self.write_out()?;
        }
        if !rolls {
            return Ok((self.end, None));
        }
        let capacity = self.segment_bytes.max(len);
        if used == 0 {
            // The active segment holds nothing (a truncation cut it back to
            // its start, or a crash came right after a roll): a new segment
            // would start at the same position, so grow this one instead.
            let path = self.dir.join(segment_file_name(self.active.start));
            super::segment::grow(&self.active.file, &path, capacity)?;
            self.active.capacity = capacity;
            return Ok((self.end, None));
        }
        // The old segment is complete: make it durable before the new one
        // exists, so that a crash (power loss included) can only ever tear
        // the last segment. Recovery then tells damage in an earlier
        // segment (never torn by a crash) from a torn tail; without this
        // sync a power cut could leave an old segment short of where a
        // durable new one starts. One fdatasync per segment, of what the
        // flusher has not synced yet.
        (self.sync_file)(&self.active.file).map_err(|e| {
            JournalError::io(
                format!("fdatasync segment {} at a roll", self.active.start),
                e,
            )
        })?;
        let seg = Segment::create(&self.dir, self.end, capacity)?;
        let file = (self.end, seg.file().clone());
        self.files.push(file.clone());
        self.sealed.push(Sealed {
            start: self.active.start,
            end: self.end,
            newest_ms: self.active_newest_ms,
            end_term: self.last_term,
        });
        self.active_newest_ms = i64::MIN;
        self.active = Active {
            start: self.end,
            capacity,
            file: seg.file().clone(),
        };
        Ok((self.end, Some(file)))
    }
}

/// Deletes the segment index files of `dir` that belong to no sealed
/// segment, and unfinished ones. Returns their paths.
///
/// # Errors
/// IO errors listing or removing files.
fn remove_stray_index_files(dir: &Path, sealed: &[Sealed]) -> Result<Vec<PathBuf>, JournalError> {
    let (files, unfinished) = super::seg_index::list(dir)?;
    let mut removed = Vec::new();
    for (start, path) in files {
        if sealed.binary_search_by_key(&start, |s| s.start).is_err() {
            super::seg_index::remove(dir, start)?;
            removed.push(path);
        }
    }
    for path in unfinished {
        std::fs::remove_file(&path)
            .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Deletes the segment files of `dir` that start below `base` (the start
/// state's position): what a retention pass interrupted by a crash had not
/// deleted yet. Oldest first, like the pass. Returns their paths.
///
/// # Errors
/// IO errors listing or removing files.
fn remove_below(dir: &Path, base: u64, installed: bool) -> Result<Vec<PathBuf>, JournalError> {
    let listed = list_segments(dir)?;
    // A recovery that refuses changes no file: check the segment at the
    // start is there before deleting anything (`scan_journal` says why),
    // unless an install wrote the start state (nothing may be there yet).
    if base > 0 && !installed && !listed.iter().any(|(start, _)| *start == base) {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for (start, path) in listed {
        if start >= base {
            break;
        }
        crate::log!(
            "removing segment {} below the journal start {base} ({})",
            path.display(),
            if installed {
                "a snapshot install replaced the journal"
            } else {
                "a deletion interrupted by a crash"
            }
        );
        std::fs::remove_file(&path)
            .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        super::dir::sync_dir(dir)?;
    }
    Ok(removed)
}

/// What one pass of recovery's walk over the segments found (the full
/// walk's, or [`resume`]'s).
pub(super) struct Scanned {
    /// The segment files listed when the pass began.
    pub(super) listed: Vec<(u64, PathBuf)>,
    pub(super) catalog: Catalog,
    /// The files walked, up to the one holding the end.
    pub(super) files: Vec<SegmentFile>,
    /// The segment holding the end, still mapped.
    pub(super) active: Option<Segment>,
    /// Position one past the last valid batch.
    pub(super) end: u64,
    pub(super) entries: Vec<Entry>,
    /// The first damage: where, why, and the index (in `listed`) of the
    /// segment holding it.
    pub(super) damage: Option<(u64, String, usize)>,
    /// The newest data append time in each file of `files`.
    pub(super) newest: Vec<i64>,
    /// The term of the last batch of each file of `files` (0: none read).
    pub(super) end_terms: Vec<u64>,
}

/// Walks every segment from the start: rebuilds the catalog from the
/// checkpoint's topics and every batch, fully checking the batches above
/// `verify_from`, and stops at the first damage (see [`Journal::open_with`]).
/// Changes nothing on disk but an empty last segment, which it removes.
fn scan_journal(
    dir: &Path,
    cp: &checkpoint::Checkpoint,
    start: Option<&StartState>,
    verify_from: u64,
    recovery: &Recovery,
    installed: bool,
    begins_at: Option<&CatalogSnapshot>,
) -> Result<Scanned, JournalError> {
    let keep_entries = recovery.entries;
    let next_topic_id = cp.next_topic_id.max(start.map_or(0, |st| st.next_topic_id));
    let mut catalog = Catalog::new(next_topic_id, recovery.producers);
    // Topics as they stood at the journal's first kept byte, each
    // partition continuing from its log start; then any the checkpoint
    // knows besides (created later: the walk meets their records again).
    for t in start.map_or(&[][..], |st| &st.topics[..]) {
        let slot = catalog.add(t.meta.clone());
        // Created in the deleted part of the journal, which no cut can
        // reach (a cut never goes below the first kept byte): recorded, so
        // that a repair's `drop_unrecorded` keeps it.
        let topic = catalog.topic_mut(slot);
        topic.created_at = Some(0);
        topic.config = t.config;
        topic.continue_from(t);
    }
    for t in &cp.topics {
        if catalog.lookup_id(t.id).is_none() && catalog.lookup(&t.name).is_none() {
            catalog.add(t.clone());
        }
    }
    // The group's id, set by a record in the deleted part.
    if let Some((id, at)) = start.and_then(|st| st.cluster_id) {
        catalog.set_cluster_id(id, at);
    }
    // A journal that begins at a group's snapshot (it installed it) has
    // its producer states there: the walk continues them.
    if let Some(snap) = begins_at {
        catalog.restore_producers(&snap.producers, recovery.producers);
    }
    let base = start.map_or(0, |st| st.position);
    let mut listed = list_segments(dir)?;
    // Retention never deletes the active segment, so with a start state
    // the segment at its position must be there.
    match (listed.first(), start) {
        (Some((first, path)), Some(_)) if *first != base => {
            return Err(JournalError::Corrupt(format!(
                "the journal starts at position {base} (its start state) but its oldest \
                 segment, {}, starts at {first}: segments are missing",
                path.display()
            )));
        }
        (Some((first, path)), None) if *first != 0 => {
            return Err(JournalError::Corrupt(format!(
                "the oldest segment, {}, starts at position {first} and there is no start \
                 state (the file retention writes before it deletes segments): segments \
                 are missing",
                path.display()
            )));
        }
        // Nothing after an installed snapshot yet.
        (None, Some(_)) if installed => {}
        (None, Some(_)) => {
            return Err(JournalError::Corrupt(format!(
                "the journal starts at position {base} (its start state) but no segment \
                 is left: segments are missing"
            )));
        }
        _ => {}
    }
    let mut files = Vec::with_capacity(listed.len());
    let mut newest = Vec::with_capacity(listed.len());
    let mut end_terms = Vec::with_capacity(listed.len());
    let mut removed_empty = false;
    let mut active = None;
    let mut end = base;
    // Consensus needs every batch, so every segment is scanned from its
    // start; the checkpoint only spares the record checks below it.
    let mut entries = Vec::new();
    let mut damage: Option<(u64, String, usize)> = None;
    for (i, (start, path)) in listed.iter().enumerate() {
        let is_last = i + 1 == listed.len();
        if *start != end {
            // The previous segment's data stops short of this one.
            damage = Some((
                end,
                format!(
                    "the data ends at {end} but the next segment, {}, starts at {start}",
                    path.display()
                ),
                i - 1,
            ));
            break;
        }
        if is_last && is_empty_file(path)? {
            // A crash between creating a segment file and preallocating
            // it leaves it empty; nothing was ever written to it (the
            // writer only appends after preallocation), so it goes.
            crate::log!(
                "removing empty segment {} left by a crash during a roll",
                path.display()
            );
            std::fs::remove_file(path)
                .map_err(|e| JournalError::io(format!("remove {}", path.display()), e))?;
            super::dir::sync_dir(dir)?;
            removed_empty = true;
            break;
        }
        let seg = Segment::open(path, *start)?;
        let mut seg_newest = i64::MIN;
        let mut seg_term = 0;
        let result = scan(seg.bytes(), *start, verify_from, |pos, batch| {
            apply_batch(&mut catalog, pos, batch)?;
            if BatchView(batch).kind() == Some(BatchKind::Data) {
                seg_newest = seg_newest.max(BatchView(batch).append_time_ms());
            }
            seg_term = BatchView(batch).term();
            if keep_entries {
                entries.push(Entry {
                    start: pos,
                    end: pos + batch.len() as u64,
                    term: BatchView(batch).term(),
                });
            }
            Ok(())
        });
        end = start + result.valid_len as u64;
        files.push((*start, seg.file().clone()));
        newest.push(seg_newest);
        end_terms.push(seg_term);
        let why = match &result.stop {
            ScanStop::Torn(why) | ScanStop::Refused(why) => Some(why.clone()),
            // Zeros where the checkpoint says durable data lies.
            ScanStop::End if is_last && end < cp.position => Some(format!(
                "the data ends at {end}, below the checkpoint's durable position {}",
                cp.position
            )),
            ScanStop::End => None,
        };
        if let Some(why) = why {
            damage = Some((end, why, i));
        }
        active = Some(seg);
        if damage.is_some() {
            break;
        }
    }
    if removed_empty {
        listed.pop();
    }
    if damage.is_none() && end < cp.position {
        // No segment is left to hold what the checkpoint vouches for: the
        // files were lost, or all that is left is an empty one from a
        // crash during a roll. (A scanned last segment that ends short is
        // caught above, with its own index.)
        damage = Some((
            end,
            format!(
                "the data ends at {end} where no segment holds more, below the \
                 checkpoint's durable position {}",
                cp.position
            ),
            listed.len().saturating_sub(1),
        ));
    }
    Ok(Scanned {
        listed,
        catalog,
        files,
        active,
        end,
        entries,
        damage,
        newest,
        end_terms,
    })
}

/// True when the last batch of every partition passes the full check
/// (`check_stored_batch`) where the walk only checked its header (it ends
/// at or below `verify_from`): a damaged record count there would go
/// unnoticed, giving the partition a wrong next offset.
fn last_batches_ok(catalog: &Catalog, files: &[SegmentFile], verify_from: u64) -> bool {
    let mut buf = Vec::new();
    for part in catalog.topics().iter().flat_map(|t| t.partitions.iter()) {
        let Some(e) = part
            .index
            .len()
            .checked_sub(1)
            .and_then(|i| part.index.get(i))
        else {
            continue;
        };
        if e.end_position() > verify_from {
            continue;
        }
        let holder = files.partition_point(|f| f.0 <= e.position);
        let Some((start, file)) = holder.checked_sub(1).and_then(|h| files.get(h)) else {
            return false;
        };
        buf.resize(e.len as usize, 0);
        if file.read_exact_at(&mut buf, e.position - start).is_err()
            || check_stored_batch(&buf).is_err()
        {
            return false;
        }
    }
    true
}

fn is_empty_file(path: &Path) -> Result<bool, JournalError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| JournalError::io(format!("stat {}", path.display()), e))?;
    Ok(meta.len() == 0)
}

/// What a checked batch does to the catalog, found by [`check_batch`]
/// and carried out by [`apply_effect`].
enum Effect {
    /// A `CreateTopic` of a new topic.
    Create(TopicMeta, TopicConfig),
    /// A `CreateTopic` of a topic the catalog holds already (from the
    /// checkpoint), in this slot, with the settings it was created with.
    Known(usize, TopicConfig),
    /// New settings of the topic in this slot.
    Config(usize, TopicConfig),
    /// A data batch continuing this partition of the topic in this slot.
    Data { slot: usize, partition: usize },
    /// The replication group's id, first seen.
    ClusterId(u64),
    /// The records of a partition below `before` are deleted.
    DeleteRecords {
        slot: usize,
        partition: usize,
        before: u64,
    },
    /// A no-op.
    Nothing,
}

/// Checks what a batch (whose checksums were checked) would do to the
/// catalog, changing nothing: a control record must decode and a
/// `CreateTopic` fit the catalog; a data batch must belong to a known
/// partition and continue its offsets. Recovery and replication both use
/// it, so a follower accepts exactly what a restart would.
fn check_batch(catalog: &Catalog, batch: &[u8]) -> Result<Effect, String> {
    let view = BatchView(batch);
    match view.kind() {
        Some(BatchKind::Control) => match control::decode(batch).map_err(|e| e.to_string())? {
            Control::CreateTopic {
                id,
                name,
                partitions,
                config,
            } => match catalog.lookup(&name) {
                Some(slot) if catalog.topic(slot).meta.id == id => Ok(Effect::Known(slot, config)),
                Some(_) => Err(format!("topic {name} re-created with another id")),
                // Data batches name their topic by id: an id taken by
                // another topic would send its batches to the wrong one.
                None if catalog.lookup_id(id).is_some() => Err(format!(
                    "topic {name} created with the id {id} of another topic"
                )),
                // The count comes from the file: believe it only within
                // the limit, or a damaged record could exhaust memory.
                None if !catalog.has_room_for(partitions) => Err(format!(
                    "topic {name} declares {partitions} partitions, beyond the journal's \
                     limit of {PARTITIONS_MAX} in all"
                )),
                None => Ok(Effect::Create(
                    TopicMeta {
                        id,
                        name,
                        partitions,
                    },
                    config,
                )),
            },
            Control::Noop => Ok(Effect::Nothing),
            Control::TopicConfig { topic_id, config } => catalog
                .lookup_id(topic_id)
                .map(|slot| Effect::Config(slot, config))
                .ok_or_else(|| format!("settings of unknown topic id {topic_id}")),
            Control::DeleteRecords {
                topic_id,
                partition,
                before,
            } => {
                let slot = catalog
                    .lookup_id(topic_id)
                    .ok_or_else(|| format!("records deleted in unknown topic id {topic_id}"))?;
                let part = catalog
                    .topic(slot)
                    .partitions
                    .get(partition as usize)
                    .ok_or_else(|| format!("records deleted in unknown partition {partition}"))?;
                if before > part.next_offset {
                    return Err(format!(
                        "records deleted below {before}, beyond the partition's end {}",
                        part.next_offset
                    ));
                }
                Ok(Effect::DeleteRecords {
                    slot,
                    partition: partition as usize,
                    before,
                })
            }
            Control::ClusterId { id } => match catalog.cluster_id() {
                None => Ok(Effect::ClusterId(id)),
                Some(known) if known == id => Ok(Effect::Nothing),
                Some(known) => Err(format!(
                    "cluster id {id:#018x} where {known:#018x} was recorded: \
                     the journal mixes two replication groups"
                )),
            },
        },
        Some(BatchKind::Data) => {
            let slot = catalog
                .lookup_id(view.topic_id())
                .ok_or_else(|| format!("batch for unknown topic id {}", view.topic_id()))?;
            let partition = view.partition() as usize;
            let part = catalog
                .topic(slot)
                .partitions
                .get(partition)
                .ok_or_else(|| format!("batch for unknown partition {}", view.partition()))?;
            if view.base_offset() != part.next_offset {
                return Err(format!(
                    "base offset {} where {} was expected",
                    view.base_offset(),
                    part.next_offset
                ));
            }
            Ok(Effect::Data { slot, partition })
        }
        None => Err("unknown batch kind".into()),
    }
}

/// Carries out what [`check_batch`] found for the batch at `position`.
/// Returns the slot of a topic it created.
fn apply_effect(
    catalog: &mut Catalog,
    position: u64,
    batch: &[u8],
    effect: Effect,
) -> Option<usize> {
    match effect {
        Effect::Create(meta, config) => {
            let slot = catalog.add(meta);
            let t = catalog.topic_mut(slot);
            t.created_at = Some(position);
            t.config = config;
            Some(slot)
        }
        Effect::Known(slot, config) => {
            // The first record wins: a repeated one must not move the
            // topic's creation up, or a cut between the two would remove
            // a topic whose creation is kept. A topic known from the
            // checkpoint (which has no settings) takes the record's.
            let t = catalog.topic_mut(slot);
            if t.created_at.is_none() {
                t.created_at = Some(position);
                t.config = config;
            }
            None
        }
        Effect::Config(slot, config) => {
            catalog.set_config(slot, position, config, 0);
            None
        }
        Effect::Data { slot, partition } => {
            catalog.land(slot, partition, position, batch);
            None
        }
        Effect::ClusterId(id) => {
            catalog.set_cluster_id(id, position);
            None
        }
        // Kept apart, with their positions, until the journal settles
        // below them (`Journal::settle`): a replicated record may still be
        // cut, and a recovered one too on a member of a replication group.
        Effect::DeleteRecords {
            slot,
            partition,
            before,
        } => {
            catalog.delete_below(slot, partition, position, before, 0);
            None
        }
        Effect::Nothing => None,
    }
}

/// Applies one recovered batch to the catalog: a control record creates its
/// topic, a data batch extends its partition's index. A batch that does not
/// continue its partition's offsets is refused: it cannot belong after what
/// precedes it, so the journal is cut there. Returns the slot of a topic it
/// created.
pub(super) fn apply_batch(
    catalog: &mut Catalog,
    position: u64,
    batch: &[u8],
) -> Result<Option<usize>, String> {
    let effect = check_batch(catalog, batch)?;
    Ok(apply_effect(catalog, position, batch, effect))
}

/// Checks a batch received from the leader before a follower accepts the
/// append that carries it, without looking at the journal: exactly one
/// batch (its `batch_len` is its length), both checksums and the layout
/// ([`check_stored_batch`]), and `term` in its header, the term consensus
/// says its entry has. [`Journal::append_replicated`] checks the rest when
/// appending.
///
/// # Errors
/// Why the batch is refused.
pub fn check_replicated_batch(batch: &[u8], term: u64) -> Result<(), String> {
    check_stored_batch(batch).map_err(|e| e.to_string())?;
    let header_term = BatchView(batch).term();
    if header_term != term {
        return Err(format!(
            "batch of term {header_term} where its entry has term {term}"
        ));
    }
    Ok(())
}

/// Checks that `target` is a batch boundary of a segment's `bytes` by
/// walking the batch headers from the segment's start (a segment starts
/// with a batch, and batches never span segments). Each header's checksum
/// is checked on the way, so a damaged length cannot lead the walk astray.
fn check_boundary(bytes: &[u8], target: usize) -> Result<(), String> {
    let mut at = 0;
    while at < target {
        let rest = &bytes[at..];
        let len = declared_len(rest)
            .filter(|&len| len >= BATCH_HEADER_LEN && len <= rest.len())
            .ok_or_else(|| format!("no batch at segment byte {at}"))?;
        if !header_crc_ok(&rest[..len]) {
            return Err(format!("damaged batch header at segment byte {at}"));
        }
        if at + len > target {
            return Err(format!(
                "segment byte {target} lies inside the batch at {at}, not at a batch boundary"
            ));
        }
        at += len;
    }
    Ok(())
}

/// Writes zeros over `[from, to)` of `file` with `pwrite`, a chunk at a
/// time, then `fdatasync`s it.
fn zero_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::control::NOOP_BATCH_BYTES;
    use crate::journal::index::IndexEntry;
    use proptest::prelude::*;

    /// Small segments, so that a few batches roll to new ones.
    const SEGMENT_BYTES: usize = 1024;
    const CACHE_BYTES: usize = 4096;

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, SEGMENT_BYTES, CACHE_BYTES).unwrap()
    }

    /// Opens the journal in `dir` as a standalone broker does (no
    /// consensus entries), from the catalog snapshot when `from_snapshot`.
    fn standalone(dir: &Path, from_snapshot: bool) -> Journal {
        Journal::open_with(
            dir,
            SEGMENT_BYTES,
            CACHE_BYTES,
            Recovery {
                entries: false,
                from_snapshot,
                ..Recovery::default()
            },
        )
        .unwrap()
    }

    /// A producer batch of `records` records with `value_len`-byte values.
    fn producer_batch(records: u32, value_len: usize, producer_id: u64, seq: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..records {
            b.push(
                1_000 + i64::from(i),
                b"k",
                &vec![i as u8 + 1; value_len],
                &[],
            );
        }
        b.finish(producer_id, seq).to_vec()
    }

    fn append(j: &mut Journal, slot: usize, partition: u32, batch: &[u8], term: u64) -> Appended {
        let count = BatchView(batch).record_count();
        j.append_data(slot, partition, batch, count, term, 77)
            .unwrap()
    }

    /// A leader's journal in `dir`: topic `t` of 2 partitions, `batches`
    /// batches of producer 9 on partition 0 and one of producer 8 on
    /// partition 1, all of term 2; and its snapshot at the end, as the
    /// leader would send it.
    fn leader_snapshot(dir: &Path, batches: u64) -> CatalogSnapshot {
        let mut l = open(dir);
        let (_, slot) = l.create_topic("t", 2, 2, 5).unwrap();
        for seq in 0..batches {
            append(&mut l, slot, 0, &producer_batch(3, 40, 9, seq * 3), 2);
        }
        append(&mut l, slot, 1, &producer_batch(1, 40, 8, 0), 2);
        let mut snap = l.catalog().snapshot(l.end());
        snap.term = 2;
        snap
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg") || n.ends_with(".idx"))
            .collect();
        names.sort();
        names
    }

    /// Checks that `j` holds exactly what `snap` says and nothing else:
    /// it begins and ends at the snapshot, each partition starts at its
    /// next offset, the producer states carry on, and the next batch
    /// lands at the snapshot's position with the next offset.
    fn assert_installed(j: &mut Journal, snap: &CatalogSnapshot, term: u64) {
        let p = snap.position;
        assert_eq!((j.start(), j.end(), j.written()), (p, p, p));
        assert_eq!(j.consensus_base(), (p, snap.term));
        let t = &j.catalog().topics()[0];
        assert_eq!(t.meta.name, "t");
        for (k, part) in t.partitions.iter().enumerate() {
            assert_eq!(part.next_offset, snap.topics[0].next_offsets[k]);
            assert_eq!(part.log_start_at(p), snap.topics[0].next_offsets[k]);
        }
        // Producer 9's next batch is the next in sequence; its last one a
        // duplicate (the window came with the snapshot).
        let state = snap
            .producers
            .states
            .iter()
            .find(|st| st.key.producer_id == 9)
            .expect("producer 9's state");
        let next_seq = state.next_seq;
        let last_first = state.window.last().expect("a remembered batch").first_seq;
        let dup = producer_batch(3, 40, 9, last_first);
        assert!(matches!(j.check_seq(0, 0, &dup, 0), SeqCheck::Duplicate(_)));
        let next = producer_batch(3, 40, 9, next_seq);
        assert_eq!(j.check_seq(0, 0, &next, 0), SeqCheck::New);
        let landed = append(j, 0, 0, &next, term);
        assert_eq!(landed.position, p);
        assert_eq!(
            j.catalog().topics()[0].partitions[0].next_offset,
            snap.topics[0].next_offsets[0] + 3
        );
    }

    /// A follower that lacks what its leader compacted away installs the
    /// leader's snapshot: its own journal is gone (every segment and index
    /// file), and it continues from the snapshot, as recovery finds it on
    /// the next start too, standalone-style or as a group member.
    #[test]
    fn an_installed_snapshot_replaces_the_journal_and_survives_a_restart() {
        let leader = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(leader.path(), 40);
        for entries in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut f = open(dir.path());
            let (_, slot) = f.create_topic("t", 2, 1, 5).unwrap();
            for seq in 0..5 {
                append(&mut f, slot, 0, &producer_batch(3, 40, 9, seq * 3), 1);
            }
            assert!(f.segment_files().len() > 1, "several segments to drop");
            let recovery = Recovery {
                entries,
                ..Recovery::default()
            };
            let mut j = f.install(&snap, recovery).unwrap();
            assert_eq!(files_in(dir.path()), vec![segment_file_name(snap.position)]);
            assert!(j.take_entries().is_empty());
            assert_installed(&mut j, &snap, 3);
            let end = j.end();
            j.write_out().unwrap();
            drop(j);
            let mut again =
                Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, recovery).unwrap();
            assert_eq!((again.start(), again.end()), (snap.position, end));
            assert_eq!(again.consensus_base(), (snap.position, 2));
            if entries {
                // A group member's log: the batch after the snapshot.
                let e = again.take_entries();
                assert_eq!(e.len(), 1);
                assert_eq!((e[0].start, e[0].end, e[0].term), (snap.position, end, 3));
            }
            assert_eq!(
                again.catalog().topics()[0].partitions[0].next_offset,
                snap.topics[0].next_offsets[0] + 3
            );
        }
    }

    /// A crash at each step of an install leaves the old journal or the
    /// installed one, never a mix: after the snapshot file alone, the old
    /// journal (the snapshot beyond its end is removed); after the start
    /// state too (the commit point), the installed one, before recovery
    /// ever deleted a segment.
    #[test]
    fn a_crash_during_an_install_leaves_the_old_journal_or_the_new_one() {
        let leader = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(leader.path(), 40);
        for step in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let mut f = open(dir.path());
            let (_, slot) = f.create_topic("t", 2, 1, 5).unwrap();
            for seq in 0..5 {
                append(&mut f, slot, 0, &producer_batch(3, 40, 9, seq * 3), 1);
            }
            f.write_out().unwrap();
            let old_end = f.end();
            drop(f);
            snapshot::write(dir.path(), &snap).unwrap();
            if step == 1 {
                start::write(dir.path(), &StartState::from_snapshot(&snap)).unwrap();
            }
            let mut j = open(dir.path());
            if step == 0 {
                assert_eq!((j.start(), j.end()), (0, old_end), "the old journal");
                assert_eq!(snapshot::read(dir.path()).unwrap(), None);
                assert_eq!(j.catalog().topics()[0].partitions[0].next_offset, 15);
            } else {
                assert_installed(&mut j, &snap, 3);
                assert_eq!(j.report().leftover_segments.len(), 2);
            }
        }
    }

    /// Losing every segment is still refused: a start state with no
    /// segment left is an install only when the snapshot lies at exactly
    /// its position.
    #[test]
    fn a_start_state_without_segments_or_a_snapshot_there_is_refused() {
        let leader = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(leader.path(), 40);
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        for name in files_in(dir.path()) {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        start::write(dir.path(), &StartState::from_snapshot(&snap)).unwrap();
        let later = CatalogSnapshot {
            position: snap.position + 100,
            ..snap.clone()
        };
        snapshot::write(dir.path(), &later).unwrap();
        let refused = Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES);
        assert!(
            matches!(&refused, Err(JournalError::Corrupt(why)) if why.contains("no segment")),
            "{:?}",
            refused.err()
        );
    }

    /// A follower whose (uncommitted, divergent) journal runs beyond the
    /// snapshot's position loses all of it too, the segments beyond first.
    #[test]
    fn an_install_below_the_journal_end_drops_the_tail_too() {
        let leader = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(leader.path(), 8);
        let dir = tempfile::tempdir().unwrap();
        let mut f = open(dir.path());
        let (_, slot) = f.create_topic("t", 2, 1, 5).unwrap();
        for seq in 0..40 {
            append(&mut f, slot, 0, &producer_batch(3, 40, 9, seq * 3), 1);
        }
        assert!(f.end() > snap.position + SEGMENT_BYTES as u64);
        f.write_out().unwrap();
        let mut j = f.install(&snap, Recovery::default()).unwrap();
        assert_eq!(files_in(dir.path()), vec![segment_file_name(snap.position)]);
        assert_installed(&mut j, &snap, 3);
    }

    /// REVIEW: a follower whose divergent (uncommitted) tail beyond the
    /// snapshot was flushed has a checkpoint above the snapshot's position:
    /// `install_files` does not lower it, so recovery does not classify the
    /// journal as installed (`cp.position <= base` fails) and refuses it
    /// ("no segment at its start"): the member cannot restart.
    #[test]
    fn review_an_install_below_a_checkpointed_tail_reopens() {
        let leader = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(leader.path(), 8);
        let dir = tempfile::tempdir().unwrap();
        let mut f = open(dir.path());
        let (_, slot) = f.create_topic("t", 2, 1, 5).unwrap();
        for seq in 0..40 {
            append(&mut f, slot, 0, &producer_batch(3, 40, 9, seq * 3), 1);
        }
        assert!(f.end() > snap.position + SEGMENT_BYTES as u64);
        f.write_out().unwrap();
        // The flusher's checkpoint of the flushed (divergent) tail.
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: f.end(),
                next_topic_id: 1,
                topics: f.checkpoint_topics(),
            },
        )
        .unwrap();
        let recovery = Recovery {
            entries: true,
            ..Recovery::default()
        };
        let j = f.install(&snap, recovery);
        assert!(j.is_ok(), "{:?}", j.err());
    }

    /// REVIEW: a crash after `install_files` deleted the segments at or
    /// beyond the snapshot but before the start state: the checkpoint still
    /// vouches for the deleted tail, and recovery refuses the old journal.
    #[test]
    fn review_a_crash_after_the_tail_deletion_reopens() {
        let leader = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(leader.path(), 8);
        let dir = tempfile::tempdir().unwrap();
        let mut f = open(dir.path());
        let (_, slot) = f.create_topic("t", 2, 1, 5).unwrap();
        for seq in 0..40 {
            append(&mut f, slot, 0, &producer_batch(3, 40, 9, seq * 3), 1);
        }
        f.write_out().unwrap();
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: f.end(),
                next_topic_id: 1,
                topics: f.checkpoint_topics(),
            },
        )
        .unwrap();
        // install_files' first steps only: the checkpoint lowered to the
        // start of the segment holding P, then the segments starting at or
        // beyond P deleted.
        let keep = f
            .segment_files()
            .iter()
            .map(|s| s.0)
            .rfind(|s| *s < snap.position)
            .unwrap();
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: keep,
                next_topic_id: 1,
                topics: f.checkpoint_topics(),
            },
        )
        .unwrap();
        for (start, _) in f.segment_files().iter().rev() {
            if *start < snap.position {
                break;
            }
            std::fs::remove_file(dir.path().join(segment_file_name(*start))).unwrap();
        }
        drop(f);
        let recovery = Recovery {
            entries: true,
            ..Recovery::default()
        };
        let j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, recovery);
        assert!(j.is_ok(), "{:?}", j.err());
    }

    /// REVIEW: retention runs on group members too (the writer's
    /// `retain`, below min(F, C)), but `start_state_at` writes term 0. A
    /// group member whose recovery does not start from a group snapshot
    /// (none yet, one below the new start, or any fallback to the full
    /// walk) gets `consensus_base() == (B, 0)` with B > 0, which
    /// `Node::with_snapshot` refuses ("a snapshot above position 0 needs a
    /// term"): the member cannot restart.
    #[test]
    fn review_a_group_member_after_retention_has_a_usable_consensus_base() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        while j.segment_files().len() < 4 {
            append(&mut j, slot, 0, &producer_batch(1, 200, 0, 0), 3);
        }
        j.write_out().unwrap();
        let r = j
            .retain(Retention { bytes: 1, ms: None }, j.end(), 10_000)
            .expect("sealed segments go");
        carry_out(dir.path(), &r);
        drop(j);
        let recovery = Recovery {
            entries: true,
            ..Recovery::default()
        };
        let j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, recovery).unwrap();
        let (base, term) = j.consensus_base();
        assert!(base > 0);
        assert!(
            term > 0,
            "consensus base ({base}, {term}): Node::with_snapshot refuses a base above 0 \
             without a term"
        );
    }

    /// REVIEW: `Sealed::end_term` is 0 for every segment recovery took
    /// from its index file (`resume` pushes 0), i.e. every sealed segment
    /// below the snapshot after any ordinary restart. Retention then deletes
    /// exactly those, below the log's base, where the node knows no term
    /// either (`term_at` below the base is `None`): the start state says
    /// term 0 again. A later start that does not resume from the snapshot
    /// (`--verify-journal`, `--repair`, an unreadable checkpoint, a damaged
    /// index file) gets consensus base (P, 0), which `Node::with_snapshot`
    /// refuses: the member cannot start (on every member at once, the
    /// group cannot).
    #[test]
    fn review_a_group_member_resumed_then_retained_has_a_usable_consensus_base() {
        let dir = tempfile::tempdir().unwrap();
        let group = Recovery {
            entries: true,
            ..Recovery::default()
        };
        let mut j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, group).unwrap();
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        while j.segment_files().len() < 5 {
            append(&mut j, slot, 0, &producer_batch(1, 200, 0, 0), 3);
        }
        j.write_out().unwrap();
        // As a running member leaves it: sealed segments indexed on disk, a
        // checkpoint, and the group's snapshot (with its term) at the end.
        let job = j.index_job(j.end()).unwrap();
        for &(start, end) in &job.segments {
            super::super::offload::write_index(dir.path(), start, end, &job.partitions).unwrap();
        }
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: j.end(),
                next_topic_id: j.catalog().next_topic_id(),
                topics: j.checkpoint_topics(),
            },
        )
        .unwrap();
        let mut snap = j.catalog().snapshot(j.end());
        snap.term = 3;
        snapshot::write(dir.path(), &snap).unwrap();
        drop(j);
        // An ordinary restart: from the snapshot.
        let mut j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, group).unwrap();
        assert_eq!(j.report().snapshot_position, Some(snap.position));
        let r = j
            .retain(Retention { bytes: 1, ms: None }, j.end(), 10_000)
            .expect("sealed segments go");
        // (The writer fills in a 0 from the node only at the log's base,
        // which lies at the snapshot, above every sealed segment's end.)
        assert!(r.state.position < snap.position);
        carry_out(dir.path(), &r);
        drop(j);
        let verify = Recovery {
            entries: true,
            from_snapshot: false,
            ..Recovery::default()
        };
        let j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, verify).unwrap();
        let (base, term) = j.consensus_base();
        assert!(base > 0);
        assert!(
            term > 0,
            "consensus base ({base}, {term}): Node::with_snapshot refuses a base above 0 \
             without a term"
        );
    }

    /// REVIEW: an installed journal's catalog below P exists only in the
    /// snapshot file (the cluster id record and every producer state lie in
    /// segments that are gone), but recovery treats the snapshot as an
    /// optional shortcut: with `from_snapshot: false` (the broker's
    /// `--verify-journal` and `--repair`), an unreadable checkpoint, or any
    /// reason `resume` gives up, the full walk starts from the start state,
    /// which holds neither. The member forgets the group's cluster id (as
    /// leader it writes a new one) and its producers' windows (duplicates
    /// are taken), and its next group snapshot persists the loss.
    #[test]
    fn review_an_installed_journal_keeps_cluster_id_and_producers_without_the_snapshot_shortcut() {
        let leader = tempfile::tempdir().unwrap();
        let mut snap = leader_snapshot(leader.path(), 40);
        snap.cluster_id = Some((0xC1C1, 10));
        let dir = tempfile::tempdir().unwrap();
        let mut f = open(dir.path());
        let (_, slot) = f.create_topic("t", 2, 1, 5).unwrap();
        append(&mut f, slot, 0, &producer_batch(3, 40, 9, 0), 1);
        f.write_out().unwrap();
        let recovery = Recovery {
            entries: true,
            ..Recovery::default()
        };
        let mut j = f.install(&snap, recovery).unwrap();
        assert_eq!(j.catalog().cluster_id_record(), Some((0xC1C1, 10)));
        let state = snap
            .producers
            .states
            .iter()
            .find(|st| st.key.producer_id == 9)
            .unwrap();
        let last_first = state.window.last().unwrap().first_seq;
        let dup = producer_batch(3, 40, 9, last_first);
        assert!(matches!(j.check_seq(0, 0, &dup, 0), SeqCheck::Duplicate(_)));
        // One batch after the snapshot, as a member that caught up holds.
        append(&mut j, 0, 1, &producer_batch(1, 40, 7, 0), 3);
        j.write_out().unwrap();
        drop(j);
        let verify = Recovery {
            entries: true,
            from_snapshot: false,
            ..Recovery::default()
        };
        let again = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, verify).unwrap();
        let cluster_id = again.catalog().cluster_id_record();
        let dup_seen = matches!(again.check_seq(0, 0, &dup, 0), SeqCheck::Duplicate(_));
        assert_eq!(
            (cluster_id, dup_seen),
            (Some((0xC1C1, 10)), true),
            "the group's cluster id and producer 9's window survive a restart without the \
             snapshot shortcut"
        );
    }

    /// REVIEW: the "installed" classification does not look at the term,
    /// so a standalone journal (snapshot term 0, never installed) whose
    /// snapshot lies at its start state's position and whose segments were
    /// lost opens empty instead of being refused (and `remove_below` now
    /// deletes before the refusal check). Requiring `sn.term > 0` in
    /// `installed` keeps the refusal for standalone brokers.
    #[test]
    fn review_a_standalone_journal_that_lost_its_segments_is_still_refused() {
        let leader = tempfile::tempdir().unwrap();
        let mut snap = leader_snapshot(leader.path(), 40);
        snap.term = 0; // a standalone broker's snapshot
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        for name in files_in(dir.path()) {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        start::write(dir.path(), &StartState::from_snapshot(&snap)).unwrap();
        snapshot::write(dir.path(), &snap).unwrap();
        let refused = Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES);
        assert!(
            matches!(&refused, Err(JournalError::Corrupt(why)) if why.contains("no segment")),
            "a standalone journal without segments opened at {:?}",
            refused.as_ref().ok().map(|j| (j.start(), j.end()))
        );
    }

    #[test]
    fn a_batch_larger_than_a_segment_cut_back_to_its_start_grows_that_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        // Fill the first segment so that the next batch starts a new one.
        while j.segment_files().len() < 2 {
            append(&mut j, slot, 0, &producer_batch(1, 200, 0, 0), 1);
        }
        let second = j.segment_files()[1].0;
        // Cut back to the second segment's start: it stays, empty.
        let cut = j.truncate(second, 0).unwrap();
        assert_eq!(cut.files.len(), 2);
        assert_eq!(j.end(), second);
        // A batch larger than a whole segment lands at that start (a second
        // file at the same position would be refused).
        let big = producer_batch(4, SEGMENT_BYTES, 0, 0);
        assert!(big.len() > SEGMENT_BYTES);
        let landed = append(&mut j, slot, 0, &big, 2);
        assert_eq!(landed.position, second);
        assert!(landed.rolled.is_none());
        append(&mut j, slot, 0, &producer_batch(1, 10, 0, 0), 2);
        j.write_out().unwrap();
        let end = j.end();
        drop(j);
        let mut again = open(dir.path());
        assert_eq!(again.end(), end);
        assert_eq!(again.segment_files().len(), 3);
        let entries = again.take_entries();
        assert!(entries.iter().any(|e| e.start == second && e.term == 2));
        assert_eq!(entries.last().map(|e| e.end), Some(end));
    }

    /// Finding 2: recovery treats every byte it finds as durable, so it
    /// must fdatasync every segment holding bytes the checkpoint does not
    /// vouch for, older segments and an exactly full one included.
    #[test]
    fn recovery_syncs_every_segment_above_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        while j.segment_files().len() < 4 {
            append(&mut j, slot, 0, &producer_batch(1, 200, 0, 0), 1);
        }
        j.write_out().unwrap();
        let starts: Vec<u64> = j.segment_files().iter().map(|f| f.0).collect();
        let inos: Vec<u64> = j.segment_files().iter().map(|f| ino(&f.1)).collect();
        // The checkpoint vouches for the first segment and part of the second.
        let vouched = starts[1] + 1;
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: vouched,
                next_topic_id: 1,
                topics: j.checkpoint_topics(),
            },
        )
        .unwrap();
        drop(j);
        let j = open_recording(dir.path());
        assert_eq!(j.report().synced_segments, starts[1..].to_vec());
        let synced = take_syncs();
        for ino in &inos[1..] {
            assert!(synced.contains(ino), "segment {ino} was fdatasync'd");
        }
        drop(j);
        // Without a checkpoint, every segment.
        std::fs::remove_file(dir.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
        let j = open_recording(dir.path());
        assert_eq!(j.report().synced_segments, starts);
        let synced = take_syncs();
        assert!(inos.iter().all(|i| synced.contains(i)));
    }

    thread_local! {
        /// Inodes of the files synced, with whether a segment file started
        /// after them existed at that moment.
        static SYNCS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn ino(f: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().ino()
    }

    fn record_sync(f: &File) -> std::io::Result<()> {
        SYNCS.with(|s| s.borrow_mut().push(ino(f)));
        f.sync_data()
    }

    fn take_syncs() -> Vec<u64> {
        SYNCS.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }

    fn open_recording(dir: &Path) -> Journal {
        let recovery = Recovery {
            sync_file: record_sync,
            ..Recovery::default()
        };
        Journal::open_with(dir, SEGMENT_BYTES, CACHE_BYTES, recovery).unwrap()
    }

    /// Review of finding 7's fix: a crash must only ever tear the last
    /// segment, or recovery refuses to start after a plain power cut that
    /// lost an older segment's unsynced tail while a new segment survived.
    /// So a roll fdatasyncs the full segment before the next one exists.
    #[test]
    fn a_roll_syncs_the_full_segment_before_the_next_one_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open_recording(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        take_syncs();
        let first = ino(&j.segment_files()[0].1);
        while j.segment_files().len() < 2 {
            append(&mut j, slot, 0, &producer_batch(1, 200, 0, 0), 1);
        }
        assert_eq!(take_syncs(), vec![first], "one sync, of the full segment");
        // It happened before the new file was made durable: the hook saw
        // only the old file, and the roll did not fail.
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
    }

    /// Review of finding 7's fix: below the checkpoint only headers are
    /// checked, so a damaged record count (outside the header checksum) is
    /// noticed only where the next batch's offset no longer follows. The
    /// refusal (and a cut) must name the damaged batch itself.
    #[test]
    fn damage_below_the_checkpoint_is_found_where_it_is_not_where_it_shows() {
        for in_last_batch in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut j = open(dir.path());
            let (_, a) = j.create_topic("a", 1, 1, 5).unwrap();
            let (_, b) = j.create_topic("b", 1, 1, 5).unwrap();
            let mut victims = Vec::new();
            while j.segment_files().len() < 3 {
                victims.push(append(&mut j, a, 0, &producer_batch(2, 100, 0, 0), 1).position);
            }
            // Partition b/0 has one batch, early: its last batch.
            let lone = append(&mut j, b, 0, &producer_batch(2, 100, 0, 0), 1).position;
            while j.segment_files().len() < 4 {
                append(&mut j, a, 0, &producer_batch(2, 100, 0, 0), 1);
            }
            j.write_out().unwrap();
            checkpoint::write(
                dir.path(),
                &checkpoint::Checkpoint {
                    position: j.end(),
                    next_topic_id: 2,
                    topics: j.checkpoint_topics(),
                },
            )
            .unwrap();
            let victim = if in_last_batch { lone } else { victims[1] };
            let (start, file) = j
                .segment_files()
                .iter()
                .rev()
                .find(|f| f.0 <= victim)
                .cloned()
                .unwrap();
            drop(j);
            // record_count, at batch offset 48: producer-crc covered only.
            let at = victim - start + 48;
            let mut count = [0u8; 4];
            file.read_exact_at(&mut count, at).unwrap();
            count[0] ^= 0x40;
            file.write_all_at(&count, at).unwrap();
            drop(file);
            let err = Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES)
                .err()
                .expect("acknowledged data is damaged: refuse");
            assert!(
                err.to_string().contains(&format!("position {victim} ")),
                "the refusal names position {victim}: {err}"
            );
            let recovery = Recovery {
                damage: Damage::Cut,
                ..Recovery::default()
            };
            let j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, recovery).unwrap();
            assert_eq!(j.end(), victim, "the cut is at the damaged batch");
            drop(j);
            let j = open(dir.path());
            assert_eq!(j.end(), victim, "the repaired journal opens as it is");
        }
    }

    /// Review of finding 7's fix: with an unreadable checkpoint nothing is
    /// known to lie above it, so damage in the last segment is not taken
    /// for a torn tail (it may be durable, acknowledged data).
    #[test]
    fn with_an_unreadable_checkpoint_last_segment_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        let mid = append(&mut j, slot, 0, &producer_batch(2, 50, 0, 0), 1).position;
        append(&mut j, slot, 0, &producer_batch(2, 50, 0, 0), 1);
        j.write_out().unwrap();
        let file = j.segment_files()[0].1.clone();
        drop(j);
        std::fs::write(dir.path().join(checkpoint::CHECKPOINT_FILE), b"garbage").unwrap();
        file.write_all_at(&[0xff; 8], mid + 60).unwrap();
        let err = Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains(&format!("position {mid} ")),
            "{err}"
        );
    }

    /// Review of issue 9's fixes: a checkpoint that vouches for durable data
    /// while no segment holds any (the segment files were lost, or removed
    /// by hand) is lost data, not an empty journal: a standalone broker
    /// refuses to start, and a cut (group member, `--repair`) reports it so
    /// the member takes a new incarnation instead of voting as if it held
    /// what it acknowledged. Likewise when the last segment that held data
    /// is gone and an empty one (a crash during a roll) is all that is left.
    #[test]
    fn a_checkpoint_above_every_segment_is_lost_data() {
        for keep_empty_last in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut j = open(dir.path());
            let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
            append(&mut j, slot, 0, &producer_batch(2, 50, 0, 0), 1);
            j.write_out().unwrap();
            let durable = j.end();
            checkpoint::write(
                dir.path(),
                &checkpoint::Checkpoint {
                    position: durable,
                    next_topic_id: 1,
                    topics: j.checkpoint_topics(),
                },
            )
            .unwrap();
            drop(j);
            for (_, path) in list_segments(dir.path()).unwrap() {
                std::fs::remove_file(path).unwrap();
            }
            if keep_empty_last {
                std::fs::File::create(dir.path().join(segment_file_name(0))).unwrap();
            }
            let err = Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES)
                .err()
                .expect("refused: the checkpoint vouches for data that is gone");
            assert!(err.to_string().contains("below the checkpoint"), "{err}");
            let recovery = Recovery {
                damage: Damage::Cut,
                ..Recovery::default()
            };
            let j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, recovery).unwrap();
            assert_eq!(j.end(), 0);
            let lost = j.report().lost.clone().expect("reported as lost data");
            assert_eq!(lost.durable_bytes, durable);
            assert!(
                lost.segment == dir.path(),
                "no segment is left: the directory is named, not {}",
                lost.segment.display()
            );
            assert!(
                j.catalog().lookup("t").is_none(),
                "its creation is gone too"
            );
            assert_eq!(checkpoint::read(dir.path()).unwrap().unwrap().position, 0);
        }
    }

    /// Review of finding 7's fix: a cut of acknowledged data also removes
    /// the topics the checkpoint knew but whose creation lay above the cut.
    #[test]
    fn a_repair_drops_the_topics_created_above_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, a) = j.create_topic("a", 1, 1, 5).unwrap();
        let damaged = append(&mut j, a, 0, &producer_batch(2, 50, 0, 0), 1).position;
        let (_, b) = j.create_topic("b", 1, 1, 5).unwrap();
        append(&mut j, b, 0, &producer_batch(2, 50, 0, 0), 1);
        j.write_out().unwrap();
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: j.end(),
                next_topic_id: 2,
                topics: j.checkpoint_topics(),
            },
        )
        .unwrap();
        let file = j.segment_files()[0].1.clone();
        drop(j);
        file.write_all_at(&[0xff; 8], damaged + 60).unwrap();
        let recovery = Recovery {
            damage: Damage::Cut,
            ..Recovery::default()
        };
        let j = Journal::open_with(dir.path(), SEGMENT_BYTES, CACHE_BYTES, recovery).unwrap();
        assert_eq!(j.end(), damaged);
        assert!(
            j.catalog().lookup("b").is_none(),
            "b was created above the cut"
        );
        assert!(j.catalog().lookup("a").is_some());
        assert_eq!(j.catalog().next_topic_id(), 2, "ids are not reused");
        let cp = checkpoint::read(dir.path()).unwrap().unwrap();
        assert_eq!(cp.topics.len(), 1);
        assert_eq!(cp.position, damaged);
    }

    /// The group's id: appended once, replicated and recovered like any
    /// control record, forgotten by a cut below it, and never replaced by
    /// another id in the same journal.
    #[test]
    fn the_cluster_id_is_recorded_replicated_recovered_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        j.append_noop(1, 5).unwrap();
        let at = j.append_cluster_id(0xfeed, 1, 5).unwrap().position;
        assert_eq!(j.catalog().cluster_id(), Some(0xfeed));
        j.create_topic("t", 1, 1, 5).unwrap();
        let bytes = journal_bytes(&mut j);
        drop(j);
        let mut j = open(dir.path());
        assert_eq!(j.catalog().cluster_id(), Some(0xfeed), "recovered");
        // A follower copying the journal learns it.
        let fdir = tempfile::tempdir().unwrap();
        let mut f = open(fdir.path());
        let mut pos = 0;
        while pos < bytes.len() {
            let len = declared_len(&bytes[pos..]).unwrap();
            f.append_replicated(&bytes[pos..pos + len]).unwrap();
            pos += len;
        }
        assert_eq!(f.catalog().cluster_id(), Some(0xfeed), "replicated");
        // Another group's id is refused; the same one is harmless.
        let mut other = BatchBuilder::with_kind(BatchKind::Control);
        let mut foreign = control::encode(&Control::ClusterId { id: 0xbeef }, &mut other).to_vec();
        stamp(
            &mut foreign,
            &Stamp {
                base_offset: 0,
                term: 1,
                append_time_ms: 5,
                topic_id: u32::MAX,
                partition: u32::MAX,
            },
        );
        assert!(matches!(
            f.append_replicated(&foreign),
            Err(JournalError::Refused(_))
        ));
        // A cut below the record forgets it.
        j.truncate(at, 0).unwrap();
        assert_eq!(j.catalog().cluster_id(), None);
    }

    /// Everything the catalog says that must survive a reopen.
    #[derive(Debug, PartialEq, Eq)]
    struct TopicSnap {
        meta: TopicMeta,
        created_at: Option<u64>,
        partitions: Vec<(u64, Vec<IndexEntry>)>,
    }

    fn topics(j: &Journal) -> Vec<TopicSnap> {
        j.catalog()
            .topics()
            .iter()
            .map(|t| TopicSnap {
                meta: t.meta.clone(),
                created_at: t.created_at,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| {
                        let entries = (0..p.index.len())
                            .map(|i| *p.index.get(i).unwrap())
                            .collect();
                        (p.next_offset, entries)
                    })
                    .collect(),
            })
            .collect()
    }

    /// The journal's bytes `[0, end)`, read back from its segment files.
    fn journal_bytes(j: &mut Journal) -> Vec<u8> {
        j.write_out().unwrap();
        let files = j.segment_files();
        let mut out = Vec::new();
        for (i, (start, file)) in files.iter().enumerate() {
            let stop = files.get(i + 1).map_or(j.end(), |f| f.0).min(j.end());
            let mut buf = vec![0; (stop - start) as usize];
            file.read_exact_at(&mut buf, 0).unwrap();
            out.extend_from_slice(&buf);
        }
        out
    }

    fn segment_contents(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(start, path)| (start, std::fs::read(path).unwrap()))
            .collect()
    }

    #[test]
    fn a_noop_is_noop_batch_bytes_long_and_changes_no_topic() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        append(&mut j, slot, 0, &producer_batch(2, 10, 0, 0), 1);
        let before = topics(&j);
        let a = j.append_noop(4, 9).unwrap();
        assert_eq!((a.end - a.position) as usize, NOOP_BATCH_BYTES);
        assert_eq!(a.end, j.end());
        assert_eq!(topics(&j), before);
        let bytes = journal_bytes(&mut j);
        let noop = &bytes[a.position as usize..a.end as usize];
        assert_eq!(control::decode(noop).unwrap(), Control::Noop);
        assert_eq!(
            (BatchView(noop).term(), BatchView(noop).append_time_ms()),
            (4, 9)
        );
        drop(j);
        let mut j = open(dir.path());
        assert_eq!(topics(&j), before, "recovery accepts the noop");
        assert_eq!(j.end(), a.end);
        assert_eq!(j.take_entries().last().unwrap().term, 4);
    }

    #[test]
    fn recovery_hands_over_every_batch_with_its_term_even_below_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (c, slot) = j.create_topic("t", 2, 1, 5).unwrap();
        let mut expected = vec![(c.position, c.end, 1)];
        for (i, term) in [2, 2, 3, 5, 5, 5].into_iter().enumerate() {
            let a = append(
                &mut j,
                slot,
                i as u32 % 2,
                &producer_batch(3, 150, 0, 0),
                term,
            );
            expected.push((a.position, a.end, term));
        }
        let n = j.append_noop(6, 1).unwrap();
        expected.push((n.position, n.end, 6));
        assert!(j.segment_files().len() > 1, "spans segments");
        j.write_out().unwrap();
        // Most of the journal below the checkpoint: only headers checked.
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: expected[5].1,
                next_topic_id: j.catalog().next_topic_id(),
                topics: j.checkpoint_topics(),
            },
        )
        .unwrap();
        let before = topics(&j);
        drop(j);
        let mut j = open(dir.path());
        let entries: Vec<_> = j
            .take_entries()
            .iter()
            .map(|e| (e.start, e.end, e.term))
            .collect();
        assert_eq!(entries, expected);
        assert!(j.take_entries().is_empty(), "handed over once");
        assert_eq!(topics(&j), before);
    }

    /// A journal with a topic of two partitions and a few batches.
    fn leader(dir: &Path) -> (Journal, usize) {
        let mut j = open(dir);
        let (_, slot) = j.create_topic("orders", 2, 1, 5).unwrap();
        for i in 0..6 {
            append(&mut j, slot, i % 2, &producer_batch(2, 120, 9, i as u64), 2);
        }
        j.append_noop(3, 6).unwrap();
        append(&mut j, slot, 1, &producer_batch(1, 5, 9, 6), 3);
        (j, slot)
    }

    /// Each batch of `j`'s journal, in order.
    fn batches(j: &mut Journal) -> Vec<Vec<u8>> {
        let bytes = journal_bytes(j);
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = declared_len(&bytes[at..]).unwrap();
            out.push(bytes[at..at + len].to_vec());
            at += len;
        }
        out
    }

    #[test]
    fn a_follower_copying_the_leaders_batches_gets_identical_segments_and_catalog() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, _) = leader(a_dir.path());
        let mut b = open(b_dir.path());
        let mut created = Vec::new();
        for batch in batches(&mut a) {
            check_replicated_batch(&batch, BatchView(&batch).term()).unwrap();
            let r = b.append_replicated(&batch).unwrap();
            created.extend(r.created);
        }
        b.write_out().unwrap();
        assert_eq!(created, vec![0]);
        assert_eq!(b.end(), a.end());
        assert_eq!(topics(&b), topics(&a));
        assert_eq!(b.catalog().next_topic_id(), a.catalog().next_topic_id());
        assert_eq!(
            segment_contents(b_dir.path()),
            segment_contents(a_dir.path())
        );
        // The producer windows came along: a retry to the new leader is
        // recognised.
        let retry = producer_batch(2, 120, 9, 4);
        assert!(matches!(
            b.check_seq(0, 0, &retry, 77),
            SeqCheck::Duplicate(l) if l.base_offset == 4
        ));
    }

    #[test]
    fn append_replicated_refuses_a_bad_batch_and_changes_nothing() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, _) = leader(a_dir.path());
        let all = batches(&mut a);
        let mut b = open(b_dir.path());
        for batch in &all[..3] {
            b.append_replicated(batch).unwrap();
        }
        let next = all[3].clone();
        let mut other = open(tempfile::tempdir().unwrap().path());
        let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
        for i in [0, 5, 20, 43, 45, 60, BATCH_HEADER_LEN + 3, next.len() - 1] {
            let mut flipped = next.clone();
            flipped[i] ^= 0x08;
            bad.push(("flipped byte", flipped));
        }
        bad.push(("extra byte", [next.as_slice(), &[0]].concat()));
        bad.push(("two batches", [next.as_slice(), &next].concat()));
        bad.push(("already stored", all[2].clone()));
        bad.push(("skips one", all[5].clone()));
        let restamp = |s: Stamp| {
            let mut b = next.clone();
            stamp(&mut b, &s);
            b
        };
        let s = {
            let v = BatchView(&next);
            Stamp {
                base_offset: v.base_offset(),
                term: v.term(),
                append_time_ms: v.append_time_ms(),
                topic_id: v.topic_id(),
                partition: v.partition(),
            }
        };
        bad.push((
            "wrong base offset",
            restamp(Stamp {
                base_offset: s.base_offset + 1,
                ..s
            }),
        ));
        bad.push(("unknown topic", restamp(Stamp { topic_id: 7, ..s })));
        bad.push(("unknown partition", restamp(Stamp { partition: 2, ..s })));
        // A CreateTopic reusing the id of another topic.
        other.create_topic("clash", 1, 1, 5).unwrap();
        bad.push(("id clash", batches(&mut other)[0].clone()));
        let before = (topics(&b), b.end(), journal_bytes(&mut b));
        for (why, batch) in &bad {
            assert!(
                matches!(b.append_replicated(batch), Err(JournalError::Refused(_))),
                "{why} accepted"
            );
            assert_eq!(
                (topics(&b), b.end(), journal_bytes(&mut b)),
                before,
                "{why}"
            );
        }
        // The right batch still goes in where it belongs.
        assert_eq!(
            b.append_replicated(&next).unwrap().appended.position,
            before.1
        );
    }

    #[test]
    fn check_replicated_batch_wants_its_entry_term_and_intact_bytes() {
        let (a_dir, _) = (tempfile::tempdir().unwrap(), ());
        let (mut a, _) = leader(a_dir.path());
        let batch = batches(&mut a)[1].clone();
        assert_eq!(check_replicated_batch(&batch, 2), Ok(()));
        assert!(check_replicated_batch(&batch, 3)
            .unwrap_err()
            .contains("term 2"));
        let mut flipped = batch.clone();
        flipped[100] ^= 1;
        assert!(check_replicated_batch(&flipped, 2).is_err());
        assert!(check_replicated_batch(&batch[..batch.len() - 1], 2).is_err());
        assert!(check_replicated_batch(&[], 2).is_err());
    }

    #[test]
    fn truncate_refuses_positions_that_are_not_batch_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = leader(dir.path());
        let before = (topics(&j), j.end(), journal_bytes(&mut j));
        let mut boundaries = vec![0];
        for b in batches(&mut j) {
            boundaries.push(boundaries.last().unwrap() + b.len() as u64);
        }
        for at in [
            1,
            50,
            boundaries[2] - 1,
            boundaries[3] + 88,
            j.end() - 1,
            j.end() + 1,
            u64::MAX,
        ] {
            assert!(
                matches!(j.truncate(at, 0), Err(JournalError::Refused(_))),
                "cut at {at} accepted"
            );
            assert_eq!(
                (topics(&j), j.end(), journal_bytes(&mut j)),
                before,
                "at {at}"
            );
        }
        // At the end, nothing is cut.
        j.truncate(j.end(), j.end()).unwrap();
        assert_eq!((topics(&j), j.end(), journal_bytes(&mut j)), before);
    }

    #[test]
    fn truncate_cuts_topics_and_indexes_and_leaves_old_handles_valid() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, keep) = j.create_topic("keep", 2, 1, 5).unwrap();
        append(&mut j, keep, 0, &producer_batch(2, 300, 4, 0), 1);
        append(&mut j, keep, 1, &producer_batch(1, 300, 4, 1), 1);
        let cut = append(&mut j, keep, 0, &producer_batch(3, 300, 4, 2), 1).position;
        let (_, gone) = j.create_topic("gone", 1, 1, 5).unwrap();
        append(&mut j, gone, 0, &producer_batch(1, 300, 0, 0), 1);
        append(&mut j, keep, 0, &producer_batch(1, 300, 4, 3), 1);
        let old = j.catalog().topic(keep).index_handles();
        let files_before = j.segment_files().len();
        let t = j.truncate(cut, cut).unwrap();
        assert_eq!(t.removed_topic_ids, vec![1]);
        assert_eq!(t.changed_topics, vec![keep]);
        assert!(t.files.len() < files_before, "later segments deleted");
        assert_eq!(t.files.len(), j.segment_files().len());
        assert_eq!(j.end(), cut);
        assert_eq!(j.catalog().len(), 1);
        assert_eq!(j.catalog().lookup("gone"), None);
        assert_eq!(j.catalog().next_topic_id(), 2, "ids are not reused");
        let p0 = &j.catalog().topic(keep).partitions[0];
        assert_eq!((p0.next_offset, p0.index.len()), (2, 1));
        assert_eq!(j.catalog().topic(keep).partitions[1].next_offset, 1);
        // Readers' handles still see what they saw.
        assert_eq!(
            (old[0].index.len(), old[0].index.get(2).unwrap().base_offset),
            (3, 5)
        );
        // The producer forgot the cut batches, not the kept ones.
        let seq = |seq| producer_batch(1, 300, 4, seq);
        assert_eq!(j.check_seq(keep, 0, &seq(2), 77), SeqCheck::New);
        assert!(matches!(
            j.check_seq(keep, 0, &seq(0), 77),
            SeqCheck::Duplicate(_)
        ));
        // Appending continues at the cut, and the next topic gets a new id.
        let a = append(&mut j, keep, 0, &producer_batch(1, 10, 0, 0), 2);
        assert_eq!((a.position, a.base_offset), (cut, 2));
        let (c, slot) = j.create_topic("new", 1, 2, 5).unwrap();
        assert_eq!((j.catalog().topic(slot).meta.id, c.position), (2, a.end));
        let snapshot = (topics(&j), j.end());
        j.write_out().unwrap();
        drop(j);
        let j = open(dir.path());
        assert_eq!((topics(&j), j.end()), snapshot);
        assert_eq!(j.catalog().next_topic_id(), 3);
    }

    #[test]
    fn truncate_rewrites_the_checkpoint_below_the_cut_without_cut_topics() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        j.create_topic("a", 1, 1, 5).unwrap();
        let (c, _) = j.create_topic("b", 1, 1, 5).unwrap();
        j.append_noop(1, 5).unwrap();
        j.write_out().unwrap();
        checkpoint::write(
            dir.path(),
            &checkpoint::Checkpoint {
                position: j.end(),
                next_topic_id: 2,
                topics: j.checkpoint_topics(),
            },
        )
        .unwrap();
        j.truncate(c.position, j.end()).unwrap();
        let cp = checkpoint::read(dir.path()).unwrap().unwrap();
        assert_eq!(cp.position, c.position);
        assert_eq!(cp.next_topic_id, 2);
        assert_eq!(
            cp.topics
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a"]
        );
        // A lower durable position wins.
        j.truncate(c.position, 3).unwrap();
        assert_eq!(checkpoint::read(dir.path()).unwrap().unwrap().position, 3);
        drop(j);
        let j = open(dir.path());
        assert_eq!(
            j.catalog().lookup("b"),
            None,
            "not resurrected from the checkpoint"
        );
    }

    /// A DeleteRecords record moves its partition's log start for every
    /// later start: replayed by the full walk, carried by the snapshot, and
    /// by the start state once retention deleted its segment.
    #[test]
    fn deleted_records_stay_deleted_across_restarts_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let reopen = |from_snapshot| standalone(dir.path(), from_snapshot);
        let mut j = reopen(true);
        let (_, slot) = j.create_topic("t", 2, 1, 5).unwrap();
        for _ in 0..6 {
            append(&mut j, slot, 0, &producer_batch(1, 10, 0, 0), 1);
        }
        // Beyond the end: refused by recovery's (and a follower's) check.
        let beyond = Control::DeleteRecords {
            topic_id: 0,
            partition: 0,
            before: 7,
        };
        let mut b = BatchBuilder::with_kind(BatchKind::Control);
        assert!(check_batch(j.catalog(), control::encode(&beyond, &mut b)).is_err());
        j.delete_records(slot, 0, 4, 0, 1, 6).unwrap();
        j.write_out().unwrap();
        let deleted = |j: &Journal| j.catalog().topic(0).partitions[0].deleted_below();
        assert_eq!(deleted(&j), 4);
        drop(j);
        assert_eq!(deleted(&reopen(false)), 4, "replayed");
        // A snapshot above the record holds it; the walk from there does
        // not meet the record.
        let mut j = reopen(false);
        snapshot::write(dir.path(), &j.catalog().snapshot(j.end())).unwrap();
        drop(j);
        j = reopen(true);
        assert!(j.report().snapshot_position.is_some());
        assert_eq!(deleted(&j), 4, "from the snapshot");
        // Retention deletes the segment holding the record.
        while j.sealed().len() < 3 {
            append(&mut j, slot, 1, &producer_batch(1, 100, 0, 0), 1);
        }
        j.write_out().unwrap();
        let r = j
            .retain(Retention { bytes: 1, ms: None }, j.end(), 10_000)
            .expect("sealed segments go");
        assert_eq!(r.state.topics[0].deleted_below, vec![4, 0]);
        start::write(dir.path(), &r.state).unwrap();
        snapshot::remove(dir.path()).unwrap();
        drop(j);
        let j = reopen(false);
        assert!(j.start() > 0);
        assert_eq!(deleted(&j), 4, "from the start state");
    }

    /// Review: retention's start state takes `deleted_below` from the
    /// catalog as it is, records not yet durable included (topics are
    /// filtered by `created_at < durable`, deletions are not). A crash that
    /// loses the DeleteRecords record and the batches below its `before`
    /// leaves a log start above the partition's next offset: the offsets
    /// handed out after the restart lie below it, so acknowledged records
    /// are never served, and the next snapshot is refused.
    #[test]
    fn a_start_state_holds_no_deletion_a_crash_can_lose() {
        let dir = tempfile::tempdir().unwrap();
        let reopen = || standalone(dir.path(), false);
        let mut j = reopen();
        let (_, slot) = j.create_topic("t", 2, 1, 5).unwrap();
        for _ in 0..2 {
            append(&mut j, slot, 0, &producer_batch(1, 10, 0, 0), 1);
        }
        while j.sealed().len() < 2 {
            append(&mut j, slot, 1, &producer_batch(1, 100, 0, 0), 1);
        }
        j.write_out().unwrap();
        let durable = j.end();
        let sealed = j.sealed().len();
        // Two more batches of partition 0 and the deletion of everything
        // below them: appended, not yet written out.
        for _ in 0..2 {
            append(&mut j, slot, 0, &producer_batch(1, 10, 0, 0), 1);
        }
        j.delete_records(slot, 0, 4, durable, 1, 6).unwrap();
        assert_eq!(j.sealed().len(), sealed);
        assert!(j.written() < j.end(), "not written out");
        let r = j
            .retain(Retention { bytes: 1, ms: None }, durable, 10_000)
            .expect("sealed segments go");
        start::write(dir.path(), &r.state).unwrap();
        // kill -9: the cache is lost.
        drop(j);
        let j = reopen();
        let p = &j.catalog().topic(0).partitions[0];
        assert!(
            p.deleted_below() <= p.next_offset,
            "log start {} above the next offset {}: a lost deletion came back from the start state",
            p.deleted_below(),
            p.next_offset
        );
    }

    /// A snapshot describes the batches below its position: a cut below
    /// it removes it, one at or above it keeps it.
    #[test]
    fn truncate_removes_a_snapshot_above_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (a, _) = j.create_topic("a", 1, 1, 5).unwrap();
        snapshot::write(dir.path(), &j.catalog().snapshot(a.end)).unwrap();
        let (b, _) = j.create_topic("b", 1, 1, 5).unwrap();
        j.append_noop(1, 5).unwrap();
        j.write_out().unwrap();
        j.truncate(b.end, j.end()).unwrap();
        j.truncate(b.position, j.end()).unwrap();
        assert!(snapshot::read(dir.path()).unwrap().is_some(), "kept");
        j.truncate(a.position, j.end()).unwrap();
        assert_eq!(snapshot::read(dir.path()).unwrap(), None, "removed");
    }

    #[test]
    fn truncating_at_a_segment_start_keeps_that_segment_empty_and_active() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        let mut rolled_at = None;
        while rolled_at.is_none() || j.segment_files().len() < 3 {
            let a = append(&mut j, slot, 0, &producer_batch(1, 400, 0, 0), 1);
            rolled_at = rolled_at.or(a.rolled.map(|r| r.0));
        }
        let at = rolled_at.unwrap();
        let t = j.truncate(at, 0).unwrap();
        assert_eq!(t.files.last().unwrap().0, at);
        assert_eq!(list_segments(dir.path()).unwrap().len(), t.files.len());
        let contents = segment_contents(dir.path());
        let (_, last) = contents.last().unwrap();
        assert_eq!(last.len(), SEGMENT_BYTES, "same capacity");
        assert!(last.iter().all(|&b| b == 0), "zeroed");
        let a = append(&mut j, slot, 0, &producer_batch(1, 10, 0, 0), 2);
        assert_eq!((a.position, a.rolled.is_none()), (at, true));
        let snapshot = (topics(&j), j.end());
        j.write_out().unwrap();
        drop(j);
        let j = open(dir.path());
        assert_eq!((topics(&j), j.end()), snapshot);
    }

    /// One step of the model-checked sequence.
    #[derive(Debug, Clone)]
    enum Op {
        CreateTopic {
            partitions: u32,
        },
        /// Topic and partition are picked modulo what exists.
        Data {
            topic: usize,
            partition: u32,
            records: u32,
            value_len: usize,
            producer: u64,
        },
        Noop,
        /// The boundary is picked modulo the batches (plus the end).
        Truncate {
            boundary: usize,
            durable_back: u64,
        },
        WriteOut,
        Checkpoint,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (1u32..4).prop_map(|partitions| Op::CreateTopic { partitions }),
            6 => (any::<usize>(), 0u32..4, 1u32..4, 0usize..300, 0u64..3).prop_map(
                |(topic, partition, records, value_len, producer)| Op::Data {
                    topic, partition, records, value_len, producer
                }
            ),
            1 => Just(Op::Noop),
            2 => (any::<usize>(), 0u64..400)
                .prop_map(|(boundary, durable_back)| Op::Truncate { boundary, durable_back }),
            1 => Just(Op::WriteOut),
            1 => Just(Op::Checkpoint),
            1 => Just(Op::Reopen),
        ]
    }

    /// A batch as the model knows it.
    #[derive(Debug, Clone)]
    struct ModelBatch {
        start: u64,
        end: u64,
        term: u64,
        /// `Some((topic id, partition, records))` for data.
        data: Option<(u32, u32, u32)>,
        /// `Some((id, name, partitions))` for a CreateTopic.
        create: Option<(u32, String, u32)>,
    }

    /// The catalog the model's batches imply: topics in creation order with
    /// each partition's (next offset, index entries).
    fn expected_topics(model: &[ModelBatch]) -> Vec<TopicSnap> {
        let mut topics: Vec<TopicSnap> = Vec::new();
        for b in model {
            if let Some((id, name, partitions)) = &b.create {
                topics.push(TopicSnap {
                    meta: TopicMeta {
                        id: *id,
                        name: name.clone(),
                        partitions: *partitions,
                    },
                    created_at: Some(b.start),
                    partitions: vec![(0, Vec::new()); *partitions as usize],
                });
            }
            if let Some((id, partition, records)) = b.data {
                let t = topics.iter_mut().find(|t| t.meta.id == id).unwrap();
                let (next, entries) = &mut t.partitions[partition as usize];
                entries.push(IndexEntry {
                    base_offset: *next,
                    position: b.start,
                    len: (b.end - b.start) as u32,
                    count: records,
                    // Every batch of the model is stamped at 77.
                    max_time_ms: 77,
                });
                *next += u64::from(records);
            }
        }
        topics
    }

    fn check_against_model(j: &Journal, model: &[ModelBatch], next_id: u32) {
        assert_eq!(j.end(), model.last().map_or(0, |b| b.end));
        assert_eq!(topics(j), expected_topics(model));
        assert_eq!(j.catalog().next_topic_id(), next_id);
    }

    fn run(ops: &[Op]) {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let mut model: Vec<ModelBatch> = Vec::new();
        let (mut term, mut next_id, mut names, mut seq) = (1u64, 0u32, 0u32, 0u64);
        for op in ops {
            match op {
                Op::CreateTopic { partitions } => {
                    let name = format!("t{names}");
                    names += 1;
                    let (a, _) = j.create_topic(&name, *partitions, term, 5).unwrap();
                    model.push(ModelBatch {
                        start: a.position,
                        end: a.end,
                        term,
                        data: None,
                        create: Some((next_id, name, *partitions)),
                    });
                    next_id += 1;
                }
                Op::Data {
                    topic,
                    partition,
                    records,
                    value_len,
                    producer,
                } => {
                    if j.catalog().is_empty() {
                        continue;
                    }
                    let slot = topic % j.catalog().len();
                    let t = j.catalog().topic(slot);
                    let (id, partition) = (t.meta.id, partition % t.meta.partitions);
                    seq += 1;
                    let batch = producer_batch(*records, *value_len, *producer, seq);
                    let a = append(&mut j, slot, partition, &batch, term);
                    model.push(ModelBatch {
                        start: a.position,
                        end: a.end,
                        term,
                        data: Some((id, partition, *records)),
                        create: None,
                    });
                }
                Op::Noop => {
                    term += 1;
                    let a = j.append_noop(term, 5).unwrap();
                    assert_eq!((a.end - a.position) as usize, NOOP_BATCH_BYTES);
                    model.push(ModelBatch {
                        start: a.position,
                        end: a.end,
                        term,
                        data: None,
                        create: None,
                    });
                }
                Op::Truncate {
                    boundary,
                    durable_back,
                } => {
                    let k = boundary % (model.len() + 1);
                    let at = model.get(k).map_or(j.end(), |b| b.start);
                    model.truncate(k);
                    term += 1;
                    let durable = j.end().saturating_sub(*durable_back);
                    j.truncate(at, durable).unwrap();
                    let cp = checkpoint::read(dir.path()).unwrap().unwrap();
                    assert!(cp.position <= at.min(durable));
                }
                Op::WriteOut => j.write_out().unwrap(),
                Op::Checkpoint => {
                    j.write_out().unwrap();
                    checkpoint::write(
                        dir.path(),
                        &checkpoint::Checkpoint {
                            position: j.end(),
                            next_topic_id: j.catalog().next_topic_id(),
                            topics: j.checkpoint_topics(),
                        },
                    )
                    .unwrap();
                }
                Op::Reopen => {
                    j.write_out().unwrap();
                    drop(j);
                    j = open(dir.path());
                    let entries: Vec<_> = j
                        .take_entries()
                        .iter()
                        .map(|e| (e.start, e.end, e.term))
                        .collect();
                    let expected: Vec<_> = model.iter().map(|b| (b.start, b.end, b.term)).collect();
                    assert_eq!(entries, expected);
                    assert!(j.report().truncated.is_none());
                }
            }
            check_against_model(&j, &model, next_id);
        }
        // A follower copying the final journal batch by batch holds the same
        // bytes and the same catalog.
        let follower_dir = tempfile::tempdir().unwrap();
        let mut f = open(follower_dir.path());
        let leader_bytes = journal_bytes(&mut j);
        for b in &model {
            let batch = &leader_bytes[b.start as usize..b.end as usize];
            check_replicated_batch(batch, b.term).unwrap();
            f.append_replicated(batch).unwrap();
        }
        assert_eq!(journal_bytes(&mut f), leader_bytes);
        assert_eq!(topics(&f), topics(&j));
        // And both reopen to what they hold in memory.
        for (journal, dir) in [(j, dir), (f, follower_dir)] {
            let snapshot = (topics(&journal), journal.end());
            drop(journal);
            let mut reopened = open(dir.path());
            assert_eq!((topics(&reopened), reopened.end()), snapshot);
            let ends: Vec<_> = reopened.take_entries().iter().map(|e| e.end).collect();
            assert_eq!(ends, model.iter().map(|b| b.end).collect::<Vec<_>>());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn truncation_replication_and_reopen_agree_with_a_model(
            ops in prop::collection::vec(op(), 1..40)
        ) {
            run(&ops);
        }
    }

    /// What the retention stage does with a decision: the start state
    /// first, then the files, oldest first.
    fn carry_out(dir: &Path, r: &Retained) {
        start::write(dir, &r.state).unwrap();
        for (start, _) in &r.files {
            std::fs::remove_file(dir.join(segment_file_name(*start))).unwrap();
        }
    }

    /// Appends batches of 3 records to two partitions of `t` until the
    /// journal has `segments` segment files; returns the topic's slot.
    fn fill(j: &mut Journal, segments: usize, now_ms: i64) -> usize {
        let (_, slot) = j.create_topic("t", 2, 1, now_ms).unwrap();
        let mut p = 0;
        while j.segment_files().len() < segments {
            let b = producer_batch(3, 100, 0, 0);
            j.append_data(slot, p, &b, 3, 1, now_ms).unwrap();
            p ^= 1;
        }
        j.write_out().unwrap();
        slot
    }

    #[test]
    fn retention_by_size_keeps_a_contiguous_suffix_that_recovery_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let slot = fill(&mut j, 6, 1_000);
        let end = j.end();
        let next: Vec<u64> = (0..2)
            .map(|p| j.catalog().topic(slot).partitions[p].next_offset)
            .collect();
        let policy = Retention {
            bytes: 2 * SEGMENT_BYTES as u64,
            ms: None,
        };
        // Nothing above F goes: with F at 0 nothing at all.
        assert!(j.retain(policy, 0, 2_000).is_none());
        let r = j.retain(policy, end, 2_000).expect("old segments go");
        let kept_from = r.state.position;
        assert_eq!(j.start(), kept_from);
        assert_eq!(
            j.segment_files()[0].0,
            kept_from,
            "contiguous from the start"
        );
        assert!(
            end - kept_from >= policy.bytes,
            "at least retention_bytes kept"
        );
        let oldest_kept = j.sealed().first().map_or(end, |x| x.end - x.start);
        assert!(
            end - kept_from - oldest_kept < policy.bytes,
            "one segment fewer would hold less than retention_bytes"
        );
        assert!(r.files.iter().all(|(start, _)| *start < kept_from));
        // Each log start is the first offset of the partition's first batch
        // at or after the new start.
        for (p, &log_start) in r.state.topics[0].log_starts.iter().enumerate() {
            let part = &j.catalog().topic(slot).partitions[p];
            let first = (0..part.index.len())
                .map(|i| *part.index.get(i).unwrap())
                .find(|e| e.position >= kept_from)
                .unwrap();
            assert_eq!(log_start, first.base_offset);
        }
        assert!(
            j.retain(policy, end, 2_000).is_none(),
            "nothing more to delete"
        );
        carry_out(dir.path(), &r);
        drop(j);
        let mut j = open(dir.path());
        assert_eq!((j.start(), j.end()), (kept_from, end));
        let parts = &j.catalog().topic(slot).partitions;
        for ((part, next), log_start) in parts.iter().zip(&next).zip(&r.state.topics[0].log_starts)
        {
            assert_eq!(part.next_offset, *next, "offsets continue");
            assert_eq!(part.floor, *log_start);
            assert_eq!(part.index.get(0).unwrap().base_offset, part.floor);
        }
        let landed = append(&mut j, slot, 1, &producer_batch(2, 10, 0, 0), 1);
        assert_eq!(landed.base_offset, next[1]);
    }

    /// Appends 3-record batches stamped `now_ms`, alternately to
    /// partition 0 of `a` and of `b`, until the journal has `segments`
    /// segment files.
    fn fill_two(j: &mut Journal, a: usize, b: usize, segments: usize, now_ms: i64) {
        let mut which = false;
        while j.segment_files().len() < segments {
            let slot = if which { b } else { a };
            j.append_data(slot, 0, &producer_batch(3, 100, 0, 0), 3, 1, now_ms)
                .unwrap();
            which = !which;
        }
        j.write_out().unwrap();
    }

    #[test]
    fn a_topic_time_limit_moves_only_its_own_log_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let short = TopicConfig {
            retention_ms: Some(4_000),
            retention_bytes: None,
        };
        let (_, s) = j.create_topic_with("short", 1, short, 1, 1_000).unwrap();
        let (_, p) = j.create_topic("plain", 1, 1, 1_000).unwrap();
        fill_two(&mut j, s, p, 2, 1_000);
        let old = j.catalog().topic(s).partitions[0].next_offset;
        for _ in 0..3 {
            j.append_data(s, 0, &producer_batch(3, 100, 0, 0), 3, 1, 9_000)
                .unwrap();
        }
        // A topic on the broker's time limit moves only when given it (as
        // the writer does while a topic holds segments).
        assert_eq!(
            j.retention_moves(p, 9_500, Some(4_000)),
            vec![(0, j.catalog().topic(p).partitions[0].next_offset)]
        );
        assert!(j.retention_moves(p, 4_900, Some(4_000)).is_empty());
        assert!(
            j.retention_moves(p, 99_000, None).is_empty(),
            "no limit of its own"
        );
        assert!(
            j.retention_moves(s, 4_900, None).is_empty(),
            "nothing 4 s old yet"
        );
        // At 9.5 s everything stamped 1 s is older than 4 s: the log start
        // moves to the first batch stamped 9 s.
        assert_eq!(j.retention_moves(s, 9_500, None), vec![(0, old)]);
        // Past every batch: to the end.
        let end = j.catalog().topic(s).partitions[0].next_offset;
        assert_eq!(j.retention_moves(s, 20_000, None), vec![(0, end)]);
        // Once deleted, nothing more to move.
        j.delete_records(s, 0, old, 0, 1, 9_500).unwrap();
        assert!(j.retention_moves(s, 9_500, None).is_empty());
        // No time limit (0) means none.
        j.set_topic_config(
            s,
            TopicConfig {
                retention_ms: Some(0),
                retention_bytes: None,
            },
            0,
            1,
            9_600,
        )
        .unwrap();
        assert!(j.retention_moves(s, 99_000, None).is_empty());
    }

    /// A journal of four segments shared by `keep` (slot 0, without a time
    /// limit: `Some(0)`) and `other` (slot 1, on the broker's), every batch
    /// stamped at 1 s.
    fn kept_and_other(dir: &Path) -> Journal {
        let mut j = open(dir);
        let unlimited = TopicConfig {
            retention_ms: Some(0),
            retention_bytes: None,
        };
        let (_, keep) = j.create_topic_with("keep", 1, unlimited, 1, 1_000).unwrap();
        let (_, other) = j.create_topic("other", 1, 1, 1_000).unwrap();
        fill_two(&mut j, keep, other, 4, 1_000);
        j
    }

    #[test]
    fn a_longer_topic_limit_holds_the_segments_time_retention_would_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = kept_and_other(dir.path());
        let keep = 0;
        let end = j.end();
        let policy = Retention {
            bytes: 0,
            ms: Some(4_000),
        };
        assert!(j.retain(policy, end, 9_500).is_none(), "held by `keep`");
        // A limit longer than the broker's holds them while it keeps them.
        let long = |ms| TopicConfig {
            retention_ms: Some(ms),
            retention_bytes: None,
        };
        j.set_topic_config(keep, long(60_000), end, 1, 2_000)
            .unwrap();
        assert!(j.retain(policy, end, 9_500).is_none(), "kept for 60 s");
        // A shorter one does not.
        j.set_topic_config(keep, long(1_000), end, 1, 2_000)
            .unwrap();
        let sealed = j.sealed().len();
        let r = j.retain(policy, j.end(), 9_500).expect("not held any more");
        assert_eq!(r.files.len(), sealed, "every sealed segment goes");
        // The broker's size limit deletes whatever a topic keeps.
        let dir = tempfile::tempdir().unwrap();
        let mut j = kept_and_other(dir.path());
        let by_size = Retention {
            bytes: 1,
            ms: Some(4_000),
        };
        assert!(j.retain(by_size, j.end(), 9_500).is_some());
        // Records DeleteRecords deleted (durably) hold nothing.
        let dir = tempfile::tempdir().unwrap();
        let mut j = kept_and_other(dir.path());
        let next = j.catalog().topic(keep).partitions[0].next_offset;
        let record_at = j.end();
        j.delete_records(keep, 0, next, 0, 1, 2_000).unwrap();
        j.write_out().unwrap();
        assert!(
            j.retain(policy, record_at, 9_500).is_none(),
            "a deletion not yet durable holds"
        );
        assert!(
            j.retain(policy, j.end(), 9_500).is_some(),
            "a durable deletion does not"
        );
    }

    /// In a replication group a DeleteRecords or settings record above C
    /// may be cut with the tail of an old leader: the log start and the
    /// settings go back to what they were below the cut, on the member
    /// that appended the records and on one that received them, and only
    /// settled records stay whatever is cut later.
    #[test]
    fn a_cut_takes_back_deletions_and_settings_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let (_, slot) = j.create_topic("t", 1, 1, 5).unwrap();
        for _ in 0..4 {
            append(&mut j, slot, 0, &producer_batch(1, 10, 0, 0), 1);
        }
        j.delete_records(slot, 0, 1, 0, 1, 6).unwrap();
        let first = j.end();
        let limited = TopicConfig {
            retention_ms: Some(9),
            retention_bytes: None,
        };
        j.set_topic_config(slot, limited, 0, 1, 6).unwrap();
        j.delete_records(slot, 0, 3, 0, 1, 6).unwrap();
        j.write_out().unwrap();
        let seen = |j: &Journal| {
            let t = j.catalog().topic(0);
            (t.partitions[0].deleted_below(), t.config.retention_ms)
        };
        assert_eq!(seen(&j), (3, Some(9)));
        // A follower receives the same records.
        let fdir = tempfile::tempdir().unwrap();
        let mut f = open(fdir.path());
        let bytes = journal_bytes(&mut j);
        let mut pos = 0;
        while pos < bytes.len() {
            let len = BatchView(&bytes[pos..]).len();
            let r = f.append_replicated(&bytes[pos..pos + len]).unwrap();
            if pos as u64 == first {
                assert_eq!(
                    r.changed,
                    Some(Changed::Configured {
                        slot: 0,
                        config: limited
                    })
                );
            }
            pos += len;
        }
        f.write_out().unwrap();
        assert_eq!(seen(&f), (3, Some(9)));
        for member in [&mut j, &mut f] {
            member.truncate(first, first).unwrap();
            assert_eq!(seen(member), (1, None), "taken back to below the cut");
        }
        // Settled records stay: the leader's cut never goes below them.
        j.settle(j.end());
        assert_eq!(
            j.catalog().topic(0).partitions[0].deletions.pending().len(),
            0
        );
        assert_eq!(seen(&j), (1, None));
        drop(f);
        // Recovered on a group member (entries kept), a record stays apart
        // until settled too.
        let mut f = open(fdir.path());
        assert_eq!(seen(&f), (1, None));
        assert_eq!(
            f.catalog().topic(0).partitions[0].deletions.pending().len(),
            1
        );
        f.settle(f.end());
        assert_eq!(
            f.catalog().topic(0).partitions[0].deletions.pending().len(),
            0
        );
        assert_eq!(seen(&f), (1, None));
    }

    #[test]
    fn topic_settings_survive_restarts_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let reopen = |from_snapshot| standalone(dir.path(), from_snapshot);
        let created = TopicConfig {
            retention_ms: Some(7),
            retention_bytes: None,
        };
        let altered = TopicConfig {
            retention_ms: None,
            retention_bytes: Some(9),
        };
        let mut j = reopen(false);
        let (_, slot) = j.create_topic_with("t", 2, created, 1, 5).unwrap();
        j.write_out().unwrap();
        let config = |j: &Journal| j.catalog().topic(0).config;
        drop(j);
        let mut j = reopen(false);
        assert_eq!(config(&j), created, "created with its settings");
        j.set_topic_config(slot, altered, j.end(), 1, 6).unwrap();
        j.write_out().unwrap();
        drop(j);
        let j = reopen(false);
        assert_eq!(config(&j), altered, "the record replayed");
        snapshot::write(dir.path(), &j.catalog().snapshot(j.end())).unwrap();
        drop(j);
        let mut j = reopen(true);
        assert!(j.report().snapshot_position.is_some());
        assert_eq!(config(&j), altered, "from the snapshot");
        // A start state holds durable settings only: a record above F may
        // be lost by a crash.
        while j.sealed().len() < 3 {
            append(&mut j, slot, 1, &producer_batch(1, 100, 0, 0), 1);
        }
        j.write_out().unwrap();
        let durable = j.end();
        j.set_topic_config(slot, TopicConfig::default(), durable, 1, 7)
            .unwrap();
        j.write_out().unwrap();
        let r = j
            .retain(Retention { bytes: 1, ms: None }, durable, 10_000)
            .expect("sealed segments go");
        assert_eq!(r.state.topics[0].config, altered, "the durable settings");
        carry_out(dir.path(), &r);
        snapshot::remove(dir.path()).unwrap();
        drop(j);
        let j = reopen(false);
        assert!(j.start() > 0);
        assert_eq!(
            config(&j),
            TopicConfig::default(),
            "the later record replayed"
        );
    }

    #[test]
    fn retention_by_time_deletes_only_segments_whose_newest_batch_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let slot = fill(&mut j, 4, 1_000);
        // Newer batches: the active segment and the one sealed next.
        while j.segment_files().len() < 6 {
            j.append_data(slot, 0, &producer_batch(3, 100, 0, 0), 3, 1, 9_000)
                .unwrap();
        }
        j.write_out().unwrap();
        let old_sealed = j.sealed().iter().filter(|x| x.newest_ms < 5_000).count();
        assert!(old_sealed >= 2);
        let policy = Retention {
            bytes: 0,
            ms: Some(4_000),
        };
        let end = j.end();
        assert!(
            j.retain(policy, end, 4_500).is_none(),
            "nothing older than 4 s at 4.5 s"
        );
        let r = j.retain(policy, end, 9_500).expect("the old segments go");
        assert_eq!(r.files.len(), old_sealed);
        assert!(j.sealed().iter().all(|x| x.newest_ms >= 5_000));
        carry_out(dir.path(), &r);
        drop(j);
        let j = open(dir.path());
        assert!(
            j.sealed().iter().all(|x| x.newest_ms == 9_000),
            "times recovered"
        );
    }

    #[test]
    fn recovery_deletes_what_an_interrupted_deletion_left_and_refuses_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        fill(&mut j, 5, 1_000);
        let end = j.end();
        let r = j
            .retain(
                Retention {
                    bytes: 2 * SEGMENT_BYTES as u64,
                    ms: None,
                },
                end,
                1_000,
            )
            .unwrap();
        // The crash came after the start state, before any file went.
        start::write(dir.path(), &r.state).unwrap();
        drop(j);
        let j = open(dir.path());
        assert_eq!(j.report().leftover_segments.len(), r.files.len());
        assert_eq!(j.segment_files()[0].0, r.state.position);
        assert_eq!(j.end(), end);
        drop(j);
        // The segment at the start missing is a hole: refused, and so is a
        // journal left with no segment at all.
        for _ in 0..2 {
            let first = list_segments(dir.path()).unwrap()[0].1.clone();
            std::fs::remove_file(first).unwrap();
            match Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES) {
                Err(JournalError::Corrupt(why)) => assert!(why.contains("missing"), "{why}"),
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("a journal with a hole opened"),
            }
            while list_segments(dir.path()).unwrap().len() > 1 {
                let last = list_segments(dir.path()).unwrap().pop().unwrap().1;
                std::fs::remove_file(last).unwrap();
            }
        }
    }

    /// Time retention judges each segment by its own stamps, oldest first,
    /// and stops at the first to keep: a segment stamped by a clock that
    /// was behind for a while must not take recent segments before it
    /// along (second review), and one stamped by a clock that was ahead
    /// holds the later ones back, on the safe side.
    #[test]
    fn time_retention_stops_at_the_first_segment_to_keep_whatever_comes_after() {
        /// A journal whose segments hold batches stamped as `stamps` says:
        /// `(segment files to reach, append time)`, in order.
        fn stamped(dir: &Path, stamps: &[(usize, i64)]) -> Journal {
            let mut j = open(dir);
            let (_, slot) = j.create_topic("t", 1, 1, 1_000).unwrap();
            for &(segments, ms) in stamps {
                while j.segment_files().len() < segments {
                    j.append_data(slot, 0, &producer_batch(3, 100, 0, 0), 3, 1, ms)
                        .unwrap();
                }
            }
            j.write_out().unwrap();
            j
        }
        let policy = Retention {
            bytes: 0,
            ms: Some(5_000),
        };
        // A clock behind for a while (2,000) after recent segments.
        let dir = tempfile::tempdir().unwrap();
        let mut j = stamped(
            dir.path(),
            &[(3, 1_000), (6, 9_000), (7, 2_000), (8, 9_500)],
        );
        let end = j.end();
        let r = j.retain(policy, end, 10_000).expect("the old segments go");
        assert_eq!(r.files.len(), 2, "the two segments stamped 1,000 only");
        assert!(j.sealed()[0].newest_ms == 9_000, "recent segments kept");
        // A stamp from the future holds back what follows it.
        let dir = tempfile::tempdir().unwrap();
        let mut j = stamped(dir.path(), &[(2, 1_000), (3, i64::MAX / 2), (5, 1_000)]);
        let end = j.end();
        let r = j
            .retain(policy, end, 10_000)
            .expect("the first old one goes");
        assert_eq!(r.files.len(), 1);
        assert!(j.retain(policy, end, 10_000).is_none(), "held back");
    }

    /// Review finding: a recovery that refuses (the segment at the start
    /// state's position is missing) deletes nothing.
    #[test]
    fn a_recovery_that_refuses_a_hole_deletes_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        fill(&mut j, 5, 1_000);
        let end = j.end();
        let policy = Retention {
            bytes: 2 * SEGMENT_BYTES as u64,
            ms: None,
        };
        let r = j.retain(policy, end, 1_000).unwrap();
        start::write(dir.path(), &r.state).unwrap();
        drop(j);
        std::fs::remove_file(dir.path().join(segment_file_name(r.state.position))).unwrap();
        let before = list_segments(dir.path()).unwrap();
        assert!(Journal::open(dir.path(), SEGMENT_BYTES, CACHE_BYTES).is_err());
        assert_eq!(list_segments(dir.path()).unwrap(), before);
    }

    /// Review finding: a topic whose creation was not durable when
    /// retention decided must not come back through the start state after
    /// a crash that lost its record.
    #[test]
    fn a_topic_created_above_the_durable_position_is_not_in_the_start_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        fill(&mut j, 4, 1_000);
        let durable = j.end();
        j.create_topic("late", 1, 1, 1_000).unwrap();
        let policy = Retention { bytes: 1, ms: None };
        let r = j.retain(policy, durable, 1_000).unwrap();
        assert!(r.state.topics.iter().all(|t| t.meta.name != "late"));
        carry_out(dir.path(), &r);
        // A crash: the record of "late" never reached the file.
        drop(j);
        let j = open(dir.path());
        assert!(j.catalog().lookup("late").is_none());
        assert!(j.catalog().lookup("t").is_some());
    }
    /// Review finding: recovery from a catalog snapshot takes the settings
    /// of an older start state over the snapshot's (`Topic::continue_from`
    /// overwrites them after `Catalog::restore`), and the walk from the
    /// snapshot's position does not replay the TopicConfig record below
    /// it: a durable AlterTopic is undone by a graceful restart (which
    /// snapshots at the end) once retention wrote a start state before it.
    #[test]
    fn review_a_snapshot_newer_than_the_start_state_keeps_its_settings() {
        let dir = tempfile::tempdir().unwrap();
        let reopen = || standalone(dir.path(), true);
        let mut j = reopen();
        let slot = fill(&mut j, 4, 1_000);
        // Retention deletes segments: the start state holds the settings
        // of then (the broker's).
        let r = j
            .retain(Retention { bytes: 1, ms: None }, j.end(), 1_000)
            .expect("sealed segments go");
        assert_eq!(r.state.topics[0].config, TopicConfig::default());
        carry_out(dir.path(), &r);
        // Later, a durable AlterTopic: no time limit.
        let unlimited = TopicConfig {
            retention_ms: Some(0),
            retention_bytes: None,
        };
        j.set_topic_config(slot, unlimited, j.end(), 1, 2_000)
            .unwrap();
        j.write_out().unwrap();
        // A graceful stop snapshots the catalog at the end.
        snapshot::write(dir.path(), &j.catalog().snapshot(j.end())).unwrap();
        drop(j);
        let j = reopen();
        assert!(j.report().snapshot_position.is_some(), "resumed");
        assert_eq!(
            j.catalog().topic(slot).config,
            unlimited,
            "the durable AlterTopic survives a restart from the snapshot"
        );
    }
    /// Review finding: `held_by_topic` judges by the topic's settings now,
    /// not the durable ones, although it takes only durable deletions:
    /// an AlterTopic giving an unlimited topic back to the broker's limit
    /// lets time retention delete the topic's segments (durably: the start
    /// state) before the record is durable. A crash then loses the record:
    /// the topic is unlimited again (the start state says so) and its
    /// acknowledged records are gone.
    #[test]
    fn review_a_settings_change_not_yet_durable_does_not_release_a_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = kept_and_other(dir.path());
        let keep = 0;
        let durable = j.end();
        let policy = Retention {
            bytes: 0,
            ms: Some(4_000),
        };
        assert!(j.retain(policy, durable, 9_500).is_none(), "held by `keep`");
        // Back to the broker's limit, by a record above F.
        j.set_topic_config(keep, TopicConfig::default(), durable, 1, 2_000)
            .unwrap();
        j.write_out().unwrap();
        let r = j.retain(policy, durable, 9_500);
        if let Some(r) = &r {
            assert_eq!(
                r.state.topics[keep].config.retention_ms,
                Some(0),
                "durable settings"
            );
        }
        assert!(
            r.is_none(),
            "a settings record that may be lost releases no segment"
        );
    }
}
