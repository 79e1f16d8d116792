//! The `consume` (catch-up read) and `e2e` (produce and consume at once)
//! scenarios.
//!
//! Both topics are written with sequenced messages (see
//! [`Payload::Sequenced`]): each partition's messages carry 0, 1, 2, ... in
//! their first 8 bytes, and for e2e the send time in the next 8. Consumers
//! fetch with the raw connection and decode in place (no allocation per
//! record), check every batch's checksums, and check that every message is
//! there once, in order, with its size.

use crate::produce::{self, qos_name, Payload, Plan};
use crate::report::{self, Actor, Report};
use crate::ui::{Ui, PROGRESS_TICK};
use crate::window;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use hutong::client::{Admin, ClientError, Connection};
use hutong::wire::api::{FetchRequest, FetchResponse};
use hutong::wire::batch::{check_stored_batch, records, split_batches, BatchKind, BatchView};
use hutong::wire::codec::le_u64;
use hutong::wire::{ApiKey, Qos};
use indicatif::ProgressBar;
use serde_json::{json, Map};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Default soft cap on the bytes of one fetch answer.
pub const FETCH_BYTES_DEFAULT: u32 = 1024 * 1024;
/// How long an e2e consumer's fetch waits for new data.
const E2E_FETCH_WAIT_MS: u32 = 100;
/// How long a catch-up fetch may wait (the data is already there).
const CATCH_UP_FETCH_WAIT_MS: u32 = 1_000;
/// Extra time a fetch answer may take beyond its own wait.
const FETCH_ANSWER_GRACE: Duration = Duration::from_secs(30);
/// A consumer that sees no new message for this long gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `consume`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// Consumer connections; the topic gets one partition per consumer.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Payload bytes of each message (at least 16).
    #[arg(long, default_value_t = 100)]
    pub message_size: usize,
    /// Messages per produce request of the pre-fill.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Messages to pre-fill and read back, in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Soft cap on the batch bytes of one fetch answer.
    #[arg(long, default_value_t = FETCH_BYTES_DEFAULT)]
    pub fetch_bytes: u32,
    /// Topic; created if missing (reading starts where the pre-fill starts).
    #[arg(long, default_value = "bench-consume")]
    pub topic: String,
}

/// Options of `e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Producer connections; each writes its own partition, read by its own
    /// consumer connection.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Payload bytes of each message (at least 16).
    #[arg(long, default_value_t = 100)]
    pub message_size: usize,
    /// Messages per produce request.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Acknowledgement level of the producers.
    #[arg(long, default_value = "all", value_parser = produce::parse_qos)]
    pub qos: Qos,
    /// Messages to send and receive, in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Open loop: messages per second in all.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Soft cap on the batch bytes of one fetch answer.
    #[arg(long, default_value_t = FETCH_BYTES_DEFAULT)]
    pub fetch_bytes: u32,
    /// Topic; created if missing.
    #[arg(long, default_value = "bench-e2e")]
    pub topic: String,
}

/// One consumer's job: read `expected` sequenced messages of one partition
/// from `start`.
struct Reading<'a> {
    topic: &'a str,
    partition: u32,
    start: u64,
    expected: u64,
    message_size: usize,
    fetch_bytes: u32,
    max_wait_ms: u32,
    /// Latency per message from its send time (e2e), else per fetch.
    end_to_end: bool,
}

/// What one consumer saw.
struct Outcome {
    messages: u64,
    fetches: u64,
    wire_bytes: u64,
    last_ns: u64,
    latency: Histogram<u64>,
    error: Option<String>,
}

