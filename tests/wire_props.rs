//! Property tests for the wire protocol (`src/wire`): every codec round-trips,
//! no decoder or checker panics on arbitrary bytes, and record batches built
//! by `BatchBuilder` survive the producer check, stamping and the stored check
//! with every record intact, while any single corrupted byte is caught.
//!
//! The worked example in `docs/protocol.md` is checked here too, so the hex in
//! the document cannot drift from the codecs.

use hutong::config::{FRAME_BYTES_MAX_DEFAULT, SMALL_REQUEST_BYTES_MAX};
use hutong::consensus::config::{INCARNATION_MAX, POSITION_MAX, TERM_MAX};
use hutong::consensus::{Entry, Message, MessageKind};
use hutong::wire::api::{
    AlterTopicRequest, ApiVersions, ClusterNode, ClusterRole, ClusterStatusResponse,
    CreateTopicRequest, ErrorBody, FetchRequest, FetchResponse, HandshakeRequest,
    HandshakeResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    NotLeaderBody, PartitionMetadata, ProduceRequest, ProduceResponse, TopicConfig,
    TopicConfigChange, TopicMetadata, FETCH_PREFIX_LEN,
};
use hutong::wire::batch::{
    check_producer_batch, check_stored_batch, declared_len, records, split_batches, stamp,
    BatchBuilder, BatchKind, BatchView, Header, Stamp, BATCH_HEADER_LEN,
};
use hutong::wire::codec::DecodeError;
use hutong::wire::frame::{
    check_frame, finish_frame, RequestHeader, ResponseHeader, REQUEST_HEADER_LEN,
    RESPONSE_HEADER_LEN,
};
use hutong::wire::replicate::{decode_message, encode_message, payload_len, write_frame};
use hutong::wire::{ApiKey, ErrorCode, Qos};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Any UTF-8 string, up to 64 characters (at most 256 bytes, far below the
/// 65,535-byte limit of a wire string).
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,64}"
}

/// Arbitrary bytes, up to `max` of them.
fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// A `u64` that hits the edges of its range often, where overflow hides.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
}

/// An `i64` that hits the edges of its range often.
fn edgy_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1i64),
        any::<i64>(),
    ]
}

