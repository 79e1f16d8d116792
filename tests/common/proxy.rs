//! An in-process TCP proxy for fault tests: it forwards every connection
//! it accepts to one target, and can cut every connection (both ways) and
//! refuse new ones until it is healed, or stall: keep every connection
//! open (and accept new ones) but move no byte either way, as a network
//! that silently drops packets does, until it is resumed.
//!
//! A cluster test puts one proxy on each directed replication link, so
//! cutting the proxies into and out of a node isolates it from its peers
//! while clients still reach it directly.
//!
//! Threads are bounded: one accept thread, and two pump threads per live
//! connection, with at most [`CONNECTIONS_MAX`] live connections (further
//! ones are closed at once). Every blocking call carries a short timeout so
//! that each thread notices a cut or the proxy's drop within
//! [`POLL_INTERVAL`]; dropping the proxy joins them all.

use super::lock;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Live connections a proxy forwards at once; more are closed on accept.
pub const CONNECTIONS_MAX: usize = 64;
/// How often a blocked proxy thread looks at its stop flags.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long the proxy tries to reach its target for a new connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes a pump moves per read.
const CHUNK_BYTES: usize = 64 * 1024;

/// One forwarded connection: the client side, the target side and a flag
/// that stops both pumps.
struct Link {
    client: TcpStream,
    target: TcpStream,
    closed: Arc<AtomicBool>,
}

impl Link {
    /// Stops the pumps and closes both sockets both ways, so each peer sees
    /// the connection end.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

/// State shared by the proxy handle, its accept thread and its pumps.
struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    stalled: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    links: Mutex<Vec<(u64, Link)>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    /// Connections accepted and forwarded so far (for tests of the proxy).
    forwarded: AtomicU64,
    /// Connections closed at once because the proxy was cut or full.
    refused: AtomicU64,
}

impl Shared {
    fn close_all(&self) {
        for (_, link) in lock(&self.links).drain(..) {
            link.close();
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.links).retain(|(i, _)| *i != id);
    }
}

/// A running TCP proxy to one target address. Dropping it closes every
/// connection and joins its threads.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each accepted connection to
    /// `target` (which need not be up yet: a connection the target refuses
    /// is closed).
    ///
    /// # Panics
    /// When it cannot bind or spawn its thread.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy binds 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            links: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{addr}-accept"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&listener, &shared)
            })
            .expect("spawn proxy accept thread");
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes every current connection both ways; until [`Proxy::heal`],
    /// new connections are accepted and closed at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Stops moving bytes on every connection, current and new, without
    /// closing any: peers see silence, not an error. New connections are
    /// still accepted (the kernel completes the TCP handshake).
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Moves bytes again after [`Proxy::stall`]; what was held back flows.
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }

    /// True between [`Proxy::cut`] and [`Proxy::heal`].
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Connections closed on accept (cut, or [`CONNECTIONS_MAX`] reached).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections being forwarded now.
    pub fn live(&self) -> usize {
        lock(&self.shared.links).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // The acceptor is gone, so no pump is added any more; each pump
        // ends within a poll interval of the stop flag.
        let pumps = std::mem::take(&mut *lock(&self.shared.pumps));
        for t in pumps {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors or similar: back off and keep serving.
                eprintln!("proxy to {}: accept failed: {e}", shared.target);
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        // Reap finished pumps so the handle list stays bounded.
        lock(&shared.pumps).retain(|t| !t.is_finished());
        if shared.cut.load(Ordering::SeqCst) || lock(&shared.links).len() >= CONNECTIONS_MAX {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(target) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        if let Err(e) = forward(client, target, shared) {
            eprintln!(
                "proxy to {}: cannot forward a connection: {e}",
                shared.target
            );
        }
    }
}

/// Registers a link and starts its two pumps.
fn forward(client: TcpStream, target: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    for s in [&client, &target] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL_INTERVAL))?;
        s.set_write_timeout(Some(POLL_INTERVAL))?;
    }
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let closed = Arc::new(AtomicBool::new(false));
    let link = Link {
        client: client.try_clone()?,
        target: target.try_clone()?,
        closed: Arc::clone(&closed),
    };
    {
        // Registered under the lock that `cut` takes, so a cut that races
        // with this accept either sees the link or is seen here.
        let mut links = lock(&shared.links);
        if shared.cut.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            link.close();
            return Ok(());
        }
        links.push((id, link));
    }
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    let directions = [
        (client.try_clone()?, target.try_clone()?, "up"),
        (target, client, "down"),
    ];
    for (from, to, dir) in directions {
        let shared_pump = Arc::clone(shared);
        let closed_pump = Arc::clone(&closed);
        let pump = std::thread::Builder::new()
            .name(format!("proxy-{}-{id}-{dir}", shared.target))
            .spawn(move || {
                let closed = closed_pump;
                pump(from, to, &closed, &shared_pump);
                // Either direction ending ends the whole connection.
                closed.store(true, Ordering::SeqCst);
                if let Some((_, link)) = lock(&shared_pump.links).iter().find(|(i, _)| *i == id) {
                    link.close();
                }
                shared_pump.forget(id);
            });
        match pump {
            Ok(t) => lock(&shared.pumps).push(t),
            Err(e) => {
                closed.store(true, Ordering::SeqCst);
                shared.forget(id);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Copies bytes from `from` to `to` until either side ends, the link is
/// closed or the proxy stops. A slow reader (for example a stopped process)
/// only delays the copy: a write that times out is retried.
fn pump(mut from: TcpStream, mut to: TcpStream, closed: &AtomicBool, shared: &Shared) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let done = || closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst);
    while !done() {
        if shared.stalled.load(Ordering::SeqCst) {
            // Bytes wait in the kernel's buffers, as on a silent network.
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => return,
        };
        let mut at = 0;
        while at < n {
            if done() {
                return;
            }
            if shared.stalled.load(Ordering::SeqCst) {
                // Read just before the stall: held back like the rest.
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            match to.write(&buf[at..n]) {
                Ok(0) => return,
                Ok(k) => at += k,
                Err(e) if is_timeout(&e) => {}
                Err(_) => return,
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
