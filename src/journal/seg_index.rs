//! Segment index files: the index entries of one sealed segment, on disk.
//!
//! A partition's index ([`super::index`]) holds one entry per batch. Kept
//! in memory for the whole journal it would grow without bound, so once a
//! segment is sealed and committed a background thread writes the entries
//! of every partition's batches in it to `<20-digit start>.idx`, next to
//! `<20-digit start>.seg`, and the entries can leave memory. A reader then
//! finds a batch with a few `pread`s: [`SegmentIndex::open`] reads only the
//! header and the directory (one record per partition), and
//! [`SegmentIndex::locate`] / [`SegmentIndex::locate_time`] binary-search a
//! partition's entries in the file.
//!
//! The file is written once, atomically (a temporary file, fsync, rename,
//! directory fsync), and never changed; it is removed with its segment.
//!
//! ```text
//! header, 32 bytes
//! offset size field
//!  0     4    magic           "HTIX"
//!  4     2    version         1
//!  6     2    reserved        0
//!  8     8    segment_start   journal position of the segment's first byte
//!                             (the start in the file name)
//! 16     8    segment_end     journal position one past its last byte
//! 24     4    section_count   partitions with entries in the segment
//! 28     4    header_crc      CRC32C of bytes [0, 28) followed by the
//!                             whole directory
//!
//! directory: section_count × 64 bytes, sorted by (topic_id, partition),
//! no two alike
//!  0     4    topic_id
//!  4     4    partition
//!  8     4    entry_count     at least 1
//! 12     4    entries_crc     CRC32C of the section's entry bytes
//! 16     8    first_offset    base offset of the first batch
//! 24     8    next_offset     offset one past the last batch's last record
//! 32     8    bytes           sum of the batches' lengths
//! 40     8    first_position  journal position of the first batch
//! 48     8    max_time_ms     the last entry's max_time_ms (i64)
//! 56     8    entries_at      file offset of the section's first entry
//!
//! entries: each section's entry_count × 32 bytes, sections in directory
//! order, each section's entries in journal order
//!  0     8    base_offset
//!  8     8    position        journal position of the batch
//! 16     4    len             bytes of the batch, at least 1
//! 20     4    count           records in the batch
//! 24     8    max_time_ms     running maximum of the append times (i64)
//! ```
//! All integers are little-endian. The first section's entries start right
//! after the directory, each further section's right after the previous
//! one's, and the file ends right after the last entry.
//!
//! Within a section the entries are those of the in-memory index: each
//! batch lies wholly within `[segment_start, segment_end)`, base offsets
//! are contiguous (each is the previous `base_offset + count`), batches do
//! not overlap and come in journal order (so positions increase strictly),
//! and `max_time_ms` never decreases. [`write`] refuses entries that break
//! these rules and [`SegmentIndex::verify`] checks them again, with the
//! directory's sums.
//!
//! Damage is caught in two steps: [`SegmentIndex::open`] checks the header
//! checksum, which covers the header and the directory, and the layout
//! (the file size is exactly what the directory implies, so a truncated or
//! extended file is refused); [`SegmentIndex::verify`] reads every entry
//! and checks each section's checksum. Entries read on demand are only
//! sanity-checked (inside the segment, not empty), which keeps any damage
//! that slipped past from sending a reader outside the segment.

use super::dir::write_atomically_with;
use super::error::JournalError;
use super::index::{IndexEntries, IndexEntry};
use super::segment::{parse_start_file_name, start_file_name};
use crate::wire::codec::{le_u32, le_u64, set_u32, set_u64};
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// [`SegmentIndex::verify`] has not run.
const UNCHECKED: u8 = 0;
/// It passed.
const SOUND: u8 = 1;
/// It found the entries damaged.
const DAMAGED: u8 = 2;

/// Suffix of segment index file names.
pub const INDEX_SUFFIX: &str = ".idx";
/// Suffix added to an index file's name while it is being written.
pub const INDEX_TMP_SUFFIX: &str = ".tmp";
/// First bytes of a segment index file.
pub const INDEX_MAGIC: [u8; 4] = *b"HTIX";
/// The only segment index format version so far.
pub const INDEX_VERSION: u16 = 1;

/// Bytes of the header.
pub const INDEX_HEADER_LEN: usize = 32;
/// Bytes of one directory record.
pub const INDEX_SECTION_LEN: usize = 64;
/// Bytes of one entry.
pub const INDEX_ENTRY_LEN: usize = 32;
/// Where `header_crc` lies in the header; it covers the bytes before it
/// and the directory.
pub const INDEX_HEADER_CRC_AT: usize = 28;
/// Where `segment_start` lies in the header.
pub const INDEX_SEGMENT_START_AT: usize = 8;
/// Where `section_count` lies in the header.
pub const INDEX_SECTION_COUNT_AT: usize = 24;
/// Where `entry_count`, `entries_crc` and `entries_at` lie in a directory
/// record.
pub const INDEX_ENTRY_COUNT_AT: usize = 8;
/// See [`INDEX_ENTRY_COUNT_AT`].
pub const INDEX_ENTRIES_CRC_AT: usize = 12;
/// See [`INDEX_ENTRY_COUNT_AT`].
pub const INDEX_ENTRIES_AT_AT: usize = 56;

// Header fields.
const VERSION_AT: usize = 4;
const RESERVED_AT: usize = 6;
const SEGMENT_END_AT: usize = 16;

// Directory record fields (the rest are public above).
const TOPIC_ID_AT: usize = 0;
const PARTITION_AT: usize = 4;
const FIRST_OFFSET_AT: usize = 16;
const NEXT_OFFSET_AT: usize = 24;
const BYTES_AT: usize = 32;
const FIRST_POSITION_AT: usize = 40;
const SECTION_MAX_TIME_AT: usize = 48;

// Entry fields.
const BASE_OFFSET_AT: usize = 0;
const POSITION_AT: usize = 8;
const LEN_AT: usize = 16;
const COUNT_AT: usize = 20;
const ENTRY_MAX_TIME_AT: usize = 24;

/// Entries read (or checksummed while written) per chunk: what
/// [`SegmentIndex::verify`] and [`SegmentIndex::read_entries`] read per
/// `pread`, and the window [`SegmentIndex::locate`] finishes its search in
/// with one `pread` instead of several. 4 KiB, on the stack.
const CHUNK_ENTRIES: usize = 128;
const CHUNK_BYTES: usize = CHUNK_ENTRIES * INDEX_ENTRY_LEN;

const _: () = assert!(INDEX_HEADER_CRC_AT + 4 == INDEX_HEADER_LEN);
const _: () = assert!(INDEX_SECTION_COUNT_AT + 4 == INDEX_HEADER_CRC_AT);
const _: () = assert!(SEGMENT_END_AT + 8 == INDEX_SECTION_COUNT_AT);
const _: () = assert!(INDEX_SEGMENT_START_AT + 8 == SEGMENT_END_AT);
const _: () = assert!(INDEX_ENTRIES_AT_AT + 8 == INDEX_SECTION_LEN);
const _: () = assert!(ENTRY_MAX_TIME_AT + 8 == INDEX_ENTRY_LEN);
const _: () = assert!(CHUNK_ENTRIES > 0 && CHUNK_ENTRIES <= u32::MAX as usize);

/// The file name of the index of the segment starting at `segment_start`:
/// the segment's twenty digits and `.idx`.
pub fn index_file_name(segment_start: u64) -> String {
    start_file_name(segment_start, INDEX_SUFFIX)
}

/// The segment start an index file name encodes, when it is exactly what
/// [`index_file_name`] produces.
pub fn parse_index_file_name(name: &str) -> Option<u64> {
    parse_start_file_name(name, INDEX_SUFFIX)
}

/// The temporary name an index file is written under.
fn tmp_file_name(segment_start: u64) -> String {
    format!("{}{INDEX_TMP_SUFFIX}", index_file_name(segment_start))
}

/// One partition's entries to write: `entries[range]`.
#[derive(Clone)]
pub struct SectionSource<'a> {
    /// The partition's topic.
    pub topic_id: u32,
    /// The partition within the topic.
    pub partition: u32,
    /// The partition's index (usually its shared [`super::index::PartitionIndex`]).
    pub entries: &'a (dyn IndexEntries + Sync),
    /// The entries of the batches in the segment; an empty range writes no
    /// section.
    pub range: Range<usize>,
}

