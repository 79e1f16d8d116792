//! The `hutong` command: run a broker, manage topics, produce and consume.
//!
//! Errors print as `hutong: <message>` on stderr and exit with status 1.
//! `docs/cli.md` documents every command and flag.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hutong::broker::Broker;
use hutong::client::admin::{TopicConfig, TopicConfigChange};
use hutong::client::producer::unix_time_ms;
use hutong::client::{Admin, Consumer, Producer, ProducerConfig, Receipt, StartFrom};
use hutong::config::Config;
use hutong::wire::batch::BatchBuilder;
use hutong::wire::{ErrorCode, Qos};
use nix::sys::signal::{SigSet, Signal};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The broker address client commands use by default.
const ADDR_DEFAULT: &str = hutong::config::LISTEN_DEFAULT;
/// `produce` sends a batch once it holds this many lines...
const PRODUCE_BATCH_RECORDS_MAX: u32 = 1000;
/// ...or this many bytes, or when no further line is buffered on stdin.
const PRODUCE_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// The stdin buffer of `produce`.
const PRODUCE_READ_BUFFER_BYTES: usize = 1024 * 1024;
/// How long one fetch of `consume` waits for new records.
const CONSUME_POLL_WAIT: Duration = Duration::from_secs(10);

/// hutong: a persistent, replicated, low-latency message broker.
#[derive(Debug, Parser)]
#[command(name = "hutong", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker until SIGINT or SIGTERM.
    Broker(BrokerArgs),
    /// Create and list topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Send each line of stdin as one message.
    Produce(ProduceArgs),
    /// Print the value of each message, one per line.
    Consume(ConsumeArgs),
    /// Inspect the replication group.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Each member's id, address, role, term and W/F/R/C positions (every
    /// member is asked; one that does not answer in 2 s is `unreachable`).
    Status {
        /// Print one JSON object: `leader` (node id or null), `term`, `nodes`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory of the journal and checkpoints [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file; the flags above override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Create unknown topics on first produce.
    #[arg(long)]
    auto_create_topics: bool,
    /// This broker's id in its replication group (needs --peers).
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// Every member of the group, this broker included: `1=HOST:PORT,2=...`
    /// (the address this broker uses to reach each one).
    #[arg(long, value_name = "ID=ADDR,...")]
    peers: Option<String>,
    /// Size of each journal segment file [default: 128 MiB].
    #[arg(long, value_name = "N")]
    segment_bytes: Option<usize>,
    /// Journal bytes kept; older sealed segments are deleted (0: no limit)
    /// [default: 0].
    #[arg(long, value_name = "N")]
    retention_bytes: Option<u64>,
    /// Segments whose newest batch is older than this many ms are deleted
    /// (0: no limit) [default: 604800000, 7 days].
    #[arg(long, value_name = "N")]
    retention_ms: Option<u64>,
    /// Cut the journal at damage that recovery refuses to cut on its own
    /// (acknowledged data), logging what is dropped. See docs/operations.md.
    #[arg(long)]
    repair: bool,
    /// Read and check every batch of the journal at this start instead of
    /// starting from the catalog snapshot and the segment index
    /// files (damage anywhere is then found before the broker serves).
    #[arg(long)]
    verify_journal: bool,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Broker address.
    #[arg(long, value_name = "ADDR", default_value = ADDR_DEFAULT)]
    addr: String,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 bytes of [A-Za-z0-9._-].
        name: String,
        /// Number of partitions.
        #[arg(long, value_name = "N")]
        partitions: u32,
        /// Records older than this many ms go (0: no time limit) [default:
        /// the broker's retention_ms].
        #[arg(long, value_name = "N", value_parser = parse_limit)]
        retention_ms: Option<u64>,
        /// Bytes each partition keeps at least; older records beyond them
        /// go (0: no limit) [default: none].
        #[arg(long, value_name = "N", value_parser = parse_limit)]
        retention_bytes: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a topic's settings; prints them after the change.
    Alter {
        /// Topic name.
        name: String,
        /// Records older than this many ms go (0: no time limit), or
        /// `default` for the broker's retention_ms.
        #[arg(long, value_name = "N|default", value_parser = parse_setting)]
        retention_ms: Option<Setting>,
        /// Bytes each partition keeps at least (0: no limit), or `default`
        /// for none of its own.
        #[arg(long, value_name = "N|default", value_parser = parse_setting)]
        retention_bytes: Option<Setting>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topics with their partitions and offset ranges.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a topic's partitions: log start, end offset, messages and bytes
    /// held.
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a partition's records below an offset: its log start moves
    /// there (durably); their bytes leave the disk with their segments.
    DeleteRecords {
        /// Topic name.
        name: String,
        /// The partition.
        #[arg(long, value_name = "P")]
        partition: u32,
        /// The partition's new log start, or `end` for every record.
        #[arg(long, value_name = "OFFSET|end", value_parser = parse_before)]
        before: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A topic setting as `hutong topic alter` takes it: a value, or `None`
/// (`default`) to leave it to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setting(Option<u64>);

/// A topic setting: a number, or `default` to leave it to the broker.
fn parse_setting(s: &str) -> Result<Setting, String> {
    if s == "default" {
        return Ok(Setting(None));
    }
    parse_limit(s)
        .map(|v| Setting(Some(v)))
        .map_err(|_| format!("{s:?} is neither a number nor `default`"))
}

/// A topic limit: a number below `u64::MAX` (which the wire reserves for
/// a setting left to the broker).
fn parse_limit(s: &str) -> Result<u64, String> {
    match s.parse() {
        Ok(v) if v < hutong::wire::topic_config::SETTING_DEFAULT => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number from 0 to {}",
            hutong::wire::topic_config::SETTING_DEFAULT - 1
        )),
    }
}

/// `--before`: an offset, or `end` for all the records.
fn parse_before(s: &str) -> Result<u64, String> {
    if s == "end" {
        return Ok(hutong::client::admin::DELETE_TO_END);
    }
    s.parse()
        .map_err(|_| format!("{s:?} is neither an offset nor `end`"))
}

/// The acknowledgement level, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QosArg {
    /// Never answered (fire and forget).
    None,
    /// Appended to the leader's journal.
    Received,
    /// fdatasync'd on the leader.
    Flushed,
    /// Held by a majority of replicas.
    Replicated,
    /// Durable on a majority of replicas.
    All,
}

