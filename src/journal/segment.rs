//! Segment files: the journal is cut into preallocated files, each named by
//! the journal position of its first byte and mapped into memory.
//!
//! Preallocating a whole segment up front (`fallocate`) means appends never
//! extend the file, so `fdatasync` after an append does not have to write
//! file-size metadata, and running out of disk shows up when a segment is
//! created (a clean error) rather than in the middle of an append through
//! the map (a `SIGBUS`). Unused space reads as zeros, which is how recovery
//! recognises the end of the data.
//!
//! The writer fills a segment through its shared mapping; the flusher makes
//! it durable with `fdatasync` on the same file; readers use `pread` on the
//! file. All three see the same page cache.

use super::dir::sync_dir;
use super::error::JournalError;
use memmap2::{MmapMut, MmapOptions};
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Digits of the start position in a segment file name: enough for any
/// `u64`, zero-padded so names sort like positions.
const START_DIGITS: usize = 20;

/// The file name of the segment starting at journal position `start`:
/// twenty zero-padded decimal digits and `.seg`.
pub fn segment_file_name(start: u64) -> String {
    start_file_name(start, SEGMENT_SUFFIX)
}

/// The start position a segment file name encodes, when it is exactly what
/// [`segment_file_name`] produces.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_start_file_name(name, SEGMENT_SUFFIX)
}

/// The name of a file that belongs to the segment starting at `start`:
/// twenty zero-padded decimal digits and `suffix` (`.seg` for the segment
/// itself, `.idx` for its index).
pub fn start_file_name(start: u64, suffix: &str) -> String {
    format!("{start:0width$}{suffix}", width = START_DIGITS)
}

/// The start position `name` encodes, when it is exactly what
/// [`start_file_name`] produces for `suffix`.
pub fn parse_start_file_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != START_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let start = digits.parse().ok()?;
    // Round-trip so that exactly one name maps to each start.
    (start_file_name(start, suffix) == name).then_some(start)
}

