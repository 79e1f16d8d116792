//! The `produce` scenario, and the producers that `consume` and `e2e` use
//! to fill their topics.
//!
//! Each producer owns one connection and one partition (producer i writes
//! partition i mod partitions). A measured run builds its batch once and
//! sends the same bytes again and again, so the client spends its time on
//! the protocol, not on building messages; pre-fills build every batch with
//! sequence numbers (and send times, for e2e) that consumers check.

use crate::report::Report;
use crate::ui::{Ui, PROGRESS_TICK};
use crate::window::{self, Pace, Source, Window};
use anyhow::{bail, Context, Result};
use hutong::client::{Admin, ClientError, Connection, ConnectionConfig};
use hutong::wire::api::{ProduceRequest, ProduceResponse};
use hutong::wire::batch::BatchBuilder;
use hutong::wire::codec::set_u64;
use hutong::wire::{ApiKey, ErrorCode, Qos};
use indicatif::ProgressBar;
use serde_json::{json, Map};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Messages a run sends when neither `--messages` nor `--duration` is given.
pub const MESSAGES_DEFAULT: u64 = 1_000_000;
/// The broker-side deadline of every produce request.
pub const PRODUCE_TIMEOUT_MS: u32 = 30_000;
/// How long the broker's offsets may take to show every acknowledged
/// message (QoS received is answered before the data is committed).
const OFFSETS_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes at the start of a sequenced message: sequence number, send time.
pub const SEQUENCED_HEADER_BYTES: usize = 16;

/// Options of `produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Producer connections, one thread each.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Payload bytes of each message.
    #[arg(long, default_value_t = 100)]
    pub message_size: usize,
    /// Messages per produce request (one record batch).
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Acknowledgement level: none, received, flushed, replicated, all.
    #[arg(long, default_value = "all", value_parser = parse_qos)]
    pub qos: Qos,
    /// Partitions of the topic (default: one per producer).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Topic; created if missing.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Messages to send in all (default 1,000,000 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Send for this many seconds instead of a count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Open loop: send this many messages per second in all; latency is
    /// corrected for coordinated omission.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Parses a QoS name.
pub fn parse_qos(s: &str) -> Result<Qos, String> {
    Qos::from_name(s)
        .ok_or_else(|| format!("unknown QoS {s:?} (none, received, flushed, replicated, all)"))
}

/// The CLI name of a QoS level.
pub fn qos_name(q: Qos) -> &'static str {
    match q {
        Qos::None => "none",
        Qos::Received => "received",
        Qos::Flushed => "flushed",
        Qos::Replicated => "replicated",
        Qos::All => "all",
    }
}

/// What the messages of a producer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The same batch every time (measured runs).
    Fixed,
    /// Per-partition sequence numbers from 0 in bytes 0..8, and with
    /// `timestamps` the send time ([`window::now_ns`]) in bytes 8..16.
    Sequenced { timestamps: bool },
}

/// A fleet of producers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topic: String,
    pub producers: u32,
    pub partitions: u32,
    pub message_size: usize,
    pub batch: u32,
    pub in_flight: usize,
    pub qos: Qos,
    /// Messages in all; `None` with a duration.
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    /// Messages per second in all (open loop).
    pub rate: Option<f64>,
    pub payload: Payload,
}

impl Plan {
    /// Messages producer `i` sends (`None`: until the deadline).
    pub fn messages_of(&self, i: u32) -> Option<u64> {
        self.messages.map(|n| {
            let p = u64::from(self.producers);
            n / p + u64::from(u64::from(i) < n % p)
        })
    }

    /// The partition producer `i` writes.
    pub fn partition_of(&self, i: u32) -> u32 {
        i % self.partitions
    }

    fn check(&self) -> Result<()> {
        if self.producers == 0 || self.partitions == 0 || self.batch == 0 {
            bail!("producers, partitions and batch must be at least 1");
        }
        if let Payload::Sequenced { .. } = self.payload {
            if self.message_size < SEQUENCED_HEADER_BYTES {
                bail!("messages must hold at least {SEQUENCED_HEADER_BYTES} bytes here");
            }
        }
        Ok(())
    }
}

