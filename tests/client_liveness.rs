//! The Rust client never waits for ever on a broker that went silent.
//!
//! A frozen broker (SIGSTOP: its kernel still acknowledges TCP, so the
//! connection looks alive) and a link that stops carrying bytes (a proxy
//! that stalls) both leave requests without answers. Every call must still
//! end by its deadline: a receipt by the producer's delivery deadline
//! (`RetryConfig::deadline_ms`), a send blocked at `max_in_flight` once the
//! deadlines of the requests ahead of it free room, `flush` by the last
//! deadline, and an admin call once the connection is given up as silent.

mod common;

use common::proxy::Proxy;
use common::{bounded, read_partition, BrokerProc, RawConn, TestDir};
use hutong::client::connection::Liveness;
use hutong::client::{
    Admin, ClientError, Connection, ConnectionConfig, Producer, ProducerConfig, Receipt,
    RetryConfig,
};
use hutong::wire::Qos;
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "silent";
/// A receipt settles at most this long after its send call.
const DEADLINE_MS: u64 = 3_000;
/// The broker's own deadline for a produce.
const TIMEOUT_MS: u32 = 1_000;
/// Requests awaiting their answer before `send` blocks.
const IN_FLIGHT: usize = 4;
/// Scheduling slack for a loaded test machine.
const SLACK: Duration = Duration::from_secs(3);
/// The longest a whole scenario may take before the test fails.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);
/// A connection pings after 200 ms of silence and gives up after 1 s.
const LIVENESS: Liveness = Liveness {
    ping_after_ms: 200,
    dead_after_ms: 1_000,
};

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        qos: Qos::All,
        timeout_ms: TIMEOUT_MS,
        max_in_flight: IN_FLIGHT,
        retry: RetryConfig {
            attempts_max: 1_000,
            backoff_ms: 20,
            deadline_ms: DEADLINE_MS,
        },
        liveness: LIVENESS,
        ..ProducerConfig::default()
    }
}

/// An admin connection that gives up on a silent broker after
/// [`LIVENESS`]'s `dead_after_ms`.
fn admin(addr: SocketAddr) -> Admin {
    let config = ConnectionConfig {
        liveness: LIVENESS,
        ..ConnectionConfig::default()
    };
    Admin::from_connection(Connection::connect_with(addr, &config).expect("admin connects"))
}

fn deadline() -> Duration {
    Duration::from_millis(DEADLINE_MS)
}

/// Sends twice `max_in_flight` batches to a broker that cannot answer and
/// checks that every send returns and every receipt fails by its
/// deadline; then that `flush` reports a failure by the deadline of the
/// batches it waits for.
fn every_produce_call_fails_by_its_deadline(producer: &Producer) {
    let mut receipts: Vec<(Instant, Receipt)> = Vec::new();
    for i in 0..2 * IN_FLIGHT {
        let sent_at = Instant::now();
        let value = format!("unanswerable {i}");
        let receipt = producer
            .send_records(TOPIC, 0, &[(b"", value.as_bytes())])
            .expect("a send is queued, not refused");
        assert!(
            sent_at.elapsed() <= deadline() + SLACK,
            "send {i} returned {:?} after its call",
            sent_at.elapsed()
        );
        receipts.push((sent_at, receipt));
    }
    for (i, (sent_at, receipt)) in receipts.into_iter().enumerate() {
        let outcome = receipt.wait();
        let took = sent_at.elapsed();
        assert!(
            outcome.is_err(),
            "receipt {i}: no broker could have acknowledged it: {outcome:?}"
        );
        assert!(
            took <= deadline() + SLACK,
            "receipt {i} settled {took:?} after its send, beyond the {DEADLINE_MS} ms deadline"
        );
    }
    let sent_at = Instant::now();
    for i in 0..2 {
        let value = format!("flushed {i}");
        drop(
            producer
                .send_records(TOPIC, 0, &[(b"", value.as_bytes())])
                .expect("queued"),
        );
    }
    let flushed = producer.flush();
    assert!(flushed.is_err(), "flush reports the failures: {flushed:?}");
    assert!(
        sent_at.elapsed() <= deadline() + SLACK,
        "flush returned {:?} after the sends",
        sent_at.elapsed()
    );
}

