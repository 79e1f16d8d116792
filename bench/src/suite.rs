//! The standard suite (`make bench`): every scenario once against one
//! broker, with the figures compared to the targets of issues 2 and 3.

use crate::broker::Target;
use crate::consume::{self, ConsumeArgs};
use crate::conversation::{self, HutongArgs};
use crate::floor;
use crate::ping::{self, PingArgs};
use crate::produce::{self, ProduceArgs};
use crate::report::Report;
use crate::ui::Ui;
use crate::Common;
use anyhow::Result;
use hutong::wire::Qos;
use serde_json::{json, Value};

/// Options of `suite`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Messages of each batch-100 produce run and of the consume run
    /// (the batch-1 run sends a fifth of it).
    #[arg(long, default_value_t = 5_000_000)]
    pub messages: u64,
    /// Ping round trips.
    #[arg(long, default_value_t = 20_000)]
    pub pings: u64,
    /// Meetings of the hutong conversation.
    #[arg(long, default_value_t = conversation::MEETINGS_DEFAULT)]
    pub meetings: u32,
}

/// The step whose median the relative goals compare with.
const PING_STEP: &str = "ping, one in flight";
/// Writes of each kind for the fdatasync floor.
const SYNC_FLOOR_WRITES: usize = 500;

/// What a figure is compared with.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// At least this many messages per second.
    MsgsPerS(f64),
    /// At least this many MB (10^6 payload bytes) per second.
    MbPerS(f64),
    /// A median latency of at most this many µs.
    P50UsAtMost(f64),
    /// At most this many milliseconds in all.
    ElapsedMsAtMost(f64),
    /// A median latency at most this many µs above the Ping's median of
    /// the same suite.
    P50OverPingAtMost(f64),
    /// A median latency at most this many µs above the disk's fdatasync
    /// floor (an overwrite of written blocks), measured by the suite.
    P50OverSyncAtMost(f64),
}

/// What the relative goals are measured against, from the same suite.
#[derive(Debug, Clone, Copy, Default)]
struct Floors {
    ping_p50_us: Option<f64>,
    sync: Option<floor::SyncFloor>,
}

impl Goal {
    fn judge(self, r: &Report, floors: &Floors) -> (String, String, bool) {
        let p50 = || r.latency.value_at_quantile(0.5) as f64 / 1e3;
        match self {
            Goal::P50OverPingAtMost(t) => {
                let v = p50();
                match floors.ping_p50_us {
                    Some(ping) => (
                        format!("p50 {v:.1} µs = Ping {:+.1}", v - ping),
                        format!("<= Ping + {t:.0} µs"),
                        v <= ping + t,
                    ),
                    None => (format!("p50 {v:.1} µs"), "no Ping".into(), false),
                }
            }
            Goal::P50OverSyncAtMost(t) => {
                let v = p50();
                match floors.sync {
                    Some(f) => (
                        format!(
                            "p50 {v:.1} µs = sync {:+.1} (fresh {:.0})",
                            v - f.overwrite_p50_us,
                            f.fresh_p50_us
                        ),
                        format!("<= sync + {t:.0} µs"),
                        v <= f.overwrite_p50_us + t,
                    ),
                    None => (format!("p50 {v:.1} µs"), "no floor".into(), false),
                }
            }
            Goal::MsgsPerS(t) => {
                let v = r.msgs_per_s();
                (format!("{v:.0} msg/s"), format!(">= {t:.0} msg/s"), v >= t)
            }
            Goal::MbPerS(t) => {
                let v = r.mb_per_s();
                (format!("{v:.1} MB/s"), format!(">= {t:.0} MB/s"), v >= t)
            }
            Goal::P50UsAtMost(t) => {
                let v = r.latency.value_at_quantile(0.5) as f64 / 1e3;
                (format!("p50 {v:.1} µs"), format!("<= {t:.0} µs"), v <= t)
            }
            Goal::ElapsedMsAtMost(t) => {
                let v = r.elapsed.as_secs_f64() * 1e3;
                (format!("{v:.1} ms"), format!("<= {t:.0} ms"), v <= t)
            }
        }
    }
}

