//! Bad bytes from the network are normal input: each gets a precise error
//! (or, when framing is lost, an error and a closed connection), and the
//! broker keeps serving everyone else. Every test ends by checking that a
//! fresh connection can still produce and consume.

mod common;

use common::{assert_broker_serves, batch_of_values, BrokerProc, RawConn, TestDir};
use hutong::wire::api::{FetchRequest, ListOffsetsRequest, ProduceRequest};
use hutong::wire::codec::Put;
use hutong::wire::frame::{RequestHeader, REQUEST_HEADER_LEN};
use hutong::wire::{ApiKey, ErrorCode, Qos};

/// A header whose length prefix announces `len` bytes after the prefix.
fn header_with_len(len: u32, api_key: u16, correlation_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    RequestHeader {
        api_key,
        api_version: 1,
        correlation_id,
        flags: 0,
    }
    .write(&mut out);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

fn produce_body(topic: &str, partition: u32, qos: u8, timeout_ms: u32, batch: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ProduceRequest {
        topic,
        partition,
        qos,
        timeout_ms,
        batch,
    }
    .encode(&mut out);
    out
}

fn one_value_batch() -> Vec<u8> {
    batch_of_values(&[b"v".to_vec()])
}

#[test]
fn truncated_frame_then_close_leaves_the_broker_serving_others() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    // A bystander connection opened before the bad one must keep working.
    let mut bystander = RawConn::connect(broker.addr());
    let mut bad = RawConn::connect(broker.addr());
    let mut frame = header_with_len(200, ApiKey::Ping.as_u16(), 77);
    frame.extend_from_slice(b"only part of the body");
    bad.write_raw(&frame);
    drop(bad);
    // Also a connection that dies inside the length prefix itself.
    let mut bad = RawConn::connect_bare(broker.addr());
    bad.write_raw(&[9, 0]);
    drop(bad);
    assert_eq!(bystander.ping(b"still there"), b"still there");
    assert_broker_serves(broker.addr());
}

#[test]
fn frame_above_the_max_frame_size_gets_frame_too_large_then_close() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    // 16 MiB of frame after the prefix is 4 bytes over the 16 MiB limit.
    let len = (hutong::config::FRAME_BYTES_MAX_DEFAULT) as u32;
    c.write_raw(&header_with_len(len, ApiKey::Produce.as_u16(), 5));
    let r = c
        .read_response()
        .expect("an error response before the close");
    r.expect_error(ErrorCode::FrameTooLarge);
    assert_eq!(
        (r.header.correlation_id, r.header.api_key),
        (5, ApiKey::Produce.as_u16()),
        "the header was readable, so its correlation id and API are echoed"
    );
    c.expect_closed();
    assert_broker_serves(broker.addr());
}

#[test]
fn frame_shorter_than_a_header_gets_malformed_request_then_close() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    // The length prefix says 4 bytes follow: less than the 12 the header needs.
    c.write_raw(&[4, 0, 0, 0, 1, 0, 1, 0]);
    let r = c
        .read_response()
        .expect("an error response before the close");
    r.expect_error(ErrorCode::MalformedRequest);
    assert_eq!(
        r.header.correlation_id, 0,
        "fewer than 12 bytes of the frame: no correlation id to echo"
    );
    c.expect_closed();
    assert_broker_serves(broker.addr());
}

#[test]
fn a_framing_error_before_12_bytes_echoes_api_key_0() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.write_raw(&[4, 0, 0, 0, 1, 0, 1, 0]);
    let r = c
        .read_response()
        .expect("an error response before the close");
    r.expect_error(ErrorCode::MalformedRequest);
    assert_eq!(
        (r.header.correlation_id, r.header.api_key),
        (0, 0),
        "docs/protocol.md section 2: api_key follows the 12-byte rule of the correlation id"
    );
}

#[test]
fn unknown_api_key_gets_unsupported_api_and_the_connection_stays_usable() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    for api_key in [999u16, ApiKey::ALL.len() as u16, u16::MAX] {
        let id = c.send_versioned(api_key, 1, |out| out.extend_from_slice(b"whatever"));
        let r = c.response_to(id);
        r.expect_error(ErrorCode::UnsupportedApi);
        assert!(!r.message().is_empty(), "the error carries a message");
    }
    assert_eq!(
        c.ping(b"after"),
        b"after",
        "the same connection still works"
    );
    assert_broker_serves(broker.addr());
}