/// One partition's part of an index file: its directory record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The partition's topic.
    pub topic_id: u32,
    /// The partition within the topic.
    pub partition: u32,
    /// Entries (batches) of the partition in the segment; at least 1.
    pub entry_count: u32,
    /// Base offset of the first batch.
    pub first_offset: u64,
    /// Offset one past the last batch's last record.
    pub next_offset: u64,
    /// Sum of the batches' lengths.
    pub bytes: u64,
    /// Journal position of the first batch.
    pub first_position: u64,
    /// The last entry's running maximum append time.
    pub max_time_ms: i64,
    /// File offset of the first entry.
    entries_at: u64,
    /// CRC32C of the entries' bytes.
    crc: u32,
}

impl Section {
    fn key(&self) -> (u32, u32) {
        (self.topic_id, self.partition)
    }

    fn encode(&self) -> [u8; INDEX_SECTION_LEN] {
        let mut b = [0u8; INDEX_SECTION_LEN];
        set_u32(&mut b, TOPIC_ID_AT, self.topic_id);
        set_u32(&mut b, PARTITION_AT, self.partition);
        set_u32(&mut b, INDEX_ENTRY_COUNT_AT, self.entry_count);
        set_u32(&mut b, INDEX_ENTRIES_CRC_AT, self.crc);
        set_u64(&mut b, FIRST_OFFSET_AT, self.first_offset);
        set_u64(&mut b, NEXT_OFFSET_AT, self.next_offset);
        set_u64(&mut b, BYTES_AT, self.bytes);
        set_u64(&mut b, FIRST_POSITION_AT, self.first_position);
        set_u64(&mut b, SECTION_MAX_TIME_AT, self.max_time_ms as u64);
        set_u64(&mut b, INDEX_ENTRIES_AT_AT, self.entries_at);
        b
    }

    /// Decodes a directory record; `b` holds [`INDEX_SECTION_LEN`] bytes.
    fn decode(b: &[u8]) -> Section {
        Section {
            topic_id: le_u32(b, TOPIC_ID_AT),
            partition: le_u32(b, PARTITION_AT),
            entry_count: le_u32(b, INDEX_ENTRY_COUNT_AT),
            crc: le_u32(b, INDEX_ENTRIES_CRC_AT),
            first_offset: le_u64(b, FIRST_OFFSET_AT),
            next_offset: le_u64(b, NEXT_OFFSET_AT),
            bytes: le_u64(b, BYTES_AT),
            first_position: le_u64(b, FIRST_POSITION_AT),
            max_time_ms: le_u64(b, SECTION_MAX_TIME_AT) as i64,
            entries_at: le_u64(b, INDEX_ENTRIES_AT_AT),
        }
    }

    /// File offset one past the section's last entry, when it fits.
    fn entries_end(&self) -> Option<u64> {
        self.entries_at
            .checked_add(u64::from(self.entry_count) * INDEX_ENTRY_LEN as u64)
    }

    /// The checks [`SegmentIndex::open`] makes of a record on its own:
    /// its entries start at `entries_at`, and its sums are possible for
    /// its entry count in the segment `[start, end)`.
    fn check(&self, entries_at: u64, start: u64, end: u64) -> Result<(), String> {
        let n = u64::from(self.entry_count);
        let most = n * u64::from(u32::MAX);
        if self.entries_at != entries_at {
            return Err(format!(
                "entries at byte {}, expected {entries_at}",
                self.entries_at
            ));
        }
        if n == 0 {
            return Err("no entries".into());
        }
        match self.next_offset.checked_sub(self.first_offset) {
            Some(span) if span <= most => {}
            _ => {
                return Err(format!(
                    "offsets [{}, {}) impossible for {n} batches",
                    self.first_offset, self.next_offset
                ))
            }
        }
        if self.bytes < n || self.bytes > most {
            return Err(format!("{} bytes impossible for {n} batches", self.bytes));
        }
        let inside = self.first_position >= start
            && self
                .first_position
                .checked_add(self.bytes)
                .is_some_and(|e| e <= end);
        if !inside {
            return Err(format!(
                "{} bytes from position {} do not fit in the segment [{start}, {end})",
                self.bytes, self.first_position
            ));
        }
        Ok(())
    }

    /// The first field in which `found` (recomputed from the entries)
    /// differs from `self` (the directory), in words.
    fn difference(&self, found: &Section) -> Option<String> {
        if self.crc != found.crc {
            return Some(format!(
                "entries checksum {:#010x} does not match stored {:#010x}",
                found.crc, self.crc
            ));
        }
        [
            (
                "entry_count",
                i128::from(self.entry_count),
                i128::from(found.entry_count),
            ),
            (
                "first_offset",
                i128::from(self.first_offset),
                i128::from(found.first_offset),
            ),
            (
                "next_offset",
                i128::from(self.next_offset),
                i128::from(found.next_offset),
            ),
            ("bytes", i128::from(self.bytes), i128::from(found.bytes)),
            (
                "first_position",
                i128::from(self.first_position),
                i128::from(found.first_position),
            ),
            (
                "max_time_ms",
                i128::from(self.max_time_ms),
                i128::from(found.max_time_ms),
            ),
        ]
        .into_iter()
        .find(|(_, stored, from_entries)| stored != from_entries)
        .map(|(field, stored, from_entries)| {
            format!("{field} {stored} in the directory, {from_entries} from the entries")
        })
    }
}

fn encode_entry(e: &IndexEntry) -> [u8; INDEX_ENTRY_LEN] {
    let mut b = [0u8; INDEX_ENTRY_LEN];
    set_u64(&mut b, BASE_OFFSET_AT, e.base_offset);
    set_u64(&mut b, POSITION_AT, e.position);
    set_u32(&mut b, LEN_AT, e.len);
    set_u32(&mut b, COUNT_AT, e.count);
    set_u64(&mut b, ENTRY_MAX_TIME_AT, e.max_time_ms as u64);
    b
}

/// Decodes an entry; `b` holds [`INDEX_ENTRY_LEN`] bytes.
fn decode_entry(b: &[u8]) -> IndexEntry {
    IndexEntry {
        base_offset: le_u64(b, BASE_OFFSET_AT),
        position: le_u64(b, POSITION_AT),
        len: le_u32(b, LEN_AT),
        count: le_u32(b, COUNT_AT),
        max_time_ms: le_u64(b, ENTRY_MAX_TIME_AT) as i64,
    }
}

/// What every entry must satisfy on its own: a batch of at least one byte
/// lying wholly within the segment `[start, end)`.
fn check_entry(e: &IndexEntry, start: u64, end: u64) -> Result<(), String> {
    if e.len == 0 {
        return Err(format!("the batch at position {} is empty", e.position));
    }
    let inside = e.position >= start
        && e.position
            .checked_add(u64::from(e.len))
            .is_some_and(|batch_end| batch_end <= end);
    if !inside {
        return Err(format!(
            "the {}-byte batch at position {} lies outside the segment [{start}, {end})",
            e.len, e.position
        ));
    }
    Ok(())
}

/// A section's entries checked in order, with the sums its directory
/// record holds: one rule book for [`write`] (before writing) and
/// [`SegmentIndex::verify`] (after reading).
struct SectionCheck {
    start: u64,
    end: u64,
    entry_count: u32,
    first_offset: u64,
    next_offset: u64,
    bytes: u64,
    first_position: u64,
    end_position: u64,
    max_time_ms: i64,
    crc: u32,
}

impl SectionCheck {
    /// No entries yet, in the segment `[start, end)`.
    fn new(start: u64, end: u64) -> SectionCheck {
        SectionCheck {
            start,
            end,
            entry_count: 0,
            first_offset: 0,
            next_offset: 0,
            bytes: 0,
            first_position: 0,
            end_position: 0,
            max_time_ms: 0,
            crc: 0,
        }
    }

    /// Adds the encoded bytes of the next entries to the checksum.
    fn hash(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
    }

