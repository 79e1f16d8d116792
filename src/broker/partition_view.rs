//! What the reader knows of one partition: the sealed segments whose index
//! entries are on disk (their segment index files, read with pread), and
//! the in-memory index the writer appends to, which starts where they end.
//! It answers the questions a fetch, Metadata and ListOffsets ask: where the
//! partition starts and ends, and which journal bytes hold the batches from
//! an offset on.

use crate::journal::catalog::IndexHandle;
use crate::journal::deletions::Deletions;
use crate::journal::index::{entries_below, locate, IndexEntry};
use crate::journal::seg_index::SegmentIndex;
use std::sync::Arc;

/// Entries read from an index file per pread while a fetch is assembled.
const ENTRIES_PER_READ: usize = 256;

/// Checks `index`'s entries in full before their first use: recovery
/// takes index files on the strength of their header checksum, and the
/// retention stage checks them in the background, but a fetch may come
/// first. Once per file.
fn checked(index: &SegmentIndex) -> std::io::Result<()> {
    index
        .verify_once()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// One sealed segment's part of a partition.
#[derive(Debug, Clone)]
struct DiskSection {
    index: Arc<SegmentIndex>,
    /// Position of the section in `index.sections()`.
    section: usize,
    /// The segment's first byte.
    segment_start: u64,
    /// The partition's first offset there.
    first_offset: u64,
    /// One past its last offset there.
    next_offset: u64,
}

/// A fetch's batches: where they lie in the journal and their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// One past the last committed offset.
    pub high_watermark: u64,
    /// The first kept offset.
    pub start_offset: u64,
    /// Bytes of the batches chosen (in the runs).
    pub bytes: usize,
}

/// What stops a fetch from being answered with batches.
#[derive(Debug)]
pub enum NoSelection {
    /// The offset lies outside `[start, end]`.
    OutOfRange {
        /// The first kept offset.
        start: u64,
        /// One past the last committed offset.
        end: u64,
    },
    /// An index file could not be read.
    Io(std::io::Error),
}

/// One partition as the reader sees it.
#[derive(Debug, Clone)]
pub struct PartitionView {
    /// The in-memory index and its floor.
    pub memory: IndexHandle,
    /// The sealed segments indexed on disk that hold batches of the
    /// partition, oldest first; all of them committed.
    disk: Vec<DiskSection>,
    /// The log start DeleteRecords records set. A record counts once C
    /// passes it, so that a log start is never reported before the record
    /// that moved it is committed (durable, on a standalone broker) and a
    /// crash or a cut never moves a reported log start back.
    deletions: Deletions,
}

impl PartitionView {
    /// A partition known only through its in-memory index.
    pub fn new(memory: IndexHandle) -> PartitionView {
        PartitionView {
            memory,
            disk: Vec::new(),
            deletions: Deletions::default(),
        }
    }

    /// Takes a new in-memory index (after a trim or a cut), keeping what
    /// is on disk.
    pub fn replace_memory(&mut self, memory: IndexHandle) {
        self.memory = memory;
    }

    /// Adds `index`'s section `section` (one of this partition's), a
    /// segment after every one it has, or in place of the one it has of
    /// the same segment when it covers the same offsets (an index file
    /// rebuilt after damage).
    pub fn add_section(&mut self, index: &Arc<SegmentIndex>, section: usize) {
        let Some(s) = index.sections().get(section) else {
            return;
        };
        let new = DiskSection {
            index: index.clone(),
            section,
            segment_start: index.segment_start,
            first_offset: s.first_offset,
            next_offset: s.next_offset,
        };
        match self
            .disk
            .binary_search_by_key(&index.segment_start, |d| d.segment_start)
        {
            Ok(k) => {
                let old = &self.disk[k];
                if (old.first_offset, old.next_offset) == (new.first_offset, new.next_offset) {
                    self.disk[k] = new;
                }
            }
            Err(k) if k == self.disk.len() => self.disk.push(new),
            Err(_) => {}
        }
    }