#[test]
fn unsupported_api_version_gets_unsupported_version_and_the_connection_stays_usable() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    for version in [0u16, 2, 7, u16::MAX] {
        let id = c.send_versioned(ApiKey::Ping.as_u16(), version, |out| out.push(1));
        c.response_to(id)
            .expect_error(ErrorCode::UnsupportedVersion);
    }
    c.create_topic("t", 1);
    let body = produce_body("t", 0, Qos::All as u8, 5000, &one_value_batch());
    let id = c.send_versioned(ApiKey::Produce.as_u16(), 9, |out| {
        out.extend_from_slice(&body)
    });
    c.response_to(id)
        .expect_error(ErrorCode::UnsupportedVersion);
    assert_eq!(
        c.list_offsets("t", 0).latest,
        0,
        "the refused produce wrote nothing"
    );
    assert_eq!(c.ping(b"after"), b"after");
    assert_broker_serves(broker.addr());
}

#[test]
fn produce_with_a_wrong_batch_checksum_gets_corrupt_batch_and_writes_nothing() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let good = one_value_batch();
    // Flip a byte of the record area (covered by the producer crc).
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    c.produce("t", 0, Qos::All as u8, 5000, &bad)
        .expect_error(ErrorCode::CorruptBatch);
    // And the crc field itself.
    let mut bad = good.clone();
    bad[40] ^= 1;
    c.produce("t", 0, Qos::All as u8, 5000, &bad)
        .expect_error(ErrorCode::CorruptBatch);
    assert_eq!(c.list_offsets("t", 0).latest, 0, "nothing was written");
    assert_eq!(
        c.produce_ok("t", 0, &good),
        0,
        "the good batch gets offset 0"
    );
    assert_broker_serves(broker.addr());
}

#[test]
fn produce_with_a_structurally_invalid_batch_gets_invalid_batch() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let good = one_value_batch();
    // batch_len disagrees with the bytes sent.
    let mut bad = good.clone();
    bad.extend_from_slice(&[0u8; 8]);
    c.produce("t", 0, Qos::All as u8, 5000, &bad)
        .expect_error(ErrorCode::InvalidBatch);
    // Fewer bytes than a batch header.
    c.produce("t", 0, Qos::All as u8, 5000, &good[..40])
        .expect_error(ErrorCode::InvalidBatch);
    // No batch at all.
    c.produce("t", 0, Qos::All as u8, 5000, &[])
        .expect_error(ErrorCode::InvalidBatch);
    assert_eq!(c.list_offsets("t", 0).latest, 0, "nothing was written");
    assert_broker_serves(broker.addr());
}

#[test]
fn produce_to_an_unknown_topic_gets_unknown_topic() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.produce("nope", 0, Qos::All as u8, 5000, &one_value_batch())
        .expect_error(ErrorCode::UnknownTopic);
    let r = c.request(ApiKey::ListOffsets, |out| {
        ListOffsetsRequest {
            topic: "nope",
            partition: 0,
            timestamp_ms: None,
        }
        .encode(out)
    });
    r.expect_error(ErrorCode::UnknownTopic);
    let r = c.fetch(&FetchRequest {
        topic: "nope",
        partition: 0,
        offset: 0,
        max_bytes: 1024,
        max_wait_ms: 0,
        min_bytes: 0,
    });
    r.expect_error(ErrorCode::UnknownTopic);
    assert_broker_serves(broker.addr());
}

#[test]
fn produce_to_an_unknown_topic_creates_it_with_auto_create_topics() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &["--auto-create-topics"]);
    let mut c = RawConn::connect(broker.addr());
    let v = b"auto".to_vec();
    let base = c.produce_ok("fresh", 0, &batch_of_values(std::slice::from_ref(&v)));
    assert_eq!(base, 0);
    let got = c.fetch_records("fresh", 0, 0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, v);
    // An invalid name is still refused, not auto-created.
    c.produce("a/b", 0, Qos::All as u8, 5000, &one_value_batch())
        .expect_error(ErrorCode::InvalidTopicName);
    assert_broker_serves(broker.addr());
}

