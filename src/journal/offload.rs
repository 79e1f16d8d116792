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
use super::catalog::{IndexHandle, OnDisk};
use super::error::JournalError;
use super::index::{entries_below_in, IndexEntries, IndexEntry, PartitionIndex};
use super::scan::scan;
use super::seg_index::{self, SectionSource, SegmentIndex};
use super::segment::{segment_file_name, Segment};
use crate::wire::batch::{BatchKind, BatchView};
use std::collections::{BTreeMap, HashMap};
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

/// Write the index files of the sealed, committed segments `segments`
/// (`(start, end)`, adjacent, oldest first), whose entries are in
/// `partitions`' indexes, and answer with one [`Trim`]. The writer hands
/// out one job at a time and the next one only after the trim: a trim
/// built from these handles holds only while the writer still has them.
#[derive(Debug, Clone)]
pub struct IndexJob {
    /// The segments, oldest first; may be empty for a job that only trims.
    pub segments: Vec<(u64, u64)>,
    /// Entries below this position leave memory too: they belong to
    /// segments indexed before or deleted by retention (0: nothing more
    /// than the segments').
    pub below: u64,
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
    /// Each segment of the trim that holds batches of the partition, as
    /// the partition's part of it.
    pub firsts: Vec<OnDisk>,
}

/// The indexing stage's answer to the writer: the segments named are
/// indexed on disk, and every entry below the last one's end may leave
/// memory.
pub struct Trim {
    /// `(start, end)` of each segment indexed, oldest first, adjacent.
    pub segments: Vec<(u64, u64)>,
    /// Every entry below this position leaves memory: the last segment's
    /// end, or the job's `below` when that is higher.
    pub below: u64,
    /// One offer per partition that has entries to drop.
    pub offers: Vec<TrimOffer>,
    /// Indexing stopped for good: hand out no more jobs.
    pub stopped: bool,
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
    opened_after_writing(dir, start)
}

/// The index file of the segment at `start`, just written from entries
/// known good (the writer's, or a segment's checked batches): it needs no
/// check.
fn opened_after_writing(dir: &Path, start: u64) -> Result<SegmentIndex, JournalError> {
    let index = SegmentIndex::open(dir, start)?.ok_or_else(|| {
        JournalError::Corrupt(format!(
            "the index file of segment {start} vanished after it was written"
        ))
    })?;
    index.mark_verified();
    Ok(index)
}

/// Rebuilds the index file of the sealed segment `[start, end)` from the
/// segment's own batches (every one checked in full), for a file found
/// damaged. Each partition's running maximum of append times resumes from
/// `seeds` (the maximum its previous segment's section ended with; absent:
/// none), as the writer's index would have it.
///
/// # Errors
/// [`JournalError::Corrupt`] when the segment's batches do not fill
/// `[start, end)` (the segment itself is damaged) or do not form a valid
/// index; IO errors.
pub fn rebuild_index(
    dir: &Path,
    start: u64,
    end: u64,
    seeds: &HashMap<(u32, u32), i64>,
) -> Result<SegmentIndex, JournalError> {
    let seg = Segment::open(&dir.join(segment_file_name(start)), start)?;
    let len = usize::try_from(end - start)
        .ok()
        .filter(|&len| len <= seg.bytes().len())
        .ok_or_else(|| {
            JournalError::Corrupt(format!(
                "segment {start} holds fewer bytes than [{start}, {end})"
            ))
        })?;
    let mut sections: BTreeMap<(u32, u32), Vec<IndexEntry>> = BTreeMap::new();
    let result = scan(&seg.bytes()[..len], start, 0, |position, batch| {
        let view = BatchView(batch);
        if view.kind() != Some(BatchKind::Data) {
            return Ok(());
        }
        let key = (view.topic_id(), view.partition());
        let entries = sections.entry(key).or_default();
        let before = entries.last().map_or_else(
            || seeds.get(&key).copied().unwrap_or(i64::MIN),
            |e| e.max_time_ms,
        );
        entries.push(IndexEntry {
            base_offset: view.base_offset(),
            position,
            len: batch.len() as u32,
            count: view.record_count(),
            max_time_ms: before.max(view.append_time_ms()),
        });
        Ok(())
    });
    if result.valid_len != len {
        return Err(JournalError::Corrupt(format!(
            "segment {start} cannot be read to its end {end}: {:?}",
            result.stop
        )));
    }
    let sources: Vec<SectionSource<'_>> = sections
        .iter()
        .map(|(&(topic_id, partition), entries)| SectionSource {
            topic_id,
            partition,
            entries,
            range: 0..entries.len(),
        })
        .collect();
    seg_index::write(dir, start, end, &sources)?;
    opened_after_writing(dir, start)
}