/// Reads one partition until `expected` messages were checked, or the
/// first failure.
/// Stops early when `stop` is set (the producers failed).
fn read_partition(
    conn: &Connection,
    job: &Reading<'_>,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> Outcome {
    let mut out = Outcome {
        messages: 0,
        fetches: 0,
        wire_bytes: 0,
        last_ns: window::now_ns(),
        latency: report::histogram(),
        error: None,
    };
    let mut offset = job.start;
    let wait = Duration::from_millis(u64::from(job.max_wait_ms)) + FETCH_ANSWER_GRACE;
    while out.messages < job.expected {
        if stop.load(Ordering::Relaxed) {
            out.error = Some("stopped: the producers failed".into());
            break;
        }
        if window::now_ns() - out.last_ns > STALL_TIMEOUT.as_nanos() as u64 {
            out.error = Some(format!("no new message for {STALL_TIMEOUT:?}"));
            break;
        }
        let request = FetchRequest {
            topic: job.topic,
            partition: job.partition,
            offset,
            max_bytes: job.fetch_bytes,
            max_wait_ms: job.max_wait_ms,
            min_bytes: 1,
        };
        let before = out.messages;
        let sent_ns = window::now_ns();
        let result = conn
            .send(ApiKey::Fetch, |b| request.encode(b))
            .and_then(|ticket| {
                ticket.wait_with(Some(wait), |header, body| {
                    if header.error_code != 0 {
                        return Err(ClientError::from_response(header.error_code, body).to_string());
                    }
                    check_fetch(body, job, &mut offset, &mut out)
                })
            });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => out.error = Some(e),
            Err(e) => out.error = Some(format!("fetch: {e}")),
        }
        if out.error.is_some() {
            break;
        }
        out.fetches += 1;
        let now = window::now_ns();
        if !job.end_to_end {
            report::record(&mut out.latency, now - sent_ns);
        }
        if out.messages > before {
            out.last_ns = now;
            progress.fetch_add(out.messages - before, Ordering::Relaxed);
        }
    }
    out
}

/// Checks one fetch answer: batch checksums, then each message's sequence
/// number and size. Moves `offset` past the answer.
fn check_fetch(
    body: &[u8],
    job: &Reading<'_>,
    offset: &mut u64,
    out: &mut Outcome,
) -> Result<(), String> {
    let now = window::now_ns();
    let response = FetchResponse::decode(body).map_err(|e| format!("bad fetch answer: {e}"))?;
    let mut whole = 0usize;
    for batch in split_batches(response.batches) {
        whole += batch.len();
        let kind = check_stored_batch(batch).map_err(|e| {
            format!(
                "partition {} batch at offset {}: {e}",
                job.partition,
                BatchView(batch).base_offset()
            )
        })?;
        if kind == BatchKind::Data {
            for r in records(batch) {
                if r.offset < *offset || out.messages == job.expected {
                    continue;
                }
                let seq = out.messages;
                if r.value.len() != job.message_size || le_u64(r.value, 0) != seq {
                    return Err(format!(
                        "partition {} offset {}: expected message {seq} of {} bytes, got {} bytes \
                         carrying {}",
                        job.partition,
                        r.offset,
                        job.message_size,
                        r.value.len(),
                        r.value.get(..8).map_or(0, |_| le_u64(r.value, 0)),
                    ));
                }
                if job.end_to_end {
                    report::record(&mut out.latency, now.saturating_sub(le_u64(r.value, 8)));
                }
                out.messages += 1;
            }
        }
        *offset = (*offset).max(BatchView(batch).next_offset());
    }
    if whole == 0 && !response.batches.is_empty() {
        return Err(format!(
            "fetch answer holds {} bytes but no whole batch",
            response.batches.len()
        ));
    }
    out.wire_bytes += whole as u64;
    Ok(())
}

