//! A partition's log start as DeleteRecords records set it, when some of
//! those records may not be settled yet.
//!
//! A record counts for a position P when it starts below P (positions are
//! batch boundaries, so it then ends at or below P too). The writer's
//! catalog asks "below F and C" (what a crash or a cut cannot take back),
//! a reader "below C" (what it may serve). Records that every later
//! question will count fold into `settled`.

/// The settled log start and the records not settled yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deletions {
    /// The log start the settled records set (0: none).
    settled: u64,
    /// The records not settled yet: where each starts in the journal and
    /// the log start it sets, in journal order.
    pending: Vec<(u64, u64)>,
}

impl Deletions {
    /// The log start the records starting below `position` set.
    pub fn below(&self, position: u64) -> u64 {
        self.pending
            .iter()
            .filter(|&&(at, _)| at < position)
            .map(|&(_, before)| before)
            .fold(self.settled, u64::max)
    }

    /// The log start every record known sets.
    pub fn latest(&self) -> u64 {
        self.below(u64::MAX)
    }

    /// The log start the settled records set.
    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// The records not settled yet (start position, log start).
    pub fn pending(&self) -> &[(u64, u64)] {
        &self.pending
    }

    /// Takes a record starting at journal position `at` that moves the log
    /// start to `before`; `at` 0 means settled already. True when it is the
    /// only record left unsettled.
    pub fn push(&mut self, at: u64, before: u64) -> bool {
        if at == 0 {
            self.settled = self.settled.max(before);
            return false;
        }
        self.pending.push((at, before));
        self.pending.len() == 1
    }

    /// Folds the records starting below `position` into the settled log
    /// start; true when some are left unsettled.
    pub fn settle(&mut self, position: u64) -> bool {
        self.settled = self.below(position);
        self.pending.retain(|&(at, _)| at >= position);
        !self.pending.is_empty()
    }

    /// Forgets the records at or above journal position `at` (a cut).
    pub fn cut(&mut self, at: u64) {
        self.pending.retain(|&(p, _)| p < at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_below_a_position_and_settle_and_cut_in_order() {
        let mut d = Deletions::default();
        assert!(!d.push(0, 2), "settled at once");
        assert!(d.push(100, 5));
        assert!(!d.push(200, 9));
        assert_eq!((d.below(100), d.below(101), d.below(201)), (2, 5, 9));
        assert_eq!(d.latest(), 9);
        assert!(d.settle(150));
        assert_eq!((d.settled(), d.pending()), (5, &[(200, 9)][..]));
        d.cut(200);
        assert_eq!(d.latest(), 5, "a cut takes back the records above it");
        assert!(!d.settle(u64::MAX));
        assert_eq!(
            d,
            Deletions {
                settled: 5,
                pending: vec![]
            }
        );
    }
}
