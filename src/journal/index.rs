//! The per-partition index: one entry per stored batch, mapping the
//! partition's message offsets to journal byte positions.
//!
//! Entries are appended by the writer in journal order, so within a
//! partition both `base_offset` and `position` increase strictly, and a
//! lookup is a binary search. The index lives in an [`AppendLog`], so
//! reader threads search it without a lock while the writer appends; a
//! search takes the length to search as an argument so the caller decides
//! which prefix is visible (for example only entries below the flushed
//! position).

use super::append_log::{AppendLog, AppendWriter};

/// Where one batch of a partition lies in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Journal position of the batch's first byte.
    pub position: u64,
    /// Bytes of the batch.
    pub len: u32,
    /// Records in the batch.
    pub count: u32,
    /// The newest append time (ms since the epoch) of this batch and every
    /// earlier batch of the partition: append times are the broker's clock,
    /// which may step back, so a search by time runs over this running
    /// maximum (as Kafka's time index does).
    pub max_time_ms: i64,
}

impl IndexEntry {
    /// Offset one past the batch's last record. Saturates rather than wraps
    /// so that a nonsensical offset from a damaged file cannot panic.
    pub fn next_offset(&self) -> u64 {
        self.base_offset.saturating_add(u64::from(self.count))
    }

    /// Journal position one past the batch's last byte.
    pub fn end_position(&self) -> u64 {
        self.position.saturating_add(u64::from(self.len))
    }
}

/// A partition's index, shared with reader threads.
pub type PartitionIndex = AppendLog<IndexEntry>;

/// Anything the index searches can run over: the shared log, the writer's
/// handle (which knows its own length without an atomic load), or a slice.
pub trait IndexEntries {
    /// Entries that may be read now.
    fn entry_count(&self) -> usize;
    /// Entry `i`, or `None` when `i >= entry_count()`.
    fn entry(&self, i: usize) -> Option<&IndexEntry>;
}

impl IndexEntries for AppendLog<IndexEntry> {
    fn entry_count(&self) -> usize {
        self.len()
    }
    fn entry(&self, i: usize) -> Option<&IndexEntry> {
        self.get(i)
    }
}

impl IndexEntries for AppendWriter<IndexEntry> {
    fn entry_count(&self) -> usize {
        self.len()
    }
    fn entry(&self, i: usize) -> Option<&IndexEntry> {
        self.get(i)
    }
}

impl IndexEntries for Vec<IndexEntry> {
    fn entry_count(&self) -> usize {
        self.len()
    }
    fn entry(&self, i: usize) -> Option<&IndexEntry> {
        self.get(i)
    }
}

impl IndexEntries for [IndexEntry] {
    fn entry_count(&self) -> usize {
        self.len()
    }
    fn entry(&self, i: usize) -> Option<&IndexEntry> {
        self.get(i)
    }
}

/// The number of leading entries among the first `len` for which `below`
/// holds; `below` must hold for a prefix and fail for the rest. A `len`
/// beyond what `index` holds is cut to what it holds.
pub fn partition_point_in<I: IndexEntries + ?Sized>(
    index: &I,
    len: usize,
    below: impl Fn(&IndexEntry) -> bool,
) -> usize {
    let (mut lo, mut hi) = (0, len.min(index.entry_count()));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match index.entry(mid) {
            Some(e) if below(e) => lo = mid + 1,
            _ => hi = mid,
        }
    }
    lo
}

/// [`locate`] over any [`IndexEntries`].
pub fn locate_in<I: IndexEntries + ?Sized>(index: &I, len: usize, offset: u64) -> usize {
    partition_point_in(index, len, |e| e.next_offset() <= offset)
}

/// [`entries_below`] over any [`IndexEntries`].
pub fn entries_below_in<I: IndexEntries + ?Sized>(index: &I, len: usize, position: u64) -> usize {
    partition_point_in(index, len, |e| e.end_position() <= position)
}

/// Index (< `len`) of the first entry whose `next_offset()` > `offset`: the
/// batch holding `offset`, or the first batch after it when `offset` falls
/// in a gap or before the first entry; `len` if there is none. Binary
/// search over entries `[0, len)`; a `len` above the published length is
/// treated as the published length.
pub fn locate(index: &AppendLog<IndexEntry>, len: usize, offset: u64) -> usize {
    locate_in(index, len, offset)
}

