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

// ----- a member of a replication group ------------------------------------

use crate::consensus::{Entry, Message, MessageKind};
use crate::journal::log::SegmentFile;
use crate::journal::reader::JournalReader;
use crate::journal::snapshot;
use crate::wire::batch::{declared_len, BatchView};
use crate::wire::replicate::{write_chunk_frame, write_frame, SnapshotChunk, SNAPSHOT_CHUNK_BYTES};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ringbuf::traits::{Consumer, Observer};
use ringbuf::HeapCons;
use std::io::{ErrorKind, Read, Write};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::Instant;

/// The token of the replicator's waker; peer links use their slot number.
const WAKER: Token = Token(usize::MAX);
/// Bytes queued for one peer before further messages to it are dropped: a
/// peer that stopped reading (frozen, or its host overloaded) must not
/// grow the broker's memory or stall the others. The consensus window
/// (8 MiB of appends in flight) keeps a live peer well below it.
const LINK_QUEUE_BYTES_MAX: usize = 32 << 20;
/// Wait before the first new connection attempt to a peer; it doubles
/// after each connection that failed or did not last, up to
/// `RECONNECT_DELAY_MAX` (a peer behind a cut link may accept and close
/// at once, forever).
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts.
const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(500);
/// A connection that lasted this long was a good one: the delay resets.
const LINK_STABLE: Duration = Duration::from_secs(2);
/// Messages taken from the outbox per round.
const MESSAGES_PER_ROUND_MAX: usize = 1024;

/// What the writer tells the replicator about the journal's files.
pub enum SegmentEvent {
    /// A new segment file was started.
    Segment(SegmentFile),
    /// The journal was cut: the segment files now.
    Reset(Vec<SegmentFile>),
    /// Retention deleted the segments below this position (a segment
    /// start, at or below the consensus log's base, so no append reads
    /// there): let go of their files, so that their space is freed.
    ForgetBelow(u64),
}

/// The outbound connection to one peer. Replication messages are one-way:
/// each node sends its own messages on its own connection to each peer and
/// reads nothing back but the odd error frame, which it discards.
struct Link {
    id: u64,
    /// Bit in `ClusterView::link_changes`.
    slot: usize,
    addr: String,
    stream: Option<TcpStream>,
    connected: bool,
    queue: Vec<u8>,
    sent: usize,
    retry_at: Instant,
    /// Messages dropped because its queue was full.
    dropped: u64,
    /// Connections in a row that failed or did not last.
    failures: u32,
    /// When the current connection was made.
    connected_at: Instant,
    /// A snapshot on its way to the peer, chunk after chunk as the queue
    /// drains (a snapshot may be far larger than the queue may hold).
    snapshot: Option<Outgoing>,
}

/// A snapshot file being sent to one peer.
struct Outgoing {
    file: Arc<Vec<u8>>,
    /// Bytes of `file` queued so far.
    queued: usize,
    /// The `InstallSnapshot` message that follows the last chunk.
    message: Message,
}

/// The replicator of a group member: carries the consensus node's messages
/// to the peers, reading the journal bytes of each append from the files.
pub struct Courier {
    links: Vec<Link>,
    journal: JournalReader,
    poll: Poll,
    /// The journal bytes read for the last append, and their range with
    /// the term of its last entry: the same range usually goes to every
    /// follower, so it is read once. By log matching, an end position and
    /// the term of the entry ending there name the same bytes before it,
    /// even across a truncation.
    scratch: Vec<u8>,
    scratch_range: Option<(u64, u64, u64)>,
    /// The messages of the current round, kept to reuse its allocation.
    taken: Vec<Message>,
    /// The data directory, where the snapshot file is.
    dir: PathBuf,
    /// The snapshot file last read, by position and term (every follower
    /// that needs it gets the same).
    snapshot_file: Option<(u64, u64, Arc<Vec<u8>>)>,
}

