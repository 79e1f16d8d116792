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
use hutong::client::{Admin, ClientError, Completion, Connection, ResponseRef};
use hutong::wire::api::{FetchRequest, FetchResponse};
use hutong::wire::batch::{check_stored_batch, records, split_batches, BatchKind, BatchView};
use hutong::wire::codec::le_u64;
use hutong::wire::{ApiKey, Qos};
use indicatif::ProgressBar;
use serde_json::{json, Map};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

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
#[derive(Debug, Clone)]
struct Reading {
    topic: String,
    partition: u32,
    start: u64,
    expected: u64,
    message_size: usize,
    fetch_bytes: u32,
    max_wait_ms: u32,
    /// Latency per message from its send time (e2e), else per fetch.
    end_to_end: bool,
}

/// What one consumer's answers held, as checked on the reader thread.
struct Outcome {
    messages: u64,
    fetches: u64,
    wire_bytes: u64,
    last_ns: u64,
    latency: Histogram<u64>,
    error: Option<String>,
}

/// Where a consumer stands; the consumer thread waits on it.
#[derive(Debug, Default)]
struct Flow {
    /// Fetches answered (and scanned for where the next one starts).
    answered: u64,
    /// Fetches whose answer was fully checked.
    checked: u64,
    next_offset: u64,
    /// Messages the answers announced so far (from the batch headers).
    seen: u64,
    error: Option<String>,
}

/// The completion hook of a consumer's fetches. One fetch is in flight at
/// a time (the next offset is known only from the answer), so the hook
/// first reads where the answer ends from the batch headers and wakes the
/// consumer thread to send the next fetch, then checks this answer fully
/// (checksums, sequence numbers) while the broker prepares the next one.
/// It reads the answer in place in the connection's read buffer: no copy,
/// no allocation per fetch.
struct FetchHook {
    job: Reading,
    flow: Mutex<Flow>,
    outcome: Mutex<Outcome>,
    consumer: Thread,
    /// Offset and send time of the fetch in flight.
    requested: AtomicU64,
    sent_ns: AtomicU64,
    progress: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FetchHook {
    fn new(job: Reading, progress: Arc<AtomicU64>) -> FetchHook {
        FetchHook {
            flow: Mutex::new(Flow {
                next_offset: job.start,
                ..Flow::default()
            }),
            outcome: Mutex::new(Outcome {
                messages: 0,
                fetches: 0,
                wire_bytes: 0,
                last_ns: window::now_ns(),
                latency: report::histogram(),
                error: None,
            }),
            job,
            consumer: std::thread::current(),
            requested: AtomicU64::new(0),
            sent_ns: AtomicU64::new(0),
            progress,
        }
    }

    /// Ends the answer of the fetch in flight with an error.
    fn fail(&self, e: String) {
        let mut f = lock(&self.flow);
        f.error.get_or_insert(e);
        f.answered += 1;
        f.checked += 1;
        drop(f);
        self.consumer.unpark();
    }

    /// Waits until `done` holds for the flow or `timeout` passes.
    fn wait(&self, timeout: Duration, done: impl Fn(&Flow) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&lock(&self.flow)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::park_timeout((deadline - now).min(Duration::from_millis(50)));
        }
    }
}

impl Completion for FetchHook {
    fn complete(&self, _tag: u64, response: Result<ResponseRef<'_>, ClientError>) {
        let now = window::now_ns();
        // Read before waking the consumer, which then sends the next fetch.
        let requested = self.requested.load(Ordering::Relaxed);
        let sent = self.sent_ns.load(Ordering::Relaxed);
        let body = match response.and_then(ResponseRef::into_result) {
            Ok(r) => r.body,
            Err(e) => return self.fail(format!("fetch: {e}")),
        };
        let (next, seen) = match scan_fetch(body, requested) {
            Ok(x) => x,
            Err(e) => return self.fail(e),
        };
        {
            let mut f = lock(&self.flow);
            f.next_offset = f.next_offset.max(next);
            f.seen += seen;
            f.answered += 1;
        }
        self.consumer.unpark();
        let checked = {
            let mut o = lock(&self.outcome);
            let before = o.messages;
            let r = check_fetch(body, &self.job, requested, now, &mut o);
            o.fetches += 1;
            if !self.job.end_to_end {
                report::record(&mut o.latency, now.saturating_sub(sent));
            }
            if o.messages > before {
                o.last_ns = now;
                self.progress
                    .fetch_add(o.messages - before, Ordering::Relaxed);
            }
            r
        };
        let mut f = lock(&self.flow);
        f.checked += 1;
        if let Err(e) = checked {
            f.error.get_or_insert(e);
        }
        drop(f);
        self.consumer.unpark();
    }
}

