//! The consensus view of the journal: one entry per record batch, as
//! `(start, end, term)` byte ranges, contiguous from the log's *base*.
//!
//! Only positions and terms live here; the bytes stay in the journal. The
//! base is 0 for a log that was never compacted; otherwise it is the
//! position of a snapshot of the committed prefix (the entries below it
//! were dropped, [`Log::compact`], or never held, [`Log::install`]), and
//! only its term is remembered. A position is an *entry boundary* when an
//! entry ends there or it is the base. Terms never decrease along the log,
//! which is what makes the "largest boundary at or below `pos` with term at
//! most `t`" search a binary search.

use super::ConsensusError;

/// One record batch of the journal, as consensus sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Journal position of the batch's first byte.
    pub start: u64,
    /// Journal position just past its last byte (`start < end`).
    pub end: u64,
    /// Term of the leader that appended it (stamped into the batch header).
    pub term: u64,
}

/// Checks that `entries` are non-empty ranges, contiguous from `from`, with
/// terms that never decrease from `from_term` and never exceed `term_max`.
pub(crate) fn check_run(
    entries: &[Entry],
    from: u64,
    from_term: u64,
    term_max: u64,
) -> Result<(), &'static str> {
    let (mut pos, mut term) = (from, from_term);
    for e in entries {
        if e.start != pos {
            return Err("entries are not contiguous");
        }
        if e.end <= e.start {
            return Err("an entry is empty");
        }
        if e.term < term {
            return Err("entry terms decrease");
        }
        if e.term > term_max {
            return Err("an entry's term is above the message's term");
        }
        pos = e.end;
        term = e.term;
    }
    Ok(())
}

/// The entries of the journal above the base, in order.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Where the entries start: 0, or a snapshot's position.
    base: u64,
    /// Term of the entry that ended at `base` (0 at position 0).
    base_term: u64,
    entries: Vec<Entry>,
}

/// After a compaction, the entries' buffer is shrunk when it holds more
/// than twice this many spare slots (and more than half of it is spare).
const SPARE_ENTRIES_MAX: usize = 4096;