    /// Takes a DeleteRecords record at journal position `at` moving the log
    /// start up to `below`: offsets below it are out of range once C
    /// passes the record (`at` 0: known committed, at once). True when it
    /// is the only one waiting for C.
    pub fn delete_below(&mut self, at: u64, below: u64) -> bool {
        self.deletions.push(at, below)
    }

    /// Takes the catalog's deletions as a cut of the journal left them
    /// (lower or higher than before: the cut took records back).
    pub fn set_deletions(&mut self, deletions: Deletions) {
        self.deletions = deletions;
    }

    /// Folds the records C (`committed`) passed into the log start; true
    /// when some are left.
    pub fn settle_deletions(&mut self, committed: u64) -> bool {
        self.deletions.settle(committed)
    }

    /// Forgets the segments retention deleted (those below `position`).
    pub fn forget_below(&mut self, position: u64) {
        let gone = self.disk.partition_point(|d| d.segment_start < position);
        self.disk.drain(..gone);
    }

    /// The first kept offset and one past the last committed one, when C
    /// is `committed` and the journal starts at `journal_start`.
    pub fn offsets(&self, committed: u64, journal_start: u64) -> (u64, u64) {
        self.range(self.visible(committed), committed, journal_start)
    }

    /// How many in-memory entries lie below C (`committed`).
    fn visible(&self, committed: u64) -> usize {
        let idx = &*self.memory.index;
        entries_below(idx, idx.len(), committed)
    }

    /// [`PartitionView::offsets`] when the first `n` in-memory entries are
    /// the visible ones.
    fn range(&self, n: usize, committed: u64, journal_start: u64) -> (u64, u64) {
        let end = self.memory.end_offset(n);
        let start = match self.disk.first() {
            Some(d) => d.first_offset,
            None => self.memory.log_start(n, journal_start),
        };
        // Records deleted below the end not yet committed show as an empty
        // partition starting at its end.
        (start.max(self.deletions.below(committed)).min(end), end)
    }