impl Courier {
    /// A courier for `config`'s group, reading the journal from `segments`.
    ///
    /// # Errors
    /// Creating the poll or its waker failed.
    pub fn new(
        config: &crate::config::Config,
        segments: Vec<SegmentFile>,
        shared: &Shared,
    ) -> std::io::Result<Courier> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let _ = shared.replicator_waker.set(waker);
        let links = config
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.id != config.node_id)
            .map(|(slot, p)| Link {
                id: p.id,
                slot,
                addr: p.addr.clone(),
                stream: None,
                connected: false,
                queue: Vec::new(),
                sent: 0,
                retry_at: Instant::now(),
                dropped: 0,
                failures: 0,
                connected_at: Instant::now(),
                snapshot: None,
            })
            .collect();
        Ok(Courier {
            links,
            journal: JournalReader::new(segments),
            poll,
            scratch: Vec::new(),
            scratch_range: None,
            taken: Vec::with_capacity(MESSAGES_PER_ROUND_MAX),
            dir: config.data_dir.clone(),
            snapshot_file: None,
        })
    }

    /// The snapshot file for `pos` and `term`, read once for every peer
    /// that needs it; `None` (said in the log) when the file holds another
    /// snapshot: the writer keeps the file at the node's log base, so the
    /// node sends the one that is there when it resends.
    fn snapshot_file(&mut self, pos: u64, term: u64) -> Option<Arc<Vec<u8>>> {
        if let Some((p, t, file)) = &self.snapshot_file {
            if (*p, *t) == (pos, term) {
                return Some(file.clone());
            }
        }
        let path = self.dir.join(snapshot::SNAPSHOT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                crate::log!("cannot read {} to send it: {e}", path.display());
                return None;
            }
        };
        match snapshot::decode_file(&bytes) {
            Ok(s) if (s.position, s.term) == (pos, term) => {}
            Ok(s) => {
                crate::log!(
                    "the snapshot file is at {} (term {}), not at {pos} (term {term}) as the \
                     consensus node asks: not sent",
                    s.position,
                    s.term
                );
                return None;
            }
            Err(e) => {
                crate::log!("cannot send the snapshot file: {e}");
                return None;
            }
        }
        let file = Arc::new(bytes);
        self.snapshot_file = Some((pos, term, file.clone()));
        Some(file)
    }

    fn event(&mut self, e: SegmentEvent) {
        // After a cut the same positions may hold other bytes.
        self.scratch_range = None;
        match e {
            SegmentEvent::Segment(f) => self.journal.add_segment(f),
            SegmentEvent::Reset(files) => self.journal.reset(files),
            SegmentEvent::ForgetBelow(position) => self.journal.forget_below(position),
        }
    }

    /// Opens connections to peers that have none and are due a try (the
    /// consensus node hears of a link once it is connected, in `flush`).
    fn connect_due(&mut self, now: Instant) {
        for i in 0..self.links.len() {
            let link = &mut self.links[i];
            if link.stream.is_some() || now < link.retry_at {
                continue;
            }
            link.retry_at = now + reconnect_delay(link.failures);
            let stream = match link.addr.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(addr)) => TcpStream::connect(addr),
                Ok(None) => Err(std::io::Error::new(
                    ErrorKind::NotFound,
                    "the address resolves to nothing",
                )),
                Err(e) => Err(e),
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // Said once, then again at 2, 4, 8, ... failures in a row.
                    link.failures = link.failures.saturating_add(1);
                    if link.failures.is_power_of_two() {
                        crate::log!(
                            "cannot connect to node {} ({}): {e} ({} tries in a row)",
                            link.id,
                            link.addr,
                            link.failures
                        );
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            link.stream = Some(stream);
            link.connected = false;
            link.queue.clear();
            link.sent = 0;
        }
    }

    /// Drops the connection to link `i` and tells the consensus node, which
    /// then resends from what the peer acknowledged.
    fn close(&mut self, i: usize, shared: &Shared, why: &str) {
        let link = &mut self.links[i];
        let now = Instant::now();
        if link.connected && now.duration_since(link.connected_at) >= LINK_STABLE {
            link.failures = 0;
        }
        if let Some(mut s) = link.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
            // A link that keeps failing is logged now and then, not at
            // every try.
            if link.connected && link.failures.is_power_of_two() || link.failures == 0 {
                crate::log!(
                    "lost the link to node {} ({}): {why}{}",
                    link.id,
                    link.addr,
                    if link.failures > 0 {
                        format!(
                            " ({} failed or short-lived connections in a row)",
                            link.failures + 1
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        link.failures = link.failures.saturating_add(1);
        let was = link.connected;
        link.connected = false;
        link.queue.clear();
        link.sent = 0;
        link.snapshot = None;
        link.retry_at = now + reconnect_delay(link.failures);
        if was {
            report_link_change(shared, link.slot);
        }
    }

    /// Encodes one message (with the journal bytes of an append) into its
    /// peer's queue. Dropped when the peer is not connected or too far
    /// behind: Raft resends what matters.
    fn queue(&mut self, m: &Message) {
        if let MessageKind::InstallSnapshot {
            pos, snapshot_term, ..
        } = m.kind
        {
            let Some(i) = self.links.iter().position(|l| l.id == m.to) else {
                return;
            };
            if self.links[i].stream.is_none() {
                return;
            }
            // The same snapshot already on its way: only the message (a
            // newer commit position) changes.
            if let Some(o) = self.links[i].snapshot.as_mut() {
                if let MessageKind::InstallSnapshot {
                    pos: p,
                    snapshot_term: t,
                    ..
                } = o.message.kind
                {
                    if (p, t) == (pos, snapshot_term) {
                        o.message = m.clone();
                        return;
                    }
                }
            }
            let Some(file) = self.snapshot_file(pos, snapshot_term) else {
                return;
            };
            crate::log!(
                "sending node {} the snapshot at {pos} ({} bytes): it needs what the log \
                 no longer holds",
                m.to,
                file.len()
            );
            self.links[i].snapshot = Some(Outgoing {
                file,
                queued: 0,
                message: m.clone(),
            });
            return;
        }
        let Some(link) = self.links.iter_mut().find(|l| l.id == m.to) else {
            return;
        };
        if link.stream.is_none() {
            return;
        }
        if link.queue.len() - link.sent > LINK_QUEUE_BYTES_MAX {
            // The peer stopped reading (frozen, or its host overloaded):
            // say so now and then, not for every message.
            link.dropped += 1;
            if link.dropped.is_power_of_two() {
                crate::log!(
                    "node {} is not reading: {} messages to it dropped so far",
                    link.id,
                    link.dropped
                );
            }
            return;
        }
        if link.sent > 0 && link.sent == link.queue.len() {
            link.queue.clear();
            link.sent = 0;
        }
        let start = link.queue.len();
        write_frame(m, &mut link.queue);
        if let MessageKind::Append {
            prev_pos, entries, ..
        } = &m.kind
        {
            let last = entries.last();
            let range = (
                *prev_pos,
                last.map_or(*prev_pos, |e| e.end),
                last.map_or(0, |e| e.term),
            );
            let want = (range.1 - range.0) as usize;
            if self.scratch_range != Some(range) {
                self.scratch_range = None;
                // The buffer only grows, so one in steady use is never
                // zeroed again.
                if self.scratch.len() < want {
                    self.scratch.resize(want, 0);
                }
                if let Err(e) = self
                    .journal
                    .read_exact_at(&mut self.scratch[..want], range.0)
                {
                    crate::log!(
                        "cannot read journal bytes [{}, {}) for node {}: {e}",
                        range.0,
                        range.1,
                        m.to
                    );
                    link.queue.truncate(start);
                    return;
                }
                if !holds_entries(&self.scratch[..want], *prev_pos, entries) {
                    crate::log!(
                        "journal bytes [{}, {}) are no longer the append's entries \
                         (the journal was cut meanwhile); not sent to node {}",
                        range.0,
                        range.1,
                        m.to
                    );
                    link.queue.truncate(start);
                    return;
                }
                self.scratch_range = Some(range);
            }
            link.queue.extend_from_slice(&self.scratch[..want]);
        }
    }

    /// Takes up to [`MESSAGES_PER_ROUND_MAX`] messages from the outbox
    /// (`pop`) into their peers' queues, with the writer's segment events.
    /// Returns how many messages it took.
    fn take(
        &mut self,
        pop: &mut dyn FnMut() -> Option<Message>,
        events: &Receiver<SegmentEvent>,
    ) -> usize {
        // Messages first, then the segment events: the writer announces a
        // segment before it appends into it, so every event about a
        // segment that a popped message reads is in the channel by now.
        // Taking the events first missed a segment started in between,
        // and the append into it could not be read and was dropped.
        let mut taken = std::mem::take(&mut self.taken);
        taken.clear();
        while taken.len() < MESSAGES_PER_ROUND_MAX {
            let Some(m) = pop() else { break };
            taken.push(m);
        }
        while let Ok(e) = events.try_recv() {
            self.event(e);
        }
        for m in &taken {
            self.queue(m);
        }
        let n = taken.len();
        self.taken = taken;
        n
    }

    /// Writes what is queued for link `i` until the socket is full.
    fn flush(&mut self, i: usize, shared: &Shared) {
        let link = &mut self.links[i];
        let Some(stream) = link.stream.as_mut() else {
            return;
        };
        if !link.connected {
            match stream.peer_addr() {
                Ok(_) => {
                    link.connected = true;
                    link.connected_at = Instant::now();
                    if link.failures <= 1 {
                        crate::log!("connected to node {} ({})", link.id, link.addr);
                    }
                    report_link_change(shared, link.slot);
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    if let Ok(Some(e)) | Err(e) = stream.take_error() {
                        let why = e.to_string();
                        self.close(i, shared, &why);
                    }
                    return;
                }
                Err(e) => {
                    let why = e.to_string();
                    self.close(i, shared, &why);
                    return;
                }
            }
        }
        loop {
            pump_snapshot(&mut link.queue, &mut link.sent, &mut link.snapshot);
            if link.sent == link.queue.len() {
                break;
            }
            match stream.write(&link.queue[link.sent..]) {
                Ok(0) => {
                    self.close(i, shared, "the peer closed the connection");
                    return;
                }
                Ok(n) => link.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = e.to_string();
                    self.close(i, shared, &why);
                    return;
                }
            }
        }
        if link.sent == link.queue.len() {
            link.queue.clear();
            link.sent = 0;
        }
    }

    /// Reads and discards what a peer sent back (error frames); notices a
    /// closed connection.
    fn drain_input(&mut self, i: usize, shared: &Shared) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(stream) = self.links[i].stream.as_mut() else {
                return;
            };
            match stream.read(&mut buf) {
                Ok(0) => {
                    self.close(i, shared, "the peer closed the connection");
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = e.to_string();
                    self.close(i, shared, &why);
                    return;
                }
            }
        }
    }
}

