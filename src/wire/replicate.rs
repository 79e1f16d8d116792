//! Replicate (API 7): one consensus [`Message`] from a peer broker, in a
//! request frame that is never answered.
//!
//! ```text
//! body    = u64 from | u64 to | u64 term | u64 from_incarnation
//!           | u64 to_incarnation | u64 cluster_id | u8 kind | kind fields
//! PreVoteResp, VoteResp = u8 granted | u8 caught_up
//! AppendAck = u64 matched | u64 written | u64 flushed | u8 caught_up
//! Append  = u64 prev_pos | u64 prev_term | u64 commit | u32 entry_count
//!           | entry_count × (u64 end | u64 term) | u64 payload_len | payload
//! InstallSnapshot = u64 pos | u64 snapshot_term | u64 commit
//! SnapshotChunk   = u64 pos | u64 snapshot_term | u64 total_len | u64 offset
//!           | u32 len | len bytes
//! ```
//! A `SnapshotChunk` (kind 12) is not a consensus message: it carries part
//! of the leader's snapshot file (`journal/snapshot.rs`, framing included)
//! for position `pos`, `len` bytes from `offset` of `total_len`. The
//! leader sends the whole file in order, in chunks of at most
//! [`SNAPSHOT_CHUNK_BYTES`], then the `InstallSnapshot` message (kind 11);
//! the follower steps that message into its node only once it holds the
//! whole file for the same position and term ([`decode_chunk`]).
//! An `Append` carries the journal bytes of its entries, `[prev_pos, end of
//! the last entry)`, as the last field of the body. Those bytes live in
//! journal files, so the sender writes everything before them from one
//! buffer ([`write_frame`]) and the payload from another; the fixed part
//! therefore comes first and says how many payload bytes follow. An entry's
//! start is not sent: the first starts at `prev_pos`, each next one where
//! the previous one ends. Every other kind has no payload.
//!
//! [`decode_message`] checks everything the layout promises (known kind,
//! 0/1 booleans, non-empty entries, a payload exactly as long as the
//! entries, no trailing bytes) and every rule a message from a correct node
//! keeps whatever its receiver ([`Message::check_fields`]: terms at most
//! `TERM_MAX`, positions at most `POSITION_MAX`, entry terms that never
//! decrease and never pass the message's, positions in order), so the
//! consensus node and the journal never see an `Append` whose entries and
//! bytes disagree. Whether the sender is a voter of the group, and the
//! other checks that need the node's state, stay with the node.

use super::api::ApiKey;
use super::codec::{DecodeError, Put, Reader};
use super::frame::{finish_frame_before, RequestHeader};
use crate::consensus::{Entry, Message, MessageKind};

/// The version of the Replicate body this broker speaks.
pub const REPLICATE_VERSION: u16 = 1;
/// Bytes of the fields every message starts with: `from`, `to`, `term`,
/// `from_incarnation`, `to_incarnation`, `cluster_id`, `kind`.
pub const MESSAGE_HEADER_LEN: usize = 49;
/// Bytes of one `Append` entry: `end`, `term`.
pub const ENTRY_LEN: usize = 16;

const KIND_PRE_VOTE: u8 = 0;
const KIND_PRE_VOTE_RESP: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_VOTE_RESP: u8 = 3;
const KIND_APPEND: u8 = 4;
const KIND_APPEND_ACK: u8 = 5;
const KIND_APPEND_REJECT: u8 = 6;
const KIND_HEARTBEAT: u8 = 7;
const KIND_TIMEOUT_NOW: u8 = 8;
const KIND_PROBE: u8 = 9;
const KIND_PROBE_RESP: u8 = 10;
const KIND_INSTALL_SNAPSHOT: u8 = 11;
/// The kind byte of a [`SnapshotChunk`] (the last byte of the message
/// header).
pub const KIND_SNAPSHOT_CHUNK: u8 = 12;
/// Bytes of snapshot file in one chunk at most.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The largest snapshot file a follower takes (a snapshot holds topics
/// and producer states: far below this).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// The journal bytes that follow `m`'s body: the span of an `Append`'s
/// entries, 0 for a probe and for every other kind.
pub fn payload_len(m: &Message) -> u64 {
    match &m.kind {
        MessageKind::Append {
            prev_pos, entries, ..
        } => entries.last().map_or(0, |last| last.end - prev_pos),
        _ => 0,
    }
}

