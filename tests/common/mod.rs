//! The black-box test harness: real `hutong` broker processes on
//! `127.0.0.1:0` in temporary directories, raw protocol helpers, batch
//! builders and bounded waits.
//!
//! Every helper here finishes in bounded time even when the broker
//! misbehaves: sockets carry read and write timeouts, process waits have
//! deadlines, and [`bounded`] runs client work on a worker thread that the
//! test abandons (after killing the broker) when it overruns.

// Each test file uses a different subset of the harness.
#![allow(dead_code)]

pub mod cluster;
pub mod json;
pub mod proxy;
pub mod tmpfs;

use hutong::wire::api::{
    CreateTopicRequest, ErrorBody, FetchRequest, FetchResponse, HandshakeRequest,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, PROTOCOL_VERSION,
};
use hutong::wire::batch::{records, split_batches, BatchBuilder};
use hutong::wire::frame::{ResponseHeader, LENGTH_PREFIX_LEN, RESPONSE_HEADER_LEN};
use hutong::wire::{ApiKey, ErrorCode, Qos};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The marker the broker prints on stdout once it accepts connections.
pub const LISTENING: &str = "hutong listening on ";
/// How long a broker may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a broker may take to exit after SIGTERM or SIGINT.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Read and write timeout of every raw test socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker binary built by Cargo for these tests.
pub fn broker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hutong")
}

/// A temporary directory and a `data` directory inside it for a broker's
/// journal; diagnostics files go beside `data`, never inside it.
pub struct TestDir {
    /// Removed (with everything in it) on drop.
    pub tmp: tempfile::TempDir,
    /// The broker's data directory (created empty).
    pub data: PathBuf,
}

impl TestDir {
    /// A fresh temporary directory with an empty `data` directory.
    pub fn new() -> TestDir {
        let tmp = tempfile::Builder::new()
            .prefix("hutong-bbtest-")
            .tempdir()
            .expect("create temp dir");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("create data dir");
        TestDir { tmp, data }
    }

    /// Writes a TOML config file beside the data directory and returns its path.
    pub fn config(&self, toml: &str) -> PathBuf {
        let path = self.tmp.path().join("hutong.toml");
        std::fs::write(&path, toml).expect("write config");
        path
    }

    /// A config with small segments (4 MiB, batches up to 1 MiB) so that a
    /// test of a few megabytes crosses segment boundaries.
    pub fn small_segments_config(&self) -> PathBuf {
        self.config("segment_bytes = 4194304\nbatch_bytes_max = 1048576\n")
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

/// A broker that did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status; `None` when it stayed silent and was killed.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// Where that was captured.
    pub stderr_path: PathBuf,
}

impl StartFailure {
    /// A message for a panic.
    pub fn describe(&self) -> String {
        format!(
            "broker did not print `{LISTENING}ADDR` ({})\n--- broker stderr ({}) ---\n{}",
            match self.status {
                Some(s) => format!("exited with {s}"),
                None => format!("silent for {START_TIMEOUT:?}, killed"),
            },
            self.stderr_path.display(),
            self.stderr
        )
    }
}

static STARTS: AtomicUsize = AtomicUsize::new(0);

/// A running broker process. Dropping it kills the process (SIGKILL) and,
/// when the test is failing, prints the broker's stderr.
pub struct BrokerProc {
    child: Option<Child>,
    addr: SocketAddr,
    stderr_path: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stdout_thread: Option<JoinHandle<()>>,
}

impl BrokerProc {
    /// Starts `hutong broker --listen 127.0.0.1:0 --data-dir DIR EXTRA...`
    /// and waits (at most [`START_TIMEOUT`]) for its listening line.
    ///
    /// # Panics
    /// When the broker exits or stays silent instead; the panic message
    /// carries its stderr.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> BrokerProc {
        BrokerProc::try_start(data_dir, extra_args).unwrap_or_else(|e| panic!("{}", e.describe()))
    }

    /// As [`BrokerProc::start`], but a broker that exits (or stays silent,
    /// and is then killed) comes back as an error instead of a panic.
    pub fn try_start(data_dir: &Path, extra_args: &[&str]) -> Result<BrokerProc, StartFailure> {
        BrokerProc::try_start_at("127.0.0.1:0", data_dir, extra_args)
    }