/// Creates `topic` with `partitions` partitions, or checks that an existing
/// one has at least that many.
///
/// # Errors
/// When the broker refuses, or the topic exists with fewer partitions.
pub fn ensure_topic(admin: &Admin, topic: &str, partitions: u32) -> Result<()> {
    match admin.create_topic(topic, partitions) {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {
            let meta = admin.metadata(&[topic])?;
            let have = meta
                .topics
                .iter()
                .find(|t| t.name == topic)
                .map_or(0, |t| t.partitions.len());
            if have < partitions as usize {
                bail!("topic {topic} exists with {have} partitions, this run needs {partitions}");
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create topic {topic}")),
    }
}

/// The latest offset of each of the first `partitions` partitions.
///
/// # Errors
/// When the broker cannot tell.
pub fn latest_offsets(admin: &Admin, topic: &str, partitions: u32) -> Result<Vec<u64>> {
    (0..partitions)
        .map(|p| {
            admin
                .list_offsets(topic, p)
                .map(|o| o.latest)
                .with_context(|| format!("cannot list the offsets of {topic}/{p}"))
        })
        .collect()
}

/// A producer's requests.
struct ProduceSource {
    topic: String,
    partition: u32,
    qos: Qos,
    batch: u32,
    message_size: usize,
    /// Messages left to send (`None`: no end).
    left: Option<u64>,
    payload: Payload,
    /// Fixed payload: the full batch, and the last, shorter one.
    full: Vec<u8>,
    short: Vec<u8>,
    /// Sequenced payload: the batch being built and the next number.
    builder: BatchBuilder,
    value: Vec<u8>,
    next_seq: u64,
    /// Records in the request prepared by `next`.
    count: u32,
}

fn fixed_batch(records: u32, message_size: usize) -> Vec<u8> {
    let value: Vec<u8> = (0..message_size).map(|i| b'a' + (i % 26) as u8).collect();
    let now = hutong::client::producer::unix_time_ms();
    let mut b = BatchBuilder::new();
    for _ in 0..records {
        b.push(now, b"", &value, &[]);
    }
    b.finish(0, 0).to_vec()
}

impl ProduceSource {
    fn new(plan: &Plan, i: u32) -> ProduceSource {
        let left = plan.messages_of(i);
        let (full, short) = match plan.payload {
            Payload::Fixed => {
                let rest = left.map_or(0, |n| (n % u64::from(plan.batch)) as u32);
                (
                    fixed_batch(plan.batch, plan.message_size),
                    fixed_batch(rest, plan.message_size),
                )
            }
            Payload::Sequenced { .. } => (Vec::new(), Vec::new()),
        };
        let value = (0..plan.message_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        ProduceSource {
            topic: plan.topic.clone(),
            partition: plan.partition_of(i),
            qos: plan.qos,
            batch: plan.batch,
            message_size: plan.message_size,
            left,
            payload: plan.payload,
            full,
            short,
            builder: BatchBuilder::new(),
            value,
            next_seq: 0,
            count: 0,
        }
    }
}

impl Source for ProduceSource {
    fn api(&self) -> ApiKey {
        ApiKey::Produce
    }

    fn no_reply(&self) -> bool {
        self.qos == Qos::None
    }

    fn next(&mut self) -> Option<u32> {
        let count = match self.left {
            Some(0) => return None,
            Some(n) => n.min(u64::from(self.batch)) as u32,
            None => self.batch,
        };
        if let Some(n) = &mut self.left {
            *n -= u64::from(count);
        }
        self.count = count;
        if let Payload::Sequenced { timestamps } = self.payload {
            self.builder.clear();
            let now_ms = hutong::client::producer::unix_time_ms();
            let sent_ns = if timestamps { window::now_ns() } else { 0 };
            for _ in 0..count {
                set_u64(&mut self.value, 0, self.next_seq);
                set_u64(&mut self.value, 8, sent_ns);
                self.builder.push(now_ms, b"", &self.value, &[]);
                self.next_seq += 1;
            }
        }
        debug_assert_eq!(self.value.len(), self.message_size);
        Some(count)
    }

    fn encode(&mut self, out: &mut Vec<u8>) {
        let batch: &[u8] = match self.payload {
            Payload::Fixed if self.count == self.batch => &self.full,
            Payload::Fixed => &self.short,
            Payload::Sequenced { .. } => self.builder.finish(0, 0),
        };
        ProduceRequest {
            topic: &self.topic,
            partition: self.partition,
            qos: self.qos as u8,
            timeout_ms: PRODUCE_TIMEOUT_MS,
            batch,
        }
        .encode(out);
    }
}

/// A produce answer must decode.
fn check_produce(_tag: u64, r: hutong::client::ResponseRef<'_>) -> Result<(), String> {
    ProduceResponse::decode(r.body)
        .map(|_| ())
        .map_err(|e| format!("bad produce answer: {e}"))
}

/// Runs the fleet of `plan` against `addr` and files each producer's
/// figures in `report` (messages, latency per batch, errors). `bar` counts
/// acknowledged messages. Elapsed runs from the common start to the last
/// acknowledgement.
///
/// # Errors
/// When a producer cannot connect; failures after that are counted in the
/// report instead.
pub fn run_fleet(
    addr: SocketAddr,
    plan: &Plan,
    bar: &ProgressBar,
    report: &mut Report,
) -> Result<()> {
    plan.check()?;
    let connections = (0..plan.producers)
        .map(|_| {
            Connection::connect_with(
                addr,
                &ConnectionConfig {
                    in_flight_max: plan
                        .in_flight
                        .max(hutong::client::connection::IN_FLIGHT_MAX_DEFAULT),
                    client_id: "hutong-bench".into(),
                    ..ConnectionConfig::default()
                },
            )
        })
        .collect::<Result<Vec<_>, ClientError>>()
        .with_context(|| format!("cannot connect producers to {addr}"))?;
    let windows: Vec<Arc<Window>> = (0..plan.producers)
        .map(|_| Window::new(plan.in_flight, Box::new(check_produce)))
        .collect();
    let barrier = Barrier::new(plan.producers as usize + 1);
    let rate = plan.rate.map(|r| r / f64::from(plan.producers));
    let start_ns = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, (conn, win)) in connections.iter().zip(&windows).enumerate() {
            let mut source = ProduceSource::new(plan, i as u32);
            let barrier = &barrier;
            handles.push(s.spawn(move || {
                barrier.wait();
                let pace = Pace {
                    deadline: plan.duration.map(|d| Instant::now() + d),
                    rate,
                };
                window::drive(conn, win, &mut source, pace);
            }));
        }
        // Read the clock before the barrier opens: after it, a busy
        // machine could schedule this thread only once the producers
        // were done, and the run would measure nothing.
        let start_ns = window::now_ns();
        barrier.wait();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(PROGRESS_TICK);
            bar.set_position(windows.iter().map(|w| w.acked_messages()).sum());
        }
        for h in handles {
            if h.join().is_err() {
                report.error("a producer thread panicked");
            }
        }
        start_ns
    });
    bar.set_position(windows.iter().map(|w| w.acked_messages()).sum());
    let mut last_ns = start_ns;
    for (i, w) in windows.iter().enumerate() {
        w.file(
            report,
            format!("Producer #{}", i + 1),
            plan.message_size as u64,
            start_ns,
        );
        last_ns = last_ns.max(w.last_ack_ns());
    }
    report.elapsed = Duration::from_nanos(last_ns - start_ns);
    report.latency_of = "batch from send to acknowledgement";
    Ok(())
}

