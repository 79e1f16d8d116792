//! Recovery from a catalog snapshot: the restart whose cost does not grow
//! with the data held.
//!
//! The file `snapshot` holds the catalog at a durable position S
//! ([`super::snapshot`]). Recovery then needs the journal only for what
//! the snapshot does not say:
//!
//! 1. the sealed segments below S whose index files open soundly (header
//!    and directory checksums, the segment end the next segment's start):
//!    each partition's first and next offsets there come from the
//!    directory, and their entries stay on disk; nothing of the segment is
//!    read;
//! 2. from the first segment without such a file up to S, every batch:
//!    only its partition's in-memory index entry (the snapshot already
//!    holds the producer states and topics those batches made);
//! 3. from S on, every batch as the full walk applies it (producer
//!    states, topics).
//!
//! Every batch read is checked in full. Part 2 is the unindexed tail of
//! sealed segments and the active segment, part 3 about `checkpoint_bytes`
//! at most: neither grows with the journal. Between parts 2 and 3 every
//! partition must end at the snapshot's next offset, and the index files
//! must continue one another; anything that does not fit, and any damage
//! but a torn tail, sends recovery back to the full walk (the error says
//! why), which knows how to report and repair it.

use super::catalog::{Catalog, OnDisk};
use super::checkpoint::Checkpoint;
use super::log::{apply_batch, Scanned};
use super::producers::ProducerLimits;
use super::scan::{scan, ScanStop};
use super::seg_index::SegmentIndex;
use super::segment::{list_segments, Segment};
use super::snapshot::CatalogSnapshot;
use super::start::StartState;
use crate::consensus::Entry;
use crate::wire::batch::{BatchKind, BatchView};
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

/// What recovery from a snapshot found: as a full walk's result (with the
/// consensus entries of the batches from the snapshot on, when asked),
/// plus the index files it took on trust (for the reader, and for the
/// background check of their entries) and where in-memory index entries
/// begin.
pub(super) struct Resumed {
    pub pass: Scanned,
    /// The index files of the segments below `indexed_below`, oldest first.
    pub indexes: Vec<Arc<SegmentIndex>>,
    /// Where the segments recovery read begin.
    pub indexed_below: u64,
    /// Batches held in the index files taken.
    pub indexed_batches: u64,
}

