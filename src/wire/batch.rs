//! The record batch: the unit a producer sends, the journal stores, the
//! replicator ships and a consumer fetches. Defined once here because the
//! same bytes travel the wire and lie on disk.
//!
//! ```text
//! offset size field              written by  covered by
//!  0     4    header_crc         broker      -           CRC32C of bytes [4, 44)
//!  4     4    batch_len          producer    header_crc  whole batch, header included
//!  8     8    base_offset        broker      header_crc  offset of the first record
//! 16     8    term               broker      header_crc  leader term that wrote it
//! 24     8    append_time_ms     broker      header_crc  broker clock, Unix ms
//! 32     4    topic_id           broker      header_crc
//! 36     4    partition          broker      header_crc
//! 40     4    crc                producer    header_crc  CRC32C of bytes [44, batch_len)
//! 44     1    version            producer    crc         = 1
//! 45     1    kind               producer    crc         0 data, 1 control
//! 46     2    attributes         producer    crc         0 (compression later)
//! 48     4    record_count       producer    crc         >= 1
//! 52     4    producer_epoch     producer    crc         0 when unused
//! 56     8    first_timestamp_ms producer    crc
//! 64     8    max_timestamp_ms   producer    crc
//! 72     8    producer_id        producer    crc         0 = none
//! 80     8    producer_seq       producer    crc
//! 88     ...  records            producer    crc
//! ```
//!
//! A record:
//! ```text
//! u32 record_len (bytes after this field) | i32 timestamp_delta_ms |
//! u32 key_len | key | u32 value_len | value | u16 header_count |
//! header_count × (u16 key_len | key | u32 value_len | value)
//! ```
//! The broker never re-encodes a batch: it checks `crc`, stamps the broker
//! fields and seals them with `header_crc`, so every stored byte is covered
//! by a checksum while the producer's checksum stays valid end to end.

use super::codec::{le_u32, le_u64, set_u32, set_u64, DecodeError, Put, Reader};
use thiserror::Error;

/// Bytes of the batch header.
pub const BATCH_HEADER_LEN: usize = 88;
/// The only batch format version so far.
pub const BATCH_VERSION: u8 = 1;
/// Bytes of a record with an empty key, empty value and no headers.
pub const RECORD_OVERHEAD: usize = 18;

const AT_HEADER_CRC: usize = 0;
const AT_LEN: usize = 4;
const AT_BASE_OFFSET: usize = 8;
const AT_TERM: usize = 16;
const AT_APPEND_TIME: usize = 24;
const AT_TOPIC_ID: usize = 32;
const AT_PARTITION: usize = 36;
const AT_CRC: usize = 40;
const AT_VERSION: usize = 44;
const AT_KIND: usize = 45;
const AT_ATTRIBUTES: usize = 46;
const AT_RECORD_COUNT: usize = 48;
const AT_PRODUCER_EPOCH: usize = 52;
const AT_FIRST_TS: usize = 56;
const AT_MAX_TS: usize = 64;
const AT_PRODUCER_ID: usize = 72;
const AT_PRODUCER_SEQ: usize = 80;

const _: () = assert!(AT_PRODUCER_SEQ + 8 == BATCH_HEADER_LEN);

/// What a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// Producer records.
    Data = 0,
    /// Broker metadata (topic creation, ...), written by the broker only.
    Control = 1,
}