impl From<QosArg> for Qos {
    fn from(q: QosArg) -> Qos {
        match q {
            QosArg::None => Qos::None,
            QosArg::Received => Qos::Received,
            QosArg::Flushed => Qos::Flushed,
            QosArg::Replicated => Qos::Replicated,
            QosArg::All => Qos::All,
        }
    }
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// Topic to write to.
    #[arg(long, value_name = "T")]
    topic: String,
    /// Partition to write to.
    #[arg(long, value_name = "P", default_value_t = 0)]
    partition: u32,
    /// Key of every message (none by default).
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t = QosArg::All)]
    qos: QosArg,
    /// How long the broker may take to reach the QoS level.
    #[arg(long, value_name = "N", default_value_t = hutong::client::producer::PRODUCE_TIMEOUT_MS_DEFAULT)]
    timeout_ms: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// Topic to read.
    #[arg(long, value_name = "T")]
    topic: String,
    /// Partition to read.
    #[arg(long, value_name = "P", default_value_t = 0)]
    partition: u32,
    /// Where to start: earliest, latest or an offset.
    #[arg(long, value_name = "earliest|latest|OFFSET", default_value = "earliest", value_parser = parse_start)]
    from: StartFrom,
    /// Start at the first message the broker appended at or after this
    /// time: RFC 3339 (2026-12-07T16:00:00Z, offsets and fractions
    /// allowed) or milliseconds since the Unix epoch.
    #[arg(long, value_name = "RFC3339|MS", conflicts_with = "from", value_parser = parse_time)]
    from_time: Option<i64>,
    /// Exit after this many messages, waiting for them if needed
    /// (default: run until killed).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// A time as milliseconds since the Unix epoch: an integer is taken as
