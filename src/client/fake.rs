//! A scripted fake broker for the client's unit tests: it accepts one
//! connection on 127.0.0.1:0 and runs a test's script against it, speaking
//! the real framing through the wire codecs. Every read has a timeout, so a
//! broken test fails instead of hanging.

use crate::wire::api::{ApiVersions, ErrorBody, HandshakeResponse, PROTOCOL_VERSION};
use crate::wire::frame::{
    check_frame, RequestHeader, ResponseHeader, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN,
};
use crate::wire::{ApiKey, ErrorCode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

/// The maximum frame size the fake announces.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// The server name the fake announces.
pub const SERVER: &str = "fake-broker";
/// The longest a fake waits for a request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running fake broker.
pub struct FakeBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl FakeBroker {
    /// Waits for the script to end, failing the test if it panicked.
    pub fn join(self) {
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Starts a fake that answers the handshake, then runs `script`.
pub fn spawn(script: impl FnOnce(FakeConn) + Send + 'static) -> FakeBroker {
    spawn_raw(|mut c| {
        let req = c.read_request().expect("a handshake");
        assert_eq!(req.header.api_key, ApiKey::Handshake.as_u16());
        c.answer_handshake(&req, PROTOCOL_VERSION);
        script(c);
    })
}

/// Starts a fake that runs `script` from the first byte.
pub fn spawn_raw(script: impl FnOnce(FakeConn) + Send + 'static) -> FakeBroker {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        script(FakeConn {
            stream,
            buf: Vec::new(),
        });
    });
    FakeBroker { addr, thread }
}

/// Starts a fake that accepts `connections` connections one after the
/// other (each within the read timeout), answers each handshake and runs
/// `script(index, conn)` on it, index counting from 0. Then it stops
/// listening, so later connections are refused.
pub fn spawn_seq(
    connections: usize,
    mut script: impl FnMut(usize, FakeConn) + Send + 'static,
) -> FakeBroker {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let thread = std::thread::spawn(move || {
        for index in 0..connections {
            let mut c = accept_within(&listener, READ_TIMEOUT)
                .unwrap_or_else(|| panic!("connection {index} never came"));
            let req = c.read_request().expect("a handshake");
            assert_eq!(req.header.api_key, ApiKey::Handshake.as_u16());
            c.answer_handshake(&req, PROTOCOL_VERSION);
            script(index, c);
        }
    });
    FakeBroker { addr, thread }
}

/// Accepts one connection on a non-blocking listener, waiting at most
/// `wait`.
fn accept_within(listener: &TcpListener, wait: Duration) -> Option<FakeConn> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                stream
                    .set_read_timeout(Some(READ_TIMEOUT))
                    .expect("timeout");
                return Some(FakeConn {
                    stream,
                    buf: Vec::new(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// One request as the fake read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its header.
    pub header: RequestHeader,
    /// Its body.
    pub body: Vec<u8>,
}

/// What [`FakeConn::next_within`] found.
#[derive(Debug)]
pub enum Next {
    /// A whole request.
    Request(Request),
    /// Nothing within the wait.
    Quiet,
    /// The client closed the connection (or it failed).
    Closed,
}

/// The fake's side of the connection.
pub struct FakeConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl FakeConn {
    /// Reads the next request; `None` when the client closed the connection
    /// or sent nothing within the read timeout.
    pub fn read_request(&mut self) -> Option<Request> {
        loop {
            if let Some(total) = check_frame(&self.buf, REQUEST_HEADER_LEN, 1 << 30).unwrap() {
                let frame: Vec<u8> = self.buf.drain(..total).collect();
                return Some(Request {
                    header: RequestHeader::parse(&frame),
                    body: frame[REQUEST_HEADER_LEN..].to_vec(),
                });
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next request if one arrives within `wait`: [`Next::Quiet`] when
    /// none does, [`Next::Closed`] when the client closed the connection.
    pub fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = std::time::Instant::now() + wait;
        let next = loop {
            if let Some(total) = check_frame(&self.buf, REQUEST_HEADER_LEN, 1 << 30).unwrap() {
                let frame: Vec<u8> = self.buf.drain(..total).collect();
                break Next::Request(Request {
                    header: RequestHeader::parse(&frame),
                    body: frame[REQUEST_HEADER_LEN..].to_vec(),
                });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Next::Quiet;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => break Next::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Next::Quiet
                }
                Err(_) => break Next::Closed,
            }
        };
        self.stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        next
    }

    /// Answers every Ping until the client closes the connection or `wait`
    /// passes, leaving every other request unanswered; true when the
    /// client closed it.
    pub fn answer_only_pings(&mut self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            match self.next_within(Duration::from_millis(10)) {
                Next::Request(r) if r.header.api_key == ApiKey::Ping.as_u16() => {
                    self.reply(&r, 0, &[]);
                }
                Next::Request(_) | Next::Quiet => {}
                Next::Closed => return true,
            }
        }
        false
    }

    /// True when request bytes are buffered or arrive within `wait`.
    pub fn request_arrives_within(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let arrived = matches!(self.stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
        self.stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        arrived
    }

    /// Answers `req` with `error_code` and `body`.
    pub fn reply(&mut self, req: &Request, error_code: u16, body: &[u8]) {
        self.reply_raw(
            req.header.correlation_id,
            req.header.api_key,
            error_code,
            body,
        );
    }

    /// Answers `req` with an error.
    pub fn reply_error(&mut self, req: &Request, code: ErrorCode, message: &str) {
        let mut body = Vec::new();
        ErrorBody { message }.encode(&mut body);
        self.reply(req, code.as_u16(), &body);
    }

    /// Writes a response frame with any header fields.
    pub fn reply_raw(&mut self, correlation_id: u32, api_key: u16, error_code: u16, body: &[u8]) {
        let header = ResponseHeader {
            correlation_id,
            api_key,
            error_code,
        };
        let mut frame = Vec::with_capacity(RESPONSE_HEADER_LEN + body.len());
        frame.extend_from_slice(&header.to_bytes(body.len()));
        frame.extend_from_slice(body);
        self.write_raw(&frame);
    }

    /// Writes raw bytes (for framing errors). A client that already left is
    /// not the fake's problem.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Answers a handshake, announcing `version` and no API versions (a
    /// client then sends every API at its first version only).
    pub fn answer_handshake(&mut self, req: &Request, version: u16) {
        self.answer_handshake_with(req, version, Vec::new());
    }

    /// Answers a handshake, announcing `version` and the API versions
    /// `apis`.
    pub fn answer_handshake_with(&mut self, req: &Request, version: u16, apis: Vec<ApiVersions>) {
        let mut body = Vec::new();
        HandshakeResponse {
            version,
            frame_bytes_max: MAX_FRAME_BYTES as u32,
            server: SERVER.into(),
            apis,
        }
        .encode(&mut body);
        self.reply(req, 0, &body);
    }
}