/// Why a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BatchError {
    /// Shorter than a header, or `batch_len` disagrees with the bytes given.
    #[error("batch length {declared} does not match {actual} bytes")]
    Length { declared: usize, actual: usize },
    /// Unknown format version.
    #[error("unsupported batch version {0}")]
    Version(u8),
    /// A field is outside its range (kind, attributes, count).
    #[error("invalid batch field {0}")]
    Field(&'static str),
    /// The producer checksum does not match.
    #[error("batch checksum mismatch")]
    Crc,
    /// The broker header checksum does not match.
    #[error("batch header checksum mismatch")]
    HeaderCrc,
    /// A record's key or value is above the broker's limit.
    #[error("a record key or value is above the size limit")]
    RecordTooLarge,
    /// The records do not fill the batch exactly as `record_count` says.
    #[error("records malformed: {0}")]
    Records(&'static str),
}

/// The broker-stamped fields of a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Offset of the first record in its partition.
    pub base_offset: u64,
    /// Leader term that appended the batch.
    pub term: u64,
    /// Broker clock at append, Unix milliseconds.
    pub append_time_ms: i64,
    /// The topic's broker-assigned id.
    pub topic_id: u32,
    /// The partition within the topic.
    pub partition: u32,
}

/// The producer fields of a batch (docs/protocol.md §9.1): who sent it,
/// in which epoch of its sequences, and its sequence number in that epoch
/// for its partition. All 0 for a batch without producer identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ProducerStamp {
    /// Producer id; 0 = none (the batch is not deduplicated).
    pub id: u64,
    /// Producer epoch, bumped when the producer restarts its sequences.
    pub epoch: u32,
    /// Sequence number: 0 for the first batch of an epoch on a partition,
    /// then one more per batch.
    pub seq: u64,
}

/// Writes the producer fields into a finished batch and recomputes the
/// producer checksum (`crc` covers them). The caller guarantees the slice
/// is one whole batch of at least [`BATCH_HEADER_LEN`] bytes; the broker
/// fields are left alone.
pub fn stamp_producer(batch: &mut [u8], producer: ProducerStamp) {
    set_u32(batch, AT_PRODUCER_EPOCH, producer.epoch);
    set_u64(batch, AT_PRODUCER_ID, producer.id);
    set_u64(batch, AT_PRODUCER_SEQ, producer.seq);
    let crc = crc32c::crc32c(&batch[AT_VERSION..]);
    set_u32(batch, AT_CRC, crc);
}

/// A read-only view of a batch's header fields. The caller guarantees the
/// slice holds at least [`BATCH_HEADER_LEN`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a>(pub &'a [u8]);

impl<'a> BatchView<'a> {
    /// `batch_len`: total bytes of the batch.
    pub fn len(&self) -> usize {
        le_u32(self.0, AT_LEN) as usize
    }
    /// Never true for a valid batch; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The broker header checksum.
    pub fn header_crc(&self) -> u32 {
        le_u32(self.0, AT_HEADER_CRC)
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        le_u64(self.0, AT_BASE_OFFSET)
    }
    /// Term of the leader that appended it.
    pub fn term(&self) -> u64 {
        le_u64(self.0, AT_TERM)
    }
    /// Broker append time, Unix ms.
    pub fn append_time_ms(&self) -> i64 {
        le_u64(self.0, AT_APPEND_TIME) as i64
    }
    /// Broker-assigned topic id.
    pub fn topic_id(&self) -> u32 {
        le_u32(self.0, AT_TOPIC_ID)
    }
    /// Partition number.
    pub fn partition(&self) -> u32 {
        le_u32(self.0, AT_PARTITION)
    }
    /// The producer checksum.
    pub fn crc(&self) -> u32 {
        le_u32(self.0, AT_CRC)
    }
    /// Format version.
    pub fn version(&self) -> u8 {
        self.0[AT_VERSION]
    }
    /// Data or control; `None` for an unknown kind byte.
    pub fn kind(&self) -> Option<BatchKind> {
        match self.0[AT_KIND] {
            0 => Some(BatchKind::Data),
            1 => Some(BatchKind::Control),
            _ => None,
        }
    }
    /// Records in the batch.
    pub fn record_count(&self) -> u32 {
        le_u32(self.0, AT_RECORD_COUNT)
    }
    /// Timestamp of the first record, Unix ms.
    pub fn first_timestamp_ms(&self) -> i64 {
        le_u64(self.0, AT_FIRST_TS) as i64
    }
    /// Largest record timestamp, Unix ms.
    pub fn max_timestamp_ms(&self) -> i64 {
        le_u64(self.0, AT_MAX_TS) as i64
    }
    /// Producer id (0 = none).
    pub fn producer_id(&self) -> u64 {
        le_u64(self.0, AT_PRODUCER_ID)
    }
    /// Producer epoch: bumped by a producer that restarts its sequences.
    pub fn producer_epoch(&self) -> u32 {
        le_u32(self.0, AT_PRODUCER_EPOCH)
    }
    /// Producer sequence number (per producer, epoch and partition).
    pub fn producer_seq(&self) -> u64 {
        le_u64(self.0, AT_PRODUCER_SEQ)
    }
    /// The producer fields together.
    pub fn producer(&self) -> ProducerStamp {
        ProducerStamp {
            id: self.producer_id(),
            epoch: self.producer_epoch(),
            seq: self.producer_seq(),
        }
    }
    /// Offset one past the last record. Wraps instead of panicking on an
    /// absurd `base_offset`, because header bytes may be unchecked.
    pub fn next_offset(&self) -> u64 {
        self.base_offset().wrapping_add(self.record_count() as u64)
    }
}