    /// Checks the next entry against the segment and the entries before
    /// it, and adds it to the sums.
    fn push(&mut self, e: &IndexEntry) -> Result<(), String> {
        let i = self.entry_count;
        let at = |why: String| format!("entry {i}: {why}");
        check_entry(e, self.start, self.end).map_err(at)?;
        let next_offset = e
            .base_offset
            .checked_add(u64::from(e.count))
            .ok_or_else(|| at(format!("offsets overflow past {}", e.base_offset)))?;
        if i == 0 {
            self.first_offset = e.base_offset;
            self.first_position = e.position;
        } else {
            if e.base_offset != self.next_offset {
                return Err(at(format!(
                    "base offset {} does not continue the previous batch, which ends at {}",
                    e.base_offset, self.next_offset
                )));
            }
            if e.position < self.end_position {
                return Err(at(format!(
                    "the batch at position {} starts before the previous one ends, at {}",
                    e.position, self.end_position
                )));
            }
            if e.max_time_ms < self.max_time_ms {
                return Err(at(format!(
                    "max_time_ms {} falls below the previous entry's {}",
                    e.max_time_ms, self.max_time_ms
                )));
            }
        }
        self.entry_count = i
            .checked_add(1)
            .ok_or_else(|| "more than u32::MAX entries".to_string())?;
        self.next_offset = next_offset;
        // Neither overflows: the batches lie in the segment without
        // overlapping, so they sum to at most its length.
        self.end_position = e.position + u64::from(e.len);
        self.bytes += u64::from(e.len);
        self.max_time_ms = e.max_time_ms;
        Ok(())
    }

    /// The directory record of the entries checked.
    fn section(&self, topic_id: u32, partition: u32, entries_at: u64) -> Section {
        Section {
            topic_id,
            partition,
            entry_count: self.entry_count,
            first_offset: self.first_offset,
            next_offset: self.next_offset,
            bytes: self.bytes,
            first_position: self.first_position,
            max_time_ms: self.max_time_ms,
            entries_at,
            crc: self.crc,
        }
    }
}

/// Writes the index of the segment `[segment_start, segment_end)` to
/// `dir/<index_file_name(segment_start)>`, atomically and durably: streamed
/// through a buffer into `<name>.tmp` (never built whole in memory: a
/// segment can have millions of entries), fsynced, renamed over the name,
/// and the directory fsynced. A leftover temporary file is overwritten.
///
/// Sections are written sorted by `(topic_id, partition)`, whatever their
/// order in `sections`; sources with an empty range are skipped. Every
/// entry is checked (see the [module docs](self)) before anything is
/// written; the entries are then read a second time to write them, so
/// they must not change in between (published index entries never do).
///
/// # Errors
/// [`JournalError::Corrupt`], with no file created, when the segment is
/// empty, two sources name the same partition, a range exceeds its
/// entries, or the entries break a rule of the format: the in-memory index
/// is then not what the journal wrote. [`JournalError::Io`] (or
/// [`JournalError::StorageFull`]) when a step of the write fails; the
/// temporary file is then removed.
pub fn write(
    dir: &Path,
    segment_start: u64,
    segment_end: u64,
    sections: &[SectionSource<'_>],
) -> Result<(), JournalError> {
    let name = index_file_name(segment_start);
    let refuse =
        |why: String| JournalError::Corrupt(format!("segment index {name} not written: {why}"));
    if segment_start >= segment_end {
        return Err(refuse(format!(
            "the segment [{segment_start}, {segment_end}) is empty"
        )));
    }
    let mut order: Vec<&SectionSource<'_>> =
        sections.iter().filter(|s| !s.range.is_empty()).collect();
    order.sort_unstable_by_key(|s| (s.topic_id, s.partition));
    if let Some(pair) = order
        .windows(2)
        .find(|p| (p[0].topic_id, p[0].partition) == (p[1].topic_id, p[1].partition))
    {
        return Err(refuse(format!(
            "two sections for topic {} partition {}",
            pair[0].topic_id, pair[0].partition
        )));
    }
    let section_count =
        u32::try_from(order.len()).map_err(|_| refuse(format!("{} sections", order.len())))?;

    // First pass: check every entry and sum each section up for the
    // directory, which precedes the entries and is covered by the header
    // checksum.
    let mut entries_at = (INDEX_HEADER_LEN + order.len() * INDEX_SECTION_LEN) as u64;
    let mut directory = Vec::with_capacity(order.len() * INDEX_SECTION_LEN);
    let mut chunk = [0u8; CHUNK_BYTES];
    for src in &order {
        let in_section = |why: String| {
            refuse(format!(
                "topic {} partition {} (entries {:?} of its index): {why}",
                src.topic_id, src.partition, src.range
            ))
        };
        let held = src.entries.entry_count();
        if src.range.end > held {
            return Err(in_section(format!(
                "entries {:?} asked for, {held} held",
                src.range
            )));
        }
        let mut check = SectionCheck::new(segment_start, segment_end);
        let mut filled = 0;
        for i in src.range.clone() {
            let e = src
                .entries
                .entry(i)
                .ok_or_else(|| in_section(format!("entry {i} is missing")))?;
            check.push(e).map_err(in_section)?;
            chunk[filled..filled + INDEX_ENTRY_LEN].copy_from_slice(&encode_entry(e));
            filled += INDEX_ENTRY_LEN;
            if filled == CHUNK_BYTES {
                check.hash(&chunk);
                filled = 0;
            }
        }
        check.hash(&chunk[..filled]);
        let section = check.section(src.topic_id, src.partition, entries_at);
        entries_at = section
            .entries_end()
            .ok_or_else(|| refuse("the file would exceed 2^64 bytes".into()))?;
        directory.extend_from_slice(&section.encode());
    }

    let mut header = [0u8; INDEX_HEADER_LEN];
    header[..4].copy_from_slice(&INDEX_MAGIC);
    header[VERSION_AT..VERSION_AT + 2].copy_from_slice(&INDEX_VERSION.to_le_bytes());
    set_u64(&mut header, INDEX_SEGMENT_START_AT, segment_start);
    set_u64(&mut header, SEGMENT_END_AT, segment_end);
    set_u32(&mut header, INDEX_SECTION_COUNT_AT, section_count);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..INDEX_HEADER_CRC_AT]), &directory);
    set_u32(&mut header, INDEX_HEADER_CRC_AT, crc);

    // Second pass: the entries, in directory order.
    write_atomically_with(dir, &tmp_file_name(segment_start), &name, |w| {
        w.write_all(&header)?;
        w.write_all(&directory)?;
        for src in &order {
            for i in src.range.clone() {
                let e = src.entries.entry(i).ok_or_else(|| {
                    io::Error::other(format!("entry {i} vanished since it was checked"))
                })?;
                w.write_all(&encode_entry(e))?;
            }
        }
        Ok(())
    })
}

/// An opened index file: its header and directory in memory, its entries
/// read on demand with `pread`. Reads take `&self` and `pread` has no file
/// cursor, so reader threads share one through an `Arc`.
#[derive(Debug)]
pub struct SegmentIndex {
    /// Journal position of the segment's first byte.
    pub segment_start: u64,
    /// Journal position one past the segment's last byte.
    pub segment_end: u64,
    sections: Vec<Section>,
    file: File,
    path: PathBuf,
    /// What [`SegmentIndex::verify`] found: [`UNCHECKED`], [`SOUND`] (or
    /// the file was just written from the index in memory) or
    /// [`DAMAGED`].
    check: AtomicU8,
}

