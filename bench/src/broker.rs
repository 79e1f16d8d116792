//! The broker a run measures: a running one (`--addr`) or one this process
//! starts in a temporary directory and stops with SIGTERM at the end.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable naming the `hutong` binary to start.
pub const HUTONG_BIN_ENV: &str = "HUTONG_BIN";
/// The line prefix the broker prints once it serves.
const LISTENING: &str = "hutong listening on ";
/// How long a started broker may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the scenarios send their requests.
pub enum Target {
    /// A broker someone else runs.
    Running(SocketAddr),
    /// A broker this process started.
    Started(BrokerProcess),
}

impl Target {
    /// `--addr` when given, otherwise a broker started here.
    ///
    /// # Errors
    /// When the broker cannot be started.
    pub fn resolve(addr: Option<SocketAddr>) -> Result<Target> {
        match addr {
            Some(addr) => Ok(Target::Running(leader_of(addr)?)),
            None => Ok(Target::Started(BrokerProcess::start()?)),
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Running(addr) => *addr,
            Target::Started(b) => b.addr(),
        }
    }

    /// The data directory of a broker this process started.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match self {
            Target::Running(_) => None,
            Target::Started(b) => Some(b.data_dir()),
        }
    }

    /// Stops a broker this process started (a running one is left alone).
    ///
    /// # Errors
    /// When the broker does not exit cleanly.
    pub fn stop(self) -> Result<()> {
        match self {
            Target::Running(_) => Ok(()),
            Target::Started(b) => b.stop(),
        }
    }
}

/// How long to wait for a replication group to name its leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The address to send produce requests to: `addr` itself for a standalone
/// broker or a group's leader, else the leader `addr`'s group names (its
/// address as `addr`'s member list gives it), waiting for an election if
/// there is none yet. Every scenario then runs against the leader.
///
/// # Errors
/// When `addr` cannot be asked, or no leader emerges in time.
pub fn leader_of(addr: SocketAddr) -> Result<SocketAddr> {
    let leader =
        hutong::client::cluster::leader_addr(&addr.to_string(), LEADER_TIMEOUT).map_err(|e| {
            // A broker answer (no leader in time) is not a connection failure.
            let what = if e.code().is_some() {
                format!("cannot find the leader of {addr}'s group")
            } else {
                format!("cannot connect to {addr}")
            };
            anyhow::Error::new(e).context(what)
        })?;
    leader
        .parse()
        .with_context(|| format!("leader address {leader} is not IP:PORT"))
}

/// A `hutong broker` child process with its data in a temporary directory.
/// The directory lives as long as this value, so a broker killed with
/// [`BrokerProcess::kill9`] can be started again on the same data with
/// [`BrokerProcess::restart`].
pub struct BrokerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    /// What `--listen` says: `127.0.0.1:0`, or a fixed address for a member
    /// of a group, whose peers must find it there after a restart.
    listen: String,
    /// Arguments after `--listen ADDR --data-dir DIR` (`--node-id`, `--peers`).
    extra_args: Vec<String>,
    data_dir: tempfile::TempDir,
    /// What the broker wrote on stderr, over all its starts, shown when it
    /// fails.
    stderr: Arc<Mutex<String>>,
    drains: Vec<JoinHandle<()>>,
}

/// The `hutong` binary: `$HUTONG_BIN`, or the one next to this executable
/// (both are built into the same `target/<profile>/`).
pub fn hutong_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(HUTONG_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable {} has no directory", exe.display()))?;
    let bin = dir.join("hutong");
    if !bin.is_file() {
        bail!(
            "no hutong binary at {} (build it with `cargo build --release --workspace`, \
             set {HUTONG_BIN_ENV}, or pass --addr)",
            bin.display()
        );
    }
    Ok(bin)
}

