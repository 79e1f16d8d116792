//! Fuzz targets as plain functions over bytes.
//!
//! Each function takes arbitrary bytes, runs one part of the broker that
//! reads untrusted input (the network or a file), and asserts the
//! invariants that must hold for every input. None of them may panic
//! except through one of those assertions: a panic is a bug, either in the
//! code under test or in the invariant.
//!
//! This file is the library of the `hutong-fuzz` crate, next to the
//! cargo-fuzz targets in `fuzz/fuzz_targets/`, which are one-line wrappers
//! around these functions. `tests/fuzz_regressions.rs` compiles the same
//! file as a module (`#[path]`) and replays every saved crash and seed
//! through it, so the fuzzers and the test suite share one source of truth
//! while none of it is compiled into the library the broker ships. It uses
//! only hutong's public API. `docs/fuzzing.md` says how to run them.
//!
//! Checksums stop a byte-mutating fuzzer at the first CRC: almost every
//! mutation of a batch fails it, so the record parser behind it would
//! hardly ever run. The targets that read batches therefore also run each
//! input a second time with every checksum recomputed ("sealed"), which
//! lets the fuzzer explore the layout behind the checksums while the
//! unsealed run keeps the checksum paths covered.

use hutong::config::FRAME_BYTES_MAX_DEFAULT;
use hutong::journal::append_log::append_log;
use hutong::journal::checkpoint::{self, Checkpoint};
use hutong::journal::control::{self, Control};
use hutong::journal::error::JournalError;
use hutong::journal::index::{IndexEntry, PartitionIndex};
use hutong::journal::log::{Journal, Recovery};
use hutong::journal::producers::{
    Key, Landed, ProducerBatch, ProducerLimits, ProducerStates, SavedState,
    PRODUCER_STATES_MAX_LIMIT, PRODUCER_WINDOW_MAX,
};
use hutong::journal::scan::{header_crc_ok, scan, ScanResult, ScanStop};
use hutong::journal::seg_index::{
    self, index_file_name, Section, SectionSource, SegmentIndex, INDEX_ENTRIES_AT_AT,
    INDEX_ENTRIES_CRC_AT, INDEX_ENTRY_COUNT_AT, INDEX_ENTRY_LEN, INDEX_HEADER_CRC_AT,
    INDEX_HEADER_LEN, INDEX_SECTION_COUNT_AT, INDEX_SECTION_LEN, INDEX_SEGMENT_START_AT,
};
use hutong::journal::segment::segment_file_name;
use hutong::journal::snapshot::{self, CatalogSnapshot, SnapshotTopic};
use hutong::journal::start;
use hutong::journal::topic::TopicMeta;
use hutong::wire::api::{
    check_topic_name, AlterTopicRequest, AlterTopicResponse, ApiKey, ClusterStatusRequest,
    ClusterStatusResponse, CreateTopicRequest, DeleteRecordsRequest, DeleteRecordsResponse,
    ErrorBody, FetchRequest, FetchResponse, HandshakeRequest, HandshakeResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, NotLeaderBody,
    ProduceRequest, ProduceResponse,
};
use hutong::wire::batch::{
    check_producer_batch, check_producer_batch_with, check_stored_batch, declared_len, records,
    split_batches, stamp, BatchBuilder, BatchError, BatchKind, BatchView, RecordLimits, Stamp,
    BATCH_HEADER_LEN,
};
use hutong::wire::codec::{le_u32, le_u64, set_u32, Reader};
use hutong::wire::error::ErrorCode;
use hutong::wire::frame::{
    check_frame, finish_frame, FrameError, RequestHeader, ResponseHeader, LENGTH_PREFIX_LEN,
    REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN,
};
use hutong::wire::replicate::{
    decode_chunk, decode_message, encode_message, is_chunk, payload_len, write_chunk_frame,
    write_frame, SnapshotChunk,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fuzz target: any bytes in, a panic only when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by the name of its cargo-fuzz target (and of its folders
/// under `fuzz/seeds/` and `fuzz/regressions/`).
pub const TARGETS: [(&str, Target); 6] = [
    ("frame_decoder", frame),
    ("batch_validator", batch),
    ("journal_recovery", recovery),
    ("journal_open", journal_open),
    ("segment_index", segment_index),
    ("catalog_snapshot", catalog_snapshot),
];

/// The byte offset of the producer `crc` in a batch, and where the bytes it
/// covers start (`wire::batch`'s layout; [`seal_batches`] asserts that
/// [`BatchView::crc`] reads the same place).
const BATCH_CRC_AT: usize = 40;
const BATCH_CRC_FROM: usize = 44;
/// The byte offset of the checkpoint `crc`, and where the bytes it covers
/// start (`journal::checkpoint`'s layout).
const CHECKPOINT_CRC_AT: usize = 6;
const CHECKPOINT_CRC_FROM: usize = 10;

/// `journal_open` pads shorter inputs with zeros to this many bytes, so
/// that a segment is never empty and usually has a zero tail.
const SEGMENT_PAD_BYTES: usize = 1024;
/// Segment size for segments `journal_open` makes the journal create: small,
/// so that appending after a nearly full input segment rolls.
const OPEN_SEGMENT_BYTES: usize = 4096;
/// Write cache of the journal `journal_open` opens.
const OPEN_CACHE_BYTES: usize = 4096;
/// Entries `segment_index` reads per call: odd, so that its reads straddle
/// the reader's own chunks.
const INDEX_READ_ENTRIES: usize = 97;

// ---------------------------------------------------------------------------
// frame_decoder

/// The frame decoder: splits `data` into request frames the way the
/// broker's reactor does and into response frames the way the client
/// does, checking [`check_frame`]'s answer against the length prefix, and
/// decodes every frame's header and its body with every request and
/// response decoder of [`hutong::wire::api`] and the Replicate decoder of
/// [`hutong::wire::replicate`]. A body that decodes must re-encode to
/// exactly its bytes (every encoding is canonical).
pub fn frame(data: &[u8]) {
    for_each_frame(data, REQUEST_HEADER_LEN, request_frame);
    for_each_frame(data, RESPONSE_HEADER_LEN, response_frame);
}

/// Walks the frames at the start of `buf` (as pipelined on a connection)
/// until one is incomplete or its length prefix is out of bounds.
fn for_each_frame(mut buf: &[u8], min_len: usize, mut on_frame: impl FnMut(&[u8])) {
    let max_len = FRAME_BYTES_MAX_DEFAULT;
    loop {
        let declared = (buf.len() >= LENGTH_PREFIX_LEN)
            .then(|| u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
            .map(|len| len + LENGTH_PREFIX_LEN);
        match check_frame(buf, min_len, max_len) {
            Ok(Some(total)) => {
                assert_eq!(Some(total), declared, "frame size is the length prefix + 4");
                assert!(min_len <= total && total <= max_len && total <= buf.len());
                assert_eq!(
                    check_frame(&buf[..total - 1], min_len, max_len),
                    Ok(None),
                    "a frame is only reported once all of it is buffered"
                );
                on_frame(&buf[..total]);
                buf = &buf[total..];
            }
            Ok(None) => {
                assert!(declared.is_none_or(|total| total > buf.len()));
                return;
            }
            Err(e) => {
                match e {
                    FrameError::TooLarge { len, max } => {
                        assert_eq!((Some(len), max), (declared, max_len));
                        assert!(len > max);
                        assert_eq!(e.code(), ErrorCode::FrameTooLarge);
                    }
                    FrameError::TooShort { len } => {
                        assert_eq!(Some(len), declared);
                        assert!(len < min_len);
                        assert_eq!(e.code(), ErrorCode::MalformedRequest);
                    }
                }
                return;
            }
        }
    }
}

/// Appends `body` to `header` bytes written by `write` and seals the frame.
fn rebuild_frame(write: impl FnOnce(&mut Vec<u8>), body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN.max(REQUEST_HEADER_LEN) + body.len());
    write(&mut out);
    out.extend_from_slice(body);
    finish_frame(&mut out, 0);
    out
}

fn request_frame(frame: &[u8]) {
    let header = RequestHeader::parse(frame);
    let body = &frame[REQUEST_HEADER_LEN..];
    let rebuilt = rebuild_frame(|out| header.write(out), body);
    // The two reserved bytes at 14..16 are not part of the parsed header.
    assert_eq!(rebuilt[..14], frame[..14], "request header re-encodes");
    assert_eq!(rebuilt[REQUEST_HEADER_LEN..], *body);
    assert_eq!(RequestHeader::parse(&rebuilt), header);
    if let Some(key) = ApiKey::from_u16(header.api_key) {
        assert_eq!(key.as_u16(), header.api_key);
        let (min, max) = key.versions();
        assert!(min <= max);
    }
    request_bodies(body);
}

/// Decodes `$body` as a `$ty`; when that works, the message must re-encode
/// to exactly `$body` and decode again to itself. Evaluates to the message.
macro_rules! round_trip {
    ($ty:ident, $body:expr) => {{
        let body: &[u8] = $body;
        let decoded = $ty::decode(body).ok();
        if let Some(msg) = &decoded {
            let mut out = Vec::with_capacity(body.len());
            msg.encode(&mut out);
            assert_eq!(
                out, body,
                concat!(stringify!($ty), " re-encodes to its bytes")
            );
            assert_eq!($ty::decode(&out).as_ref(), Ok(msg));
        }
        decoded
    }};
}

/// Every request decoder over one body. The reactor picks one by API key;
/// trying them all lets every input reach every decoder.
fn request_bodies(body: &[u8]) {
    if let Some(req) = round_trip!(HandshakeRequest, body) {
        assert!(req.client_id.len() <= u16::MAX as usize);
    }
    if let Some(req) = round_trip!(CreateTopicRequest, body) {
        topic_name_checks(req.name);
    }
    if let Some(req) = round_trip!(MetadataRequest, body) {
        assert!(req.topics.len() <= u16::MAX as usize);
    }
    if let Some(req) = round_trip!(ProduceRequest, body) {
        topic_name_checks(req.topic);
        batch_checks(req.batch);
    }
    if let Some(req) = round_trip!(FetchRequest, body) {
        topic_name_checks(req.topic);
    }
    if let Some(req) = round_trip!(ListOffsetsRequest, body) {
        topic_name_checks(req.topic);
    }
    if let Some(req) = round_trip!(DeleteRecordsRequest, body) {
        topic_name_checks(req.topic);
    }
    if let Some(req) = round_trip!(AlterTopicRequest, body) {
        topic_name_checks(req.topic);
    }
    // The later versions of versioned bodies.
    if let Ok(req) = CreateTopicRequest::decode_version(body, 2) {
        let mut out = Vec::with_capacity(body.len());
        req.encode_version(2, &mut out);
        assert_eq!(out, body, "CreateTopicRequest 2 re-encodes to its bytes");
    }
    if round_trip!(ClusterStatusRequest, body).is_some() {
        assert!(
            body.is_empty(),
            "only the empty body is a ClusterStatus request"
        );
    }
    replicate_checks(body);
}

/// The Replicate decoder: a body that decodes is the one encoding of its
/// message followed by exactly the payload the message announces, and
/// [`write_frame`] frames it so that the payload completes the frame.
fn replicate_checks(body: &[u8]) {
    if is_chunk(body) {
        // A snapshot chunk: it lies within its file, and re-encodes as
        // it came (but for the incarnations, which chunks do not carry).
        if let Ok(c) = decode_chunk(body) {
            assert!(c.offset + c.bytes.len() as u64 <= c.total_len);
            let mut frame = Vec::new();
            write_chunk_frame(&c, &mut frame);
            let again = decode_chunk(&frame[REQUEST_HEADER_LEN..]);
            assert_eq!(again, Ok(c.clone()), "a snapshot chunk re-encodes");
        }
        assert!(
            decode_message(body).is_err(),
            "a chunk is no consensus message"
        );
        return;
    }
    let Ok((m, payload)) = decode_message(body) else {
        return;
    };
    assert_eq!(payload_len(&m), payload.len() as u64);
    let mut out = Vec::with_capacity(body.len());
    encode_message(&m, &mut out);
    assert_eq!(out.len() + payload.len(), body.len());
    assert_eq!(out[..], body[..out.len()], "Replicate body re-encodes");
    assert_eq!(
        payload,
        &body[out.len()..],
        "the payload is the body's tail"
    );
    let mut frame = Vec::with_capacity(REQUEST_HEADER_LEN + body.len());
    assert_eq!(write_frame(&m, &mut frame), payload.len() as u64);
    assert_eq!(frame[REQUEST_HEADER_LEN..], out[..]);
    let declared = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(
        declared + LENGTH_PREFIX_LEN,
        REQUEST_HEADER_LEN + body.len()
    );
}

fn topic_name_checks(name: &str) {
    if check_topic_name(name).is_ok() {
        assert!(!name.is_empty() && name.len() <= 249 && name.is_ascii());
    }
}

fn response_frame(frame: &[u8]) {
    let header = ResponseHeader::parse(frame);
    let body = &frame[RESPONSE_HEADER_LEN..];
    assert_eq!(header.to_bytes(body.len()), frame[..RESPONSE_HEADER_LEN]);
    assert_eq!(rebuild_frame(|out| header.write(out), body), frame);
    assert_eq!(ResponseHeader::parse(frame), header);
    if let Some(code) = ErrorCode::from_u16(header.error_code) {
        assert_eq!(code.as_u16(), header.error_code);
        assert!(!code.name().is_empty() && !code.message().is_empty());
    }
    response_bodies(body);
}

/// Every response decoder over one body, as the client would apply them.
fn response_bodies(body: &[u8]) {
    // The error body is lenient: anything decodes, to the empty message
    // when the string does not.
    let error = ErrorBody::decode(body);
    let mut out = Vec::new();
    error.encode(&mut out);
    assert_eq!(ErrorBody::decode(&out), error);
    if !error.message.is_empty() {
        assert!(
            body.starts_with(&out),
            "an error message is the body's prefix"
        );
    }
    round_trip!(HandshakeResponse, body);
    round_trip!(MetadataResponse, body);
    round_trip!(ListOffsetsResponse, body);
    round_trip!(ClusterStatusResponse, body);
    // NotLeader's trailer is lenient like the error body: it re-decodes to
    // itself, and its message is the error body's.
    let not_leader = NotLeaderBody::decode(body);
    assert_eq!(not_leader.message, error.message);
    let mut out = Vec::new();
    not_leader.encode(&mut out);
    assert_eq!(NotLeaderBody::decode(&out), not_leader);
    if let Ok(resp) = ProduceResponse::decode(body) {
        assert_eq!(resp.to_bytes()[..], *body);
    }
    if let Ok(resp) = DeleteRecordsResponse::decode(body) {
        assert_eq!(resp.to_bytes()[..], *body);
    }
    if let Ok(resp) = AlterTopicResponse::decode(body) {
        assert_eq!(resp.to_bytes()[..], *body);
    }
    if let Ok(resp) = MetadataResponse::decode_version(body, 3) {
        let mut out = Vec::with_capacity(body.len());
        resp.encode_version(3, &mut out);
        assert_eq!(out, body, "MetadataResponse 3 re-encodes to its bytes");
    }
    if let Some(resp) = round_trip!(FetchResponse, body) {
        // The consumer's next step: split the batches and check each.
        split_checks(resp.batches);
    }
}

// ---------------------------------------------------------------------------
// batch_validator

/// The record-batch validator: [`check_producer_batch`],
/// [`check_stored_batch`], [`records`] iteration and [`split_batches`]
/// over `data`, then over `data` with every checksum sealed. A batch that
/// passes the producer check must pass the stored check once stamped; a
/// batch that passes a check must yield exactly `record_count` records with
/// consecutive offsets.
pub fn batch(data: &[u8]) {
    batch_checks(data);
    let mut sealed = data.to_vec();
    seal_batches(&mut sealed);
    if sealed != data {
        batch_checks(&sealed);
    }
}

fn batch_checks(buf: &[u8]) {
    producer_checks(buf);
    stored_checks(buf);
    record_walk(buf);
    split_checks(buf);
}

/// What a walk over a batch's records found.
struct Walk {
    records: u64,
    key_bytes_max: usize,
    value_bytes_max: usize,
}

/// Iterates the records of any bytes: never panics, and offsets count up
/// from the header's `base_offset` one by one.
fn record_walk(buf: &[u8]) -> Walk {
    let mut expected = if buf.len() >= BATCH_HEADER_LEN {
        BatchView(buf).base_offset()
    } else {
        0
    };
    let mut walk = Walk {
        records: 0,
        key_bytes_max: 0,
        value_bytes_max: 0,
    };
    for rec in records(buf) {
        assert_eq!(rec.offset, expected, "record offsets are consecutive");
        expected = expected.wrapping_add(1);
        walk.records += 1;
        walk.key_bytes_max = walk.key_bytes_max.max(rec.key.len());
        walk.value_bytes_max = walk.value_bytes_max.max(rec.value.len());
        for h in rec.headers() {
            assert!(h.key.len() <= u16::MAX as usize);
        }
    }
    walk
}

fn producer_checks(buf: &[u8]) {
    let Ok(count) = check_producer_batch(buf) else {
        return;
    };
    let view = BatchView(buf);
    assert_eq!(view.kind(), Some(BatchKind::Data));
    assert_eq!(view.record_count(), count);
    let walk = record_walk(buf);
    assert_eq!(
        walk.records,
        u64::from(count),
        "a checked batch yields record_count records"
    );

    // The record limits refuse exactly the records above them.
    let exact = RecordLimits {
        key_bytes_max: walk.key_bytes_max,
        value_bytes_max: walk.value_bytes_max,
    };
    assert_eq!(check_producer_batch_with(buf, exact), Ok(count));
    if walk.key_bytes_max > 0 {
        let tight = RecordLimits {
            key_bytes_max: walk.key_bytes_max - 1,
            ..RecordLimits::NONE
        };
        assert_eq!(
            check_producer_batch_with(buf, tight),
            Err(BatchError::RecordTooLarge)
        );
    }
    if walk.value_bytes_max > 0 {
        let tight = RecordLimits {
            value_bytes_max: walk.value_bytes_max - 1,
            ..RecordLimits::NONE
        };
        assert_eq!(
            check_producer_batch_with(buf, tight),
            Err(BatchError::RecordTooLarge)
        );
    }

    // The broker stamps what the producer check accepted; the result must
    // pass the stored check, keep the producer's bytes, and carry the stamp.
    // The stamp is taken from producer fields so the fuzzer controls it.
    let s = Stamp {
        base_offset: view.producer_seq(),
        term: view.producer_id(),
        append_time_ms: view.first_timestamp_ms(),
        topic_id: view.crc(),
        partition: count,
    };
    let mut stored = buf.to_vec();
    stamp(&mut stored, &s);
    assert_eq!(check_stored_batch(&stored), Ok(BatchKind::Data));
    assert_eq!(check_producer_batch(&stored), Ok(count));
    assert_eq!(stored[4..8], buf[4..8], "stamping keeps batch_len");
    assert_eq!(
        stored[BATCH_CRC_AT..],
        buf[BATCH_CRC_AT..],
        "stamping keeps the producer bytes"
    );
    assert_eq!(stamp_of(BatchView(&stored)), s);
    assert!(header_crc_ok(&stored));
    assert_eq!(record_walk(&stored).records, u64::from(count));
    if let Some(first) = records(&stored).next() {
        assert_eq!(first.offset, s.base_offset);
    }
}

/// The broker-stamped fields of a batch header.
fn stamp_of(view: BatchView<'_>) -> Stamp {
    Stamp {
        base_offset: view.base_offset(),
        term: view.term(),
        append_time_ms: view.append_time_ms(),
        topic_id: view.topic_id(),
        partition: view.partition(),
    }
}

fn stored_checks(buf: &[u8]) {
    let Ok(kind) = check_stored_batch(buf) else {
        return;
    };
    let view = BatchView(buf);
    assert_eq!(view.kind(), Some(kind));
    assert!(
        header_crc_ok(buf),
        "a stored batch passes recovery's light check"
    );
    let walk = record_walk(buf);
    assert_eq!(walk.records, u64::from(view.record_count()));
    match kind {
        BatchKind::Data => assert_eq!(check_producer_batch(buf), Ok(view.record_count())),
        BatchKind::Control => control_checks(buf),
    }
    // Stamping a stored batch with its own fields changes nothing.
    let mut again = buf.to_vec();
    stamp(&mut again, &stamp_of(view));
    assert_eq!(again, buf);
}

/// Decodes a control batch; a message that decodes must survive an
/// encode/decode round trip.
fn control_checks(buf: &[u8]) {
    let Ok(c) = control::decode(buf) else {
        return;
    };
    let mut builder = BatchBuilder::with_kind(BatchKind::Control);
    let encoded = control::encode(&c, &mut builder).to_vec();
    assert_eq!(
        check_producer_batch(&encoded),
        Err(BatchError::Field("kind"))
    );
    assert_eq!(control::decode(&encoded).ok(), Some(c));
}

/// [`split_batches`] yields contiguous batches of at least a header each,
/// and stops only where the next one does not fit.
fn split_checks(buf: &[u8]) {
    let mut at = 0;
    for b in split_batches(buf) {
        assert_eq!(
            b.as_ptr() as usize - buf.as_ptr() as usize,
            at,
            "batches are contiguous"
        );
        assert!(b.len() >= BATCH_HEADER_LEN);
        assert_eq!(declared_len(b), Some(b.len()));
        stored_checks(b);
        at += b.len();
    }
    let rest = &buf[at..];
    if let Some(len) = declared_len(rest) {
        assert!(
            len < BATCH_HEADER_LEN || len > rest.len(),
            "split stopped early"
        );
    }
}

/// Recomputes both checksums of every batch that `buf` walks to by its
/// declared lengths (stopping where a length does not fit), in place.
pub fn seal_batches(buf: &mut [u8]) {
    let mut at = 0;
    while let Some(len) = declared_len(&buf[at..]) {
        if len < BATCH_HEADER_LEN || len > buf.len() - at {
            return;
        }
        let b = &mut buf[at..at + len];
        let crc = crc32c::crc32c(&b[BATCH_CRC_FROM..]);
        set_u32(b, BATCH_CRC_AT, crc);
        assert_eq!(BatchView(b).crc(), crc, "BATCH_CRC_AT matches wire::batch");
        // Restamping with the header's own fields reseals the header.
        let own = stamp_of(BatchView(b));
        stamp(b, &own);
        at += len;
    }
}

// ---------------------------------------------------------------------------
// journal_recovery

/// Journal recovery as pure logic: [`scan`] over `data` as a segment
/// (fully verified, header-checked only, and split by a checkpoint
/// position), then over `data` with every batch sealed, and
/// [`checkpoint::decode`] over `data` as it is and with its checksum
/// sealed. The scan's report must agree with the bytes: `valid_len` within
/// them, the batches contiguous from the start, each passing the check it
/// was given, and the stop reason matching what follows.
pub fn recovery(data: &[u8]) {
    scan_checks(data);
    let mut sealed = data.to_vec();
    seal_batches(&mut sealed);
    if sealed != data {
        scan_checks(&sealed);
    }

    state_file_checks(data);
    if data.len() >= CHECKPOINT_CRC_FROM {
        let mut sealed = data.to_vec();
        let crc = crc32c::crc32c(&sealed[CHECKPOINT_CRC_FROM..]);
        set_u32(&mut sealed, CHECKPOINT_CRC_AT, crc);
        if sealed != data {
            state_file_checks(&sealed);
        }
        // The start state shares the header layout: the same bytes under
        // its magic reach its decoder too.
        let mut as_start = sealed;
        as_start[..4].copy_from_slice(&start::START_MAGIC);
        state_file_checks(&as_start);
    }
}

/// The checkpoint's and the start state's decoders over `bytes`.
fn state_file_checks(bytes: &[u8]) {
    checkpoint_checks(bytes);
    start_checks(bytes);
}

/// One scan: its result and each accepted batch as (offset in the
/// segment, length).
fn scan_collect(
    bytes: &[u8],
    start_pos: u64,
    verify_from: u64,
) -> (ScanResult, Vec<(usize, usize)>) {
    let mut seen: Vec<(usize, usize)> = Vec::new();
    let result = scan(bytes, start_pos, verify_from, |pos, b| {
        let offset = b.as_ptr() as usize - bytes.as_ptr() as usize;
        let expected = seen.last().map_or(0, |&(o, l)| o + l);
        assert_eq!(
            offset, expected,
            "scanned batches are contiguous from the start"
        );
        assert_eq!(pos, start_pos.saturating_add(offset as u64));
        assert!(b.len() >= BATCH_HEADER_LEN);
        if pos.saturating_add(b.len() as u64) <= verify_from {
            assert!(
                header_crc_ok(b),
                "a batch below verify_from passes the header check"
            );
        } else {
            assert!(
                check_stored_batch(b).is_ok(),
                "a batch above verify_from passes the full check"
            );
        }
        seen.push((offset, b.len()));
        Ok(())
    });
    assert!(result.valid_len <= bytes.len());
    assert_eq!(result.valid_len, seen.last().map_or(0, |&(o, l)| o + l));
    let rest = &bytes[result.valid_len..];
    let no_header = rest.len() < BATCH_HEADER_LEN || rest[..8].iter().all(|&b| b == 0);
    match &result.stop {
        ScanStop::End => assert!(no_header, "End only where no batch can start"),
        ScanStop::Torn(_) => assert!(!no_header, "Torn only where a batch starts"),
        ScanStop::Refused(_) => panic!("the callback refused nothing"),
    }
    (result, seen)
}

fn scan_checks(bytes: &[u8]) {
    let (full, full_seen) = scan_collect(bytes, 0, 0);
    let (light, light_seen) = scan_collect(bytes, 0, u64::MAX);
    // A checkpoint position halfway, with the segment far into the journal.
    let start = 7 << 40;
    let (_, mid_seen) = scan_collect(bytes, start, start + bytes.len() as u64 / 2);
    // The full check implies the header check, so stricter scans accept a
    // prefix of what laxer ones accept.
    assert!(light_seen.starts_with(&mid_seen));
    assert!(mid_seen.starts_with(&full_seen));
    assert!(full.valid_len <= light.valid_len);

    // Recovery cuts the segment at valid_len; scanning the cut segment
    // finds the same batches and a clean end.
    let (cut, cut_seen) = scan_collect(&bytes[..full.valid_len], 0, 0);
    assert_eq!((cut.stop, &cut_seen), (ScanStop::End, &full_seen));

    // A refused batch stops the scan right before it.
    if let Some(&(last_offset, _)) = full_seen.last() {
        let refuse_at = full_seen.len() - 1;
        let mut calls = 0;
        let refused = scan(bytes, 0, 0, |_, _| {
            calls += 1;
            if calls > refuse_at {
                Err("refused".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(refused.valid_len, last_offset);
        assert_eq!(refused.stop, ScanStop::Refused("refused".into()));
    }

    // What recovery then does with each batch.
    for &(offset, len) in &full_seen {
        stored_checks(&bytes[offset..offset + len]);
    }
    for &(offset, len) in &light_seen[full_seen.len()..] {
        // Below a checkpoint only the header was checked, yet recovery
        // decodes control batches and walks records there too.
        let b = &bytes[offset..offset + len];
        let _ = control::decode(b);
        record_walk(b);
    }
}

/// A start state that decodes re-encodes to exactly its bytes.
fn start_checks(bytes: &[u8]) {
    let Ok(st) = start::decode(bytes) else {
        return;
    };
    let encoded = start::encode(&st);
    // An older start state (still read) is written again as the current
    // version; a current one re-encodes to exactly its bytes.
    if bytes[4..6] == start::START_VERSION.to_le_bytes() {
        assert_eq!(
            encoded, bytes,
            "a decoded start state re-encodes to its bytes"
        );
    }
    assert_eq!(start::decode(&encoded).ok(), Some(st));
}

fn checkpoint_checks(bytes: &[u8]) {
    let Ok(cp) = checkpoint::decode(bytes) else {
        return;
    };
    let encoded = checkpoint::encode(&cp);
    assert_eq!(
        encoded, bytes,
        "a decoded checkpoint re-encodes to its bytes"
    );
    assert_eq!(checkpoint::decode(&encoded).ok(), Some(cp));
}

// ---------------------------------------------------------------------------
// journal_open

/// A fresh directory, removed on drop. (The library cannot use the
/// `tempfile` dev-dependency.) It lies under `$HUTONG_FUZZ_DIR` when that
/// is set, else under `/dev/shm` where there is one, else in the system
/// temp dir. On tmpfs an fsync costs nothing, which makes `journal_open`
/// many times faster than on a disk; tmpfs lacks
/// `FALLOC_FL_ZERO_RANGE`, so the journal takes its fallback there, and
/// `HUTONG_FUZZ_DIR=/tmp` exercises the other path.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let base = match std::env::var_os("HUTONG_FUZZ_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("hutong-fuzz-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a journal looks like from outside, to compare two opens.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    end: u64,
    topics: Vec<TopicMeta>,
    /// Per partition: the offset the next record gets, and batches indexed.
    partitions: Vec<Vec<(u64, usize)>>,
}

fn shape(j: &Journal) -> Shape {
    Shape {
        end: j.end(),
        topics: j.checkpoint_topics(),
        partitions: j
            .catalog()
            .topics()
            .iter()
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.next_offset, p.index.len()))
                    .collect()
            })
            .collect(),
    }
}

/// Opens the journal and checks that its report counts the batches its
/// indexes hold.
fn open_journal(dir: &Path) -> Result<Journal, JournalError> {
    let j = Journal::open(dir, OPEN_SEGMENT_BYTES, OPEN_CACHE_BYTES)?;
    let indexed: usize = shape(&j).partitions.iter().flatten().map(|p| p.1).sum();
    assert_eq!(j.report().batches, indexed as u64);
    Ok(j)
}

/// [`Journal::open`] on `data`, every batch sealed, laid out two ways in a
/// fresh directory each: as the only segment, `00000000000000000000.seg`,
/// padded with zeros to at least 1 KiB; and, when it holds two batches or
/// more, cut into two segments between them with a checkpoint at the cut,
/// so that the first segment gets recovery's header-only check. Opening
/// must return `Ok` or a clean `Err`. When it works, reopening finds the
/// same journal with nothing left to cut, and appending a batch (creating
/// a topic first if none has a partition) works and survives another
/// reopen.
pub fn journal_open(data: &[u8]) {
    let mut sealed = data.to_vec();
    seal_batches(&mut sealed);
    let padded = |bytes: &[u8]| {
        let mut segment = bytes.to_vec();
        segment.resize(bytes.len().max(SEGMENT_PAD_BYTES), 0);
        segment
    };
    open_checks(&[(0, padded(&sealed))], None);

    let ends: Vec<usize> = split_batches(&sealed)
        .scan(0, |end, b| {
            *end += b.len();
            Some(*end)
        })
        .collect();
    if ends.len() >= 2 {
        let cut = ends[ends.len() / 2 - 1];
        let checkpoint = Checkpoint {
            position: cut as u64,
            ..Checkpoint::default()
        };
        // The first segment's tail past its data is zeros, as the writer
        // leaves it when the next batch does not fit.
        let mut first = sealed[..cut].to_vec();
        first.resize(cut + BATCH_HEADER_LEN, 0);
        let segments = [(0, first), (cut as u64, padded(&sealed[cut..]))];
        open_checks(&segments, Some(&checkpoint));
        resume_checks(&segments, cut as u64);
    }
}

/// How a standalone broker opens its journal: from the checkpoint's
/// snapshot when it can (`from_snapshot`), else by the full walk.
fn standalone(from_snapshot: bool) -> Recovery {
    Recovery {
        entries: false,
        from_snapshot,
        ..Recovery::default()
    }
}

/// Writes `segments`, `checkpoint` and `snap` into a fresh directory and
/// opens it with `recovery`.
fn open_with(
    segments: &[(u64, Vec<u8>)],
    checkpoint: &Checkpoint,
    snap: Option<&CatalogSnapshot>,
    recovery: Recovery,
) -> (TempDir, Result<Journal, JournalError>) {
    let dir = TempDir::new().expect("create a temp dir for journal_open");
    for (start, bytes) in segments {
        std::fs::write(dir.path().join(segment_file_name(*start)), bytes)
            .expect("write an input segment");
    }
    checkpoint::write(dir.path(), checkpoint).expect("write the input checkpoint");
    if let Some(snap) = snap {
        snapshot::write(dir.path(), snap).expect("write the input snapshot");
    }
    let j = Journal::open_with(dir.path(), OPEN_SEGMENT_BYTES, OPEN_CACHE_BYTES, recovery);
    (dir, j)
}

/// The two-segment layout of [`journal_open`] with a checkpoint at the cut
/// and a snapshot of the catalog there (taken by a full walk of
/// the first segment alone): recovery from the snapshot must end with the
/// very journal the full walk of both segments finds, or fail as it does.
fn resume_checks(segments: &[(u64, Vec<u8>)], cut: u64) {
    let (_first_dir, first) = open_with(
        &segments[..1],
        &Checkpoint::default(),
        None,
        standalone(false),
    );
    let Ok(first) = first else {
        return;
    };
    if first.end() != cut {
        return;
    }
    let checkpoint = Checkpoint {
        position: cut,
        next_topic_id: first.catalog().next_topic_id(),
        topics: first.checkpoint_topics(),
    };
    let snap = first.catalog().snapshot(cut);
    drop(first);
    let (_resumed_dir, resumed) = open_with(segments, &checkpoint, Some(&snap), standalone(true));
    let (_walked_dir, walked) = open_with(segments, &checkpoint, None, standalone(false));
    match (resumed, walked) {
        (Ok(r), Ok(w)) => {
            assert_eq!(shape(&r), shape(&w), "resumed and walked journals differ");
            assert_eq!(r.report().batches, w.report().batches);
        }
        (Err(_), Err(_)) => {}
        (r, w) => panic!(
            "recovery from the snapshot gave {:?}, the full walk {:?}",
            r.map(|j| shape(&j)),
            w.map(|j| shape(&j))
        ),
    }
}

/// Writes `segments` (start position, bytes) and `checkpoint` into a fresh
/// directory and runs the checks of [`journal_open`] on it.
fn open_checks(segments: &[(u64, Vec<u8>)], checkpoint: Option<&Checkpoint>) {
    let dir = TempDir::new().expect("create a temp dir for journal_open");
    for (start, bytes) in segments {
        std::fs::write(dir.path().join(segment_file_name(*start)), bytes)
            .expect("write an input segment");
    }
    if let Some(cp) = checkpoint {
        checkpoint::write(dir.path(), cp).expect("write the input checkpoint");
    }
    let files_end = segments
        .last()
        .map_or(0, |(start, bytes)| start + bytes.len() as u64);
    let open = || open_journal(dir.path());
    let Ok(journal) = open() else {
        return;
    };
    let first = shape(&journal);
    assert!(first.end <= files_end);
    drop(journal);

    let mut journal = open().expect("a journal that opened once reopens");
    assert_eq!(shape(&journal), first, "reopening finds the same journal");
    assert_eq!(
        journal.report().truncated,
        None,
        "the first open left nothing to cut"
    );

    let slot = match journal
        .catalog()
        .topics()
        .iter()
        .position(|t| !t.partitions.is_empty())
    {
        Some(slot) => slot,
        None => {
            let mut name = String::from("fuzz");
            while journal.catalog().lookup(&name).is_some() {
                name.push('x');
            }
            let (created, slot) = match journal.create_topic(&name, 1, 1, 1) {
                Ok(created) => created,
                // The recovered topics may have used up the ids or the
                // partitions: a clean refusal.
                Err(JournalError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::InvalidInput =>
                {
                    return;
                }
                Err(e) => panic!("creating a topic after recovery failed: {e}"),
            };
            assert_eq!(created.position, first.end);
            slot
        }
    };
    let before = journal.end();
    let next_offset = journal.catalog().topic(slot).partitions[0].next_offset;
    let mut builder = BatchBuilder::new();
    builder.push(1, b"key", b"value", &[]);
    let batch = builder.finish(0, 0).to_vec();
    let appended = journal
        .append_data(slot, 0, &batch, 1, 1, 1)
        .expect("append after recovery");
    assert_eq!(
        (appended.position, appended.base_offset),
        (before, next_offset)
    );
    journal.write_out().expect("write out after recovery");
    let after = shape(&journal);
    drop(journal);

    let journal = open().expect("a journal that was appended to reopens");
    assert_eq!(shape(&journal), after, "the append survives a reopen");
    assert_eq!(journal.report().truncated, None);
    assert_eq!(
        journal.catalog().topic(slot).partitions[0].next_offset,
        next_offset + 1
    );
}

// ---------------------------------------------------------------------------
// segment_index

/// The segment index reader over `data` as an index file, as it is and
/// sealed ([`seal_index`]). The file is named for the segment start its
/// header claims (0 when it is too short to claim one), so that inputs
/// get past the name check.
///
/// Opening gives an index or [`JournalError::Corrupt`], never `Ok(None)`
/// (the file exists) or another error, and `verify` likewise. On an opened
/// index the sections are sorted and unique and `section` finds each;
/// `read_entries`, `locate` and `locate_time` on every section give
/// answers within the section, or an `InvalidData` error. When `verify`
/// accepts the file: every entry reads back, each search agrees with a
/// linear scan of the entries, and writing the entries read with
/// `seg_index::write` reproduces the file byte for byte (the format is
/// canonical).
pub fn segment_index(data: &[u8]) {
    index_checks(data);
    let mut sealed = data.to_vec();
    seal_index(&mut sealed);
    if sealed != data {
        index_checks(&sealed);
    }
}

/// Recomputes the checksums of an index file in place, reading its
/// directory as it stands: every section's `entries_crc` whose entries lie
/// within `buf`, then `header_crc` over the header and as much of the
/// directory as `buf` holds.
pub fn seal_index(buf: &mut [u8]) {
    if buf.len() < INDEX_HEADER_LEN {
        return;
    }
    let count = le_u32(buf, INDEX_SECTION_COUNT_AT) as usize;
    let dir_end = count
        .saturating_mul(INDEX_SECTION_LEN)
        .saturating_add(INDEX_HEADER_LEN)
        .min(buf.len());
    let mut at = INDEX_HEADER_LEN;
    while at + INDEX_SECTION_LEN <= dir_end {
        let n = le_u32(buf, at + INDEX_ENTRY_COUNT_AT) as usize;
        let from = le_u64(buf, at + INDEX_ENTRIES_AT_AT);
        let entries = usize::try_from(from)
            .ok()
            .and_then(|f| Some(f..f.checked_add(n.checked_mul(INDEX_ENTRY_LEN)?)?))
            .filter(|r| r.end <= buf.len());
        if let Some(r) = entries {
            let crc = crc32c::crc32c(&buf[r]);
            set_u32(buf, at + INDEX_ENTRIES_CRC_AT, crc);
        }
        at += INDEX_SECTION_LEN;
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&buf[..INDEX_HEADER_CRC_AT]),
        &buf[INDEX_HEADER_LEN..dir_end],
    );
    set_u32(buf, INDEX_HEADER_CRC_AT, crc);
}

/// The checks of [`segment_index`] on one file's bytes.
fn index_checks(bytes: &[u8]) {
    let segment_start = if bytes.len() >= INDEX_SEGMENT_START_AT + 8 {
        le_u64(bytes, INDEX_SEGMENT_START_AT)
    } else {
        0
    };
    let dir = TempDir::new().expect("create a temp dir for segment_index");
    std::fs::write(dir.path().join(index_file_name(segment_start)), bytes)
        .expect("write the input index");
    let idx = match SegmentIndex::open(dir.path(), segment_start) {
        Ok(Some(idx)) => idx,
        Ok(None) => panic!("an existing index file opened as missing"),
        Err(JournalError::Corrupt(_)) => return,
        Err(e) => panic!("opening an index failed other than as corrupt: {e}"),
    };
    assert_eq!(idx.segment_start, segment_start);
    assert!(idx.segment_start < idx.segment_end);
    let sections = idx.sections();
    let key = |s: &Section| (s.topic_id, s.partition);
    assert!(
        sections.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "sections are sorted and unique"
    );
    for s in sections {
        assert!(s.entry_count > 0);
        assert_eq!(idx.section(s.topic_id, s.partition), Some(s));
    }
    let verified = match idx.verify() {
        Ok(()) => true,
        Err(JournalError::Corrupt(_)) => false,
        Err(e) => panic!("verifying an index failed other than as corrupt: {e}"),
    };
    let entries: Vec<Vec<IndexEntry>> = sections
        .iter()
        .map(|s| section_checks(&idx, s, verified))
        .collect();
    if !verified {
        return;
    }
    let logs: Vec<std::sync::Arc<PartitionIndex>> = entries
        .iter()
        .map(|es| {
            let (mut w, r) = append_log();
            for e in es {
                w.push(*e);
            }
            r
        })
        .collect();
    let sources: Vec<SectionSource<'_>> = sections
        .iter()
        .zip(&logs)
        .map(|(s, log)| SectionSource {
            topic_id: s.topic_id,
            partition: s.partition,
            entries: &**log,
            range: 0..log.len(),
        })
        .collect();
    let out = TempDir::new().expect("create a temp dir for segment_index");
    seg_index::write(out.path(), idx.segment_start, idx.segment_end, &sources)
        .expect("the entries of a verified index are written again");
    let rewritten = std::fs::read(out.path().join(index_file_name(segment_start)))
        .expect("read the rewritten index");
    assert!(rewritten == bytes, "a verified index rewrites to its bytes");
}

/// Reads a section's entries and searches them (see [`segment_index`]);
/// returns the entries read.
fn section_checks(idx: &SegmentIndex, s: &Section, verified: bool) -> Vec<IndexEntry> {
    let failed = |e: std::io::Error| {
        assert!(!verified, "reading a verified index failed: {e}");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    };
    let mut entries = Vec::new();
    let mut out = Vec::new();
    loop {
        let from = entries.len() as u32;
        match idx.read_entries(s, from, INDEX_READ_ENTRIES, &mut out) {
            Ok(0) => break,
            Ok(n) => {
                assert!(n <= INDEX_READ_ENTRIES && n == out.len());
                entries.extend_from_slice(&out);
            }
            Err(e) => {
                failed(e);
                break;
            }
        }
    }
    for e in &entries {
        assert!(e.len > 0 && e.position >= idx.segment_start);
        assert!(e.end_position() <= idx.segment_end);
    }
    let complete = entries.len() == s.entry_count as usize;
    assert!(complete || !verified, "a verified section reads back whole");

    let mut offsets = vec![0, u64::MAX, s.first_offset.wrapping_sub(1), s.next_offset];
    let mut times = vec![
        i64::MIN,
        i64::MAX,
        s.max_time_ms,
        s.max_time_ms.wrapping_add(1),
    ];
    for e in &entries {
        offsets.extend([
            e.base_offset,
            e.next_offset().wrapping_sub(1),
            e.next_offset(),
        ]);
        times.extend([e.max_time_ms.wrapping_sub(1), e.max_time_ms]);
    }
    for offset in offsets {
        match idx.locate(s, offset) {
            Ok(i) => {
                assert!(i <= s.entry_count);
                if verified {
                    let scan = entries.iter().position(|e| e.next_offset() > offset);
                    assert_eq!(i as usize, scan.unwrap_or(entries.len()), "locate {offset}");
                }
            }
            Err(e) => failed(e),
        }
    }
    for time in times {
        match idx.locate_time(s, time) {
            Ok(i) => {
                assert!(i <= s.entry_count);
                if verified {
                    let scan = entries.iter().position(|e| e.max_time_ms >= time);
                    assert_eq!(
                        i as usize,
                        scan.unwrap_or(entries.len()),
                        "locate_time {time}"
                    );
                }
            }
            Err(e) => failed(e),
        }
    }
    entries
}

// ---------------------------------------------------------------------------
// catalog_snapshot

/// The catalog snapshot decoder (`journal::snapshot`) over `data`, read
/// from its start: it gives a snapshot or an error, never a panic or a
/// large allocation. When it gives a snapshot, encoding it writes exactly
/// the bytes decode read (the format is canonical), which decode to the
/// same snapshot; its producer states restore under the largest limits to
/// exactly what was saved, and under the smallest (window 1, one state,
/// no idle time) to at most the newest state, with its newest batch, and
/// only when it is not idle at the saved clock.
pub fn catalog_snapshot(data: &[u8]) {
    let mut r = Reader::new(data);
    let Ok(s) = snapshot::decode(&mut r) else {
        return;
    };
    let read = &data[..r.position()];
    let mut bytes = Vec::new();
    snapshot::encode(&s, &mut bytes);
    // An older body (still read) is written again as the current
    // version; a current one re-encodes to exactly its bytes.
    if read[..2] == snapshot::SNAPSHOT_VERSION.to_le_bytes() {
        assert!(bytes == read, "a decoded snapshot re-encodes to its bytes");
    }
    let mut again = Reader::new(&bytes);
    assert_eq!(snapshot::decode(&mut again).as_ref(), Ok(&s));
    assert_eq!(again.remaining(), 0);

    let largest = ProducerLimits {
        window: PRODUCER_WINDOW_MAX,
        idle_expiry_ms: u64::MAX,
        states_max: PRODUCER_STATES_MAX_LIMIT,
    };
    assert!(
        ProducerStates::restore(largest, &s.producers).save() == s.producers,
        "the producer states restore to what was saved"
    );
    let smallest = ProducerLimits {
        window: 1,
        idle_expiry_ms: 0,
        states_max: 1,
    };
    let restored = ProducerStates::restore(smallest, &s.producers).save();
    let newest: Vec<SavedState> = s
        .producers
        .states
        .last()
        .filter(|st| st.last_ms >= s.producers.clock_ms)
        .map(|st| SavedState {
            window: st.window.last().copied().into_iter().collect(),
            ..st.clone()
        })
        .into_iter()
        .collect();
    assert_eq!(restored.clock_ms, s.producers.clock_ms);
    assert!(
        restored.states == newest,
        "the smallest limits keep the newest state and batch"
    );
}

// ---------------------------------------------------------------------------
// Seeds

/// A two-record data batch as a producer builds it.
fn sample_batch() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(1_700_000_000_000, b"k1", b"hello", &[]);
    b.push(
        1_700_000_000_005,
        b"",
        b"world",
        &[hutong::wire::batch::Header {
            key: b"h",
            value: b"v",
        }],
    );
    b.finish(7, 1).to_vec()
}