/// Runs one consumer per job on its own connection and files them in
/// `report` (elapsed from `start_ns` to the last message).
fn run_consumers(
    addr: SocketAddr,
    jobs: &[Reading<'_>],
    bar: &ProgressBar,
    start_ns: u64,
    stop: &AtomicBool,
    report: &mut Report,
) -> Result<u64> {
    let conns = jobs
        .iter()
        .map(|_| Connection::connect(addr))
        .collect::<Result<Vec<_>, ClientError>>()
        .with_context(|| format!("cannot connect consumers to {addr}"))?;
    let progress = AtomicU64::new(0);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .zip(&conns)
            .map(|(job, conn)| {
                let progress = &progress;
                s.spawn(move || read_partition(conn, job, progress, stop))
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(PROGRESS_TICK);
            bar.set_position(progress.load(Ordering::Relaxed));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("consumer threads do not panic"))
            .collect()
    });
    let mut last_ns = start_ns;
    let mut wire_bytes = 0;
    for (i, (o, job)) in outcomes.into_iter().zip(jobs).enumerate() {
        let label = format!("Consumer #{}", i + 1);
        if let Some(e) = &o.error {
            report.error(format!("{label}: {e}"));
        }
        if o.messages != job.expected {
            report.error(format!(
                "{label}: read {} of the {} messages of partition {}",
                o.messages, job.expected, job.partition
            ));
        }
        last_ns = last_ns.max(o.last_ns);
        wire_bytes += o.wire_bytes;
        report.add_actor(Actor {
            label,
            messages: o.messages,
            requests: o.fetches,
            payload_bytes: o.messages * job.message_size as u64,
            elapsed: Duration::from_nanos(o.last_ns.saturating_sub(start_ns)),
            latency: o.latency,
        });
    }
    report.elapsed = Duration::from_nanos(last_ns - start_ns);
    Ok(wire_bytes)
}

/// Moves the producer fleet's failures into `report`, and checks that it
/// had every message acknowledged.
fn absorb_fleet(report: &mut Report, fleet: &Report, expected: u64) {
    for e in &fleet.error_messages {
        report.error(format!("pre-fill: {e}"));
    }
    report.errors += fleet
        .errors
        .saturating_sub(fleet.error_messages.len() as u64);
    if fleet.messages != expected {
        report.error(format!(
            "producers had {} of {expected} messages acknowledged",
            fleet.messages
        ));
    }
}

/// Runs `consume`: pre-fill, then catch-up read.
///
/// # Errors
/// When the topic cannot be prepared or connections cannot be made.
pub fn run_consume(addr: SocketAddr, args: &ConsumeArgs, ui: &Ui) -> Result<Report> {
    if args.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    let plan = Plan {
        topic: args.topic.clone(),
        producers: args.consumers,
        partitions: args.consumers,
        message_size: args.message_size,
        batch: args.batch,
        in_flight: 64,
        qos: Qos::All,
        messages: Some(args.messages),
        duration: None,
        rate: None,
        payload: Payload::Sequenced { timestamps: false },
    };
    let mut params = Map::new();
    params.insert("consumers".into(), json!(args.consumers));
    params.insert("partitions".into(), json!(args.consumers));
    params.insert("message_size".into(), json!(args.message_size));
    params.insert("batch".into(), json!(args.batch));
    params.insert("fetch_bytes".into(), json!(args.fetch_bytes));
    params.insert("topic".into(), json!(args.topic));
    let title = format!(
        "consume (catch-up), {} consumer(s), {} B messages, {} messages pre-filled in batches of {}, \
         fetches of {} bytes",
        args.consumers, args.message_size, args.messages, args.batch, args.fetch_bytes
    );
    let mut report = Report::new("consume", title, params);
    report.expected = Some(args.messages);
    report.latency_of = "fetch from request to answer";
    let admin = Admin::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    produce::ensure_topic(&admin, &plan.topic, plan.partitions)?;
    let starts = produce::latest_offsets(&admin, &plan.topic, plan.partitions)?;

    let bar = ui.bar("pre-fill", args.messages, "msgs");
    let mut fleet = Report::new("produce", String::new(), Map::new());
    produce::run_fleet(addr, &plan, &bar, &mut fleet)?;
    bar.finish_and_clear();
    absorb_fleet(&mut report, &fleet, args.messages);
    report
        .extra
        .push(("prefill_msgs_per_s", json!(fleet.msgs_per_s())));
    if report.errors > 0 {
        return Ok(report);
    }

    let jobs: Vec<Reading<'_>> = (0..args.consumers)
        .map(|i| Reading {
            topic: &args.topic,
            partition: i,
            start: starts[i as usize],
            expected: plan.messages_of(i).unwrap_or(0),
            message_size: args.message_size,
            fetch_bytes: args.fetch_bytes,
            max_wait_ms: CATCH_UP_FETCH_WAIT_MS,
            end_to_end: false,
        })
        .collect();
    let bar = ui.bar("consume", args.messages, "msgs");
    let stop = AtomicBool::new(false);
    let wire_bytes = run_consumers(addr, &jobs, &bar, window::now_ns(), &stop, &mut report)?;
    bar.finish_and_clear();
    report.extra.push((
        "wire_mb_per_s",
        json!(report::per_s(wire_bytes as f64 / 1e6, report.elapsed)),
    ));
    Ok(report)
}

