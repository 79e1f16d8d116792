//! [`Journal`]: opening (with recovery) and appending.
//!
//! The journal is one stream of record batches addressed by byte position.
//! It is cut into segment files named by their start position; a batch never
//! spans two segments, and a new segment starts exactly where the previous
//! one's data ends, so positions are contiguous. The active segment is
//! memory-mapped: appending is a copy into the map, and the flusher's
//! fdatasync on the file makes it durable. Older segments stay open (not
//! mapped) for readers, who use `pread`.

use super::catalog::Catalog;
use super::checkpoint::{self, TopicMeta};
use super::control::{self, Control};
use super::error::JournalError;
use super::index::IndexEntry;
use super::lock::{lock_dir, DirLock};
use super::scan::{scan, ScanStop};
use super::segment::{list_segments, Segment};
use crate::wire::batch::{stamp, BatchBuilder, BatchKind, BatchView, Stamp};
use std::fs::File;
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
}

/// The journal, owned by the writer thread.
pub struct Journal {
    dir: PathBuf,
    _lock: DirLock,
    segment_bytes: usize,
    active: Segment,
    files: Vec<SegmentFile>,
    end: u64,
    catalog: Catalog,
    control: BatchBuilder,
    report: RecoveryReport,
}

impl Journal {
    /// Locks `dir` (creating it if needed), then recovers: reads the
    /// checkpoint, scans every segment, cuts a torn or corrupt tail of the
    /// last segment, and rebuilds the catalog and indexes.
    ///
    /// # Errors
    /// [`JournalError::Locked`] when another broker holds the directory;
    /// [`JournalError::Corrupt`] when damage is found before the last
    /// segment (cutting there would drop acknowledged data, so the broker
    /// refuses to start); IO errors otherwise.
    pub fn open(dir: &Path, segment_bytes: usize) -> Result<Journal, JournalError> {
        let lock = lock_dir(dir)?;
        let cp = match checkpoint::read(dir) {
            Ok(cp) => cp.unwrap_or_default(),
            Err(e) => {
                eprintln!(
                    "hutong: ignoring unreadable checkpoint, verifying the whole journal: {e}"
                );
                checkpoint::Checkpoint::default()
            }
        };
        let mut catalog = Catalog::new(cp.next_topic_id);
        for t in &cp.topics {
            catalog.add(t.clone());
        }
        let mut report = RecoveryReport {
            checkpoint_position: cp.position,
            ..RecoveryReport::default()
        };
        let listed = list_segments(dir)?;
        let mut files = Vec::with_capacity(listed.len());
        let mut active = None;
        let mut end = listed.first().map(|s| s.0).unwrap_or(0);
        let last_start = listed.last().map(|s| s.0).unwrap_or(0);
        // Older segments are trusted up to the checkpoint (header checks
        // only); the last one is always fully verified.
        let verify_from = cp.position.min(last_start);
        for (i, (start, path)) in listed.iter().enumerate() {
            let is_last = i + 1 == listed.len();
            if *start != end {
                return Err(JournalError::Corrupt(format!(
                    "segment {} starts at {start} but the previous data ends at {end}",
                    path.display()
                )));
            }
            let mut seg = Segment::open(path, *start)?;
            let result = scan(seg.bytes(), *start, verify_from, |pos, batch| {
                apply_batch(&mut catalog, pos, batch)
            });
            end = start + result.valid_len as u64;
            if result.stop != ScanStop::End && !is_last {
                return Err(JournalError::Corrupt(format!(
                    "damage at position {end} in {}, which is not the last segment ({:?}); \
                     refusing to start: move that segment and the ones after it away to recover",
                    path.display(),
                    result.stop
                )));
            }
            if is_last {
                if let ScanStop::Torn(why) | ScanStop::Refused(why) = &result.stop {
                    report.truncated = Some((end, why.clone()));
                }
                // Zero whatever lies past the valid data (a torn batch, or
                // pages the kernel wrote back after a hole) so it can never
                // be read as data once new batches are appended.
                seg.zero_from(result.valid_len)?;
                files.push((*start, seg.file().clone()));
                active = Some(seg);
            } else {
                files.push((*start, seg.file().clone()));
            }
        }
        if end < cp.position {
            return Err(JournalError::Corrupt(format!(
                "the checkpoint says data up to position {} is durable but the journal ends at {end}",
                cp.position
            )));
        }
        let active = match active {
            Some(seg) => seg,
            None => {
                let seg = Segment::create(dir, end, segment_bytes)?;
                files.push((end, seg.file().clone()));
                seg
            }
        };
        report.batches = catalog
            .topics()
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.index.len() as u64)
            .sum();
        Ok(Journal {
            dir: dir.to_path_buf(),
            _lock: lock,
            segment_bytes,
            active,
            files,
            end,
            catalog,
            control: BatchBuilder::with_kind(BatchKind::Control),
            report,
        })
    }

    /// Position one past the last appended byte (W).
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
        let (position, rolled) = self.reserve(batch.len())?;
        let t = self.catalog.topic_mut(topic);
        let topic_id = t.meta.id;
        let part = &mut t.partitions[partition as usize];
        let base_offset = part.next_offset;
        let at = (position - self.active.start()) as usize;
        let dst = &mut self.active.bytes_mut()[at..at + batch.len()];
        dst.copy_from_slice(batch);
        stamp(
            dst,
            &Stamp {
                base_offset,
                term,
                append_time_ms: now_ms,
                topic_id,
                partition,
            },
        );
        part.index.push(IndexEntry {
            base_offset,
            position,
            len: batch.len() as u32,
            count: record_count,
        });
        part.next_offset += record_count as u64;
        self.end = position + batch.len() as u64;
        Ok(Appended {
            position,
            end: self.end,
            base_offset,
            rolled,
        })
    }

    /// Creates a topic: appends its control record and adds it to the
    /// catalog. The caller validated the name, the count and the limits.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when a new segment cannot be allocated.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        term: u64,
        now_ms: i64,
    ) -> Result<(Appended, usize), JournalError> {
        let meta = TopicMeta {
            id: self.catalog.next_topic_id(),
            name: name.to_string(),
            partitions,
        };
        control::encode(
            &Control::CreateTopic {
                id: meta.id,
                name: meta.name.clone(),
                partitions,
            },
            &mut self.control,
        );
        let len = self.control.size();
        let (position, rolled) = self.reserve(len)?;
        let at = (position - self.active.start()) as usize;
        let dst = &mut self.active.bytes_mut()[at..at + len];
        dst.copy_from_slice(self.control.finish(0, 0));
        stamp(
            dst,
            &Stamp {
                base_offset: 0,
                term,
                append_time_ms: now_ms,
                topic_id: u32::MAX,
                partition: u32::MAX,
            },
        );
        self.end = position + len as u64;
        let slot = self.catalog.add(meta);
        Ok((
            Appended {
                position,
                end: self.end,
                base_offset: 0,
                rolled,
            },
            slot,
        ))
    }

    /// Finds room for `len` bytes at the end, rolling to a new segment
    /// when the active one cannot hold them.
    fn reserve(&mut self, len: usize) -> Result<(u64, Option<SegmentFile>), JournalError> {
        let used = (self.end - self.active.start()) as usize;
        if used + len <= self.active.capacity() {
            return Ok((self.end, None));
        }
        let capacity = self.segment_bytes.max(len);
        let seg = Segment::create(&self.dir, self.end, capacity)?;
        let file = (self.end, seg.file().clone());
        self.files.push(file.clone());
        // Dropping the old map does not drop its dirty pages: they stay in
        // the page cache until the flusher's fdatasync on that file.
        self.active = seg;
        Ok((self.end, Some(file)))
    }
}