    /// As [`BrokerProc::start`], listening on `listen` (for example the
    /// address of a broker that is being restarted) instead of
    /// `127.0.0.1:0`.
    ///
    /// # Panics
    /// As [`BrokerProc::start`].
    pub fn start_at(listen: &str, data_dir: &Path, extra_args: &[&str]) -> BrokerProc {
        BrokerProc::try_start_at(listen, data_dir, extra_args)
            .unwrap_or_else(|e| panic!("{}", e.describe()))
    }

    /// As [`BrokerProc::try_start`], listening on `listen`.
    pub fn try_start_at(
        listen: &str,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<BrokerProc, StartFailure> {
        let stderr_path = stderr_path_for(data_dir);
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut child = Command::new(broker_bin())
            .args(["broker", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn hutong broker");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout_thread = std::thread::spawn({
            let lines = Arc::clone(&stdout_lines);
            move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lock(&lines).push(line.clone());
                    // The receiver is gone once the broker is up; keep
                    // collecting lines for `stdout_lines`.
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        break addr;
                    }
                }
                Err(e) => {
                    let exited = match e {
                        // Stdout closed: the broker is exiting; reap it.
                        mpsc::RecvTimeoutError::Disconnected => {
                            wait_child(&mut child, Duration::from_secs(10))
                        }
                        mpsc::RecvTimeoutError::Timeout => None,
                    };
                    let status = match exited {
                        Some(status) => Some(status),
                        None => {
                            let _ = child.kill();
                            let _ = child.wait();
                            None
                        }
                    };
                    return Err(StartFailure {
                        status,
                        stderr: read_lossy(&stderr_path),
                        stderr_path,
                    });
                }
            }
        };
        Ok(BrokerProc {
            child: Some(child),
            addr,
            stderr_path,
            stdout_lines,
            stdout_thread: Some(stdout_thread),
        })
    }

    /// The address the broker bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// Everything the broker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Kills the broker with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
    }

    /// Sends SIGINT and waits for the exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal_and_wait(nix::sys::signal::Signal::SIGINT)
    }

    /// Sends `signal` and waits at most [`EXIT_TIMEOUT`] for the exit.
    ///
    /// # Panics
    /// When the broker does not exit in time (it is then killed).
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        self.send_signal(signal);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Sends `signal` without waiting.
    pub fn send_signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the broker");
    }

    /// The exit status, once the broker has exited (it is then reaped);
    /// `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_child(child, Duration::ZERO)?;
        self.child = None;
        Some(status)
    }

    /// Waits at most `timeout` for the broker to exit and returns its status.
    ///
    /// # Panics
    /// When the broker does not exit in time (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("broker running");
        match wait_child(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not exit within {timeout:?}\n--- broker stderr ---\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Every stdout line the broker printed. Call after the broker exited
    /// to get them all: this waits (bounded) for the end of its stdout.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        if self.child.is_none() {
            if let Some(t) = self.stdout_thread.take() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if t.is_finished() {
                    let _ = t.join();
                }
            }
        }
        lock(&self.stdout_lines).clone()
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- broker {} stderr ({}) ---\n{}--- end of broker stderr ---",
                self.addr,
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}

/// Runs a broker command that is expected to fail, and returns its exit
/// status and stderr. Kills it and panics when it is still running after
/// [`START_TIMEOUT`].
pub fn run_broker_expecting_exit(data_dir: &Path, extra_args: &[&str]) -> (ExitStatus, String) {
    let data = data_dir.to_string_lossy().into_owned();
    let mut args = vec!["broker", "--listen", "127.0.0.1:0", "--data-dir", &data];
    args.extend_from_slice(extra_args);
    run_expecting_exit(&args, &stderr_path_for(data_dir))
}

/// Runs `hutong ARGS` expecting it to exit on its own; returns its status
/// and stderr (also written to `stderr_path`).
pub fn run_expecting_exit(args: &[&str], stderr_path: &Path) -> (ExitStatus, String) {
    let stderr = std::fs::File::create(stderr_path).expect("create stderr log");
    let mut child = Command::new(broker_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn hutong");
    match wait_child(&mut child, START_TIMEOUT) {
        Some(status) => (status, read_lossy(stderr_path)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`hutong {}` was expected to exit but still ran after {START_TIMEOUT:?}\n\
                 --- its stderr ---\n{}",
                args.join(" "),
                read_lossy(stderr_path)
            );
        }
    }
}

/// Runs the `hutong` binary with `args` and `stdin`, waiting at most
/// `timeout`; returns (status, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: &[u8], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(broker_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hutong");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`hutong {}` did not exit within {timeout:?}",
                args.join(" ")
            );
        }
    };
    let _ = writer.join();
    let out = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    (status, out, err)
}