/// Checks a batch as the producer sent it: lengths, version, fields, the
/// producer checksum and the record layout. Returns the record count.
///
/// # Errors
/// [`BatchError`] naming the first problem found.
pub fn check_producer_batch(buf: &[u8]) -> Result<u32, BatchError> {
    check_body(buf, BatchKind::Data, RecordLimits::NONE)
}

/// Size limits on the records of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
}

impl RecordLimits {
    /// No limit beyond the batch's own size.
    pub const NONE: RecordLimits = RecordLimits {
        key_bytes_max: usize::MAX,
        value_bytes_max: usize::MAX,
    };
}

/// [`check_producer_batch`], also refusing any record whose key or value
/// is above `limits` with [`BatchError::RecordTooLarge`].
///
/// # Errors
/// [`BatchError`] naming the first problem found.
pub fn check_producer_batch_with(buf: &[u8], limits: RecordLimits) -> Result<u32, BatchError> {
    check_body(buf, BatchKind::Data, limits)
}

/// Checks a batch read back from the journal or received from a leader: both
/// checksums and the whole layout. `buf` must hold exactly one batch.
///
/// # Errors
/// [`BatchError`] naming the first problem found.
pub fn check_stored_batch(buf: &[u8]) -> Result<BatchKind, BatchError> {
    check_length(buf)?;
    let view = BatchView(buf);
    if crc32c::crc32c(&buf[AT_LEN..AT_VERSION]) != view.header_crc() {
        return Err(BatchError::HeaderCrc);
    }
    let kind = view.kind().ok_or(BatchError::Field("kind"))?;
    check_body(buf, kind, RecordLimits::NONE)?;
    Ok(kind)
}

/// Reads `batch_len` from the first bytes of `buf` when a header is there.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= BATCH_HEADER_LEN).then(|| le_u32(buf, AT_LEN) as usize)
}

fn check_length(buf: &[u8]) -> Result<(), BatchError> {
    let actual = buf.len();
    match declared_len(buf) {
        Some(declared) if declared == actual => Ok(()),
        Some(declared) => Err(BatchError::Length { declared, actual }),
        None => Err(BatchError::Length {
            declared: 0,
            actual,
        }),
    }
}