fn stamped(mut batch: Vec<u8>, base_offset: u64, topic_id: u32) -> Vec<u8> {
    stamp(
        &mut batch,
        &Stamp {
            base_offset,
            term: 1,
            append_time_ms: 1_700_000_000_010,
            topic_id,
            partition: 0,
        },
    );
    batch
}

fn control_batch(id: u32, name: &str, partitions: u32) -> Vec<u8> {
    let mut b = BatchBuilder::with_kind(BatchKind::Control);
    let c = Control::CreateTopic {
        id,
        name: name.into(),
        partitions,
        config: Default::default(),
    };
    let bytes = control::encode(&c, &mut b).to_vec();
    stamped(bytes, 0, u32::MAX)
}

/// A segment as the broker writes it: a topic's control batch, then two
/// data batches of its partition 0, then `zeros` bytes of zeros.
fn sample_segment(zeros: usize) -> Vec<u8> {
    let mut seg = control_batch(1, "orders", 2);
    seg.extend(stamped(sample_batch(), 0, 1));
    seg.extend(stamped(sample_batch(), 2, 1));
    seg.resize(seg.len() + zeros, 0);
    seg
}

fn request(api: ApiKey, correlation_id: u32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    RequestHeader {
        api_key: api.as_u16(),
        api_version: 1,
        correlation_id,
        flags: 0,
    }
    .write(&mut out);
    body(&mut out);
    finish_frame(&mut out, 0);
    out
}

