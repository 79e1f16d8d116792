//! The `cluster` scenario: a replication group of three brokers that this
//! process starts on 127.0.0.1, measured in two phases.
//!
//! 1. **Throughput**: the `produce` scenario, unchanged (same options, same
//!    checks), against the group's leader.
//! 2. **Failover** (unless `--no-failover`): a stream of small batches at
//!    QoS all runs from a retrying [`Producer`] that knows every member.
//!    Each round kills the leader with SIGKILL and measures the time from
//!    the kill to the first acknowledgement of a batch sent after it (the
//!    *failover time*, what a producer sees) and to the first ClusterStatus
//!    answer of a survivor that names a new leader (the *election time*);
//!    then the killed broker is started again on the same directory and
//!    address, and the next round waits until every member has committed
//!    what the leader has. At the end the stream's partition is read back
//!    from the final leader: every acknowledged message must be there once,
//!    in order, at the offset it was acknowledged with.

use crate::broker::BrokerProcess;
use crate::produce::{self, qos_name, ProduceArgs};
use crate::report::{self, fmt_ns, Report};
use crate::ui::Ui;
use crate::window::now_ns;
use crate::Common;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use hutong::client::{
    Admin, ClientError, Consumer, Producer, ProducerConfig, Receipt, RetryConfig, StartFrom,
};
use hutong::wire::api::{ClusterRole, ClusterStatusResponse};
use hutong::wire::codec::{le_u64, set_u64};
use hutong::wire::Qos;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Members of the group.
pub const BROKERS: usize = 3;
/// How long a group may take to elect its first leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a round waits for the stream to be acknowledged again and for
/// a survivor to name a new leader after the kill.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted member may take to commit what the leader has.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the stream may take to settle its last receipts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Acknowledgements of batches sent since the stream resumed that make it
/// steady enough to kill the leader under it.
const STEADY_ACKS: usize = 50;
/// How often the scenario polls the stream, and the survivors after a kill
/// (on connections opened before it).
const POLL: Duration = Duration::from_millis(1);
/// How often the scenario asks every member for its status while it waits
/// for a leader or a catch-up (each question is a new connection).
const STATUS_POLL: Duration = Duration::from_millis(10);
/// How long one ClusterStatus question may take to connect.
const STATUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The broker-side deadline of a stream batch: well above a failover, so a
/// batch waiting for the new leader's commit is not failed early.
const STREAM_PRODUCE_TIMEOUT_MS: u32 = 10_000;
/// Tries of one stream batch: reconnections during an election count as
/// tries, and the scenario measures failover, not the retry budget.
const STREAM_ATTEMPTS_MAX: u32 = 1_000;
/// Bytes at the start of a stream message: its sequence number.
const STREAM_HEADER_BYTES: usize = 8;

/// Options of `cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The throughput phase: `produce`'s options, against the leader.
    #[command(flatten)]
    pub produce: ProduceArgs,
    /// Run the failover phase (the default).
    #[arg(long, overrides_with = "no_failover")]
    pub failover: bool,
    /// Skip the failover phase.
    #[arg(long, overrides_with = "failover")]
    pub no_failover: bool,
    /// Kills of the leader in the failover phase.
    #[arg(long, default_value_t = 3)]
    pub failover_rounds: u32,
    /// Messages per batch of the failover stream (of --message-size bytes).
    #[arg(long, default_value_t = 10)]
    pub failover_batch: u32,
    /// Batches of the failover stream awaiting their acknowledgement.
    #[arg(long, default_value_t = 4)]
    pub failover_in_flight: usize,
    /// Topic of the failover stream (one partition); created if missing.
    #[arg(long, default_value = "bench-failover")]
    pub failover_topic: String,
    /// Write each broker's stderr to DIR/node-ID.log at the end.
    #[arg(long, value_name = "DIR")]
    pub broker_logs: Option<PathBuf>,
    /// One more argument for every broker of the group (repeat it:
    /// `--broker-arg=--retention-bytes --broker-arg=1073741824`).
    #[arg(long = "broker-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
}

