//! Majority arithmetic, kept apart from the state machine so that it can be
//! read and tested against the paper on its own (after raft-rs
//! `quorum/majority.rs`).
//!
//! A group of `n` voters decides with a quorum of `n / 2 + 1`. Two uses:
//! - **positions**: the highest journal position that at least a quorum of
//!   voters have reached (R from written positions, C from flushed ones);
//! - **tallies**: whether a set of yes/no/unknown answers (votes, or "heard
//!   from recently" for check-quorum) has already won, already lost, or can
//!   still go either way.

/// Most voters a group may have. Positions are sorted in a stack array of
/// this size, so computing a majority never allocates.
pub const VOTERS_MAX: usize = 9;

/// Size of a quorum (a strict majority) of `voters` voters.
///
/// # Panics
/// If `voters` is 0.
pub const fn quorum(voters: usize) -> usize {
    assert!(voters > 0, "a group needs at least one voter");
    voters / 2 + 1
}

/// The highest position that at least a quorum of the voters have reached,
/// one position per voter. Every position at or below the result is held by
/// a quorum; the next one above is not.
///
/// # Panics
/// If `positions` is empty or longer than [`VOTERS_MAX`].
pub fn majority_position(positions: &[u64]) -> u64 {
    let n = positions.len();
    assert!(
        (1..=VOTERS_MAX).contains(&n),
        "{n} voters (1..={VOTERS_MAX})"
    );
    let mut sorted = [0u64; VOTERS_MAX];
    sorted[..n].copy_from_slice(positions);
    sorted[..n].sort_unstable();
    // Ascending order: the quorum highest positions are the last q ones, and
    // the lowest of those is what all of them have reached.
    sorted[n - quorum(n)]
}

/// The highest position held either by a quorum of voters that count
/// (`counts[i]`: voter `i` has caught up, see `HardState::caught_up`) or by
/// every voter: what a leader may call replicated (written positions) or
/// committed (flushed positions). A voter that has not caught up may be a
/// wiped disk whose old self was counted elsewhere; like its vote, its
/// position counts only where nobody is missing.
///
/// # Panics
/// If `positions` is empty, longer than [`VOTERS_MAX`], or `counts` is not
/// as long.
pub fn majority_position_counting(positions: &[u64], counts: &[bool]) -> u64 {
    assert_eq!(positions.len(), counts.len(), "one flag per voter");
    let n = positions.len();
    let mut full = [0u64; VOTERS_MAX];
    let mut k = 0;
    for (p, c) in positions.iter().zip(counts) {
        if *c {
            full[k] = *p;
            k += 1;
        }
    }
    let q = quorum(n);
    // Held by q of the voters that count: the q-th highest of them.
    let by_quorum = if k >= q {
        full[..k].sort_unstable();
        full[k - q]
    } else {
        0
    };
    // Held by every voter.
    let by_all = positions.iter().copied().min().unwrap_or(0);
    by_quorum.max(by_all)
}

/// Outcome of a tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum answered yes.
    Won,
    /// So many answered no that a quorum of yes is no longer possible.
    Lost,
    /// Neither yet: the missing answers decide.
    Pending,
}

/// Tallies one answer per voter: `Some(true)` yes, `Some(false)` no, `None`
/// not (yet) answered.
///
/// # Panics
/// If `votes` is empty.
pub fn vote_result(votes: &[Option<bool>]) -> VoteResult {
    let q = quorum(votes.len());
    let yes = votes.iter().filter(|v| **v == Some(true)).count();
    let missing = votes.iter().filter(|v| v.is_none()).count();
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// One voter's answer in an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Yes, from a voter that has caught up since its data directory was
    /// made (see `HardState::caught_up`).
    Yes,
    /// Yes, from a voter that has not: it may have been wiped and forgotten
    /// a vote or an acknowledgement, so its yes counts only if every voter
    /// says yes.
    YesIfUnanimous,
    /// No.
    No,
}

impl Answer {
    /// The answer of a voter that `granted` its vote (or not) and has
    /// `caught_up` (or not).
    pub fn new(granted: bool, caught_up: bool) -> Answer {
        match (granted, caught_up) {
            (false, _) => Answer::No,
            (true, true) => Answer::Yes,
            (true, false) => Answer::YesIfUnanimous,
        }
    }
}