#[test]
fn produce_to_an_unknown_partition_gets_unknown_partition() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 2);
    for p in [2u32, 3, u32::MAX] {
        c.produce("t", p, Qos::All as u8, 5000, &one_value_batch())
            .expect_error(ErrorCode::UnknownPartition);
    }
    let r = c.fetch(&FetchRequest {
        topic: "t",
        partition: 2,
        offset: 0,
        max_bytes: 1024,
        max_wait_ms: 0,
        min_bytes: 0,
    });
    r.expect_error(ErrorCode::UnknownPartition);
    assert_eq!(c.produce_ok("t", 1, &one_value_batch()), 0);
    assert_broker_serves(broker.addr());
}

#[test]
fn absurd_field_values_get_precise_errors() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let b = one_value_batch();
    for qos in [5u8, 9, 255] {
        c.produce("t", 0, qos, 5000, &b)
            .expect_error(ErrorCode::InvalidQos);
    }
    c.produce("t", 0, Qos::All as u8, 0, &b)
        .expect_error(ErrorCode::InvalidTimeout);
    c.produce(
        "t",
        0,
        Qos::All as u8,
        hutong::config::PRODUCE_TIMEOUT_MS_MAX + 1,
        &b,
    )
    .expect_error(ErrorCode::InvalidTimeout);
    assert_eq!(c.list_offsets("t", 0).latest, 0, "nothing was written");
    for _ in 0..3 {
        c.produce_ok("t", 0, &b);
    }
    let fetch = |offset: u64, max_bytes: u32, max_wait_ms: u32| FetchRequest {
        topic: "t",
        partition: 0,
        offset,
        max_bytes,
        max_wait_ms,
        min_bytes: 1,
    };
    c.fetch(&fetch(0, 0, 0))
        .expect_error(ErrorCode::InvalidRequest);
    c.fetch(&fetch(4, 1024, 0))
        .expect_error(ErrorCode::OffsetOutOfRange);
    c.fetch(&fetch(u64::MAX, 1024, 0))
        .expect_error(ErrorCode::OffsetOutOfRange);
    c.fetch(&fetch(0, 1024, hutong::config::FETCH_WAIT_MS_MAX + 1))
        .expect_error(ErrorCode::InvalidTimeout);
    assert_eq!(
        c.fetch_records("t", 0, 0).len(),
        3,
        "valid fetches still work"
    );
    assert_broker_serves(broker.addr());
}

#[test]
fn topic_admin_mistakes_get_precise_errors() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    let too_long = "x".repeat(250);
    for name in ["a/b", "", ".", "..", "a b", too_long.as_str()] {
        c.try_create_topic(name, 1)
            .expect_error(ErrorCode::InvalidTopicName);
    }
    c.try_create_topic("zero", 0)
        .expect_error(ErrorCode::InvalidPartitions);
    c.try_create_topic("huge", hutong::config::PARTITIONS_PER_TOPIC_MAX_DEFAULT + 1)
        .expect_error(ErrorCode::InvalidPartitions);
    c.create_topic("twice", 3);
    c.try_create_topic("twice", 3)
        .expect_error(ErrorCode::TopicAlreadyExists);
    c.try_create_topic("twice", 5)
        .expect_error(ErrorCode::TopicAlreadyExists);
    let r = c
        .request(ApiKey::Metadata, |out| {
            hutong::wire::api::MetadataRequest { topics: vec![] }.encode(out)
        })
        .ok();
    let md = hutong::wire::api::MetadataResponse::decode(&r.body).expect("decode metadata");
    let names: Vec<&str> = md.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["twice"], "no refused topic was created");
    assert_eq!(
        md.topics[0].partitions.len(),
        3,
        "the first creation stands"
    );
    assert_broker_serves(broker.addr());
}