/// The segment files in `dir`, sorted by start position. Other files (the
/// lock, the checkpoint, temporary files) are ignored.
///
/// # Errors
/// [`JournalError::Corrupt`] for an entry whose name ends in `.seg` but is
/// not a segment name, or that is not a regular file: the journal does not
/// guess what such a file holds. [`JournalError::Io`] when the directory
/// cannot be read.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let context = || format!("list segments in {}", dir.display());
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| JournalError::io(context(), e))? {
        let entry = entry.map_err(|e| JournalError::io(context(), e))?;
        let name = entry.file_name();
        if !name.as_bytes().ends_with(SEGMENT_SUFFIX.as_bytes()) {
            continue;
        }
        let path = entry.path();
        let start = name
            .to_str()
            .and_then(parse_segment_file_name)
            .ok_or_else(|| {
                JournalError::Corrupt(format!(
                    "{} is not a segment file name (20 digits and .seg)",
                    path.display()
                ))
            })?;
        let file_type = entry
            .file_type()
            .map_err(|e| JournalError::io(context(), e))?;
        if !file_type.is_file() {
            return Err(JournalError::Corrupt(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        segments.push((start, path));
    }
    segments.sort_unstable_by_key(|&(start, _)| start);
    Ok(segments)
}

/// One segment file, mapped read-write and shared.
#[derive(Debug)]
pub struct Segment {
    start: u64,
    capacity: usize,
    path: PathBuf,
    file: Arc<File>,
    map: MmapMut,
}

impl Segment {
    /// Creates `dir/<segment_file_name(start)>` (it must not exist),
    /// preallocates `capacity` bytes, fsyncs the file and the directory so
    /// the segment survives a crash, and maps it.
    ///
    /// On a filesystem without `fallocate` the file is extended with
    /// `set_len` instead; it is then sparse, and a full disk would surface
    /// later as `SIGBUS` on a write through the map.
    ///
    /// # Errors
    /// [`JournalError::StorageFull`] when the disk has no room for the
    /// segment; [`JournalError::Io`] for any other failure, including an
    /// existing file of that name. Except for the latter, a file this call
    /// created is removed again on failure, so no partial segment remains.
    ///
    /// # Panics
    /// When `capacity` is 0 (a programmer error: the configuration requires
    /// room for at least one batch).
    pub fn create(dir: &Path, start: u64, capacity: usize) -> Result<Segment, JournalError> {
        assert!(capacity > 0, "a segment needs capacity");
        let path = dir.join(segment_file_name(start));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| JournalError::io(format!("create {}", path.display()), e))?;
        let prepared = preallocate(&file, capacity)
            .map_err(|e| JournalError::io(format!("preallocate {}", path.display()), e))
            .and_then(|()| {
                file.sync_all()
                    .map_err(|e| JournalError::io(format!("fsync {}", path.display()), e))
            })
            .and_then(|()| sync_dir(dir))
            .and_then(|()| map(&file, capacity, &path));
        match prepared {
            Ok(map) => Ok(Segment {
                start,
                capacity,
                path,
                file: Arc::new(file),
                map,
            }),
            Err(e) => {
                // Best effort: the error being reported is the first one,
                // and a leftover file would only be an empty-looking segment.
                drop(file);
                let _ = std::fs::remove_file(&path);
                let _ = sync_dir(dir);
                Err(e)
            }
        }
    }

    /// Opens an existing segment read-write and maps it; its capacity is
    /// the file's length.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] when the file is empty (a segment is never
    /// empty: it is preallocated when created); [`JournalError::Io`] when
    /// it cannot be opened or mapped.
    pub fn open(path: &Path, start: u64) -> Result<Segment, JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| JournalError::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| JournalError::io(format!("stat {}", path.display()), e))?
            .len();
        if len == 0 {
            return Err(JournalError::Corrupt(format!(
                "segment {} is empty",
                path.display()
            )));
        }
        let capacity = usize::try_from(len).map_err(|_| {
            JournalError::Corrupt(format!("segment {} is {len} bytes", path.display()))
        })?;
        let map = map(&file, capacity, path)?;
        Ok(Segment {
            start,
            capacity,
            path: path.to_path_buf(),
            file: Arc::new(file),
            map,
        })
    }

    /// Journal position of the segment's first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Bytes the segment holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Journal position one past the segment's last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.capacity as u64)
    }

    /// The segment's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole mapped segment.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The whole mapped segment, for the writer. Writes reach the page
    /// cache at once (readers' `pread` sees them) and the disk at the next
    /// `fdatasync` of [`file`](Segment::file).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// The file, shared with the flusher (fdatasync) and readers (pread).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Zeroes `[at, capacity)` durably, so that a torn tail can never be
    /// read as data again (not even if a later write stops short of it).
    /// Uses `fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`, which
    /// turns the range into unwritten extents without writing it; where
    /// the filesystem lacks that, writes zeros through the map up to the
    /// last non-zero byte only. Then `fdatasync`.
    ///
    /// # Errors
    /// [`JournalError::Io`] or [`JournalError::StorageFull`] when zeroing
    /// or syncing fails.
    ///
    /// # Panics
    /// When `at > capacity` (a programmer error).
    pub fn zero_from(&mut self, at: usize) -> Result<(), JournalError> {
        assert!(
            at <= self.capacity,
            "zero_from({at}) beyond {}",
            self.capacity
        );
        if at == self.capacity {
            return Ok(());
        }
        let path = self.path.clone();
        let context = |what: &str| format!("{what} {} from byte {at}", path.display());
        let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        // Both fit: capacity came from a file length or an fallocate length.
        let (offset, len) = (at as i64, (self.capacity - at) as i64);
        match fallocate(self.file.as_raw_fd(), flags, offset, len) {
            Ok(()) => {}
            // Filesystems without the mode say EOPNOTSUPP; very old kernels
            // or unusual filesystems answer ENOSYS or EINVAL. Writing the
            // zeros ourselves is always correct, only slower.
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {
                self.zero_through_map(at)
                    .map_err(|e| JournalError::io(context("zero"), e))?;
            }
            Err(errno) => return Err(JournalError::io(context("zero"), errno.into())),
        }
        self.file
            .sync_data()
            .map_err(|e| JournalError::io(context("fdatasync after zeroing"), e))
    }

    /// The fallback of [`zero_from`](Segment::zero_from): writes zeros
    /// through the map up to the last non-zero byte (the rest of a
    /// preallocated segment already reads as zeros, and writing it would
    /// turn unwritten extents into written ones for nothing) and flushes
    /// that range.
    fn zero_through_map(&mut self, at: usize) -> std::io::Result<()> {
        let Some(last) = self.map[at..].iter().rposition(|&b| b != 0) else {
            return Ok(());
        };
        let end = at + last + 1;
        self.map[at..end].fill(0);
        self.map.flush_range(at, end - at)
    }
}