fn response(api: ApiKey, error: ErrorCode, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    ResponseHeader {
        correlation_id: 1,
        api_key: api.as_u16(),
        error_code: error.as_u16(),
    }
    .write(&mut out);
    body(&mut out);
    finish_frame(&mut out, 0);
    out
}

/// Replicate frames as a leader sends them: an append carrying the journal
/// bytes of `batches` (two entries), then a vote and a heartbeat.
fn replicate_seed(batches: &[u8]) -> Vec<u8> {
    use hutong::consensus::{Entry, Message, MessageKind};
    let split = split_batches(batches).next().map_or(0, <[u8]>::len) as u64;
    let end = batches.len() as u64;
    let message = |kind| Message::new(1, 2, 3, kind);
    let append = message(MessageKind::Append {
        prev_pos: 0,
        prev_term: 0,
        entries: vec![
            Entry {
                start: 0,
                end: split,
                term: 2,
            },
            Entry {
                start: split,
                end,
                term: 3,
            },
        ],
        commit: 0,
    });
    let mut out = Vec::new();
    let payload = write_frame(&append, &mut out);
    assert_eq!(payload, end);
    out.extend_from_slice(batches);
    assert!(
        decode_message(&out[REQUEST_HEADER_LEN..]).is_ok(),
        "the seed's append decodes"
    );
    for kind in [
        MessageKind::Vote {
            last_pos: end,
            last_term: 2,
            transfer: false,
        },
        MessageKind::Heartbeat { commit: end },
        MessageKind::InstallSnapshot {
            pos: end,
            snapshot_term: 3,
            commit: end,
        },
    ] {
        write_frame(&message(kind), &mut out);
    }
    // A snapshot chunk: part of a file, as a leader streams it.
    write_chunk_frame(
        &SnapshotChunk {
            from: 1,
            to: 2,
            term: 3,
            cluster_id: 0,
            pos: end,
            snapshot_term: 3,
            total_len: 64,
            offset: 16,
            bytes: &batches[..batches.len().min(32)],
        },
        &mut out,
    );
    out
}

