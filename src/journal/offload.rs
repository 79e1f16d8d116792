//! Moving a sealed segment's index entries out of memory: the writer hands
//! out an [`IndexJob`] once a segment is sealed and committed, a background
//! stage writes the segment's index file ([`super::seg_index`]) from the
//! shared partition indexes and answers with a [`Trim`]: for every
//! partition, a new in-memory index holding only the entries after the
//! segment, built off the writer's thread. The writer swaps it in
//! ([`Catalog::trim`](super::catalog::Catalog::trim)) after copying the few
//! entries appended meanwhile, so the copy never pauses it for long.
//!
//! Jobs are carried out in journal order, and a trim only ever drops entries
//! below the end of a segment whose index file is durable: every entry that
//! leaves memory is on disk first.

use super::append_log::{append_log, AppendWriter};
use super::catalog::IndexHandle;
use super::error::JournalError;
use super::index::{entries_below_in, IndexEntries, IndexEntry, PartitionIndex};
use super::seg_index::{self, SectionSource, SegmentIndex};
use std::path::Path;
use std::sync::Arc;

/// One partition as a job sees it.
#[derive(Debug, Clone)]
pub struct JobPartition {
    /// Its topic's id.
    pub topic_id: u32,
    /// Its number.
    pub partition: u32,
    /// Its index now, shared with the writer.
    pub handle: IndexHandle,
}

/// Write the index file of the sealed, committed segment `[start, end)`,
/// whose entries are in `partitions`' indexes.
#[derive(Debug, Clone)]
pub struct IndexJob {
    /// The segment's first byte.
    pub start: u64,
    /// One past its last batch.
    pub end: u64,
    /// Every partition of every topic when the job was made.
    pub partitions: Vec<JobPartition>,
}

/// One partition's smaller index, offered to the writer.
pub struct TrimOffer {
    /// Its topic's id.
    pub topic_id: u32,
    /// Its number.
    pub partition: u32,
    /// The index it was copied from: the offer holds only while the
    /// partition still has this one.
    pub source: Arc<PartitionIndex>,
    /// The source's entries copied (from the first one at or after the
    /// last segment's end up to this many): the writer copies the rest.
    pub copied: usize,
    /// The new index.
    pub index: AppendWriter<IndexEntry>,
    /// The new index's floor: the next offset after the entries left out.
    pub floor: u64,
    /// The running maximum of append times of the entries left out.
    pub floor_time_ms: i64,
    /// For each segment of the trim that holds batches of the partition:
    /// its start and the partition's first offset there.
    pub firsts: Vec<(u64, u64)>,
}

/// The indexing stage's answer to the writer: the segments named are
/// indexed on disk, and every entry below the last one's end may leave
/// memory.
pub struct Trim {
    /// `(start, end)` of each segment indexed, oldest first, adjacent.
    pub segments: Vec<(u64, u64)>,
    /// One offer per partition.
    pub offers: Vec<TrimOffer>,
}

/// Each partition's entries in `[start, end)`, as positions in its index.
fn ranges(partitions: &[JobPartition], start: u64, end: u64) -> Vec<(usize, usize)> {
    partitions
        .iter()
        .map(|p| {
            let idx = &*p.handle.index;
            let len = idx.entry_count();
            (
                entries_below_in(idx, len, start),
                entries_below_in(idx, len, end),
            )
        })
        .collect()
}

/// Makes sure the index file of the segment `[start, end)` says what
/// `partitions`' indexes hold: reuses the file when it is sound and does,
/// (re)writes it otherwise; returns it opened.
///
/// # Errors
/// IO errors writing the file; [`JournalError::Corrupt`] when the entries
/// in memory are not a valid index (a bug, never expected).
pub fn write_index(
    dir: &Path,
    start: u64,
    end: u64,
    partitions: &[JobPartition],
) -> Result<SegmentIndex, JournalError> {
    let ranges = ranges(partitions, start, end);
    match SegmentIndex::open(dir, start) {
        Ok(Some(found)) if matches(&found, end, partitions, &ranges) => return Ok(found),
        Ok(Some(_)) => crate::log!(
            "the index file of segment {start} does not match the segment: rewriting it"
        ),
        Ok(None) => {}
        Err(e) => crate::log!("the index file of segment {start}: {e}: rewriting it"),
    }
    let sources: Vec<SectionSource<'_>> = partitions
        .iter()
        .zip(&ranges)
        .map(|(p, &(lo, hi))| SectionSource {
            topic_id: p.topic_id,
            partition: p.partition,
            entries: &*p.handle.index,
            range: lo..hi,
        })
        .collect();
    seg_index::write(dir, start, end, &sources)?;
    SegmentIndex::open(dir, start)?.ok_or_else(|| {
        JournalError::Corrupt(format!(
            "the index file of segment {start} vanished after it was written"
        ))
    })
}

/// The trim for `segments` (adjacent, oldest first, all indexed on disk):
/// per partition a copy of its entries from the last segment's end on,
/// built here rather than on the writer.
pub fn trim(segments: Vec<(u64, u64)>, partitions: &[JobPartition]) -> Trim {
    let Some(&(_, end)) = segments.last() else {
        return Trim {
            segments,
            offers: Vec::new(),
        };
    };
    let offers = partitions
        .iter()
        .map(|p| {
            let source = p.handle.index.clone();
            let len = source.entry_count();
            let hi = entries_below_in(&*source, len, end);
            let firsts = segments
                .iter()
                .filter_map(|&(s, e)| {
                    let lo = entries_below_in(&*source, hi, s);
                    let upto = entries_below_in(&*source, hi, e);
                    (lo < upto)
                        .then(|| source.entry(lo).map(|x| (s, x.base_offset)))
                        .flatten()
                })
                .collect();
            let (mut index, _) = append_log();
            for i in hi..len {
                if let Some(e) = source.entry(i) {
                    index.push(*e);
                }
            }
            let last_out = hi.checked_sub(1).and_then(|i| source.entry(i));
            TrimOffer {
                topic_id: p.topic_id,
                partition: p.partition,
                copied: len,
                index,
                floor: last_out.map_or(p.handle.floor, IndexEntry::next_offset),
                floor_time_ms: last_out.map_or(p.handle.floor_time_ms, |e| e.max_time_ms),
                firsts,
                source,
            }
        })
        .collect();
    Trim { segments, offers }
}

/// True when `found` is a sound index file of a segment ending at `end`
/// whose sections are exactly the partitions' entries `ranges`.
fn matches(
    found: &SegmentIndex,
    end: u64,
    partitions: &[JobPartition],
    ranges: &[(usize, usize)],
) -> bool {
    if found.segment_end != end || found.verify().is_err() {
        return false;
    }
    let mut expected = 0usize;
    for (p, &(lo, hi)) in partitions.iter().zip(ranges) {
        if lo == hi {
            continue;
        }
        expected += 1;
        let idx = &*p.handle.index;
        let (Some(first), Some(last)) = (idx.entry(lo), idx.entry(hi - 1)) else {
            return false;
        };
        let Some(s) = found.section(p.topic_id, p.partition) else {
            return false;
        };
        let bytes: u64 = (lo..hi)
            .filter_map(|i| idx.entry(i))
            .map(|e| u64::from(e.len))
            .sum();
        if s.entry_count as usize != hi - lo
            || s.first_offset != first.base_offset
            || s.next_offset != last.next_offset()
            || s.first_position != first.position
            || s.max_time_ms != last.max_time_ms
            || s.bytes != bytes
        {
            return false;
        }
    }
    found.sections().len() == expected
}