/// How long a restart keeps trying while its fixed port is still taken.
const PORT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl BrokerProcess {
    /// Starts `hutong broker --listen 127.0.0.1:0 --data-dir <temp>` and
    /// waits for its `hutong listening on ADDR` line.
    ///
    /// # Errors
    /// When the binary is missing, fails to start, or exits or stays silent
    /// before printing its address.
    pub fn start() -> Result<BrokerProcess> {
        BrokerProcess::start_with("127.0.0.1:0", Vec::new())
    }

    /// Starts `hutong broker --listen LISTEN --data-dir <temp> EXTRA_ARGS...`
    /// and waits for its `hutong listening on ADDR` line. A fixed `listen`
    /// address that is still taken for a moment (a port reserved and just
    /// released) is tried again for a while.
    ///
    /// # Errors
    /// As [`BrokerProcess::start`].
    pub fn start_with(listen: &str, extra_args: Vec<String>) -> Result<BrokerProcess> {
        let data_dir = tempfile::Builder::new()
            .prefix("hutong-bench-")
            .tempdir()
            .context("cannot create the broker's data directory")?;
        let mut broker = BrokerProcess {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen: listen.to_string(),
            extra_args,
            data_dir,
            stderr: Arc::new(Mutex::new(String::new())),
            drains: Vec::new(),
        };
        broker.launch()?;
        Ok(broker)
    }

    /// Starts the process again after [`BrokerProcess::kill9`]: same
    /// binary, address, data directory and arguments.
    ///
    /// # Errors
    /// As [`BrokerProcess::start`]; also when the broker is still running.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the broker at {} is still running", self.addr);
        }
        self.append_log("--- hutong-bench: restarted ---\n");
        self.launch()
    }

    /// Kills the broker with SIGKILL (no shutdown of any kind) and waits
    /// for it; its data directory stays.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill().context("cannot send SIGKILL to the broker")?;
        let _ = child.wait();
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        self.append_log("--- hutong-bench: killed with SIGKILL ---\n");
        Ok(())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns the process, retrying while a fixed port is taken.
    fn launch(&mut self) -> Result<()> {
        let deadline = Instant::now() + PORT_BUSY_TIMEOUT;
        loop {
            match self.spawn_once() {
                Ok(()) => return Ok(()),
                Err(e)
                    if self.listen != "127.0.0.1:0"
                        && Instant::now() < deadline
                        && format!("{e:#}").contains("in use") =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn_once(&mut self) -> Result<()> {
        let bin = hutong_binary()?;
        let mut child = Command::new(&bin)
            .arg("broker")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        // This start's own stderr, so that a failed start reports its own
        // reason (and a port in use is recognised) and not an earlier one.
        let this_start = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sinks = [Arc::clone(&self.stderr), Arc::clone(&this_start)];
            self.drains.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for sink in &sinks {
                        lock(sink).push_str(&text);
                    }
                }
            }));
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        // Read the address on a thread so a silent broker cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        self.drains.push(std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(at) = line.find(LISTENING) {
                        let _ = tx.send(line[at + LISTENING.len()..].trim().to_string());
                        sent = true;
                    }
                }
            }
        }));
        self.child = Some(child);
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                self.kill_and_reap();
                let log = lock(&this_start).clone();
                if e == std::sync::mpsc::RecvTimeoutError::Timeout {
                    bail!("the broker did not print its address within {START_TIMEOUT:?}:\n{log}");
                }
                bail!("the broker exited before it printed its address:\n{log}");
            }
        };
        self.addr = line
            .parse()
            .with_context(|| format!("broker printed an unreadable address {line:?}"))?;
        Ok(())
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// Everything the broker wrote on stderr so far, over all its starts.
    pub fn log(&self) -> String {
        lock(&self.stderr).clone()
    }

    fn append_log(&self, line: &str) {
        lock(&self.stderr).push_str(line);
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    ///
    /// # Errors
    /// When the broker exits with a failure or does not exit in time.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).context("cannot send SIGTERM to the broker")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the broker did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        if !status.success() {
            bail!("the broker exited with {status}:\n{}", self.log());
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // A run that failed before `stop` must not leave a broker behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
