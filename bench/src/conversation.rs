//! The `hutong` scenario: the two-neighbours conversation of DESIGN.md §9,
//! over one loopback TCP connection and no broker.
//!
//! Zhang asks "吃了没，您呐？" N times and Li answers each with "刚吃。"; Li
//! says "您这，嘛去？" and "有空家里坐坐啊。" N times each and Zhang answers
//! them with "嗨！吃饱了溜溜弯儿。" and "回头去给老太太请安！". Every
//! utterance is one frame: `u32 length | u32 serial | UTF-8 text` (the
//! length counts the bytes after itself, as in the broker's protocol). An
//! answer carries the serial of the line it answers, and a line's serial is
//! its meeting's number, so each reader checks every frame: the right text,
//! in order, nothing missing.
//!
//! Each neighbour has a reader thread and a writer thread on its end of the
//! socket, so both directions flow at once (full duplex). The reader parses
//! whatever one `read` brought, checks it, encodes the answers into a local
//! buffer and hands that buffer to its writer in one step; the writer sends
//! the pending answers and then its own next lines, up to a large chunk, in
//! one `write`. Nothing is allocated per utterance: frames are encoded into
//! buffers that are reused, and buffers are swapped, not copied, between
//! the reader and the writer when the writer has taken the previous one.

use crate::report::Report;
use crate::ui::Ui;
use anyhow::{anyhow, bail, Context, Result};
use hutong::wire::codec::{le_u32, Put};
use hutong::wire::frame::{check_frame, LENGTH_PREFIX_LEN};
use serde_json::{json, Map};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Zhang's question.
pub const ZHANG_ASKS: &str = "吃了没，您呐？";
/// Li's answer to it.
pub const LI_ANSWERS: &str = "刚吃。";
/// Li's first line.
pub const LI_ASKS_WHERE: &str = "您这，嘛去？";
/// Li's second line.
pub const LI_INVITES: &str = "有空家里坐坐啊。";
/// Zhang's answer to Li's first line.
pub const ZHANG_STROLLS: &str = "嗨！吃饱了溜溜弯儿。";
/// Zhang's answer to Li's second line; a meeting ends when Li hears it.
pub const ZHANG_PROMISES: &str = "回头去给老太太请安！";

/// Meetings when `--meetings` is not given.
pub const MEETINGS_DEFAULT: u32 = 100_000;
/// A writer sends once this many bytes are buffered (or it has no more).
const WRITE_CHUNK_BYTES: usize = 256 * 1024;
/// A reader's buffer; one `read` takes at most this much.
const READ_BUFFER_BYTES: usize = 1024 * 1024;
/// Bytes of the serial number after the length prefix.
const SERIAL_LEN: usize = 4;
/// Smallest and largest frame a reader accepts (prefix included).
const FRAME_BYTES_MIN: usize = LENGTH_PREFIX_LEN + SERIAL_LEN;
const FRAME_BYTES_MAX: usize = 1024;
/// A side that waits longer than this for its neighbour gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

const _: () = assert!(READ_BUFFER_BYTES >= 2 * FRAME_BYTES_MAX);

/// Options of `hutong`.
#[derive(Debug, Clone, clap::Args)]
pub struct HutongArgs {
    /// Meetings to hold.
    #[arg(long, default_value_t = MEETINGS_DEFAULT)]
    pub meetings: u32,
}

/// One utterance: the frame of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utterance<'a> {
    /// The meeting it belongs to.
    pub serial: u32,
    /// What is said.
    pub text: &'a [u8],
}

impl<'a> Utterance<'a> {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32((SERIAL_LEN + self.text.len()) as u32);
        out.put_u32(self.serial);
        out.extend_from_slice(self.text);
    }

    /// Reads the frame at the start of `buf`: the utterance and its size,
    /// or `None` when it is not all there yet.
    ///
    /// # Errors
    /// When the length prefix is out of bounds (framing is lost).
    pub fn decode(buf: &'a [u8]) -> Result<Option<(Utterance<'a>, usize)>> {
        match check_frame(buf, FRAME_BYTES_MIN, FRAME_BYTES_MAX) {
            Ok(Some(total)) => Ok(Some((
                Utterance {
                    serial: le_u32(buf, LENGTH_PREFIX_LEN),
                    text: &buf[FRAME_BYTES_MIN..total],
                },
                total,
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(anyhow!("bad frame: {e:?}")),
        }
    }
}

/// What one neighbour says of his own accord, hears, and answers.
struct Role {
    name: &'static str,
    /// Lines said once per meeting, unprompted.
    own: &'static [&'static str],
    /// Lines heard: (line, answer or None). Each is heard once per meeting.
    hears: &'static [(&'static str, Option<&'static str>)],
}

const ZHANG: Role = Role {
    name: "Zhang",
    own: &[ZHANG_ASKS],
    hears: &[
        (LI_ANSWERS, None),
        (LI_ASKS_WHERE, Some(ZHANG_STROLLS)),
        (LI_INVITES, Some(ZHANG_PROMISES)),
    ],
};

const LI: Role = Role {
    name: "Li",
    own: &[LI_ASKS_WHERE, LI_INVITES],
    hears: &[
        (ZHANG_ASKS, Some(LI_ANSWERS)),
        (ZHANG_STROLLS, None),
        (ZHANG_PROMISES, None),
    ],
};

/// Answers a reader has encoded for its writer.
struct Mailbox {
    answers: Vec<u8>,
    /// The reader has heard everything: no more answers will come.
    done: bool,
    /// The writer sleeps on the condvar for answers.
    writer_waits: bool,
    /// The other thread failed; stop.
    failed: bool,
}

struct Side {
    mailbox: Mutex<Mailbox>,
    cond: Condvar,
}

fn lock(m: &Mutex<Mailbox>) -> std::sync::MutexGuard<'_, Mailbox> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Side {
    fn new() -> Side {
        Side {
            mailbox: Mutex::new(Mailbox {
                answers: Vec::with_capacity(WRITE_CHUNK_BYTES),
                done: false,
                writer_waits: false,
                failed: false,
            }),
            cond: Condvar::new(),
        }
    }

    fn fail(&self) {
        lock(&self.mailbox).failed = true;
        self.cond.notify_all();
    }
}