/// Appends `m`'s body without its payload; the caller appends the
/// [`payload_len`] journal bytes from `prev_pos` next.
///
/// # Panics
/// If an `Append`'s entries are not non-empty ranges contiguous from
/// `prev_pos`: their starts are not sent, so such entries would arrive
/// changed. The consensus node never makes them.
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    out.put_u64(m.from);
    out.put_u64(m.to);
    out.put_u64(m.term);
    out.put_u64(m.from_incarnation);
    out.put_u64(m.to_incarnation);
    out.put_u64(m.cluster_id);
    match &m.kind {
        MessageKind::PreVote {
            last_pos,
            last_term,
        } => {
            out.put_u8(KIND_PRE_VOTE);
            out.put_u64(*last_pos);
            out.put_u64(*last_term);
        }
        MessageKind::PreVoteResp { granted, caught_up } => {
            out.put_u8(KIND_PRE_VOTE_RESP);
            out.put_u8(*granted as u8);
            out.put_u8(*caught_up as u8);
        }
        MessageKind::Vote {
            last_pos,
            last_term,
            transfer,
        } => {
            out.put_u8(KIND_VOTE);
            out.put_u64(*last_pos);
            out.put_u64(*last_term);
            out.put_u8(*transfer as u8);
        }
        MessageKind::VoteResp { granted, caught_up } => {
            out.put_u8(KIND_VOTE_RESP);
            out.put_u8(*granted as u8);
            out.put_u8(*caught_up as u8);
        }
        MessageKind::Append {
            prev_pos,
            prev_term,
            entries,
            commit,
        } => {
            out.put_u8(KIND_APPEND);
            out.put_u64(*prev_pos);
            out.put_u64(*prev_term);
            out.put_u64(*commit);
            out.put_u32(
                u32::try_from(entries.len()).expect("an append holds fewer than 2^32 entries"),
            );
            let mut pos = *prev_pos;
            for e in entries {
                assert!(
                    e.start == pos && e.start < e.end,
                    "append entries are non-empty and contiguous from prev_pos"
                );
                out.put_u64(e.end);
                out.put_u64(e.term);
                pos = e.end;
            }
            out.put_u64(pos - prev_pos);
        }
        MessageKind::AppendAck {
            matched,
            written,
            flushed,
            caught_up,
        } => {
            out.put_u8(KIND_APPEND_ACK);
            out.put_u64(*matched);
            out.put_u64(*written);
            out.put_u64(*flushed);
            out.put_u8(*caught_up as u8);
        }
        MessageKind::AppendReject {
            rejected,
            hint_pos,
            hint_term,
        } => {
            out.put_u8(KIND_APPEND_REJECT);
            out.put_u64(*rejected);
            out.put_u64(*hint_pos);
            out.put_u64(*hint_term);
        }
        MessageKind::Heartbeat { commit } => {
            out.put_u8(KIND_HEARTBEAT);
            out.put_u64(*commit);
        }
        MessageKind::TimeoutNow => out.put_u8(KIND_TIMEOUT_NOW),
        MessageKind::Probe => out.put_u8(KIND_PROBE),
        MessageKind::ProbeResp => out.put_u8(KIND_PROBE_RESP),
        MessageKind::InstallSnapshot {
            pos,
            snapshot_term,
            commit,
        } => {
            out.put_u8(KIND_INSTALL_SNAPSHOT);
            out.put_u64(*pos);
            out.put_u64(*snapshot_term);
            out.put_u64(*commit);
        }
    }
}