/// An index file as the broker writes it: two partitions of topic 1 and
/// one of topic 2, their batches interleaved in a segment from 1 GiB on,
/// and (when `with_sections` is false) one for a segment with no data
/// batches at all.
fn sample_index(with_sections: bool) -> Vec<u8> {
    const START: u64 = 1 << 30;
    let mut logs: Vec<_> = (0..3).map(|_| append_log::<IndexEntry>()).collect();
    if with_sections {
        let mut position = START;
        let mut next_offsets = [0u64, 7, 1_000];
        for i in 0..12u32 {
            let p = (i % 3) as usize;
            let len = 150 + 20 * i;
            let count = 1 + i % 4;
            logs[p].0.push(IndexEntry {
                base_offset: next_offsets[p],
                position,
                len,
                count,
                max_time_ms: 1_700_000_000_000 + i64::from(i / 2) * 10,
            });
            next_offsets[p] += u64::from(count);
            position += u64::from(len);
        }
    }
    let keys = [(1, 0), (1, 1), (2, 0)];
    let sources: Vec<SectionSource<'_>> = logs
        .iter()
        .zip(keys)
        .map(|((_, log), (topic_id, partition))| SectionSource {
            topic_id,
            partition,
            entries: &**log,
            range: 0..log.len(),
        })
        .collect();
    let dir = TempDir::new().expect("create a temp dir for a seed");
    seg_index::write(dir.path(), START, START + 4096, &sources).expect("write the seed index");
    std::fs::read(dir.path().join(index_file_name(START))).expect("read the seed index")
}

