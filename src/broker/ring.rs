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
    ring_of(HeapRb::<u8>::new(capacity_bytes), false)
}

/// Creates a ring of `capacity_bytes` whose every byte is written once
/// up front, so that its producer can lend free room as plain `&mut [u8]`
/// ([`MessageProducer::push_in_place`]). The price is touching the whole
/// ring at start, so only the ring of large answers (the reader's) has it.
pub fn message_ring_in_place(capacity_bytes: usize) -> (MessageProducer, MessageConsumer) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut rb = HeapRb::<u8>::new(capacity_bytes);
    while rb.vacant_len() > 0 {
        let n = rb.vacant_len().min(ZEROS.len());
        rb.push_slice(&ZEROS[..n]);
    }
    rb.skip(capacity_bytes);
    ring_of(rb, true)
}

fn ring_of(rb: HeapRb<u8>, initialised: bool) -> (MessageProducer, MessageConsumer) {
    let (prod, cons) = rb.split();
    (
        MessageProducer { prod, initialised },
        MessageConsumer {
            cons,
            scratch: Vec::new(),
        },
    )
}

/// The writing end of a message ring.
pub struct MessageProducer {
    prod: HeapProd<u8>,
    /// Every byte of the ring was written once ([`message_ring_in_place`]).
    initialised: bool,
}

/// The room of one message's payload inside a ring, lent to the code that
/// fills it in place: one slice, or two when the payload wraps around the
/// ring's end. It is filled front to back.
pub struct Room<'a> {
    first: &'a mut [u8],
    second: &'a mut [u8],
    at: usize,
}

