//! Recovery's walk over a segment, as pure logic over bytes.
//!
//! After a crash a segment holds, in order: batches that were durable,
//! possibly a torn batch (the crash hit while its pages were being
//! written), and zeros (preallocated space never written). [`scan`] walks
//! the batches from the start and reports how many bytes are valid and why
//! it stopped. It does no IO, so it can be property-tested and fuzzed; the
//! journal maps the segment and acts on the result (truncate and zero a
//! torn tail, rebuild the index from the callback).

use crate::wire::batch::{check_stored_batch, declared_len, BATCH_HEADER_LEN};
use crate::wire::codec::le_u32;

/// The bytes the batch header checksum covers: `[4, 44)`, from `batch_len`
/// to the producer `crc` inclusive (see `wire::batch`).
const HEADER_CRC_COVERS: std::ops::Range<usize> = 4..44;
/// Bytes checked for the all-zero "no batch here" marker: `header_crc` and
/// `batch_len`. A written batch never has both zero (its length is at
/// least a header), while never-written preallocated space always does.
const END_MARK_LEN: usize = 8;

const _: () = assert!(HEADER_CRC_COVERS.end <= BATCH_HEADER_LEN);

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Zeros or too few bytes for a header: the clean end of data.
    End,
    /// Bytes that are not a valid batch start here: a torn write, or damage.
    Torn(String),
    /// The callback refused the batch (e.g. offset discontinuity).
    Refused(String),
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// Bytes from the start of the segment that hold valid batches, each
    /// of which was passed to the callback.
    pub valid_len: usize,
    /// Why the scan stopped at `valid_len`.
    pub stop: ScanStop,
}

/// True when `batch` (at least [`BATCH_HEADER_LEN`] bytes, else false)
/// carries a header checksum matching its header: CRC32C of bytes
/// `[4, 44)` equals the `u32` at 0. This is the cheap check for batches a
/// checkpoint already vouches for; it does not read the records.
pub fn header_crc_ok(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_LEN && crc32c::crc32c(&batch[HEADER_CRC_COVERS]) == le_u32(batch, 0)
}

