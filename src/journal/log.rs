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

use super::catalog::{Catalog, Landed, SeqCheck, PARTITIONS_MAX};
use super::checkpoint::{self, TopicMeta};
use super::control::{self, Control};
use super::error::JournalError;
use super::index::IndexEntry;
use super::lock::{lock_dir, DirLock};
use super::scan::{scan, ScanStop};
use super::segment::{list_segments, Segment};
use crate::wire::batch::{stamp, BatchBuilder, BatchKind, BatchView, Stamp};
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
    pub fn open(
        dir: &Path,
        segment_bytes: usize,
        cache_bytes: usize,
    ) -> Result<Journal, JournalError> {
        let lock = lock_dir(dir)?;
        let cp = match checkpoint::read(dir) {
            Ok(cp) => cp.unwrap_or_default(),
            Err(e) => {
                crate::log!("ignoring unreadable checkpoint, verifying the whole journal: {e}");
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
                break;
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
            // Durable data of the last segment was damaged while the broker
            // was down (a torn write never reaches a checkpoint). It was cut
            // above, because everything before it is still good; say loudly
            // what was lost.
            crate::log!("WARNING: the checkpoint recorded {} bytes as durable but only {end} survive                  recovery; {} bytes of the last segment were damaged and cut",
                cp.position,
                cp.position - end
            );
        }
        let active = match active {
            Some(seg) => seg,
            None => {
                let seg = Segment::create(dir, end, segment_bytes)?;
                files.push((end, seg.file().clone()));
                seg
            }
        };
        // From here on the active segment is written with pwrite; its map
        // (used by the scan) is dropped with `active`.
        let active = Active {
            start: active.start(),
            capacity: active.capacity(),
            file: active.file().clone(),
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
            cache: Vec::with_capacity(cache_bytes),
            written: end,
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
        part.index.push(IndexEntry {
            base_offset,
            position,
            len: batch.len() as u32,
            count: record_count,
        });
        part.next_offset += record_count as u64;
        self.end = position + batch.len() as u64;
        let view = BatchView(batch);
        part.record_seq(
            view.producer_id(),
            Landed {
                seq: view.producer_seq(),
                base_offset,
                end: self.end,
                append_time_ms: now_ms,
            },
        );
        Ok(Appended {
            position,
            end: self.end,
            base_offset,
            rolled,
        })
    }

    /// Says whether a producer batch for `partition` of the topic in slot
    /// `topic` is new, a retry of a stored one, or too old to tell.
    pub fn check_seq(&self, topic: usize, partition: u32, batch: &[u8]) -> SeqCheck {
        let view = BatchView(batch);
        self.catalog.topic(topic).partitions[partition as usize]
            .check_seq(view.producer_id(), view.producer_seq())
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

    /// Position up to which appended bytes were handed to the kernel.
    pub fn written(&self) -> u64 {
        self.written
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
        let seg = Segment::create(&self.dir, self.end, capacity)?;
        let file = (self.end, seg.file().clone());
        self.files.push(file.clone());
        self.active = Active {
            start: self.end,
            capacity,
            file: seg.file().clone(),
        };
        Ok((self.end, Some(file)))
    }
}

fn is_empty_file(path: &Path) -> Result<bool, JournalError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| JournalError::io(format!("stat {}", path.display()), e))?;
    Ok(meta.len() == 0)
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
            part.record_seq(
                view.producer_id(),
                Landed {
                    seq: view.producer_seq(),
                    base_offset: view.base_offset(),
                    end: position + batch.len() as u64,
                    append_time_ms: view.append_time_ms(),
                },
            );
            Ok(())
        }
        None => Err("unknown batch kind".into()),
    }
}