/// Appends a whole Replicate request frame for `m` to `out` (header with
/// correlation id 0, then the body), except the payload, with a length
/// prefix that already counts the payload. Returns the payload's length:
/// the caller sends `out`, then exactly that many journal bytes from
/// `prev_pos`, and the frame is complete.
///
/// # Panics
/// As [`encode_message`]; and if the frame is longer than a `u32` length
/// prefix can say (the node bounds an append far below that).
pub fn write_frame(m: &Message, out: &mut Vec<u8>) -> u64 {
    let start = begin_frame(out);
    encode_message(m, out);
    let payload = payload_len(m);
    finish_frame_before(out, start, payload);
    payload
}

/// Parses a Replicate body into its message and, for an `Append`, the
/// journal bytes of its entries (empty for every other kind).
///
/// # Errors
/// [`DecodeError::Truncated`] or [`DecodeError::TrailingBytes`] when the
/// body is shorter or longer than its fields say;
/// [`DecodeError::InvalidValue`] for an unknown kind, a boolean other than
/// 0 or 1, entries that are empty, a `payload_len` other than the entries'
/// span, or a field that breaks [`Message::check_fields`] (a term above
/// `TERM_MAX`, a position above `POSITION_MAX`, entry terms that decrease or
/// exceed the message's term, positions out of order, …), naming the field.
pub fn decode_message(body: &[u8]) -> Result<(Message, &[u8]), DecodeError> {
    let mut r = Reader::new(body);
    let from = r.u64("from")?;
    let to = r.u64("to")?;
    let term = r.u64("term")?;
    let from_incarnation = r.u64("from_incarnation")?;
    let to_incarnation = r.u64("to_incarnation")?;
    let cluster_id = r.u64("cluster_id")?;
    let mut payload: &[u8] = &[];
    let kind = match r.u8("kind")? {
        KIND_PRE_VOTE => MessageKind::PreVote {
            last_pos: r.u64("last_pos")?,
            last_term: r.u64("last_term")?,
        },
        KIND_PRE_VOTE_RESP => MessageKind::PreVoteResp {
            granted: bool_field(&mut r, "granted")?,
            caught_up: bool_field(&mut r, "caught_up")?,
        },
        KIND_VOTE => MessageKind::Vote {
            last_pos: r.u64("last_pos")?,
            last_term: r.u64("last_term")?,
            transfer: bool_field(&mut r, "transfer")?,
        },
        KIND_VOTE_RESP => MessageKind::VoteResp {
            granted: bool_field(&mut r, "granted")?,
            caught_up: bool_field(&mut r, "caught_up")?,
        },
        KIND_APPEND => {
            let (kind, bytes) = decode_append(&mut r)?;
            payload = bytes;
            kind
        }
        KIND_APPEND_ACK => MessageKind::AppendAck {
            matched: r.u64("matched")?,
            written: r.u64("written")?,
            flushed: r.u64("flushed")?,
            caught_up: bool_field(&mut r, "caught_up")?,
        },
        KIND_APPEND_REJECT => MessageKind::AppendReject {
            rejected: r.u64("rejected")?,
            hint_pos: r.u64("hint_pos")?,
            hint_term: r.u64("hint_term")?,
        },
        KIND_HEARTBEAT => MessageKind::Heartbeat {
            commit: r.u64("commit")?,
        },
        KIND_TIMEOUT_NOW => MessageKind::TimeoutNow,
        KIND_PROBE => MessageKind::Probe,
        KIND_PROBE_RESP => MessageKind::ProbeResp,
        KIND_INSTALL_SNAPSHOT => MessageKind::InstallSnapshot {
            pos: r.u64("pos")?,
            snapshot_term: r.u64("snapshot_term")?,
            commit: r.u64("commit")?,
        },
        _ => return Err(DecodeError::InvalidValue { field: "kind" }),
    };
    r.finish()?;
    let m = Message {
        from,
        to,
        term,
        from_incarnation,
        to_incarnation,
        cluster_id,
        kind,
    };
    m.check_fields()
        .map_err(|e| DecodeError::InvalidValue { field: e.field })?;
    Ok((m, payload))
}