fn produce_args(topic: &str, batch: u32, in_flight: usize, qos: Qos, messages: u64) -> ProduceArgs {
    ProduceArgs {
        producers: 1,
        message_size: 100,
        batch,
        in_flight,
        qos,
        partitions: None,
        topic: topic.into(),
        messages: Some(messages),
        duration: None,
        rate: None,
    }
}

/// Runs the suite. Returns whether every run was clean (targets missed do
/// not fail it: they are figures, not tests).
///
/// # Errors
/// When the broker cannot be started.
pub fn run(args: &SuiteArgs, common: &Common, ui: &Ui) -> Result<bool> {
    let target = Target::resolve(common.addr)?;
    let addr = target.addr();
    let machine = machine_line(target.data_dir());
    println!("Machine: {machine}");
    // The disk's floor first, before the broker has written anything.
    let floor_dir = target
        .data_dir()
        .map_or_else(std::env::temp_dir, |d| d.to_path_buf());
    let mut floors = Floors::default();
    match floor::measure(&floor_dir, SYNC_FLOOR_WRITES) {
        Ok(f) => {
            println!(
                "fdatasync floor in {}: 4 KiB overwrite p50 {:.1} µs, into fresh preallocated blocks p50 {:.1} µs",
                floor_dir.display(),
                f.overwrite_p50_us,
                f.fresh_p50_us
            );
            floors.sync = Some(f);
        }
        Err(e) => println!("fdatasync floor not measured: {e:#}"),
    }
    match target.data_dir() {
        Some(dir) => println!(
            "Standard suite against a broker started at {addr}, data in {}\n",
            dir.display()
        ),
        None => println!("Standard suite against the broker at {addr}\n"),
    }
    type Step<'a> = (&'a str, Goal, Box<dyn Fn() -> Result<Report> + 'a>);
    let steps: Vec<Step<'_>> = vec![
        (
            "produce batch 100, 64 in flight, QoS received",
            Goal::MsgsPerS(2_000_000.0),
            Box::new(|| {
                produce::run(
                    addr,
                    &produce_args("bench-received", 100, 64, Qos::Received, args.messages),
                    ui,
                )
            }),
        ),
        (
            "produce batch 100, 64 in flight, QoS all",
            Goal::MsgsPerS(1_000_000.0),
            Box::new(|| {
                produce::run(
                    addr,
                    &produce_args("bench-all", 100, 64, Qos::All, args.messages),
                    ui,
                )
            }),
        ),
        (
            "produce batch 1, 1000 in flight, QoS received",
            Goal::MsgsPerS(1_000_000.0),
            Box::new(|| {
                produce::run(
                    addr,
                    &produce_args("bench-batch1", 1, 1000, Qos::Received, args.messages / 5),
                    ui,
                )
            }),
        ),
        (
            "consume catch-up, 1 consumer",
            Goal::MbPerS(1_000.0),
            Box::new(|| {
                consume::run_consume(
                    addr,
                    &ConsumeArgs {
                        consumers: 1,
                        message_size: 100,
                        batch: 100,
                        messages: args.messages,
                        fetch_bytes: consume::FETCH_BYTES_DEFAULT,
                        topic: "bench-consume".into(),
                    },
                    ui,
                )
            }),
        ),
        (
            PING_STEP,
            Goal::P50UsAtMost(30.0),
            Box::new(|| {
                ping::run(
                    addr,
                    &PingArgs {
                        messages: args.pings,
                        in_flight: 1,
                        message_size: 8,
                    },
                    ui,
                )
            }),
        ),
        // One request in flight, the client that waits for each answer
        // (issue 10's goals, relative to the Ping and the disk above).
        (
            "produce batch 1, one in flight, QoS received",
            Goal::P50OverPingAtMost(10.0),
            Box::new(|| {
                produce::run(
                    addr,
                    &produce_args("bench-one-received", 1, 1, Qos::Received, args.pings),
                    ui,
                )
            }),
        ),
        (
            "produce batch 1, one in flight, QoS all",
            Goal::P50OverSyncAtMost(30.0),
            Box::new(|| {
                produce::run(
                    addr,
                    &produce_args("bench-one-all", 1, 1, Qos::All, args.pings / 4),
                    ui,
                )
            }),
        ),
        (
            "produce batch 100, one in flight, QoS received",
            Goal::MsgsPerS(1_500_000.0),
            Box::new(|| {
                produce::run(
                    addr,
                    &produce_args("bench-one-b100", 100, 1, Qos::Received, args.messages / 5),
                    ui,
                )
            }),
        ),
        (
            "hutong conversation",
            Goal::ElapsedMsAtMost(50.0),
            Box::new(|| {
                conversation::run(
                    &HutongArgs {
                        meetings: args.meetings,
                    },
                    ui,
                )
            }),
        ),
    ];
    let mut clean = true;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for (name, goal, step) in &steps {
        match step() {
            Ok(report) => {
                print!("{}", report.summary());
                println!();
                if *name == PING_STEP {
                    floors.ping_p50_us = Some(report.latency.value_at_quantile(0.5) as f64 / 1e3);
                }
                let (figure, target, met) = goal.judge(&report, &floors);
                clean &= report.is_clean();
                let status = if !report.is_clean() {
                    "FAILED"
                } else if met {
                    "met"
                } else {
                    "below target"
                };
                rows.push((name.to_string(), figure, target, status));
                let mut j = report.to_json();
                if let Value::Object(o) = &mut j {
                    o.insert("step".into(), json!(name));
                    o.insert("target".into(), json!(goal_text(goal)));
                    o.insert("target_met".into(), json!(met));
                }
                results.push(j);
            }
            Err(e) => {
                clean = false;
                println!("{name}: FAILED: {e:#}\n");
                rows.push((name.to_string(), "-".into(), goal_text(goal), "FAILED"));
                results.push(json!({"step": name, "error": format!("{e:#}"), "errors": 1}));
            }
        }
    }
    if let Err(e) = target.stop() {
        clean = false;
        println!("stopping the broker failed: {e:#}");
    }
    println!("Summary");
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    for (name, figure, target, status) in &rows {
        println!("  {name:<width$}  {figure:>34}  {target:>18}  {status}");
    }
    if common.json {
        println!(
            "{}",
            json!({
                "scenario": "suite",
                "machine": machine,
                "sync_floor": floors.sync.map(|f| json!({
                    "overwrite_p50_us": f.overwrite_p50_us,
                    "fresh_p50_us": f.fresh_p50_us,
                })),
                "results": results,
                "errors": u64::from(!clean),
            })
        );
    }
    Ok(clean)
}

fn goal_text(goal: &Goal) -> String {
    match *goal {
        Goal::MsgsPerS(t) => format!(">= {t:.0} msg/s"),
        Goal::MbPerS(t) => format!(">= {t:.0} MB/s"),
        Goal::P50UsAtMost(t) => format!("p50 <= {t:.0} µs"),
        Goal::ElapsedMsAtMost(t) => format!("<= {t:.0} ms"),
        Goal::P50OverPingAtMost(t) => format!("p50 <= Ping p50 + {t:.0} µs"),
        Goal::P50OverSyncAtMost(t) => format!("p50 <= fdatasync p50 + {t:.0} µs"),
    }
}

/// CPU model, cores, kernel and the filesystem holding the broker's data,
/// for the record (docs/benchmarks.md).
fn machine_line(data_dir: Option<&std::path::Path>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let fs = data_dir.map_or_else(|| "unknown (broker not started here)".into(), filesystem_of);
    format!("{cpu}, {cores} cores, Linux {kernel}, data on {fs}")
}

/// The filesystem type and device of the mount holding `path`.
fn filesystem_of(path: &std::path::Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} ({dev} on {mnt})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, d)| d)
}
