//! The documented protocol choices (docs/protocol.md), checked on the wire:
//! the handshake, requests without one, QoS none answering only failures,
//! per-topic metadata errors, invalid topic names, exact bodies, and
//! fetch's batch boundaries, soft byte cap, `min_bytes` 0 and
//! end-of-partition behaviour.

mod common;

use common::{batch_of_values, BrokerProc, RawConn, TestDir};
use hutong::wire::api::{
    ClusterRole, ClusterStatusResponse, FetchRequest, FetchResponse, HandshakeRequest,
    HandshakeResponse, ListOffsetsRequest, MetadataRequest, MetadataResponse, ProduceRequest,
    PROTOCOL_VERSION,
};
use hutong::wire::batch::split_batches;
use hutong::wire::{ApiKey, ErrorCode, Qos};

#[test]
fn handshake_announces_the_version_limits_and_every_api() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect_bare(broker.addr());
    let r = c
        .request(ApiKey::Handshake, |out| {
            HandshakeRequest {
                min_version: 1,
                max_version: 9,
                client_id: "bbtest",
            }
            .encode(out)
        })
        .ok();
    let hs = HandshakeResponse::decode(&r.body).expect("decode handshake");
    assert_eq!(
        hs.version, PROTOCOL_VERSION,
        "the highest version in both ranges"
    );
    assert_eq!(
        hs.frame_bytes_max as usize,
        hutong::config::FRAME_BYTES_MAX_DEFAULT
    );
    assert!(!hs.server.is_empty(), "the broker names itself");
    for api in ApiKey::ALL {
        let entry = hs
            .apis
            .iter()
            .find(|a| a.api_key == api.as_u16())
            .unwrap_or_else(|| panic!("handshake lists {api:?}"));
        assert_eq!((entry.min_version, entry.max_version), api.versions());
    }
}

#[test]
fn handshake_without_version_1_in_range_gets_unsupported_version() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect_bare(broker.addr());
    for (min_version, max_version) in [(2u16, 5u16), (0, 0), (3, 1)] {
        c.request(ApiKey::Handshake, |out| {
            HandshakeRequest {
                min_version,
                max_version,
                client_id: "future",
            }
            .encode(out)
        })
        .expect_error(ErrorCode::UnsupportedVersion);
    }
    assert_eq!(c.ping(b"still open"), b"still open");
}

#[test]
fn requests_without_a_handshake_are_served() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect_bare(broker.addr());
    assert_eq!(c.ping(b""), b"", "an empty ping echoes nothing");
    let payload: Vec<u8> = (0..=255u8).collect();
    assert_eq!(c.ping(&payload), payload, "ping echoes every byte value");
    c.create_topic("t", 1);
    assert_eq!(c.produce_ok("t", 0, &batch_of_values(&[b"x".to_vec()])), 0);
}

#[test]
fn qos_none_answers_failures_only() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let produce = |c: &mut RawConn, topic: &str, value: &[u8]| {
        let batch = batch_of_values(&[value.to_vec()]);
        c.send(ApiKey::Produce, |out| {
            ProduceRequest {
                topic,
                partition: 0,
                qos: Qos::None as u8,
                timeout_ms: 5000,
                batch: &batch,
            }
            .encode(out)
        })
    };
    for i in 0..10u8 {
        produce(&mut c, "t", &[i]);
    }
    let failing = produce(&mut c, "missing", b"lost");
    let ping = c.send(ApiKey::Ping, |out| out.extend_from_slice(b"fence"));
    // The only answers are the failure and the ping, in either order.
    let mut got = [
        c.read_response().expect("answer"),
        c.read_response().expect("answer"),
    ];
    got.sort_by_key(|r| r.header.correlation_id != failing);
    assert_eq!(got[0].header.correlation_id, failing);
    got[0].expect_error(ErrorCode::UnknownTopic);
    assert_eq!(got[1].header.correlation_id, ping);
    assert_eq!(got[1].body, b"fence");
    common::wait_until(
        std::time::Duration::from_secs(10),
        "the QoS none messages to commit",
        || c.list_offsets("t", 0).latest == 10,
    );
    let values: Vec<Vec<u8>> = c
        .fetch_records("t", 0, 0)
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
}

#[test]
fn metadata_reports_unknown_topics_per_topic() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("known", 2);
    let r = c
        .request(ApiKey::Metadata, |out| {
            MetadataRequest {
                topics: vec!["known", "unknown", "a/b"],
            }
            .encode(out)
        })
        .ok();
    let md = MetadataResponse::decode(&r.body).expect("decode metadata");
    let by_name = |n: &str| {
        md.topics
            .iter()
            .find(|t| t.name == n)
            .unwrap_or_else(|| panic!("metadata answers for {n}: {md:?}"))
    };
    let known = by_name("known");
    assert_eq!(known.error_code, 0);
    let parts: Vec<u32> = known.partitions.iter().map(|p| p.partition).collect();
    assert_eq!(parts, vec![0, 1]);
    let unknown = by_name("unknown");
    assert_eq!(unknown.error_code, ErrorCode::UnknownTopic.as_u16());
    assert!(unknown.partitions.is_empty());
    let bad = by_name("a/b");
    assert_eq!(
        bad.error_code,
        ErrorCode::InvalidTopicName.as_u16(),
        "a/b cannot be a topic name"
    );
    assert!(bad.partitions.is_empty());
}