fn check_body(buf: &[u8], kind: BatchKind, limits: RecordLimits) -> Result<u32, BatchError> {
    check_length(buf)?;
    let view = BatchView(buf);
    if view.version() != BATCH_VERSION {
        return Err(BatchError::Version(view.version()));
    }
    if view.kind() != Some(kind) {
        return Err(BatchError::Field("kind"));
    }
    if buf[AT_ATTRIBUTES] != 0 || buf[AT_ATTRIBUTES + 1] != 0 {
        return Err(BatchError::Field("attributes"));
    }
    let count = view.record_count();
    if count == 0 {
        return Err(BatchError::Field("record_count"));
    }
    if crc32c::crc32c(&buf[AT_VERSION..]) != view.crc() {
        return Err(BatchError::Crc);
    }
    let mut records = 0u32;
    let mut r = Reader::new(&buf[BATCH_HEADER_LEN..]);
    while r.remaining() > 0 {
        let len = r
            .u32("record_len")
            .map_err(|_| BatchError::Records("truncated length"))?;
        let body = r
            .take(len as usize, "record")
            .map_err(|_| BatchError::Records("record runs past the batch"))?;
        let rec =
            parse_record(body).map_err(|_| BatchError::Records("record fields do not fit"))?;
        if rec.key.len() > limits.key_bytes_max || rec.value.len() > limits.value_bytes_max {
            return Err(BatchError::RecordTooLarge);
        }
        records += 1;
        if records > count {
            return Err(BatchError::Records("more records than record_count"));
        }
    }
    if records != count {
        return Err(BatchError::Records("fewer records than record_count"));
    }
    Ok(count)
}

/// Writes the broker fields and seals the header checksum. The caller
/// guarantees `buf` holds a batch header.
pub fn stamp(buf: &mut [u8], s: &Stamp) {
    set_u64(buf, AT_BASE_OFFSET, s.base_offset);
    set_u64(buf, AT_TERM, s.term);
    set_u64(buf, AT_APPEND_TIME, s.append_time_ms as u64);
    set_u32(buf, AT_TOPIC_ID, s.topic_id);
    set_u32(buf, AT_PARTITION, s.partition);
    let crc = crc32c::crc32c(&buf[AT_LEN..AT_VERSION]);
    set_u32(buf, AT_HEADER_CRC, crc);
}

/// One header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header name.
    pub key: &'a [u8],
    /// Header value.
    pub value: &'a [u8],
}

/// One record of a batch, borrowed from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Producer timestamp, Unix ms.
    pub timestamp_ms: i64,
    /// The key (empty when none).
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    headers: &'a [u8],
    header_count: u16,
}

impl<'a> Record<'a> {
    /// The record's headers.
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + 'a {
        let mut r = Reader::new(self.headers);
        (0..self.header_count).map_while(move |_| {
            let key = r.take_u16_prefixed()?;
            let value = r.bytes("header value").ok()?;
            Some(Header { key, value })
        })
    }
}

impl<'a> Reader<'a> {
    fn take_u16_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.u16("header key").ok()? as usize;
        self.take(len, "header key").ok()
    }
}

struct RawRecord<'a> {
    ts_delta: i32,
    key: &'a [u8],
    value: &'a [u8],
    headers: &'a [u8],
    header_count: u16,
}

fn parse_record(body: &[u8]) -> Result<RawRecord<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let ts_delta = r.i32("timestamp_delta")?;
    let key = r.bytes("key")?;
    let value = r.bytes("value")?;
    let header_count = r.u16("header_count")?;
    let start = r.position();
    for _ in 0..header_count {
        r.take_u16_prefixed().ok_or(DecodeError::Truncated {
            field: "header",
            needed: 1,
        })?;
        r.bytes("header value")?;
    }
    let headers = &body[start..r.position()];
    r.finish()?;
    Ok(RawRecord {
        ts_delta,
        key,
        value,
        headers,
        header_count,
    })
}

/// Iterates the records of a batch that passed a check. Iteration stops
/// quietly at the first malformed record, so unchecked bytes never panic.
pub fn records(batch: &[u8]) -> RecordIter<'_> {
    let (base, first_ts) = if batch.len() >= BATCH_HEADER_LEN {
        let v = BatchView(batch);
        (v.base_offset(), v.first_timestamp_ms())
    } else {
        (0, 0)
    };
    RecordIter {
        reader: Reader::new(batch.get(BATCH_HEADER_LEN..).unwrap_or(&[])),
        next_offset: base,
        first_ts,
    }
}