impl SegmentIndex {
    /// Opens `dir/<index_file_name(segment_start)>` and reads its header
    /// and directory (one `pread` each; the entries are not read). Checks
    /// the magic, version, header checksum and the layout: the segment is
    /// the one the name says and not empty; sections sorted and unique by
    /// `(topic_id, partition)`, each with at least one entry, sums
    /// possible for its entries and within the segment, its entries right
    /// after the previous section's; and the file ends right after the
    /// last entry. The directory is read only once the file is known to be
    /// long enough to hold it.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`], naming the file and what is wrong, when a
    /// check fails; [`JournalError::Io`] when it cannot be read. `Ok(None)`
    /// when the file does not exist.
    pub fn open(dir: &Path, segment_start: u64) -> Result<Option<SegmentIndex>, JournalError> {
        let path = dir.join(index_file_name(segment_start));
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::io(format!("open {}", path.display()), e)),
        };
        let corrupt =
            |why: String| JournalError::Corrupt(format!("segment index {}: {why}", path.display()));
        let read = |buf: &mut [u8], at: u64| {
            file.read_exact_at(buf, at)
                .map_err(|e| JournalError::io(format!("read {}", path.display()), e))
        };
        let len = file
            .metadata()
            .map_err(|e| JournalError::io(format!("stat {}", path.display()), e))?
            .len();
        if len < INDEX_HEADER_LEN as u64 {
            return Err(corrupt(format!(
                "{len} bytes, shorter than its {INDEX_HEADER_LEN}-byte header"
            )));
        }
        let mut header = [0u8; INDEX_HEADER_LEN];
        read(&mut header, 0)?;
        if header[..4] != INDEX_MAGIC {
            return Err(corrupt(format!("bad magic {:02x?}", &header[..4])));
        }
        let version = u16::from_le_bytes([header[VERSION_AT], header[VERSION_AT + 1]]);
        if version != INDEX_VERSION {
            return Err(corrupt(format!("unsupported version {version}")));
        }
        // Every section takes a directory record and at least one entry:
        // bound the count by the file's length before reading (and
        // allocating for) the directory.
        let count = le_u32(&header, INDEX_SECTION_COUNT_AT);
        let least = INDEX_HEADER_LEN as u64
            + u64::from(count) * (INDEX_SECTION_LEN + INDEX_ENTRY_LEN) as u64;
        if least > len {
            return Err(corrupt(format!(
                "{count} sections cannot fit in {len} bytes"
            )));
        }
        // A sparse file can claim any length: a section per partition at
        // most.
        if count as usize > super::topic::PARTITIONS_MAX {
            return Err(corrupt(format!(
                "{count} sections, more than a broker has partitions"
            )));
        }
        // Fits: at most the file's length, which was just compared.
        let mut directory = vec![0u8; count as usize * INDEX_SECTION_LEN];
        read(&mut directory, INDEX_HEADER_LEN as u64)?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..INDEX_HEADER_CRC_AT]), &directory);
        let stored = le_u32(&header, INDEX_HEADER_CRC_AT);
        if crc != stored {
            return Err(corrupt(format!(
                "header checksum {crc:#010x} does not match stored {stored:#010x}"
            )));
        }
        let reserved = u16::from_le_bytes([header[RESERVED_AT], header[RESERVED_AT + 1]]);
        if reserved != 0 {
            return Err(corrupt(format!("reserved field {reserved}, not 0")));
        }
        let start = le_u64(&header, INDEX_SEGMENT_START_AT);
        let end = le_u64(&header, SEGMENT_END_AT);
        if start != segment_start {
            return Err(corrupt(format!(
                "indexes the segment starting at {start}, not the one its name says"
            )));
        }
        if start >= end {
            return Err(corrupt(format!("the segment [{start}, {end}) is empty")));
        }
        let sections = read_directory(&directory, start, end, len).map_err(corrupt)?;
        Ok(Some(SegmentIndex {
            segment_start: start,
            segment_end: end,
            sections,
            file,
            path,
            check: AtomicU8::new(UNCHECKED),
        }))
    }

    /// The sections, sorted by `(topic_id, partition)`.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section of a partition, if it has batches in the segment.
    pub fn section(&self, topic_id: u32, partition: u32) -> Option<&Section> {
        self.sections
            .binary_search_by_key(&(topic_id, partition), Section::key)
            .ok()
            .map(|i| &self.sections[i])
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once [`SegmentIndex::verify`] passed (or
    /// [`SegmentIndex::mark_verified`]): every entry is as written.
    pub fn is_verified(&self) -> bool {
        self.check.load(Ordering::Acquire) == SOUND
    }

    /// Records that the file was just written from entries known good, or
    /// compared with them: it needs no [`SegmentIndex::verify`].
    pub fn mark_verified(&self) {
        self.check.store(SOUND, Ordering::Release);
    }

    /// [`SegmentIndex::verify`] unless it ran before: a sound file passes
    /// at once, and a damaged one fails at once without being read again.
    ///
    /// # Errors
    /// As [`SegmentIndex::verify`].
    pub fn verify_once(&self) -> Result<(), JournalError> {
        match self.check.load(Ordering::Acquire) {
            SOUND => Ok(()),
            DAMAGED => Err(JournalError::Corrupt(format!(
                "segment index {}: found damaged earlier",
                self.path.display()
            ))),
            _ => self.verify(),
        }
    }

    /// Reads every section's entries, a chunk at a time (no allocation),
    /// and checks its checksum, the rules every section's entries follow
    /// (see the [module docs](self)), and that they sum up to what the
    /// directory says: the first offset and position, the next offset, the
    /// bytes, and the last running maximum time.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] for the first section with a problem,
    /// naming the file, the section and, where it lies in one, the entry: a
    /// checksum mismatch when there is one (the entries were damaged on
    /// disk), else the first rule broken or sum wrong (they were written
    /// so). [`JournalError::Io`] when the file cannot be read.
    pub fn verify(&self) -> Result<(), JournalError> {
        let mut chunk = [0u8; CHUNK_BYTES];
        for s in &self.sections {
            let corrupt = |why: String| {
                JournalError::Corrupt(format!(
                    "segment index {}: topic {} partition {}: {why}",
                    self.path.display(),
                    s.topic_id,
                    s.partition
                ))
            };
            let mut check = SectionCheck::new(self.segment_start, self.segment_end);
            // The checksum is known only at the section's end. A broken
            // rule is reported only if the checksum holds, so that damage
            // on disk is called damage rather than a writer's mistake.
            let mut broken = None;
            let mut from = 0;
            while from < s.entry_count {
                let n = (s.entry_count - from).min(CHUNK_ENTRIES as u32);
                let raw = &mut chunk[..n as usize * INDEX_ENTRY_LEN];
                self.read_raw(s, from, raw)
                    .map_err(|e| JournalError::io(format!("read {}", self.path.display()), e))?;
                check.hash(raw);
                for b in raw.chunks_exact(INDEX_ENTRY_LEN) {
                    if broken.is_none() {
                        broken = check.push(&decode_entry(b)).err();
                    }
                }
                from += n;
            }
            let found = check.section(s.topic_id, s.partition, s.entries_at);
            let why = match (s.crc == found.crc, broken) {
                (true, Some(why)) => Some(why),
                _ => s.difference(&found),
            };
            if let Some(why) = why {
                self.check.store(DAMAGED, Ordering::Release);
                return Err(corrupt(why));
            }
        }
        self.mark_verified();
        Ok(())
    }

    /// Reads up to `max` entries of `s`, one of this index's sections,
    /// starting at entry `from`, into `out` (cleared first), a chunk per
    /// `pread`. Returns how many: `min(max, entry_count - from)`, 0 when
    /// `from >= entry_count`. Each entry is checked on its own (a batch of
    /// at least one byte inside the segment), not against the others: that
    /// is [`verify`](SegmentIndex::verify)'s part.
    ///
    /// # Errors
    /// An [`io::Error`] of kind [`io::ErrorKind::InvalidData`] for an entry
    /// that fails the check, or the error of a failed `pread`; `out` then
    /// holds the entries read before it.
    pub fn read_entries(
        &self,
        s: &Section,
        from: u32,
        max: usize,
        out: &mut Vec<IndexEntry>,
    ) -> io::Result<usize> {
        out.clear();
        let n = (s.entry_count.saturating_sub(from) as usize).min(max);
        let mut chunk = [0u8; CHUNK_BYTES];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(CHUNK_ENTRIES);
            let raw = &mut chunk[..k * INDEX_ENTRY_LEN];
            // Fits: from + done < entry_count.
            self.read_raw(s, from + done as u32, raw)?;
            out.reserve(k);
            for b in raw.chunks_exact(INDEX_ENTRY_LEN) {
                out.push(self.decode_checked(b)?);
            }
            done += k;
        }
        Ok(n)
    }

    /// Index (`< entry_count`) of the first entry of `s` whose
    /// `next_offset()` > `offset`: the batch holding `offset`, or the first
    /// one after it; `entry_count` if there is none. A binary search with
    /// one `pread` per step until [`CHUNK_ENTRIES`] entries are left, then
    /// one for those; offsets outside the section's are answered from the
    /// directory without reading.
    ///
    /// # Errors
    /// As [`read_entries`](SegmentIndex::read_entries).
    pub fn locate(&self, s: &Section, offset: u64) -> io::Result<u32> {
        if offset < s.first_offset {
            return Ok(0);
        }
        if offset >= s.next_offset {
            return Ok(s.entry_count);
        }
        self.partition_point(s, |e| e.next_offset() <= offset)
    }

    /// Index of the first entry of `s` whose `max_time_ms` >= `time_ms`
    /// (`entry_count` if none): the first batch that may hold a record
    /// appended at `time_ms` or later. Searched like
    /// [`locate`](SegmentIndex::locate).
    ///
    /// # Errors
    /// As [`read_entries`](SegmentIndex::read_entries).
    pub fn locate_time(&self, s: &Section, time_ms: i64) -> io::Result<u32> {
        if time_ms > s.max_time_ms {
            return Ok(s.entry_count);
        }
        self.partition_point(s, |e| e.max_time_ms < time_ms)
    }

    /// The number of leading entries of `s` for which `below` holds;
    /// `below` must hold for a prefix and fail for the rest.
    fn partition_point(&self, s: &Section, below: impl Fn(&IndexEntry) -> bool) -> io::Result<u32> {
        let (mut lo, mut hi) = (0, s.entry_count);
        let mut one = [0u8; INDEX_ENTRY_LEN];
        while hi - lo > CHUNK_ENTRIES as u32 {
            let mid = lo + (hi - lo) / 2;
            self.read_raw(s, mid, &mut one)?;
            if below(&self.decode_checked(&one)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut chunk = [0u8; CHUNK_BYTES];
        let raw = &mut chunk[..(hi - lo) as usize * INDEX_ENTRY_LEN];
        self.read_raw(s, lo, raw)?;
        for (k, b) in raw.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
            if !below(&self.decode_checked(b)?) {
                return Ok(lo + k as u32);
            }
        }
        Ok(hi)
    }

    /// Reads the raw bytes of `buf.len() / INDEX_ENTRY_LEN` entries of `s`
    /// from entry `from` on.
    fn read_raw(&self, s: &Section, from: u32, buf: &mut [u8]) -> io::Result<()> {
        let n = (buf.len() / INDEX_ENTRY_LEN) as u64;
        let at = s
            .entries_at
            .checked_add(u64::from(from) * INDEX_ENTRY_LEN as u64)
            .filter(|_| u64::from(from) + n <= u64::from(s.entry_count));
        match at {
            Some(at) => self.file.read_exact_at(buf, at),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "entries [{from}, {}) of a section of {} in {}",
                    u64::from(from) + n,
                    s.entry_count,
                    self.path.display()
                ),
            )),
        }
    }

    /// Decodes an entry read from the file and checks it on its own.
    fn decode_checked(&self, b: &[u8]) -> io::Result<IndexEntry> {
        let e = decode_entry(b);
        check_entry(&e, self.segment_start, self.segment_end).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment index {}: {why}", self.path.display()),
            )
        })?;
        Ok(e)
    }
}

