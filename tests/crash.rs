//! `kill -9` in the middle of a produce stream at QoS flushed loses nothing
//! that was acknowledged, and offsets continue after the restart with no
//! gap and no duplicate.

mod common;

use common::{bounded, lock, payload, read_partition, BrokerProc, Fetched, RawConn, TestDir};
use hutong::client::{Producer, ProducerConfig, RetryConfig};
use hutong::wire::batch::BatchBuilder;
use hutong::wire::Qos;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PARTITIONS: u32 = 2;
const PER_BATCH: u64 = 50;

/// One acknowledged batch: where it went and the values it held.
#[derive(Debug, Clone)]
struct Acked {
    partition: u32,
    base_offset: u64,
    values: Vec<Vec<u8>>,
}

fn value(round: u32, partition: u32, batch: u64, i: u64) -> Vec<u8> {
    payload(&format!("crash-r{round}-p{partition}-b{batch}"), i)
}

/// Sends pipelined batches at QoS flushed until `stop` or the first
/// failure, recording every acknowledged batch in `acked`.
fn produce_until_killed(
    addr: SocketAddr,
    round: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let Ok(producer) = Producer::connect(
        addr,
        ProducerConfig {
            qos: Qos::Flushed,
            timeout_ms: 10_000,
            // A producer that reconnects after the kill could reach another
            // broker that took over the port; this test wants the old
            // send-once behaviour.
            retry: RetryConfig::none(),
            ..ProducerConfig::default()
        },
    ) else {
        return;
    };
    let mut b = BatchBuilder::new();
    let mut window = VecDeque::new();
    let mut n = 0u64;
    let settle =
        |(partition, values, receipt): (u32, Vec<Vec<u8>>, hutong::client::Receipt)| match receipt
            .wait()
        {
            Ok(ack) => {
                lock(&acked).push(Acked {
                    partition,
                    base_offset: ack.base_offset,
                    values,
                });
                true
            }
            Err(_) => false,
        };
    while !stop.load(Ordering::Relaxed) {
        let partition = (n % PARTITIONS as u64) as u32;
        b.clear();
        let values: Vec<Vec<u8>> = (0..PER_BATCH)
            .map(|i| value(round, partition, n, i))
            .collect();
        for v in &values {
            b.push(common::now_ms(), b"", v, &[]);
        }
        match producer.send("crash", partition, b.finish(0, 0)) {
            Ok(receipt) => window.push_back((partition, values, receipt)),
            Err(_) => break,
        }
        n += 1;
        if window.len() >= 64 && !settle(window.pop_front().unwrap()) {
            break;
        }
    }
    // Whatever is still in flight is acknowledged or failed by the kill.
    for w in window {
        settle(w);
    }
}

/// Checks that every acknowledged record is stored at its offset with its
/// bytes, and that every stored record is one this test produced.
fn check_acked(addr: SocketAddr, acked: &[Acked]) -> Vec<Vec<Fetched>> {
    let stored: Vec<Vec<Fetched>> = (0..PARTITIONS)
        .map(|p| read_partition(addr, "crash", p))
        .collect();
    for a in acked {
        let part = &stored[a.partition as usize];
        for (i, v) in a.values.iter().enumerate() {
            let offset = a.base_offset + i as u64;
            let rec = part.get(offset as usize).unwrap_or_else(|| {
                panic!(
                    "acknowledged crash/{}@{offset} is gone (partition holds {})",
                    a.partition,
                    part.len()
                )
            });
            assert!(
                &rec.value == v,
                "acknowledged crash/{}@{offset} holds other bytes",
                a.partition
            );
        }
    }
    for (p, part) in stored.iter().enumerate() {
        for r in part {
            assert!(
                r.value.starts_with(b"crash-r")
                    && String::from_utf8_lossy(&r.value).contains(&format!("-p{p}-")),
                "crash/{p}@{} holds a record this test never sent to it",
                r.offset
            );
        }
    }
    stored
}

