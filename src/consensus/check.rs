//! The invariants of `docs/consensus.md` that one node keeps whatever its
//! inputs, as checks a harness runs after every call: the property tests,
//! the simulation and the `consensus_step` fuzz target use them. Nothing
//! here changes a node; a broken invariant is a bug in the state machine.
//!
//! - [`check_node`]: what holds of the node's state at any moment;
//! - [`History`]: what holds across its outputs (terms never go back, a vote
//!   never changes within its term, C never decreases, a truncation never
//!   cuts below C, entries continue the journal, every message it sends is
//!   one a correct node may send).

use super::config::{POSITION_MAX, TERM_MAX};
use super::{HardState, MessageKind, Node, ProgressState, Ready, Role};

/// Checks the node's state: term within [`TERM_MAX`], log within
/// [`POSITION_MAX`] and no term above the node's, `flushed <= written <=
/// end of log` and `C <= R <= written` all at entry boundaries, the leader
/// naming itself, and each follower's progress (leader only) ordered
/// `flushed <= written <= matched <= next <= end of log` at boundaries (or
/// below the snapshot the log starts from, which lies at or below C and the
/// flushed position).
///
/// # Errors
/// The first invariant broken, with the values involved.
pub fn check_node(n: &Node) -> Result<(), String> {
    let fail = |what: &str| Err(format!("node {}: {what}", n.id()));
    let (term, last) = (n.term(), n.last_pos());
    if term > TERM_MAX {
        return fail(&format!("term {term} above TERM_MAX"));
    }
    if n.hard_state().term != term {
        return fail("hard state term differs from the term");
    }
    if last > POSITION_MAX {
        return fail(&format!("log ends at {last}, beyond POSITION_MAX"));
    }
    if let Some(e) = n.log().last() {
        if e.term > term {
            return fail(&format!("log holds term {} above term {term}", e.term));
        }
    }
    let boundary = |p: u64| n.term_at(p).is_some();
    let (base, _) = n.snapshot();
    let (w, f, c, r) = (n.written(), n.flushed(), n.committed(), n.replicated());
    if base > c || base > f {
        return fail(&format!("snapshot at {base} above C {c} or flushed {f}"));
    }
    if !(f <= w && w <= last && boundary(w) && boundary(f)) {
        return fail(&format!(
            "positions flushed {f}, written {w}, log end {last} out of order or off a boundary"
        ));
    }
    if !(c <= r && r <= w && boundary(c) && boundary(r)) {
        return fail(&format!(
            "C {c}, R {r}, written {w} out of order or off a boundary"
        ));
    }
    let leads = n.role() == Role::Leader;
    if leads != (n.leader() == Some(n.id())) {
        return fail(&format!("role {:?} but leader {:?}", n.role(), n.leader()));
    }
    if leads && n.hard_state().voted_for != Some(n.id()) {
        return fail("a leader that did not vote for itself");
    }
    for p in n.peers() {
        let pr = p.progress;
        let ordered = pr.flushed <= pr.written
            && pr.written <= pr.matched
            && pr.matched <= pr.next
            && pr.next <= last;
        // Below the snapshot the log forgot its boundaries; a follower
        // waiting for the snapshot is sent it at the base.
        let at_boundaries = [pr.flushed, pr.written, pr.matched, pr.next]
            .iter()
            .all(|x| *x < base || boundary(*x));
        let snapshot_ok = pr.state != ProgressState::Snapshot || pr.next <= base;
        if !ordered || !at_boundaries || !snapshot_ok {
            return fail(&format!("progress of node {}: {pr:?}", p.id));
        }
    }
    Ok(())
}

/// What a harness remembers of one node's outputs, to check them against
/// each other. Make one per run of a node (a restart starts a new history
/// for what is not persisted).
#[derive(Clone, Debug, Default)]
pub struct History {
    hard: Option<HardState>,
    committed: u64,
    /// End of the journal as the caller holds it (after every `Ready`).
    journal_end: u64,
}

impl History {
    /// A history of a node that starts on a journal ending at `end`.
    pub fn new(end: u64) -> History {
        History {
            journal_end: end,
            ..History::default()
        }
    }

    /// Checks `rd`, just taken from `n` with `Node::ready`, against what
    /// came before, then remembers it.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn observe(&mut self, n: &Node, rd: &Ready) -> Result<(), String> {
        let fail = |what: String| Err(format!("node {}: {what}", n.id()));
        if let Some(hs) = rd.hard_state {
            if let Some(old) = self.hard {
                if hs.term < old.term {
                    return fail(format!("persists term {} after {}", hs.term, old.term));
                }
                let vote = |h: &HardState| (h.voted_for, h.voted_incarnation);
                if hs.term == old.term && old.voted_for.is_some() && vote(&hs) != vote(&old) {
                    return fail(format!(
                        "changes its vote in term {} from {:?} to {:?}",
                        hs.term,
                        vote(&old),
                        vote(&hs)
                    ));
                }
                if hs.incarnation < old.incarnation {
                    return fail(format!(
                        "persists incarnation {:#x} after {:#x}",
                        hs.incarnation, old.incarnation
                    ));
                }
                // Only a new incarnation (a stale directory found out)
                // starts catching up again.
                if old.caught_up && !hs.caught_up && hs.incarnation == old.incarnation {
                    return fail("forgets that it caught up".into());
                }
            }
            if hs.term > TERM_MAX {
                return fail(format!("persists term {} above TERM_MAX", hs.term));
            }
            self.hard = Some(hs);
        }
        if let Some(c) = rd.committed {
            if c < self.committed {
                return fail(format!("C goes back from {} to {c}", self.committed));
            }
            self.committed = c;
        }
        if let Some((p, _)) = rd.install {
            if p < self.committed {
                return fail(format!(
                    "installs a snapshot at {p}, below C {}",
                    self.committed
                ));
            }
            self.journal_end = p;
        }
        if let Some(p) = rd.truncate {
            if p < self.committed {
                return fail(format!(
                    "cuts the journal at {p}, below C {}",
                    self.committed
                ));
            }
            if p > self.journal_end {
                return fail(format!(
                    "cuts at {p}, past the journal end {}",
                    self.journal_end
                ));
            }
            self.journal_end = p;
        }
        for e in &rd.entries {
            if e.start != self.journal_end || e.end <= e.start {
                return fail(format!("appends {e:?} at journal end {}", self.journal_end));
            }
            self.journal_end = e.end;
        }
        for m in &rd.messages {
            if m.from != n.id() || m.to == n.id() {
                return fail(format!("sends {m:?}"));
            }
            if let Err(e) = m.check_fields() {
                return fail(format!("sends {m:?}, which breaks a rule: {}", e.reason));
            }
            if let MessageKind::Append { entries, .. } = &m.kind {
                if entries.last().is_some_and(|e| e.end > self.journal_end) {
                    return fail(format!("sends {m:?} beyond its journal"));
                }
            }
        }
        Ok(())
    }
}
