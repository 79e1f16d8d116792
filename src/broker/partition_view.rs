//! What the reader knows of one partition: the sealed segments whose index
//! entries are on disk (their segment index files, read with pread), and
//! the in-memory index the writer appends to, which starts where they end.
//! It answers the questions a fetch, Metadata and ListOffsets ask: where the
//! partition starts and ends, and which journal bytes hold the batches from
//! an offset on.

use crate::journal::catalog::IndexHandle;
use crate::journal::index::{entries_below, locate, IndexEntry};
use crate::journal::seg_index::SegmentIndex;
use std::sync::Arc;

/// Entries read from an index file per pread while a fetch is assembled.
const ENTRIES_PER_READ: usize = 256;

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
}

impl PartitionView {
    /// A partition known only through its in-memory index.
    pub fn new(memory: IndexHandle) -> PartitionView {
        PartitionView {
            memory,
            disk: Vec::new(),
        }
    }

    /// Takes a new in-memory index (after a trim or a cut), keeping what
    /// is on disk.
    pub fn replace_memory(&mut self, memory: IndexHandle) {
        self.memory = memory;
    }

    /// Adds `index`'s section `section` (one of this partition's), a
    /// segment after every one it has.
    pub fn add_section(&mut self, index: &Arc<SegmentIndex>, section: usize) {
        let Some(s) = index.sections().get(section) else {
            return;
        };
        if self
            .disk
            .last()
            .is_some_and(|d| d.segment_start >= index.segment_start)
        {
            return;
        }
        self.disk.push(DiskSection {
            index: index.clone(),
            section,
            segment_start: index.segment_start,
            first_offset: s.first_offset,
            next_offset: s.next_offset,
        });
    }

    /// Forgets the segments retention deleted (those below `position`).
    pub fn forget_below(&mut self, position: u64) {
        let gone = self.disk.partition_point(|d| d.segment_start < position);
        self.disk.drain(..gone);
    }

    /// The first kept offset and one past the last committed one, when C
    /// is `committed` and the journal starts at `journal_start`.
    pub fn offsets(&self, committed: u64, journal_start: u64) -> (u64, u64) {
        let idx = &*self.memory.index;
        let n = entries_below(idx, idx.len(), committed);
        let end = self.memory.end_offset(n);
        let start = match self.disk.first() {
            Some(d) => d.first_offset,
            None => self.memory.log_start(n, journal_start),
        };
        (start, end)
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
        let idx = &*self.memory.index;
        let n = entries_below(idx, idx.len(), committed);
        let from = entries_below(idx, n, journal_start);
        let in_memory: u64 = (from..n)
            .filter_map(|i| idx.get(i))
            .map(|e| u64::from(e.len))
            .sum();
        on_disk + in_memory
    }

    /// Chooses the batches a fetch from `offset` returns, at most
    /// `max_bytes` of them but at least one: their journal ranges go to
    /// `runs` (adjacent batches merged), `scratch` is working space.
    /// Batches come from one segment index file or from memory, never
    /// both: a fetch that reaches the end of an indexed segment returns
    /// less, and the next fetch goes on.
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
        let (start_offset, high_watermark) = self.offsets(committed, journal_start);
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
        let on_disk = self.disk.partition_point(|d| d.next_offset <= offset);
        match self.disk.get(on_disk) {
            Some(d) if offset < self.memory.floor => {
                let Some(s) = d.index.sections().get(d.section) else {
                    return Err(NoSelection::Io(std::io::Error::other(
                        "a segment index section vanished",
                    )));
                };
                let mut i = d.index.locate(s, offset).map_err(NoSelection::Io)?;
                'read: while i < s.entry_count {
                    let got = d
                        .index
                        .read_entries(s, i, ENTRIES_PER_READ, scratch)
                        .map_err(NoSelection::Io)?;
                    if got == 0 {
                        break;
                    }
                    for e in scratch.iter() {
                        if !take(e, runs) {
                            break 'read;
                        }
                    }
                    i += got as u32;
                }
            }
            _ => {
                let idx = &*self.memory.index;
                let n = entries_below(idx, idx.len(), committed);
                let mut i = locate(idx, n, offset);
                while let Some(e) = (i < n).then(|| idx.get(i)).flatten() {
                    if !take(e, runs) {
                        break;
                    }
                    i += 1;
                }
            }
        }
        Ok(Selection {
            high_watermark,
            start_offset,
            bytes,
        })
    }
}
