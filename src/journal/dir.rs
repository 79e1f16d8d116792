//! Small operations on the data directory itself.

use super::error::JournalError;
use std::fs::File;
use std::io::Write;
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
    let tmp = dir.join(tmp_name);
    let context = |what: &str| format!("{what} {}", tmp.display());
    let mut file = File::create(&tmp).map_err(|e| JournalError::io(context("create"), e))?;
    file.write_all(bytes)
        .map_err(|e| JournalError::io(context("write"), e))?;
    file.sync_all()
        .map_err(|e| JournalError::io(context("fsync"), e))?;
    drop(file);
    let target = dir.join(name);
    std::fs::rename(&tmp, &target).map_err(|e| {
        JournalError::io(
            format!("rename {} to {}", tmp.display(), target.display()),
            e,
        )
    })?;
    sync_dir(dir)
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
}