/// The trim for `segments` (adjacent, oldest first, all indexed on disk)
/// and whatever lies below `below` (indexed or deleted before): per
/// partition a copy of its entries from there on, built here rather than
/// on the writer.
pub fn trim(segments: Vec<(u64, u64)>, below: u64, partitions: &[JobPartition]) -> Trim {
    let end = segments.last().map_or(below, |&(_, end)| end.max(below));
    if end == 0 {
        return Trim {
            segments,
            below: end,
            offers: Vec::new(),
            stopped: false,
        };
    }
    let offers = partitions
        .iter()
        .filter_map(|p| {
            let source = p.handle.index.clone();
            let len = source.entry_count();
            let hi = entries_below_in(&*source, len, end);
            if hi == 0 {
                // Nothing of it to drop, and no batch in the segments.
                return None;
            }
            let firsts = segments
                .iter()
                .filter_map(|&(s, e)| {
                    let lo = entries_below_in(&*source, hi, s);
                    let upto = entries_below_in(&*source, hi, e);
                    let first = source.entry(lo).filter(|_| lo < upto)?;
                    let last = source.entry(upto - 1)?;
                    Some(OnDisk {
                        start: s,
                        first_offset: first.base_offset,
                        next_offset: last.next_offset(),
                        bytes: (lo..upto)
                            .filter_map(|i| source.entry(i))
                            .map(|x| u64::from(x.len))
                            .sum(),
                        max_time_ms: last.max_time_ms,
                    })
                })
                .collect();
            let (mut index, _) = append_log();
            for i in hi..len {
                if let Some(e) = source.entry(i) {
                    index.push(*e);
                }
            }
            let last_out = hi.checked_sub(1).and_then(|i| source.entry(i));
            Some(TrimOffer {
                topic_id: p.topic_id,
                partition: p.partition,
                copied: len,
                index,
                floor: last_out.map_or(p.handle.floor, IndexEntry::next_offset),
                floor_time_ms: last_out.map_or(p.handle.floor_time_ms, |e| e.max_time_ms),
                firsts,
                source,
            })
        })
        .collect();
    Trim {
        segments,
        below: end,
        offers,
        stopped: false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::log::{Journal, Retention};
    use crate::wire::batch::BatchBuilder;

    /// What the indexing stage does with `job`: every index file, then the
    /// trim.
    fn carry(dir: &Path, job: &IndexJob) -> Trim {
        for &(start, end) in &job.segments {
            write_index(dir, start, end, &job.partitions).unwrap();
        }
        trim(job.segments.clone(), job.below, &job.partitions)
    }

    fn append(j: &mut Journal, slot: usize, partition: u32, now_ms: i64) {
        let mut b = BatchBuilder::new();
        b.push(0, b"", &[7u8; 100], &[]);
        let batch = b.finish(0, 0).to_vec();
        j.append_data(slot, partition, &batch, 1, 1, now_ms)
            .unwrap();
    }

    type Shape = (Vec<u64>, u64, i64);

    /// Each partition's (log start at every sealed segment's start, end
    /// offset, running maximum time at its end), as the writer sees them.
    fn shape(j: &Journal) -> Vec<Shape> {
        let starts: Vec<u64> = j.sealed().iter().map(|s| s.start).collect();
        j.catalog()
            .topics()
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| {
                let last = p.index.len().checked_sub(1).and_then(|i| p.index.get(i));
                (
                    starts.iter().map(|&s| p.log_start_at(s)).collect(),
                    p.next_offset,
                    last.map_or(p.floor_time_ms, |e| e.max_time_ms),
                )
            })
            .collect()
    }

    /// Fills a journal in `dir` over four sealed segments, trimming them
    /// (while the writer appends) when `trimmed`, then appends more and
    /// applies size retention; returns the shape before retention and the
    /// start state's log starts.
    fn run(dir: &Path, trimmed: bool) -> (Vec<Shape>, Vec<Vec<u64>>) {
        let mut j = Journal::open(dir, 4096, 4096).unwrap();
        let (_, a) = j.create_topic("a", 3, 1, 1_000).unwrap();
        let (_, b) = j.create_topic("b", 1, 1, 1_000).unwrap();
        // Partition 2 of `a` gets nothing until the end; `b` only in the
        // first segment.
        let mut t = 0;
        while j.sealed().len() < 4 {
            t += 1;
            append(&mut j, a, (t % 2) as u32, 1_000 + t);
            if j.sealed().is_empty() {
                append(&mut j, b, 0, 500);
            }
        }
        j.write_out().unwrap();
        let job = j.index_job(j.end()).unwrap();
        assert_eq!(job.segments.len(), 4, "one job for every sealed segment");
        assert!(
            j.index_job(j.end()).is_none(),
            "each segment is handed out once"
        );
        let trim = carry(dir, &job);
        // The writer goes on meanwhile: the trim copies what it missed.
        append(&mut j, a, 0, 9_000);
        append(&mut j, a, 2, 8_000);
        j.write_out().unwrap();
        let active = j.segment_files().last().unwrap().0;
        if trimmed {
            assert_eq!(j.trim(trim), vec![a, b]);
            for t in j.catalog().topics() {
                for p in &t.partitions {
                    let kept: Vec<_> = (0..p.index.len())
                        .map(|i| *p.index.get(i).unwrap())
                        .collect();
                    assert!(
                        kept.iter().all(|e| e.position >= active),
                        "only the active segment's entries stay in memory"
                    );
                    assert_eq!(
                        p.floor,
                        kept.first().map_or(p.next_offset, |e| e.base_offset)
                    );
                }
            }
            // The journal is never cut below what left memory.
            assert!(j.truncate(active - 1, j.end()).is_err());
        }
        // More appends continue the offsets and the running maximum.
        append(&mut j, a, 1, 100);
        let p = &j.catalog().topic(a).partitions[1];
        let last = p.index.get(p.index.len() - 1).unwrap();
        assert_eq!(last.next_offset(), p.next_offset);
        assert!(last.max_time_ms > 1_000, "the running maximum resumes");
        let before = shape(&j);
        let r = j
            .retain(Retention { bytes: 1, ms: None }, j.end(), 10_000)
            .expect("sealed segments go");
        assert_eq!(r.state.position, active);
        let starts = r
            .state
            .topics
            .iter()
            .map(|t| t.log_starts.clone())
            .collect();
        (before, starts)
    }

    #[test]
    fn a_trim_moves_sealed_entries_to_files_and_keeps_every_answer() {
        let (plain, trimmed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let want = run(plain.path(), false);
        assert_eq!(
            run(trimmed.path(), true),
            want,
            "the same answers with and without the trim"
        );
        assert_eq!(want.1[1], vec![want.0[3].1], "b's batches are all gone");
    }

    #[test]
    fn an_offer_for_an_index_replaced_meanwhile_keeps_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 4096, 4096).unwrap();
        let (_, a) = j.create_topic("a", 1, 1, 1_000).unwrap();
        while j.sealed().len() < 2 {
            append(&mut j, a, 0, 1_000);
        }
        j.write_out().unwrap();
        // Two jobs from the same handles (the writer hands out one at a
        // time, but a cut can replace an index under a job just the same).
        let s0_end = j.sealed()[0].end;
        let job0 = j.index_job(s0_end).unwrap();
        let job1 = j.index_job(j.end()).unwrap();
        let first = carry(dir.path(), &job0);
        let second = carry(dir.path(), &job1);
        assert_eq!(j.trim(first), vec![a]);
        let len = j.catalog().topic(a).partitions[0].index.len();
        // Built from the index the first trim replaced: not taken, but the
        // segment is recorded as on disk.
        assert!(j.trim(second).is_empty());
        let p = &j.catalog().topic(a).partitions[0];
        assert_eq!(p.index.len(), len);
        assert_eq!(p.on_disk.len(), 2);
        assert_eq!(
            p.log_start_at(job1.segments[0].0),
            p.on_disk[1].first_offset
        );
    }

    /// Review finding: after a trim leaves a partition's in-memory index empty, the
    /// next batch's running maximum of append times must resume from the
    /// floor's (the doc and `IndexEntry::max_time_ms` say "every earlier
    /// batch of the partition"), not restart from the batch's own time.
    #[test]
    fn the_running_maximum_of_times_resumes_from_the_floor_after_a_trim() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 4096, 4096).unwrap();
        let (_, a) = j.create_topic("a", 2, 1, 1_000).unwrap();
        // p1: one batch, stamped 5000, in the first segment only.
        append(&mut j, a, 1, 5_000);
        while j.sealed().is_empty() {
            append(&mut j, a, 0, 5_000);
        }
        j.write_out().unwrap();
        let job = j.index_job(j.end()).unwrap();
        assert_eq!(job.segments.len(), 1);
        j.trim(carry(dir.path(), &job));
        let p = &j.catalog().topic(a).partitions[1];
        assert_eq!(p.index.len(), 0);
        assert_eq!(p.floor_time_ms, 5_000);
        // The broker clock stepped back.
        append(&mut j, a, 1, 1_000);
        let p = &j.catalog().topic(a).partitions[1];
        assert_eq!(
            p.index.get(0).unwrap().max_time_ms,
            5_000,
            "running max lost"
        );
    }

    /// Review finding: with a size budget below one segment, retention deletes
    /// every sealed segment in the same writer look that would index it
    /// (`Writer::retain`: the decision first, then `index_job`, which
    /// starts at the new journal start). No segment is ever indexed, so
    /// no trim ever comes and the in-memory index keeps every batch ever
    /// written, all of them below the journal start.
    #[test]
    fn entries_of_segments_deleted_before_indexing_leave_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 4096, 4096).unwrap();
        let (_, a) = j.create_topic("a", 1, 1, 1_000).unwrap();
        for _ in 0..20 {
            let sealed = j.sealed().len();
            while j.sealed().len() == sealed {
                append(&mut j, a, 0, 1_000);
            }
            j.write_out().unwrap();
            // One writer look (flushed = committed = end, standalone).
            let _ = j.retain(Retention { bytes: 1, ms: None }, j.end(), 1_000);
            if let Some(job) = j.index_job(j.end()) {
                j.trim(carry(dir.path(), &job));
            }
        }
        let p = &j.catalog().topic(a).partitions[0];
        let below = entries_below_in(&p.index, p.index.len(), j.start());
        assert_eq!(
            below,
            0,
            "{below} in-memory index entries lie below the journal start {} and never leave",
            j.start()
        );
    }

    /// Review finding: a cut (follower truncation of its uncommitted tail) while an
    /// index job is out makes the job's offer stale for every partition the
    /// cut touched: the trim is refused for it, the writer goes Idle, and
    /// `index_job` has nothing new to hand out until another segment is
    /// sealed and committed. The job's entries (after a restart: the whole
    /// backlog) stayed in memory meanwhile, though their files were
    /// written; now the next job trims again.
    #[test]
    fn a_cut_while_a_job_is_out_does_not_keep_its_entries_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 4096, 4096).unwrap();
        let (_, a) = j.create_topic("a", 1, 1, 1_000).unwrap();
        while j.sealed().len() < 3 {
            append(&mut j, a, 0, 1_000);
        }
        j.write_out().unwrap();
        let job = j.index_job(j.end()).unwrap();
        let (_, job_end) = *job.segments.last().unwrap();
        // An uncommitted tail in the active segment, cut back.
        let at = j.end();
        append(&mut j, a, 0, 1_000);
        j.write_out().unwrap();
        j.truncate(at, at).unwrap();
        // The stage writes the files and answers.
        j.trim(carry(dir.path(), &job));
        // The refused offer makes the next job one that only trims.
        let again = j.index_job(j.end()).expect("a job that trims again");
        assert!(again.segments.is_empty());
        assert_eq!(again.below, job_end);
        assert!(!j.trim(carry(dir.path(), &again)).is_empty());
        assert!(j.index_job(j.end()).is_none(), "nothing left to do");
        let p = &j.catalog().topic(a).partitions[0];
        let below = entries_below_in(&p.index, p.index.len(), job_end);
        assert_eq!(
            below, 0,
            "{below} entries of segments indexed on disk stay in memory until the next seal"
        );
    }
}