/// Waits until the partitions' latest offsets have grown from `before` by
/// exactly `acked` messages in all, and counts an error in `report` if they
/// do not. This checks the acknowledgements against what the broker holds.
///
/// # Errors
/// When the broker cannot be asked.
pub fn check_offsets(
    admin: &Admin,
    topic: &str,
    before: &[u64],
    acked: u64,
    report: &mut Report,
) -> Result<()> {
    let deadline = Instant::now() + OFFSETS_SETTLE_TIMEOUT;
    loop {
        let after = latest_offsets(admin, topic, before.len() as u32)?;
        let grown: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
        if grown == acked {
            return Ok(());
        }
        if grown > acked || Instant::now() > deadline {
            report.error(format!(
                "the broker's offsets of {topic} grew by {grown} messages, {acked} were acknowledged"
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `produce`.
///
/// # Errors
/// When the topic cannot be prepared or producers cannot connect.
pub fn run(addr: SocketAddr, args: &ProduceArgs, ui: &Ui) -> Result<Report> {
    let messages = match (args.messages, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(MESSAGES_DEFAULT),
    };
    let plan = Plan {
        topic: args.topic.clone(),
        producers: args.producers,
        partitions: args.partitions.unwrap_or(args.producers),
        message_size: args.message_size,
        batch: args.batch,
        in_flight: args.in_flight,
        qos: args.qos,
        messages,
        duration: args.duration.map(Duration::from_secs_f64),
        rate: args.rate,
        payload: Payload::Fixed,
    };
    let mut params = Map::new();
    params.insert("producers".into(), json!(plan.producers));
    params.insert("message_size".into(), json!(plan.message_size));
    params.insert("batch".into(), json!(plan.batch));
    params.insert("in_flight".into(), json!(plan.in_flight));
    params.insert("qos".into(), json!(qos_name(plan.qos)));
    params.insert("partitions".into(), json!(plan.partitions));
    params.insert("topic".into(), json!(plan.topic));
    params.insert("duration_s".into(), json!(args.duration));
    params.insert("rate".into(), json!(args.rate));
    let title = format!(
        "produce, {} producer(s), {} B messages, batch {}, {} in flight, QoS {}, {} partition(s){}{}",
        plan.producers,
        plan.message_size,
        plan.batch,
        plan.in_flight,
        qos_name(plan.qos),
        plan.partitions,
        messages.map_or_else(String::new, |n| format!(", {n} messages")),
        args.rate.map_or_else(|| ", closed loop".to_string(), |r| format!(", open loop at {r} msg/s")),
    );
    let mut report = Report::new("produce", title, params);
    report.expected = messages;
    let admin = Admin::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    ensure_topic(&admin, &plan.topic, plan.partitions)?;
    let before = latest_offsets(&admin, &plan.topic, plan.partitions)?;
    let bar = match messages {
        Some(n) => ui.bar("produce", n, "msgs"),
        None => ui.spinner("produce", "msgs"),
    };
    run_fleet(addr, &plan, &bar, &mut report)?;
    bar.finish_and_clear();
    if plan.qos != Qos::None || report.errors == 0 {
        check_offsets(&admin, &plan.topic, &before, report.messages, &mut report)?;
    }
    if let Some(r) = args.rate {
        report.extra.push(("target_rate", json!(r)));
    }
    Ok(report)
}