/// Part of a leader's snapshot file on its way to a follower (kind 12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk<'a> {
    /// Sender.
    pub from: u64,
    /// Addressee.
    pub to: u64,
    /// The sender's term.
    pub term: u64,
    /// The group's cluster id as the sender knows it.
    pub cluster_id: u64,
    /// The snapshot's position and the term of the batch ending there.
    pub pos: u64,
    /// Term of the batch ending at `pos`.
    pub snapshot_term: u64,
    /// Length of the whole file.
    pub total_len: u64,
    /// Where `bytes` begin in the file.
    pub offset: u64,
    /// The chunk.
    pub bytes: &'a [u8],
}

/// Whether a Replicate body carries a [`SnapshotChunk`] (read its kind
/// byte without decoding the rest).
pub fn is_chunk(body: &[u8]) -> bool {
    body.get(MESSAGE_HEADER_LEN - 1) == Some(&KIND_SNAPSHOT_CHUNK)
}

/// Appends a Replicate request header (correlation id 0, as every
/// Replicate frame) and returns where the frame starts.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    RequestHeader {
        api_key: ApiKey::Replicate.as_u16(),
        api_version: REPLICATE_VERSION,
        correlation_id: 0,
        flags: 0,
    }
    .write(out);
    start
}

/// Appends a whole Replicate request frame carrying `c`.
///
/// # Panics
/// If the chunk is longer than a `u32` says.
pub fn write_chunk_frame(c: &SnapshotChunk<'_>, out: &mut Vec<u8>) {
    let start = begin_frame(out);
    out.put_u64(c.from);
    out.put_u64(c.to);
    out.put_u64(c.term);
    out.put_u64(0);
    out.put_u64(0);
    out.put_u64(c.cluster_id);
    out.put_u8(KIND_SNAPSHOT_CHUNK);
    out.put_u64(c.pos);
    out.put_u64(c.snapshot_term);
    out.put_u64(c.total_len);
    out.put_u64(c.offset);
    out.put_u32(u32::try_from(c.bytes.len()).expect("a chunk below 4 GiB"));
    out.extend_from_slice(c.bytes);
    finish_frame_before(out, start, 0);
}

/// Parses a Replicate body that [`is_chunk`].
///
/// # Errors
/// [`DecodeError::Truncated`] or [`DecodeError::TrailingBytes`] when the
/// body is shorter or longer than its fields say;
/// [`DecodeError::InvalidValue`] for another kind, a term above
/// `TERM_MAX`, a position above `POSITION_MAX` or of 0, a snapshot term of
/// 0, a file longer than [`SNAPSHOT_BYTES_MAX`], or a chunk that does not
/// lie within the file.
pub fn decode_chunk(body: &[u8]) -> Result<SnapshotChunk<'_>, DecodeError> {
    use crate::consensus::config::{POSITION_MAX, TERM_MAX};
    let mut r = Reader::new(body);
    let from = r.u64("from")?;
    let to = r.u64("to")?;
    let term = r.u64("term")?;
    let _ = r.u64("from_incarnation")?;
    let _ = r.u64("to_incarnation")?;
    let cluster_id = r.u64("cluster_id")?;
    if r.u8("kind")? != KIND_SNAPSHOT_CHUNK {
        return Err(DecodeError::InvalidValue { field: "kind" });
    }
    let pos = r.u64("pos")?;
    let snapshot_term = r.u64("snapshot_term")?;
    let total_len = r.u64("total_len")?;
    let offset = r.u64("offset")?;
    let len = r.u32("len")?;
    let bytes = r.take(len as usize, "bytes")?;
    r.finish()?;
    let bad = |field| Err(DecodeError::InvalidValue { field });
    if term > TERM_MAX || snapshot_term == 0 || snapshot_term > term {
        return bad("snapshot_term");
    }
    if pos == 0 || pos > POSITION_MAX {
        return bad("pos");
    }
    if total_len > SNAPSHOT_BYTES_MAX {
        return bad("total_len");
    }
    if offset
        .checked_add(u64::from(len))
        .is_none_or(|end| end > total_len)
    {
        return bad("offset");
    }
    Ok(SnapshotChunk {
        from,
        to,
        term,
        cluster_id,
        pos,
        snapshot_term,
        total_len,
        offset,
        bytes,
    })
}