/// A catalog snapshot as the broker would save it: two topics, and (when
/// `with_producers`) the producer states of three producers' six batches
/// each on three partitions, more than their windows of four hold.
fn sample_snapshot(with_producers: bool) -> Vec<u8> {
    let topic = |id: u32, name: &str, next_offsets: Vec<u64>| SnapshotTopic {
        meta: TopicMeta {
            id,
            name: name.into(),
            partitions: next_offsets.len() as u32,
        },
        created_at: Some(u64::from(id) * 100),
        config: hutong::wire::api::TopicConfig {
            retention_ms: id.is_multiple_of(2).then_some(60_000),
            retention_bytes: None,
        },
        deleted_below: next_offsets.iter().map(|&n| n / 2).collect(),
        next_offsets,
    };
    let mut producers = ProducerStates::new(ProducerLimits {
        window: 4,
        ..ProducerLimits::default()
    });
    let mut end = 1_000;
    let mut next_offsets = std::collections::HashMap::new();
    let keys = [(1, 0, 7), (1, 1, 7), (2, 0, 9), (1, 0, 8)];
    let batches = if with_producers { 6 * keys.len() } else { 0 };
    for (i, (topic_id, partition, producer_id)) in
        keys.into_iter().cycle().take(batches).enumerate()
    {
        let seq = (i / keys.len()) as u64;
        let offset = next_offsets.entry((topic_id, partition)).or_insert(0);
        *offset += 1;
        end += 300;
        producers.land(
            Key {
                topic_id,
                partition,
                producer_id,
            },
            ProducerBatch {
                id: producer_id,
                epoch: 1,
                first_seq: seq,
            },
            Landed {
                first_seq: seq,
                last_seq: seq,
                base_offset: *offset - 1,
                end,
                append_time_ms: 1_700_000_000_000 + i as i64,
            },
        );
    }
    let next = |topic_id, partition| next_offsets.get(&(topic_id, partition)).map_or(0, |o| *o);
    let mut out = Vec::new();
    snapshot::encode(
        &CatalogSnapshot {
            position: end,
            term: 0,
            next_topic_id: 3,
            cluster_id: Some((0x6875_746f_6e67, 0)),
            topics: vec![
                topic(1, "orders", vec![next(1, 0), next(1, 1)]),
                topic(2, "audit", vec![next(2, 0)]),
            ],
            producers: producers.save(),
        },
        &mut out,
    );
    out
}