/// Queues the next chunk of the snapshot on its way to `link` (or, after
/// the last one, its `InstallSnapshot` message) when less than a chunk is
/// left to send.
fn pump_snapshot(queue: &mut Vec<u8>, sent: &mut usize, snapshot: &mut Option<Outgoing>) {
    if queue.len() - *sent >= SNAPSHOT_CHUNK_BYTES {
        return;
    }
    let Some(o) = snapshot.as_mut() else {
        return;
    };
    if *sent > 0 && *sent == queue.len() {
        queue.clear();
        *sent = 0;
    }
    let MessageKind::InstallSnapshot {
        pos, snapshot_term, ..
    } = o.message.kind
    else {
        *snapshot = None;
        return;
    };
    if o.queued < o.file.len() {
        let end = (o.queued + SNAPSHOT_CHUNK_BYTES).min(o.file.len());
        let chunk = SnapshotChunk {
            from: o.message.from,
            to: o.message.to,
            term: o.message.term,
            cluster_id: o.message.cluster_id,
            pos,
            snapshot_term,
            total_len: o.file.len() as u64,
            offset: o.queued as u64,
            bytes: &o.file[o.queued..end],
        };
        write_chunk_frame(&chunk, queue);
        o.queued = end;
    } else {
        write_frame(&o.message, queue);
        *snapshot = None;
    }
}