/// such, anything else as an RFC 3339 date-time.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339_ms(s).ok_or_else(|| {
        format!(
            "expected milliseconds since the epoch or an RFC 3339 time such as \
             2026-12-07T16:00:00Z, not {s:?}"
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as ms since the Unix epoch
/// (fractions beyond milliseconds are cut).
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| {
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut ms = 0;
    if sep(at, b".") {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        // The first three digits, padded: ".5" is 500 ms.
        let frac = &s[start..at.min(start + 3)];
        ms = format!("{frac:0<3}").parse::<i64>().ok()?;
    }
    let offset_minutes = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && sep(at + 3, b":") => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (the civil
    // calendar arithmetic of shifting the year to start in March).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + ms)
}

fn parse_start(s: &str) -> Result<StartFrom, String> {
    match s {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        offset => offset
            .parse()
            .map(StartFrom::Offset)
            .map_err(|_| format!("expected earliest, latest or an offset, not {offset:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => run_broker(args),
        Command::Topic {
            command:
                TopicCommand::Create {
                    name,
                    partitions,
                    retention_ms,
                    retention_bytes,
                    client,
                },
        } => create_topic(
            &client.addr,
            &name,
            partitions,
            TopicConfig {
                retention_ms,
                retention_bytes,
            },
        ),
        Command::Topic {
            command:
                TopicCommand::Alter {
                    name,
                    retention_ms,
                    retention_bytes,
                    client,
                },
        } => alter_topic(
            &client.addr,
            &name,
            TopicConfigChange {
                retention_ms: retention_ms.map(|s| s.0),
                retention_bytes: retention_bytes.map(|s| s.0),
            },
        ),
        Command::Topic {
            command: TopicCommand::List { client },
        } => list_topics(&client.addr),
        Command::Topic {
            command: TopicCommand::Describe { name, client },
        } => describe_topic(&client.addr, &name),
        Command::Topic {
            command:
                TopicCommand::DeleteRecords {
                    name,
                    partition,
                    before,
                    client,
                },
        } => delete_records(&client.addr, &name, partition, before),
        Command::Produce(args) => produce(args),
        Command::Consume(args) => consume(args),
        Command::Cluster {
            command: ClusterCommand::Status { json, client },
        } => cluster_status(&client.addr, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hutong: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Large allocations come straight from the kernel and go back to it when
/// freed. glibc raises this threshold whenever such a block is freed, after
/// which blocks of up to 32 MiB come from its heaps and, once freed, mostly
/// stay in the process: the in-memory partition indexes, whose large
/// buckets are freed whenever their entries move to segment index files
/// (and after recovery), would then keep the broker's memory at its high
/// water mark. A fixed threshold keeps memory independent of the data held.
fn return_large_blocks_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator;
    // it is called before the broker starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn run_broker(args: BrokerArgs) -> Result<()> {
    return_large_blocks_to_the_kernel();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.auto_create_topics {
        config.auto_create_topics = true;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(peers) = &args.peers {
        config.peers = hutong::config::parse_peers(peers)?;
    }
    if let Some(n) = args.segment_bytes {
        config.segment_bytes = n;
    }
    if let Some(n) = args.retention_bytes {
        config.retention_bytes = n;
    }
    if let Some(ms) = args.retention_ms {
        config.retention_ms = Some(ms);
    }
    config.repair = args.repair;
    config.verify_journal = args.verify_journal;
    // Block the signals before any broker thread exists: threads inherit
    // the mask, so the signals stay pending for `wait` below instead of
    // killing the process or landing on a pipeline thread.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("cannot block SIGINT and SIGTERM")?;
    let broker = Broker::start(config)?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "hutong listening on {}", broker.local_addr())?;
        stdout.flush()?;
    }
    // A signal asks for a shutdown; a fatal error inside the broker starts
    // one by itself. Wait for the broker, not for a signal, so that a
    // broker that failed ends the process instead of lingering.
    let handle = broker.shutdown_handle();
    std::thread::Builder::new()
        .name("hutong-signals".into())
        .spawn(move || match signals.wait() {
            Ok(signal) => {
                hutong::log!("received {signal}, shutting down");
                handle.shutdown();
            }
            Err(e) => {
                hutong::log!("cannot wait for a signal ({e}); shutting down");
                handle.shutdown();
            }
        })
        .context("cannot start the signal thread")?;
    broker.wait()?;
    Ok(())
}

/// How long `cluster status` waits for each member.
const CLUSTER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

fn cluster_status(addr: &str, json: bool) -> Result<()> {
    use hutong::client::cluster::{group_status, role_name};
    let group = group_status(addr, CLUSTER_STATUS_TIMEOUT)
        .with_context(|| format!("cannot ask {addr} for its cluster status"))?;
    let mut out = std::io::stdout().lock();
    if json {
        let nodes: Vec<String> = group
            .members
            .iter()
            .map(|m| match &m.status {
                Some(s) => format!(
                    "{{\"id\":{},\"addr\":{},\"role\":\"{}\",\"term\":{},\"leader\":{},\
                     \"written\":{},\"flushed\":{},\"replicated\":{},\"committed\":{},\
                     \"caught_up\":{}}}",
                    m.id,
                    json_string(&m.addr),
                    role_name(s.role),
                    s.term,
                    json_id(s.leader_id),
                    s.written,
                    s.flushed,
                    s.replicated,
                    s.committed,
                    s.caught_up
                ),
                None => format!(
                    "{{\"id\":{},\"addr\":{},\"role\":\"unreachable\"}}",
                    m.id,
                    json_string(&m.addr)
                ),
            })
            .collect();
        writeln!(
            out,
            "{{\"leader\":{},\"term\":{},\"nodes\":[{}]}}",
            group.leader.map_or("null".to_string(), |l| l.to_string()),
            group.term,
            nodes.join(",")
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "leader: {}  term: {}",
        group.leader.map_or("none".to_string(), |l| l.to_string()),
        group.term
    )?;
    writeln!(
        out,
        "{:>4}  {:<22} {:<13} {:>6} {:>14} {:>14} {:>14} {:>14}  votes",
        "id", "addr", "role", "term", "written", "flushed", "replicated", "committed"
    )?;
    for m in &group.members {
        match &m.status {
            Some(s) => writeln!(
                out,
                "{:>4}  {:<22} {:<13} {:>6} {:>14} {:>14} {:>14} {:>14}  {}",
                m.id,
                m.addr,
                role_name(s.role),
                s.term,
                s.written,
                s.flushed,
                s.replicated,
                s.committed,
                if s.caught_up { "yes" } else { "no" }
            )?,
            None => writeln!(out, "{:>4}  {:<22} unreachable", m.id, m.addr)?,
        }
    }
    Ok(())
}

/// A node id for JSON: `null` for 0 (none).
fn json_id(id: u64) -> String {
    if id == 0 {
        "null".to_string()
    } else {
        id.to_string()
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn admin(addr: &str) -> Result<Admin> {
    Admin::connect(addr).with_context(|| format!("cannot connect to {addr}"))
}

/// How long `topic create` looks for the leader of a replication group.
const LEADER_WAIT: Duration = Duration::from_secs(10);

fn create_topic(addr: &str, name: &str, partitions: u32, config: TopicConfig) -> Result<()> {
    // A member of a replication group that is not the leader answers
    // NotLeader: the topic is created on the leader instead.
    hutong::client::cluster::on_leader(addr, LEADER_WAIT, |admin| {
        admin.create_topic_with(name, partitions, config)
    })
    .with_context(|| format!("cannot create topic {name}"))
}

fn alter_topic(addr: &str, name: &str, change: TopicConfigChange) -> Result<()> {
    if change == TopicConfigChange::default() {
        anyhow::bail!("nothing to change: give --retention-ms or --retention-bytes");
    }
    // As for a creation: a group member that is not the leader sends it
    // there.
    let config = hutong::client::cluster::on_leader(addr, LEADER_WAIT, |admin| {
        admin.alter_topic(name, change)
    })
    .with_context(|| format!("cannot alter topic {name}"))?;
    println!("topic {name}: {}", settings_line(&config));
    Ok(())
}

/// A topic's settings as `hutong topic describe` and `alter` print them.
fn settings_line(config: &TopicConfig) -> String {
    let show = |s: Option<u64>, default: &str| match s {
        None => default.to_string(),
        Some(0) => "none".to_string(),
        Some(v) => v.to_string(),
    };
    // The broker has no per-partition size limit to fall back on.
    format!(
        "retention_ms: {}, retention_bytes: {}",
        show(config.retention_ms, "broker default"),
        show(config.retention_bytes, "default (none)")
    )
}

fn list_topics(addr: &str) -> Result<()> {
    let metadata = admin(addr)?.metadata(&[])?;
    let mut out = std::io::stdout().lock();
    for topic in &metadata.topics {
        if topic.error_code != 0 {
            let code = ErrorCode::from_u16(topic.error_code)
                .map_or_else(|| topic.error_code.to_string(), |c| c.name().to_string());
            writeln!(out, "{} error={code}", topic.name)?;
            continue;
        }
        write!(out, "{} partitions={}", topic.name, topic.partitions.len())?;
        for p in &topic.partitions {
            write!(out, " {}:{}..{}", p.partition, p.start_offset, p.end_offset)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn delete_records(addr: &str, name: &str, partition: u32, before: u64) -> Result<()> {
    let start = hutong::client::cluster::on_leader(addr, LEADER_WAIT, |admin| {
        admin.delete_records(name, partition, before)
    })
    .with_context(|| format!("cannot delete records of topic {name}"))?;
    println!("topic {name} partition {partition}: log start {start}");
    Ok(())
}

fn describe_topic(addr: &str, name: &str) -> Result<()> {
    let metadata = admin(addr)?.describe(&[name])?;
    let Some(topic) = metadata.topics.into_iter().find(|t| t.name == name) else {
        anyhow::bail!("the broker did not describe topic {name}");
    };
    if topic.error_code != 0 {
        let code = ErrorCode::from_u16(topic.error_code)
            .map_or_else(|| topic.error_code.to_string(), |c| c.name().to_string());
        anyhow::bail!("topic {name}: {code}");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "topic {name}: {} partition(s)", topic.partitions.len())?;
    writeln!(out, "{}", settings_line(&topic.config))?;
    writeln!(
        out,
        "{:>9}  {:>20}  {:>20}  {:>20}  {:>20}",
        "partition", "log_start", "end_offset", "messages", "bytes"
    )?;
    for p in &topic.partitions {
        writeln!(
            out,
            "{:>9}  {:>20}  {:>20}  {:>20}  {:>20}",
            p.partition,
            p.start_offset,
            p.end_offset,
            p.end_offset.saturating_sub(p.start_offset),
            p.bytes
        )?;
    }
    Ok(())
}

fn produce(args: ProduceArgs) -> Result<()> {
    let addr = &args.client.addr;
    let config = ProducerConfig {
        qos: args.qos.into(),
        timeout_ms: args.timeout_ms,
        ..ProducerConfig::default()
    };
    let producer =
        Producer::connect(addr, config).with_context(|| format!("cannot connect to {addr}"))?;
    let key = args.key.as_deref().unwrap_or("").as_bytes();
    let mut input = BufReader::with_capacity(PRODUCE_READ_BUFFER_BYTES, std::io::stdin().lock());
    let mut builder = BatchBuilder::new();
    let mut line = Vec::new();
    let mut pending: VecDeque<Receipt> = VecDeque::new();
    loop {
        builder.clear();
        let now_ms = unix_time_ms();
        // Wait for one line, then take the lines already buffered, so a
        // slow writer gets low latency and a fast one gets big batches.
        while builder.len() < PRODUCE_BATCH_RECORDS_MAX && builder.size() < PRODUCE_BATCH_BYTES_MAX
        {
            if !builder.is_empty() && !input.buffer().contains(&b'\n') {
                break;
            }
            line.clear();
            if input
                .read_until(b'\n', &mut line)
                .context("cannot read stdin")?
                == 0
            {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            builder.push(now_ms, key, &line, &[]);
        }
        if builder.is_empty() {
            break;
        }
        // With the producer's id, the producer stamps the partition's epoch
        // and next sequence into it, so a batch retried after a lost
        // connection or a leader change is stored once and in order.
        let batch = builder.finish(producer.producer_id(), 0);
        pending.push_back(producer.send(&args.topic, args.partition, batch)?);
        // Take the acknowledgements already in, so a failure stops the run
        // early instead of after the whole input.
        while pending.front().is_some_and(Receipt::is_ready) {
            if let Some(receipt) = pending.pop_front() {
                receipt.wait()?;
            }
        }
    }
    for receipt in pending {
        receipt.wait()?;
    }
    // Reports error answers to QoS none sends; a no-op otherwise.
    producer.flush()?;
    Ok(())
}

fn consume(args: ConsumeArgs) -> Result<()> {
    let addr = &args.client.addr;
    let from = args.from_time.map_or(args.from, StartFrom::Time);
    let mut consumer = Consumer::connect(addr, &args.topic, args.partition, from)
        .with_context(|| format!("cannot read {}/{} at {addr}", args.topic, args.partition))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut remaining = args.count;
    while remaining != Some(0) {
        let skipped = consumer.skipped();
        let records = consumer.poll(CONSUME_POLL_WAIT)?;
        if consumer.skipped() > skipped {
            eprintln!(
                "hutong: {} message(s) were deleted by retention before they were read; \
                 going on from offset {}",
                consumer.skipped() - skipped,
                consumer.position()
            );
        }
        let take = remaining.map_or(records.len(), |n| records.len().min(n as usize));
        let written = records[..take].iter().try_for_each(|r| {
            out.write_all(&r.value)?;
            out.write_all(b"\n")
        });
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`| head`): a normal way to stop.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("cannot write stdout"),
        }
        remaining = remaining.map(|n| n - take as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn rfc3339_times_are_milliseconds_since_the_epoch() {
        for (text, ms) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-12-07T16:00:00Z", 1_796_659_200_000),
            ("2026-12-07t16:00:00z", 1_796_659_200_000),
            ("2000-02-29T12:34:56.789+01:30", 951_822_296_789),
            ("2000-02-29 12:34:56.7891234+01:30", 951_822_296_789),
            ("1969-12-31T23:59:59.5-05:00", 17_999_500),
            ("1796659200000", 1_796_659_200_000),
            ("-5", -5),
        ] {
            assert_eq!(parse_time(text), Ok(ms), "{text}");
        }
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-07T16:00:00",
            "2026-12-07T24:00:00Z",
            "2026-12-07T16:00:00.Z",
            "2026-12-07T16:00:00+1:00",
            "2026-12-07",
            "yesterday",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hutong").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broker_flags_are_optional_so_the_config_file_can_supply_them() {
        let cli = parse(&["broker"]).unwrap();
        let Command::Broker(args) = cli.command else {
            panic!("not broker");
        };
        assert!(args.listen.is_none() && args.data_dir.is_none() && !args.auto_create_topics);
        let cli = parse(&[
            "broker",
            "--listen",
            "0.0.0.0:9000",
            "--data-dir",
            "/tmp/x",
            "--auto-create-topics",
        ])
        .unwrap();
        let Command::Broker(args) = cli.command else {
            panic!("not broker");
        };
        assert_eq!(args.listen, Some("0.0.0.0:9000".parse().unwrap()));
        assert!(args.auto_create_topics);
        assert!(!args.verify_journal && !args.repair);
        let Command::Broker(args) = parse(&["broker", "--verify-journal"]).unwrap().command else {
            panic!("not broker");
        };
        assert!(args.verify_journal && !args.repair);
    }

    #[test]
    fn delete_records_takes_an_offset_or_end_and_refuses_anything_else() {
        let Command::Topic {
            command:
                TopicCommand::DeleteRecords {
                    name,
                    partition,
                    before,
                    ..
                },
        } = parse(&[
            "topic",
            "delete-records",
            "t",
            "--partition",
            "2",
            "--before",
            "7",
        ])
        .unwrap()
        .command
        else {
            panic!("not delete-records");
        };
        assert_eq!((name.as_str(), partition, before), ("t", 2, 7));
        assert_eq!(
            parse_before("end"),
            Ok(hutong::client::admin::DELETE_TO_END)
        );
        let err = parse(&[
            "topic",
            "delete-records",
            "t",
            "--partition",
            "0",
            "--before",
            "x",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("neither an offset nor `end`"), "{err}");
        assert!(
            parse(&["topic", "delete-records", "t", "--before", "1"]).is_err(),
            "needs a partition"
        );
    }

    #[test]
    fn produce_defaults_and_qos_names() {
        let Command::Produce(args) = parse(&["produce", "--topic", "t"]).unwrap().command else {
            panic!("not produce");
        };
        assert_eq!(
            (args.partition, args.qos, args.timeout_ms),
            (0, QosArg::All, 30_000)
        );
        assert_eq!(args.client.addr, "127.0.0.1:7070");
        for (name, qos) in [
            ("none", Qos::None),
            ("received", Qos::Received),
            ("flushed", Qos::Flushed),
            ("replicated", Qos::Replicated),
            ("all", Qos::All),
        ] {
            let Command::Produce(args) = parse(&["produce", "--topic", "t", "--qos", name])
                .unwrap()
                .command
            else {
                panic!("not produce");
            };
            assert_eq!(Qos::from(args.qos), qos);
        }
        assert!(parse(&["produce", "--topic", "t", "--qos", "maybe"]).is_err());
        assert!(parse(&["produce"]).is_err());
    }

    #[test]
    fn consume_parses_the_start_position() {
        let Command::Consume(args) = parse(&["consume", "--topic", "t"]).unwrap().command else {
            panic!("not consume");
        };
        assert_eq!((args.from, args.count), (StartFrom::Earliest, None));
        let Command::Consume(args) = parse(&[
            "consume", "--topic", "t", "--from", "17", "--count", "3", "--addr", "h:1",
        ])
        .unwrap()
        .command
        else {
            panic!("not consume");
        };
        assert_eq!((args.from, args.count), (StartFrom::Offset(17), Some(3)));
        assert_eq!(args.client.addr, "h:1");
        assert_eq!(parse_start("latest"), Ok(StartFrom::Latest));
        assert!(parse(&["consume", "--topic", "t", "--from", "soon"]).is_err());
    }

    #[test]
    fn consume_from_time_takes_rfc3339_or_ms_and_excludes_from() {
        let Command::Consume(args) = parse(&[
            "consume",
            "--topic",
            "t",
            "--from-time",
            "1970-01-01T00:00:01.5Z",
        ])
        .unwrap()
        .command
        else {
            panic!("not consume");
        };
        assert_eq!(args.from_time, Some(1_500));
        let err = parse(&["consume", "--topic", "t", "--from-time", "yesterday"]).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert!(parse(&["consume", "--topic", "t", "--from", "5", "--from-time", "9"]).is_err());
    }

    #[test]
    fn topic_describe_takes_a_name() {
        assert!(parse(&["topic", "describe"]).is_err());
        assert!(matches!(
            parse(&["topic", "describe", "orders"]).unwrap().command,
            Command::Topic {
                command: TopicCommand::Describe { ref name, .. }
            } if name == "orders"
        ));
    }

    #[test]
    fn topic_settings_are_numbers_or_default() {
        assert_eq!(parse_setting("default"), Ok(Setting(None)));
        assert_eq!(parse_setting("0"), Ok(Setting(Some(0))));
        assert_eq!(parse_setting("60000"), Ok(Setting(Some(60_000))));
        assert!(parse_setting("-1").is_err());
        assert!(parse_setting("18446744073709551615").is_err(), "u64::MAX");
        assert!(parse_setting("forever").is_err());
        let cli = parse(&["topic", "alter", "t", "--retention-ms", "default"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: TopicCommand::Alter {
                    retention_ms: Some(Setting(None)),
                    retention_bytes: None,
                    ..
                }
            }
        ));
        let cli = parse(&[
            "topic",
            "create",
            "t",
            "--partitions",
            "1",
            "--retention-bytes",
            "9",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: TopicCommand::Create {
                    retention_ms: None,
                    retention_bytes: Some(9),
                    ..
                }
            }
        ));
        assert_eq!(
            settings_line(&TopicConfig {
                retention_ms: Some(0),
                retention_bytes: None
            }),
            "retention_ms: none, retention_bytes: default (none)"
        );
        assert!(parse_limit("18446744073709551615").is_err());
        assert_eq!(parse_limit("18446744073709551614"), Ok(u64::MAX - 1));
    }

    #[test]
    fn topic_create_needs_a_partition_count() {
        assert!(parse(&["topic", "create", "orders"]).is_err());
        let cli = parse(&["topic", "create", "orders", "--partitions", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: TopicCommand::Create { partitions: 3, .. }
            }
        ));
        assert!(parse(&["topic", "list"]).is_ok());
    }
}