#[test]
fn malformed_bodies_get_malformed_request_and_the_connection_stays_usable() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    // A topic string that runs past the body.
    let id = c.send(ApiKey::Produce, |out| {
        out.put_u16(10);
        out.extend_from_slice(b"abc");
    });
    c.response_to(id).expect_error(ErrorCode::MalformedRequest);
    // Empty bodies.
    for api in [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::CreateTopic,
    ] {
        let id = c.send(api, |_| {});
        c.response_to(id).expect_error(ErrorCode::MalformedRequest);
    }
    // Trailing bytes after a complete body.
    let id = c.send(ApiKey::ListOffsets, |out| {
        ListOffsetsRequest {
            topic: "t",
            partition: 0,
            timestamp_ms: None,
        }
        .encode(out);
        out.push(0);
    });
    c.response_to(id).expect_error(ErrorCode::MalformedRequest);
    // A topic name that is not UTF-8.
    let id = c.send(ApiKey::CreateTopic, |out| {
        out.put_u16(2);
        out.extend_from_slice(&[0xff, 0xfe]);
        out.put_u32(1);
    });
    c.response_to(id).expect_error(ErrorCode::MalformedRequest);
    // A metadata request whose topic count promises more than it holds.
    let id = c.send(ApiKey::Metadata, |out| {
        out.put_u16(1000);
        out.put_str("t");
    });
    c.response_to(id).expect_error(ErrorCode::MalformedRequest);
    assert_eq!(c.ping(b"after"), b"after");
    assert_broker_serves(broker.addr());
}

#[test]
fn many_bad_connections_do_not_stop_a_good_producer() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut good = RawConn::connect(broker.addr());
    good.create_topic("t", 1);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for round in 0..50u64 {
        let mut bad = RawConn::connect_bare(broker.addr());
        let cut = (round as usize * 83) % garbage.len();
        // Either side of a frame: pure garbage, or a header then garbage.
        if round % 2 == 0 {
            let _ = std::io::Write::write_all(&mut bad.stream, &garbage[cut..]);
        } else {
            let mut f = header_with_len(
                (REQUEST_HEADER_LEN - 4 + 64) as u32,
                ApiKey::Produce.as_u16(),
                round as u32,
            );
            f.extend_from_slice(&garbage[..64]);
            let _ = std::io::Write::write_all(&mut bad.stream, &f);
        }
        drop(bad);
        assert_eq!(good.produce_ok("t", 0, &one_value_batch()), round);
    }
    assert_broker_serves(broker.addr());
}

#[test]
fn a_non_produce_frame_above_64_kib_gets_frame_too_large_and_the_connection_stays_open() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let mut c = RawConn::connect(broker.addr());
    let big = vec![7u8; hutong::config::SMALL_REQUEST_BYTES_MAX];
    let id = c.send(ApiKey::Ping, |out| out.extend_from_slice(&big));
    c.response_to(id).expect_error(ErrorCode::FrameTooLarge);
    // Exactly at the limit is fine.
    let fits = vec![8u8; hutong::config::SMALL_REQUEST_BYTES_MAX - REQUEST_HEADER_LEN];
    assert_eq!(c.ping(&fits), fits);
    assert_eq!(c.ping(b"after"), b"after");
    assert_broker_serves(broker.addr());
}

#[test]
fn a_batch_above_batch_bytes_max_gets_batch_too_large() {
    let dir = TestDir::new();
    let config = dir.small_segments_config(); // batch_bytes_max = 1 MiB
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let big = batch_of_values(&[vec![1u8; 1 << 20]]);
    c.produce("t", 0, Qos::All as u8, 5000, &big)
        .expect_error(ErrorCode::BatchTooLarge);
    let fits = batch_of_values(&[vec![2u8; (1 << 20) - 200]]);
    assert_eq!(
        c.produce_ok("t", 0, &fits),
        0,
        "a batch just below the limit is stored"
    );
    let got = c.fetch_records("t", 0, 0);
    assert_eq!(got.len(), 1);
    assert!(got[0].value == vec![2u8; (1 << 20) - 200]);
    assert_broker_serves(broker.addr());
}