/// The writer: pending answers first, then own lines, one chunk per write.
fn speak(role: &Role, meetings: u32, mut stream: &TcpStream, side: &Side) -> Result<u64> {
    let mut out: Vec<u8> = Vec::with_capacity(2 * WRITE_CHUNK_BYTES);
    let mut next = 0u32;
    let mut written = 0u64;
    loop {
        out.clear();
        {
            let mut m = lock(&side.mailbox);
            loop {
                if m.failed {
                    bail!("{}'s reader failed", role.name);
                }
                if !m.answers.is_empty() || next < meetings {
                    break;
                }
                if m.done {
                    return Ok(written);
                }
                m.writer_waits = true;
                let (g, timeout) = side
                    .cond
                    .wait_timeout(m, STALL_TIMEOUT)
                    .unwrap_or_else(|p| p.into_inner());
                m = g;
                m.writer_waits = false;
                if timeout.timed_out() {
                    bail!(
                        "{} heard nothing to answer for {STALL_TIMEOUT:?}",
                        role.name
                    );
                }
            }
            // Take the answers by swapping buffers: the reader gets our
            // empty one back, with its capacity.
            std::mem::swap(&mut m.answers, &mut out);
        }
        while next < meetings && out.len() < WRITE_CHUNK_BYTES {
            for line in role.own {
                Utterance {
                    serial: next,
                    text: line.as_bytes(),
                }
                .encode(&mut out);
            }
            next += 1;
        }
        stream
            .write_all(&out)
            .with_context(|| format!("{} cannot speak", role.name))?;
        written += out.len() as u64;
    }
}

/// The reader: checks every frame heard and encodes the answers.
fn listen(
    role: &Role,
    meetings: u32,
    mut stream: &TcpStream,
    side: &Side,
) -> Result<(u64, Instant)> {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    // Next expected serial of each line heard.
    let mut expect = [0u32; 3];
    debug_assert!(role.hears.len() == expect.len());
    let heard_all = |expect: &[u32; 3]| expect.iter().all(|&e| e == meetings);
    let mut answers: Vec<u8> = Vec::with_capacity(WRITE_CHUNK_BYTES);
    let mut read_bytes = 0u64;
    while !heard_all(&expect) {
        if start == end {
            start = 0;
            end = 0;
        } else if buf.len() - end < FRAME_BYTES_MAX {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = stream
            .read(&mut buf[end..])
            .with_context(|| format!("{} cannot hear", role.name))?;
        if n == 0 {
            bail!(
                "{} heard the connection close after {:?} of {meetings} of each line",
                role.name,
                expect
            );
        }
        end += n;
        read_bytes += n as u64;
        while let Some((u, size)) = Utterance::decode(&buf[start..end])? {
            let Some(k) = role
                .hears
                .iter()
                .position(|(line, _)| line.as_bytes() == u.text)
            else {
                bail!(
                    "{} heard something unexpected: {:?}",
                    role.name,
                    String::from_utf8_lossy(u.text)
                );
            };
            if u.serial != expect[k] {
                bail!(
                    "{} heard {:?} of meeting {} where meeting {} was due",
                    role.name,
                    role.hears[k].0,
                    u.serial,
                    expect[k]
                );
            }
            expect[k] += 1;
            if let Some(answer) = role.hears[k].1 {
                Utterance {
                    serial: u.serial,
                    text: answer.as_bytes(),
                }
                .encode(&mut answers);
            }
            start += size;
        }
        let done = heard_all(&expect);
        if !answers.is_empty() || done {
            let mut m = lock(&side.mailbox);
            if m.answers.is_empty() {
                std::mem::swap(&mut m.answers, &mut answers);
            } else {
                m.answers.extend_from_slice(&answers);
                answers.clear();
            }
            m.done = done;
            if m.writer_waits {
                side.cond.notify_one();
            }
        }
    }
    if start != end {
        bail!(
            "{} heard {} bytes after the last meeting",
            role.name,
            end - start
        );
    }
    Ok((read_bytes, Instant::now()))
}

/// One neighbour: a writer and a reader thread on `stream`. Returns the
/// bytes it read and when it had heard everything.
fn neighbour(
    role: &'static Role,
    meetings: u32,
    stream: TcpStream,
    barrier: &Barrier,
) -> Result<(u64, Instant)> {
    let side = Side::new();
    let result = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            barrier.wait();
            let r = speak(role, meetings, &stream, &side);
            if r.is_err() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            r
        });
        barrier.wait();
        let heard = listen(role, meetings, &stream, &side);
        if heard.is_err() {
            side.fail();
            let _ = stream.shutdown(Shutdown::Both);
        } else {
            // The reader heard everything, so the writer owes no more
            // answers; mark it done even if the last read held none.
            lock(&side.mailbox).done = true;
            side.cond.notify_all();
        }
        let written = writer
            .join()
            .map_err(|_| anyhow!("{}'s writer panicked", role.name))?;
        written?;
        heard
    });
    result
}

