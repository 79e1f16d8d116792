//! The data-directory lock: one broker per directory.
//!
//! Two brokers appending to one journal would interleave batches and
//! destroy it, so the journal takes an exclusive `flock` on `dir/LOCK`
//! before touching anything else. `flock` locks belong to the open file
//! description and vanish when the holder exits, however it exits, so a
//! `kill -9`'d broker never leaves a stale lock behind: the `LOCK` file may
//! remain, but it locks nothing. The file holds the holder's pid, only to
//! name it in the error a second broker reports.

use super::error::JournalError;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Most bytes of the lock file read when looking for the holder's pid; a
/// pid is at most 10 digits, anything longer is not one.
const PID_BYTES_MAX: u64 = 32;

/// Holds the data directory's lock for as long as it lives. Dropping it
/// unlocks (the `LOCK` file itself is left in place: removing it could
/// race with another broker that already opened it).
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl DirLock {
    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Creates `dir` if missing and locks it for this broker: takes an
/// exclusive, non-blocking `flock` on `dir/LOCK` and writes this process's
/// pid into it.
///
/// # Errors
/// [`JournalError::Locked`] when another broker (or another open of the
/// file in this process) holds the lock, with its pid when the file names
/// one; [`JournalError::Io`] when the directory or file cannot be created.
pub fn lock_dir(dir: &Path) -> Result<DirLock, JournalError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| JournalError::io(format!("create data directory {}", dir.display()), e))?;
    let path = dir.join(LOCK_FILE);
    let context = |what: &str| format!("{what} {}", path.display());
    // No truncation on open: the file may be another broker's, and its pid
    // is what we report if the lock is taken.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| JournalError::io(context("open"), e))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, Errno::EWOULDBLOCK)) => {
            return Err(JournalError::Locked {
                dir: dir.to_path_buf(),
                pid: read_pid(&file),
            })
        }
        Err((_, errno)) => return Err(JournalError::io(context("flock"), errno.into())),
    };
    lock.set_len(0)
        .and_then(|()| lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
        .map_err(|e| JournalError::io(context("write pid to"), e))?;
    Ok(DirLock {
        dir: dir.to_path_buf(),
        _lock: lock,
    })
}

/// The pid written in a lock file, if it holds one. The holder may be
/// between truncating and writing, or the file may hold anything at all,
/// so every failure is just "unknown".
fn read_pid(file: &File) -> Option<u32> {
    let mut text = String::new();
    file.take(PID_BYTES_MAX).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_cannot_be_locked_again_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock_dir(tmp.path()).unwrap();
        assert_eq!(first.dir(), tmp.path());
        // flock locks belong to the open file description, so a second open
        // in this same process conflicts like another broker would.
        match lock_dir(tmp.path()) {
            Err(JournalError::Locked { dir, pid }) => {
                assert_eq!(dir, tmp.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let again = lock_dir(tmp.path()).unwrap();
        drop(again);
    }

    #[test]
    fn locking_creates_the_directory_and_records_the_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        let lock = lock_dir(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(lock);
    }

    #[test]
    fn a_stale_lock_file_from_a_dead_broker_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(LOCK_FILE), "4294967295999 and some junk").unwrap();
        let lock = lock_dir(tmp.path()).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(
            text,
            format!("{}\n", std::process::id()),
            "old content replaced"
        );
        drop(lock);
    }

    #[test]
    fn an_unreadable_pid_is_reported_as_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LOCK_FILE);
        std::fs::write(&path, "not a pid").unwrap();
        let holder = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        match lock_dir(tmp.path()) {
            Err(JournalError::Locked { pid: None, .. }) => {}
            other => panic!("expected Locked without pid, got {other:?}"),
        }
        drop(holder);
    }

    #[test]
    fn a_path_that_is_a_file_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(lock_dir(&file), Err(JournalError::Io { .. })));
    }
}
