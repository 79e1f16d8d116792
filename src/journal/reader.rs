//! [`JournalReader`]: reading journal bytes from threads other than the
//! writer (the reader serves fetches, the replicator sends appends).
//!
//! Bytes below W never change (the write-ahead-log property), so a reader
//! needs no lock: it reads with `pread` from its own list of segment files,
//! which the writer keeps current through the events it sends when it
//! starts a segment or cuts the journal. A range may cross segment files;
//! the reader splits it at their boundaries.

use super::log::SegmentFile;
use std::io::{Error, ErrorKind};
use std::os::unix::fs::FileExt;

/// The journal's segment files as a reading thread knows them, oldest
/// first, and the reads over them.
pub struct JournalReader {
    segments: Vec<SegmentFile>,
}

impl JournalReader {
    /// A reader over `segments` (oldest first, as
    /// `Journal::segment_files` gives them).
    pub fn new(segments: Vec<SegmentFile>) -> JournalReader {
        JournalReader { segments }
    }

    /// Takes in a segment the writer started: it begins where the journal's
    /// data ended, after every segment known so far.
    pub fn add_segment(&mut self, segment: SegmentFile) {
        debug_assert!(
            self.segments
                .last()
                .is_none_or(|(start, _)| *start < segment.0),
            "segments are announced in journal order"
        );
        self.segments.push(segment);
    }

    /// Lets go of the segment files below `position`, a segment start (the
    /// journal's first kept byte after retention deleted older ones).
    pub fn forget_below(&mut self, position: u64) {
        let gone = self
            .segments
            .partition_point(|(start, _)| *start < position);
        self.segments.drain(..gone);
    }

    /// Takes in the segment files after the writer cut the journal.
    pub fn reset(&mut self, segments: Vec<SegmentFile>) {
        self.segments = segments;
    }

    /// Fills `buf` with the journal bytes that start at position `pos`,
    /// reading from as many segment files as the range crosses.
    ///
    /// # Errors
    /// `NotFound` when no known segment holds a position of the range (the
    /// writer's event about its segment has not been taken in yet, or the
    /// range lies before the journal's first segment); otherwise the error
    /// of the failing `pread` (`UnexpectedEof` past a file's end).
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let next = self.segments.partition_point(|(start, _)| *start <= at);
            let Some((start, file)) = next.checked_sub(1).map(|i| &self.segments[i]) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no segment holds journal position {at}"),
                ));
            };
            let left = (buf.len() - done) as u64;
            let in_segment = self
                .segments
                .get(next)
                .map_or(left, |(next_start, _)| (next_start - at).min(left));
            let chunk = in_segment as usize;
            file.read_exact_at(&mut buf[done..done + chunk], at - start)?;
            done += chunk;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::sync::Arc;

    /// A segment starting at `start` whose file holds `bytes` (the file of
    /// a real segment is longer than its data; reads stop at the next one).
    fn segment(dir: &std::path::Path, start: u64, bytes: &[u8]) -> SegmentFile {
        let path = dir.join(format!("{start:020}"));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (start, Arc::new(File::open(&path).unwrap()))
    }

    #[test]
    fn a_range_is_read_across_segment_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = JournalReader::new(vec![
            segment(dir.path(), 100, b"abcdefXXXX"),
            segment(dir.path(), 106, b"ghij"),
        ]);
        reader.add_segment(segment(dir.path(), 110, b"klmnop"));
        let mut out = [0u8; 12];
        reader.read_exact_at(&mut out, 102).unwrap();
        assert_eq!(
            &out, b"cdefghijklmn",
            "the tail of a file past the next segment's start is not journal"
        );
        let mut buf = [0u8; 3];
        reader.read_exact_at(&mut buf, 110).unwrap();
        assert_eq!(&buf, b"klm");
        reader.read_exact_at(&mut [], 108).unwrap();
    }

    #[test]
    fn a_position_no_known_segment_holds_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = JournalReader::new(vec![segment(dir.path(), 100, b"abcd")]);
        let mut out = [0u8; 12];
        let e = reader.read_exact_at(&mut out, 90).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = reader.read_exact_at(&mut out[..4], 102).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "past the file's end");
        reader.reset(vec![segment(dir.path(), 0, b"0123")]);
        let mut buf = [0u8; 2];
        reader.read_exact_at(&mut buf, 1).unwrap();
        assert_eq!(&buf, b"12", "after a reset only the new files count");
        assert_eq!(
            reader.read_exact_at(&mut buf, 200).unwrap_err().kind(),
            ErrorKind::UnexpectedEof,
            "the last segment reaches as far as its file"
        );
    }

    #[test]
    fn forgetting_below_a_segment_start_drops_only_the_older_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = JournalReader::new(vec![
            segment(dir.path(), 0, b"0123"),
            segment(dir.path(), 4, b"4567"),
            segment(dir.path(), 8, b"89ab"),
        ]);
        reader.forget_below(8);
        let mut buf = [0u8; 2];
        let e = reader.read_exact_at(&mut buf, 6).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "segment 4 was let go");
        reader.read_exact_at(&mut buf, 9).unwrap();
        assert_eq!(&buf, b"9a");
        reader.forget_below(8);
        reader.read_exact_at(&mut buf, 8).unwrap();
        assert_eq!(&buf, b"89", "forgetting again changes nothing");
    }
}