/// Iterator over the records of one batch.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    reader: Reader<'a>,
    next_offset: u64,
    first_ts: i64,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        let body = self.reader.bytes("record").ok()?;
        let raw = parse_record(body).ok()?;
        let offset = self.next_offset;
        // Wraps like the timestamp: a corrupt or absurd base offset must not
        // panic a reader (overflow checks are on in debug builds).
        self.next_offset = self.next_offset.wrapping_add(1);
        Some(Record {
            offset,
            timestamp_ms: self.first_ts.wrapping_add(raw.ts_delta as i64),
            key: raw.key,
            value: raw.value,
            headers: raw.headers,
            header_count: raw.header_count,
        })
    }
}

/// Splits a buffer of concatenated batches (a fetch response) into batches.
/// Stops at the first batch whose length does not fit.
pub fn split_batches(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = declared_len(buf)?;
        if len < BATCH_HEADER_LEN || len > buf.len() {
            return None;
        }
        let (batch, rest) = buf.split_at(len);
        buf = rest;
        Some(batch)
    })
}

/// Builds a producer batch in a reusable buffer (no allocation once the
/// buffer has grown to the batch size).
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    first_ts: i64,
    max_ts: i64,
    kind: BatchKind,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty data batch.
    pub fn new() -> Self {
        Self::with_kind(BatchKind::Data)
    }

    /// An empty batch of the given kind (control batches are the broker's).
    pub fn with_kind(kind: BatchKind) -> Self {
        let mut b = BatchBuilder {
            buf: Vec::with_capacity(4096),
            count: 0,
            first_ts: 0,
            max_ts: 0,
            kind,
        };
        b.clear();
        b
    }

    /// Forgets the records, keeping the buffer's capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(BATCH_HEADER_LEN, 0);
        self.count = 0;
        self.first_ts = 0;
        self.max_ts = 0;
    }

    /// Records added so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch would take if finished now.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Adds a record. The first record's timestamp becomes the batch base.
    pub fn push(&mut self, timestamp_ms: i64, key: &[u8], value: &[u8], headers: &[Header<'_>]) {
        if self.count == 0 {
            self.first_ts = timestamp_ms;
            self.max_ts = timestamp_ms;
        }
        self.max_ts = self.max_ts.max(timestamp_ms);
        let headers_len: usize = headers
            .iter()
            .map(|h| 6 + h.key.len() + h.value.len())
            .sum();
        let record_len = RECORD_OVERHEAD - 4 + key.len() + value.len() + headers_len;
        self.buf.put_u32(record_len as u32);
        let delta = timestamp_ms.wrapping_sub(self.first_ts);
        self.buf
            .put_i32(delta.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        self.buf.put_bytes(key);
        self.buf.put_bytes(value);
        self.buf.put_u16(headers.len() as u16);
        for h in headers {
            self.buf.put_u16(h.key.len() as u16);
            self.buf.extend_from_slice(h.key);
            self.buf.put_bytes(h.value);
        }
        self.count += 1;
    }

    /// Writes the header and checksum and returns the finished batch bytes.
    /// `producer_id`/`producer_seq` identify the batch for idempotent retry
    /// (0 when unused); the producer epoch is 0 (see
    /// [`BatchBuilder::finish_with`]).
    pub fn finish(&mut self, producer_id: u64, producer_seq: u64) -> &[u8] {
        self.finish_with(ProducerStamp {
            id: producer_id,
            epoch: 0,
            seq: producer_seq,
        })
    }

    /// As [`BatchBuilder::finish`], with every producer field.
    pub fn finish_with(&mut self, producer: ProducerStamp) -> &[u8] {
        let len = self.buf.len();
        let b = &mut self.buf;
        b[..AT_VERSION].fill(0);
        set_u32(b, AT_LEN, len as u32);
        b[AT_VERSION] = BATCH_VERSION;
        b[AT_KIND] = self.kind as u8;
        b[AT_ATTRIBUTES] = 0;
        b[AT_ATTRIBUTES + 1] = 0;
        set_u32(b, AT_RECORD_COUNT, self.count);
        set_u64(b, AT_FIRST_TS, self.first_ts as u64);
        set_u64(b, AT_MAX_TS, self.max_ts as u64);
        stamp_producer(b, producer);
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(1000, b"k1", b"hello", &[]);
        b.push(
            1005,
            b"",
            b"world",
            &[Header {
                key: b"h",
                value: b"v",
            }],
        );
        b.finish(0, 0).to_vec()
    }

    #[test]
    fn built_batch_passes_the_producer_check() {
        let batch = sample();
        assert_eq!(check_producer_batch(&batch), Ok(2));
    }

    #[test]
    fn stamped_batch_passes_the_stored_check_and_keeps_records() {
        let mut batch = sample();
        stamp(
            &mut batch,
            &Stamp {
                base_offset: 40,
                term: 3,
                append_time_ms: 7,
                topic_id: 2,
                partition: 1,
            },
        );
        assert_eq!(check_stored_batch(&batch), Ok(BatchKind::Data));
        let v = BatchView(&batch);
        assert_eq!(
            (v.base_offset(), v.term(), v.topic_id(), v.partition()),
            (40, 3, 2, 1)
        );
        let recs: Vec<_> = records(&batch).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].offset, recs[0].key, recs[0].value),
            (40, &b"k1"[..], &b"hello"[..])
        );
        assert_eq!((recs[1].offset, recs[1].timestamp_ms), (41, 1005));
        let h: Vec<_> = recs[1].headers().collect();
        assert_eq!(
            h,
            vec![Header {
                key: b"h",
                value: b"v"
            }]
        );
    }

    #[test]
    fn any_flipped_byte_fails_the_stored_check() {
        let mut batch = sample();
        stamp(&mut batch, &Stamp::default());
        for i in 0..batch.len() {
            let mut bad = batch.clone();
            bad[i] ^= 0x5a;
            assert!(check_stored_batch(&bad).is_err(), "byte {i} not covered");
        }
    }

    #[test]
    fn the_producer_fields_are_stamped_and_covered_by_the_producer_crc() {
        let mut b = BatchBuilder::new();
        b.push(1000, b"k", b"v", &[]);
        let stamp = ProducerStamp {
            id: 9,
            epoch: 3,
            seq: 77,
        };
        let mut batch = b.finish_with(stamp).to_vec();
        assert_eq!(
            check_producer_batch(&batch),
            Ok(1),
            "a non-zero epoch is valid"
        );
        assert_eq!(BatchView(&batch).producer(), stamp);
        // Restamping under a new epoch keeps the batch valid...
        let next = ProducerStamp {
            epoch: 4,
            seq: 0,
            ..stamp
        };
        stamp_producer(&mut batch, next);
        assert_eq!(check_producer_batch(&batch), Ok(1));
        assert_eq!(BatchView(&batch).producer(), next);
        // ...and changing the epoch without the checksum does not.
        batch[AT_PRODUCER_EPOCH] ^= 1;
        assert_eq!(check_producer_batch(&batch), Err(BatchError::Crc));
    }

    #[test]
    fn a_flipped_record_byte_fails_the_producer_check() {
        let mut batch = sample();
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert_eq!(check_producer_batch(&batch), Err(BatchError::Crc));
    }

    #[test]
    fn wrong_record_count_is_refused_even_with_a_valid_crc() {
        let mut batch = sample();
        set_u32(&mut batch, AT_RECORD_COUNT, 3);
        let crc = crc32c::crc32c(&batch[AT_VERSION..]);
        set_u32(&mut batch, AT_CRC, crc);
        assert!(matches!(
            check_producer_batch(&batch),
            Err(BatchError::Records(_))
        ));
    }

    #[test]
    fn split_batches_walks_concatenated_batches() {
        let a = sample();
        let mut buf = a.clone();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&a[..10]);
        assert_eq!(split_batches(&buf).count(), 2);
    }
}