#[test]
fn connections_above_connections_max_get_too_many_connections() {
    let dir = TestDir::new();
    let config = dir.config("connections_max = 3\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut held: Vec<RawConn> = (0..3).map(|_| RawConn::connect(broker.addr())).collect();
    let mut extra = RawConn::connect_bare(broker.addr());
    let r = extra
        .read_response()
        .expect("the refused connection is told why");
    r.expect_error(ErrorCode::TooManyConnections);
    extra.expect_closed();
    for c in &mut held {
        assert_eq!(
            c.ping(b"ok"),
            b"ok",
            "the connections within the limit work"
        );
    }
    // Closing one makes room for another (the broker notices the close
    // asynchronously, so retry for a bounded time).
    drop(held.pop());
    common::wait_until(
        std::time::Duration::from_secs(10),
        "a free connection slot",
        || {
            let mut c = RawConn::connect_bare(broker.addr());
            let id = c.send(ApiKey::Ping, |out| out.extend_from_slice(b"in"));
            matches!(c.read_response(), Ok(r) if r.header.correlation_id == id && r.body == b"in")
        },
    );
}

#[test]
fn topics_above_topics_max_get_too_many_topics() {
    let dir = TestDir::new();
    let config = dir.config("topics_max = 2\npartitions_max = 10\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("one", 1);
    c.try_create_topic("wide", 10)
        .expect_error(ErrorCode::TooManyTopics);
    c.create_topic("two", 9);
    c.try_create_topic("three", 1)
        .expect_error(ErrorCode::TooManyTopics);
    assert_eq!(c.produce_ok("two", 8, &one_value_batch()), 0);
}

#[test]
fn a_record_above_the_key_or_value_limit_gets_record_too_large_and_nothing_is_written() {
    let dir = TestDir::new();
    let config = dir.config("record_key_bytes_max = 1024\nrecord_value_bytes_max = 4096\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut c = RawConn::connect(broker.addr());
    c.create_topic("t", 1);
    let ok_key = vec![b'k'; 1024];
    let ok_value = vec![b'v'; 4096];
    let long_key = vec![b'k'; 1025];
    let long_value = vec![b'v'; 4097];
    // The oversized record is the second of the batch: nothing is written.
    for (k, v) in [(&long_key, &ok_value), (&ok_key, &long_value)] {
        let b = common::batch(
            &[
                (b"a".as_slice(), b"fine".as_slice()),
                (k.as_slice(), v.as_slice()),
            ],
            common::now_ms(),
        );
        c.produce("t", 0, Qos::All as u8, 5000, &b)
            .expect_error(ErrorCode::RecordTooLarge);
    }
    assert_eq!(c.list_offsets("t", 0).latest, 0, "nothing of those batches");
    let b = common::batch(
        &[(ok_key.as_slice(), ok_value.as_slice())],
        common::now_ms(),
    );
    assert_eq!(
        c.produce_ok("t", 0, &b),
        0,
        "records at the limits are fine"
    );
    assert_broker_serves(broker.addr());
}

#[test]
fn half_a_frame_then_silence_is_closed_after_partial_frame_timeout() {
    let dir = TestDir::new();
    let config = dir.config("partial_frame_timeout_ms = 300\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut bystander = RawConn::connect(broker.addr());
    let mut c = RawConn::connect(broker.addr());
    let mut frame = header_with_len(100, ApiKey::Ping.as_u16(), 3);
    frame.extend_from_slice(b"ten bytes.");
    let t0 = std::time::Instant::now();
    c.write_raw(&frame);
    c.expect_closed();
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(250),
        "closed only after the timeout ({elapsed:?})"
    );
    // A connection that is merely quiet between frames is not affected.
    assert_eq!(bystander.ping(b"quiet but whole"), b"quiet but whole");
    assert_broker_serves(broker.addr());
}

#[test]
fn an_idle_connection_is_closed_but_one_waiting_on_a_long_poll_is_not() {
    let dir = TestDir::new();
    let config = dir.config("idle_connection_timeout_ms = 400\n");
    let broker = BrokerProc::start(&dir.data, &["--config", config.to_str().unwrap()]);
    let mut admin = RawConn::connect(broker.addr());
    admin.create_topic("t", 1);
    drop(admin);
    let mut idle = RawConn::connect(broker.addr());
    let mut polling = RawConn::connect(broker.addr());
    let t0 = std::time::Instant::now();
    let poll = polling.send(ApiKey::Fetch, |out| {
        FetchRequest {
            topic: "t",
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: 1500,
            min_bytes: 1,
        }
        .encode(out)
    });
    idle.expect_closed();
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(350),
        "closed only after the idle timeout ({:?})",
        t0.elapsed()
    );
    let r = polling.response_to(poll).ok();
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(1400),
        "the long poll ran its course ({:?})",
        t0.elapsed()
    );
    let f = hutong::wire::api::FetchResponse::decode(&r.body).expect("decode fetch");
    assert!(f.batches.is_empty());
    // Idle again now: closed in turn.
    polling.expect_closed();
}