/// Applies one recovered batch to the catalog: a control record creates its
/// topic, a data batch extends its partition's index. A batch that does not
/// continue its partition's offsets is refused: it cannot belong after what
/// precedes it, so the journal is cut there.
fn apply_batch(catalog: &mut Catalog, position: u64, batch: &[u8]) -> Result<(), String> {
    let view = BatchView(batch);
    match view.kind() {
        Some(BatchKind::Control) => match control::decode(batch).map_err(|e| e.to_string())? {
            Control::CreateTopic {
                id,
                name,
                partitions,
            } => match catalog.lookup(&name) {
                Some(slot) if catalog.topic(slot).meta.id == id => Ok(()),
                Some(_) => Err(format!("topic {name} re-created with another id")),
                None => {
                    catalog.add(TopicMeta {
                        id,
                        name,
                        partitions,
                    });
                    Ok(())
                }
            },
        },
        Some(BatchKind::Data) => {
            let slot = catalog
                .lookup_id(view.topic_id())
                .ok_or_else(|| format!("batch for unknown topic id {}", view.topic_id()))?;
            let topic = catalog.topic_mut(slot);
            let part = topic
                .partitions
                .get_mut(view.partition() as usize)
                .ok_or_else(|| format!("batch for unknown partition {}", view.partition()))?;
            if view.base_offset() != part.next_offset {
                return Err(format!(
                    "base offset {} where {} was expected",
                    view.base_offset(),
                    part.next_offset
                ));
            }
            part.index.push(IndexEntry {
                base_offset: view.base_offset(),
                position,
                len: batch.len() as u32,
                count: view.record_count(),
            });
            part.next_offset = view.next_offset();
            Ok(())
        }
        None => Err("unknown batch kind".into()),
    }
}
