//! Small operations on the data directory itself.

use super::error::JournalError;
use std::fs::File;
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
}