impl Room<'_> {
    /// Bytes of the payload.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes filled so far.
    pub fn filled(&self) -> usize {
        self.at
    }

    /// Fills the next `bytes.len()` bytes with `bytes`.
    ///
    /// # Panics
    /// When fewer bytes are left (a programmer error).
    pub fn put(&mut self, bytes: &[u8]) {
        self.fill(bytes.len(), |dst, done| {
            dst.copy_from_slice(&bytes[done..done + dst.len()]);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
    }

    /// Fills the next `n` bytes by calling `f` on consecutive pieces of
    /// them (one, or two across the ring's end), each with how many of the
    /// `n` bytes came before it. Stops at the first error; the bytes then
    /// count as filled anyway (the message is dropped, never published).
    ///
    /// # Panics
    /// When fewer than `n` bytes are left (a programmer error).
    pub fn fill<E>(
        &mut self,
        n: usize,
        mut f: impl FnMut(&mut [u8], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        assert!(
            n <= self.len() - self.at,
            "a room is filled within its length"
        );
        let (start, end) = (self.at, self.at + n);
        self.at = end;
        let split = self.first.len();
        if start < split {
            f(&mut self.first[start..end.min(split)], 0)?;
        }
        if end > split {
            let from = start.max(split);
            f(&mut self.second[from - split..end - split], from - start)?;
        }
        Ok(())
    }
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
        let env = envelope(conn, flags, len);
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

    /// Pushes one message of `len` payload bytes that `fill` writes in
    /// place, straight into the ring (a fetch answer read from the journal
    /// with no copy in between). `None` when the ring lacks room; otherwise
    /// what `fill` returned, and the message is published only when that is
    /// `Ok`.
    ///
    /// # Panics
    /// On a ring not made by [`message_ring_in_place`], or when `fill`
    /// returns `Ok` without filling all `len` bytes (programmer errors).
    pub fn push_in_place<E>(
        &mut self,
        conn: u64,
        flags: u32,
        len: usize,
        fill: impl FnOnce(&mut Room<'_>) -> Result<(), E>,
    ) -> Option<Result<(), E>> {
        assert!(self.initialised, "push_in_place needs an initialised ring");
        let total = RING_ENVELOPE_BYTES + len;
        if self.prod.vacant_len() < total {
            return None;
        }
        let (a, b) = self.prod.vacant_slices_mut();
        // SAFETY: every byte of the ring was written when it was made
        // (`initialised`), and `MaybeUninit<u8>` has the layout of `u8`;
        // only vacant room is lent, which the consumer does not read.
        let (a, b) = unsafe {
            (
                &mut *(std::ptr::from_mut::<[std::mem::MaybeUninit<u8>]>(a) as *mut [u8]),
                &mut *(std::ptr::from_mut::<[std::mem::MaybeUninit<u8>]>(b) as *mut [u8]),
            )
        };
        // The envelope, then the payload's room, across the two slices.
        let (env_a, env_b, first, second) = if a.len() >= total {
            let (env, rest) = a.split_at_mut(RING_ENVELOPE_BYTES);
            (env, &mut [][..], &mut rest[..len], &mut [][..])
        } else if a.len() >= RING_ENVELOPE_BYTES {
            let (env, rest) = a.split_at_mut(RING_ENVELOPE_BYTES);
            let second_len = len - rest.len();
            (env, &mut [][..], rest, &mut b[..second_len])
        } else {
            let (env_b, rest) = b.split_at_mut(RING_ENVELOPE_BYTES - a.len());
            (a, env_b, &mut rest[..len], &mut [][..])
        };
        let mut room = Room {
            first,
            second,
            at: 0,
        };
        let filled = fill(&mut room);
        if filled.is_err() {
            return Some(filled);
        }
        assert_eq!(room.at, len, "push_in_place fills the whole payload");
        let env = envelope(conn, flags, len);
        env_a.copy_from_slice(&env[..env_a.len()]);
        env_b.copy_from_slice(&env[env_a.len()..]);
        // SAFETY: the `total` bytes after the write index were written above.
        unsafe { self.prod.advance_write_index(total) };
        Some(filled)
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

/// One message borrowed from the ring in place ([`MessageConsumer::peek_split`]).
pub struct SplitMessage<'a> {
    /// The connection the message belongs to.
    pub conn: u64,
    /// Envelope flags.
    pub flags: u32,
    /// The frame: the first part, then the second (empty unless the frame
    /// wraps around the ring's end).
    pub parts: [&'a [u8]; 2],
}

impl SplitMessage<'_> {
    /// Bytes of the frame.
    pub fn len(&self) -> usize {
        self.parts[0].len() + self.parts[1].len()
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        let (len, flags, conn) = read_envelope(a, b)?;
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

    /// The oldest message, borrowed in place with no copy: its payload as
    /// one slice, or two when it wraps around the ring's end. Call
    /// [`MessageConsumer::pop`] when done with it.
    pub fn peek_split(&self) -> Option<SplitMessage<'_>> {
        let (a, b) = self.cons.as_slices();
        let (len, flags, conn) = read_envelope(a, b)?;
        let (start, end) = (RING_ENVELOPE_BYTES, RING_ENVELOPE_BYTES + len);
        let parts: [&[u8]; 2] = if end <= a.len() {
            [&a[start..end], &[]]
        } else if start >= a.len() {
            [&b[start - a.len()..end - a.len()], &[]]
        } else {
            [&a[start..], &b[..end - a.len()]]
        };
        Some(SplitMessage { conn, flags, parts })
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

/// The payload length, flags and connection of the message at the front of
/// the queued bytes `a ++ b`, if one is there.
fn read_envelope(a: &[u8], b: &[u8]) -> Option<(usize, u32, u64)> {
    if a.len() + b.len() < RING_ENVELOPE_BYTES {
        return None;
    }
    let mut env = [0u8; RING_ENVELOPE_BYTES];
    copy_out(a, b, 0, &mut env);
    let len = u32::from_le_bytes([env[0], env[1], env[2], env[3]]) as usize;
    let flags = u32::from_le_bytes([env[4], env[5], env[6], env[7]]);
    let mut conn = [0u8; 8];
    conn.copy_from_slice(&env[8..]);
    // The producer pushes a message whole before publishing it.
    debug_assert!(a.len() + b.len() >= RING_ENVELOPE_BYTES + len);
    Some((len, flags, u64::from_le_bytes(conn)))
}

/// The envelope of a message of `len` payload bytes.
fn envelope(conn: u64, flags: u32, len: usize) -> [u8; RING_ENVELOPE_BYTES] {
    let mut env = [0u8; RING_ENVELOPE_BYTES];
    env[..4].copy_from_slice(&(len as u32).to_le_bytes());
    env[4..8].copy_from_slice(&flags.to_le_bytes());
    env[8..].copy_from_slice(&conn.to_le_bytes());
    env
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

    /// Pushes `body` in place, filling it in pieces of `piece` bytes.
    fn push_in_pieces(p: &mut MessageProducer, conn: u64, body: &[u8], piece: usize) -> bool {
        p.push_in_place(conn, 7, body.len(), |room| {
            assert_eq!(room.len(), body.len());
            while room.filled() < body.len() {
                let at = room.filled();
                let n = piece.max(1).min(body.len() - at);
                room.fill(n, |dst, done| {
                    dst.copy_from_slice(&body[at + done..at + done + dst.len()]);
                    Ok::<(), ()>(())
                })?;
            }
            Ok(())
        })
        .map(|r: Result<(), ()>| r.unwrap())
        .is_some()
    }

    proptest::proptest! {
        /// Messages filled in place come out byte for byte, whole and in
        /// order, through both kinds of peek, wherever the ring's end cuts
        /// them (the envelope, the payload, or between the two).
        #[test]
        fn messages_filled_in_place_come_out_as_pushed(
            capacity in 17usize..200,
            lens in proptest::collection::vec(0usize..80, 1..60),
            piece in 1usize..40,
        ) {
            let (mut p, mut c) = message_ring_in_place(capacity);
            let mut expect = std::collections::VecDeque::new();
            for (i, len) in lens.into_iter().enumerate() {
                if RING_ENVELOPE_BYTES + len > capacity {
                    proptest::prop_assert!(!push_in_pieces(&mut p, 0, &vec![1; len], piece));
                    continue;
                }
                let body: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
                while !push_in_pieces(&mut p, i as u64, &body, piece) {
                    let (conn, want): (u64, Vec<u8>) = expect.pop_front().unwrap();
                    let m = c.peek_split().unwrap();
                    proptest::prop_assert_eq!((m.conn, m.flags), (conn, 7));
                    proptest::prop_assert_eq!([m.parts[0], m.parts[1]].concat(), want.clone());
                    let m = c.peek().unwrap();
                    proptest::prop_assert_eq!(m.payload, &want[..]);
                    c.pop();
                }
                expect.push_back((i as u64, body));
            }
            while let Some((conn, want)) = expect.pop_front() {
                let m = c.peek_split().unwrap();
                proptest::prop_assert_eq!(m.conn, conn);
                proptest::prop_assert_eq!(m.len(), want.len());
                proptest::prop_assert_eq!([m.parts[0], m.parts[1]].concat(), want);
                c.pop();
            }
            proptest::prop_assert!(c.is_empty());
        }
    }

    #[test]
    fn a_failed_fill_publishes_nothing() {
        let (mut p, mut c) = message_ring_in_place(64);
        let r = p.push_in_place(1, 0, 10, |room| {
            room.put(b"half");
            Err("the read failed")
        });
        assert_eq!(r, Some(Err("the read failed")));
        assert!(c.is_empty());
        assert!(push_in_pieces(&mut p, 2, b"whole", 2));
        let m = c.peek_split().unwrap();
        assert_eq!(
            (m.conn, m.parts[0], m.parts[1]),
            (2, &b"whole"[..], &b""[..])
        );
        c.pop();
        assert!(c.peek_split().is_none());
    }

    #[test]
    #[should_panic(expected = "initialised ring")]
    fn filling_in_place_needs_an_initialised_ring() {
        let (mut p, _c) = message_ring(64);
        let _ = p.push_in_place(1, 0, 1, |room| {
            room.put(b"x");
            Ok::<(), ()>(())
        });
    }

    #[test]
    fn a_message_that_does_not_fit_is_not_pushed() {
        let (mut p, c) = message_ring(32);
        assert!(!p.push(1, 0, &[&[0u8; 17]]));
        assert!(c.is_empty());
        assert!(p.push(1, 0, &[&[0u8; 16]]));
    }
}
