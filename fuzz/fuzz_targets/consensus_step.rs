//! Steps arbitrary inputs into one consensus `Node` set up in any role, and
//! checks after every input that it did not panic and that the invariants
//! of docs/consensus.md hold (`hutong::consensus::check`); see
//! docs/fuzzing.md. The harness lives here, not in the library: it uses
//! only the node's public API.
//!
//! The input is a set-up byte, then operations, each an opcode byte and its
//! operands (missing bytes read as 0):
//!
//! | opcode % 10 | operation | operands |
//! |---:|---|---|
//! | 0 | a Replicate body, decoded by `wire::replicate::decode_message` | u16 length, body; a flags byte may make `from` a member, `to` this node and the term near the node's |
//! | 1 | a message built against the node's log | kind, sender, term and positions (see `message`) |
//! | 2 | ticks | count (mod 32) |
//! | 3, 4 | `report_written`, `report_flushed` | position, term |
//! | 5 | `report_unreachable` | peer |
//! | 6 | `propose` | u16 bytes |
//! | 7 | `transfer_leader` | peer |
//! | 8 | `compact` | position |
//! | 9 | `set_cluster_id` | id (mod 3) |
//!
//! Positions are chosen against the node's log at the time (a boundary,
//! inside an entry, just beyond the end, or raw 64 bits), terms near the
//! node's term or raw, so that most inputs reach the checks that need the
//! node's state.
#![no_main]

use hutong::consensus::check::{check_node, History};
use hutong::consensus::{Config, Entry, HardState, Message, MessageKind, Node, Role};
use hutong::wire::replicate::decode_message;

/// Operations per input at most (each may tick up to 31 times).
const OPS_MAX: usize = 256;

/// Reads the input front to back; past the end every read is 0.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One node under test, with the history of its outputs.
struct Run {
    node: Node,
    history: History,
    voters: u64,
}

impl Run {
    /// Node 1 of a group of 3 or 5 with a short log in term 2, brought
    /// into the role `setup` names by answers its peers could give.
    fn new(setup: u8) -> Run {
        let voters = if setup & 0x10 == 0 { 3 } else { 5 };
        let cfg = Config::new(1, (1..=voters).collect());
        let log = vec![entry(0, 10, 1), entry(10, 30, 2), entry(30, 31, 2)];
        let hard = HardState {
            term: 2,
            voted_for: None,
            caught_up: setup & 0x20 != 0,
            incarnation: 1,
            ..HardState::default()
        };
        let node = Node::new(cfg, hard, log).expect("a valid start");
        let mut run = Run {
            history: History::new(node.last_pos()),
            node,
            voters,
        };
        match setup % 5 {
            0 => {}
            1 => run.step(message(2, 2, MessageKind::Heartbeat { commit: 10 })),
            role => {
                // Pre-candidate, candidate or leader.
                while run.node.role() == Role::Follower {
                    run.node.tick();
                    run.drain();
                }
                if role >= 3 {
                    for p in 2..=voters {
                        let granted = MessageKind::PreVoteResp {
                            granted: true,
                            caught_up: true,
                        };
                        run.step(message(p, 3, granted));
                    }
                }
                if role == 4 {
                    for p in 2..=voters {
                        let granted = MessageKind::VoteResp {
                            granted: true,
                            caught_up: true,
                        };
                        run.step(message(p, 3, granted));
                    }
                    let end = run.node.last_pos();
                    let ack = MessageKind::AppendAck {
                        matched: end,
                        written: end,
                        flushed: end,
                        caught_up: true,
                    };
                    run.step(message(2, 3, ack));
                }
            }
        }
        run
    }

    /// Applies every `Ready`, checking it, then checks the node.
    fn drain(&mut self) {
        while self.node.has_ready() {
            let rd = self.node.ready();
            if let Err(why) = self.history.observe(&self.node, &rd) {
                panic!("{why}");
            }
            self.node.advance(rd);
        }
        if let Err(why) = check_node(&self.node) {
            panic!("{why}");
        }
    }

    fn step(&mut self, m: Message) {
        // A refusal is an answer too; only panics and broken invariants fail.
        let _ = self.node.step(m);
        self.drain();
    }

    /// A position chosen against the log: `tag % 4` picks a boundary, a
    /// position inside an entry, one beyond the end, or raw bits.
    fn pos(&self, b: &mut Bytes) -> u64 {
        let (tag, k) = (b.u8(), u64::from(b.u16()));
        let log = self.node.log();
        let last = self.node.last_pos();
        match tag % 4 {
            0 => {
                let k = (k % (log.len() as u64 + 1)) as usize;
                if k == 0 {
                    self.node.snapshot().0
                } else {
                    log[k - 1].end
                }
            }
            1 => log
                .iter()
                .filter(|e| e.end - e.start >= 2)
                .nth(k as usize % log.len().max(1))
                .map_or(last + 1, |e| e.start + 1),
            2 => last + 1 + k,
            _ => b.u64(),
        }
    }