/// The wait before the next connection attempt after `failures` failed or
/// short-lived connections in a row.
fn reconnect_delay(failures: u32) -> Duration {
    RECONNECT_DELAY
        .saturating_mul(1 << failures.min(4))
        .min(RECONNECT_DELAY_MAX)
}

/// Whether `bytes`, the journal from `prev_pos`, are the batches `entries`
/// name: each entry's bytes are one batch declaring the entry's length and
/// term. The writer may cut the journal between pushing an append and the
/// replicator reading its bytes; the positions then hold another term's
/// batches, which must not travel under the append's entries.
fn holds_entries(bytes: &[u8], prev_pos: u64, entries: &[Entry]) -> bool {
    let mut start = prev_pos;
    entries.iter().all(|e| {
        let batch = e
            .end
            .checked_sub(prev_pos)
            .and_then(|end| bytes.get((start - prev_pos) as usize..end as usize));
        start = e.end;
        batch.is_some_and(|b| declared_len(b) == Some(b.len()) && BatchView(b).term() == e.term)
    })
}

fn report_link_change(shared: &Shared, slot: usize) {
    shared
        .cluster
        .link_changes
        .fetch_or(1 << slot, std::sync::atomic::Ordering::AcqRel);
    shared.wake(Stage::Writer);
}

