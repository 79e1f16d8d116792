//! The journal's one error type. Callers above the journal (the broker)
//! map it to wire error codes; the variants are the distinctions they need.

use std::path::PathBuf;
use thiserror::Error;

/// Why a journal operation failed.
#[derive(Debug, Error)]
pub enum JournalError {
    /// An operating-system call failed; `context` says what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the journal was doing, e.g. "fsync segment 00000000000000000000.seg".
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another handle in this one) holds the data directory.
    #[error("data directory {dir} is locked by another hutong broker{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid as it wrote it into the lock file, when readable.
        pid: Option<u32>,
    },
    /// Bytes on disk are not what the journal wrote and cannot be repaired
    /// by truncating a torn tail.
    #[error("journal corrupt: {0}")]
    Corrupt(String),
    /// A batch received from the leader, or a truncation point, does not
    /// fit the journal (bad checksum, wrong offset, unknown topic, not a
    /// batch boundary, ...). Nothing was changed: the caller refuses the
    /// request, the journal stays usable.
    #[error("refused: {0}")]
    Refused(String),
    /// The disk (or the user's quota) is full. Kept apart from [`JournalError::Io`]
    /// because the broker answers it with a retriable error instead of failing.
    #[error("disk full while {0}")]
    StorageFull(String),
}

impl JournalError {
    /// Wraps an OS error with what was being done. `ENOSPC` and `EDQUOT`
    /// become [`JournalError::StorageFull`], because running out of space is
    /// an expected condition the broker reports to producers rather than a
    /// fault.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let full = [nix::errno::Errno::ENOSPC, nix::errno::Errno::EDQUOT]
            .iter()
            .any(|e| source.raw_os_error() == Some(*e as i32));
        if full {
            JournalError::StorageFull(context.into())
        } else {
            JournalError::Io {
                context: context.into(),
                source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn enospc_and_edquot_become_storage_full() {
        for errno in [nix::errno::Errno::ENOSPC, nix::errno::Errno::EDQUOT] {
            let e = JournalError::io("appending", io::Error::from_raw_os_error(errno as i32));
            match e {
                JournalError::StorageFull(ctx) => assert_eq!(ctx, "appending"),
                other => panic!("{errno}: expected StorageFull, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_errors_keep_their_context_and_source() {
        let e = JournalError::io(
            "opening segment",
            io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32),
        );
        assert!(
            matches!(&e, JournalError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
        );
        assert!(e.to_string().starts_with("opening segment: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn locked_message_names_the_pid_only_when_known() {
        let with = JournalError::Locked {
            dir: PathBuf::from("/d"),
            pid: Some(42),
        };
        let without = JournalError::Locked {
            dir: PathBuf::from("/d"),
            pid: None,
        };
        assert_eq!(
            with.to_string(),
            "data directory /d is locked by another hutong broker (pid 42)"
        );
        assert_eq!(
            without.to_string(),
            "data directory /d is locked by another hutong broker"
        );
    }
}