/// Recovers from `cp`'s snapshot, or says why it cannot (the caller then
/// reads the whole journal). Changes nothing on disk.
///
/// # Errors
/// Why the snapshot cannot be used, in words for the log.
pub(super) fn resume(
    dir: &Path,
    cp: &Checkpoint,
    snap: &CatalogSnapshot,
    start: Option<&StartState>,
    limits: ProducerLimits,
    keep_entries: bool,
) -> Result<Resumed, String> {
    let s = snap.position;
    let base = start.map_or(0, |st| st.position);
    if s < base {
        return Err(format!(
            "the snapshot at {s} lies below the journal's start {base}"
        ));
    }
    let listed = list_segments(dir).map_err(|e| e.to_string())?;
    // No segment at all: a journal that installed a snapshot from its
    // group's leader and holds nothing after it yet.
    let installed = listed.is_empty() && s == base && base > 0;
    if listed.first().map(|l| l.0) != Some(base) && !installed {
        return Err(format!("the oldest segment does not start at {base}"));
    }
    let mut catalog = Catalog::restore(snap, limits)?;
    // Ids are never handed out twice: the checkpoint and the start state
    // may know of ids given to topics whose records a crash lost.
    catalog.raise_next_topic_id(cp.next_topic_id.max(start.map_or(0, |st| st.next_topic_id)));
    if let Some(st) = start {
        for t in &st.topics {
            // A topic created at or after S: the walk from S meets its
            // record, and nothing of it lies below the journal's start.
            let Some(slot) = catalog.lookup_id(t.meta.id) else {
                continue;
            };
            let topic = catalog.topic_mut(slot);
            if topic.partitions.len() != t.log_starts.len() {
                return Err(format!("topic {} changed partitions", t.meta.name));
            }
            // The start state may be newer than the snapshot: deletions
            // add up.
            topic.continue_from(t);
        }
    }

    // 1. The index files of the sealed segments below S, while they open.
    let mut files = Vec::with_capacity(listed.len());
    let mut newest = Vec::with_capacity(listed.len());
    // The last batch's term of each file, 0 for one taken from its index.
    let mut end_terms = Vec::with_capacity(listed.len());
    let mut indexes = Vec::new();
    let mut indexed_batches = 0u64;
    let mut i = 0;
    while let (Some((seg_start, path)), Some((seg_end, _))) = (listed.get(i), listed.get(i + 1)) {
        if *seg_end > s {
            break;
        }
        let index = match SegmentIndex::open(dir, *seg_start) {
            Ok(Some(index)) => index,
            Ok(None) => break,
            Err(e) => {
                crate::log!(
                    "the index file of segment {seg_start}: {e}: reading the segment instead"
                );
                break;
            }
        };
        if index.segment_end != *seg_end {
            crate::log!(
                "the index file of segment {seg_start} ends at {}, the segment at {seg_end}: \
                 reading the segment instead",
                index.segment_end
            );
            break;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("stat {}: {e}", path.display()))?
            .len();
        if len < seg_end - seg_start {
            return Err(format!(
                "segment {} holds {len} bytes, less than its data",
                path.display()
            ));
        }
        let mut seg_newest = i64::MIN;
        for sec in index.sections() {
            let p = catalog
                .lookup_id(sec.topic_id)
                .and_then(|slot| {
                    catalog
                        .topic_mut(slot)
                        .partitions
                        .get_mut(sec.partition as usize)
                })
                .ok_or_else(|| {
                    format!(
                        "the index file of segment {seg_start} names topic {} partition {}, \
                         which the snapshot does not hold",
                        sec.topic_id, sec.partition
                    )
                })?;
            if sec.first_offset != p.next_offset {
                return Err(format!(
                    "the index file of segment {seg_start}: topic {} partition {} starts at \
                     offset {} where {} was expected",
                    sec.topic_id, sec.partition, sec.first_offset, p.next_offset
                ));
            }
            p.on_disk.push_back(OnDisk {
                start: *seg_start,
                first_offset: sec.first_offset,
                next_offset: sec.next_offset,
                bytes: sec.bytes,
                max_time_ms: sec.max_time_ms,
            });
            p.floor = sec.next_offset;
            p.next_offset = sec.next_offset;
            p.floor_time_ms = sec.max_time_ms;
            seg_newest = seg_newest.max(sec.max_time_ms);
            indexed_batches += u64::from(sec.entry_count);
        }
        files.push((*seg_start, Arc::new(file)));
        newest.push(seg_newest);
        end_terms.push(0);
        indexes.push(Arc::new(index));
        i += 1;
    }
    let indexed_below = listed.get(i).map_or(base, |l| l.0);
    catalog.set_trimmed_below(indexed_below);

    // 2 and 3. The rest, batch by batch: entries only below S, everything
    // from S on.
    let mut end = indexed_below;
    let mut active = None;
    let mut damage = None;
    let mut entries = Vec::new();
    let mut checked = s == indexed_below;
    if checked {
        same_next_offsets(&catalog, snap)?;
    }
    for (k, (seg_start, path)) in listed.iter().enumerate().skip(i) {
        let is_last = k + 1 == listed.len();
        if *seg_start != end {
            return Err(format!(
                "the data ends at {end} but the next segment starts at {seg_start}"
            ));
        }
        let seg = Segment::open(path, *seg_start).map_err(|e| e.to_string())?;
        let mut seg_newest = i64::MIN;
        let mut seg_term = 0;
        // Every batch read is checked in full (its records' checksum too):
        // what is read is bounded, and damage is then found where it is.
        let result = scan(seg.bytes(), *seg_start, indexed_below, |pos, batch| {
            let len = batch.len() as u64;
            if pos < s {
                if pos + len > s {
                    return Err(format!(
                        "a batch at {pos} crosses the snapshot's position {s}"
                    ));
                }
                index_only(&mut catalog, pos, batch)?;
            } else {
                if !checked {
                    same_next_offsets(&catalog, snap)?;
                    checked = true;
                }
                apply_batch(&mut catalog, pos, batch)?;
                if keep_entries {
                    entries.push(Entry {
                        start: pos,
                        end: pos + len,
                        term: BatchView(batch).term(),
                    });
                }
            }
            if BatchView(batch).kind() == Some(BatchKind::Data) {
                seg_newest = seg_newest.max(BatchView(batch).append_time_ms());
            }
            seg_term = BatchView(batch).term();
            Ok(())
        });
        end = seg_start + result.valid_len as u64;
        files.push((*seg_start, seg.file().clone()));
        newest.push(seg_newest);
        end_terms.push(seg_term);
        active = Some(seg);
        match result.stop {
            // The next segment must start where this one's data ends
            // (checked as it is reached).
            ScanStop::End => {}
            ScanStop::Torn(why) | ScanStop::Refused(why) => {
                // Only a torn tail is this path's: above the snapshot and
                // the checkpoint, in the last segment.
                if !(is_last && end >= s && end >= cp.position) {
                    return Err(format!("damage at {end}: {why}"));
                }
                damage = Some((end, why, k));
            }
        }
        if !is_last && damage.is_some() {
            break;
        }
    }
    if end < s || end < cp.position {
        return Err(format!(
            "the data ends at {end}, below the snapshot ({s}) or the checkpoint ({})",
            cp.position
        ));
    }
    if !checked {
        same_next_offsets(&catalog, snap)?;
    }
    if let Some(t) = start
        .iter()
        .flat_map(|st| &st.topics)
        .find(|t| catalog.lookup_id(t.meta.id).is_none())
    {
        return Err(format!(
            "topic {} of the start state is neither in the snapshot nor created after it",
            t.meta.name
        ));
    }
    Ok(Resumed {
        pass: Scanned {
            listed,
            catalog,
            files,
            active,
            end,
            entries,
            damage,
            newest,
            end_terms,
        },
        indexes,
        indexed_below,
        indexed_batches,
    })
}