/// docs/protocol.md §10: a name that cannot be a topic name is refused
/// with `InvalidTopicName` by every API that names a topic, before the
/// broker looks it up (not `UnknownTopic`).
#[test]
fn a_name_that_cannot_be_a_topic_name_gets_invalid_topic_name_from_every_api() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let too_long = "x".repeat(250);
    for name in ["", "a/b", "..", "caf\u{e9}", too_long.as_str()] {
        c.produce(
            name,
            0,
            Qos::All as u8,
            5000,
            &batch_of_values(&[b"v".to_vec()]),
        )
        .expect_error(ErrorCode::InvalidTopicName);
        c.fetch(&FetchRequest {
            topic: name,
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: 0,
            min_bytes: 0,
        })
        .expect_error(ErrorCode::InvalidTopicName);
        c.request(ApiKey::ListOffsets, |out| {
            ListOffsetsRequest {
                topic: name,
                partition: 0,
                timestamp_ms: None,
            }
            .encode(out)
        })
        .expect_error(ErrorCode::InvalidTopicName);
        c.try_create_topic(name, 1)
            .expect_error(ErrorCode::InvalidTopicName);
        let r = c
            .request(ApiKey::Metadata, |out| {
                MetadataRequest { topics: vec![name] }.encode(out)
            })
            .ok();
        let md = MetadataResponse::decode(&r.body).expect("decode metadata");
        assert_eq!(md.topics.len(), 1);
        assert_eq!(
            md.topics[0].error_code,
            ErrorCode::InvalidTopicName.as_u16(),
            "metadata of {name:?}"
        );
    }
    assert_eq!(c.list_offsets("t", 0).latest, 0, "nothing was stored");
}

/// docs/protocol.md §1: bodies are exact, ClusterStatus's (empty) too.
#[test]
fn cluster_status_with_body_bytes_gets_malformed_request() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.request(ApiKey::ClusterStatus, |out| out.push(0))
        .expect_error(ErrorCode::MalformedRequest);
    let r = c.request(ApiKey::ClusterStatus, |_| {}).ok();
    let status = ClusterStatusResponse::decode(&r.body).expect("decode cluster status");
    assert_eq!(status.role, ClusterRole::Standalone);
}

/// docs/protocol.md §7.6: `min_bytes` 0 answers at once, even at the high
/// watermark where there is nothing to return. The reader serves a
/// connection's reads in order, so a fetch that waited would be answered
/// after the one behind it, which has `max_wait_ms` 0.
#[test]
fn a_fetch_with_min_bytes_0_at_the_high_watermark_answers_at_once() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    five_batches_of_four(&mut c);
    let at_end = |max_wait_ms| FetchRequest {
        topic: "t",
        partition: 0,
        offset: 20,
        max_bytes: 1 << 20,
        max_wait_ms,
        min_bytes: 0,
    };
    let patient = c.send(ApiKey::Fetch, |out| {
        at_end(hutong::wire::limits::FETCH_WAIT_MS_MAX).encode(out)
    });
    let hasty = c.send(ApiKey::Fetch, |out| at_end(0).encode(out));
    let first = c.read_response().expect("an answer");
    assert_eq!(
        first.header.correlation_id, patient,
        "the fetch with min_bytes 0 and the longest wait is answered first, at once"
    );
    let first = first.ok();
    let f = FetchResponse::decode(&first.body).expect("decode fetch");
    assert_eq!((f.high_watermark, f.batches.len()), (20, 0));
    assert_eq!(c.response_to(hasty).code(), ErrorCode::None);
}

/// Loads 5 batches of 4 records (values "b{batch}-r{record}") into t/0.
fn five_batches_of_four(c: &mut RawConn) {
    c.create_topic("t", 1);
    for b in 0..5 {
        let values: Vec<Vec<u8>> = (0..4).map(|r| format!("b{b}-r{r}").into_bytes()).collect();
        assert_eq!(c.produce_ok("t", 0, &batch_of_values(&values)), b * 4);
    }
}

fn fetch(c: &mut RawConn, offset: u64, max_bytes: u32) -> (u64, Vec<Vec<u8>>, Vec<u64>) {
    let r = c
        .fetch(&FetchRequest {
            topic: "t",
            partition: 0,
            offset,
            max_bytes,
            max_wait_ms: 0,
            min_bytes: 0,
        })
        .ok();
    let f = FetchResponse::decode(&r.body).expect("decode fetch");
    let batches: Vec<Vec<u8>> = split_batches(f.batches).map(<[u8]>::to_vec).collect();
    let total: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(total, f.batches.len(), "the answer is whole batches only");
    let offsets = common::decode_fetched(f.batches, offset)
        .into_iter()
        .map(|r| r.offset)
        .collect();
    (f.high_watermark, batches, offsets)
}