/// Runs `e2e`: producers and consumers at once.
///
/// # Errors
/// When the topic cannot be prepared or connections cannot be made.
pub fn run_e2e(addr: SocketAddr, args: &E2eArgs, ui: &Ui) -> Result<Report> {
    let plan = Plan {
        topic: args.topic.clone(),
        producers: args.producers,
        partitions: args.producers,
        message_size: args.message_size,
        batch: args.batch,
        in_flight: args.in_flight,
        qos: args.qos,
        messages: Some(args.messages),
        duration: None,
        rate: args.rate,
        payload: Payload::Sequenced { timestamps: true },
    };
    let mut params = Map::new();
    params.insert("producers".into(), json!(args.producers));
    params.insert("consumers".into(), json!(args.producers));
    params.insert("partitions".into(), json!(args.producers));
    params.insert("message_size".into(), json!(args.message_size));
    params.insert("batch".into(), json!(args.batch));
    params.insert("in_flight".into(), json!(args.in_flight));
    params.insert("qos".into(), json!(qos_name(args.qos)));
    params.insert("rate".into(), json!(args.rate));
    params.insert("fetch_bytes".into(), json!(args.fetch_bytes));
    params.insert("topic".into(), json!(args.topic));
    let title = format!(
        "e2e, {} producer(s) and consumer(s), {} B messages, batch {}, {} in flight, QoS {}, \
         {} messages{}",
        args.producers,
        args.message_size,
        args.batch,
        args.in_flight,
        qos_name(args.qos),
        args.messages,
        args.rate.map_or_else(
            || ", closed loop".to_string(),
            |r| format!(", open loop at {r} msg/s")
        ),
    );
    let mut report = Report::new("e2e", title, params);
    report.expected = Some(args.messages);
    report.latency_of = "message from send to consumer receipt";
    let admin = Admin::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    produce::ensure_topic(&admin, &plan.topic, plan.partitions)?;
    let starts = produce::latest_offsets(&admin, &plan.topic, plan.partitions)?;
    let jobs: Vec<Reading<'_>> = (0..args.producers)
        .map(|i| Reading {
            topic: &args.topic,
            partition: i,
            start: starts[i as usize],
            expected: plan.messages_of(i).unwrap_or(0),
            message_size: args.message_size,
            fetch_bytes: args.fetch_bytes,
            max_wait_ms: E2E_FETCH_WAIT_MS,
            end_to_end: true,
        })
        .collect();
    let bar = ui.bar("e2e", args.messages, "msgs");
    let mut fleet = Report::new("produce", String::new(), Map::new());
    let start_ns = window::now_ns();
    let stop = AtomicBool::new(false);
    let (fleet_result, consume_result) = std::thread::scope(|s| {
        let producers = s.spawn(|| {
            let r = produce::run_fleet(addr, &plan, &ProgressBar::hidden(), &mut fleet);
            if r.is_err() || fleet.errors > 0 || fleet.messages != args.messages {
                stop.store(true, Ordering::Relaxed);
            }
            r
        });
        let consumed = run_consumers(addr, &jobs, &bar, start_ns, &stop, &mut report);
        (
            producers.join().expect("the producer fleet does not panic"),
            consumed,
        )
    });
    bar.finish_and_clear();
    fleet_result?;
    consume_result?;
    absorb_fleet(&mut report, &fleet, args.messages);
    report
        .extra
        .push(("produce_msgs_per_s", json!(fleet.msgs_per_s())));
    Ok(report)
}
