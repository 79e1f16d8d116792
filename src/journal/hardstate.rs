//! The hard state file: the Raft term and vote, which must survive any
//! crash, and the identity of this data directory. A node that forgot its
//! vote could vote twice in one term and elect two leaders, so the file is
//! written atomically and durably (temp file, fsync, rename, fsync the
//! directory) before any message that depends on it is sent, and a damaged
//! file stops the broker instead of being ignored like a damaged
//! checkpoint.
//!
//! Version 2 (written since review finding 10):
//! ```text
//! offset size field
//!  0     4    magic              "HTHS"
//!  4     2    version            2
//!  6     4    crc                CRC32C of bytes [10, 44)
//! 10     8    term               latest term the node has seen
//! 18     1    has_vote           1 when the node voted in `term`, else 0
//! 19     8    voted_for          the node it voted for; 0 when has_vote is 0
//! 27     8    voted_incarnation  the incarnation of the directory it voted
//!                                for; 0 when has_vote is 0
//! 35     8    incarnation        non-zero, ordered by creation time: made
//!                                when this directory started empty (or
//!                                lost data, or learned it is a stale
//!                                copy); peers tell a replaced disk by it
//! 43     1    caught_up          1 once the directory durably held a commit
//!                                position a leader announced after it was
//!                                made; until then the node neither votes
//!                                nor campaigns
//! ```
//! Version 1 (27 bytes, with the first three fields only) is still read:
//! such a directory voted all along, so it counts as caught up, with no
//! incarnation yet (the broker gives it one) and its vote's incarnation
//! unknown (0). All integers are little-endian.

use super::dir::{begin_state, read_state_file, seal_state, write_atomically, STATE_HEADER_LEN};
use super::error::JournalError;
use crate::wire::codec::{Put, Reader};
use std::path::Path;

/// Name of the hard state file in the data directory.
pub const HARD_STATE_FILE: &str = "hardstate";
/// The temporary file a new hard state is written to before the rename.
pub const HARD_STATE_TMP_FILE: &str = "hardstate.tmp";
/// First bytes of a hard state file.
pub const HARD_STATE_MAGIC: [u8; 4] = *b"HTHS";
/// The hard state format version this broker writes.
pub const HARD_STATE_VERSION: u16 = 2;
/// Bytes before the checksummed body: magic, version, crc.
const HEADER_LEN: usize = STATE_HEADER_LEN;
/// Bytes of a whole version 1 file.
const FILE_LEN_V1: usize = HEADER_LEN + 8 + 1 + 8;
/// Bytes of a whole version 2 file.
const FILE_LEN: usize = FILE_LEN_V1 + 8 + 8 + 1;

/// What the hard state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Persisted {
    /// Latest term the node has seen.
    pub term: u64,
    /// Whom it voted for in `term`.
    pub voted_for: Option<u64>,
    /// The incarnation of the directory it voted for; 0 without a vote, or
    /// when a version 1 file did not record it.
    pub voted_incarnation: u64,
    /// This data directory's incarnation; 0 when a version 1 file had none.
    pub incarnation: u64,
    /// The directory has caught up since it was made (see the module docs).
    pub caught_up: bool,
}

/// Encodes a hard state in the version 2 format of the [module docs](self).
pub fn encode(hs: &Persisted) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_LEN);
    begin_state(&mut out, HARD_STATE_MAGIC, HARD_STATE_VERSION);
    out.put_u64(hs.term);
    out.put_u8(u8::from(hs.voted_for.is_some()));
    out.put_u64(hs.voted_for.unwrap_or(0));
    out.put_u64(hs.voted_incarnation);
    out.put_u64(hs.incarnation);
    out.put_u8(u8::from(hs.caught_up));
    seal_state(&mut out);
    debug_assert_eq!(out.len(), FILE_LEN);
    out
}