#[test]
fn acked_messages_survive_kill_9_and_offsets_continue_without_gap_or_duplicate() {
    let dir = TestDir::new();
    let config = dir.small_segments_config();
    let args = ["--config", config.to_str().unwrap()];
    let mut broker = BrokerProc::start(&dir.data, &args);
    RawConn::connect(broker.addr()).create_topic("crash", PARTITIONS);
    let mut all_acked: Vec<Acked> = Vec::new();

    for round in 0..2u32 {
        let addr = broker.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let producer = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let acked = Arc::clone(&acked);
            move || produce_until_killed(addr, round, stop, acked)
        });
        common::wait_until(Duration::from_secs(20), "first acknowledgements", || {
            lock(&acked).len() >= 10
        });
        std::thread::sleep(Duration::from_millis(1200));
        broker.kill9();
        stop.store(true, Ordering::Relaxed);
        bounded(
            Duration::from_secs(30),
            "producer stops after the kill",
            move || producer.join().expect("producer thread"),
        );
        let acked_now = std::mem::take(&mut *lock(&acked));
        eprintln!(
            "round {round}: {} batches acknowledged before kill -9",
            acked_now.len()
        );
        all_acked.extend(acked_now);

        broker = BrokerProc::start(&dir.data, &args);
        let addr = broker.addr();
        let acked_so_far = all_acked.clone();
        let ends = bounded(Duration::from_secs(60), "check after restart", move || {
            let stored = check_acked(addr, &acked_so_far);
            stored.iter().map(|p| p.len() as u64).collect::<Vec<_>>()
        });

        // New produces continue at the recovered end of each partition.
        let more: Vec<Acked> = bounded(Duration::from_secs(30), "produce after restart", {
            let ends = ends.clone();
            move || {
                let mut c = RawConn::connect(addr);
                let mut out = Vec::new();
                for (p, end) in ends.iter().enumerate() {
                    assert_eq!(c.list_offsets("crash", p as u32).latest, *end);
                    let mut next = *end;
                    for k in 0..3u64 {
                        let values: Vec<Vec<u8>> = (0..PER_BATCH)
                            .map(|i| value(round + 100, p as u32, k, i))
                            .collect();
                        let base =
                            c.produce_ok("crash", p as u32, &common::batch_of_values(&values));
                        assert_eq!(base, next, "crash/{p}: offsets continue after recovery");
                        next += PER_BATCH;
                        out.push(Acked {
                            partition: p as u32,
                            base_offset: base,
                            values,
                        });
                    }
                }
                out
            }
        });
        all_acked.extend(more);
        let acked_so_far = all_acked.clone();
        let ends_after = bounded(Duration::from_secs(60), "check after more", move || {
            let stored = check_acked(addr, &acked_so_far);
            stored.iter().map(|p| p.len() as u64).collect::<Vec<_>>()
        });
        let want: Vec<u64> = ends.iter().map(|e| e + 3 * PER_BATCH).collect();
        assert_eq!(ends_after, want, "exactly the new batches were added");
    }
}

#[test]
fn kill_9_in_the_middle_of_a_graceful_shutdown_loses_nothing_acknowledged() {
    let dir = TestDir::new();
    let config = dir.small_segments_config();
    let args = ["--config", config.to_str().unwrap()];
    let mut broker = BrokerProc::start(&dir.data, &args);
    let addr = broker.addr();
    RawConn::connect(addr).create_topic("crash", PARTITIONS);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer = std::thread::spawn({
        let stop = Arc::clone(&stop);
        let acked = Arc::clone(&acked);
        move || produce_until_killed(addr, 0, stop, acked)
    });
    common::wait_until(Duration::from_secs(20), "first acknowledgements", || {
        lock(&acked).len() >= 100
    });
    broker.send_signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(3));
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    bounded(Duration::from_secs(30), "producer stops", move || {
        producer.join().expect("producer thread")
    });
    let acked = std::mem::take(&mut *lock(&acked));
    let broker = BrokerProc::start(&dir.data, &args);
    let addr = broker.addr();
    let ends = bounded(Duration::from_secs(60), "check after restart", move || {
        let stored = check_acked(addr, &acked);
        stored.iter().map(|p| p.len() as u64).collect::<Vec<_>>()
    });
    let mut c = RawConn::connect(addr);
    for (p, end) in ends.iter().enumerate() {
        let base = c.produce_ok(
            "crash",
            p as u32,
            &common::batch_of_values(&[value(9, p as u32, 0, 0)]),
        );
        assert_eq!(base, *end, "crash/{p}: offsets continue after recovery");
    }
}