/// Decodes and checks the directory of a file of `file_len` bytes indexing
/// the segment `[start, end)`.
fn read_directory(
    directory: &[u8],
    start: u64,
    end: u64,
    file_len: u64,
) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::with_capacity(directory.len() / INDEX_SECTION_LEN);
    let mut entries_at = (INDEX_HEADER_LEN + directory.len()) as u64;
    for (i, record) in directory.chunks_exact(INDEX_SECTION_LEN).enumerate() {
        let s = Section::decode(record);
        let what = |why: String| {
            format!(
                "section {i} (topic {} partition {}): {why}",
                s.topic_id, s.partition
            )
        };
        if let Some(prev) = sections.last() {
            if prev.key() >= s.key() {
                return Err(what(format!(
                    "not after topic {} partition {}: sections must be sorted and unique",
                    prev.topic_id, prev.partition
                )));
            }
        }
        s.check(entries_at, start, end).map_err(what)?;
        entries_at = match s.entries_end() {
            Some(e) if e <= file_len => e,
            _ => {
                return Err(what(format!(
                    "entries end beyond the file's {file_len} bytes"
                )))
            }
        };
        sections.push(s);
    }
    if entries_at != file_len {
        return Err(format!(
            "the entries end at byte {entries_at}, the file at {file_len}"
        ));
    }
    Ok(sections)
}

/// Removes `dir/<index_file_name(segment_start)>` if it exists. Does not
/// fsync the directory: the caller usually removes several files first.
///
/// # Errors
/// [`JournalError::Io`] when the file exists but cannot be removed.
pub fn remove(dir: &Path, segment_start: u64) -> Result<(), JournalError> {
    let path = dir.join(index_file_name(segment_start));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JournalError::io(format!("remove {}", path.display()), e)),
    }
}

/// What [`list`] finds: the index files as `(segment start, path)`, and
/// the leftover temporary files.
pub type IndexListing = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