/// Reads one partition until the answers announced `expected` messages
/// and all were checked, or the first failure. Stops early when `stop` is
/// set (the producers failed).
fn read_partition(
    conn: &Connection,
    job: &Reading,
    progress: &Arc<AtomicU64>,
    stop: &AtomicBool,
) -> Outcome {
    let hook = Arc::new(FetchHook::new(job.clone(), Arc::clone(progress)));
    let completion: Arc<dyn Completion> = hook.clone();
    let answer_timeout = Duration::from_millis(u64::from(job.max_wait_ms)) + FETCH_ANSWER_GRACE;
    let mut offset = job.start;
    let mut sent = 0u64;
    let (mut seen, mut last_news) = (0u64, Instant::now());
    let mut local_error = None;
    // A partition with nothing to read needs no fetch.
    let mut more = job.expected > 0;
    while more {
        if stop.load(Ordering::Relaxed) {
            local_error = Some("stopped: the producers failed".to_string());
            break;
        }
        let request = FetchRequest {
            topic: &job.topic,
            partition: job.partition,
            offset,
            max_bytes: job.fetch_bytes,
            max_wait_ms: job.max_wait_ms,
            min_bytes: 1,
        };
        hook.requested.store(offset, Ordering::Relaxed);
        hook.sent_ns.store(window::now_ns(), Ordering::Relaxed);
        if let Err(e) =
            conn.send_with_completion(ApiKey::Fetch, |b| request.encode(b), &completion, sent)
        {
            local_error = Some(format!("fetch: {e}"));
            break;
        }
        sent += 1;
        if !hook.wait(answer_timeout, |f| f.answered >= sent) {
            local_error = Some(format!("no fetch answer within {answer_timeout:?}"));
            break;
        }
        let f = lock(&hook.flow);
        if f.error.is_some() {
            break;
        }
        offset = f.next_offset;
        more = f.seen < job.expected;
        if f.seen > seen {
            seen = f.seen;
            last_news = Instant::now();
        } else if last_news.elapsed() > STALL_TIMEOUT {
            local_error = Some(format!("no new message for {STALL_TIMEOUT:?}"));
            break;
        }
    }
    if !hook.wait(answer_timeout, |f| f.checked >= sent) {
        local_error.get_or_insert_with(|| "the last answers were never checked".to_string());
    }
    let mut o = lock(&hook.outcome);
    let error = lock(&hook.flow).error.take().or(local_error);
    Outcome {
        messages: o.messages,
        fetches: o.fetches,
        wire_bytes: o.wire_bytes,
        last_ns: o.last_ns,
        latency: std::mem::replace(&mut o.latency, report::histogram()),
        error,
    }
}

/// Where the next fetch after this answer starts, and how many messages at
/// or above `requested` the answer announces, from the batch headers only.
fn scan_fetch(body: &[u8], requested: u64) -> Result<(u64, u64), String> {
    let response = FetchResponse::decode(body).map_err(|e| format!("bad fetch answer: {e}"))?;
    let (mut next, mut seen) = (requested, 0u64);
    for batch in split_batches(response.batches) {
        let view = BatchView(batch);
        if view.kind() == Some(BatchKind::Data) {
            seen += view
                .next_offset()
                .saturating_sub(view.base_offset().max(requested));
        }
        next = next.max(view.next_offset());
    }
    Ok((next, seen))
}

/// Checks one fetch answer (for a fetch from `requested`): batch
/// checksums, then each message's sequence number and size.
fn check_fetch(
    body: &[u8],
    job: &Reading,
    requested: u64,
    now_ns: u64,
    out: &mut Outcome,
) -> Result<(), String> {
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
        if kind != BatchKind::Data {
            continue;
        }
        for r in records(batch) {
            if r.offset < requested || out.messages == job.expected {
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
                report::record(&mut out.latency, now_ns.saturating_sub(le_u64(r.value, 8)));
            }
            out.messages += 1;
        }
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
    jobs: &[Reading],
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
    let progress = Arc::new(AtomicU64::new(0));
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

    let jobs: Vec<Reading> = (0..args.consumers)
        .map(|i| Reading {
            topic: args.topic.clone(),
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
    let jobs: Vec<Reading> = (0..args.producers)
        .map(|i| Reading {
            topic: args.topic.clone(),
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
