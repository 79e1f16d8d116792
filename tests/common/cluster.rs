//! A replicated cluster of real `hutong` brokers on 127.0.0.1 for
//! black-box tests: node ids `1..=n`, one temporary directory per node,
//! addresses chosen before the start (every node must know every other's),
//! and optionally one [`Proxy`] on every directed replication link so that
//! a test can cut a node off from its peers while clients still reach it.
//!
//! Every method that takes a node takes its node id (`1..=n`), the same
//! number as the broker's `--node-id`.

use super::json::Json;
use super::proxy::Proxy;
use super::{run_cli, BrokerProc, RawConn, TestDir};
use hutong::wire::api::{ClusterRole, ClusterStatusResponse};
use hutong::wire::{ApiKey, ErrorCode};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`Cluster::leader`] waits for a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `hutong cluster status` may take; it asks every node and must
/// give up on the unreachable ones by itself.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a restarted broker may keep failing to bind its old port (an
/// outgoing connection may hold it for a moment).
const RESTART_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two polls of the cluster's state.
const POLL: Duration = Duration::from_millis(100);
/// How long one node may take to answer a ClusterStatus request.
pub const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Small segments, so that a test of a few megabytes crosses segment
/// boundaries (and the journal comparison covers several files).
pub const SMALL_SEGMENTS_TOML: &str = "segment_bytes = 4194304\nbatch_bytes_max = 1048576\n";

/// One node as `hutong cluster status --json` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its node id.
    pub id: u64,
    /// The address the asked node knows it by.
    pub addr: String,
    /// `leader`, `follower`, `candidate`, `pre-candidate` or `unreachable`.
    pub role: String,
    /// Its current term (0 when unreachable).
    pub term: u64,
    /// Its journal positions W, F, R and C (0 when unreachable).
    pub written: u64,
    /// F.
    pub flushed: u64,
    /// R.
    pub replicated: u64,
    /// C.
    pub committed: u64,
}

/// The parsed output of `hutong cluster status --json`.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// The leader the asked node knows of.
    pub leader: Option<u64>,
    /// The asked node's term.
    pub term: u64,
    /// Every node, as each answered for itself.
    pub nodes: Vec<NodeStatus>,
    /// The whole JSON document, for checks of its shape.
    pub json: Json,
    /// The text the CLI printed.
    pub text: String,
}

impl ClusterStatus {
    /// Parses the CLI's JSON output.
    ///
    /// # Errors
    /// What is missing or malformed, with the text.
    pub fn parse(text: &str) -> Result<ClusterStatus, String> {
        let json = Json::parse(text.trim()).map_err(|e| format!("{e} in {text:?}"))?;
        let fail = |what: &str| format!("cluster status JSON: {what} in {text}");
        let leader = match json.get("leader") {
            Some(Json::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| fail("`leader` is not a node id"))?,
            ),
            None => return Err(fail("no `leader` field")),
        };
        let term = json
            .get("term")
            .and_then(Json::as_u64)
            .ok_or_else(|| fail("no numeric `term`"))?;
        let mut nodes = Vec::new();
        for n in json
            .get("nodes")
            .and_then(Json::as_array)
            .ok_or_else(|| fail("no `nodes` array"))?
        {
            let num = |k: &str| n.get(k).and_then(Json::as_u64).unwrap_or(0);
            let text = |k: &str| n.get(k).and_then(Json::as_str).unwrap_or("").to_string();
            nodes.push(NodeStatus {
                id: n
                    .get("id")
                    .and_then(Json::as_u64)
                    .ok_or_else(|| fail("a node without a numeric `id`"))?,
                addr: text("addr"),
                role: text("role"),
                term: num("term"),
                written: num("written"),
                flushed: num("flushed"),
                replicated: num("replicated"),
                committed: num("committed"),
            });
        }
        Ok(ClusterStatus {
            leader,
            term,
            nodes,
            json,
            text: text.to_string(),
        })
    }

    /// The entry of node `id`.
    pub fn node(&self, id: usize) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == id as u64)
    }
}