// ---------------------------------------------------------------------------
// The group
// ---------------------------------------------------------------------------

/// Three `hutong broker` processes forming one group; member `i` (from 0)
/// has node id `i + 1`.
struct Group {
    nodes: Vec<BrokerProcess>,
}

/// One member's answer to ClusterStatus.
type Status = (usize, ClusterStatusResponse);

impl Group {
    /// Chooses a free port for every member (bind port 0, read it, let it
    /// go), then starts each with `--node-id` and the full `--peers` list.
    fn start(extra: &[String]) -> Result<Group> {
        let reserved = (0..BROKERS)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot reserve ports on 127.0.0.1")?;
        let addrs = reserved
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        drop(reserved);
        let mut nodes = Vec::with_capacity(BROKERS);
        for (i, addr) in addrs.iter().enumerate() {
            let mut args = vec![
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--peers".to_string(),
                peers.clone(),
            ];
            args.extend(extra.iter().cloned());
            let node = BrokerProcess::start_with(&addr.to_string(), args)
                .with_context(|| format!("cannot start node {}", i + 1))?;
            if node.addr() != *addr {
                bail!(
                    "node {} listens on {}, its peers expect {addr}",
                    i + 1,
                    node.addr()
                );
            }
            nodes.push(node);
        }
        Ok(Group { nodes })
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr()
    }

    /// Every member's address, member `first` in front (a producer tries
    /// them in this order).
    fn addrs_from(&self, first: usize) -> Vec<SocketAddr> {
        let mut addrs = vec![self.addr(first)];
        addrs.extend((0..BROKERS).filter(|&i| i != first).map(|i| self.addr(i)));
        addrs
    }

    /// The answers of the members that answer.
    fn statuses(&self) -> Vec<Status> {
        (0..BROKERS)
            .filter(|&i| self.nodes[i].pid().is_some())
            .filter_map(|i| status_of(self.addr(i)).ok().map(|s| (i, s)))
            .collect()
    }

    /// The member that leads in the highest term any member reports.
    fn leader(statuses: &[Status]) -> Option<&Status> {
        statuses
            .iter()
            .filter(|(_, s)| s.role == ClusterRole::Leader)
            .max_by_key(|(_, s)| s.term)
    }