    /// The first offset of the first kept, committed batch appended at or
    /// after `time_ms` by the running maximum of append times (so a clock
    /// that stepped back cannot make an earlier batch look later), or one
    /// past the last committed offset when there is none.
    ///
    /// # Errors
    /// An index file could not be read.
    pub fn offset_for_time(
        &self,
        time_ms: i64,
        committed: u64,
        journal_start: u64,
    ) -> std::io::Result<u64> {
        let n = self.visible(committed);
        let (start, end) = self.range(n, committed, journal_start);
        for d in &self.disk {
            let Some(s) = d.index.sections().get(d.section) else {
                continue;
            };
            if s.max_time_ms < time_ms {
                continue;
            }
            checked(&d.index)?;
            let i = d.index.locate_time(s, time_ms)?;
            let mut one = Vec::with_capacity(1);
            if d.index.read_entries(s, i, 1, &mut one)? == 1 {
                return Ok(one[0].base_offset.clamp(start, end));
            }
        }
        let idx = &*self.memory.index;
        let from = entries_below(idx, n, journal_start);
        let (mut lo, mut hi) = (from, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match idx.get(mid) {
                Some(e) if e.max_time_ms < time_ms => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(idx
            .get(lo)
            .filter(|_| lo < n)
            .map_or(end, |e| e.base_offset.clamp(start, end)))
    }

    /// Bytes of the partition's batches that are kept (on disk or in
    /// memory) and committed.
    pub fn bytes(&self, committed: u64, journal_start: u64) -> u64 {
        let on_disk: u64 = self
            .disk
            .iter()
            .filter_map(|d| d.index.sections().get(d.section))
            .map(|s| s.bytes)
            .sum();
        // Memory may still hold the entries of the last indexed segments
        // (until the writer's trim): count them once.
        let past_files = self.disk.last().map_or(0, |d| d.index.segment_end);
        let idx = &*self.memory.index;
        let n = self.visible(committed);
        let from = entries_below(idx, n, journal_start.max(past_files));
        let in_memory: u64 = (from..n)
            .filter_map(|i| idx.get(i))
            .map(|e| u64::from(e.len))
            .sum();
        on_disk + in_memory
    }

    /// Chooses the batches a fetch from `offset` returns, at most
    /// `max_bytes` of them but at least one: their journal ranges go to
    /// `runs` (adjacent batches merged), `scratch` is working space.
    /// Batches come from the segment index files, segment after segment,
    /// then from memory.
    ///
    /// # Errors
    /// [`NoSelection`]: the offset is out of range, or an index file could
    /// not be read.
    pub fn select(
        &self,
        offset: u64,
        max_bytes: usize,
        committed: u64,
        journal_start: u64,
        runs: &mut Vec<(u64, u64)>,
        scratch: &mut Vec<IndexEntry>,
    ) -> Result<Selection, NoSelection> {
        runs.clear();
        let n = self.visible(committed);
        let (start_offset, high_watermark) = self.range(n, committed, journal_start);
        if offset > high_watermark || offset < start_offset {
            return Err(NoSelection::OutOfRange {
                start: start_offset,
                end: high_watermark,
            });
        }
        let mut bytes = 0usize;
        let mut take = |e: &IndexEntry, runs: &mut Vec<(u64, u64)>| -> bool {
            let len = e.len as usize;
            if !runs.is_empty() && bytes + len > max_bytes {
                return false;
            }
            bytes += len;
            match runs.last_mut() {
                Some(run) if run.1 == e.position => run.1 = e.end_position(),
                _ => runs.push((e.position, e.end_position())),
            }
            true
        };
        // From the files first, segment after segment, then from memory:
        // offsets run on without a gap, so each part starts where the last
        // one ended.
        let mut next = offset;
        let mut k = self.disk.partition_point(|d| d.next_offset <= offset);
        while let Some(d) = self.disk.get(k).filter(|_| next < self.memory.floor) {
            if d.first_offset > next {
                if runs.is_empty() {
                    // Never expected: a hole between kept segments. The
                    // client moves on to what is there.
                    return Err(NoSelection::OutOfRange {
                        start: d.first_offset,
                        end: high_watermark,
                    });
                }
                return Ok(Selection {
                    high_watermark,
                    start_offset,
                    bytes,
                });
            }
            let Some(s) = d.index.sections().get(d.section) else {
                return Err(NoSelection::Io(std::io::Error::other(
                    "a segment index section vanished",
                )));
            };
            checked(&d.index).map_err(NoSelection::Io)?;
            let mut i = d.index.locate(s, next).map_err(NoSelection::Io)?;
            while i < s.entry_count {
                let got = d
                    .index
                    .read_entries(s, i, ENTRIES_PER_READ, scratch)
                    .map_err(NoSelection::Io)?;
                if got == 0 {
                    break;
                }
                for e in scratch.iter() {
                    if !take(e, runs) {
                        return Ok(Selection {
                            high_watermark,
                            start_offset,
                            bytes,
                        });
                    }
                }
                i += got as u32;
            }
            next = s.next_offset;
            k += 1;
        }
        let idx = &*self.memory.index;
        let mut i = locate(idx, n, next);
        while let Some(e) = (i < n).then(|| idx.get(i)).flatten() {
            if !take(e, runs) {
                break;
            }
            i += 1;
        }
        Ok(Selection {
            high_watermark,
            start_offset,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::append_log::append_log;
    use crate::journal::seg_index::{self, SectionSource};

    /// Batches of partition 0 of topic 7: three records each, 100 bytes,
    /// with 50-byte gaps (other partitions' batches) between them, over
    /// segments starting at 0, 1000 and 2000 (the last one active).
    fn entries() -> Vec<IndexEntry> {
        let mut out = Vec::new();
        let (mut offset, mut position) = (0u64, 0u64);
        while position + 100 <= 2600 {
            // A batch never crosses a segment boundary.
            let seg_end = (position / 1000 + 1) * 1000;
            if position + 100 > seg_end {
                position = seg_end;
                continue;
            }
            out.push(IndexEntry {
                base_offset: offset,
                position,
                len: 100,
                count: 3,
                max_time_ms: offset as i64,
            });
            offset += 3;
            position += 150;
        }
        out
    }

    /// The view with segments 0 and 1000 on disk in `dir`, the rest in
    /// memory.
    fn view(dir: &std::path::Path, all: &Vec<IndexEntry>) -> PartitionView {
        let mut at = 0;
        let mut disk = Vec::new();
        for (start, end) in [(0u64, 1000u64), (1000, 2000)] {
            let n = all[at..].iter().take_while(|e| e.position < end).count();
            seg_index::write(
                dir,
                start,
                end,
                &[SectionSource {
                    topic_id: 7,
                    partition: 0,
                    entries: all,
                    range: at..at + n,
                }],
            )
            .unwrap();
            at += n;
            disk.push(Arc::new(SegmentIndex::open(dir, start).unwrap().unwrap()));
        }
        let (mut w, index) = append_log();
        for e in &all[at..] {
            w.push(*e);
        }
        std::mem::forget(w);
        let mut v = PartitionView::new(IndexHandle {
            index,
            floor: all[at].base_offset,
            floor_time_ms: all[at - 1].max_time_ms,
        });
        for d in &disk {
            v.add_section(d, 0);
        }
        v
    }

    /// The runs and bytes a fetch from `offset` should get: batches from
    /// the one holding it, within `max` bytes (at least one), from the
    /// files and then from memory.
    fn expected(all: &[IndexEntry], offset: u64, max: usize) -> (Vec<(u64, u64)>, usize) {
        let first = all.iter().position(|e| e.next_offset() > offset).unwrap();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut bytes = 0;
        for e in &all[first..] {
            if !runs.is_empty() && bytes + e.len as usize > max {
                break;
            }
            bytes += e.len as usize;
            match runs.last_mut() {
                Some(r) if r.1 == e.position => r.1 = e.end_position(),
                _ => runs.push((e.position, e.end_position())),
            }
        }
        (runs, bytes)
    }

    #[test]
    fn fetches_read_sealed_segments_from_their_files_and_the_rest_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries();
        let v = view(dir.path(), &all);
        let end = all.last().unwrap().next_offset();
        assert_eq!(v.offsets(u64::MAX, 0), (0, end));
        let (mut runs, mut scratch) = (Vec::new(), Vec::new());
        for offset in 0..end {
            for max in [1, 250, 400, 10_000] {
                let got = v
                    .select(offset, max, u64::MAX, 0, &mut runs, &mut scratch)
                    .unwrap();
                let (want_runs, want_bytes) = expected(&all, offset, max);
                assert_eq!(runs, want_runs, "offset {offset}, max {max}");
                assert_eq!(got.bytes, want_bytes);
                assert_eq!((got.start_offset, got.high_watermark), (0, end));
            }
        }
        // Nothing above the end; the end itself is an empty answer.
        let got = v.select(end, 100, u64::MAX, 0, &mut runs, &mut scratch);
        assert!(matches!(got, Ok(s) if s.bytes == 0) && runs.is_empty());
        assert!(matches!(
            v.select(end + 1, 100, u64::MAX, 0, &mut runs, &mut scratch),
            Err(NoSelection::OutOfRange { start: 0, end: e }) if e == end
        ));
        // Only what lies below C is visible.
        let (_, hw) = v.offsets(2000 + 150 + 100, 0);
        assert_eq!(
            hw,
            all.iter()
                .find(|e| e.position == 2150)
                .unwrap()
                .next_offset()
        );
        assert_eq!(
            v.bytes(u64::MAX, 0),
            100 * all.len() as u64,
            "bytes count both the files and memory"
        );
    }

    #[test]
    fn a_time_lookup_searches_the_files_then_memory() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries();
        let mut v = view(dir.path(), &all);
        let end = all.last().unwrap().next_offset();
        // Each batch's running maximum time is its base offset.
        for t in -5..end as i64 + 5 {
            let want = all
                .iter()
                .find(|e| e.max_time_ms >= t)
                .map_or(end, |e| e.base_offset);
            assert_eq!(v.offset_for_time(t, u64::MAX, 0).unwrap(), want, "time {t}");
        }
        // Below C only, and never below the log start.
        let c = all.iter().find(|e| e.position >= 2000).unwrap();
        assert_eq!(
            v.offset_for_time(i64::MAX, c.position, 0).unwrap(),
            c.base_offset
        );
        v.forget_below(1000);
        let second = all.iter().find(|e| e.position >= 1000).unwrap().base_offset;
        assert_eq!(v.offset_for_time(0, u64::MAX, 1000).unwrap(), second);
    }

    #[test]
    fn retention_moves_the_start_past_the_deleted_segments_files() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries();
        let mut v = view(dir.path(), &all);
        let end = all.last().unwrap().next_offset();
        let second_batch = all.iter().find(|e| e.position >= 1000).unwrap();
        let second = second_batch.base_offset;
        v.forget_below(1000);
        assert_eq!(v.offsets(u64::MAX, 1000), (second, end));
        let (mut runs, mut scratch) = (Vec::new(), Vec::new());
        assert!(matches!(
            v.select(second - 1, 100, u64::MAX, 1000, &mut runs, &mut scratch),
            Err(NoSelection::OutOfRange { start, .. }) if start == second
        ));
        let got = v
            .select(second, 100, u64::MAX, 1000, &mut runs, &mut scratch)
            .unwrap();
        assert_eq!((runs[0].0, got.bytes), (second_batch.position, 100));
        // Both file segments gone: the start is the first batch in memory.
        v.forget_below(2000);
        let third = all.iter().find(|e| e.position >= 2000).unwrap().base_offset;
        assert_eq!(v.offsets(u64::MAX, 2000), (third, end));
        assert_eq!(v.bytes(u64::MAX, 2000), 100 * (end - third) / 3);
    }

    /// Index files recovery took on their header checksum: a fetch checks
    /// a file's entries before it first uses them, and a damaged file's
    /// rebuilt copy replaces it.
    #[test]
    fn a_file_not_checked_yet_is_checked_before_use_and_a_rebuilt_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries();
        let good = view(dir.path(), &all);
        // Damage an entry of the first file (its position), keeping the
        // header and directory sound, and open it as recovery does.
        let path = dir.path().join(seg_index::index_file_name(0));
        let sound = std::fs::read(&path).unwrap();
        let mut bytes = sound.clone();
        let entry_at = seg_index::INDEX_HEADER_LEN + seg_index::INDEX_SECTION_LEN + 8;
        bytes[entry_at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = Arc::new(SegmentIndex::open(dir.path(), 0).unwrap().unwrap());
        assert!(!damaged.is_verified());
        let mut v = PartitionView::new(good.memory.clone());
        v.add_section(&damaged, 0);
        for d in good.disk.iter().skip(1) {
            v.add_section(&d.index, d.section);
        }
        let (mut runs, mut scratch) = (Vec::new(), Vec::new());
        assert!(matches!(
            v.select(0, 1000, u64::MAX, 0, &mut runs, &mut scratch),
            Err(NoSelection::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData
        ));
        assert!(v.offset_for_time(0, u64::MAX, 0).is_err());
        // Found damaged once, it is not read again by every fetch: even
        // with its bytes mended behind its back it stays refused.
        std::fs::write(&path, &sound).unwrap();
        assert!(matches!(
            v.select(0, 1000, u64::MAX, 0, &mut runs, &mut scratch),
            Err(NoSelection::Io(_))
        ));
        // Later segments are not held back by it.
        let later = all.iter().find(|e| e.position >= 1000).unwrap();
        assert!(v
            .select(later.base_offset, 100, u64::MAX, 0, &mut runs, &mut scratch)
            .is_ok());
        // The rebuilt file takes its place.
        let rebuilt = Arc::new(SegmentIndex::open(dir.path(), 0).unwrap().unwrap());
        v.add_section(&rebuilt, 0);
        let got = v
            .select(0, 100, u64::MAX, 0, &mut runs, &mut scratch)
            .unwrap();
        assert_eq!((runs[0].0, got.bytes), (0, 100));
        assert!(rebuilt.is_verified(), "checked on first use");
    }
}