impl Log {
    /// A log holding `entries`, which must be contiguous from position 0
    /// with non-decreasing terms.
    ///
    /// # Errors
    /// [`ConsensusError::InvalidState`] if they are not.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Log, ConsensusError> {
        Log::with_base(0, 0, entries)
    }

    /// A log whose prefix up to `base` (where an entry of `base_term`
    /// ended) is a snapshot, followed by `entries`, contiguous from `base`
    /// with terms from `base_term` on.
    ///
    /// # Errors
    /// [`ConsensusError::InvalidState`] if they are not, or if `base` is 0
    /// with a term other than 0.
    pub fn with_base(
        base: u64,
        base_term: u64,
        entries: Vec<Entry>,
    ) -> Result<Log, ConsensusError> {
        if base == 0 && base_term != 0 {
            return Err(ConsensusError::InvalidState(
                "a log based at position 0 with a term",
            ));
        }
        check_run(&entries, base, base_term, u64::MAX).map_err(ConsensusError::InvalidState)?;
        Ok(Log {
            base,
            base_term,
            entries,
        })
    }

    /// Every entry above the base, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The base: the snapshot's position (0 when never compacted).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Term of the entry that ended at the base.
    pub fn base_term(&self) -> u64 {
        self.base_term
    }

    /// End of the last entry (the base when there is none).
    pub fn last_pos(&self) -> u64 {
        self.entries.last().map_or(self.base, |e| e.end)
    }

    /// Term of the last entry (the base's when there is none).
    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.base_term, |e| e.term)
    }

    /// Term of the entry ending exactly at `pos`; the base's term at the
    /// base; `None` when `pos` is not an entry boundary of this log (below
    /// the base, nothing is known).
    pub fn term_at(&self, pos: u64) -> Option<u64> {
        if pos <= self.base {
            return (pos == self.base).then_some(self.base_term);
        }
        self.entries
            .binary_search_by_key(&pos, |e| e.end)
            .ok()
            .map(|i| self.entries[i].term)
    }

    /// The entry starting exactly at `pos`, if any.
    pub fn entry_at(&self, pos: u64) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&pos, |e| e.start)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The entries starting at or after `pos`.
    pub fn entries_from(&self, pos: u64) -> &[Entry] {
        let i = self.entries.partition_point(|e| e.start < pos);
        &self.entries[i..]
    }

    /// The entries from boundary `pos` on, as many as fit in `bytes_max`
    /// but at least one (an entry larger than the limit still travels).
    pub fn batch_from(&self, pos: u64, bytes_max: u64) -> &[Entry] {
        let rest = self.entries_from(pos);
        let mut n = 0;
        for e in rest {
            if n > 0 && e.end - pos > bytes_max {
                break;
            }
            n += 1;
        }
        &rest[..n]
    }

    /// The largest boundary at or below `pos` whose term is at most `term`,
    /// with that term: where a leader (or follower) should look for the
    /// point where two logs last agreed. `None` when that point would lie
    /// below the base (`pos` is below it, or the base's term is above
    /// `term`): this log no longer holds it. Never `None` for a log based
    /// at 0, where `(0, 0)` always qualifies.
    pub fn last_boundary_at_or_below(&self, pos: u64, term: u64) -> Option<(u64, u64)> {
        if pos < self.base || self.base_term > term {
            return None;
        }
        let below = self.entries.partition_point(|e| e.end <= pos);
        // Terms never decrease, so the entries with term <= `term` are a prefix.
        let k = self.entries[..below].partition_point(|e| e.term <= term);
        Some(match k {
            0 => (self.base, self.base_term),
            k => (self.entries[k - 1].end, self.entries[k - 1].term),
        })
    }

    /// Appends one entry at the end.
    ///
    /// # Panics
    /// If it does not start at [`Log::last_pos`], is empty, or lowers the term.
    pub fn append(&mut self, e: Entry) {
        assert!(
            e.start == self.last_pos() && e.end > e.start && e.term >= self.last_term(),
            "append {e:?} after position {} term {}",
            self.last_pos(),
            self.last_term()
        );
        self.entries.push(e);
    }

    /// Removes every entry at or after boundary `pos`.
    ///
    /// # Panics
    /// If `pos` is not an entry boundary.
    pub fn truncate(&mut self, pos: u64) {
        assert!(
            self.term_at(pos).is_some(),
            "truncate at {pos}, not an entry boundary"
        );
        let i = self.entries.partition_point(|e| e.end <= pos);
        self.entries.truncate(i);
    }

    /// Drops every entry ending at or below boundary `pos`: the prefix up to
    /// there is now a snapshot's, and `pos` the base. Compacting at or
    /// below the base does nothing.
    ///
    /// # Panics
    /// If `pos` is above the base and not an entry boundary.
    pub fn compact(&mut self, pos: u64) {
        if pos <= self.base {
            return;
        }
        let term = self.term_at(pos);
        assert!(term.is_some(), "compact at {pos}, not an entry boundary");
        let i = self.entries.partition_point(|e| e.end <= pos);
        self.entries.drain(..i);
        self.base = pos;
        self.base_term = term.unwrap_or(0);
        let spare = self.entries.capacity() - self.entries.len();
        if spare > 2 * SPARE_ENTRIES_MAX && spare > self.entries.len() {
            self.entries
                .shrink_to(self.entries.len() + SPARE_ENTRIES_MAX);
        }
    }

    /// Replaces the whole log by a snapshot's: no entries, based at `pos`
    /// where an entry of `term` ended.
    pub fn install(&mut self, pos: u64, term: u64) {
        self.entries.clear();
        self.entries.shrink_to(SPARE_ENTRIES_MAX);
        self.base = pos;
        self.base_term = if pos == 0 { 0 } else { term };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, end: u64, term: u64) -> Entry {
        Entry { start, end, term }
    }

    fn sample() -> Log {
        // Terms 1,1,2,2,4 over [0,10) [10,15) [15,30) [30,31) [31,50).
        Log::from_entries(vec![
            e(0, 10, 1),
            e(10, 15, 1),
            e(15, 30, 2),
            e(30, 31, 2),
            e(31, 50, 4),
        ])
        .unwrap()
    }

    #[test]
    fn term_at_is_defined_only_at_entry_boundaries() {
        let log = sample();
        let table = [
            (0, Some(0)),
            (5, None),
            (10, Some(1)),
            (15, Some(1)),
            (16, None),
            (30, Some(2)),
            (31, Some(2)),
            (50, Some(4)),
            (51, None),
        ];
        for (pos, want) in table {
            assert_eq!(log.term_at(pos), want, "pos {pos}");
        }
        assert_eq!((log.last_pos(), log.last_term()), (50, 4));
        assert_eq!(Log::default().term_at(0), Some(0));
        assert_eq!(
            (Log::default().last_pos(), Log::default().last_term()),
            (0, 0)
        );
    }

    #[test]
    fn from_entries_refuses_gaps_empty_entries_and_falling_terms() {
        for bad in [
            vec![e(1, 10, 1)],
            vec![e(0, 10, 1), e(11, 12, 1)],
            vec![e(0, 0, 1)],
            vec![e(0, 10, 2), e(10, 12, 1)],
        ] {
            assert!(Log::from_entries(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn last_boundary_at_or_below_finds_the_agreement_point() {
        let log = sample();
        let table = [
            // (pos, term) -> (boundary, its term)
            ((50, 4), (50, 4)),
            ((50, 3), (31, 2)),
            ((49, 4), (31, 2)),
            ((31, 1), (15, 1)),
            ((12, 9), (10, 1)),
            ((50, 0), (0, 0)),
            ((9, 5), (0, 0)),
        ];
        for ((pos, term), want) in table {
            assert_eq!(
                log.last_boundary_at_or_below(pos, term),
                Some(want),
                "({pos}, {term})"
            );
        }
    }

    #[test]
    fn a_compacted_log_knows_only_its_base_and_what_follows() {
        let mut log = sample();
        log.compact(15);
        assert_eq!((log.base(), log.base_term()), (15, 1));
        assert_eq!(log.entries(), &[e(15, 30, 2), e(30, 31, 2), e(31, 50, 4)]);
        for (pos, want) in [
            (0, None),
            (10, None),
            (15, Some(1)),
            (30, Some(2)),
            (50, Some(4)),
        ] {
            assert_eq!(log.term_at(pos), want, "pos {pos}");
        }
        assert_eq!((log.last_pos(), log.last_term()), (50, 4));
        // The agreement point falls back to the base, or below it (None).
        assert_eq!(log.last_boundary_at_or_below(29, 4), Some((15, 1)));
        assert_eq!(log.last_boundary_at_or_below(50, 1), Some((15, 1)));
        assert_eq!(log.last_boundary_at_or_below(14, 9), None);
        assert_eq!(log.last_boundary_at_or_below(50, 0), None);
        // Compacting at or below the base does nothing; to the end empties it.
        log.compact(10);
        assert_eq!(log.base(), 15);
        log.compact(50);
        assert!(log.entries().is_empty());
        assert_eq!((log.base(), log.last_pos(), log.last_term()), (50, 50, 4));
        log.append(e(50, 60, 4));
        log.truncate(50);
        assert_eq!(log.last_pos(), 50);
    }

    #[test]
    fn an_installed_log_starts_at_the_snapshot() {
        let mut log = sample();
        log.install(80, 6);
        assert!(log.entries().is_empty());
        assert_eq!((log.last_pos(), log.last_term()), (80, 6));
        assert_eq!(log.term_at(80), Some(6));
        assert_eq!(log.term_at(50), None);
        log.append(e(80, 90, 6));
        assert_eq!(log.batch_from(80, 100), &[e(80, 90, 6)]);
        assert!(Log::with_base(80, 6, vec![e(80, 81, 5)]).is_err());
        assert!(Log::with_base(80, 6, vec![e(81, 82, 6)]).is_err());
        assert!(Log::with_base(0, 3, vec![]).is_err());
        let log = Log::with_base(80, 6, vec![e(80, 81, 6), e(81, 90, 7)]).unwrap();
        assert_eq!(log.last_boundary_at_or_below(85, 6), Some((81, 6)));
    }

    #[test]
    #[should_panic]
    fn compact_inside_an_entry_panics() {
        sample().compact(12);
    }

    #[test]
    fn batch_from_takes_whole_entries_up_to_the_limit_but_at_least_one() {
        let log = sample();
        assert_eq!(log.batch_from(10, 20), &[e(10, 15, 1), e(15, 30, 2)]);
        assert_eq!(log.batch_from(10, 4), &[e(10, 15, 1)]);
        assert_eq!(log.batch_from(0, 1000).len(), 5);
        assert!(log.batch_from(50, 1000).is_empty());
    }

    #[test]
    fn truncate_removes_the_tail_from_a_boundary() {
        let mut log = sample();
        log.truncate(15);
        assert_eq!(log.entries(), &[e(0, 10, 1), e(10, 15, 1)]);
        log.append(e(15, 16, 5));
        assert_eq!(log.last_term(), 5);
        log.truncate(0);
        assert!(log.entries().is_empty());
    }

    #[test]
    #[should_panic]
    fn truncate_inside_an_entry_panics() {
        sample().truncate(12);
    }
}