/// The index files in `dir`, sorted by segment start, and the leftover
/// temporary files of interrupted writes (exactly an index file name plus
/// `.tmp`), sorted by path, for recovery to delete. Unlike segments, a
/// misnamed `.idx` file, or an entry with an index name that is not a
/// regular file, is simply ignored: an index can always be rebuilt.
///
/// # Errors
/// [`JournalError::Io`] when the directory cannot be read.
pub fn list(dir: &Path) -> Result<IndexListing, JournalError> {
    let context = || format!("list segment indexes in {}", dir.display());
    let (mut indexes, mut leftovers) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(|e| JournalError::io(context(), e))? {
        let entry = entry.map_err(|e| JournalError::io(context(), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let (start, tmp) = match name.strip_suffix(INDEX_TMP_SUFFIX) {
            Some(base) => (parse_index_file_name(base), true),
            None => (parse_index_file_name(name), false),
        };
        let Some(start) = start else {
            continue;
        };
        let file_type = entry
            .file_type()
            .map_err(|e| JournalError::io(context(), e))?;
        if !file_type.is_file() {
            continue;
        }
        if tmp {
            leftovers.push(entry.path());
        } else {
            indexes.push((start, entry.path()));
        }
    }
    indexes.sort_unstable_by_key(|&(start, _)| start);
    leftovers.sort_unstable();
    Ok((indexes, leftovers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::append_log::append_log;
    use crate::journal::index::PartitionIndex;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// The segment the tests index: 1 MiB from 1 GiB on.
    const START: u64 = 1 << 30;
    const END: u64 = START + (1 << 20);
    const TIME: i64 = 1_700_000_000_000;

    /// A partition's entries from `first_offset` at `position`, one per
    /// `(count, len, gap, time_step)`: offsets continue from batch to
    /// batch, positions leave `gap` bytes where other partitions' batches
    /// lie, and the max time is the running maximum of append times that
    /// move by `time_step` (the clock may step back).
    fn entries(
        first_offset: u64,
        position: u64,
        shape: &[(u32, u32, u64, i64)],
    ) -> Vec<IndexEntry> {
        let (mut offset, mut position, mut time, mut max_time) =
            (first_offset, position, TIME, i64::MIN);
        shape
            .iter()
            .map(|&(count, len, gap, time_step)| {
                position += gap;
                time += time_step;
                max_time = max_time.max(time);
                let e = IndexEntry {
                    base_offset: offset,
                    position,
                    len,
                    count,
                    max_time_ms: max_time,
                };
                offset = e.next_offset();
                position = e.end_position();
                e
            })
            .collect()
    }

    fn shared(entries: &[IndexEntry]) -> Arc<PartitionIndex> {
        let (mut w, r) = append_log();
        for e in entries {
            w.push(*e);
        }
        r
    }

    fn source(topic_id: u32, partition: u32, index: &PartitionIndex) -> SectionSource<'_> {
        SectionSource {
            topic_id,
            partition,
            entries: index,
            range: 0..index.len(),
        }
    }

    /// Three partitions: (2, 0) with more entries than one chunk, so that
    /// searches take binary steps; (7, 0) and (7, 1) with a few, one with a
    /// batch of no records.
    fn sample() -> Vec<((u32, u32), Vec<IndexEntry>)> {
        let many: Vec<_> = (0..300u32)
            .map(|i| {
                (
                    1 + i % 7,
                    100 + i % 300,
                    u64::from(i % 3) * 40,
                    i64::from(i % 5) - 1,
                )
            })
            .collect();
        vec![
            ((2, 0), entries(0, START, &many)),
            (
                (7, 0),
                entries(
                    1_000,
                    START + 300_000,
                    &[(3, 500, 0, 0), (1, 88, 9, -3), (4, 900, 0, 7)],
                ),
            ),
            (
                (7, 1),
                entries(
                    u64::from(u32::MAX) * 3,
                    START + 400_000,
                    &[(2, 200, 0, 1), (0, 100, 1, 2)],
                ),
            ),
        ]
    }

    /// Two sections of three and two entries: 32 + 2 × 64 + 5 × 32 bytes.
    fn small() -> Vec<((u32, u32), Vec<IndexEntry>)> {
        vec![
            (
                (1, 0),
                entries(
                    5,
                    START,
                    &[(2, 100, 0, 0), (1, 200, 50, 3), (3, 300, 0, -1)],
                ),
            ),
            (
                (1, 1),
                entries(0, START + 1000, &[(1, 90, 0, 0), (2, 120, 10, 4)]),
            ),
        ]
    }

    /// Writes `sections` (in reverse order, with two empty sources among
    /// them) as the index of the test segment.
    fn write_all(dir: &Path, sections: &[((u32, u32), Vec<IndexEntry>)]) {
        let logs: Vec<_> = sections.iter().map(|(k, es)| (*k, shared(es))).collect();
        let empty = shared(&[]);
        let mut sources: Vec<_> = logs
            .iter()
            .rev()
            .map(|((t, p), log)| source(*t, *p, log))
            .collect();
        sources.insert(1, source(5, 5, &empty));
        sources.push(SectionSource {
            range: 1..1,
            ..source(0, 0, &logs[0].1)
        });
        write(dir, START, END, &sources).unwrap();
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(index_file_name(START))
    }

    fn opened(dir: &Path) -> SegmentIndex {
        SegmentIndex::open(dir, START)
            .unwrap()
            .expect("the index exists")
    }

    fn read_all(idx: &SegmentIndex, s: &Section) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        assert_eq!(
            idx.read_entries(s, 0, usize::MAX, &mut out).unwrap(),
            s.entry_count as usize
        );
        out
    }

    /// Writes `bytes` as the test segment's index, then opens and verifies it.
    fn open_and_verify(dir: &Path, bytes: &[u8]) -> Result<(), JournalError> {
        std::fs::write(path(dir), bytes).unwrap();
        let idx = SegmentIndex::open(dir, START)?.expect("the file was just written");
        idx.verify()
    }

    fn expect_corrupt(result: Result<(), JournalError>, what: &str, says: &str) {
        match result {
            Err(JournalError::Corrupt(why)) => assert!(why.contains(says), "{what}: {why}"),
            other => panic!("{what}: expected Corrupt saying {says:?}, got {other:?}"),
        }
    }

    /// Recomputes every section checksum whose entries lie in `bytes`, then
    /// the header checksum: damage that kept its checksums.
    fn reseal(bytes: &mut [u8]) {
        if bytes.len() < INDEX_HEADER_LEN {
            return;
        }
        let count = le_u32(bytes, INDEX_SECTION_COUNT_AT) as usize;
        let dir_end = (INDEX_HEADER_LEN + count * INDEX_SECTION_LEN).min(bytes.len());
        let mut at = INDEX_HEADER_LEN;
        while at + INDEX_SECTION_LEN <= dir_end {
            let n = le_u32(bytes, at + INDEX_ENTRY_COUNT_AT) as usize;
            let from = le_u64(bytes, at + INDEX_ENTRIES_AT_AT);
            let range = usize::try_from(from)
                .ok()
                .and_then(|f| Some(f..f.checked_add(n * INDEX_ENTRY_LEN)?))
                .filter(|r| r.end <= bytes.len());
            if let Some(r) = range {
                let crc = crc32c::crc32c(&bytes[r]);
                set_u32(bytes, at + INDEX_ENTRIES_CRC_AT, crc);
            }
            at += INDEX_SECTION_LEN;
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&bytes[..INDEX_HEADER_CRC_AT]),
            &bytes[INDEX_HEADER_LEN..dir_end],
        );
        set_u32(bytes, INDEX_HEADER_CRC_AT, crc);
    }

    #[test]
    fn names_are_the_segments_twenty_digits_and_idx() {
        assert_eq!(index_file_name(0), "00000000000000000000.idx");
        assert_eq!(index_file_name(134_217_728), "00000000000134217728.idx");
        for start in [0, 1, 134_217_728, u64::MAX] {
            assert_eq!(parse_index_file_name(&index_file_name(start)), Some(start));
        }
        for bad in [
            "12.idx",
            "00000000000000000000.seg",
            "99999999999999999999.idx",
            "00000000000000000000.idx.tmp",
        ] {
            assert_eq!(parse_index_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn sections_round_trip_sorted_and_empty_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sample = sample();
        write_all(dir.path(), &sample);
        let idx = opened(dir.path());
        idx.verify().unwrap();
        assert_eq!((idx.segment_start, idx.segment_end), (START, END));
        let keys: Vec<_> = idx.sections().iter().map(Section::key).collect();
        assert_eq!(keys, vec![(2, 0), (7, 0), (7, 1)]);
        let total: usize = sample.iter().map(|(_, es)| es.len()).sum();
        let size = INDEX_HEADER_LEN + 3 * INDEX_SECTION_LEN + total * INDEX_ENTRY_LEN;
        assert_eq!(
            std::fs::metadata(path(dir.path())).unwrap().len(),
            size as u64
        );
        for ((topic_id, partition), es) in &sample {
            let s = idx.section(*topic_id, *partition).unwrap();
            let last = es.last().unwrap();
            let want = (
                es.len() as u32,
                es[0].base_offset,
                last.next_offset(),
                es.iter().map(|e| u64::from(e.len)).sum::<u64>(),
                es[0].position,
                last.max_time_ms,
            );
            let got = (
                s.entry_count,
                s.first_offset,
                s.next_offset,
                s.bytes,
                s.first_position,
                s.max_time_ms,
            );
            assert_eq!(got, want, "topic {topic_id} partition {partition}");
            assert_eq!(&read_all(&idx, s), es);
        }
        for (t, p) in [(5, 5), (0, 0), (2, 1), (7, 2), (u32::MAX, 0)] {
            assert!(idx.section(t, p).is_none(), "{t}/{p}");
        }
    }

    #[test]
    fn a_sub_range_of_a_partition_index_is_written_alone() {
        let dir = tempfile::tempdir().unwrap();
        let es = &sample()[0].1;
        let log = shared(es);
        let src = SectionSource {
            range: 10..20,
            ..source(3, 1, &log)
        };
        write(dir.path(), START, END, &[src]).unwrap();
        let idx = opened(dir.path());
        idx.verify().unwrap();
        let s = idx.section(3, 1).unwrap();
        assert_eq!(read_all(&idx, s), es[10..20]);
        assert_eq!(s.first_offset, es[10].base_offset);
    }

    #[test]
    fn an_index_without_sections_opens_empty() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), START, END, &[]).unwrap();
        assert_eq!(
            std::fs::metadata(path(dir.path())).unwrap().len(),
            INDEX_HEADER_LEN as u64
        );
        let idx = opened(dir.path());
        idx.verify().unwrap();
        assert!(idx.sections().is_empty());
        assert!(idx.section(0, 0).is_none());
    }

    #[test]
    fn read_entries_reads_any_window() {
        let dir = tempfile::tempdir().unwrap();
        let sample = sample();
        write_all(dir.path(), &sample);
        let idx = opened(dir.path());
        let es = &sample[0].1;
        let s = idx.section(2, 0).unwrap();
        let mut out = vec![es[0]; 3];
        for from in [0u32, 1, 127, 128, 129, 250, 299, 300, 301, u32::MAX] {
            for max in [0, 1, 2, 127, 128, 129, 200, 1000, usize::MAX] {
                let n = idx.read_entries(s, from, max, &mut out).unwrap();
                let lo = (from as usize).min(es.len());
                let want = &es[lo..lo + max.min(es.len() - lo)];
                assert_eq!(
                    (n, out.as_slice()),
                    (want.len(), want),
                    "from {from} max {max}"
                );
            }
        }
    }

    #[test]
    fn locate_and_locate_time_find_the_batches_of_the_example() {
        let dir = tempfile::tempdir().unwrap();
        let sample = sample();
        write_all(dir.path(), &sample);
        let idx = opened(dir.path());
        // (7, 0) holds offsets 1000..1003, 1003..1004, 1004..1008, with
        // max times T, T, T + 4 (the second batch's clock stepped back).
        let s = idx.section(7, 0).unwrap();
        for (offset, want) in [
            (0, 0),
            (999, 0),
            (1000, 0),
            (1002, 0),
            (1003, 1),
            (1004, 2),
            (1007, 2),
            (1008, 3),
            (u64::MAX, 3),
        ] {
            assert_eq!(idx.locate(s, offset).unwrap(), want, "offset {offset}");
        }
        for (time, want) in [
            (i64::MIN, 0),
            (TIME, 0),
            (TIME + 1, 2),
            (TIME + 4, 2),
            (TIME + 5, 3),
            (i64::MAX, 3),
        ] {
            assert_eq!(idx.locate_time(s, time).unwrap(), want, "time {time}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused_by_open_or_verify() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &small());
        let bytes = std::fs::read(path(dir.path())).unwrap();
        assert_eq!(
            bytes.len(),
            INDEX_HEADER_LEN + 2 * INDEX_SECTION_LEN + 5 * INDEX_ENTRY_LEN
        );
        open_and_verify(dir.path(), &bytes).unwrap();
        for i in 0..bytes.len() {
            for mask in [0x01, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                expect_corrupt(
                    open_and_verify(dir.path(), &bad),
                    &format!("byte {i} ^ {mask:#x}"),
                    "",
                );
            }
        }
    }

    #[test]
    fn truncated_and_extended_files_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &small());
        let bytes = std::fs::read(path(dir.path())).unwrap();
        for len in 0..bytes.len() {
            let says = if len < INDEX_HEADER_LEN {
                "shorter than"
            } else {
                ""
            };
            expect_corrupt(
                open_and_verify(dir.path(), &bytes[..len]),
                &format!("cut to {len}"),
                says,
            );
        }
        for extra in [1, INDEX_ENTRY_LEN, 4096] {
            let mut long = bytes.clone();
            long.resize(bytes.len() + extra, 0);
            expect_corrupt(
                open_and_verify(dir.path(), &long),
                &format!("{extra} more"),
                "the entries end at byte",
            );
        }
    }

    #[test]
    fn a_missing_file_is_none_and_removing_it_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SegmentIndex::open(dir.path(), START).unwrap().is_none());
        remove(dir.path(), START).unwrap();
        write_all(dir.path(), &small());
        assert!(SegmentIndex::open(dir.path(), START).unwrap().is_some());
        assert!(SegmentIndex::open(dir.path(), START + 1).unwrap().is_none());
        remove(dir.path(), START).unwrap();
        assert!(SegmentIndex::open(dir.path(), START).unwrap().is_none());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn write_refuses_entries_that_break_the_rules() {
        let good = small().remove(0).1;
        type Damage = fn(&mut Vec<IndexEntry>);
        let cases: [(&str, Damage); 8] = [
            ("does not continue", |es| es[1].base_offset += 1),
            ("does not continue", |es| es[2].base_offset -= 1),
            ("starts before the previous one ends", |es| {
                es[1].position = es[0].position + 1
            }),
            ("starts before the previous one ends", |es| {
                es[2].position = es[0].position
            }),
            ("outside the segment", |es| es[0].position = START - 1),
            ("outside the segment", |es| {
                es[2].position = END - u64::from(es[2].len) + 1
            }),
            ("is empty", |es| es[1].len = 0),
            ("falls below", |es| {
                es[2].max_time_ms = es[1].max_time_ms - 1
            }),
        ];
        let dir = tempfile::tempdir().unwrap();
        let attempt = |es: &[IndexEntry], start: u64, end: u64| {
            let log = shared(es);
            let result = write(dir.path(), start, end, &[source(1, 0, &log)]);
            assert!(
                std::fs::read_dir(dir.path()).unwrap().next().is_none(),
                "nothing is written"
            );
            result
        };
        for (says, damage) in cases {
            let mut es = good.clone();
            damage(&mut es);
            expect_corrupt(attempt(&es, START, END), says, says);
        }
        let mut overflow = good.clone();
        overflow.truncate(1);
        overflow[0].base_offset = u64::MAX - 1;
        expect_corrupt(attempt(&overflow, START, END), "overflow", "overflow");
        expect_corrupt(attempt(&good, START, START), "empty segment", "is empty");

        let log = shared(&good);
        let too_far = SectionSource {
            range: 1..good.len() + 1,
            ..source(1, 0, &log)
        };
        expect_corrupt(write(dir.path(), START, END, &[too_far]), "range", "held");
        let twice = [source(1, 0, &log), source(2, 0, &log), source(1, 0, &log)];
        expect_corrupt(
            write(dir.path(), START, END, &twice),
            "twice",
            "two sections for topic 1 partition 0",
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn open_refuses_a_directory_that_breaks_the_layout_even_with_valid_checksums() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &small());
        let bytes = std::fs::read(path(dir.path())).unwrap();
        const S0: usize = INDEX_HEADER_LEN;
        const S1: usize = INDEX_HEADER_LEN + INDEX_SECTION_LEN;
        type Damage = fn(&mut [u8]);
        let cases: [(&str, Damage); 14] = [
            ("bad magic", |b| b[0] = b'X'),
            ("unsupported version 2", |b| b[VERSION_AT] = 2),
            ("reserved", |b| b[RESERVED_AT] = 1),
            ("is empty", |b| set_u64(b, SEGMENT_END_AT, START)),
            ("is empty", |b| set_u64(b, SEGMENT_END_AT, 0)),
            ("cannot fit", |b| {
                set_u32(b, INDEX_SECTION_COUNT_AT, u32::MAX)
            }),
            ("cannot fit", |b| set_u32(b, INDEX_SECTION_COUNT_AT, 4)),
            ("sorted and unique", |b| set_u32(b, S1 + PARTITION_AT, 0)),
            ("sorted and unique", |b| set_u32(b, S0 + TOPIC_ID_AT, 2)),
            ("no entries", |b| set_u32(b, S0 + INDEX_ENTRY_COUNT_AT, 0)),
            ("entries at byte", |b| {
                set_u64(
                    b,
                    S1 + INDEX_ENTRIES_AT_AT,
                    le_u64(b, S1 + INDEX_ENTRIES_AT_AT) + 1,
                )
            }),
            ("impossible for 3 batches", |b| {
                set_u64(b, S0 + NEXT_OFFSET_AT, 4)
            }),
            ("impossible for 2 batches", |b| set_u64(b, S1 + BYTES_AT, 1)),
            ("do not fit in the segment", |b| {
                set_u64(b, S1 + FIRST_POSITION_AT, END - 100)
            }),
        ];
        for (says, damage) in cases {
            let mut bad = bytes.clone();
            damage(&mut bad);
            reseal(&mut bad);
            expect_corrupt(open_and_verify(dir.path(), &bad), says, says);
        }
        // Counts that claim more than the file holds end it early or late.
        let mut more = bytes.clone();
        set_u32(&mut more, S0 + INDEX_ENTRY_COUNT_AT, u32::MAX);
        reseal(&mut more);
        expect_corrupt(open_and_verify(dir.path(), &more), "huge entry count", "");
        // The segment named inside is not the one the name says.
        std::fs::write(dir.path().join(index_file_name(START + 1)), &bytes).unwrap();
        let err = SegmentIndex::open(dir.path(), START + 1).unwrap_err();
        assert!(
            err.to_string().contains("not the one its name says"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&index_file_name(START + 1)),
            "{err}"
        );
    }

    #[test]
    fn verify_refuses_entries_that_break_the_rules_even_with_valid_checksums() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &small());
        let bytes = std::fs::read(path(dir.path())).unwrap();
        let e = |i: usize| INDEX_HEADER_LEN + 2 * INDEX_SECTION_LEN + i * INDEX_ENTRY_LEN;
        type Damage = fn(&mut [u8], usize, usize);
        let cases: [(&str, Damage); 8] = [
            ("does not continue", |b, _, e1| {
                set_u64(b, e1 + BASE_OFFSET_AT, 99)
            }),
            ("starts before the previous one ends", |b, e0, e1| {
                set_u64(b, e1 + POSITION_AT, le_u64(b, e0 + POSITION_AT))
            }),
            ("falls below", |b, _, e1| {
                set_u64(b, e1 + ENTRY_MAX_TIME_AT, 0)
            }),
            ("is empty", |b, e0, _| set_u32(b, e0 + LEN_AT, 0)),
            ("first_offset", |b, _, _| {
                set_u64(b, INDEX_HEADER_LEN + FIRST_OFFSET_AT, 6)
            }),
            ("max_time_ms", |b, _, _| {
                set_u64(b, INDEX_HEADER_LEN + SECTION_MAX_TIME_AT, 7)
            }),
            ("bytes", |b, _, _| {
                set_u64(b, INDEX_HEADER_LEN + BYTES_AT, 601)
            }),
            ("first_position", |b, _, _| {
                set_u64(b, INDEX_HEADER_LEN + FIRST_POSITION_AT, START + 1)
            }),
        ];
        for (says, damage) in cases {
            let mut bad = bytes.clone();
            damage(&mut bad, e(0), e(1));
            reseal(&mut bad);
            expect_corrupt(open_and_verify(dir.path(), &bad), says, says);
        }
        // Unsealed entries fail the section checksum.
        let mut bad = bytes.clone();
        bad[e(4)] ^= 1; // the last entry's base offset: breaks a rule too
        expect_corrupt(
            open_and_verify(dir.path(), &bad),
            "unsealed",
            "topic 1 partition 1: entries checksum",
        );
    }

    #[test]
    fn an_entry_outside_the_segment_is_invalid_data_when_read() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &small());
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let e1 = INDEX_HEADER_LEN + 2 * INDEX_SECTION_LEN + INDEX_ENTRY_LEN;
        set_u64(&mut bytes, e1 + POSITION_AT, END);
        reseal(&mut bytes);
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let idx = opened(dir.path());
        let s = idx.section(1, 0).unwrap();
        let mut out = Vec::new();
        let err = idx.read_entries(s, 0, 10, &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("outside the segment"), "{err}");
        assert_eq!(out.len(), 1, "the entry before it was read");
        assert_eq!(idx.read_entries(s, 2, 10, &mut out).unwrap(), 1);
        assert_eq!(
            idx.locate(s, 7).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn list_sorts_index_files_and_returns_tmp_leftovers_apart() {
        let dir = tempfile::tempdir().unwrap();
        for start in [4096u64, 0, 1 << 40] {
            std::fs::write(dir.path().join(index_file_name(start)), b"x").unwrap();
        }
        for other in [
            "LOCK",
            "checkpoint",
            "00000000000000000000.seg",
            "7.idx",
            "abc.idx",
            "99999999999999999999.idx",
            "00000000000000000000.idx.old",
            "7.idx.tmp",
            "00000000000000000000.seg.tmp",
        ] {
            std::fs::write(dir.path().join(other), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(index_file_name(8192))).unwrap();
        std::fs::create_dir(dir.path().join(tmp_file_name(8192))).unwrap();
        for start in [12_288u64, 0] {
            std::fs::write(dir.path().join(tmp_file_name(start)), b"x").unwrap();
        }
        let (indexes, leftovers) = list(dir.path()).unwrap();
        let starts: Vec<u64> = indexes.iter().map(|(s, _)| *s).collect();
        assert_eq!(starts, vec![0, 4096, 1 << 40]);
        assert_eq!(indexes[1].1, dir.path().join("00000000000000004096.idx"));
        assert_eq!(
            leftovers,
            vec![
                dir.path().join("00000000000000000000.idx.tmp"),
                dir.path().join("00000000000000012288.idx.tmp"),
            ]
        );
        assert!(list(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn a_leftover_tmp_file_neither_confuses_open_nor_blocks_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(tmp_file_name(START));
        // A crash before the rename: only the temporary file is there.
        std::fs::write(&tmp, b"HTIX half written").unwrap();
        assert!(SegmentIndex::open(dir.path(), START).unwrap().is_none());
        write_all(dir.path(), &small());
        assert!(!tmp.exists(), "the write replaced the leftover");
        // A crash during a later rewrite leaves the index as it was.
        std::fs::write(&tmp, b"garbage").unwrap();
        let idx = opened(dir.path());
        idx.verify().unwrap();
        assert_eq!(idx.sections().len(), 2);
        assert_eq!(list(dir.path()).unwrap().1, vec![tmp.clone()]);
        // Rewriting replaces the file as a whole.
        write_all(dir.path(), &sample());
        let idx = opened(dir.path());
        idx.verify().unwrap();
        assert_eq!(idx.sections().len(), 3);
        assert!(!tmp.exists());
    }

    /// The linear answers [`SegmentIndex::locate`] and
    /// [`SegmentIndex::locate_time`] must give.
    fn scan_offset(es: &[IndexEntry], offset: u64) -> u32 {
        es.iter()
            .position(|e| e.next_offset() > offset)
            .unwrap_or(es.len()) as u32
    }

    fn scan_time(es: &[IndexEntry], time_ms: i64) -> u32 {
        es.iter()
            .position(|e| e.max_time_ms >= time_ms)
            .unwrap_or(es.len()) as u32
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn locate_and_locate_time_agree_with_linear_scans(
            shape in prop::collection::vec((0u32..50, 1u32..2000, 0u64..300, -20i64..40), 1..700),
            first_offset in prop_oneof![Just(0u64), 0u64..1 << 40, Just(u64::MAX - 100_000)],
            extra in prop::collection::vec((any::<u64>(), any::<i64>()), 16),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let es = entries(first_offset, START + 64, &shape);
            // A section before it, so that its entries do not start right
            // after the directory.
            let before = entries(0, START, &[(1, 64, 0, 0)]);
            let (log, before_log) = (shared(&es), shared(&before));
            write(dir.path(), START, END, &[source(9, 9, &log), source(0, 1, &before_log)]).unwrap();
            let idx = opened(dir.path());
            idx.verify().unwrap();
            let s = idx.section(9, 9).unwrap();
            let mut offsets: Vec<u64> = es
                .iter()
                .flat_map(|e| [e.base_offset.saturating_sub(1), e.base_offset, e.next_offset()])
                .chain([0, u64::MAX])
                .collect();
            let mut times: Vec<i64> = es
                .iter()
                .flat_map(|e| [e.max_time_ms - 1, e.max_time_ms, e.max_time_ms + 1])
                .chain([i64::MIN, i64::MAX])
                .collect();
            for (o, t) in extra {
                offsets.push(first_offset.saturating_add(o % 100_000));
                times.push(TIME + t % 50_000);
            }
            for offset in offsets {
                prop_assert_eq!(idx.locate(s, offset).unwrap(), scan_offset(&es, offset), "offset {}", offset);
            }
            for time in times {
                prop_assert_eq!(idx.locate_time(s, time).unwrap(), scan_time(&es, time), "time {}", time);
            }
        }

        /// Damage that keeps its checksums gives an index or an error,
        /// never a panic; an index that verifies reads back whole.
        #[test]
        fn resealed_damage_opens_or_fails_cleanly(
            writes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            write_all(dir.path(), &small());
            let mut bytes = std::fs::read(path(dir.path())).unwrap();
            for (at, b) in writes {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            reseal(&mut bytes);
            std::fs::write(path(dir.path()), &bytes).unwrap();
            let Ok(Some(idx)) = SegmentIndex::open(dir.path(), START) else {
                return Ok(());
            };
            let verified = idx.verify().is_ok();
            let mut out = Vec::new();
            for s in idx.sections() {
                let read = idx.read_entries(s, 0, usize::MAX, &mut out);
                prop_assert!(!verified || read.is_ok());
                for probe in [0, s.first_offset, s.next_offset.saturating_sub(1), u64::MAX] {
                    let found = idx.locate(s, probe);
                    prop_assert!(found.as_ref().map_or(!verified, |&i| i <= s.entry_count));
                }
                let found = idx.locate_time(s, TIME);
                prop_assert!(found.as_ref().map_or(!verified, |&i| i <= s.entry_count));
            }
        }
    }
}