/// Decodes a hard state file's bytes (version 1 or 2). Any bytes give a
/// result or an error, never a panic.
///
/// # Errors
/// [`JournalError::Corrupt`] when the length, magic, version, checksum or
/// a flag is wrong.
pub fn decode(bytes: &[u8]) -> Result<Persisted, JournalError> {
    let corrupt = |why: String| JournalError::Corrupt(format!("hard state: {why}"));
    let version = if bytes.len() >= HEADER_LEN {
        u16::from_le_bytes([bytes[4], bytes[5]])
    } else {
        0
    };
    let want_len = match version {
        1 => FILE_LEN_V1,
        _ => FILE_LEN,
    };
    if bytes.len() != want_len {
        return Err(corrupt(format!(
            "{} bytes where {want_len} were expected",
            bytes.len()
        )));
    }
    let body =
        super::dir::open_state(bytes, HARD_STATE_MAGIC, version.clamp(1, 2)).map_err(corrupt)?;
    let mut r = Reader::new(body);
    let fields = (|| {
        let term = r.u64("term")?;
        let has_vote = r.u8("has_vote")?;
        let voted_for = r.u64("voted_for")?;
        let (voted_incarnation, incarnation, caught_up) = if version == 1 {
            (0, 0, 1)
        } else {
            (
                r.u64("voted_incarnation")?,
                r.u64("incarnation")?,
                r.u8("caught_up")?,
            )
        };
        r.finish()?;
        Ok::<_, crate::wire::codec::DecodeError>((
            term,
            (has_vote, voted_for, voted_incarnation),
            incarnation,
            caught_up,
        ))
    })();
    let (term, vote, incarnation, caught_up) = fields.map_err(|e| corrupt(e.to_string()))?;
    let voted_for = match vote {
        (0, 0, 0) => None,
        (1, v, _) => Some(v),
        (h, v, i) => {
            return Err(corrupt(format!(
                "has_vote {h} with voted_for {v}, voted_incarnation {i}"
            )))
        }
    };
    let voted_incarnation = vote.2;
    let caught_up = match caught_up {
        0 => false,
        1 => true,
        c => return Err(corrupt(format!("caught_up {c}"))),
    };
    if version == 2 && incarnation == 0 {
        return Err(corrupt("incarnation 0".into()));
    }
    Ok(Persisted {
        term,
        voted_for,
        voted_incarnation,
        incarnation,
        caught_up,
    })
}

/// Reads `dir/hardstate`: `None` when the node never persisted one (a new
/// node, or a data directory that was wiped).
///
/// # Errors
/// [`JournalError::Corrupt`] when the file exists but does not decode: the
/// broker must refuse to start rather than forget a vote.
/// [`JournalError::Io`] when it cannot be read.
pub fn read(dir: &Path) -> Result<Option<Persisted>, JournalError> {
    let path = dir.join(HARD_STATE_FILE);
    read_state_file(dir, HARD_STATE_FILE)?
        .map(|bytes| {
            decode(&bytes).map_err(|e| JournalError::Corrupt(format!("{}: {e}", path.display())))
        })
        .transpose()
}

/// Replaces `dir/hardstate` with `hs`, atomically and durably: when this
/// returns, a crash cannot lose it.
///
/// # Errors
/// [`JournalError::Io`] (or [`JournalError::StorageFull`]) when a step
/// fails; the old file is then still in place.
pub fn write(dir: &Path, hs: &Persisted) -> Result<(), JournalError> {
    write_atomically(dir, HARD_STATE_TMP_FILE, HARD_STATE_FILE, &encode(hs))
}

/// A new incarnation for a data directory: the time in milliseconds since
/// the Unix epoch, shifted left by
/// [`INCARNATION_RANDOM_BITS`](crate::consensus::config::INCARNATION_RANDOM_BITS),
/// with random low bits; never 0. A directory made later (by a clock that
/// does not run behind) has a higher one, which is what lets peers refuse
/// the late messages of the directory it replaced. The random bits keep two
/// directories made in the same millisecond apart.
pub fn new_incarnation() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    incarnation_at(since_epoch.as_millis() as u64, random_bits())
}

/// The incarnation made at `unix_ms` with random low bits `random`.
fn incarnation_at(unix_ms: u64, random: u64) -> u64 {
    let bits = crate::consensus::config::INCARNATION_RANDOM_BITS;
    let low = random & ((1 << bits) - 1);
    ((unix_ms << bits) | low).max(1)
}