/// Runs `hutong`.
///
/// # Errors
/// When the loopback connection cannot be made, or a neighbour hears
/// something wrong or too little.
pub fn run(args: &HutongArgs, _ui: &Ui) -> Result<Report> {
    let meetings = args.meetings;
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let zhang = TcpStream::connect(addr).context("Zhang cannot connect")?;
    let (li, _) = listener.accept().context("Li cannot accept")?;
    for s in [&zhang, &li] {
        s.set_nodelay(true)?;
    }
    // Both neighbours' four threads start talking together. The clock
    // starts before the barrier opens: read after it, on a busy machine
    // it could come after the neighbours had already finished.
    let barrier = Barrier::new(5);
    let (z, l, start) = std::thread::scope(|s| {
        let z = s.spawn(|| neighbour(&ZHANG, meetings, zhang, &barrier));
        let l = s.spawn(|| neighbour(&LI, meetings, li, &barrier));
        let start = Instant::now();
        barrier.wait();
        (z.join(), l.join(), start)
    });
    let (z_read, z_end) = z.map_err(|_| anyhow!("Zhang panicked"))??;
    let (l_read, l_end) = l.map_err(|_| anyhow!("Li panicked"))??;
    let elapsed = z_end.max(l_end).saturating_duration_since(start);

    let mut params = Map::new();
    params.insert("meetings".into(), json!(meetings));
    let title =
        format!("hutong, {meetings} meetings of two neighbours over one loopback connection");
    let mut report = Report::new("hutong", title, params);
    report.expected = Some(u64::from(meetings));
    report.messages = u64::from(meetings);
    report.payload_bytes = z_read + l_read;
    report.elapsed = elapsed;
    report.latency_of = "meeting (not measured)";
    report.kafka_line = false;
    let meetings_per_s = crate::report::per_s(f64::from(meetings), elapsed);
    report.headline = Some(format!(
        "hutong: {meetings} meetings ({} utterances) in {:.2} ms, {meetings_per_s:.0} meetings/s",
        6 * u64::from(meetings),
        elapsed.as_secs_f64() * 1e3
    ));
    report
        .extra
        .push(("utterances", json!(6 * u64::from(meetings))));
    report
        .extra
        .push(("elapsed_ms", json!(elapsed.as_secs_f64() * 1e3)));
    report.extra.push(("meetings_per_s", json!(meetings_per_s)));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_utterance_round_trips_and_waits_for_its_last_byte() {
        let mut out = Vec::new();
        Utterance {
            serial: 7,
            text: ZHANG_ASKS.as_bytes(),
        }
        .encode(&mut out);
        assert_eq!(out.len(), 8 + ZHANG_ASKS.len());
        for cut in 0..out.len() {
            assert!(Utterance::decode(&out[..cut]).unwrap().is_none());
        }
        let (u, size) = Utterance::decode(&out).unwrap().unwrap();
        assert_eq!(size, out.len());
        assert_eq!(u.serial, 7);
        assert_eq!(u.text, ZHANG_ASKS.as_bytes());
    }

    #[test]
    fn a_frame_too_short_for_its_serial_loses_framing() {
        assert!(Utterance::decode(&3u32.to_le_bytes()).is_err());
    }

    #[test]
    fn a_small_conversation_checks_out() {
        let report = run(&HutongArgs { meetings: 1000 }, &Ui::hidden()).unwrap();
        assert_eq!(report.messages, 1000);
        assert!(report.is_clean());
        // Every frame of both directions was read.
        let per_meeting: usize = [
            ZHANG_ASKS,
            LI_ANSWERS,
            LI_ASKS_WHERE,
            LI_INVITES,
            ZHANG_STROLLS,
            ZHANG_PROMISES,
        ]
        .iter()
        .map(|l| 8 + l.len())
        .sum();
        assert_eq!(report.payload_bytes, 1000 * per_meeting as u64);
    }
}
