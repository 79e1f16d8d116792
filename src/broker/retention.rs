//! Retention: the writer decides which oldest segments go
//! ([`Journal::retain`](crate::journal::log::Journal::retain), no IO), and
//! this stage does the slow part on its own thread, so that deleting a
//! segment never pauses the writer, the reactor or the responder:
//!
//! 1. write the new start state durably (temporary file, fsync, rename,
//!    fsync the directory): from here on recovery starts the journal there
//!    and deletes any older segment it still finds;
//! 2. tell the reader, which moves log starts up (fetches below them get
//!    `OffsetOutOfRange`) and lets go of the old files;
//! 3. unlink the old segment files, oldest first, and fsync the directory;
//! 4. close them last, once the reader and the flusher let go, so that
//!    freeing their blocks (a close of an unlinked file) costs this thread
//!    and not a pipeline stage.
//!
//! A crash before step 1 is done leaves the old start state and every
//! segment; a crash after it leaves the new start state, and recovery
//! deletes whatever segment below it is still there
//! ([`Journal::open_with`](crate::journal::log::Journal::open_with)).
//! Either way the journal is contiguous from its start state on.

use super::reader::ReaderEvent;
use crate::journal::log::Retained;
use crate::journal::start;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the stage waits for the other holders of a deleted segment's
/// file to let go before closing its own handle anyway.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// Poll interval of that wait.
const RELEASE_POLL: Duration = Duration::from_millis(5);

/// Carries out the writer's retention decisions until the writer hangs
/// up (it drops its sender when it stops).
pub fn run(dir: PathBuf, decisions: Receiver<Retained>, reader: Sender<ReaderEvent>) {
    while let Ok(decision) = decisions.recv() {
        carry_out(&dir, decision, &reader);
    }
}

/// One decision, steps 1 to 4 of the [module docs](self).
fn carry_out(dir: &std::path::Path, decision: Retained, reader: &Sender<ReaderEvent>) {
    let position = decision.state.position;
    if let Err(e) = start::write(dir, &decision.state) {
        // Nothing was deleted and the old start state stands: the files
        // stay until the next start, which decides again.
        crate::log!(
            "retention: cannot write the start state at position {position}, \
             keeping {} segment(s) until the next start: {e}",
            decision.files.len()
        );
        return;
    }
    let _ = reader.send(ReaderEvent::Retained { position });
    let mut removed = 0usize;
    for ((start, _), path) in &decision.files {
        match std::fs::remove_file(path) {
            Ok(()) => removed += 1,
            // The next start deletes what is left below the start state.
            Err(e) => crate::log!(
                "retention: cannot remove segment {start} ({}): {e}",
                path.display()
            ),
        }
    }
    if removed > 0 {
        if let Err(e) = crate::journal::dir::sync_dir(dir) {
            crate::log!("retention: {e}");
        }
    }
    let deadline = Instant::now() + RELEASE_WAIT;
    for ((_, file), _) in decision.files {
        while Arc::strong_count(&file) > 1 && Instant::now() < deadline {
            std::thread::sleep(RELEASE_POLL);
        }
        drop(file);
    }
    crate::log!(
        "retention: the journal now starts at position {position} ({removed} segment(s) deleted)"
    );
}