/// 64 random bits, not cryptographic (they keep apart directories made in
/// the same millisecond, and groups): the standard library's randomly keyed
/// hasher over the time and the process id.
pub fn random_bits() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hs(term: u64, voted_for: Option<u64>) -> Persisted {
        Persisted {
            term,
            voted_for,
            voted_incarnation: if voted_for.is_some() { 0x1234 } else { 0 },
            incarnation: 0xabcd,
            caught_up: true,
        }
    }

    #[test]
    fn encoding_follows_the_documented_layout() {
        let bytes = encode(&Persisted {
            term: 0x0102,
            voted_for: Some(7),
            voted_incarnation: 0x0c0d,
            incarnation: 0x0a0b,
            caught_up: false,
        });
        let body: &[u8] = &[
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // term
            1, // has_vote
            7, 0, 0, 0, 0, 0, 0, 0, // voted_for
            0x0d, 0x0c, 0, 0, 0, 0, 0, 0, // voted_incarnation
            0x0b, 0x0a, 0, 0, 0, 0, 0, 0, // incarnation
            0, // caught_up
        ];
        assert_eq!(&bytes[..6], b"HTHS\x02\x00");
        assert_eq!(&bytes[6..10], &crc32c::crc32c(body).to_le_bytes());
        assert_eq!(&bytes[10..], body);
    }

    #[test]
    fn a_version_1_file_reads_as_caught_up_without_an_incarnation() {
        let mut v1 = Vec::new();
        begin_state(&mut v1, HARD_STATE_MAGIC, 1);
        v1.put_u64(5);
        v1.put_u8(1);
        v1.put_u64(3);
        seal_state(&mut v1);
        assert_eq!(
            decode(&v1).unwrap(),
            Persisted {
                term: 5,
                voted_for: Some(3),
                voted_incarnation: 0,
                incarnation: 0,
                caught_up: true,
            }
        );
    }

    #[test]
    fn a_missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_written_state_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &hs(3, Some(2))).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(hs(3, Some(2))));
        write(dir.path(), &hs(4, None)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(hs(4, None)));
        assert!(!dir.path().join(HARD_STATE_TMP_FILE).exists());
    }

    #[test]
    fn a_vote_for_node_zero_is_kept_apart_from_no_vote() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &hs(1, Some(0))).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(hs(1, Some(0))));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &hs(9, Some(1))).unwrap();
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
    fn inconsistent_flags_are_corrupt_even_with_a_valid_crc() {
        for (at, byte) in [(18usize, 2u8), (43, 2)] {
            let mut bytes = encode(&hs(1, Some(1)));
            bytes[at] = byte;
            let crc = crc32c::crc32c(&bytes[HEADER_LEN..]);
            bytes[6..10].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(decode(&bytes), Err(JournalError::Corrupt(_))));
        }
        for at in [19, 27] {
            // voted_for, or voted_incarnation, without has_vote
            let mut bytes = encode(&hs(1, None));
            bytes[at] = 5;
            let crc = crc32c::crc32c(&bytes[HEADER_LEN..]);
            bytes[6..10].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(decode(&bytes), Err(JournalError::Corrupt(_))));
        }
    }

    #[test]
    fn incarnations_are_ordered_by_time_and_never_zero() {
        let bits = crate::consensus::config::INCARNATION_RANDOM_BITS;
        let (a, b) = (incarnation_at(1_000, u64::MAX), incarnation_at(1_001, 0));
        assert!(
            a < b,
            "a later millisecond is higher whatever the random bits"
        );
        assert_eq!(a, (1_000 << bits) | ((1 << bits) - 1));
        assert_eq!(incarnation_at(0, 0), 1);
        assert_ne!(incarnation_at(7, 1), incarnation_at(7, 2));
        // Today's time: far from the top, so a stale directory's new
        // incarnation (one above a newer one) cannot run out.
        let now = new_incarnation();
        assert!(now > 1 << 60 && now < u64::MAX >> 1, "{now:#x}");
    }

    proptest! {
        #[test]
        fn any_state_round_trips(
            term in any::<u64>(),
            voted_for in any::<Option<u64>>(),
            voted_incarnation in any::<u64>(),
            incarnation in 1u64..,
            caught_up in any::<bool>(),
        ) {
            let voted_incarnation = if voted_for.is_some() { voted_incarnation } else { 0 };
            let hs = Persisted { term, voted_for, voted_incarnation, incarnation, caught_up };
            prop_assert_eq!(decode(&encode(&hs)).unwrap(), hs);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            let _ = decode(&bytes);
        }
    }
}