/// One broker of the cluster.
struct Node {
    /// First, so that it drops (and prints its stderr on a failing test)
    /// before its directory is removed.
    proc: Option<BrokerProc>,
    dir: TestDir,
    addr: SocketAddr,
    args: Vec<String>,
    stopped: bool,
}

/// A running cluster. Dropping it kills every broker (SIGKILL, which also
/// ends a stopped one) and closes the proxies.
pub struct Cluster {
    nodes: Vec<Node>,
    /// `(from, to, proxy)`: the proxy node `from` uses to reach node `to`.
    links: Vec<(usize, usize, Proxy)>,
}

/// A port on 127.0.0.1 that was free a moment ago, and the listener that
/// holds it until the caller drops it.
fn reserve_port() -> (SocketAddr, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (l.local_addr().expect("local address"), l)
}

impl Cluster {
    /// Starts `n` brokers (node ids `1..=n`) with small segments; with
    /// `proxied`, every directed link between two nodes goes through its
    /// own [`Proxy`].
    pub fn start(n: usize, proxied: bool) -> Cluster {
        Cluster::start_with(n, proxied, SMALL_SEGMENTS_TOML)
    }

    /// As [`Cluster::start`], with `config_toml` as every node's config file.
    pub fn start_with(n: usize, proxied: bool, config_toml: &str) -> Cluster {
        Cluster::start_named(n, proxied, config_toml, "127.0.0.1")
    }