/// Number of leading entries (within `[0, len)`) whose `end_position()` <=
/// `position`: the batches that lie wholly below `position`. Binary search,
/// since positions increase along the index.
pub fn entries_below(index: &AppendLog<IndexEntry>, len: usize, position: u64) -> usize {
    entries_below_in(index, len, position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::append_log::append_log;
    use proptest::prelude::*;

    /// A partition's batches: offsets continue from batch to batch, while
    /// positions leave gaps where other partitions' batches lie.
    fn entries(shape: &[(u32, u32, u64)]) -> Vec<IndexEntry> {
        let (mut offset, mut position) = (100, 4096);
        shape
            .iter()
            .map(|&(count, len, gap)| {
                position += gap;
                let e = IndexEntry {
                    base_offset: offset,
                    position,
                    len,
                    count,
                    max_time_ms: 0,
                };
                offset = e.next_offset();
                position = e.end_position();
                e
            })
            .collect()
    }

    fn shared(entries: &[IndexEntry]) -> std::sync::Arc<PartitionIndex> {
        let (mut w, r) = append_log();
        for e in entries {
            w.push(*e);
        }
        r
    }

    #[test]
    fn entry_ends_are_base_plus_count_and_position_plus_len() {
        let e = IndexEntry {
            base_offset: 10,
            position: 1000,
            len: 200,
            count: 3,
            max_time_ms: 0,
        };
        assert_eq!((e.next_offset(), e.end_position()), (13, 1200));
        let huge = IndexEntry {
            base_offset: u64::MAX - 1,
            position: u64::MAX,
            len: 9,
            count: 9,
            max_time_ms: 0,
        };
        assert_eq!(
            (huge.next_offset(), huge.end_position()),
            (u64::MAX, u64::MAX)
        );
    }

    #[test]
    fn locate_finds_the_batch_holding_an_offset() {
        // Batches hold offsets 100..103, 103..104, 104..114.
        let es = entries(&[(3, 200, 0), (1, 100, 50), (10, 900, 7)]);
        let idx = shared(&es);
        let cases = [
            (0, 0),
            (99, 0),
            (100, 0),
            (102, 0),
            (103, 1),
            (104, 2),
            (113, 2),
            (114, 3),
            (u64::MAX, 3),
        ];
        for (offset, want) in cases {
            assert_eq!(locate(&idx, 3, offset), want, "offset {offset}");
        }
        // Only the first `len` entries are searched.
        assert_eq!(locate(&idx, 1, 104), 1);
        assert_eq!(locate(&idx, 0, 100), 0);
        // A len beyond the published length is cut to it.
        assert_eq!(locate(&idx, 99, 200), 3);
    }

    #[test]
    fn entries_below_counts_batches_ending_at_or_before_a_position() {
        // Positions 4096..4296, 4346..4446, 4453..5353.
        let es = entries(&[(3, 200, 0), (1, 100, 50), (10, 900, 7)]);
        let idx = shared(&es);
        let cases = [
            (0, 0),
            (4295, 0),
            (4296, 1),
            (4445, 1),
            (4446, 2),
            (5352, 2),
            (5353, 3),
            (u64::MAX, 3),
        ];
        for (position, want) in cases {
            assert_eq!(
                entries_below(&idx, 3, position),
                want,
                "position {position}"
            );
        }
        assert_eq!(entries_below(&idx, 2, u64::MAX), 2);
    }

    #[test]
    fn an_empty_index_locates_nothing() {
        let idx = shared(&[]);
        assert_eq!(locate(&idx, 0, 5), 0);
        assert_eq!(entries_below(&idx, 10, 5), 0);
    }

    #[test]
    fn the_writer_handle_searches_like_the_shared_log() {
        let es = entries(&[(2, 10, 0), (2, 10, 0), (2, 10, 0)]);
        let (mut w, r) = append_log();
        for e in &es {
            w.push(*e);
        }
        for offset in 95..110 {
            assert_eq!(locate_in(&w, 3, offset), locate(&r, 3, offset));
        }
        assert_eq!(entries_below_in(&w, 3, 4116), 2);
    }

    proptest! {
        #[test]
        fn binary_searches_agree_with_linear_scans(
            shape in prop::collection::vec((1u32..50, 88u32..5000, 0u64..3000), 0..200),
            probe in 0u64..20_000,
            cut in 0usize..220,
        ) {
            let es = entries(&shape);
            let idx = shared(&es);
            let len = cut.min(es.len());
            let offset = 100 + probe % 10_000;
            let want = es[..len].iter().position(|e| e.next_offset() > offset).unwrap_or(len);
            prop_assert_eq!(locate(&idx, len, offset), want);
            prop_assert_eq!(locate_in(es.as_slice(), len, offset), want);
            let position = 4096 + probe * 20;
            let want = es[..len].iter().take_while(|e| e.end_position() <= position).count();
            prop_assert_eq!(entries_below(&idx, len, position), want);
        }
    }
}