/// Takes a batch below the snapshot's position into its partition's index
/// only: the snapshot holds what it did to producer states and topics.
fn index_only(catalog: &mut Catalog, pos: u64, batch: &[u8]) -> Result<(), String> {
    let view = BatchView(batch);
    match view.kind() {
        Some(BatchKind::Data) => {
            let p = catalog
                .lookup_id(view.topic_id())
                .and_then(|slot| {
                    catalog
                        .topic_mut(slot)
                        .partitions
                        .get_mut(view.partition() as usize)
                })
                .ok_or_else(|| {
                    format!(
                        "batch at {pos} for topic {} partition {}, which the snapshot does not \
                         hold",
                        view.topic_id(),
                        view.partition()
                    )
                })?;
            if view.base_offset() != p.next_offset {
                return Err(format!(
                    "batch at {pos}: base offset {} where {} was expected",
                    view.base_offset(),
                    p.next_offset
                ));
            }
            p.land(pos, batch);
            Ok(())
        }
        Some(BatchKind::Control) => Ok(()),
        None => Err(format!("batch at {pos}: unknown batch kind")),
    }
}

/// Checks that every partition ends where the snapshot says it did.
fn same_next_offsets(catalog: &Catalog, snap: &CatalogSnapshot) -> Result<(), String> {
    for (t, st) in catalog.topics().iter().zip(&snap.topics) {
        for (n, (p, &next)) in t.partitions.iter().zip(&st.next_offsets).enumerate() {
            if p.next_offset != next {
                return Err(format!(
                    "topic {} partition {n} ends at offset {} at the snapshot's position, \
                     which says {next}",
                    t.meta.name, p.next_offset
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint;
    use super::super::log::{Journal, Recovery};
    use super::super::offload;
    use super::super::seg_index::INDEX_HEADER_LEN;
    use super::super::snapshot;
    use super::*;
    use crate::journal::index::IndexEntry;
    use crate::journal::producers::SeqCheck;
    use crate::wire::batch::{BatchBuilder, ProducerStamp};

    const SEGMENT: usize = 4096;

    fn recovery() -> Recovery {
        Recovery {
            entries: false,
            ..Recovery::default()
        }
    }

    fn open(dir: &Path) -> Journal {
        Journal::open_with(dir, SEGMENT, 4096, recovery()).unwrap()
    }

    /// [`open`] by the full walk, never from the snapshot.
    fn open_walking(dir: &Path) -> Journal {
        let walk = Recovery {
            from_snapshot: false,
            ..recovery()
        };
        Journal::open_with(dir, SEGMENT, 4096, walk).unwrap()
    }

    /// A batch of producer `id` with sequence `seq` (id 0: none).
    fn batch(id: u64, seq: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(0, b"", &[seq as u8; 90], &[]);
        b.finish_with(ProducerStamp { id, epoch: 0, seq }).to_vec()
    }

    /// Appends `n` batches round the partitions of both topics (producers
    /// 1 and 2, and batches without one), at times `t0..`.
    fn fill(j: &mut Journal, seqs: &mut [u64; 4], n: usize, t0: i64) {
        for k in 0..n {
            let (slot, partition) = [(0, 0), (0, 1), (0, 2), (1, 0)][k % 4];
            let id = (k % 3) as u64;
            let seq = if id == 0 {
                0
            } else {
                let s = &mut seqs[k % 4];
                *s += 1;
                *s - 1
            };
            let b = if id == 0 { batch(0, 0) } else { batch(id, seq) };
            j.append_data(slot, partition, &b, 1, 1, t0 + k as i64)
                .unwrap();
        }
    }

    /// A journal over six sealed segments and part of a seventh, every
    /// sealed one indexed on disk, a checkpoint at its end with a snapshot
    /// there, and then `after` more batches the checkpoint does not know.
    fn journal(dir: &Path, after: usize) {
        let mut j = open(dir);
        j.create_topic("a", 3, 1, 1_000).unwrap();
        j.create_topic("b", 1, 1, 1_000).unwrap();
        let mut seqs = [0u64; 4];
        while j.sealed().len() < 6 {
            fill(&mut j, &mut seqs, 4, 2_000);
        }
        fill(&mut j, &mut seqs, 5, 3_000);
        j.write_out().unwrap();
        let job = j.index_job(j.end()).unwrap();
        for &(start, end) in &job.segments {
            offload::write_index(dir, start, end, &job.partitions).unwrap();
        }
        checkpoint::write(
            dir,
            &checkpoint::Checkpoint {
                position: j.end(),
                next_topic_id: j.catalog().next_topic_id(),
                topics: j.checkpoint_topics(),
            },
        )
        .unwrap();
        snapshot::write(dir, &j.catalog().snapshot(j.end())).unwrap();
        // Indexed, but not yet told: `j.trim` is the writer's business.
        fill(&mut j, &mut seqs, after, 4_000);
        j.write_out().unwrap();
    }

    /// Every batch of every partition as (offset, position, len): from the
    /// index files of its on-disk segments, then from memory; its next
    /// offset; and what the producer states answer to a few probes.
    type Seen = (Vec<Vec<(u64, u64, u32)>>, Vec<u64>, Vec<SeqCheck>);

    fn seen(j: &Journal, dir: &Path) -> Seen {
        let mut batches = Vec::new();
        let mut nexts = Vec::new();
        for t in j.catalog().topics() {
            for (n, p) in t.partitions.iter().enumerate() {
                let mut all = Vec::new();
                for d in &p.on_disk {
                    let ix = SegmentIndex::open(dir, d.start).unwrap().unwrap();
                    let s = ix.section(t.meta.id, n as u32).unwrap();
                    let mut out: Vec<IndexEntry> = Vec::new();
                    ix.read_entries(s, 0, usize::MAX, &mut out).unwrap();
                    all.extend(out.iter().map(|e| (e.base_offset, e.position, e.len)));
                }
                for i in 0..p.index.len() {
                    let e = p.index.get(i).unwrap();
                    all.push((e.base_offset, e.position, e.len));
                }
                batches.push(all);
                nexts.push(p.next_offset);
            }
        }
        let mut answers = Vec::new();
        for (slot, partition) in [(0, 0), (0, 1), (0, 2), (1, 0)] {
            for id in 1..=2 {
                for seq in 0..40 {
                    answers.push(j.check_seq(slot, partition, &batch(id, seq), 5_000));
                }
            }
        }
        (batches, nexts, answers)
    }

    /// What a recovery that reads every batch makes of a copy of `dir`.
    fn read_whole(dir: &Path) -> (tempfile::TempDir, Seen) {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(".seg")) {
                std::fs::copy(entry.path(), copy.path().join(name)).unwrap();
            }
        }
        let j = open(copy.path());
        assert_eq!(j.report().snapshot_position, None);
        let seen = seen(&j, copy.path());
        (copy, seen)
    }

    #[test]
    fn a_restart_from_a_snapshot_reads_only_the_active_segment_and_sees_the_same() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 0);
        let (_copy, whole) = read_whole(dir.path());
        let mut j = open(dir.path());
        let active = j.segment_files().last().unwrap().0;
        assert_eq!(j.report().snapshot_position, Some(j.end()));
        assert_eq!(j.report().read_from, active, "sealed segments are not read");
        assert_eq!(j.take_indexes().len(), 6);
        assert_eq!(seen(&j, dir.path()), whole);
        assert!(
            whole.1.iter().all(|&n| n > 10),
            "the partitions hold batches"
        );
    }

    #[test]
    fn batches_after_the_snapshot_are_read_in_full() {
        let dir = tempfile::tempdir().unwrap();
        // Enough to seal more segments, which have no index file yet.
        journal(dir.path(), 80);
        let (_copy, whole) = read_whole(dir.path());
        let j = open(dir.path());
        let s = j.report().snapshot_position.expect("from the snapshot");
        assert!(s < j.end());
        assert!(j.report().read_from <= s);
        assert!(j.sealed().len() > 7);
        assert_eq!(seen(&j, dir.path()), whole);
    }

    #[test]
    fn a_damaged_index_file_is_read_around_and_later_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 10);
        let (_copy, whole) = read_whole(dir.path());
        let third = open(dir.path()).sealed()[2].start;
        let path = dir
            .path()
            .join(super::super::seg_index::index_file_name(third));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[INDEX_HEADER_LEN + 20] ^= 1; // a directory record
        std::fs::write(&path, bytes).unwrap();
        let j = open(dir.path());
        assert!(j.report().snapshot_position.is_some());
        assert_eq!(j.report().read_from, third, "read from the damaged one on");
        assert_eq!(seen(&j, dir.path()), whole);
    }

    #[test]
    fn a_snapshot_that_does_not_fit_the_journal_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 3);
        let (_copy, whole) = read_whole(dir.path());
        let mut snap = snapshot::read(dir.path()).unwrap().unwrap();
        snap.topics[0].next_offsets[1] += 1;
        snapshot::write(dir.path(), &snap).unwrap();
        let j = open(dir.path());
        assert_eq!(j.report().snapshot_position, None, "read the whole journal");
        assert_eq!(seen(&j, dir.path()), whole);
    }

    #[test]
    fn a_torn_tail_after_the_snapshot_is_cut_without_reading_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 3);
        let (end, active) = {
            let j = open(dir.path());
            (j.end(), j.segment_files().last().unwrap().0)
        };
        // Tear the last batch: garbage in its records.
        let seg = dir
            .path()
            .join(crate::journal::segment::segment_file_name(active));
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 20], end - active - 30).unwrap();
        let j = open(dir.path());
        assert!(j.report().snapshot_position.is_some());
        let (at, _) = j.report().truncated.clone().expect("cut");
        assert!(at < end);
        assert_eq!(j.end(), at);
    }

    /// Review finding: recovery from the snapshot takes the next topic id
    /// from the snapshot alone and ignores the checkpoint's (and the start
    /// state's), which the full walk honours. The flusher raises its next
    /// topic id as soon as the writer creates a topic (`FlusherEvent::
    /// Topic`), so a checkpoint at F below a new topic's record already
    /// counts its id; when a crash then loses that record, the full walk
    /// still never hands the id out again ("Topic ids are never reused",
    /// docs/storage.md), while a start from the snapshot does.
    #[test]
    fn a_start_from_the_snapshot_never_hands_out_a_topic_id_again() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 0);
        let (cp_at, active, end, next) = {
            let mut j = open(dir.path());
            let cp_at = j.end();
            j.create_topic("c", 1, 1, 5_000).unwrap();
            j.write_out().unwrap();
            let active = j.segment_files().last().unwrap().0;
            (cp_at, active, j.end(), j.catalog().next_topic_id())
        };
        assert_eq!(next, 3, "c took id 2");
        // The flusher's next checkpoint, at F below c's record.
        let mut cp = checkpoint::read(dir.path()).unwrap().unwrap();
        assert_eq!(cp.position, cp_at);
        cp.next_topic_id = next;
        checkpoint::write(dir.path(), &cp).unwrap();
        // The crash: c's record never reached the disk.
        let seg = dir
            .path()
            .join(crate::journal::segment::segment_file_name(active));
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let zeros = vec![0u8; (end - cp_at) as usize];
        std::os::unix::fs::FileExt::write_all_at(&f, &zeros, cp_at - active).unwrap();
        drop(f);

        let full = open_walking(dir.path());
        assert_eq!(full.end(), cp_at);
        let full_next = full.catalog().next_topic_id();
        drop(full);
        assert_eq!(full_next, 3, "the full walk keeps the checkpoint's");
        let j = open(dir.path());
        assert!(j.report().snapshot_position.is_some(), "from the snapshot");
        assert_eq!(j.end(), cp_at);
        assert_eq!(
            j.catalog().next_topic_id(),
            full_next,
            "id 2 would name a second topic"
        );
    }

    /// Review finding: a segment taken through its index file gets as its
    /// newest stamp the largest running maximum of its data sections, not
    /// the newest stamp of its batches as the full walk (and the writer,
    /// `active_newest_ms`) has it: its control records (a `CreateTopic`)
    /// are not counted, and a segment of control records only gets
    /// `i64::MIN`. Time retention judges a segment by that stamp, so after
    /// a start from the snapshot it deletes a segment the broker before
    /// the restart, and a full walk, keep.
    #[test]
    fn a_taken_segment_keeps_its_newest_stamp_for_time_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let before = j.end();
        j.create_topic("a", 1, 1, 1_000).unwrap();
        let ctl = j.end() - before;
        let data = batch(0, 0);
        let len = data.len() as u64;
        // Data stamped 2_000 until only a control record fits after it.
        while j.end() + len + ctl <= SEGMENT as u64 {
            j.append_data(0, 0, &data, 1, 1, 2_000).unwrap();
        }
        // The last batch of the first segment: a topic created at 90_000.
        j.create_topic("z", 1, 1, 90_000).unwrap();
        j.append_data(0, 0, &data, 1, 1, 90_001).unwrap();
        assert_eq!(j.sealed().len(), 1, "the next batch rolled");
        assert_eq!(
            j.sealed()[0].newest_ms,
            2_000,
            "its data's newest: control records do not count"
        );
        j.write_out().unwrap();
        let job = j.index_job(j.end()).unwrap();
        for &(start, end) in &job.segments {
            offload::write_index(dir.path(), start, end, &job.partitions).unwrap();
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
        snapshot::write(dir.path(), &j.catalog().snapshot(j.end())).unwrap();
        drop(j);
        let policy = crate::journal::log::Retention {
            bytes: 0,
            ms: Some(50_000),
        };
        let mut whole = open_walking(dir.path());
        let whole_newest = whole.sealed()[0].newest_ms;
        let end = whole.end();
        let whole_deletes = whole.retain(policy, end, 100_000).is_some();
        drop(whole);
        let mut j = open(dir.path());
        assert!(j.report().snapshot_position.is_some(), "from the snapshot");
        assert_eq!(j.take_indexes().len(), 1, "the first segment taken");
        assert_eq!(j.sealed()[0].newest_ms, whole_newest);
        assert_eq!(j.retain(policy, end, 100_000).is_some(), whole_deletes);
    }

    /// Review 2 finding: the full walk removes a snapshot above its end
    /// only when it cut something (`report.truncated`). A journal that ends
    /// cleanly (zeros, no torn batch) at or above the checkpoint but below
    /// the snapshot's position (durable bytes lost: a disk that lied about
    /// a flush, a copied data directory) opens without a cut and keeps
    /// the snapshot, which describes batches that are gone. Once new
    /// batches reach its position again with the same next offsets, the
    /// next start takes it: producer states of the lost batches come back
    /// and answer a producer's resend "duplicate", pointing at another
    /// producer's batch.
    #[test]
    fn a_journal_ending_below_the_snapshot_without_a_cut_does_not_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 0);
        // Producer 7's first batch, and a snapshot after it made durable
        // (the checkpoint stays below it).
        let (e, e2, active) = {
            let mut j = open(dir.path());
            let e = j.end();
            j.append_data(0, 0, &batch(7, 0), 1, 1, 4_000).unwrap();
            j.write_out().unwrap();
            snapshot::write(dir.path(), &j.catalog().snapshot(j.end())).unwrap();
            (e, j.end(), j.segment_files().last().unwrap().0)
        };
        assert_eq!(checkpoint::read(dir.path()).unwrap().unwrap().position, e);
        // The batch is lost: zeros, as an unwritten page reads.
        let seg = dir
            .path()
            .join(crate::journal::segment::segment_file_name(active));
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; (e2 - e) as usize], e - active)
            .unwrap();
        drop(f);
        {
            let mut j = open(dir.path());
            assert_eq!(j.report().snapshot_position, None, "the full walk");
            assert_eq!(j.report().truncated, None, "a clean end: nothing cut");
            assert_eq!(j.end(), e);
            let kept = snapshot::read(dir.path()).unwrap().map(|s| s.position);
            // Another client's batch, no producer id, same size.
            j.append_data(0, 0, &batch(0, 0), 1, 1, 5_000).unwrap();
            j.write_out().unwrap();
            assert_eq!(j.end(), e2);
            assert!(
                kept.is_none_or(|s| s <= e),
                "the snapshot at {kept:?} describes batches above the end {e}"
            );
        }
        let (_copy, whole) = read_whole(dir.path());
        let j = open(dir.path());
        assert_eq!(seen(&j, dir.path()), whole);
        // The journal holds nothing of producer 7 (the full walk: new).
        assert_eq!(
            j.check_seq(0, 0, &batch(7, 0), 5_000),
            SeqCheck::New,
            "from the snapshot at {:?}: producer 7's lost batch is back",
            j.report().snapshot_position
        );
    }

    #[test]
    fn a_snapshot_below_the_journal_start_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), 0);
        let mut j = open(dir.path());
        let r = j
            .retain(
                crate::journal::log::Retention { bytes: 1, ms: None },
                j.end(),
                10_000,
            )
            .unwrap();
        let start_at = r.state.position;
        crate::journal::start::write(dir.path(), &r.state).unwrap();
        let mut snap = snapshot::read(dir.path()).unwrap().unwrap();
        snap.position = start_at - 1;
        snapshot::write(dir.path(), &snap).unwrap();
        drop(j);
        let j = open(dir.path());
        assert_eq!(j.report().snapshot_position, None);
        assert_eq!(j.start(), start_at);
    }
}