    /// As [`Cluster::start_with`], naming every peer `host:PORT` in the
    /// `--peers` list (`localhost`, say, to configure peers by host name);
    /// the brokers still listen on 127.0.0.1.
    pub fn start_named(n: usize, proxied: bool, config_toml: &str, host: &str) -> Cluster {
        assert!(n >= 1, "a cluster has at least one node");
        let reserved: Vec<(SocketAddr, TcpListener)> = (0..n).map(|_| reserve_port()).collect();
        let addrs: Vec<SocketAddr> = reserved.iter().map(|(a, _)| *a).collect();
        let mut links = Vec::new();
        if proxied {
            for from in 1..=n {
                for to in 1..=n {
                    if from != to {
                        links.push((from, to, Proxy::start(addrs[to - 1])));
                    }
                }
            }
        }
        let mut nodes = Vec::with_capacity(n);
        for id in 1..=n {
            let peers = (1..=n)
                .map(|j| {
                    let via = links
                        .iter()
                        .find(|(f, t, _)| *f == id && *t == j)
                        .map_or(addrs[j - 1], |(_, _, p)| p.addr());
                    format!("{j}={host}:{}", via.port())
                })
                .collect::<Vec<_>>()
                .join(",");
            let dir = TestDir::new();
            let config = dir.config(config_toml);
            let args = vec![
                "--config".to_string(),
                config.to_string_lossy().into_owned(),
                "--node-id".to_string(),
                id.to_string(),
                "--peers".to_string(),
                peers,
            ];
            nodes.push(Node {
                dir,
                addr: addrs[id - 1],
                args,
                proc: None,
                stopped: false,
            });
        }
        // Free the ports only now, just before each broker binds its own.
        drop(reserved);
        let mut cluster = Cluster { nodes, links };
        for id in 1..=n {
            cluster.launch(id);
        }
        // A new group's members vote as full members once each has caught
        // up with the first leader's commit (docs/consensus.md): until
        // then the group does not survive the loss of a member.
        cluster.wait_voting(Duration::from_secs(30));
        eprintln!(
            "cluster of {n}{}: {}",
            if proxied { " (proxied links)" } else { "" },
            (1..=n)
                .map(|id| format!("{id}={}", cluster.addr(id)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        cluster
    }

    /// Starts node `id` on its address, retrying for a while when the port
    /// is taken for a moment.
    fn launch(&mut self, id: usize) {
        let node = &mut self.nodes[id - 1];
        assert!(node.proc.is_none(), "node {id} is already running");
        let args: Vec<&str> = node.args.iter().map(String::as_str).collect();
        let listen = node.addr.to_string();
        let deadline = Instant::now() + RESTART_TIMEOUT;
        let proc = loop {
            match BrokerProc::try_start_at(&listen, &node.dir.data, &args) {
                Ok(p) => break p,
                Err(e) if Instant::now() < deadline && e.stderr.contains("in use") => {
                    std::thread::sleep(POLL);
                }
                Err(e) => panic!("node {id}: {}", e.describe()),
            }
        };
        assert_eq!(
            proc.addr(),
            node.addr,
            "node {id} listens where its peers expect it"
        );
        node.proc = Some(proc);
        node.stopped = false;
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node ids, `1..=n`.
    pub fn ids(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.nodes.len()
    }

    /// Every node's client address (its real listening address, never a
    /// proxy), in node id order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Node `id`'s client address.
    pub fn addr(&self, id: usize) -> SocketAddr {
        self.nodes[id - 1].addr
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: usize) -> &Path {
        &self.nodes[id - 1].dir.data
    }

    /// Node `id`'s broker process, while it runs.
    pub fn proc(&self, id: usize) -> Option<&BrokerProc> {
        self.nodes[id - 1].proc.as_ref()
    }

    /// True when node `id` runs and is not stopped.
    pub fn is_serving(&self, id: usize) -> bool {
        let n = &self.nodes[id - 1];
        n.proc.is_some() && !n.stopped
    }

    /// Node `id`'s stderr so far.
    pub fn stderr(&self, id: usize) -> String {
        self.proc(id).map_or_else(String::new, BrokerProc::stderr)
    }

    /// Stops node `id` with SIGTERM (a graceful shutdown) and returns its
    /// exit status and everything it logged.
    pub fn terminate(&mut self, id: usize) -> (std::process::ExitStatus, String) {
        let node = &mut self.nodes[id - 1];
        let mut p = node.proc.take().expect("the node runs");
        node.stopped = false;
        let status = p.terminate();
        let log = p.stderr();
        (status, log)
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill9(&mut self, id: usize) {
        let node = &mut self.nodes[id - 1];
        if let Some(p) = node.proc.as_mut() {
            p.kill9();
        }
        node.proc = None;
        node.stopped = false;
    }

    /// Starts node `id` again: same directory, address, config and peers.
    pub fn restart(&mut self, id: usize) {
        if self.nodes[id - 1].proc.is_some() {
            self.kill9(id);
        }
        self.launch(id);
    }

    /// Freezes node `id` (SIGSTOP).
    pub fn stop(&mut self, id: usize) {
        let node = &mut self.nodes[id - 1];
        node.proc
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
            .send_signal(nix::sys::signal::Signal::SIGSTOP);
        node.stopped = true;
    }

    /// Thaws node `id` (SIGCONT).
    pub fn cont(&mut self, id: usize) {
        let node = &mut self.nodes[id - 1];
        node.proc
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
            .send_signal(nix::sys::signal::Signal::SIGCONT);
        node.stopped = false;
    }

    /// The proxies on every link into and out of node `id`.
    fn links_of(&self, id: usize) -> impl Iterator<Item = &Proxy> {
        assert!(
            !self.links.is_empty(),
            "isolating a node needs a cluster started with proxied links"
        );
        self.links
            .iter()
            .filter(move |(f, t, _)| *f == id || *t == id)
            .map(|(_, _, p)| p)
    }

    /// Cuts node `id` off from every peer, both ways; clients still reach it.
    pub fn isolate(&self, id: usize) {
        for p in self.links_of(id) {
            p.cut();
        }
    }

    /// Restores every link into and out of node `id`.
    pub fn heal(&self, id: usize) {
        for p in self.links_of(id) {
            p.heal();
        }
    }

    /// The proxy node `from` uses to reach node `to` (proxied clusters).
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        self.links
            .iter()
            .find(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, p)| p)
            .unwrap_or_else(|| panic!("no proxy on the link {from}->{to}"))
    }

    /// `hutong cluster status --addr ADDR --json` against node `id`.
    ///
    /// # Errors
    /// The CLI's failure (exit status and stderr) or a malformed output.
    ///
    /// # Panics
    /// When the CLI runs longer than [`STATUS_TIMEOUT`].
    pub fn try_status(&self, id: usize) -> Result<ClusterStatus, String> {
        let addr = self.addr(id).to_string();
        let (status, out, err) = run_cli(
            &["cluster", "status", "--addr", &addr, "--json"],
            b"",
            STATUS_TIMEOUT,
        );
        if !status.success() {
            return Err(format!(
                "`hutong cluster status --addr {addr} --json` failed ({status}): {err}"
            ));
        }
        ClusterStatus::parse(&out)
    }

    /// As [`Cluster::try_status`], panicking on an error.
    pub fn status(&self, id: usize) -> ClusterStatus {
        self.try_status(id).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Node `id`'s own view (the ClusterStatus request), when it serves and
    /// answers within [`NODE_STATUS_TIMEOUT`].
    pub fn node_status(&self, id: usize) -> Option<ClusterStatusResponse> {
        if !self.is_serving(id) {
            return None;
        }
        let mut c = RawConn::connect(self.addr(id));
        c.stream
            .set_read_timeout(Some(NODE_STATUS_TIMEOUT))
            .expect("set read timeout");
        let cid = c.send(ApiKey::ClusterStatus, |_| {});
        let r = c.read_response().ok()?;
        if r.header.correlation_id != cid || r.code() != ErrorCode::None {
            return None;
        }
        ClusterStatusResponse::decode(&r.body).ok()
    }

    /// Waits until every node says it has caught up with the group (it
    /// votes).
    ///
    /// # Panics
    /// When that does not happen within `limit`.
    pub fn wait_voting(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.node_statuses();
            if all.len() == self.size() && all.iter().all(|(_, s)| s.caught_up) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every node caught up within {limit:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Every serving node's own view, by node id.
    pub fn node_statuses(&self) -> Vec<(usize, ClusterStatusResponse)> {
        self.ids()
            .filter_map(|id| self.node_status(id).map(|s| (id, s)))
            .collect()
    }

    /// Waits up to [`LEADER_TIMEOUT`] for a serving node that says it leads,
    /// and returns its id and address. When several say so (a cut-off old
    /// leader that has not noticed yet), the one with the highest term.
    pub fn leader(&self) -> Option<(usize, SocketAddr)> {
        self.leader_within(LEADER_TIMEOUT, |_| true)
    }

    /// As [`Cluster::leader`], waiting up to `limit` for a leader that
    /// `accept` accepts (for example, any node but the old leader).
    pub fn leader_within(
        &self,
        limit: Duration,
        accept: impl Fn(usize) -> bool,
    ) -> Option<(usize, SocketAddr)> {
        let deadline = Instant::now() + limit;
        loop {
            let best = self
                .node_statuses()
                .into_iter()
                .filter(|(_, s)| s.role == ClusterRole::Leader)
                .max_by_key(|(_, s)| s.term);
            if let Some((id, _)) = best {
                if accept(id) {
                    return Some((id, self.addr(id)));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// As [`Cluster::leader`], panicking when there is none.
    pub fn expect_leader(&self) -> (usize, SocketAddr) {
        self.leader()
            .unwrap_or_else(|| panic!("no leader within {LEADER_TIMEOUT:?}\n{}", self.describe()))
    }

    /// A short text of the cluster's state for panic messages.
    pub fn describe(&self) -> String {
        self.ids()
            .map(|id| match self.node_status(id) {
                Some(s) => format!(
                    "node {id}: {:?} term {} leader {} W {} F {} R {} C {}{}",
                    s.role,
                    s.term,
                    s.leader_id,
                    s.written,
                    s.flushed,
                    s.replicated,
                    s.committed,
                    if s.caught_up { "" } else { " (not caught up)" }
                ),
                None if self.is_serving(id) => format!("node {id}: no status answer"),
                None => format!("node {id}: down or stopped"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Creates a topic on the current leader, following a leadership
    /// change that happens meanwhile.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let (id, addr) = self.expect_leader();
            let r = RawConn::connect(addr).try_create_topic(name, partitions);
            match r.code() {
                ErrorCode::None => return,
                ErrorCode::NotLeader if Instant::now() < deadline => {
                    eprintln!("node {id} is no longer the leader; creating {name} again");
                    std::thread::sleep(POLL);
                }
                code => panic!(
                    "create topic {name} on leader {id}: {code} ({})",
                    r.message()
                ),
            }
        }
    }

    /// Waits up to `limit` until every node serves and has committed
    /// everything the leader wrote: each node's C equals the leader's C,
    /// which equals the leader's W. Returns that position.
    ///
    /// # Panics
    /// When that does not happen in time; the message carries the state.
    pub fn wait_caught_up(&self, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.node_statuses();
            let leader = all
                .iter()
                .filter(|(_, s)| s.role == ClusterRole::Leader)
                .max_by_key(|(_, s)| s.term);
            if let Some((_, l)) = leader {
                if all.len() == self.size()
                    && l.committed == l.written
                    && all.iter().all(|(_, s)| s.committed == l.committed)
                {
                    return l.committed;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not catch up within {limit:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The first `len` bytes of node `id`'s journal: its segment files
    /// (`*.seg` anywhere under the data directory, named by their start
    /// position) laid out at their positions.
    ///
    /// # Panics
    /// When the segments do not cover `0..len`.
    pub fn journal_prefix(&self, id: usize, len: u64) -> Vec<u8> {
        journal_prefix(self.data_dir(id), len)
            .unwrap_or_else(|e| panic!("node {id}'s journal: {e}"))
    }
}

/// Segment files under `dir` (recursively), sorted by start position.
pub fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(start) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|digits| digits.parse::<u64>().ok())
            {
                out.push((start, path));
            }
        }
    }
    out.sort();
    out
}

/// The bytes `0..len` of the journal in `dir`.
///
/// # Errors
/// A gap, an overlap or a read failure.
pub fn journal_prefix(dir: &Path, len: u64) -> Result<Vec<u8>, String> {
    journal_range(dir, 0, len)
}

/// The bytes `from..len` of the journal in `dir`, whose oldest segment
/// starts at `from` (one that retention or a snapshot install shortened).
///
/// # Errors
/// A gap, an overlap or a read failure.
pub fn journal_range(dir: &Path, from: u64, len: u64) -> Result<Vec<u8>, String> {
    let segments = segment_files(dir);
    let mut out: Vec<u8> = Vec::with_capacity(len.saturating_sub(from) as usize);
    for (i, (start, path)) in segments.iter().enumerate() {
        if from + out.len() as u64 >= len {
            break;
        }
        if *start != from + out.len() as u64 {
            return Err(format!(
                "segment {} starts at {start}, but the segments before it end at {}",
                path.display(),
                from + out.len() as u64
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        // A segment ends where the next one starts (its unused preallocated
        // tail is not part of the journal) or at `len`.
        let end = segments
            .get(i + 1)
            .map_or(len, |(next, _)| (*next).min(len));
        let take = (end - start) as usize;
        if bytes.len() < take {
            return Err(format!(
                "segment {} holds {} bytes, fewer than the {take} the journal needs from it",
                path.display(),
                bytes.len()
            ));
        }
        out.extend_from_slice(&bytes[..take]);
    }
    if from + (out.len() as u64) < len {
        return Err(format!(
            "the segments in {} cover {from}..{}, less than up to {len}",
            dir.display(),
            from + out.len() as u64
        ));
    }
    Ok(out)
}