/// Valid, structured inputs for each target, as (target, file name,
/// bytes): what `fuzz/seeds/<target>/<file name>` holds, so that the
/// fuzzers start from real frames, batches and segments.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let produce = request(ApiKey::Produce, 1, |out| {
        ProduceRequest {
            topic: "orders",
            partition: 0,
            qos: 2,
            timeout_ms: 5_000,
            batch: &sample_batch(),
        }
        .encode(out)
    });
    let fetch_batches = [stamped(sample_batch(), 0, 1), stamped(sample_batch(), 2, 1)].concat();
    let mut pipelined = request(ApiKey::Handshake, 1, |out| {
        HandshakeRequest {
            min_version: 1,
            max_version: 1,
            client_id: "fuzz",
        }
        .encode(out)
    });
    pipelined.extend(request(ApiKey::CreateTopic, 2, |out| {
        CreateTopicRequest {
            name: "orders",
            partitions: 2,
            config: Default::default(),
        }
        .encode(out)
    }));
    pipelined.extend(request(ApiKey::Metadata, 3, |out| {
        MetadataRequest {
            topics: vec!["orders", "audit"],
        }
        .encode(out)
    }));
    pipelined.extend(request(ApiKey::Fetch, 4, |out| {
        FetchRequest {
            topic: "orders",
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 100,
            min_bytes: 1,
        }
        .encode(out)
    }));
    pipelined.extend(request(ApiKey::ListOffsets, 5, |out| {
        ListOffsetsRequest {
            topic: "orders",
            partition: 0,
            timestamp_ms: None,
        }
        .encode(out)
    }));
    let mut responses = response(ApiKey::Handshake, ErrorCode::None, |out| {
        HandshakeResponse {
            version: 1,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT as u32,
            server: "hutong".into(),
            apis: ApiKey::ALL
                .iter()
                .map(|k| hutong::wire::api::ApiVersions {
                    api_key: k.as_u16(),
                    min_version: 1,
                    max_version: 1,
                })
                .collect(),
        }
        .encode(out)
    });
    responses.extend(response(ApiKey::Metadata, ErrorCode::None, |out| {
        MetadataResponse {
            topics: vec![hutong::wire::api::TopicMetadata {
                name: "orders".into(),
                error_code: 0,
                config: Default::default(),
                partitions: vec![hutong::wire::api::PartitionMetadata {
                    partition: 0,
                    start_offset: 0,
                    end_offset: 4,
                    bytes: 0,
                }],
            }],
        }
        .encode(out)
    }));
    responses.extend(response(ApiKey::Produce, ErrorCode::None, |out| {
        out.extend_from_slice(
            &ProduceResponse {
                base_offset: 2,
                append_time_ms: 1_700_000_000_010,
            }
            .to_bytes(),
        )
    }));
    responses.extend(response(ApiKey::ListOffsets, ErrorCode::None, |out| {
        ListOffsetsResponse {
            earliest: 0,
            latest: 4,
            time_offset: None,
        }
        .encode(out)
    }));
    responses.extend(response(ApiKey::Produce, ErrorCode::UnknownTopic, |out| {
        ErrorBody {
            message: "unknown topic",
        }
        .encode(out)
    }));
    responses.extend(response(ApiKey::ClusterStatus, ErrorCode::None, |out| {
        ClusterStatusResponse {
            node_id: 2,
            role: hutong::wire::api::ClusterRole::Follower,
            term: 3,
            leader_id: 1,
            written: 640,
            flushed: 512,
            replicated: 512,
            committed: 400,
            caught_up: true,
            nodes: vec![
                hutong::wire::api::ClusterNode {
                    id: 1,
                    addr: "10.0.0.1:7000".into(),
                },
                hutong::wire::api::ClusterNode {
                    id: 2,
                    addr: "10.0.0.2:7000".into(),
                },
            ],
        }
        .encode(out)
    }));
    responses.extend(response(ApiKey::Produce, ErrorCode::NotLeader, |out| {
        NotLeaderBody {
            message: "this broker is not the leader",
            leader_id: 1,
            leader_addr: "10.0.0.1:7000",
        }
        .encode(out)
    }));
    let fetch = response(ApiKey::Fetch, ErrorCode::None, |out| {
        FetchResponse {
            high_watermark: 4,
            start_offset: 0,
            batches: &fetch_batches,
        }
        .encode(out)
    });
    let replicate = replicate_seed(&fetch_batches);
    let checkpoint = checkpoint::encode(&Checkpoint {
        position: sample_segment(0).len() as u64,
        next_topic_id: 2,
        topics: vec![TopicMeta {
            id: 1,
            name: "orders".into(),
            partitions: 2,
        }],
    });
    let full = sample_segment(0);
    let torn = full[..full.len() - 10].to_vec();
    vec![
        ("frame_decoder", "produce_request", produce),
        ("frame_decoder", "pipelined_requests", pipelined),
        ("frame_decoder", "responses", responses),
        ("frame_decoder", "fetch_response", fetch),
        ("frame_decoder", "replicate", replicate),
        ("batch_validator", "producer_batch", sample_batch()),
        (
            "batch_validator",
            "stamped_batch",
            stamped(sample_batch(), 40, 3),
        ),
        (
            "batch_validator",
            "control_batch",
            control_batch(1, "orders", 2),
        ),
        ("batch_validator", "fetched_batches", fetch_batches),
        ("journal_recovery", "segment", sample_segment(200)),
        ("journal_recovery", "checkpoint", checkpoint),
        ("journal_open", "segment", sample_segment(200)),
        ("journal_open", "torn_segment", torn),
        ("segment_index", "index", sample_index(true)),
        (
            "segment_index",
            "index_without_sections",
            sample_index(false),
        ),
        ("catalog_snapshot", "snapshot", sample_snapshot(true)),
        (
            "catalog_snapshot",
            "snapshot_without_producers",
            sample_snapshot(false),
        ),
    ]
}