    /// A term near the node's (`-2..=+2`) or raw bits.
    fn term(&self, b: &mut Bytes) -> u64 {
        let tag = b.u8();
        if tag < 0xF0 {
            let delta = i64::from(tag % 5) - 2;
            self.node.term().saturating_add_signed(delta)
        } else {
            b.u64()
        }
    }

    fn peer(&self, b: &mut Bytes) -> u64 {
        u64::from(b.u8()) % (self.voters + 2)
    }

    /// A message of any kind from a member (or not), with positions and
    /// terms chosen against the node's state.
    fn message(&self, b: &mut Bytes) -> Message {
        let kind = match b.u8() % 12 {
            0 => MessageKind::PreVote {
                last_pos: self.pos(b),
                last_term: self.term(b),
            },
            1 => MessageKind::PreVoteResp {
                granted: b.u8() & 1 == 1,
                caught_up: b.u8() & 1 == 1,
            },
            2 => MessageKind::Vote {
                last_pos: self.pos(b),
                last_term: self.term(b),
                transfer: b.u8() & 1 == 1,
            },
            3 => MessageKind::VoteResp {
                granted: b.u8() & 1 == 1,
                caught_up: b.u8() & 1 == 1,
            },
            4 => {
                let prev_pos = self.pos(b);
                let prev_term = self.term(b);
                let mut start = prev_pos;
                let entries = (0..b.u8() % 4)
                    .map(|_| {
                        let len = u64::from(b.u8()) + 1;
                        let e = entry(start, start.saturating_add(len), self.term(b));
                        start = e.end;
                        e
                    })
                    .collect();
                MessageKind::Append {
                    prev_pos,
                    prev_term,
                    entries,
                    commit: self.pos(b),
                }
            }
            5 => MessageKind::AppendAck {
                matched: self.pos(b),
                written: self.pos(b),
                flushed: self.pos(b),
                caught_up: b.u8() & 1 == 1,
            },
            6 => MessageKind::AppendReject {
                rejected: self.pos(b),
                hint_pos: self.pos(b),
                hint_term: self.term(b),
            },
            7 => MessageKind::Heartbeat {
                commit: self.pos(b),
            },
            8 => MessageKind::Probe,
            9 => MessageKind::ProbeResp,
            10 => MessageKind::InstallSnapshot {
                pos: self.pos(b),
                snapshot_term: self.term(b),
                commit: self.pos(b),
            },
            _ => MessageKind::TimeoutNow,
        };
        let from = self.peer(b);
        let to = if b.u8() < 0xF0 { 1 } else { self.peer(b) };
        let term = self.term(b);
        let ids = b.u8();
        Message {
            from,
            to,
            term,
            from_incarnation: u64::from(ids & 3),
            to_incarnation: u64::from((ids >> 2) & 3),
            cluster_id: u64::from((ids >> 4) & 3),
            kind,
        }
    }

    fn op(&mut self, b: &mut Bytes) {
        match b.u8() % 10 {
            0 => {
                let len = usize::from(b.u16());
                let flags = b.u8();
                let Ok((mut m, _payload)) = decode_message(b.take(len)) else {
                    return;
                };
                if flags & 1 != 0 {
                    m.from = 2 + u64::from(flags >> 4) % (self.voters - 1);
                }
                if flags & 2 != 0 {
                    m.to = 1;
                }
                if flags & 4 != 0 {
                    m.term = self.node.term().saturating_add(u64::from(flags >> 6));
                }
                self.step(m);
            }
            1 => {
                let m = self.message(b);
                self.step(m);
            }
            2 => {
                for _ in 0..b.u8() % 32 {
                    self.node.tick();
                    self.drain();
                }
            }
            3 => {
                let (p, t) = (self.pos(b), self.term(b));
                self.node.report_written(p, t);
                self.drain();
            }
            4 => {
                let (p, t) = (self.pos(b), self.term(b));
                self.node.report_flushed(p, t);
                self.drain();
            }
            5 => {
                let p = self.peer(b);
                self.node.report_unreachable(p);
                self.drain();
            }
            6 => {
                let _ = self.node.propose(u64::from(b.u16()));
                self.drain();
            }
            7 => {
                let p = self.peer(b);
                let _ = self.node.transfer_leader(p);
                self.drain();
            }
            8 => {
                // Refused unless at a committed, flushed boundary.
                let p = self.pos(b);
                let _ = self.node.compact(p);
                self.drain();
            }
            _ => {
                self.node.set_cluster_id(u64::from(b.u8() % 3));
                self.drain();
            }
        }
    }
}

fn entry(start: u64, end: u64, term: u64) -> Entry {
    Entry { start, end, term }
}

fn message(from: u64, term: u64, kind: MessageKind) -> Message {
    Message::new(from, 1, term, kind)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut run = Run::new(b.u8());
    for _ in 0..OPS_MAX {
        if b.is_empty() {
            break;
        }
        run.op(&mut b);
    }
});