/// Tallies an election, one answer per voter (`None`: not yet answered).
/// Won with a quorum of [`Answer::Yes`], or with a yes of either kind from
/// every voter.
///
/// A quorum of caught-up voters intersects every majority that committed
/// an entry in at least one voter that still holds it (a wiped voter is not
/// caught up), and every earlier quorum of the term in a voter that
/// remembers its vote. A unanimous election reaches every voter, so it
/// hears from any that still holds a committed entry, and another leader
/// of its term would need every voter to have voted twice.
///
/// # Panics
/// If `answers` is empty.
pub fn election_result(answers: &[Option<Answer>]) -> VoteResult {
    let q = quorum(answers.len());
    let count = |a: Option<Answer>| answers.iter().filter(|x| **x == a).count();
    let (yes, yes_if, missing) = (
        count(Some(Answer::Yes)),
        count(Some(Answer::YesIfUnanimous)),
        count(None),
    );
    if yes >= q || yes + yes_if == answers.len() {
        VoteResult::Won
    } else if yes + missing >= q || count(Some(Answer::No)) == 0 {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        for (voters, q) in [
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (5, 3),
            (6, 4),
            (7, 4),
            (9, 5),
        ] {
            assert_eq!(quorum(voters), q, "{voters} voters");
        }
    }

    #[test]
    fn majority_position_is_held_by_a_quorum() {
        let table: &[(&[u64], u64)] = &[
            // One voter: its own position.
            (&[7], 7),
            // Two voters: both must hold it.
            (&[7, 3], 3),
            // Three voters: the median.
            (&[0, 0, 0], 0),
            (&[10, 0, 0], 0),
            (&[10, 5, 0], 5),
            (&[10, 5, 8], 8),
            (&[5, 10, 8], 8),
            (&[10, 10, 0], 10),
            // Four voters need three.
            (&[10, 9, 8, 7], 8),
            (&[10, 10, 0, 0], 0),
            // Five voters need three.
            (&[1, 2, 3, 4, 5], 3),
            (&[100, 100, 100, 0, 0], 100),
            (&[100, 100, 0, 0, 0], 0),
            (&[5, 4, 3, 2, 1], 3),
            // Nine voters need five.
            (&[9, 8, 7, 6, 5, 4, 3, 2, 1], 5),
        ];
        for (positions, want) in table {
            assert_eq!(majority_position(positions), *want, "{positions:?}");
        }
    }

    #[test]
    fn positions_of_voters_that_did_not_catch_up_count_only_when_all_hold_them() {
        let (y, n) = (true, false);
        let table: &[(&[u64], &[bool], u64)] = &[
            (&[10, 5, 0], &[y, y, y], 5),
            // Voter 2 (5) has not caught up: 10 and 0 are no quorum of 5.
            (&[10, 5, 0], &[y, n, y], 0),
            (&[10, 5, 7], &[y, n, y], 7),
            // Everyone holds 5, whatever their state.
            (&[10, 5, 7], &[n, n, n], 5),
            (&[10, 5, 7], &[y, n, n], 5),
            (&[9, 8, 7, 6, 5], &[y, y, n, n, y], 5),
            (&[9, 8, 7, 6, 5], &[y, y, y, n, n], 7),
            (&[4], &[n], 4),
        ];
        for (positions, counts, want) in table {
            assert_eq!(
                majority_position_counting(positions, counts),
                *want,
                "{positions:?} {counts:?}"
            );
        }
    }

    #[test]
    fn majority_position_does_not_reorder_the_input() {
        let positions = [3, 1, 2];
        assert_eq!(majority_position(&positions), 2);
        assert_eq!(positions, [3, 1, 2]);
    }

    #[test]
    #[should_panic]
    fn majority_position_of_no_voters_panics() {
        majority_position(&[]);
    }

    #[test]
    fn vote_tallies_follow_the_quorum() {
        use VoteResult::*;
        let (y, n, u) = (Some(true), Some(false), None);
        let table: &[(&[Option<bool>], VoteResult)] = &[
            (&[y], Won),
            (&[n], Lost),
            (&[u], Pending),
            (&[y, u], Pending),
            (&[y, y], Won),
            (&[y, n], Lost),
            (&[y, u, u], Pending),
            (&[y, y, u], Won),
            (&[y, n, u], Pending),
            (&[y, n, n], Lost),
            (&[n, n, u], Lost),
            (&[y, u, u, u, u], Pending),
            (&[y, y, u, u, u], Pending),
            (&[y, y, y, u, u], Won),
            (&[y, y, n, n, u], Pending),
            (&[y, n, n, n, u], Lost),
            (&[y, y, n, n, n], Lost),
        ];
        for (votes, want) in table {
            assert_eq!(vote_result(votes), *want, "{votes:?}");
        }
    }

    #[test]
    fn elections_count_voters_that_did_not_catch_up_only_when_unanimous() {
        use VoteResult::*;
        let (y, f, n, u) = (
            Some(Answer::Yes),
            Some(Answer::YesIfUnanimous),
            Some(Answer::No),
            None,
        );
        let table: &[(&[Option<Answer>], VoteResult)] = &[
            (&[y], Won),
            (&[f], Won),
            // Caught-up voters decide by majority, as in Raft.
            (&[y, y, u], Won),
            (&[y, n, y], Won),
            (&[y, n, n], Lost),
            // A new group: nobody caught up; every voter must agree.
            (&[f, f, u], Pending),
            (&[f, f, f], Won),
            (&[f, f, n], Lost),
            // One caught up, the others not (say, wiped).
            (&[y, f, u], Pending),
            (&[y, f, f], Won),
            (&[y, f, n], Lost),
            (&[f, y, y], Won),
            (&[y, f, f, f, u], Pending),
            (&[y, y, f, f, n], Lost),
            (&[y, y, y, f, n], Won),
        ];
        for (answers, want) in table {
            assert_eq!(election_result(answers), *want, "{answers:?}");
        }
    }
}