fn stderr_path_for(data_dir: &Path) -> PathBuf {
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let name = data_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "broker".into());
    let parent = data_dir.parent().unwrap_or(data_dir);
    parent.join(format!("{name}.broker-{n}.stderr.log"))
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for a child process: {e}"),
        }
    }
}

/// The address in a listening line, when `line` is one.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let at = line.find(LISTENING)?;
    let rest = &line[at + LISTENING.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide
/// the data from the others).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Bounded time
// ---------------------------------------------------------------------------

/// Runs `f` on a worker thread and waits at most `limit` for it.
///
/// # Panics
/// When `f` panics (the panic is resumed here) or overruns `limit`; the
/// worker is then abandoned. Keep the [`BrokerProc`] on the calling thread,
/// so that the panic drops it, which kills the broker and unblocks the
/// worker's sockets.
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn worker");
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {limit:?}")
        }
    }
}

/// Polls `cond` every few milliseconds until it holds.
///
/// # Panics
/// When it still does not hold after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------

/// A small, seedable generator (SplitMix64), so that a randomized test can
/// print its seed and be replayed with it.
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from the environment variable `var` when it holds
    /// a number, else from the clock. Prints the seed and how to reuse it.
    pub fn from_env_or_clock(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("random seed: {seed} (rerun with {var}={seed})");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes appended to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        out.extend((0..len).map(|_| self.next_u64() as u8));
    }
}

// ---------------------------------------------------------------------------
// Batches and payloads
// ---------------------------------------------------------------------------

/// A producer batch holding `records` (key, value) pairs, all stamped with
/// timestamp `ts_ms`.
pub fn batch(records: &[(&[u8], &[u8])], ts_ms: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for (k, v) in records {
        b.push(ts_ms, k, v, &[]);
    }
    b.finish(0, 0).to_vec()
}

/// A producer batch of values with empty keys.
pub fn batch_of_values(values: &[Vec<u8>]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(now_ms(), b"", v, &[]);
    }
    b.finish(0, 0).to_vec()
}

