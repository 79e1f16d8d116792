//! The hard state file: the Raft term and vote, which must survive any
//! crash. A node that forgot its vote could vote twice in one term and
//! elect two leaders, so the file is written atomically and durably
//! (temp file, fsync, rename, fsync the directory) before any message that
//! depends on it is sent, and a damaged file stops the broker instead of
//! being ignored like a damaged checkpoint.
//!
//! ```text
//! offset size field
//!  0     4    magic      "HTHS"
//!  4     2    version    1
//!  6     4    crc        CRC32C of bytes [10, 27)
//! 10     8    term       latest term the node has seen
//! 18     1    has_vote   1 when the node voted in `term`, else 0
//! 19     8    voted_for  the node it voted for; 0 when has_vote is 0
//! ```
//! All integers are little-endian; the file is exactly 27 bytes.

use super::dir::{begin_state, open_state, seal_state, write_atomically, STATE_HEADER_LEN};
use super::error::JournalError;
use crate::wire::codec::{Put, Reader};
use std::path::Path;

/// Name of the hard state file in the data directory.
pub const HARD_STATE_FILE: &str = "hardstate";
/// The temporary file a new hard state is written to before the rename.
pub const HARD_STATE_TMP_FILE: &str = "hardstate.tmp";
/// First bytes of a hard state file.
pub const HARD_STATE_MAGIC: [u8; 4] = *b"HTHS";
/// The only hard state format version so far.
pub const HARD_STATE_VERSION: u16 = 1;
/// Bytes before the checksummed body: magic, version, crc.
const HEADER_LEN: usize = STATE_HEADER_LEN;
/// Bytes of the whole file.
const FILE_LEN: usize = HEADER_LEN + 8 + 1 + 8;

/// Encodes a term and vote in the format of the [module docs](self).
pub fn encode(term: u64, voted_for: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_LEN);
    begin_state(&mut out, HARD_STATE_MAGIC, HARD_STATE_VERSION);
    out.put_u64(term);
    out.put_u8(u8::from(voted_for.is_some()));
    out.put_u64(voted_for.unwrap_or(0));
    seal_state(&mut out);
    debug_assert_eq!(out.len(), FILE_LEN);
    out
}

/// Decodes a hard state file's bytes into `(term, voted_for)`. Any bytes
/// give a result or an error, never a panic.
///
/// # Errors
/// [`JournalError::Corrupt`] when the length, magic, version, checksum or
/// `has_vote` flag is wrong.
pub fn decode(bytes: &[u8]) -> Result<(u64, Option<u64>), JournalError> {
    let corrupt = |why: String| JournalError::Corrupt(format!("hard state: {why}"));
    if bytes.len() != FILE_LEN {
        return Err(corrupt(format!(
            "{} bytes where {FILE_LEN} were expected",
            bytes.len()
        )));
    }
    let body = open_state(bytes, HARD_STATE_MAGIC, HARD_STATE_VERSION).map_err(corrupt)?;
    let mut r = Reader::new(body);
    let fields = (|| {
        let term = r.u64("term")?;
        let has_vote = r.u8("has_vote")?;
        let voted_for = r.u64("voted_for")?;
        r.finish()?;
        Ok::<_, crate::wire::codec::DecodeError>((term, has_vote, voted_for))
    })();
    match fields.map_err(|e| corrupt(e.to_string()))? {
        (term, 0, 0) => Ok((term, None)),
        (term, 1, voted_for) => Ok((term, Some(voted_for))),
        (_, has_vote, voted_for) => Err(corrupt(format!(
            "has_vote {has_vote} with voted_for {voted_for}"
        ))),
    }
}

/// Reads `dir/hardstate`: `None` when the node never persisted a term
/// (a new node), else its term and vote.
///
/// # Errors
/// [`JournalError::Corrupt`] when the file exists but does not decode: the
/// broker must refuse to start rather than forget a vote.
/// [`JournalError::Io`] when it cannot be read.
pub fn read(dir: &Path) -> Result<Option<(u64, Option<u64>)>, JournalError> {
    let path = dir.join(HARD_STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::io(format!("read {}", path.display()), e)),
    }
}

/// Replaces `dir/hardstate` with `term` and `voted_for`, atomically and
/// durably: when this returns, a crash cannot lose them.
///
/// # Errors
/// [`JournalError::Io`] (or [`JournalError::StorageFull`]) when a step
/// fails; the old file is then still in place.
pub fn write(dir: &Path, term: u64, voted_for: Option<u64>) -> Result<(), JournalError> {
    write_atomically(
        dir,
        HARD_STATE_TMP_FILE,
        HARD_STATE_FILE,
        &encode(term, voted_for),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_follows_the_documented_layout() {
        let bytes = encode(0x0102, Some(7));
        let body: &[u8] = &[
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // term
            1, // has_vote
            7, 0, 0, 0, 0, 0, 0, 0, // voted_for
        ];
        assert_eq!(&bytes[..6], b"HTHS\x01\x00");
        assert_eq!(&bytes[6..10], &crc32c::crc32c(body).to_le_bytes());
        assert_eq!(&bytes[10..], body);
        assert_eq!(&encode(3, None)[18..], &[0; 9]);
    }

    #[test]
    fn a_missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_written_state_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 3, Some(2)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some((3, Some(2))));
        write(dir.path(), 4, None).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some((4, None)));
        assert!(!dir.path().join(HARD_STATE_TMP_FILE).exists());
    }

    #[test]
    fn a_vote_for_node_zero_is_kept_apart_from_no_vote() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1, Some(0)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some((1, Some(0))));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 9, Some(1)).unwrap();
        let path = dir.path().join(HARD_STATE_FILE);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read(dir.path()), Err(JournalError::Corrupt(_))),
                "byte {i} not covered"
            );
        }
        for cut in 0..good.len() {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(matches!(read(dir.path()), Err(JournalError::Corrupt(_))));
        }
        std::fs::write(&path, [good.as_slice(), &[0]].concat()).unwrap();
        assert!(matches!(read(dir.path()), Err(JournalError::Corrupt(_))));
    }

    #[test]
    fn an_inconsistent_vote_flag_is_corrupt_even_with_a_valid_crc() {
        for (has_vote, voted_for) in [(2u8, 1u64), (0, 5)] {
            let mut bytes = encode(1, None);
            bytes[18] = has_vote;
            bytes[19..27].copy_from_slice(&voted_for.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[HEADER_LEN..]);
            bytes[6..10].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(decode(&bytes), Err(JournalError::Corrupt(_))));
        }
    }

    proptest! {
        #[test]
        fn any_term_and_vote_round_trip(term in any::<u64>(), voted_for in any::<Option<u64>>()) {
            prop_assert_eq!(decode(&encode(term, voted_for)).unwrap(), (term, voted_for));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode(&bytes);
        }
    }
}