/// Reserves `capacity` bytes of disk for `file`, or at least sets its
/// length where the filesystem cannot reserve.
/// Grows a segment that holds no data yet to `capacity` bytes (a batch
/// larger than its capacity must start right at its start, since positions
/// are contiguous and a second file cannot start at the same position).
///
/// # Errors
/// [`JournalError::StorageFull`] when the disk has no room;
/// [`JournalError::Io`] otherwise.
pub fn grow(file: &File, path: &Path, capacity: usize) -> Result<(), JournalError> {
    preallocate(file, capacity)
        .map_err(|e| JournalError::io(format!("preallocate {}", path.display()), e))?;
    file.sync_all()
        .map_err(|e| JournalError::io(format!("fsync {}", path.display()), e))
}

fn preallocate(file: &File, capacity: usize) -> std::io::Result<()> {
    let len = i64::try_from(capacity).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("segment capacity {capacity} does not fit in off_t"),
        )
    })?;
    match fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(Errno::EOPNOTSUPP) => file.set_len(capacity as u64),
        Err(errno) => Err(errno.into()),
    }
}

/// Maps `capacity` bytes of `file` read-write and shared.
fn map(file: &File, capacity: usize, path: &Path) -> Result<MmapMut, JournalError> {
    // SAFETY: a mapping is only sound while no one else truncates or
    // rewrites the file behind it. The data directory is locked
    // (`lock::lock_dir`) so no other broker touches it, and hutong never
    // truncates a segment: it only removes whole segment files, which
    // leaves existing mappings intact. Every access through the map is
    // bounds-checked slice access within `capacity`, which is at most the
    // file's length.
    unsafe { MmapOptions::new().len(capacity).map_mut(file) }
        .map_err(|e| JournalError::io(format!("mmap {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    const CAP: usize = 64 * 1024;

    #[test]
    fn names_are_twenty_digits_and_parse_back() {
        assert_eq!(segment_file_name(0), "00000000000000000000.seg");
        assert_eq!(segment_file_name(134_217_728), "00000000000134217728.seg");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.seg");
        for start in [0, 1, 134_217_728, u64::MAX] {
            assert_eq!(
                parse_segment_file_name(&segment_file_name(start)),
                Some(start)
            );
        }
        for bad in [
            "12.seg",
            "0000000000000000000a.seg",
            "99999999999999999999.seg",
            "+0000000000000000001.seg",
            "00000000000000000000.seg.tmp",
            "00000000000000000000",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn listing_sorts_segments_and_ignores_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        for start in [4096u64, 0, 1 << 40, 8192] {
            std::fs::write(tmp.path().join(segment_file_name(start)), b"x").unwrap();
        }
        for other in [
            "LOCK",
            "checkpoint",
            "checkpoint.tmp",
            "00000000000000000000.seg.tmp",
        ] {
            std::fs::write(tmp.path().join(other), b"x").unwrap();
        }
        let listed = list_segments(tmp.path()).unwrap();
        let starts: Vec<u64> = listed.iter().map(|(s, _)| *s).collect();
        assert_eq!(starts, vec![0, 4096, 8192, 1 << 40]);
        assert_eq!(listed[1].1, tmp.path().join("00000000000000004096.seg"));
    }

    #[test]
    fn a_malformed_segment_name_is_corrupt() {
        for bad in ["7.seg", "abc.seg", "99999999999999999999.seg"] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join(segment_file_name(0)), b"x").unwrap();
            std::fs::write(tmp.path().join(bad), b"x").unwrap();
            assert!(
                matches!(list_segments(tmp.path()), Err(JournalError::Corrupt(_))),
                "{bad}"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(segment_file_name(0))).unwrap();
        assert!(matches!(
            list_segments(tmp.path()),
            Err(JournalError::Corrupt(_))
        ));
    }

    #[test]
    fn a_created_segment_is_preallocated_zeroed_and_named_by_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let seg = Segment::create(tmp.path(), 8192, CAP).unwrap();
        assert_eq!(
            (seg.start(), seg.capacity(), seg.end()),
            (8192, CAP, 8192 + CAP as u64)
        );
        assert_eq!(seg.path(), tmp.path().join("00000000000000008192.seg"));
        assert!(seg.bytes().iter().all(|&b| b == 0));
        let meta = std::fs::metadata(seg.path()).unwrap();
        assert_eq!(meta.len(), CAP as u64);
        // fallocate reserved real blocks: the file is not sparse.
        assert!(
            meta.blocks() * 512 >= CAP as u64,
            "{} blocks",
            meta.blocks()
        );
        assert_eq!(list_segments(tmp.path()).unwrap().len(), 1);
    }

    #[test]
    fn creating_an_existing_segment_fails_and_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(tmp.path(), 0, CAP).unwrap();
        seg.bytes_mut()[0] = 7;
        let err = Segment::create(tmp.path(), 0, CAP).unwrap_err();
        assert!(
            matches!(&err, JournalError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        assert_eq!(seg.bytes()[0], 7);
        assert!(seg.path().exists());
    }

    #[test]
    fn a_failed_preallocation_leaves_no_file_behind() {
        let tmp = tempfile::tempdir().unwrap();
        // Beyond any filesystem's largest file: refused before allocating.
        for capacity in [1usize << 62, usize::MAX] {
            let err = Segment::create(tmp.path(), 0, capacity).unwrap_err();
            assert!(matches!(err, JournalError::Io { .. }), "{err:?}");
            assert!(list_segments(tmp.path()).unwrap().is_empty());
        }
    }

    #[test]
    fn writes_through_the_map_are_seen_by_pread_and_by_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(tmp.path(), 0, CAP).unwrap();
        seg.bytes_mut()[100..105].copy_from_slice(b"hello");
        let mut buf = [0u8; 5];
        seg.file().read_exact_at(&mut buf, 100).unwrap();
        assert_eq!(&buf, b"hello");
        seg.file().sync_data().unwrap();
        let path = seg.path().to_path_buf();
        drop(seg);
        let reopened = Segment::open(&path, 0).unwrap();
        assert_eq!(reopened.capacity(), CAP);
        assert_eq!(&reopened.bytes()[100..105], b"hello");
    }

    #[test]
    fn opening_an_empty_or_missing_segment_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join(segment_file_name(0));
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            Segment::open(&empty, 0),
            Err(JournalError::Corrupt(_))
        ));
        let missing = tmp.path().join(segment_file_name(1));
        assert!(matches!(
            Segment::open(&missing, 1),
            Err(JournalError::Io { .. })
        ));
    }

    /// Fills the segment with a non-zero pattern and makes it durable.
    fn filled(dir: &Path) -> Segment {
        let mut seg = Segment::create(dir, 0, CAP).unwrap();
        for (i, b) in seg.bytes_mut().iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        seg.file().sync_data().unwrap();
        seg
    }

    fn assert_zeroed_from(seg: &Segment, at: usize) {
        let check = |bytes: &[u8]| {
            assert!(bytes[..at]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8 + 1));
            assert!(bytes[at..].iter().all(|&b| b == 0));
        };
        check(seg.bytes());
        // The file agrees with the map.
        check(&std::fs::read(seg.path()).unwrap());
    }

    #[test]
    fn zero_from_clears_the_tail_and_keeps_the_head() {
        let tmp = tempfile::tempdir().unwrap();
        for at in [0, 1, 4095, 4096, 10_000, CAP - 1, CAP] {
            let mut seg = filled(tmp.path());
            seg.zero_from(at).unwrap();
            assert_zeroed_from(&seg, at);
            assert_eq!(
                std::fs::metadata(seg.path()).unwrap().len(),
                CAP as u64,
                "size kept"
            );
            let path = seg.path().to_path_buf();
            drop(seg);
            assert_zeroed_from(&Segment::open(&path, 0).unwrap(), at);
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn the_map_fallback_zeroes_the_same_range() {
        let tmp = tempfile::tempdir().unwrap();
        for at in [0, 5_000, CAP - 1] {
            let mut seg = filled(tmp.path());
            seg.zero_through_map(at).unwrap();
            assert_zeroed_from(&seg, at);
            std::fs::remove_file(seg.path()).unwrap();
        }
    }

    #[test]
    fn zero_from_falls_back_where_zero_range_is_unsupported() {
        // tmpfs preallocates but has no FALLOC_FL_ZERO_RANGE, so zero_from
        // takes the map path there; skip where there is no /dev/shm.
        let Ok(tmp) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let mut seg = filled(tmp.path());
        let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let probe = fallocate(seg.file().as_raw_fd(), flags, CAP as i64 - 1, 1);
        assert_eq!(
            probe,
            Err(Errno::EOPNOTSUPP),
            "tmpfs grew ZERO_RANGE support"
        );
        seg.zero_from(3_000).unwrap();
        assert_zeroed_from(&seg, 3_000);
    }

    #[test]
    fn the_map_fallback_writes_nothing_over_an_all_zero_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(tmp.path(), 0, CAP).unwrap();
        seg.bytes_mut()[..10].fill(9);
        seg.zero_through_map(10).unwrap();
        assert_eq!(&seg.bytes()[..11], &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0]);
    }
}