/// The replicator thread of a group member.
pub fn run_cluster(
    shared: Arc<Shared>,
    mut courier: Courier,
    mut outbox: HeapCons<Message>,
    events: Receiver<SegmentEvent>,
) {
    shared.register(Stage::Replicator);
    let mut polled = Events::with_capacity(64);
    loop {
        let now = Instant::now();
        courier.connect_due(now);
        let taken = courier.take(&mut || outbox.try_pop(), &events);
        for i in 0..courier.links.len() {
            let link = &courier.links[i];
            if link.sent < link.queue.len() || !link.connected || link.snapshot.is_some() {
                courier.flush(i, &shared);
            }
        }
        if shared.is_done(Stage::Writer) && outbox.is_empty() {
            shared.mark_done(Stage::Replicator);
            return;
        }
        if taken == MESSAGES_PER_ROUND_MAX {
            continue;
        }
        let next_retry = courier
            .links
            .iter()
            .filter(|l| l.stream.is_none())
            .map(|l| l.retry_at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(100));
        let timeout = next_retry.clamp(Duration::from_millis(1), Duration::from_millis(100));
        if let Err(e) = courier.poll.poll(&mut polled, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                shared.fail(format!("replicator poll failed: {e}"));
                shared.mark_done(Stage::Replicator);
                return;
            }
        }
        for ev in polled.iter() {
            let i = ev.token().0;
            if ev.token() == WAKER || i >= courier.links.len() {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() {
                courier.drain_input(i, &shared);
            }
            if ev.is_writable() || ev.is_error() {
                courier.flush(i, &shared);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::shared::ClusterView;
    use crate::config::{Config, Peer};
    use std::fs::File;
    use std::sync::mpsc::channel;

    /// A segment starting at `start` whose file holds `bytes`.
    fn segment(dir: &std::path::Path, start: u64, bytes: &[u8]) -> SegmentFile {
        let path = dir.join(format!("{start:020}"));
        std::fs::write(&path, bytes).unwrap();
        (start, Arc::new(File::open(&path).unwrap()))
    }

    /// A courier of node 1 with one link, to node 2 at a listener that
    /// accepts nothing (its queue is inspected, never sent), reading the
    /// journal from `segments`.
    fn courier(segments: Vec<SegmentFile>) -> (Courier, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peers = vec![
            Peer {
                id: 1,
                addr: "127.0.0.1:1".into(),
            },
            Peer {
                id: 2,
                addr: listener.local_addr().unwrap().to_string(),
            },
        ];
        let config = Config {
            node_id: 1,
            peers,
            ..Config::default()
        };
        let poll = Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), Token(0)).unwrap();
        let view = ClusterView::new(1, vec![(1, String::new()), (2, String::new())]);
        let shared = Shared::new(0, waker, view);
        let mut courier = Courier::new(&config, segments, &shared).unwrap();
        courier.connect_due(Instant::now());
        assert!(courier.links[0].stream.is_some(), "a link to node 2 exists");
        (courier, listener)
    }

    /// A snapshot larger than a chunk goes out as chunks in order, each
    /// queued only once less than a chunk waits, then the InstallSnapshot
    /// message; the file read comes from the data directory and must be at
    /// the position the message names.
    #[test]
    fn a_snapshot_goes_out_chunk_after_chunk_then_its_message() {
        use crate::journal::snapshot::CatalogSnapshot;
        use crate::wire::frame::REQUEST_HEADER_LEN;
        use crate::wire::replicate::{decode_chunk, decode_message, is_chunk};
        let (mut c, _listener) = courier(Vec::new());
        let dir = tempfile::tempdir().unwrap();
        c.dir = dir.path().to_path_buf();
        let mut producers = crate::journal::producers::SavedStates::default();
        // Enough producer states for three chunks.
        for id in 1..=(2 * SNAPSHOT_CHUNK_BYTES / 40 + 10) as u64 {
            producers
                .states
                .push(crate::journal::producers::SavedState {
                    key: crate::journal::producers::Key {
                        topic_id: 1,
                        partition: 0,
                        producer_id: id,
                    },
                    epoch: 0,
                    next_seq: 1,
                    last_ms: 0,
                    window: Vec::new(),
                });
        }
        let snap = CatalogSnapshot {
            position: 1000,
            term: 3,
            next_topic_id: 2,
            cluster_id: None,
            topics: vec![crate::journal::snapshot::SnapshotTopic {
                meta: crate::journal::topic::TopicMeta {
                    id: 1,
                    name: "t".into(),
                    partitions: 1,
                },
                created_at: None,
                config: Default::default(),
                next_offsets: vec![5],
                deleted_below: vec![0],
            }],
            producers,
        };
        snapshot::write(dir.path(), &snap).unwrap();
        let file = snapshot::encode_file(&snap);
        assert!(file.len() > 2 * SNAPSHOT_CHUNK_BYTES);
        let install = |pos| Message {
            from: 1,
            to: 2,
            term: 4,
            from_incarnation: 0,
            to_incarnation: 0,
            cluster_id: 0,
            kind: MessageKind::InstallSnapshot {
                pos,
                snapshot_term: 3,
                commit: 1200,
            },
        };
        // Another position than the file's: nothing goes.
        c.queue(&install(900));
        assert!(c.links[0].snapshot.is_none());
        c.queue(&install(1000));
        assert!(c.links[0].snapshot.is_some());
        let link = &mut c.links[0];
        let mut got = Vec::new();
        let mut frames = 0;
        loop {
            pump_snapshot(&mut link.queue, &mut link.sent, &mut link.snapshot);
            if link.sent == link.queue.len() {
                break;
            }
            assert!(link.queue.len() - link.sent <= SNAPSHOT_CHUNK_BYTES + 1024);
            // "Send" the whole queue: one frame.
            let frame = &link.queue[link.sent..];
            let body = &frame[REQUEST_HEADER_LEN..];
            if is_chunk(body) {
                let ch = decode_chunk(body).unwrap();
                assert_eq!((ch.pos, ch.snapshot_term), (1000, 3));
                assert_eq!(ch.offset as usize, got.len());
                got.extend_from_slice(ch.bytes);
            } else {
                let (m, _) = decode_message(body).unwrap();
                assert_eq!(m, install(1000));
                assert_eq!(got, file, "the whole file came first");
            }
            frames += 1;
            link.sent = link.queue.len();
        }
        assert_eq!(frames, file.len().div_ceil(SNAPSHOT_CHUNK_BYTES) + 1);
        assert!(link.snapshot.is_none());
    }

    /// Journal bytes that read as one stored batch of `len` bytes appended
    /// in `term`: the header fields the replicator looks at (`batch_len`
    /// at 4, `term` at 16, docs/protocol.md §9.1) and filler.
    fn batch(len: usize, term: u64, filler: u8) -> Vec<u8> {
        let mut b = vec![filler; len];
        b[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        b[16..24].copy_from_slice(&term.to_le_bytes());
        b
    }

    fn append(prev_pos: u64, end: u64) -> Message {
        Message::new(
            1,
            2,
            1,
            MessageKind::Append {
                prev_pos,
                prev_term: 1,
                entries: vec![Entry {
                    start: prev_pos,
                    end,
                    term: 1,
                }],
                commit: 0,
            },
        )
    }

    /// Finding 6: the writer announces a new segment and only then pushes
    /// the append that reads it; both may happen while the replicator is
    /// in the middle of a round. The pop below plays the writer doing both
    /// just before its message is popped: a replicator that took its
    /// segment events before popping did not know the segment yet, failed
    /// to read the bytes and dropped the append.
    #[test]
    fn an_append_into_a_segment_started_during_the_round_is_sent_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut courier, _listener) = courier(vec![segment(dir.path(), 0, &batch(100, 1, b'a'))]);
        let (events, received) = channel();
        let mut new_segment = Some(segment(dir.path(), 100, &batch(100, 1, b'b')));
        let mut outbox = vec![append(100, 200)];
        let mut pop = || {
            if let Some(f) = new_segment.take() {
                events.send(SegmentEvent::Segment(f)).unwrap();
            }
            outbox.pop()
        };
        assert_eq!(courier.take(&mut pop, &received), 1);
        let mut expected = Vec::new();
        write_frame(&append(100, 200), &mut expected);
        expected.extend_from_slice(&batch(100, 1, b'b'));
        assert!(
            courier.links[0].queue == expected,
            "the append is queued with its journal bytes ({} bytes queued, {} expected)",
            courier.links[0].queue.len(),
            expected.len()
        );
    }

    /// A truncation between the append and the read: the writer cut the
    /// journal at 100 (a new leader's tail replaces the old one) after the
    /// append of the old bytes there was pushed. The bytes now at those
    /// positions are another term's, and must not be sent under the old
    /// append's entries; the append is dropped (Raft resends what matters).
    #[test]
    fn an_append_whose_bytes_were_cut_meanwhile_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = segment(dir.path(), 0, &batch(100, 1, b'a'));
        let (mut courier, _listener) = courier(vec![first.clone()]);
        let (events, received) = channel();
        let mut cut = Some(vec![first, segment(dir.path(), 100, &batch(100, 2, b'c'))]);
        let mut outbox = vec![append(100, 200)];
        let mut pop = || {
            if let Some(files) = cut.take() {
                events.send(SegmentEvent::Reset(files)).unwrap();
            }
            outbox.pop()
        };
        assert_eq!(courier.take(&mut pop, &received), 1);
        assert!(
            courier.links[0].queue.is_empty(),
            "nothing is sent for an append whose bytes are gone ({} bytes queued)",
            courier.links[0].queue.len()
        );
    }
}