#[test]
fn a_fetch_from_the_middle_of_a_batch_returns_that_batch_whole() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    five_batches_of_four(&mut c);
    let (hw, batches, offsets) = fetch(&mut c, 10, 1 << 20);
    assert_eq!(hw, 20);
    let first = hutong::wire::batch::BatchView(&batches[0]);
    assert_eq!(first.base_offset(), 8, "the batch holding offset 10");
    assert_eq!(offsets, (10..20).collect::<Vec<_>>());
    let records = c.fetch_records("t", 0, 10);
    assert_eq!(records[0].value, b"b2-r2");
}

#[test]
fn fetch_max_bytes_is_a_soft_cap_that_never_cuts_a_batch() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    five_batches_of_four(&mut c);
    // Below one batch: the first batch still comes, whole.
    let (_, batches, offsets) = fetch(&mut c, 0, 1);
    assert_eq!(batches.len(), 1);
    assert_eq!(offsets, vec![0, 1, 2, 3]);
    // Room for exactly two batches: two come, not a byte of a third.
    let two = (batches[0].len() * 2) as u32;
    let (_, batches, _) = fetch(&mut c, 0, two);
    assert_eq!(batches.len(), 2);
    let (_, batches, _) = fetch(&mut c, 0, two + 10);
    assert_eq!(batches.len(), 2);
}

#[test]
fn a_fetch_at_the_high_watermark_is_empty_not_an_error() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    five_batches_of_four(&mut c);
    let (hw, batches, _) = fetch(&mut c, 20, 1 << 20);
    assert_eq!(hw, 20);
    assert!(batches.is_empty());
    let r = c.fetch(&FetchRequest {
        topic: "t",
        partition: 0,
        offset: 21,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
        min_bytes: 0,
    });
    r.expect_error(ErrorCode::OffsetOutOfRange);
}

#[test]
fn a_configured_frame_bytes_max_is_announced_and_enforced() {
    let dir = TestDir::new();
    let config = dir
        .config("frame_bytes_max = 2097152\nbatch_bytes_max = 1048576\nsegment_bytes = 4194304\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut c = RawConn::connect_bare(broker.addr());
    let r = c
        .request(ApiKey::Handshake, |out| {
            HandshakeRequest {
                min_version: 1,
                max_version: 1,
                client_id: "bbtest",
            }
            .encode(out)
        })
        .ok();
    let hs = HandshakeResponse::decode(&r.body).expect("decode handshake");
    assert_eq!(hs.frame_bytes_max, 2 * 1024 * 1024);
    // One byte over the limit (the length prefix counts 4 bytes less).
    let mut header = RawConn::frame(ApiKey::Produce.as_u16(), 1, 3, |_| {});
    header[..4].copy_from_slice(&(2u32 * 1024 * 1024 - 3).to_le_bytes());
    c.write_raw(&header);
    let r = c.read_response().expect("an error before the close");
    r.expect_error(ErrorCode::FrameTooLarge);
    c.expect_closed();
}

/// docs/protocol.md §9.1: a standalone broker stamps term 0 (terms belong
/// to replication groups) and numbers topics from 0 in creation order.
#[test]
fn a_standalone_broker_stamps_term_0_and_numbers_topics_from_0() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("first", 1);
    c.create_topic("second", 3);
    for (topic, partition, id) in [("first", 0, 0), ("second", 2, 1)] {
        c.produce_ok(topic, partition, &batch_of_values(&[b"v".to_vec()]));
        let r = c
            .fetch(&FetchRequest {
                topic,
                partition,
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                min_bytes: 0,
            })
            .ok();
        let f = FetchResponse::decode(&r.body).expect("decode fetch");
        let stored = hutong::wire::batch::BatchView(f.batches);
        assert_eq!(
            (stored.term(), stored.topic_id(), stored.partition()),
            (0, id, partition),
            "the stamp of {topic}/{partition}"
        );
    }
}

/// docs/protocol.md §3: v1 brokers ignore the request header's `flags`
/// and `reserved` fields (clients send 0; a later version may use them).
#[test]
fn the_flags_and_reserved_header_fields_are_ignored() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let id = c.next_id();
    let mut frame = RawConn::frame(ApiKey::ListOffsets.as_u16(), 1, id, |out| {
        ListOffsetsRequest {
            topic: "t",
            partition: 0,
            timestamp_ms: None,
        }
        .encode(out)
    });
    frame[12..16].copy_from_slice(&[0xff; 4]);
    c.write_raw(&frame);
    let r = c.response_to(id).ok();
    assert_eq!(r.header.api_key, ApiKey::ListOffsets.as_u16());
    assert_eq!(c.ping(b"still framed"), b"still framed");
}