/// The fields of an `Append` after its kind, and its payload.
fn decode_append<'a>(r: &mut Reader<'a>) -> Result<(MessageKind, &'a [u8]), DecodeError> {
    let prev_pos = r.u64("prev_pos")?;
    let prev_term = r.u64("prev_term")?;
    let commit = r.u64("commit")?;
    let count = r.u32("entry_count")? as usize;
    // Take the entries' bytes before allocating, so a lying count fails as
    // truncation instead of reserving memory for entries that are not there.
    let raw = r.take(count.saturating_mul(ENTRY_LEN), "entries")?;
    let mut entries = Vec::with_capacity(count);
    let mut start = prev_pos;
    for chunk in raw.chunks_exact(ENTRY_LEN) {
        let mut e = Reader::new(chunk);
        let end = e.u64("entry.end")?;
        let entry_term = e.u64("entry.term")?;
        if end <= start {
            return Err(DecodeError::InvalidValue { field: "entry.end" });
        }
        entries.push(Entry {
            start,
            end,
            term: entry_term,
        });
        start = end;
    }
    let payload_len = r.u64("payload_len")?;
    if payload_len != start - prev_pos {
        return Err(DecodeError::InvalidValue {
            field: "payload_len",
        });
    }
    // The span fits the body only if it fits a usize; otherwise it is
    // necessarily longer than what is left.
    let len = usize::try_from(payload_len).unwrap_or(usize::MAX);
    let payload = r.take(len, "payload")?;
    let kind = MessageKind::Append {
        prev_pos,
        prev_term,
        entries,
        commit,
    };
    Ok((kind, payload))
}