/// One record as a producer hands it to `BatchBuilder::push`.
#[derive(Debug, Clone)]
struct TestRecord {
    timestamp_ms: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// 1..=16 records whose timestamps lie within an `i32` of the first one
/// (the format stores each timestamp as an `i32` delta from the first).
fn test_records() -> impl Strategy<Value = Vec<TestRecord>> {
    let record = (
        any::<i32>(),
        blob(64),
        blob(512),
        prop::collection::vec((blob(24), blob(48)), 0..4),
    );
    (edgy_i64(), prop::collection::vec(record, 1..=16)).prop_map(|(first_ts, recs)| {
        recs.into_iter()
            .enumerate()
            .map(|(i, (delta, key, value, headers))| TestRecord {
                // The first record defines the batch's base timestamp.
                timestamp_ms: if i == 0 {
                    first_ts
                } else {
                    first_ts.wrapping_add(delta as i64)
                },
                key,
                value,
                headers,
            })
            .collect()
    })
}

fn build_batch(recs: &[TestRecord], kind: BatchKind, producer_id: u64, seq: u64) -> Vec<u8> {
    let mut b = BatchBuilder::with_kind(kind);
    for r in recs {
        let headers: Vec<Header<'_>> = r
            .headers
            .iter()
            .map(|(k, v)| Header { key: k, value: v })
            .collect();
        b.push(r.timestamp_ms, &r.key, &r.value, &headers);
    }
    b.finish(producer_id, seq).to_vec()
}

fn stamps() -> impl Strategy<Value = Stamp> {
    (
        edgy_u64(),
        edgy_u64(),
        edgy_i64(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(base_offset, term, append_time_ms, topic_id, partition)| Stamp {
                base_offset,
                term,
                append_time_ms,
                topic_id,
                partition,
            },
        )
}

/// A valid stamped batch with some bytes overwritten: arbitrary bytes are
/// almost never a plausible header, mutations of a real batch are.
fn mutated_batch() -> impl Strategy<Value = Vec<u8>> {
    (
        test_records(),
        stamps(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(recs, s, edits, cut, truncate)| {
            let mut batch = build_batch(&recs, BatchKind::Data, 0, 0);
            stamp(&mut batch, &s);
            for (at, byte) in edits {
                let i = at.index(batch.len());
                batch[i] = byte;
            }
            if truncate {
                batch.truncate(cut.index(batch.len() + 1));
            }
            batch
        })
}

/// Walks everything a consumer would do with bytes that claim to be batches.
/// Only returns; the property is that nothing in here panics.
fn consume_everything(bytes: &[u8]) {
    let _ = check_producer_batch(bytes);
    let _ = check_stored_batch(bytes);
    let _ = declared_len(bytes);
    if bytes.len() >= BATCH_HEADER_LEN {
        let v = BatchView(bytes);
        let _ = (
            v.len(),
            v.header_crc(),
            v.base_offset(),
            v.term(),
            v.append_time_ms(),
        );
        let _ = (v.topic_id(), v.partition(), v.crc(), v.version(), v.kind());
        let _ = (
            v.record_count(),
            v.first_timestamp_ms(),
            v.max_timestamp_ms(),
        );
        let _ = (v.producer_id(), v.producer_seq(), v.next_offset());
    }
    for r in records(bytes) {
        let _ = (r.offset, r.timestamp_ms, r.key.len(), r.value.len());
        for h in r.headers() {
            let _ = (h.key.len(), h.value.len());
        }
    }
    for batch in split_batches(bytes) {
        assert!(batch.len() >= BATCH_HEADER_LEN);
        let _ = check_stored_batch(batch);
        for r in records(batch) {
            let _ = r.headers().count();
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Every codec round-trips
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn request_header_round_trips_through_a_frame(
        api_key in any::<u16>(),
        api_version in any::<u16>(),
        correlation_id in any::<u32>(),
        flags in any::<u16>(),
        body in blob(300),
    ) {
        let h = RequestHeader { api_key, api_version, correlation_id, flags };
        let mut out = vec![0xEE; 3]; // a frame need not start at offset 0
        h.write(&mut out);
        out.extend_from_slice(&body);
        finish_frame(&mut out, 3);
        let frame = &out[3..];
        prop_assert_eq!(
            check_frame(frame, REQUEST_HEADER_LEN, FRAME_BYTES_MAX_DEFAULT),
            Ok(Some(REQUEST_HEADER_LEN + body.len()))
        );
        prop_assert_eq!(RequestHeader::parse(frame), h);
        // The reserved u16 is zero, and the body follows the header untouched.
        prop_assert_eq!(&frame[14..16], &[0u8, 0][..]);
        prop_assert_eq!(&frame[REQUEST_HEADER_LEN..], &body[..]);
    }

    #[test]
    fn response_header_round_trips_through_a_frame(
        correlation_id in any::<u32>(),
        api_key in any::<u16>(),
        error_code in any::<u16>(),
        body in blob(300),
    ) {
        let h = ResponseHeader { correlation_id, api_key, error_code };
        let mut out = Vec::new();
        h.write(&mut out);
        out.extend_from_slice(&body);
        finish_frame(&mut out, 0);
        prop_assert_eq!(&out[..RESPONSE_HEADER_LEN], &h.to_bytes(body.len())[..]);
        prop_assert_eq!(
            check_frame(&out, RESPONSE_HEADER_LEN, FRAME_BYTES_MAX_DEFAULT),
            Ok(Some(RESPONSE_HEADER_LEN + body.len()))
        );
        prop_assert_eq!(ResponseHeader::parse(&out), h);
    }

    #[test]
    fn pipelined_frames_are_recovered_from_any_split_of_the_stream(
        frames in prop::collection::vec((any::<u32>(), blob(64)), 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        // Many requests in flight on one connection: the stream is frames
        // back to back, and a read may end anywhere in it.
        let mut stream = Vec::new();
        for (i, (cid, body)) in frames.iter().enumerate() {
            let start = stream.len();
            RequestHeader { api_key: 1, api_version: 1, correlation_id: *cid, flags: 0 }
                .write(&mut stream);
            stream.extend_from_slice(body);
            finish_frame(&mut stream, start);
            prop_assert_eq!(stream.len() - start, REQUEST_HEADER_LEN + frames[i].1.len());
        }
        let received = cut.index(stream.len() + 1);
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            match check_frame(&stream[at..received], REQUEST_HEADER_LEN, SMALL_REQUEST_BYTES_MAX) {
                Ok(Some(total)) => {
                    let h = RequestHeader::parse(&stream[at..at + total]);
                    seen.push((h.correlation_id, stream[at + REQUEST_HEADER_LEN..at + total].to_vec()));
                    at += total;
                }
                Ok(None) => break,
                Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
            }
        }
        prop_assert_eq!(&seen[..], &frames[..seen.len()]);
        if received == stream.len() {
            prop_assert_eq!(seen.len(), frames.len());
        }
    }

    #[test]
    fn handshake_request_round_trips(
        min_version in any::<u16>(),
        max_version in any::<u16>(),
        client_id in text(),
    ) {
        let req = HandshakeRequest { min_version, max_version, client_id: &client_id };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(out.len(), 6 + client_id.len());
        prop_assert_eq!(HandshakeRequest::decode(&out), Ok(req));
    }

    #[test]
    fn handshake_response_round_trips(
        version in any::<u16>(),
        frame_bytes_max in any::<u32>(),
        server in text(),
        apis in prop::collection::vec(any::<(u16, u16, u16)>(), 0..40),
    ) {
        let resp = HandshakeResponse {
            version,
            frame_bytes_max,
            server,
            apis: apis
                .into_iter()
                .map(|(api_key, min_version, max_version)| ApiVersions { api_key, min_version, max_version })
                .collect(),
        };
        let mut out = Vec::new();
        resp.encode(&mut out);
        prop_assert_eq!(out.len(), 10 + resp.server.len() + 6 * resp.apis.len());
        prop_assert_eq!(HandshakeResponse::decode(&out), Ok(resp));
    }

    #[test]
    fn create_topic_request_round_trips(
        name in text(),
        partitions in any::<u32>(),
        ms in prop::option::of(0..u64::MAX),
        bytes in prop::option::of(0..u64::MAX),
    ) {
        let config = TopicConfig { retention_ms: ms, retention_bytes: bytes };
        let req = CreateTopicRequest { name: &name, partitions, config: TopicConfig::default() };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(out.len(), 6 + name.len());
        prop_assert_eq!(CreateTopicRequest::decode(&out), Ok(req.clone()));
        let req = CreateTopicRequest { config, ..req };
        let mut v2 = Vec::new();
        req.encode_version(2, &mut v2);
        prop_assert_eq!(v2.len(), 22 + name.len());
        prop_assert_eq!(CreateTopicRequest::decode_version(&v2, 2), Ok(req));
    }

    #[test]
    fn alter_topic_request_round_trips(
        name in text(),
        ms in prop::option::of(prop::option::of(0..u64::MAX)),
        bytes in prop::option::of(prop::option::of(0..u64::MAX)),
    ) {
        let req = AlterTopicRequest {
            topic: &name,
            change: TopicConfigChange { retention_ms: ms, retention_bytes: bytes },
        };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(out.len(), 19 + name.len());
        prop_assert_eq!(AlterTopicRequest::decode(&out), Ok(req));
    }

    #[test]
    fn metadata_request_round_trips(topics in prop::collection::vec(text(), 0..20)) {
        let req = MetadataRequest { topics: topics.iter().map(String::as_str).collect() };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(MetadataRequest::decode(&out), Ok(req));
    }

    #[test]
    fn metadata_response_round_trips(
        topics in prop::collection::vec(
            (text(), any::<u16>(), prop::collection::vec(any::<(u32, u64, u64)>(), 0..10)),
            0..10,
        ),
    ) {
        let resp = MetadataResponse {
            topics: topics
                .into_iter()
                .map(|(name, error_code, parts)| TopicMetadata {
                    config: TopicConfig {
                        retention_ms: (error_code % 3 == 0).then_some(u64::from(error_code)),
                        retention_bytes: None,
                    },
                    name,
                    error_code,
                    partitions: parts
                        .into_iter()
                        .map(|(partition, start_offset, end_offset)| PartitionMetadata {
                            partition,
                            start_offset,
                            end_offset,
                            bytes: end_offset ^ start_offset,
                        })
                        .collect(),
                })
                .collect(),
        };
        let mut out = Vec::new();
        resp.encode_version(3, &mut out);
        prop_assert_eq!(MetadataResponse::decode_version(&out, 3), Ok(resp.clone()));
        // Version 2 has no settings: they decode as the broker's.
        let mut v2 = resp;
        for t in &mut v2.topics {
            t.config = TopicConfig::default();
        }
        let mut out = Vec::new();
        v2.encode_version(2, &mut out);
        prop_assert_eq!(MetadataResponse::decode_version(&out, 2), Ok(v2.clone()));
        // Version 1 has no bytes: they decode as 0.
        let mut v1 = v2;
        for t in &mut v1.topics {
            for p in &mut t.partitions {
                p.bytes = 0;
            }
        }
        let mut out = Vec::new();
        v1.encode(&mut out);
        prop_assert_eq!(MetadataResponse::decode(&out), Ok(v1));
    }

    #[test]
    fn produce_request_round_trips(
        topic in text(),
        partition in any::<u32>(),
        qos in any::<u8>(),
        timeout_ms in any::<u32>(),
        batch in blob(400),
    ) {
        let req = ProduceRequest { topic: &topic, partition, qos, timeout_ms, batch: &batch };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(out.len(), 11 + topic.len() + batch.len());
        prop_assert_eq!(ProduceRequest::decode(&out), Ok(req));
    }

    #[test]
    fn produce_response_round_trips(base_offset in edgy_u64(), append_time_ms in edgy_i64()) {
        let resp = ProduceResponse { base_offset, append_time_ms };
        let bytes = resp.to_bytes();
        prop_assert_eq!(bytes.len(), ProduceResponse::LEN);
        prop_assert_eq!(ProduceResponse::decode(&bytes), Ok(resp));
    }

    #[test]
    fn fetch_request_round_trips(
        topic in text(),
        partition in any::<u32>(),
        offset in edgy_u64(),
        max_bytes in any::<u32>(),
        max_wait_ms in any::<u32>(),
        min_bytes in any::<u32>(),
    ) {
        let req = FetchRequest { topic: &topic, partition, offset, max_bytes, max_wait_ms, min_bytes };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(out.len(), 26 + topic.len());
        prop_assert_eq!(FetchRequest::decode(&out), Ok(req));
    }

    #[test]
    fn fetch_response_round_trips(
        high_watermark in edgy_u64(),
        start_offset in edgy_u64(),
        batches in blob(600),
    ) {
        let resp = FetchResponse { high_watermark, start_offset, batches: &batches };
        let mut out = Vec::new();
        resp.encode(&mut out);
        prop_assert_eq!(
            &out[..FETCH_PREFIX_LEN],
            &FetchResponse::prefix(high_watermark, start_offset, batches.len())[..]
        );
        prop_assert_eq!(FetchResponse::decode(&out), Ok(resp));
    }

    #[test]
    fn list_offsets_round_trips(
        topic in text(),
        partition in any::<u32>(),
        earliest in edgy_u64(),
        latest in edgy_u64(),
    ) {
        let req = ListOffsetsRequest {
            topic: &topic,
            partition,
            timestamp_ms: None,
        };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(ListOffsetsRequest::decode(&out), Ok(req));
        let req = ListOffsetsRequest {
            topic: &topic,
            partition,
            timestamp_ms: Some(earliest as i64),
        };
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(ListOffsetsRequest::decode_version(&out, 2), Ok(req));

        let resp = ListOffsetsResponse {
            earliest,
            latest,
            time_offset: None,
        };
        let mut out = Vec::new();
        resp.encode(&mut out);
        prop_assert_eq!(out.len(), 16);
        prop_assert_eq!(ListOffsetsResponse::decode(&out), Ok(resp));
    }

    #[test]
    fn error_body_round_trips(message in text()) {
        let body = ErrorBody { message: &message };
        let mut out = Vec::new();
        body.encode(&mut out);
        prop_assert_eq!(ErrorBody::decode(&out), body);
    }

    #[test]
    fn enum_wire_values_round_trip(v in any::<u16>()) {
        match ApiKey::from_u16(v) {
            Some(k) => prop_assert_eq!(k.as_u16(), v),
            None => prop_assert!(v as usize >= ApiKey::ALL.len()),
        }
        match ErrorCode::from_u16(v) {
            Some(c) => prop_assert_eq!(c.as_u16(), v),
            None => prop_assert!(v as usize >= ErrorCode::ALL.len()),
        }
        match ClusterRole::from_u8(v as u8) {
            Some(r) => prop_assert_eq!(r.as_u8(), v as u8),
            None => prop_assert!(v as u8 > ClusterRole::Standalone.as_u8()),
        }
        match Qos::from_u8(v as u8) {
            Some(q) => prop_assert_eq!(q as u8, v as u8),
            None => prop_assert!(v as u8 > Qos::All as u8),
        }
    }
}

// ---------------------------------------------------------------------------
// Arbitrary bytes never panic
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_decoder_survives_arbitrary_bytes(bytes in blob(200)) {
        let _ = HandshakeRequest::decode(&bytes);
        let _ = HandshakeResponse::decode(&bytes);
        let _ = CreateTopicRequest::decode(&bytes);
        let _ = MetadataRequest::decode(&bytes);
        let _ = MetadataResponse::decode(&bytes);
        let _ = ProduceRequest::decode(&bytes);
        let _ = ProduceResponse::decode(&bytes);
        let _ = FetchRequest::decode(&bytes);
        let _ = FetchResponse::decode(&bytes);
        let _ = ListOffsetsRequest::decode(&bytes);
        let _ = ListOffsetsResponse::decode(&bytes);
        let _ = ErrorBody::decode(&bytes);
        let _ = NotLeaderBody::decode(&bytes);
        let _ = ClusterStatusResponse::decode(&bytes);
        let _ = decode_message(&bytes);
        if bytes.len() >= REQUEST_HEADER_LEN {
            let _ = RequestHeader::parse(&bytes);
        }
        if bytes.len() >= RESPONSE_HEADER_LEN {
            let _ = ResponseHeader::parse(&bytes);
        }
    }

    #[test]
    fn decoders_survive_small_counts_and_lengths(
        // Bodies made of small integers look like plausible counts and
        // lengths, which reach deeper into the decoders than random bytes.
        bytes in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(2u8), Just(0xFFu8), any::<u8>()], 0..120),
    ) {
        let _ = HandshakeResponse::decode(&bytes);
        let _ = MetadataRequest::decode(&bytes);
        let _ = MetadataResponse::decode(&bytes);
        let _ = FetchResponse::decode(&bytes);
        let _ = ErrorBody::decode(&bytes);
        let _ = NotLeaderBody::decode(&bytes);
        let _ = ClusterStatusResponse::decode(&bytes);
        let _ = decode_message(&bytes);
    }

    #[test]
    fn check_frame_survives_arbitrary_bytes_and_keeps_its_promises(
        bytes in blob(64),
        min_len in 0usize..64,
        max_len in 0usize..(1 << 20),
    ) {
        match check_frame(&bytes, min_len, max_len) {
            Ok(Some(total)) => {
                prop_assert!(total <= bytes.len());
                prop_assert!(total >= min_len && total <= max_len);
                prop_assert_eq!(total, u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize + 4);
            }
            Ok(None) => {}
            Err(e) => {
                prop_assert!(bytes.len() >= 4);
                let code = e.code();
                prop_assert!(code == ErrorCode::FrameTooLarge || code == ErrorCode::MalformedRequest);
            }
        }
    }

    #[test]
    fn batch_checks_and_iteration_survive_arbitrary_bytes(bytes in blob(400)) {
        consume_everything(&bytes);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn batch_checks_and_iteration_survive_mutated_batches(batch in mutated_batch()) {
        consume_everything(&batch);
        // Concatenated with a valid batch, as a fetch response would be.
        let mut two = batch.clone();
        two.extend_from_slice(&build_batch(
            &[TestRecord { timestamp_ms: 1, key: vec![], value: vec![7], headers: vec![] }],
            BatchKind::Data,
            0,
            0,
        ));
        consume_everything(&two);
    }

    // -----------------------------------------------------------------------
    // Built batches are valid and keep every record
    // -----------------------------------------------------------------------

    #[test]
    fn built_batch_passes_the_producer_check_and_keeps_its_records(
        recs in test_records(),
        producer_id in any::<u64>(),
        producer_seq in any::<u64>(),
    ) {
        let batch = build_batch(&recs, BatchKind::Data, producer_id, producer_seq);
        prop_assert_eq!(check_producer_batch(&batch), Ok(recs.len() as u32));
        prop_assert_eq!(declared_len(&batch), Some(batch.len()));

        let v = BatchView(&batch);
        prop_assert_eq!(v.version(), 1);
        prop_assert_eq!(v.kind(), Some(BatchKind::Data));
        prop_assert_eq!(v.record_count() as usize, recs.len());
        prop_assert_eq!(v.first_timestamp_ms(), recs[0].timestamp_ms);
        prop_assert_eq!((v.producer_id(), v.producer_seq()), (producer_id, producer_seq));
        // The broker fields are left zero for the broker to stamp.
        prop_assert!(batch[..4].iter().chain(&batch[8..40]).all(|&b| b == 0));

        assert_records_eq(&batch, &recs, 0)?;
        prop_assert_eq!(split_batches(&batch).count(), 1);
    }

    #[test]
    fn stamped_batch_passes_the_stored_check_and_any_flipped_byte_fails_it(
        recs in test_records(),
        s in stamps(),
        control in any::<bool>(),
        mask in 1u8..=255,
    ) {
        let kind = if control { BatchKind::Control } else { BatchKind::Data };
        let mut batch = build_batch(&recs, kind, 0, 0);
        stamp(&mut batch, &s);
        prop_assert_eq!(check_stored_batch(&batch), Ok(kind));
        let v = BatchView(&batch);
        prop_assert_eq!(
            (v.base_offset(), v.term(), v.append_time_ms(), v.topic_id(), v.partition()),
            (s.base_offset, s.term, s.append_time_ms, s.topic_id, s.partition)
        );
        // Stamping leaves the producer's checksum valid.
        if kind == BatchKind::Data {
            prop_assert_eq!(check_producer_batch(&batch), Ok(recs.len() as u32));
        }
        assert_records_eq(&batch, &recs, s.base_offset)?;

        let mut bad = batch.clone();
        for i in 0..batch.len() {
            bad[i] ^= mask;
            prop_assert!(check_stored_batch(&bad).is_err(), "flipping byte {} with {:#04x} went unnoticed", i, mask);
            bad[i] ^= mask;
        }
        // Truncated or extended batches are refused too.
        prop_assert!(check_stored_batch(&batch[..batch.len() - 1]).is_err());
        let mut longer = batch.clone();
        longer.push(0);
        prop_assert!(check_stored_batch(&longer).is_err());
    }

    #[test]
    fn split_batches_returns_each_concatenated_batch(
        batches in prop::collection::vec((test_records(), stamps()), 1..5),
        tail in blob(100),
    ) {
        let mut buf = Vec::new();
        let mut built = Vec::new();
        for (recs, s) in &batches {
            let mut b = build_batch(recs, BatchKind::Data, 0, 0);
            stamp(&mut b, s);
            buf.extend_from_slice(&b);
            built.push(b);
        }
        // A partial batch at the end (a fetch cut by max_bytes never does
        // this, but a reader must still stop cleanly).
        let partial = tail.len().min(BATCH_HEADER_LEN - 1);
        buf.extend_from_slice(&tail[..partial]);
        let split: Vec<&[u8]> = split_batches(&buf).collect();
        prop_assert_eq!(split.len(), built.len());
        for (got, want) in split.iter().zip(&built) {
            prop_assert_eq!(*got, &want[..]);
        }
    }
}

fn assert_records_eq(
    batch: &[u8],
    recs: &[TestRecord],
    base_offset: u64,
) -> Result<(), TestCaseError> {
    let got: Vec<_> = records(batch).collect();
    prop_assert_eq!(got.len(), recs.len());
    for (i, (g, want)) in got.iter().zip(recs).enumerate() {
        prop_assert_eq!(g.offset, base_offset.wrapping_add(i as u64));
        prop_assert_eq!(g.timestamp_ms, want.timestamp_ms);
        prop_assert_eq!(g.key, &want.key[..]);
        prop_assert_eq!(g.value, &want.value[..]);
        let headers: Vec<(Vec<u8>, Vec<u8>)> = g
            .headers()
            .map(|h| (h.key.to_vec(), h.value.to_vec()))
            .collect();
        prop_assert_eq!(&headers, &want.headers);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The worked example of docs/protocol.md
// ---------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The batch of the worked example in docs/protocol.md, as the producer
/// builds it.
fn doc_example_batch() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(
        1_700_000_000_000,
        b"k1",
        b"hello",
        &[Header {
            key: b"src",
            value: b"cli",
        }],
    );
    b.finish(0, 0).to_vec()
}

/// The Produce request of the worked example, built with the codecs.
fn doc_example_produce_frame() -> Vec<u8> {
    let batch = doc_example_batch();
    let mut frame = Vec::new();
    RequestHeader {
        api_key: ApiKey::Produce.as_u16(),
        api_version: 1,
        correlation_id: 7,
        flags: 0,
    }
    .write(&mut frame);
    ProduceRequest {
        topic: "orders",
        partition: 0,
        qos: Qos::All as u8,
        timeout_ms: 5000,
        batch: &batch,
    }
    .encode(&mut frame);
    finish_frame(&mut frame, 0);
    frame
}

/// Its response: the batch was stored at offset 42.
fn doc_example_produce_response() -> Vec<u8> {
    response_frame(
        7,
        ApiKey::Produce,
        &ProduceResponse {
            base_offset: 42,
            append_time_ms: 1_700_000_000_123,
        }
        .to_bytes(),
    )
}

/// A Fetch response (correlation id 8) returning the same batch as stored.
fn doc_example_fetch_response() -> Vec<u8> {
    let mut batch = doc_example_batch();
    stamp(
        &mut batch,
        &Stamp {
            base_offset: 42,
            term: 1,
            append_time_ms: 1_700_000_000_123,
            topic_id: 1,
            partition: 0,
        },
    );
    let mut body = Vec::new();
    FetchResponse {
        high_watermark: 43,
        start_offset: 0,
        batches: &batch,
    }
    .encode(&mut body);
    response_frame(8, ApiKey::Fetch, &body)
}

/// An error response: a Produce (correlation id 9) to a topic that does not exist.
fn doc_example_error_response() -> Vec<u8> {
    let mut body = Vec::new();
    ErrorBody {
        message: ErrorCode::UnknownTopic.message(),
    }
    .encode(&mut body);
    let mut frame = ResponseHeader {
        correlation_id: 9,
        api_key: ApiKey::Produce.as_u16(),
        error_code: ErrorCode::UnknownTopic.as_u16(),
    }
    .to_bytes(body.len())
    .to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn response_frame(correlation_id: u32, api_key: ApiKey, body: &[u8]) -> Vec<u8> {
    let mut frame = ResponseHeader {
        correlation_id,
        api_key: api_key.as_u16(),
        error_code: ErrorCode::None.as_u16(),
    }
    .to_bytes(body.len())
    .to_vec();
    frame.extend_from_slice(body);
    frame
}

#[test]
fn protocol_doc_example_matches_the_codecs() {
    let produce = doc_example_produce_frame();
    let produced = doc_example_produce_response();
    let fetched = doc_example_fetch_response();
    let failed = doc_example_error_response();
    if std::env::var_os("HUTONG_PRINT_DOC_EXAMPLE").is_some() {
        for (name, f) in [
            ("produce", &produce),
            ("produced", &produced),
            ("fetched", &fetched),
            ("failed", &failed),
        ] {
            println!("{name} ({} bytes): {}", f.len(), hex(f));
        }
    }
    assert_eq!(hex(&produce), DOC_EXAMPLE_PRODUCE_REQUEST_HEX);
    assert_eq!(hex(&produced), DOC_EXAMPLE_PRODUCE_RESPONSE_HEX);
    assert_eq!(hex(&fetched), DOC_EXAMPLE_FETCH_RESPONSE_HEX);
    assert_eq!(hex(&failed), DOC_EXAMPLE_ERROR_RESPONSE_HEX);

    // The example decodes as the document says.
    assert_eq!(
        check_frame(&produce, REQUEST_HEADER_LEN, FRAME_BYTES_MAX_DEFAULT),
        Ok(Some(produce.len()))
    );
    let req = ProduceRequest::decode(&produce[REQUEST_HEADER_LEN..]).unwrap();
    assert_eq!(check_producer_batch(req.batch), Ok(1));
    let resp = FetchResponse::decode(&fetched[RESPONSE_HEADER_LEN..]).unwrap();
    assert_eq!(check_stored_batch(resp.batches), Ok(BatchKind::Data));
    let rec = records(resp.batches).next().unwrap();
    assert_eq!((rec.offset, rec.timestamp_ms), (42, 1_700_000_000_000));

    // The hex dumps in the document are these very frames, in this order.
    assert_eq!(
        doc_hex_dumps(),
        vec![hex(&produce), hex(&produced), hex(&fetched), hex(&failed)]
    );
}

/// The hex dumps of docs/protocol.md: blocks of lines formatted as
/// `0000  9a 00 00 00 ...  |ascii|`, each returned as one hex string.
fn doc_hex_dumps() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
    let mut dumps = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        let is_dump_line = line.len() > 6
            && line.as_bytes()[..4].iter().all(u8::is_ascii_hexdigit)
            && line[4..].starts_with("  ");
        if is_dump_line {
            let bytes = line[6..].split("  |").next().unwrap_or("");
            current
                .get_or_insert_with(String::new)
                .extend(bytes.split_whitespace());
        } else if let Some(dump) = current.take() {
            dumps.push(dump);
        }
    }
    dumps.extend(current);
    dumps
}

const DOC_EXAMPLE_PRODUCE_REQUEST_HEX: &str = concat!(
    // request header
    "9a000000040001000700000000000000",
    // produce body before the batch
    "06006f7264657273000000000488130000",
    // batch header [0, 44): broker fields (zeros from the producer), then crc
    "000000007d0000000000000000000000000000000000000000000000000000000000000000000000c086e1a2",
    // batch header [44, 88): producer fields
    "0100000001000000000000000068e5cf8b0100000068e5cf8b01000000000000000000000000000000000000",
    // one record
    "2100000000000000020000006b310500000068656c6c6f0100030073726303000000636c69",
);

const DOC_EXAMPLE_PRODUCE_RESPONSE_HEX: &str = concat!(
    // response header
    "180000000700000004000000",
    // produce response body
    "2a000000000000007b68e5cf8b010000",
);

const DOC_EXAMPLE_FETCH_RESPONSE_HEX: &str = concat!(
    // response header
    "990000000800000005000000",
    // fetch response prefix
    "2b0000000000000000000000000000007d000000",
    // batch header [0, 44): broker fields (now stamped), then crc (unchanged)
    "5b702e997d0000002a0000000000000001000000000000007b68e5cf8b0100000100000000000000c086e1a2",
    // batch header [44, 88): producer fields (unchanged)
    "0100000001000000000000000068e5cf8b0100000068e5cf8b01000000000000000000000000000000000000",
    // one record (unchanged)
    "2100000000000000020000006b310500000068656c6c6f0100030073726303000000636c69",
);

const DOC_EXAMPLE_ERROR_RESPONSE_HEX: &str = concat!(
    // response header with error code 6 (UnknownTopic)
    "170000000900000004000600",
    // error body: the message "unknown topic"
    "0d00756e6b6e6f776e20746f706963",
);

// ---------------------------------------------------------------------------
// Replication: Replicate messages, ClusterStatus, NotLeader
// ---------------------------------------------------------------------------

/// A `u64` in `0..=max` that hits the edges of the range often.
fn edgy_up_to(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(max), Just(max - 1), 0..=max]
}

/// A message's identities: incarnations up to their bound, and a cluster
/// id of any value.
fn identities() -> impl Strategy<Value = (u64, u64, u64)> {
    (
        edgy_up_to(INCARNATION_MAX),
        edgy_up_to(INCARNATION_MAX),
        edgy_u64(),
    )
}

/// `kind` from `from` to `to` in `term`, with `ids` as its identities.
fn message_of(from: u64, to: u64, term: u64, ids: (u64, u64, u64), kind: MessageKind) -> Message {
    Message {
        from,
        to,
        term,
        from_incarnation: ids.0,
        to_incarnation: ids.1,
        cluster_id: ids.2,
        kind,
    }
}

/// A valid `Append` in `term`: up to 16 contiguous entries from `prev_pos`
/// with non-decreasing terms from `prev_term` up to the message's term, and
/// payload bytes spanning them.
fn append() -> impl Strategy<Value = (Message, Vec<u8>)> {
    (
        (any::<u64>(), any::<u64>(), identities()),
        edgy_up_to(POSITION_MAX / 2),
        0u64..1000,
        prop::collection::vec((1u64..300, 0u64..3), 0..16),
        0u64..3,
        edgy_up_to(POSITION_MAX),
        any::<u8>(),
    )
        .prop_map(
            |((from, to, ids), prev_pos, prev_term, runs, extra_term, commit, fill)| {
                // Position 0 has term 0.
                let prev_term = if prev_pos == 0 { 0 } else { prev_term };
                let (mut start, mut term) = (prev_pos, prev_term);
                let mut entries = Vec::new();
                for (len, bump) in runs {
                    term += bump;
                    entries.push(Entry {
                        start,
                        end: start + len,
                        term,
                    });
                    start += len;
                }
                let payload: Vec<u8> = (0..start - prev_pos)
                    .map(|i| fill.wrapping_add(i as u8))
                    .collect();
                let kind = MessageKind::Append {
                    prev_pos,
                    prev_term,
                    entries,
                    commit,
                };
                (message_of(from, to, term + extra_term, ids, kind), payload)
            },
        )
}

/// Any message of a kind without a payload, whose fields keep every rule
/// a correct node keeps (`Message::check_fields`).
fn message_without_payload() -> impl Strategy<Value = Message> {
    let pos = || edgy_up_to(POSITION_MAX);
    let kind = move |term: u64| {
        prop_oneof![
            (pos(), 0..term).prop_map(|(last_pos, last_term)| MessageKind::PreVote {
                last_pos,
                last_term,
            }),
            (any::<bool>(), any::<bool>())
                .prop_map(|(granted, caught_up)| MessageKind::PreVoteResp { granted, caught_up }),
            (pos(), 0..term, any::<bool>()).prop_map(|(last_pos, last_term, transfer)| {
                MessageKind::Vote {
                    last_pos,
                    last_term,
                    transfer,
                }
            }),
            (any::<bool>(), any::<bool>())
                .prop_map(|(granted, caught_up)| MessageKind::VoteResp { granted, caught_up }),
            (pos(), pos(), pos(), any::<bool>()).prop_map(|(a, b, c, caught_up)| {
                let mut p = [a, b, c];
                p.sort_unstable();
                MessageKind::AppendAck {
                    matched: p[2],
                    written: p[1],
                    flushed: p[0],
                    caught_up,
                }
            }),
            (pos(), pos(), 0..=term).prop_map(|(a, b, hint_term)| MessageKind::AppendReject {
                rejected: a.max(b),
                hint_pos: a.min(b),
                hint_term,
            }),
            pos().prop_map(|commit| MessageKind::Heartbeat { commit }),
            Just(MessageKind::TimeoutNow),
            Just(MessageKind::Probe),
            Just(MessageKind::ProbeResp),
        ]
    };
    (
        edgy_u64(),
        edgy_u64(),
        identities(),
        edgy_up_to(TERM_MAX).prop_map(|t| t.max(1)),
    )
        .prop_flat_map(move |(from, to, ids, term)| {
            kind(term).prop_map(move |k| message_of(from, to, term, ids, k))
        })
}

/// One way to break a valid message so that no correct node could have
/// sent it: a term above `TERM_MAX`, a position above `POSITION_MAX` or an
/// incarnation above `INCARNATION_MAX`.
#[derive(Debug, Clone)]
enum Absurd {
    Term(u64),
    Position(u64),
    FromIncarnation(u64),
    ToIncarnation(u64),
}

fn absurd() -> impl Strategy<Value = Absurd> {
    prop_oneof![
        (TERM_MAX + 1..=u64::MAX).prop_map(Absurd::Term),
        Just(Absurd::Term(u64::MAX)),
        (POSITION_MAX + 1..=u64::MAX).prop_map(Absurd::Position),
        (INCARNATION_MAX + 1..=u64::MAX).prop_map(Absurd::FromIncarnation),
        (INCARNATION_MAX + 1..=u64::MAX).prop_map(Absurd::ToIncarnation),
    ]
}

/// `m` broken by `a`; `None` when `m` has no position to break.
fn break_message(mut m: Message, a: &Absurd) -> Option<Message> {
    match *a {
        Absurd::Term(t) => m.term = t,
        Absurd::FromIncarnation(i) => m.from_incarnation = i,
        Absurd::ToIncarnation(i) => m.to_incarnation = i,
        Absurd::Position(p) => match &mut m.kind {
            MessageKind::PreVote { last_pos, .. } | MessageKind::Vote { last_pos, .. } => {
                *last_pos = p
            }
            MessageKind::Heartbeat { commit } => *commit = p,
            MessageKind::AppendAck { matched, .. } => *matched = p,
            MessageKind::AppendReject { rejected, .. } => *rejected = p,
            _ => return None,
        },
    }
    Some(m)
}

/// Any valid message of any kind, with its payload.
fn message() -> impl Strategy<Value = (Message, Vec<u8>)> {
    prop_oneof![
        append(),
        message_without_payload().prop_map(|m| (m, Vec::new())),
    ]
}

/// The body of `m` with `payload` after it, as a peer receives it.
fn replicate_body(m: &Message, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(m, &mut out);
    out.extend_from_slice(payload);
    out
}

/// One edit of a valid body: overwrite a byte, cut the end, insert a byte.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Cut(usize),
    Insert(usize, u8),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        1 => any::<usize>().prop_map(Edit::Cut),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(body: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        match *e {
            Edit::Set(at, b) if !body.is_empty() => {
                let at = at % body.len();
                body[at] = b;
            }
            Edit::Cut(at) => body.truncate(at % (body.len() + 1)),
            Edit::Insert(at, b) => body.insert(at % (body.len() + 1), b),
            Edit::Set(..) => {}
        }
    }
}

fn cluster_status() -> impl Strategy<Value = ClusterStatusResponse> {
    (
        (edgy_u64(), 0u8..=4, edgy_u64(), edgy_u64()),
        (
            edgy_u64(),
            edgy_u64(),
            edgy_u64(),
            edgy_u64(),
            any::<bool>(),
        ),
        prop::collection::vec((edgy_u64(), text()), 0..8),
    )
        .prop_map(
            |(
                (node_id, role, term, leader_id),
                (written, flushed, replicated, committed, caught_up),
                nodes,
            )| {
                ClusterStatusResponse {
                    node_id,
                    role: ClusterRole::from_u8(role).unwrap(),
                    term,
                    leader_id,
                    written,
                    flushed,
                    replicated,
                    committed,
                    caught_up,
                    nodes: nodes
                        .into_iter()
                        .map(|(id, addr)| ClusterNode { id, addr })
                        .collect(),
                }
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn replicate_messages_round_trip_with_their_payload((m, payload) in message()) {
        prop_assert_eq!(payload_len(&m), payload.len() as u64);
        let body = replicate_body(&m, &payload);
        let (decoded, bytes) = decode_message(&body).unwrap();
        prop_assert_eq!(&decoded, &m);
        prop_assert_eq!(bytes, &payload[..]);
    }

    #[test]
    fn replicate_frame_is_complete_once_its_payload_follows((m, payload) in message()) {
        let mut frame = Vec::new();
        let announced = write_frame(&m, &mut frame);
        prop_assert_eq!(announced, payload.len() as u64);
        let header_and_body = frame.len();
        frame.extend_from_slice(&payload);
        prop_assert_eq!(
            check_frame(&frame, REQUEST_HEADER_LEN, FRAME_BYTES_MAX_DEFAULT),
            Ok(Some(frame.len()))
        );
        if !payload.is_empty() {
            prop_assert_eq!(
                check_frame(&frame[..header_and_body], REQUEST_HEADER_LEN, FRAME_BYTES_MAX_DEFAULT),
                Ok(None)
            );
        }
        let h = RequestHeader::parse(&frame);
        prop_assert_eq!(
            (h.api_key, h.api_version, h.correlation_id),
            (ApiKey::Replicate.as_u16(), 1, 0)
        );
        let (decoded, bytes) = decode_message(&frame[REQUEST_HEADER_LEN..]).unwrap();
        prop_assert_eq!(decoded, m);
        prop_assert_eq!(bytes, &payload[..]);
    }

    #[test]
    fn replicate_decoder_survives_edited_messages_and_stays_canonical(
        (m, payload) in message(),
        edits in edits(),
    ) {
        let mut body = replicate_body(&m, &payload);
        apply(&mut body, &edits);
        // Whatever decodes must be the only encoding of what it decodes to,
        // so an edit either fails or yields another valid message.
        if let Ok((decoded, bytes)) = decode_message(&body) {
            prop_assert_eq!(payload_len(&decoded), bytes.len() as u64);
            prop_assert_eq!(replicate_body(&decoded, bytes), body);
            prop_assert_eq!(decoded.check_fields(), Ok(()));
        }
    }

    #[test]
    fn replicate_decoder_refuses_absurd_terms_and_positions(
        m in message_without_payload(),
        a in absurd(),
    ) {
        if let Some(bad) = break_message(m, &a) {
            let body = replicate_body(&bad, &[]);
            prop_assert!(matches!(decode_message(&body), Err(DecodeError::InvalidValue { .. })), "{:?}", bad);
        }
    }

    #[test]
    fn replicate_decoder_survives_arbitrary_appends(
        // A plausible head and the Append kind, then small integers that
        // look like counts, positions and lengths.
        head in prop::collection::vec(any::<u8>(), 48),
        rest in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..200),
    ) {
        let body = [&head[..], &[4], &rest].concat();
        if let Ok((decoded, bytes)) = decode_message(&body) {
            prop_assert_eq!(replicate_body(&decoded, bytes), body);
            prop_assert_eq!(decoded.check_fields(), Ok(()));
        }
    }

    #[test]
    fn cluster_status_round_trips(resp in cluster_status()) {
        let mut out = Vec::new();
        resp.encode(&mut out);
        prop_assert_eq!(ClusterStatusResponse::decode(&out), Ok(resp));
    }

    #[test]
    fn not_leader_body_round_trips(message in text(), leader_id in edgy_u64(), leader_addr in text()) {
        let body = NotLeaderBody { message: &message, leader_id, leader_addr: &leader_addr };
        let mut out = Vec::new();
        body.encode(&mut out);
        prop_assert_eq!(NotLeaderBody::decode(&out), body);
        prop_assert_eq!(ErrorBody::decode(&out).message, message.as_str());
    }
}
