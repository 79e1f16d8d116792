//! Small operations on the data directory itself.

use super::error::JournalError;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Fsyncs a directory, making the creation, removal or renaming of its
/// entries durable. Linux needs this separately from fsyncing the files:
/// a new or renamed file's name lives in the directory.
///
/// # Errors
/// [`JournalError::Io`] when the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    let context = || format!("fsync directory {}", dir.display());
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(context(), e))
}

/// Replaces `dir/name` with `bytes` atomically and durably: writes
/// `dir/tmp_name`, fsyncs it, renames it over `dir/name` and fsyncs the
/// directory. After a crash at any point the file holds either its old or
/// its new contents, never a mixture; a leftover temporary file is simply
/// overwritten by the next call.
///
/// # Errors
/// [`JournalError::Io`] (or [`JournalError::StorageFull`]) when a step
/// fails; the old file is then still in place.
pub fn write_atomically(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
) -> Result<(), JournalError> {
    write_atomically_with(dir, tmp_name, name, |w| w.write_all(bytes))
}

/// Bytes [`write_atomically_with`] buffers before each `write` call.
const ATOMIC_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// [`write_atomically`] for contents too large to build in memory first:
/// `fill` streams them into the temporary file through a buffered writer.
/// When a step fails, the temporary file is removed (best effort: it may
/// be large, and the disk may be full).
///
/// # Errors
/// [`JournalError::Io`] (or [`JournalError::StorageFull`]) when a step,
/// `fill` included, fails; the old file is then still in place.
pub fn write_atomically_with(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), JournalError> {
    let tmp = dir.join(tmp_name);
    let target = dir.join(name);
    let context = |what: &str| format!("{what} {}", tmp.display());
    let file = File::create(&tmp).map_err(|e| JournalError::io(context("create"), e))?;
    let written = (|| {
        let mut w = BufWriter::with_capacity(ATOMIC_WRITE_BUFFER_BYTES, file);
        fill(&mut w)
            .and_then(|()| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| JournalError::io(context("write"), e))?
            .sync_all()
            .map_err(|e| JournalError::io(context("fsync"), e))?;
        std::fs::rename(&tmp, &target).map_err(|e| {
            JournalError::io(
                format!("rename {} to {}", tmp.display(), target.display()),
                e,
            )
        })
    })();
    if let Err(e) = written {
        // The error being reported is the first one.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Reads the state file `dir/name`: `None` when it does not exist.
///
/// # Errors
/// [`JournalError::Io`] when it exists but cannot be read.
pub fn read_state_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::io(format!("read {}", path.display()), e)),
    }
}

/// Bytes before the checksummed body of a small state file (checkpoint,
/// hard state): a 4-byte magic, a `u16` format version and the CRC32C of
/// the body.
pub const STATE_HEADER_LEN: usize = 10;

/// Starts a state file in `out`: its header, with the checksum left for
/// [`seal_state`] once the body follows.
pub fn begin_state(out: &mut Vec<u8>, magic: [u8; 4], version: u16) {
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Fills in the checksum of a state file begun by [`begin_state`].
pub fn seal_state(out: &mut [u8]) {
    let crc = crc32c::crc32c(&out[STATE_HEADER_LEN..]);
    out[6..STATE_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Checks a state file's header (length, magic, version, checksum) and
/// returns its body. Any bytes give a body or an error, never a panic.
///
/// # Errors
/// What is wrong, in words, for the caller's `Corrupt` error.
pub fn open_state(bytes: &[u8], magic: [u8; 4], version: u16) -> Result<&[u8], String> {
    if bytes.len() < STATE_HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than its {STATE_HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if bytes[..4] != magic {
        return Err(format!("bad magic {:02x?}", &bytes[..4]));
    }
    let found = u16::from_le_bytes([bytes[4], bytes[5]]);
    if found != version {
        return Err(format!("unsupported version {found}"));
    }
    let crc = crate::wire::codec::le_u32(bytes, 6);
    let body = &bytes[STATE_HEADER_LEN..];
    let actual = crc32c::crc32c(body);
    if actual != crc {
        return Err(format!(
            "checksum {actual:#010x} does not match stored {crc:#010x}"
        ));
    }
    Ok(body)
}

/// Decodes the state file `what` ("checkpoint", "start state"): checks its
/// header with [`open_state`], then parses the body with `body`. Any bytes
/// give a state or an error, never a panic.
///
/// # Errors
/// [`JournalError::Corrupt`], naming `what`, for a bad header or body.
pub fn decode_state<T>(
    bytes: &[u8],
    magic: [u8; 4],
    version: u16,
    what: &str,
    body: impl FnOnce(&[u8]) -> Result<T, crate::wire::codec::DecodeError>,
) -> Result<T, JournalError> {
    let corrupt = |why: String| JournalError::Corrupt(format!("{what}: {why}"));
    let bytes = open_state(bytes, magic, version).map_err(corrupt)?;
    body(bytes).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncing_a_missing_directory_names_it_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        sync_dir(tmp.path()).unwrap();
        let missing = tmp.path().join("nope");
        let err = sync_dir(&missing).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_atomically(tmp.path(), "f.tmp", "f", b"old").unwrap();
        std::fs::write(tmp.path().join("f.tmp"), b"leftover").unwrap();
        write_atomically(tmp.path(), "f.tmp", "f", b"new").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"new");
        assert!(!tmp.path().join("f.tmp").exists());
    }

    #[test]
    fn a_failed_streamed_write_keeps_the_old_file_and_removes_the_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_atomically(tmp.path(), "f.tmp", "f", b"old").unwrap();
        let err = write_atomically_with(tmp.path(), "f.tmp", "f", |w| {
            w.write_all(&[7; 100_000])?;
            Err(std::io::Error::other("the source failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("write"), "{err}");
        assert!(err.to_string().contains("f.tmp"), "{err}");
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"old");
        assert!(!tmp.path().join("f.tmp").exists());
        write_atomically_with(tmp.path(), "f.tmp", "f", |w| {
            w.write_all(b"new, ")?;
            w.write_all(b"streamed")
        })
        .unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("f")).unwrap(),
            b"new, streamed"
        );
    }
}