/// An admin call on a connection to a broker that cannot answer fails once
/// the connection is given up as silent.
fn an_admin_call_fails(admin: &Admin) {
    let started = Instant::now();
    let outcome = admin.metadata(&[]);
    assert!(
        matches!(&outcome, Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut),
        "the silent connection is given up: {outcome:?}"
    );
    assert!(
        started.elapsed() <= Duration::from_millis(LIVENESS.dead_after_ms) + SLACK,
        "the admin call failed after {:?}",
        started.elapsed()
    );
}

/// Sends one batch and waits for its acknowledgement.
fn produce_one(producer: &Producer, value: &[u8]) -> u64 {
    producer
        .send_records(TOPIC, 0, &[(b"", value)])
        .expect("send")
        .wait()
        .unwrap_or_else(|e| panic!("{:?} is acknowledged: {e}", String::from_utf8_lossy(value)))
        .base_offset
}

/// Sends batches until one is acknowledged and returns its value: right
/// after the broker comes back, a receipt may still run out of its short
/// deadline while the producer finds its way back (a reconnection backs
/// off after the failures in a row).
fn produce_until_acked(producer: &Producer) -> Vec<u8> {
    for attempt in 0..20 {
        let value = format!("after {attempt}").into_bytes();
        let receipt = producer
            .send_records(TOPIC, 0, &[(b"", &value)])
            .expect("send");
        match receipt.wait() {
            Ok(_) => return value,
            Err(e) => eprintln!("attempt {attempt} after the broker came back: {e}"),
        }
    }
    panic!("no batch acknowledged once the broker was back");
}

/// Checks that `value` is stored exactly once in the topic.
fn stored_once(addr: SocketAddr, value: &[u8]) {
    let value = value.to_vec();
    bounded(Duration::from_secs(30), "read the topic", move || {
        let n = read_partition(addr, TOPIC, 0)
            .iter()
            .filter(|r| r.value == value)
            .count();
        assert_eq!(
            n,
            1,
            "{:?} is stored exactly once",
            String::from_utf8_lossy(&value)
        );
    });
}

#[test]
fn every_call_to_a_frozen_broker_returns_an_error_by_its_deadline() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr();
    RawConn::connect(addr).create_topic(TOPIC, 1);
    let producer = Arc::new(Producer::connect(addr, producer_config()).expect("connect"));
    produce_one(&producer, b"before");
    let admin = Arc::new(admin(addr));

    broker.send_signal(Signal::SIGSTOP);
    let p = Arc::clone(&producer);
    let a = Arc::clone(&admin);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bounded(SCENARIO_LIMIT, "calls to a frozen broker", move || {
            every_produce_call_fails_by_its_deadline(&p);
            an_admin_call_fails(&a);
        })
    }));
    // Thawed whatever happened, so that the broker can be shut down.
    broker.send_signal(Signal::SIGCONT);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    // Thawed, the broker serves the same producer again.
    let p = Arc::clone(&producer);
    let after = bounded(SCENARIO_LIMIT, "a send after the thaw", move || {
        produce_until_acked(&p)
    });
    stored_once(addr, b"before");
    stored_once(addr, &after);
}

#[test]
fn every_call_through_a_stalled_link_returns_an_error_by_its_deadline() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    RawConn::connect(broker.addr()).create_topic(TOPIC, 1);
    let proxy = Proxy::start(broker.addr());
    let producer = Arc::new(Producer::connect(proxy.addr(), producer_config()).expect("connect"));
    produce_one(&producer, b"before");
    let admin = Arc::new(admin(proxy.addr()));

    // Nothing moves on the link, and new connections through it get no
    // answer either, as when a network silently drops every packet.
    proxy.stall();
    let p = Arc::clone(&producer);
    let a = Arc::clone(&admin);
    bounded(SCENARIO_LIMIT, "calls through a stalled link", move || {
        every_produce_call_fails_by_its_deadline(&p);
        an_admin_call_fails(&a);
    });
    // Once bytes flow again, the producer gets through on a connection of
    // its own choosing (the one it had was given up).
    proxy.resume();
    let p = Arc::clone(&producer);
    let after = bounded(SCENARIO_LIMIT, "a send once the link is back", move || {
        produce_until_acked(&p)
    });
    stored_once(broker.addr(), b"before");
    stored_once(broker.addr(), &after);
}