/// Walks the batches of one segment's bytes.
///
/// `start_pos` is the journal position of `bytes[0]`. Batches that end at
/// or below `verify_from` (they lie below a checkpoint, which was written
/// only after they were durable and checked) get only a header-checksum
/// and length check; later ones get the full [`check_stored_batch`], both
/// checksums and the record layout. A batch straddling `verify_from` is
/// checked fully, so a `verify_from` that is not a batch boundary errs on
/// the safe side.
///
/// For each valid batch, `on_batch(position, batch_bytes)` is called in
/// order; if it returns `Err(reason)` the scan stops with
/// [`ScanStop::Refused`] before that batch. A header whose first 8 bytes
/// (`header_crc` and `batch_len`) are all zero, or fewer than
/// [`BATCH_HEADER_LEN`] bytes left, is [`ScanStop::End`]. A declared
/// length below a header or running past `bytes`, or a failed check, is
/// [`ScanStop::Torn`].
///
/// Never panics, whatever `bytes` hold.
pub fn scan(
    bytes: &[u8],
    start_pos: u64,
    verify_from: u64,
    mut on_batch: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> ScanResult {
    let mut at = 0usize;
    let stop = loop {
        let rest = &bytes[at..];
        let Some(len) = declared_len(rest) else {
            break ScanStop::End;
        };
        if rest[..END_MARK_LEN].iter().all(|&b| b == 0) {
            break ScanStop::End;
        }
        // Positions come from file names and lengths from file bytes:
        // saturate instead of overflowing on nonsense.
        let position = start_pos.saturating_add(at as u64);
        if len < BATCH_HEADER_LEN {
            break ScanStop::Torn(format!(
                "batch at position {position} declares {len} bytes, less than its header"
            ));
        }
        if len > rest.len() {
            break ScanStop::Torn(format!(
                "batch at position {position} declares {len} bytes, but only {} remain",
                rest.len()
            ));
        }
        let batch = &rest[..len];
        if position.saturating_add(len as u64) <= verify_from {
            if !header_crc_ok(batch) {
                break ScanStop::Torn(format!(
                    "batch at position {position}: header checksum mismatch"
                ));
            }
        } else if let Err(e) = check_stored_batch(batch) {
            break ScanStop::Torn(format!("batch at position {position}: {e}"));
        }
        if let Err(reason) = on_batch(position, batch) {
            break ScanStop::Refused(reason);
        }
        at += len;
    };
    ScanResult {
        valid_len: at,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::batch::{stamp, BatchBuilder, BatchView, Stamp};
    use proptest::prelude::*;

    /// One stored batch: `records` records with `value_len`-byte values.
    fn batch(partition: u32, base_offset: u64, records: u32, value_len: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..records {
            let value: Vec<u8> = (0..value_len).map(|j| (i as usize + j) as u8).collect();
            b.push(1_000 + i64::from(i), b"key", &value, &[]);
        }
        let mut bytes = b.finish(0, 0).to_vec();
        stamp(
            &mut bytes,
            &Stamp {
                base_offset,
                term: 1,
                append_time_ms: 5,
                topic_id: 1,
                partition,
            },
        );
        bytes
    }

    /// A journal of batches spread over partitions with continuing offsets:
    /// the bytes, and each batch's (start, end) within them.
    fn journal(shape: &[(u32, u32, usize)]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut next = [0u64; 4];
        let (mut bytes, mut spans) = (Vec::new(), Vec::new());
        for &(partition, records, value_len) in shape {
            let p = partition as usize % next.len();
            let b = batch(p as u32, next[p], records, value_len);
            next[p] += u64::from(records);
            spans.push((bytes.len(), bytes.len() + b.len()));
            bytes.extend_from_slice(&b);
        }
        (bytes, spans)
    }

    fn sample() -> (Vec<u8>, Vec<(usize, usize)>) {
        journal(&[(0, 3, 10), (1, 1, 0), (0, 2, 100), (2, 5, 7)])
    }

    /// Scans, collecting the (position, length) of every batch accepted.
    fn collect(bytes: &[u8], start_pos: u64, verify_from: u64) -> (ScanResult, Vec<(u64, usize)>) {
        let mut seen = Vec::new();
        let result = scan(bytes, start_pos, verify_from, |pos, b| {
            seen.push((pos, b.len()));
            Ok(())
        });
        (result, seen)
    }

    fn positions(spans: &[(usize, usize)], start_pos: u64) -> Vec<(u64, usize)> {
        spans
            .iter()
            .map(|&(s, e)| (start_pos + s as u64, e - s))
            .collect()
    }

    #[test]
    fn a_valid_journal_followed_by_zeros_scans_to_the_end() {
        let (mut bytes, spans) = sample();
        let data_len = bytes.len();
        bytes.resize(data_len + 4096, 0);
        let (result, seen) = collect(&bytes, 1 << 20, 0);
        assert_eq!(
            result,
            ScanResult {
                valid_len: data_len,
                stop: ScanStop::End
            }
        );
        assert_eq!(seen, positions(&spans, 1 << 20));
    }

    #[test]
    fn a_journal_filling_the_segment_exactly_ends_cleanly() {
        let (bytes, spans) = sample();
        let (result, seen) = collect(&bytes, 0, u64::MAX);
        assert_eq!(
            (result.valid_len, result.stop),
            (bytes.len(), ScanStop::End)
        );
        assert_eq!(seen.len(), spans.len());
    }

    #[test]
    fn the_callback_gets_the_exact_batch_bytes() {
        let (bytes, spans) = sample();
        let mut offsets = Vec::new();
        scan(&bytes, 0, 0, |pos, b| {
            let (s, e) = spans[offsets.len()];
            assert_eq!((pos, b), (s as u64, &bytes[s..e]));
            let v = BatchView(b);
            offsets.push((v.partition(), v.base_offset()));
            Ok(())
        });
        assert_eq!(offsets, vec![(0, 0), (1, 0), (0, 3), (2, 0)]);
    }

    #[test]
    fn a_refused_batch_stops_the_scan_before_it() {
        let (bytes, spans) = sample();
        let mut calls = 0;
        let result = scan(&bytes, 0, 0, |_, _| {
            calls += 1;
            if calls == 3 {
                Err("offset gap".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(
            result,
            ScanResult {
                valid_len: spans[2].0,
                stop: ScanStop::Refused("offset gap".into())
            }
        );
    }

    #[test]
    fn a_flipped_byte_after_verify_from_stops_the_scan_at_its_batch() {
        let (bytes, spans) = sample();
        let verify_from = spans[1].1 as u64;
        for i in spans[2].0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            let (result, seen) = collect(&bad, 0, verify_from);
            let hit = spans
                .iter()
                .position(|&(s, e)| (s..e).contains(&i))
                .unwrap();
            assert_eq!(result.valid_len, spans[hit].0, "byte {i}");
            assert!(
                matches!(result.stop, ScanStop::Torn(_)),
                "byte {i}: {:?}",
                result.stop
            );
            assert_eq!(seen.len(), hit);
        }
    }

    #[test]
    fn below_verify_from_only_the_header_is_checked() {
        let (bytes, spans) = sample();
        let verify_from = spans[1].1 as u64;
        // A damaged record below verify_from goes unnoticed (the checkpoint
        // vouches for it), but the same damage above it does not.
        let mut records_hit = bytes.clone();
        records_hit[spans[0].0 + BATCH_HEADER_LEN + 5] ^= 1;
        let (light, _) = collect(&records_hit, 0, verify_from);
        assert_eq!((light.valid_len, light.stop), (bytes.len(), ScanStop::End));
        let (full, _) = collect(&records_hit, 0, 0);
        assert_eq!(full.valid_len, 0);
        assert!(matches!(full.stop, ScanStop::Torn(_)));
        // Header damage is caught either way.
        for i in 0..HEADER_CRC_COVERS.end {
            let mut header_hit = bytes.clone();
            header_hit[spans[1].0 + i] ^= 0x10;
            let (r, seen) = collect(&header_hit, 0, verify_from);
            assert_eq!(
                (r.valid_len, seen.len()),
                (spans[1].0, 1),
                "header byte {i}"
            );
            assert!(matches!(r.stop, ScanStop::Torn(_)));
        }
    }

    #[test]
    fn verify_from_is_relative_to_the_segment_start_position() {
        let (mut bytes, spans) = sample();
        bytes[spans[0].0 + BATCH_HEADER_LEN + 5] ^= 1;
        let start = 1 << 30;
        let (r, _) = collect(&bytes, start, start + spans[0].1 as u64);
        assert_eq!(r.valid_len, bytes.len(), "batch 0 lies below verify_from");
        let (r, _) = collect(&bytes, start, start + spans[0].1 as u64 - 1);
        assert_eq!(
            r.valid_len, 0,
            "a batch straddling verify_from is checked fully"
        );
    }

    #[test]
    fn impossible_lengths_are_torn() {
        let (bytes, _) = sample();
        let mut short = bytes.clone();
        short[4..8].copy_from_slice(&(BATCH_HEADER_LEN as u32 - 1).to_le_bytes());
        let (r, _) = collect(&short, 0, 0);
        assert!(matches!(r.stop, ScanStop::Torn(ref m) if m.contains("less than its header")));
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let (r, _) = collect(&long, 0, 0);
        assert!(matches!(r.stop, ScanStop::Torn(ref m) if m.contains("remain")));
        assert_eq!(r.valid_len, 0);
    }

    #[test]
    fn zeros_and_short_tails_are_the_end() {
        assert_eq!(collect(&[], 0, 0).0.stop, ScanStop::End);
        assert_eq!(collect(&[0; 4096], 0, 0).0.stop, ScanStop::End);
        // Fewer bytes than a header cannot start a batch.
        assert_eq!(
            collect(&[0xff; BATCH_HEADER_LEN - 1], 0, 0).0.stop,
            ScanStop::End
        );
        // Zero crc and length, junk after: still nothing was written here.
        let mut marked = vec![0xffu8; 200];
        marked[..8].fill(0);
        assert_eq!(collect(&marked, 0, 0).0.stop, ScanStop::End);
        // But a non-zero mark over junk is torn.
        assert!(matches!(
            collect(&[0xff; 200], 0, 0).0.stop,
            ScanStop::Torn(_)
        ));
    }

    fn shapes() -> impl Strategy<Value = Vec<(u32, u32, usize)>> {
        prop::collection::vec((0u32..4, 1u32..4, 0usize..40), 0..6)
    }

    proptest! {
        #[test]
        fn every_truncation_yields_the_batches_before_it(shape in shapes()) {
            let (bytes, spans) = journal(&shape);
            for cut in 0..=bytes.len() {
                let whole = spans.iter().take_while(|&&(_, e)| e <= cut).count();
                // The file ends at the cut (a short read).
                let (r, seen) = collect(&bytes[..cut], 0, 0);
                prop_assert_eq!(&seen, &positions(&spans[..whole], 0));
                prop_assert_eq!(r.valid_len, spans[..whole].last().map_or(0, |s| s.1));
                // A partial header is the end; a whole header whose batch
                // runs past the cut is torn.
                if cut - r.valid_len < BATCH_HEADER_LEN {
                    prop_assert_eq!(&r.stop, &ScanStop::End);
                } else {
                    prop_assert!(matches!(r.stop, ScanStop::Torn(_)), "{:?}", r.stop);
                }
                // The pages after the cut never reached the disk (zeros).
                let mut torn = bytes.clone();
                torn[cut..].fill(0);
                let (r, seen) = collect(&torn, 0, 0);
                prop_assert!(seen.len() == whole || seen.len() == whole + 1);
                for (i, &(pos, len)) in seen.iter().enumerate() {
                    let (s, e) = spans[i];
                    prop_assert_eq!((pos, len), (s as u64, e - s));
                    // Only an intact batch is accepted: if the zeroing hit
                    // the batch at the cut, it was rejected.
                    prop_assert_eq!(&torn[s..e], &bytes[s..e]);
                }
                prop_assert_eq!(r.valid_len, seen.last().map_or(0, |&(p, l)| p as usize + l));
            }
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            start_pos in any::<u64>(),
            verify_from in any::<u64>(),
        ) {
            let (r, seen) = collect(&bytes, start_pos, verify_from);
            prop_assert!(r.valid_len <= bytes.len());
            prop_assert_eq!(seen.iter().map(|s| s.1).sum::<usize>(), r.valid_len);
        }

        #[test]
        fn damage_after_valid_batches_never_panics_nor_loses_them(
            shape in shapes(),
            junk in prop::collection::vec(any::<u8>(), 0..300),
            verify_from in 0u64..2_000,
        ) {
            let (mut bytes, spans) = journal(&shape);
            let data_len = bytes.len();
            bytes.extend_from_slice(&junk);
            let (r, seen) = collect(&bytes, 0, verify_from);
            prop_assert!(r.valid_len >= data_len);
            prop_assert_eq!(&seen[..spans.len()], &positions(&spans, 0)[..]);
        }
    }
}