/// Reads a boolean byte, which must be 0 or 1.
fn bool_field(r: &mut Reader<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidValue { field }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{check_frame, REQUEST_HEADER_LEN};

    fn le(v: u64) -> [u8; 8] {
        v.to_le_bytes()
    }

    fn msg(kind: MessageKind) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 3,
            from_incarnation: 0x44,
            to_incarnation: 0x55,
            cluster_id: 0x66,
            kind,
        }
    }

    /// The 48 bytes before `kind` in every body of `msg`.
    fn head() -> Vec<u8> {
        [&le(1)[..], &le(2), &le(3), &le(0x44), &le(0x55), &le(0x66)].concat()
    }

    fn append() -> Message {
        msg(MessageKind::Append {
            prev_pos: 100,
            prev_term: 2,
            entries: vec![
                Entry {
                    start: 100,
                    end: 150,
                    term: 2,
                },
                Entry {
                    start: 150,
                    end: 170,
                    term: 3,
                },
            ],
            commit: 90,
        })
    }

    #[test]
    fn append_body_has_its_documented_bytes() {
        let mut out = Vec::new();
        encode_message(&append(), &mut out);
        let expected = [
            &le(1)[..],    // from
            &le(2),        // to
            &le(3),        // term
            &le(0x44),     // from_incarnation
            &le(0x55),     // to_incarnation
            &le(0x66),     // cluster_id
            &[4],          // kind: Append
            &le(100),      // prev_pos
            &le(2),        // prev_term
            &le(90),       // commit
            &[2, 0, 0, 0], // entry_count
            &le(150),      // entry 0 end (starts at prev_pos)
            &le(2),        // entry 0 term
            &le(170),      // entry 1 end
            &le(3),        // entry 1 term
            &le(70),       // payload_len: 170 - 100
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(out.len(), MESSAGE_HEADER_LEN + 28 + 2 * ENTRY_LEN + 8);
        assert_eq!(payload_len(&append()), 70);

        let payload = [7u8; 70];
        out.extend_from_slice(&payload);
        assert_eq!(decode_message(&out), Ok((append(), &payload[..])));
    }

    #[test]
    fn every_other_kind_has_its_documented_bytes() {
        let cases: [(MessageKind, Vec<u8>); 10] = [
            (
                MessageKind::PreVote {
                    last_pos: 5,
                    last_term: 2,
                },
                [&[0u8][..], &le(5), &le(2)].concat(),
            ),
            (
                MessageKind::PreVoteResp {
                    granted: true,
                    caught_up: false,
                },
                vec![1, 1, 0],
            ),
            (
                MessageKind::Vote {
                    last_pos: 5,
                    last_term: 2,
                    transfer: true,
                },
                [&[2u8][..], &le(5), &le(2), &[1]].concat(),
            ),
            (
                MessageKind::VoteResp {
                    granted: false,
                    caught_up: true,
                },
                vec![3, 0, 1],
            ),
            (
                MessageKind::AppendAck {
                    matched: 9,
                    written: 8,
                    flushed: 7,
                    caught_up: true,
                },
                [&[5u8][..], &le(9), &le(8), &le(7), &[1]].concat(),
            ),
            (
                MessageKind::AppendReject {
                    rejected: 9,
                    hint_pos: 4,
                    hint_term: 2,
                },
                [&[6u8][..], &le(9), &le(4), &le(2)].concat(),
            ),
            (
                MessageKind::Heartbeat { commit: 11 },
                [&[7u8][..], &le(11)].concat(),
            ),
            (MessageKind::TimeoutNow, vec![8]),
            (MessageKind::Probe, vec![9]),
            (MessageKind::ProbeResp, vec![10]),
        ];
        for (kind, tail) in cases {
            let m = msg(kind);
            let mut out = Vec::new();
            encode_message(&m, &mut out);
            assert_eq!(out, [&head()[..], &tail].concat(), "{m:?}");
            assert_eq!(payload_len(&m), 0);
            assert_eq!(decode_message(&out), Ok((m, &[][..])));
        }
    }

    #[test]
    fn probe_append_has_no_entries_and_no_payload() {
        let m = msg(MessageKind::Append {
            prev_pos: 40,
            prev_term: 1,
            entries: vec![],
            commit: 40,
        });
        let mut out = Vec::new();
        encode_message(&m, &mut out);
        assert_eq!(
            &out[out.len() - 12..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(decode_message(&out), Ok((m, &[][..])));
    }

    #[test]
    fn frame_length_prefix_counts_the_payload_sent_after_it() {
        let mut out = vec![0xAA]; // bytes already queued on the connection
        let payload = write_frame(&append(), &mut out);
        assert_eq!(payload, 70);
        let frame = &out[1..];
        let body_len = frame.len() - REQUEST_HEADER_LEN;
        assert_eq!(
            frame[..REQUEST_HEADER_LEN],
            [
                &((12 + body_len + 70) as u32).to_le_bytes()[..],
                &[7, 0],       // api_key: Replicate
                &[1, 0],       // api_version
                &[0, 0, 0, 0], // correlation_id
                &[0, 0, 0, 0], // flags, reserved
            ]
            .concat()[..]
        );
        let mut whole = frame.to_vec();
        assert_eq!(check_frame(&whole, REQUEST_HEADER_LEN, 1 << 20), Ok(None));
        whole.extend_from_slice(&[9u8; 70]);
        assert_eq!(
            check_frame(&whole, REQUEST_HEADER_LEN, 1 << 20),
            Ok(Some(whole.len()))
        );
        let (m, bytes) = decode_message(&whole[REQUEST_HEADER_LEN..]).unwrap();
        assert_eq!((m, bytes), (append(), &[9u8; 70][..]));
    }

    /// The append body with `edit` applied to its bytes (payload included).
    fn edited_append(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(&append(), &mut out);
        out.extend_from_slice(&[0u8; 70]);
        edit(&mut out);
        out
    }

    // Offsets in the append body of `append()`.
    const COUNT_AT: usize = MESSAGE_HEADER_LEN + 24;
    const ENTRY0_AT: usize = COUNT_AT + 4;
    const PAYLOAD_LEN_AT: usize = ENTRY0_AT + 2 * ENTRY_LEN;

    #[test]
    fn inconsistent_appends_are_refused() {
        let invalid = |field| Err(DecodeError::InvalidValue { field });
        let cases: [(&str, Vec<u8>, Result<(), DecodeError>); 7] = [
            (
                "empty entry",
                edited_append(|b| b[ENTRY0_AT..ENTRY0_AT + 8].copy_from_slice(&le(100))),
                invalid("entry.end"),
            ),
            (
                "ends go backwards",
                edited_append(|b| b[ENTRY0_AT + 16..ENTRY0_AT + 24].copy_from_slice(&le(120))),
                invalid("entry.end"),
            ),
            (
                "terms decrease",
                edited_append(|b| b[ENTRY0_AT + 24..ENTRY0_AT + 32].copy_from_slice(&le(1))),
                invalid("entry.term"),
            ),
            (
                "entry term above the message's",
                edited_append(|b| b[ENTRY0_AT + 24..ENTRY0_AT + 32].copy_from_slice(&le(4))),
                invalid("entry.term"),
            ),
            (
                "payload_len is not the span",
                edited_append(|b| {
                    b[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 8].copy_from_slice(&le(69));
                    b.pop();
                }),
                invalid("payload_len"),
            ),
            (
                "payload shorter than its length",
                edited_append(|b| {
                    b.pop();
                }),
                Err(DecodeError::Truncated {
                    field: "payload",
                    needed: 1,
                }),
            ),
            (
                "trailing byte",
                edited_append(|b| b.push(0)),
                Err(DecodeError::TrailingBytes { extra: 1 }),
            ),
        ];
        for (name, body, expected) in cases {
            assert_eq!(decode_message(&body).map(|_| ()), expected, "{name}");
        }
    }

    #[test]
    fn a_lying_entry_count_fails_without_allocating_for_it() {
        let body = edited_append(|b| b[COUNT_AT..COUNT_AT + 4].copy_from_slice(&[0xff; 4]));
        assert!(matches!(
            decode_message(&body),
            Err(DecodeError::Truncated {
                field: "entries",
                ..
            })
        ));
    }

    #[test]
    fn install_snapshot_and_chunks_have_their_documented_bytes() {
        let m = msg(MessageKind::InstallSnapshot {
            pos: 7,
            snapshot_term: 2,
            commit: 9,
        });
        let mut body = Vec::new();
        encode_message(&m, &mut body);
        assert_eq!(body, [&head()[..], &[11], &le(7), &le(2), &le(9)].concat());
        assert_eq!(decode_message(&body), Ok((m.clone(), &[][..])));
        let c = SnapshotChunk {
            from: 1,
            to: 2,
            term: 3,
            cluster_id: 0x66,
            pos: 100,
            snapshot_term: 2,
            total_len: 10,
            offset: 4,
            bytes: b"abc",
        };
        let mut frame = Vec::new();
        write_chunk_frame(&c, &mut frame);
        let body = &frame[REQUEST_HEADER_LEN..];
        assert_eq!(
            check_frame(&frame, REQUEST_HEADER_LEN, 1 << 20),
            Ok(Some(frame.len()))
        );
        let expected = [
            &le(1)[..],
            &le(2),
            &le(3),
            &le(0),
            &le(0),
            &le(0x66),
            &[12],
            &le(100),
            &le(2),
            &le(10),
            &le(4),
            &3u32.to_le_bytes(),
            b"abc",
        ]
        .concat();
        assert_eq!(body, &expected[..]);
        assert!(is_chunk(body));
        assert!(!is_chunk(&[&head()[..], &[11]].concat()));
        assert_eq!(decode_chunk(body), Ok(c.clone()));
        // A chunk past the file's end, a file too large, position 0, a
        // snapshot term above the message's: refused.
        for (edit, field) in [
            (
                SnapshotChunk {
                    offset: 8,
                    ..c.clone()
                },
                "offset",
            ),
            (
                SnapshotChunk {
                    total_len: SNAPSHOT_BYTES_MAX + 1,
                    ..c.clone()
                },
                "total_len",
            ),
            (
                SnapshotChunk {
                    pos: 0,
                    ..c.clone()
                },
                "pos",
            ),
            (
                SnapshotChunk {
                    snapshot_term: 4,
                    ..c.clone()
                },
                "snapshot_term",
            ),
        ] {
            let mut frame = Vec::new();
            write_chunk_frame(&edit, &mut frame);
            assert_eq!(
                decode_chunk(&frame[REQUEST_HEADER_LEN..]),
                Err(DecodeError::InvalidValue { field }),
                "{edit:?}"
            );
        }
        // A message body is no chunk.
        let mut body = Vec::new();
        encode_message(&m, &mut body);
        assert_eq!(
            decode_chunk(&body),
            Err(DecodeError::InvalidValue { field: "kind" })
        );
    }

    #[test]
    fn unknown_kinds_and_non_boolean_bytes_are_refused() {
        let head = head();
        let body = |tail: &[u8]| [&head[..], tail].concat();
        assert_eq!(
            decode_message(&body(&[KIND_SNAPSHOT_CHUNK + 1])),
            Err(DecodeError::InvalidValue { field: "kind" })
        );
        assert_eq!(
            decode_message(&body(&[1, 2, 0])),
            Err(DecodeError::InvalidValue { field: "granted" })
        );
        assert_eq!(
            decode_message(&body(&[3, 1, 7])),
            Err(DecodeError::InvalidValue { field: "caught_up" })
        );
        let vote = [&[2u8][..], &le(5), &le(2), &[2]].concat();
        assert_eq!(
            decode_message(&body(&vote)),
            Err(DecodeError::InvalidValue { field: "transfer" })
        );
        assert!(matches!(
            decode_message(&head),
            Err(DecodeError::Truncated { field: "kind", .. })
        ));
    }

    #[test]
    fn fields_no_correct_node_sends_are_refused_when_decoding() {
        use crate::consensus::config::{POSITION_MAX, TERM_MAX};
        let invalid = |field| Err(DecodeError::InvalidValue { field });
        let mut absurd = msg(MessageKind::Heartbeat { commit: 0 });
        absurd.term = TERM_MAX + 1;
        let cases: [(&str, Message, Result<(), DecodeError>); 7] = [
            ("term above TERM_MAX", absurd, invalid("term")),
            (
                "commit above POSITION_MAX",
                msg(MessageKind::Heartbeat {
                    commit: POSITION_MAX + 1,
                }),
                invalid("commit"),
            ),
            (
                "candidate's last term not below its term",
                msg(MessageKind::PreVote {
                    last_pos: 5,
                    last_term: 3,
                }),
                invalid("last_term"),
            ),
            (
                "acknowledged positions out of order",
                msg(MessageKind::AppendAck {
                    matched: 5,
                    written: 6,
                    flushed: 0,
                    caught_up: false,
                }),
                invalid("flushed"),
            ),
            (
                "hint above the rejected position",
                msg(MessageKind::AppendReject {
                    rejected: 5,
                    hint_pos: 6,
                    hint_term: 0,
                }),
                invalid("hint_pos"),
            ),
            (
                "hint term above the term",
                msg(MessageKind::AppendReject {
                    rejected: 5,
                    hint_pos: 5,
                    hint_term: 4,
                }),
                invalid("hint_term"),
            ),
            (
                "a term at position 0",
                msg(MessageKind::Append {
                    prev_pos: 0,
                    prev_term: 1,
                    entries: vec![],
                    commit: 0,
                }),
                invalid("prev_term"),
            ),
        ];
        for (name, m, expected) in cases {
            let mut body = Vec::new();
            encode_message(&m, &mut body);
            assert_eq!(decode_message(&body).map(|_| ()), expected, "{name}");
        }
    }
}