/// Wall clock, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A deterministic value for message `seq` of stream `tag`: readable prefix,
/// then 0-63 bytes covering every byte value over the run (not UTF-8), so a
/// mix-up of messages or a changed byte shows.
pub fn payload(tag: &str, seq: u64) -> Vec<u8> {
    let mut v = format!("{tag}-{seq:08}-").into_bytes();
    let extra = (seq.wrapping_mul(7) % 64) as usize;
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..extra {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// A deterministic key for message `seq`.
pub fn key(seq: u64) -> Vec<u8> {
    format!("k{seq}").into_bytes()
}

/// One record read back from a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its offset.
    pub offset: u64,
    /// Its key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// The records at or above `from` in a fetch response's batches.
pub fn decode_fetched(batches: &[u8], from: u64) -> Vec<Fetched> {
    let mut out = Vec::new();
    for b in split_batches(batches) {
        hutong::wire::batch::check_stored_batch(b).expect("fetched batch passes its checksums");
        for r in records(b) {
            if r.offset >= from {
                out.push(Fetched {
                    offset: r.offset,
                    key: r.key.to_vec(),
                    value: r.value.to_vec(),
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Raw protocol over std::net::TcpStream
// ---------------------------------------------------------------------------

/// A response read off a raw socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Its header.
    pub header: ResponseHeader,
    /// Its body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The error code; panics on a number this protocol does not know.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.header.error_code)
            .unwrap_or_else(|| panic!("unknown error code {}", self.header.error_code))
    }

    /// The error message of an error response.
    pub fn message(&self) -> String {
        ErrorBody::decode(&self.body).message.to_string()
    }

    /// Panics unless this is a success.
    pub fn ok(self) -> RawResponse {
        assert_eq!(
            self.code(),
            ErrorCode::None,
            "expected success, got {} ({})",
            self.code(),
            self.message()
        );
        self
    }

    /// Panics unless this is the error `code`.
    pub fn expect_error(&self, code: ErrorCode) {
        assert_eq!(
            self.code(),
            code,
            "expected {code}, got {} ({})",
            self.code(),
            self.message()
        );
    }
}

/// The body of an `OffsetOutOfRange` error: the ordinary error body
/// followed by the partition's log start and end (docs/protocol.md), so
/// that a consumer can jump to the first offset still kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRangeBody {
    /// Human-readable detail.
    pub message: String,
    /// The partition's log start: its first offset still stored.
    pub start_offset: u64,
    /// One past its last committed offset (the high watermark).
    pub end_offset: u64,
}

impl OutOfRangeBody {
    /// Parses an error body by the byte layout docs/protocol.md gives it
    /// (read here on its own, not with the broker's codec, so that a layout
    /// the broker and its codec agree on wrongly still shows): `string
    /// message` (u16 length, UTF-8), then `u64 start_offset` and `u64
    /// end_offset`, little-endian; bytes after the trailer are ignored, as
    /// for every error trailer. `None` when the trailer is missing or
    /// incomplete.
    pub fn decode(body: &[u8]) -> Option<OutOfRangeBody> {
        let len = usize::from(u16::from_le_bytes(body.get(..2)?.try_into().ok()?));
        let message = std::str::from_utf8(body.get(2..2 + len)?).ok()?.to_string();
        let u64_at = |at: usize| Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?));
        Some(OutOfRangeBody {
            message,
            start_offset: u64_at(2 + len)?,
            end_offset: u64_at(10 + len)?,
        })
    }
}

/// A blocking protocol connection with timeouts, for tests that need byte
/// control (bad input, correlation ids, exact request shapes).
pub struct RawConn {
    /// The socket (with read and write timeouts).
    pub stream: TcpStream,
    next_id: u32,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects without a handshake.
    pub fn connect_bare(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            next_id: 1,
            buf: Vec::new(),
        }
    }

    /// Connects and performs the handshake.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let mut c = RawConn::connect_bare(addr);
        c.request(ApiKey::Handshake, |out| {
            HandshakeRequest {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                client_id: "hutong-bbtest",
            }
            .encode(out)
        })
        .ok();
        c
    }

    /// A fresh correlation id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Encodes a whole request frame.
    pub fn frame(
        api_key: u16,
        api_version: u16,
        correlation_id: u32,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        hutong::wire::frame::request_frame(api_key, api_version, correlation_id, body)
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    /// Sends one request (version 1) and returns its correlation id.
    pub fn send(&mut self, api: ApiKey, body: impl FnOnce(&mut Vec<u8>)) -> u32 {
        self.send_versioned(api.as_u16(), 1, body)
    }

    /// Sends one request with any API key and version.
    pub fn send_versioned(
        &mut self,
        api_key: u16,
        api_version: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> u32 {
        let id = self.next_id();
        let frame = RawConn::frame(api_key, api_version, id, body);
        self.write_raw(&frame);
        id
    }

    /// Reads the next response frame.
    ///
    /// # Errors
    /// The IO error, `UnexpectedEof` when the broker closed the connection.
    pub fn read_response(&mut self) -> std::io::Result<RawResponse> {
        loop {
            if self.buf.len() >= LENGTH_PREFIX_LEN {
                let len = u32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                let total = len + LENGTH_PREFIX_LEN;
                assert!(
                    (RESPONSE_HEADER_LEN..=256 << 20).contains(&total),
                    "broker sent a response frame of {total} bytes"
                );
                if self.buf.len() >= total {
                    let header = ResponseHeader::parse(&self.buf[..total]);
                    let body = self.buf[RESPONSE_HEADER_LEN..total].to_vec();
                    self.buf.drain(..total);
                    return Ok(RawResponse { header, body });
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "broker closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the response to `id`, which must be the next one.
    pub fn response_to(&mut self, id: u32) -> RawResponse {
        let r = self.read_response().expect("read response");
        assert_eq!(
            r.header.correlation_id, id,
            "response carries the request's correlation id"
        );
        r
    }

    /// Sends a request and reads its response.
    pub fn request(&mut self, api: ApiKey, body: impl FnOnce(&mut Vec<u8>)) -> RawResponse {
        let id = self.send(api, body);
        let r = self.response_to(id);
        assert_eq!(r.header.api_key, api.as_u16(), "response names the API");
        r
    }

    /// Asserts that the broker closes the connection (EOF or reset) within
    /// the socket timeout, with no further response.
    pub fn expect_closed(&mut self) {
        match self.read_response() {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) => {}
            Err(e) => panic!("expected the broker to close the connection, got {e}"),
            Ok(r) => panic!("expected the broker to close the connection, got {r:?}"),
        }
    }

    /// Half-closes the writing side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Creates a topic and checks success.
    pub fn create_topic(&mut self, name: &str, partitions: u32) {
        self.try_create_topic(name, partitions).ok();
    }

    /// Creates a topic and returns the raw response.
    pub fn try_create_topic(&mut self, name: &str, partitions: u32) -> RawResponse {
        self.request(ApiKey::CreateTopic, |out| {
            CreateTopicRequest {
                name,
                partitions,
                config: Default::default(),
            }
            .encode(out)
        })
    }

    /// Produces one batch and returns the raw response.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        qos: u8,
        timeout_ms: u32,
        batch: &[u8],
    ) -> RawResponse {
        self.request(ApiKey::Produce, |out| {
            ProduceRequest {
                topic,
                partition,
                qos,
                timeout_ms,
                batch,
            }
            .encode(out)
        })
    }

    /// Produces one batch at QoS all and returns its base offset.
    pub fn produce_ok(&mut self, topic: &str, partition: u32, batch: &[u8]) -> u64 {
        let r = self
            .produce(topic, partition, Qos::All as u8, 10_000, batch)
            .ok();
        ProduceResponse::decode(&r.body)
            .expect("decode produce response")
            .base_offset
    }

    /// Fetches and returns the raw response.
    pub fn fetch(&mut self, req: &FetchRequest<'_>) -> RawResponse {
        self.request(ApiKey::Fetch, |out| req.encode(out))
    }

    /// Fetches up to 1 MiB from `offset` without waiting and returns the
    /// raw response, which may be an error.
    pub fn fetch_at(&mut self, topic: &str, partition: u32, offset: u64) -> RawResponse {
        self.fetch(&FetchRequest {
            topic,
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            min_bytes: 0,
        })
    }

    /// Fetches from `offset` (no wait) and returns the records at or above it.
    pub fn fetch_records(&mut self, topic: &str, partition: u32, offset: u64) -> Vec<Fetched> {
        let r = self.fetch_at(topic, partition, offset).ok();
        let f = FetchResponse::decode(&r.body).expect("decode fetch response");
        decode_fetched(f.batches, offset)
    }

    /// Metadata for `topics` (every topic when empty).
    pub fn metadata(&mut self, topics: &[&str]) -> MetadataResponse {
        let r = self
            .request(ApiKey::Metadata, |out| {
                MetadataRequest {
                    topics: topics.to_vec(),
                }
                .encode(out)
            })
            .ok();
        MetadataResponse::decode(&r.body).expect("decode metadata response")
    }

    /// ListOffsets for one partition.
    pub fn list_offsets(&mut self, topic: &str, partition: u32) -> ListOffsetsResponse {
        let r = self
            .request(ApiKey::ListOffsets, |out| {
                ListOffsetsRequest {
                    topic,
                    partition,
                    timestamp_ms: None,
                }
                .encode(out)
            })
            .ok();
        ListOffsetsResponse::decode(&r.body).expect("decode list offsets response")
    }

    /// Pings with `payload` and returns the echoed body.
    pub fn ping(&mut self, payload: &[u8]) -> Vec<u8> {
        self.request(ApiKey::Ping, |out| out.extend_from_slice(payload))
            .ok()
            .body
    }
}

/// Reads every record of a partition from offset 0 to its current end over
/// a raw connection, checking offsets are contiguous from 0.
pub fn read_partition(addr: SocketAddr, topic: &str, partition: u32) -> Vec<Fetched> {
    let mut c = RawConn::connect(addr);
    let end = c.list_offsets(topic, partition).latest;
    let mut out: Vec<Fetched> = Vec::with_capacity(end as usize);
    while (out.len() as u64) < end {
        let next = out.len() as u64;
        let got = c.fetch_records(topic, partition, next);
        assert!(
            !got.is_empty(),
            "fetch at {next} below the end {end} of {topic}/{partition} returned nothing"
        );
        for r in got {
            if r.offset >= end {
                break;
            }
            assert_eq!(
                r.offset,
                out.len() as u64,
                "{topic}/{partition}: offsets are contiguous"
            );
            out.push(r);
        }
    }
    out
}

/// Asserts that a fresh connection can create a topic, produce to it and
/// read the message back: the broker still serves.
pub fn assert_broker_serves(addr: SocketAddr) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let topic = format!("still-serving-{}", N.fetch_add(1, Ordering::Relaxed));
    let mut c = RawConn::connect(addr);
    assert_eq!(c.ping(b"alive?"), b"alive?", "ping echoes its payload");
    c.create_topic(&topic, 1);
    let value = b"still here".to_vec();
    let base = c.produce_ok(&topic, 0, &batch_of_values(std::slice::from_ref(&value)));
    assert_eq!(base, 0, "first message of a new topic has offset 0");
    let got = c.fetch_records(&topic, 0, 0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, value);
}

/// What a partition holds from its log start, read back in order.
pub struct Kept {
    /// Where the read began: the log start, after any jump forward that
    /// an `OffsetOutOfRange` asked for.
    pub start: u64,
    /// Every record from `start` up to the end the read was given.
    pub records: Vec<Fetched>,
    /// Bytes of the stored batches that begin at or above `start`.
    pub batch_bytes: u64,
    /// How often a deletion moved the log start past the read.
    pub jumps: u32,
}

impl Kept {
    /// One past the last record read.
    pub fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
}

/// Reads `topic/partition` from its log start up to `end`, asserting that
/// every batch passes its checksums and the offsets run without a gap.
/// When a deletion moves the log start past the read, the broker must
/// answer `OffsetOutOfRange` naming a log start above the offset asked
/// for; the read then starts over there. Bounded by a minute.
pub fn read_kept(c: &mut RawConn, topic: &str, partition: u32, end: u64) -> Kept {
    let mut kept = Kept {
        start: c.list_offsets(topic, partition).earliest,
        records: Vec::new(),
        batch_bytes: 0,
        jumps: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next = kept.end();
        if next >= end {
            return kept;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition}: reading {}..{end} took over a minute",
            kept.start
        );
        let r = c.fetch_at(topic, partition, next);
        if r.code() == ErrorCode::OffsetOutOfRange {
            let body = OutOfRangeBody::decode(&r.body).unwrap_or_else(|| {
                panic!("{topic}/{partition}@{next}: OffsetOutOfRange without its trailer")
            });
            assert!(
                body.start_offset > next,
                "{topic}/{partition}: a fetch at {next} inside {}..{end} was refused, but the \
                 log start it names, {}, is not above it",
                kept.start,
                body.start_offset
            );
            kept.start = body.start_offset;
            kept.records.clear();
            kept.batch_bytes = 0;
            kept.jumps += 1;
            continue;
        }
        let r = r.ok();
        let f = FetchResponse::decode(&r.body).expect("decode fetch response");
        assert!(
            f.start_offset <= next,
            "{topic}/{partition}: a fetch at {next} succeeded but reports log start {}",
            f.start_offset
        );
        let mut progressed = false;
        for b in split_batches(f.batches) {
            hutong::wire::batch::check_stored_batch(b)
                .expect("a fetched batch passes its checksums");
            let mut recs = records(b).peekable();
            let Some(base) = recs.peek().map(|r| r.offset) else {
                continue;
            };
            if base >= next && base < end {
                kept.batch_bytes += b.len() as u64;
            }
            for rec in recs {
                if rec.offset < next || rec.offset >= end {
                    continue;
                }
                assert_eq!(
                    rec.offset,
                    kept.end(),
                    "{topic}/{partition}: offsets from the log start run without a gap"
                );
                kept.records.push(Fetched {
                    offset: rec.offset,
                    key: rec.key.to_vec(),
                    value: rec.value.to_vec(),
                });
                progressed = true;
            }
        }
        assert!(
            progressed,
            "{topic}/{partition}: a fetch at {next}, below the end {end}, returned nothing"
        );
    }
}

/// `len` bytes (at least [`payload`]'s) for message `seq` of stream
/// `stream`: the readable prefix names the message, the rest depends on
/// `seq`, so a record read back can be checked byte for byte.
pub fn filler(stream: &str, seq: u64, len: usize) -> Vec<u8> {
    let mut v = payload(stream, seq);
    let mut x = seq.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// Asserts that a fetch at `offset` is answered `OffsetOutOfRange` with a
/// trailer naming the log start `start` and the end `end`.
pub fn assert_out_of_range(
    c: &mut RawConn,
    topic: &str,
    partition: u32,
    offset: u64,
    start: u64,
    end: u64,
) {
    let r = c.fetch_at(topic, partition, offset);
    r.expect_error(ErrorCode::OffsetOutOfRange);
    let body = OutOfRangeBody::decode(&r.body).unwrap_or_else(|| {
        panic!(
            "{topic}/{partition}: OffsetOutOfRange for a fetch at {offset} has no \
             `u64 start_offset | u64 end_offset` trailer: body {:?}",
            r.body
        )
    });
    assert_eq!(
        (body.start_offset, body.end_offset),
        (start, end),
        "{topic}/{partition}: the OffsetOutOfRange trailer of a fetch at {offset} names the \
         log start and the end (message {:?})",
        body.message
    );
}