    /// Waits for a leader; returns its member index and term.
    fn wait_leader(&self, limit: Duration) -> Result<(usize, u64)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((i, s)) = Group::leader(&self.statuses()) {
                return Ok((*i, s.term));
            }
            if Instant::now() > deadline {
                bail!("no leader after {limit:?}:\n{}", self.describe());
            }
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// Waits until every member answers and has committed everything the
    /// leader wrote (each C equals the leader's C, which equals its W).
    /// Returns that position.
    fn wait_caught_up(&self, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.statuses();
            if let Some((_, l)) = Group::leader(&all) {
                if all.len() == BROKERS
                    && l.committed == l.written
                    && all.iter().all(|(_, s)| s.committed == l.committed)
                {
                    return Ok(l.committed);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the members did not catch up within {limit:?}:\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// One line per member: role, term, leader and positions.
    fn describe(&self) -> String {
        (0..BROKERS)
            .map(|i| match status_of(self.addr(i)) {
                Ok(s) => format!(
                    "  node {} {}: {} term {} leader {} W {} F {} R {} C {}\n",
                    i + 1,
                    self.addr(i),
                    hutong::client::cluster::role_name(s.role),
                    s.term,
                    s.leader_id,
                    s.written,
                    s.flushed,
                    s.replicated,
                    s.committed
                ),
                Err(e) => format!("  node {} {}: no answer ({e})\n", i + 1, self.addr(i)),
            })
            .collect()
    }

    /// Every member's stderr, for a failed run.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {} ({}) stderr ---\n{}", i + 1, n.addr(), n.log()))
            .collect()
    }

    /// Writes every member's stderr to `dir/node-ID.log`.
    fn write_logs(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, n) in self.nodes.iter().enumerate() {
            let path = dir.join(format!("node-{}.log", i + 1));
            std::fs::write(&path, n.log())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Stops every member with SIGTERM at once (one at a time, each
    /// leader's hand-over would elect the next one to stop).
    fn stop(self) -> Result<()> {
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .nodes
                .into_iter()
                .enumerate()
                .map(|(i, n)| s.spawn(move || n.stop().with_context(|| format!("node {}", i + 1))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("a stop thread panicked")))
                .collect()
        });
        results.into_iter().collect()
    }
}

/// Asks the broker at `addr` for its ClusterStatus on a new connection.
fn status_of(addr: SocketAddr) -> Result<ClusterStatusResponse, ClientError> {
    hutong::client::cluster::status_of(&addr.to_string(), STATUS_CONNECT_TIMEOUT)
}

// ---------------------------------------------------------------------------
// The failover stream
// ---------------------------------------------------------------------------

/// One acknowledged batch of the stream.
#[derive(Debug, Clone, Copy)]
struct StreamAck {
    /// The batch number; it holds messages `batch * per_batch ..`.
    batch: u64,
    /// Where the broker says its first message is.
    base_offset: u64,
    /// When the sender began to send it ([`now_ns`]).
    sent_ns: u64,
    /// When its acknowledgement was seen.
    acked_ns: u64,
}

/// What the stream's two threads share with the scenario.
struct StreamShared {
    stop: AtomicBool,
    /// The sender sends nothing while set.
    paused: AtomicBool,
    /// Held by the sender for each batch it sends, so that pausing can
    /// wait for a send in progress.
    gate: Mutex<()>,
    /// Batches handed to the producer, and those whose receipt is settled.
    sent: AtomicU64,
    settled: AtomicU64,
    acks: Mutex<Vec<StreamAck>>,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Latency per batch from send to acknowledgement.
    latency: Mutex<Histogram<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamShared {
    fn fail(&self, message: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut e = lock(&self.errors);
        if e.len() < report::ERROR_MESSAGES_MAX {
            e.push(message);
        }
    }
}

/// The bytes of stream message `seq`: its number, then filler.
fn stream_value(seq: u64, message_size: usize, out: &mut [u8]) {
    debug_assert_eq!(out.len(), message_size);
    for (i, b) in out.iter_mut().enumerate().skip(STREAM_HEADER_BYTES) {
        *b = b'a' + (i % 26) as u8;
    }
    set_u64(out, 0, seq);
}

/// A steady stream of small batches at QoS all to partition 0 of a topic:
/// a sender thread hands batches back to back to a retrying producer (which
/// holds at most `in_flight` unanswered), a waiter thread waits for their
/// receipts in send order.
struct Stream {
    shared: Arc<StreamShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Stream {
    fn start(
        addrs: &[SocketAddr],
        topic: &str,
        per_batch: u32,
        message_size: usize,
        in_flight: usize,
    ) -> Result<Stream> {
        let producer = Arc::new(
            Producer::connect(
                addrs,
                ProducerConfig {
                    qos: Qos::All,
                    timeout_ms: STREAM_PRODUCE_TIMEOUT_MS,
                    max_in_flight: in_flight,
                    retry: RetryConfig {
                        attempts_max: STREAM_ATTEMPTS_MAX,
                        deadline_ms: SETTLE_TIMEOUT.as_millis() as u64 / 2,
                        ..RetryConfig::default()
                    },
                    ..ProducerConfig::default()
                },
            )
            .context("the failover stream cannot connect")?,
        );
        let shared = Arc::new(StreamShared {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            gate: Mutex::new(()),
            sent: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            acks: Mutex::new(Vec::new()),
            failed: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            latency: Mutex::new(report::histogram()),
        });
        let (tx, rx) = sync_channel::<(u64, u64, Receipt)>(in_flight.max(1) * 2);
        let sender = {
            let shared = Arc::clone(&shared);
            let producer = Arc::clone(&producer);
            let topic = topic.to_string();
            std::thread::Builder::new()
                .name("failover-sender".into())
                .spawn(move || {
                    let mut values = vec![0u8; per_batch as usize * message_size];
                    let mut batch = 0u64;
                    while !shared.stop.load(Ordering::SeqCst) {
                        let gate = lock(&shared.gate);
                        if shared.paused.load(Ordering::SeqCst) {
                            drop(gate);
                            std::thread::sleep(POLL);
                            continue;
                        }
                        let first = batch * u64::from(per_batch);
                        for (k, v) in values.chunks_mut(message_size).enumerate() {
                            stream_value(first + k as u64, message_size, v);
                        }
                        let records: Vec<(&[u8], &[u8])> =
                            values.chunks(message_size).map(|v| (&b""[..], v)).collect();
                        let sent_ns = now_ns();
                        shared.sent.fetch_add(1, Ordering::SeqCst);
                        match producer.send_records(&topic, 0, &records) {
                            Ok(receipt) => {
                                if tx.send((batch, sent_ns, receipt)).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                shared.fail(format!("send of batch {batch}: {e}"));
                                shared.settled.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                        batch += 1;
                    }
                })?
        };
        let waiter = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("failover-waiter".into())
                .spawn(move || wait_receipts(&rx, &shared, producer))?
        };
        Ok(Stream {
            shared,
            threads: vec![sender, waiter],
        })
    }

    /// The first acknowledgement of a batch sent after `t_ns`, if any.
    fn first_ack_sent_after(&self, t_ns: u64) -> Option<StreamAck> {
        let acks = lock(&self.shared.acks);
        acks.iter()
            .rev()
            .take_while(|a| a.acked_ns > t_ns)
            .filter(|a| a.sent_ns > t_ns)
            .min_by_key(|a| a.acked_ns)
            .copied()
    }

    /// Resumes sending and waits until [`STEADY_ACKS`] batches sent since
    /// then are acknowledged.
    fn resume_until_steady(&self, limit: Duration) -> Result<()> {
        let from_ns = now_ns();
        self.shared.paused.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        loop {
            let steady = lock(&self.shared.acks)
                .iter()
                .rev()
                .take_while(|a| a.sent_ns > from_ns)
                .count();
            if steady >= STEADY_ACKS {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("the failover stream had {steady} batches acknowledged after {limit:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops sending and waits until every batch sent is settled.
    fn pause(&self, limit: Duration) -> Result<()> {
        self.shared.paused.store(true, Ordering::SeqCst);
        // A send that began before the flag was set ends under the gate.
        drop(lock(&self.shared.gate));
        let deadline = Instant::now() + limit;
        loop {
            let (sent, settled) = (
                self.shared.sent.load(Ordering::SeqCst),
                self.shared.settled.load(Ordering::SeqCst),
            );
            if sent == settled {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} stream batches still unanswered after {limit:?}",
                    sent - settled
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails when a thread of the stream ended early.
    fn check_alive(&self) -> Result<()> {
        if self.threads.iter().any(JoinHandle::is_finished) {
            bail!(
                "the failover stream ended early: {:?}",
                lock(&self.shared.errors)
            );
        }
        Ok(())
    }

    /// Stops the stream and waits for its last receipts.
    fn finish(mut self) -> Arc<StreamShared> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.paused.store(false, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.shared.fail("a failover stream thread panicked".into());
            }
        }
        Arc::clone(&self.shared)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// The waiter thread: settles the stream's receipts in send order. It owns
/// the last reference to the producer, so the producer lives until every
/// receipt is settled.
fn wait_receipts(
    rx: &Receiver<(u64, u64, Receipt)>,
    shared: &StreamShared,
    producer: Arc<Producer>,
) {
    for (batch, sent_ns, receipt) in rx {
        match receipt.wait() {
            Ok(ack) => {
                let acked_ns = now_ns();
                report::record(&mut lock(&shared.latency), acked_ns - sent_ns);
                lock(&shared.acks).push(StreamAck {
                    batch,
                    base_offset: ack.base_offset,
                    sent_ns,
                    acked_ns,
                });
            }
            Err(e) => shared.fail(format!("batch {batch}: {e}")),
        }
        shared.settled.fetch_add(1, Ordering::SeqCst);
    }
    drop(producer);
}

/// Reads partition 0 of `topic` from `addr`, from its first offset to its
/// latest, as (offset, value) pairs.
fn read_back(addr: SocketAddr, topic: &str) -> Result<Vec<(u64, Vec<u8>)>> {
    let admin = Admin::connect(addr)?;
    let offsets = admin.list_offsets(topic, 0)?;
    let mut consumer = Consumer::connect(addr, topic, 0, StartFrom::Offset(offsets.earliest))?;
    let mut out = Vec::new();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while consumer.position() < offsets.latest {
        if Instant::now() > deadline {
            bail!(
                "read only up to offset {} of {} within {SETTLE_TIMEOUT:?}",
                consumer.position(),
                offsets.latest
            );
        }
        for r in consumer.poll(Duration::from_millis(100))? {
            out.push((r.offset, r.value));
        }
    }
    Ok(out)
}

/// Checks the partition against the stream: every record is a stream
/// message with its exact bytes, at consecutive offsets; sequence numbers
/// strictly increase (no duplicate, no reordering); every acknowledged batch
/// sits at the offsets it was acknowledged with. Returns the problems.
fn check_stream(
    records: &[(u64, Vec<u8>)],
    acks: &[StreamAck],
    per_batch: u64,
    message_size: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expected = vec![0u8; message_size];
    let mut last: Option<u64> = None;
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    let first_offset = records.first().map_or(0, |r| r.0);
    for (k, (offset, value)) in records.iter().enumerate() {
        if *offset != first_offset + k as u64 {
            problems.push(format!(
                "offset {offset} follows offset {}",
                first_offset + k as u64 - 1
            ));
            break;
        }
        if value.len() != message_size {
            problems.push(format!(
                "offset {offset} holds {} bytes, not {message_size}",
                value.len()
            ));
            continue;
        }
        let seq = le_u64(value, 0);
        stream_value(seq, message_size, &mut expected);
        if *value != expected {
            problems.push(format!("offset {offset} is not stream message {seq}"));
        }
        if let Some(prev) = last.filter(|&prev| seq <= prev) {
            let what = if seen.contains(&seq) {
                "a duplicate"
            } else {
                "out of order"
            };
            problems.push(format!(
                "message {seq} at offset {offset} follows message {prev}: {what}"
            ));
        }
        seen.insert(seq);
        last = Some(seq);
    }
    for a in acks {
        for i in 0..per_batch {
            let want = a.batch * per_batch + i;
            let offset = a.base_offset + i;
            let got = offset
                .checked_sub(first_offset)
                .and_then(|k| records.get(k as usize));
            match got {
                Some((_, v)) if v.len() >= STREAM_HEADER_BYTES && le_u64(v, 0) == want => {}
                Some((_, v)) if v.len() >= STREAM_HEADER_BYTES => problems.push(format!(
                    "offset {offset} was acknowledged for message {want}, holds message {}",
                    le_u64(v, 0)
                )),
                _ => problems.push(format!(
                    "acknowledged message {want} (offset {offset}) is missing"
                )),
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

/// What one failover round measured.
#[derive(Debug, Clone)]
struct Round {
    killed: usize,
    old_term: u64,
    new_leader: usize,
    new_term: u64,
    /// Kill to the first acknowledgement of a batch sent after it.
    failover_ns: u64,
    /// Kill to a survivor's ClusterStatus naming the new leader.
    election_ns: u64,
    /// Restart of the killed member to every member committing the
    /// leader's whole journal.
    catch_up_ns: u64,
}

impl Round {
    fn json(&self, n: usize) -> Value {
        json!({
            "round": n,
            "killed_node": self.killed + 1,
            "old_term": self.old_term,
            "new_leader_node": self.new_leader + 1,
            "new_term": self.new_term,
            "failover_ms": self.failover_ns as f64 / 1e6,
            "election_ms": self.election_ns as f64 / 1e6,
            "catch_up_ms": self.catch_up_ns as f64 / 1e6,
        })
    }
}

/// Kills the leader under the running stream and measures the round.
fn kill_round(group: &mut Group, stream: &Stream) -> Result<Round> {
    let (leader, old_term) = group.wait_leader(LEADER_TIMEOUT)?;
    let survivors: Vec<(usize, Admin)> = (0..BROKERS)
        .filter(|&i| i != leader)
        .map(|i| Ok((i, Admin::connect(group.addr(i))?)))
        .collect::<Result<_, ClientError>>()
        .context("cannot connect to the survivors")?;
    let kill_ns = now_ns();
    group.nodes[leader].kill9()?;
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    let (mut failover_ns, mut elected) = (None, None);
    while failover_ns.is_none() || elected.is_none() {
        if failover_ns.is_none() {
            failover_ns = stream
                .first_ack_sent_after(kill_ns)
                .map(|a| a.acked_ns - kill_ns);
        }
        if elected.is_none() {
            for (i, admin) in &survivors {
                let s = admin
                    .cluster_status()
                    .with_context(|| format!("node {} stopped answering", i + 1))?;
                let new_leader = if s.role == ClusterRole::Leader {
                    Some(*i)
                } else {
                    (s.leader_id != 0 && s.leader_id != leader as u64 + 1)
                        .then(|| s.leader_id as usize - 1)
                };
                if let Some(new_leader) = new_leader.filter(|_| s.term > old_term) {
                    elected = Some((now_ns() - kill_ns, new_leader, s.term));
                    break;
                }
            }
        }
        stream.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "after kill -9 of node {}: acknowledged again: {}, new leader named: {}, \
                 within {FAILOVER_TIMEOUT:?}\n{}",
                leader + 1,
                failover_ns.is_some(),
                elected.is_some(),
                group.describe()
            );
        }
        std::thread::sleep(POLL);
    }
    let (election_ns, new_leader, new_term) = elected.expect("loop ends with it");
    stream.pause(SETTLE_TIMEOUT)?;
    let restarted = Instant::now();
    group.nodes[leader]
        .restart()
        .with_context(|| format!("cannot restart node {}", leader + 1))?;
    group.wait_caught_up(CATCH_UP_TIMEOUT)?;
    Ok(Round {
        killed: leader,
        old_term,
        new_leader,
        new_term,
        failover_ns: failover_ns.expect("loop ends with it"),
        election_ns,
        catch_up_ns: restarted.elapsed().as_nanos() as u64,
    })
}

/// The failover phase; files its figures and failures in `report`.
fn failover_phase(group: &mut Group, args: &ClusterArgs, report: &mut Report) -> Result<()> {
    let p = &args.produce;
    if p.message_size < STREAM_HEADER_BYTES {
        bail!("the failover stream needs messages of at least {STREAM_HEADER_BYTES} bytes");
    }
    if args.failover_batch == 0 {
        bail!("--failover-batch must be at least 1");
    }
    let (leader, _) = group.wait_leader(LEADER_TIMEOUT)?;
    let admin = Admin::connect(group.addr(leader))?;
    produce::ensure_topic(&admin, &args.failover_topic, 1)?;
    drop(admin);
    let stream = Stream::start(
        &group.addrs_from(leader),
        &args.failover_topic,
        args.failover_batch,
        p.message_size,
        args.failover_in_flight,
    )?;
    let mut rounds = Vec::new();
    let mut failure = None;
    for n in 1..=args.failover_rounds {
        let round = stream
            .resume_until_steady(FAILOVER_TIMEOUT)
            .and_then(|()| kill_round(group, &stream));
        match round {
            Ok(r) => {
                eprintln!(
                    "failover round {n}: node {} killed; acknowledged again after {}, \
                     node {} named leader after {}, node {} caught up after {}",
                    r.killed + 1,
                    fmt_ns(r.failover_ns),
                    r.new_leader + 1,
                    fmt_ns(r.election_ns),
                    r.killed + 1,
                    fmt_ns(r.catch_up_ns)
                );
                rounds.push(r);
            }
            Err(e) => {
                failure = Some(e.context(format!("failover round {n}")));
                break;
            }
        }
    }
    let shared = stream.finish();
    if let Some(e) = failure {
        report.error(format!("{e:#}"));
    }
    let acks = lock(&shared.acks).clone();
    let failed = shared.failed.load(Ordering::SeqCst);
    for e in lock(&shared.errors).iter() {
        report.error(format!("failover stream: {e}"));
    }
    report.errors += failed.saturating_sub(lock(&shared.errors).len() as u64);
    let (final_leader, _) = group.wait_leader(LEADER_TIMEOUT)?;
    let per_batch = u64::from(args.failover_batch);
    let records = read_back(group.addr(final_leader), &args.failover_topic)
        .context("cannot read the failover stream back")?;
    let problems = check_stream(&records, &acks, per_batch, p.message_size);
    for problem in &problems {
        report.error(format!(
            "failover stream, node {}: {problem}",
            final_leader + 1
        ));
    }
    let latency = lock(&shared.latency).clone();
    let max_of = |f: fn(&Round) -> u64| rounds.iter().map(f).max();
    let ms = |ns: Option<u64>| ns.map(|v| v as f64 / 1e6);
    let failover_max = max_of(|r| r.failover_ns);
    let election_max = max_of(|r| r.election_ns);
    let acked_messages = acks.len() as u64 * per_batch;
    let mut headline = format!(
        "Failover: {} of {} rounds of kill -9 of the leader under a stream of batches of {} at QoS all, \
         {} in flight",
        rounds.len(),
        args.failover_rounds,
        per_batch,
        args.failover_in_flight
    );
    for (n, r) in rounds.iter().enumerate() {
        headline.push_str(&format!(
            "\n  round {}: node {} killed (term {}) → acknowledged again after {}, node {} named \
             leader (term {}) after {}; node {} caught up {} after its restart",
            n + 1,
            r.killed + 1,
            r.old_term,
            fmt_ns(r.failover_ns),
            r.new_leader + 1,
            r.new_term,
            fmt_ns(r.election_ns),
            r.killed + 1,
            fmt_ns(r.catch_up_ns)
        ));
    }
    if let (Some(f), Some(e)) = (failover_max, election_max) {
        headline.push_str(&format!(
            "\n  max: failover {}, election {}",
            fmt_ns(f),
            fmt_ns(e)
        ));
    }
    headline.push_str(&format!(
        "\n  stream: {} messages acknowledged, {} stored on node {} (the final leader), \
         {} failed batches, {}",
        acked_messages,
        records.len(),
        final_leader + 1,
        failed,
        if problems.is_empty() {
            "every acknowledged message stored once, in order".to_string()
        } else {
            format!("{} problems", problems.len())
        }
    ));
    report.headline = Some(headline);
    report.extra.push((
        "failover_rounds",
        Value::Array(
            rounds
                .iter()
                .enumerate()
                .map(|(n, r)| r.json(n + 1))
                .collect(),
        ),
    ));
    report
        .extra
        .push(("failover_ms_max", json!(ms(failover_max))));
    report
        .extra
        .push(("election_ms_max", json!(ms(election_max))));
    report.extra.push((
        "failover_stream",
        json!({
            "topic": args.failover_topic,
            "batch": per_batch,
            "in_flight": args.failover_in_flight,
            "acked_batches": acks.len(),
            "acked_messages": acked_messages,
            "stored_messages": records.len(),
            "failed_batches": failed,
            "problems": problems.len(),
            "p50_us": (!latency.is_empty()).then(|| latency.value_at_quantile(0.5) as f64 / 1e3),
            "p99_us": (!latency.is_empty()).then(|| latency.value_at_quantile(0.99) as f64 / 1e3),
            "max_us": (!latency.is_empty()).then(|| latency.max() as f64 / 1e3),
        }),
    ));
    Ok(())
}

/// The throughput phase, then the failover phase, on a group started here.
fn measure(group: &mut Group, args: &ClusterArgs, ui: &Ui) -> Result<Report> {
    let (leader, term) = group.wait_leader(LEADER_TIMEOUT)?;
    let addr = group.addr(leader);
    let mut report = produce::run(addr, &args.produce, ui)?;
    report.scenario = "cluster";
    report.title = format!(
        "cluster of {BROKERS} brokers on 127.0.0.1 (leader node {} at {addr}, term {term}): {}",
        leader + 1,
        report.title
    );
    report.params.insert("brokers".into(), json!(BROKERS));
    report
        .params
        .insert("leader_node".into(), json!(leader + 1));
    let failover = args.failover || !args.no_failover;
    report.params.insert("failover".into(), json!(failover));
    if failover {
        report
            .params
            .insert("failover_rounds_asked".into(), json!(args.failover_rounds));
        failover_phase(group, args, &mut report)?;
    }
    Ok(report)
}

/// Runs `cluster`. Returns the report; a failure after the group started
/// prints every member's stderr.
///
/// # Errors
/// `--addr` (the scenario starts its own group), a group that does not
/// start or elect a leader, a phase that cannot run.
pub fn run(args: &ClusterArgs, common: &Common, ui: &Ui) -> Result<Report> {
    if common.addr.is_some() {
        bail!("cluster starts its own {BROKERS} brokers; it takes no --addr");
    }
    if args.produce.qos != Qos::All {
        eprintln!(
            "note: the throughput phase runs at QoS {}; only `all` waits for a majority",
            qos_name(args.produce.qos)
        );
    }
    let mut group = Group::start(&args.broker_args)?;
    let outcome = measure(&mut group, args, ui);
    if let Some(dir) = &args.broker_logs {
        group.write_logs(dir)?;
    }
    let clean = outcome.as_ref().is_ok_and(Report::is_clean);
    if !clean {
        eprintln!("{}", group.logs());
    }
    let stopped = group.stop();
    let mut report = outcome?;
    if let Err(e) = stopped {
        report.error(format!("stopping the group: {e:#}"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 16;

    /// Partition records holding stream messages `seqs` from offset 0.
    fn records(seqs: &[u64]) -> Vec<(u64, Vec<u8>)> {
        seqs.iter()
            .enumerate()
            .map(|(k, &seq)| {
                let mut v = vec![0u8; SIZE];
                stream_value(seq, SIZE, &mut v);
                (k as u64, v)
            })
            .collect()
    }

    fn ack(batch: u64, base_offset: u64) -> StreamAck {
        StreamAck {
            batch,
            base_offset,
            sent_ns: 0,
            acked_ns: 0,
        }
    }

    #[test]
    fn a_stream_stored_once_in_order_passes() {
        // Batches of 2; batch 1 failed but was stored, batch 2 was not.
        let stored = records(&[0, 1, 2, 3, 6, 7]);
        let acks = [ack(0, 0), ack(3, 4)];
        assert_eq!(check_stream(&stored, &acks, 2, SIZE), Vec::<String>::new());
    }

    #[test]
    fn a_duplicate_message_is_reported() {
        let stored = records(&[0, 1, 0, 1]);
        let problems = check_stream(&stored, &[ack(0, 0)], 2, SIZE);
        assert!(
            problems.iter().any(|p| p.contains("duplicate")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_reordered_message_is_reported() {
        let stored = records(&[2, 3, 0, 1]);
        let problems = check_stream(&stored, &[], 2, SIZE);
        assert!(
            problems.iter().any(|p| p.contains("out of order")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_lost_acknowledged_message_is_reported() {
        let stored = records(&[0, 1]);
        let problems = check_stream(&stored, &[ack(0, 0), ack(1, 2)], 2, SIZE);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("message 2 (offset 2) is missing"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_acknowledgement_at_the_wrong_offset_is_reported() {
        let stored = records(&[0, 1, 2, 3]);
        let problems = check_stream(&stored, &[ack(1, 0)], 2, SIZE);
        assert!(
            problems[0].contains("acknowledged for message 2, holds message 0"),
            "{problems:?}"
        );
    }

    #[test]
    fn damaged_bytes_are_reported() {
        let mut stored = records(&[0, 1]);
        stored[1].1[SIZE - 1] ^= 1;
        let problems = check_stream(&stored, &[], 2, SIZE);
        assert_eq!(
            problems,
            vec!["offset 1 is not stream message 1".to_string()]
        );
    }
}
