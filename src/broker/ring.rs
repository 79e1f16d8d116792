//! Message rings: whole messages over lock-free SPSC byte rings (`ringbuf`).
//!
//! Each message is an envelope — `u32 payload length | u32 flags | u64
//! connection id` — followed by its payload (a request or response frame).
//! A message is pushed whole or not at all, so the consumer never sees half
//! of one. Pushing and popping copy bytes but never allocate.

use crate::config::RING_ENVELOPE_BYTES;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

/// Creates a ring of `capacity_bytes` (envelopes included).
pub fn message_ring(capacity_bytes: usize) -> (MessageProducer, MessageConsumer) {
    let (prod, cons) = HeapRb::<u8>::new(capacity_bytes).split();
    (
        MessageProducer { prod },
        MessageConsumer {
            cons,
            scratch: Vec::new(),
        },
    )
}

/// The writing end of a message ring.
pub struct MessageProducer {
    prod: HeapProd<u8>,
}

/// Envelope flag: the message answers a request that counted toward its
/// connection's in-flight limit.
pub const FLAG_COUNTED: u32 = 1;

impl MessageProducer {
    /// Pushes one message made of `parts` concatenated. Returns false (and
    /// pushes nothing) when the ring lacks room.
    pub fn push(&mut self, conn: u64, flags: u32, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let total = RING_ENVELOPE_BYTES + len;
        if self.prod.vacant_len() < total {
            return false;
        }
        let mut env = [0u8; RING_ENVELOPE_BYTES];
        env[..4].copy_from_slice(&(len as u32).to_le_bytes());
        env[4..8].copy_from_slice(&flags.to_le_bytes());
        env[8..].copy_from_slice(&conn.to_le_bytes());
        // Copy every part into the free space first and publish the write
        // index once at the end, so the consumer never sees a message
        // before all of its bytes are there.
        let (a, b) = self.prod.vacant_slices_mut();
        let mut at = 0;
        for part in std::iter::once(&env[..]).chain(parts.iter().copied()) {
            let mut src = part;
            while !src.is_empty() {
                let (dst, off) = if at < a.len() {
                    (&mut a[at..], 0)
                } else {
                    (&mut b[at - a.len()..], 0)
                };
                let n = src.len().min(dst.len() - off);
                // SAFETY: `dst` is vacant ring space of at least `n` bytes
                // (vacant_len >= total was checked), `src` is a separate
                // slice, and u8 has no invalid bit patterns.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), n)
                };
                at += n;
                src = &src[n..];
            }
        }
        debug_assert_eq!(at, total);
        // SAFETY: the `total` bytes after the write index were initialised above.
        unsafe { self.prod.advance_write_index(total) };
        true
    }

    /// True when a message of `len` payload bytes would fit now.
    pub fn fits(&self, len: usize) -> bool {
        self.prod.vacant_len() >= RING_ENVELOPE_BYTES + len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.prod.is_empty()
    }
}

/// One message borrowed from the ring (or from the consumer's scratch
/// buffer when it wrapped around the end of the ring).
pub struct Message<'a> {
    /// The connection the message belongs to.
    pub conn: u64,
    /// Envelope flags.
    pub flags: u32,
    /// The frame.
    pub payload: &'a [u8],
}

/// The reading end of a message ring.
pub struct MessageConsumer {
    cons: HeapCons<u8>,
    scratch: Vec<u8>,
}

impl MessageConsumer {
    /// The oldest message, if one is there; call [`MessageConsumer::pop`]
    /// when done with it.
    pub fn peek(&mut self) -> Option<Message<'_>> {
        let (a, b) = self.cons.as_slices();
        if a.len() + b.len() < RING_ENVELOPE_BYTES {
            return None;
        }
        let mut env = [0u8; RING_ENVELOPE_BYTES];
        copy_out(a, b, 0, &mut env);
        let len = u32::from_le_bytes([env[0], env[1], env[2], env[3]]) as usize;
        let flags = u32::from_le_bytes([env[4], env[5], env[6], env[7]]);
        let mut conn = [0u8; 8];
        conn.copy_from_slice(&env[8..]);
        let conn = u64::from_le_bytes(conn);
        // The producer pushes a message whole before publishing it.
        debug_assert!(a.len() + b.len() >= RING_ENVELOPE_BYTES + len);
        let start = RING_ENVELOPE_BYTES;
        let payload: &[u8] = if a.len() >= start + len {
            &a[start..start + len]
        } else {
            self.scratch.clear();
            self.scratch.resize(len, 0);
            copy_out(a, b, start, &mut self.scratch);
            &self.scratch
        };
        Some(Message {
            conn,
            flags,
            payload,
        })
    }

    /// Drops the oldest message.
    pub fn pop(&mut self) {
        let (a, b) = self.cons.as_slices();
        if a.len() + b.len() < RING_ENVELOPE_BYTES {
            return;
        }
        let mut env = [0u8; 4];
        copy_out(a, b, 0, &mut env);
        let len = u32::from_le_bytes(env) as usize;
        self.cons.skip(RING_ENVELOPE_BYTES + len);
    }

    /// True when no message is queued.
    pub fn is_empty(&self) -> bool {
        self.cons.is_empty()
    }
}

/// Copies `out.len()` bytes starting at `at` of the logical concatenation `a ++ b`.
fn copy_out(a: &[u8], b: &[u8], at: usize, out: &mut [u8]) {
    let n = out.len();
    if at >= a.len() {
        out.copy_from_slice(&b[at - a.len()..at - a.len() + n]);
    } else if at + n <= a.len() {
        out.copy_from_slice(&a[at..at + n]);
    } else {
        let first = a.len() - at;
        out[..first].copy_from_slice(&a[at..]);
        out[first..].copy_from_slice(&b[..n - first]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_whole_and_in_order_across_wraparound() {
        let (mut p, mut c) = message_ring(100);
        let mut expect: std::collections::VecDeque<(u64, Vec<u8>)> =
            std::collections::VecDeque::new();
        for round in 0..1000u64 {
            let next = round;
            let len = (round % 37) as usize;
            let body: Vec<u8> = (0..len).map(|i| (i as u64 + round) as u8).collect();
            while !p.push(next, round as u32, &[&body[..len / 2], &body[len / 2..]]) {
                let m = c.peek().expect("a full ring holds a message");
                let (conn, body) = expect.pop_front().unwrap();
                assert_eq!(m.conn, conn);
                assert_eq!(m.payload, &body[..]);
                c.pop();
            }
            expect.push_back((next, body));
        }
        while let Some(m) = c.peek() {
            let (conn, body) = expect.pop_front().unwrap();
            assert_eq!((m.conn, m.payload), (conn, &body[..]));
            c.pop();
        }
        assert!(expect.is_empty());
        assert!(c.is_empty());
    }

    #[test]
    fn a_message_that_does_not_fit_is_not_pushed() {
        let (mut p, c) = message_ring(32);
        assert!(!p.push(1, 0, &[&[0u8; 17]]));
        assert!(c.is_empty());
        assert!(p.push(1, 0, &[&[0u8; 16]]));
    }
}
