//! The replicator stage. On a single node the local journal is the whole
//! majority, so it publishes R = W and C = F; it is a real stage so that the
//! streaming to followers (replication) plugs in here without touching the
//! other stages.

use super::shared::{Idle, Shared, Stage};
use std::sync::Arc;
use std::time::Duration;

/// The replicator thread for a single-node group.
pub fn run(shared: Arc<Shared>) {
    shared.register(Stage::Replicator);
    // A pure relay on one node: it is always woken when there is work.
    let mut idle = Idle::with_spin_rounds(0);
    let p = &shared.positions;
    loop {
        let w = p.written.get();
        let f = p.flushed.get();
        let mut moved = false;
        if w > p.replicated.get() {
            p.replicated.publish(w);
            moved = true;
        }
        if f > p.committed.get() {
            p.committed.publish(f);
            shared.wake(Stage::Reader);
            moved = true;
        }
        if moved {
            shared.wake(Stage::Responder);
            idle.busy();
            continue;
        }
        if shared.is_done(Stage::Flusher)
            && p.replicated.get() == p.written.get()
            && p.committed.get() == p.flushed.get()
        {
            shared.mark_done(Stage::Replicator);
            return;
        }
        idle.wait(Duration::from_millis(50));
    }
}
