//! Each scenario of `hutong-bench`, run small as a subprocess that starts
//! its own broker: it must exit 0 and its `--json` line must report every
//! message confirmed and no error. Figures are not checked here (timing
//! goals live in docs/benchmarks.md, never in tests).

use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a small run may take before the test kills it and fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The `hutong` binary the bench starts: `$HUTONG_BIN`, or the one cargo
/// built next to `hutong-bench` in `target/<profile>/`.
fn hutong_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HUTONG_BIN") {
        return PathBuf::from(p);
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_hutong-bench"));
    let bin = bench.with_file_name("hutong");
    assert!(
        bin.is_file(),
        "no broker binary at {} (build the workspace first: cargo build --workspace)",
        bin.display()
    );
    bin
}

/// What a run printed and how it ended.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON object on the last stdout line.
    fn json(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "last line is not JSON ({e}): {last:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `hutong-bench ARGS --json --quiet`, killing it after RUN_TIMEOUT.
fn bench(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hutong-bench"))
        .args(args)
        .args(["--json", "--quiet"])
        .env("HUTONG_BIN", hutong_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hutong-bench starts");
    // Drain both pipes on threads so a chatty run cannot block on them.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hutong-bench {args:?} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        success: status.success(),
        stdout: out.join().expect("reader thread"),
        stderr: err.join().expect("reader thread"),
    }
}

/// Runs a scenario that must succeed with `messages` confirmed and no error.
fn clean_run(args: &[&str], messages: u64) -> Value {
    let run = bench(args);
    assert!(
        run.success,
        "hutong-bench {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let v = run.json();
    assert_eq!(v["messages"], messages, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    v
}

#[test]
fn produce_has_every_message_acknowledged_at_qos_all() {
    let v = clean_run(&["produce", "--messages", "10000"], 10_000);
    assert_eq!(v["scenario"], "produce");
    assert_eq!(v["qos"], "all");
    assert_eq!(v["latency_samples"], 100, "one sample per batch: {v}");
    assert!(v["p50_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn produce_one_message_per_request_with_many_in_flight() {
    let v = clean_run(
        &[
            "produce",
            "--messages",
            "10000",
            "--batch",
            "1",
            "--in-flight",
            "1000",
            "--qos",
            "received",
        ],
        10_000,
    );
    assert_eq!(v["latency_samples"], 10_000);
}

#[test]
fn produce_from_several_producers_with_an_uneven_split() {
    clean_run(
        &[
            "produce",
            "--messages",
            "10001",
            "--producers",
            "3",
            "--batch",
            "7",
            "--partitions",
            "2",
        ],
        10_001,
    );
}

#[test]
fn produce_open_loop_at_a_rate() {
    let v = clean_run(
        &[
            "produce",
            "--messages",
            "10000",
            "--rate",
            "200000",
            "--qos",
            "received",
        ],
        10_000,
    );
    // 10,000 messages at 200,000 msg/s take at least 50 ms.
    assert!(v["elapsed_s"].as_f64().unwrap() >= 0.045, "{v}");
}

#[test]
fn produce_at_qos_none_is_confirmed_by_a_final_ping() {
    clean_run(&["produce", "--messages", "10000", "--qos", "none"], 10_000);
}

#[test]
fn produce_for_a_duration() {
    let run = bench(&["produce", "--duration", "0.2", "--qos", "received"]);
    assert!(
        run.success,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let v = run.json();
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"], 0);
}

#[test]
fn consume_reads_back_every_sequence_number() {
    let v = clean_run(&["consume", "--messages", "10000"], 10_000);
    assert_eq!(v["scenario"], "consume");
    clean_run(
        &[
            "consume",
            "--messages",
            "10000",
            "--consumers",
            "2",
            "--fetch-bytes",
            "4096",
        ],
        10_000,
    );
}

#[test]
fn e2e_receives_every_message_with_its_latency() {
    let v = clean_run(&["e2e", "--messages", "10000", "--producers", "2"], 10_000);
    assert_eq!(v["latency_samples"], 10_000, "one sample per message: {v}");
}

#[test]
fn ping_one_in_flight_and_pipelined() {
    let v = clean_run(&["ping", "--messages", "1000"], 1000);
    assert_eq!(v["in_flight"], 1);
    clean_run(&["ping", "--messages", "1000", "--in-flight", "32"], 1000);
}

#[test]
fn hutong_conversation_checks_every_reply() {
    let v = clean_run(&["hutong", "--meetings", "1000"], 1000);
    assert_eq!(v["utterances"], 6000);
    assert!(v["meetings_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn suite_runs_every_scenario_against_its_own_broker() {
    let run = bench(&[
        "suite",
        "--messages",
        "10000",
        "--pings",
        "1000",
        "--meetings",
        "1000",
    ]);
    assert!(
        run.success,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let v = run.json();
    assert_eq!(v["errors"], 0, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 9);
    // The disk's floor, measured by the suite for the QoS all goal.
    for floor in ["overwrite_p50_us", "fresh_p50_us"] {
        assert!(v["sync_floor"][floor].as_f64().unwrap() > 0.0, "{v}");
    }
    let targets: Vec<&str> = results
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"p50 <= Ping p50 + 10 µs"), "{targets:?}");
    assert!(
        targets.contains(&"p50 <= fdatasync p50 + 30 µs"),
        "{targets:?}"
    );
    for r in results {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn cluster_produces_to_the_leader_and_survives_a_leader_kill() {
    let v = clean_run(
        &["cluster", "--messages", "10000", "--failover-rounds", "1"],
        10_000,
    );
    assert_eq!(v["scenario"], "cluster");
    assert_eq!(v["brokers"], 3);
    assert_eq!(v["qos"], "all");
    assert_eq!(v["latency_samples"], 100, "one sample per batch: {v}");
    let rounds = v["failover_rounds"].as_array().expect("failover rounds");
    assert_eq!(rounds.len(), 1, "{v}");
    let round = &rounds[0];
    assert_ne!(round["killed_node"], round["new_leader_node"], "{v}");
    assert!(
        round["new_term"].as_u64() > round["old_term"].as_u64(),
        "{v}"
    );
    for figure in ["failover_ms", "election_ms", "catch_up_ms"] {
        assert!(round[figure].as_f64().unwrap() > 0.0, "{figure}: {v}");
    }
    assert_eq!(v["failover_ms_max"], round["failover_ms"], "{v}");
    let stream = &v["failover_stream"];
    assert_eq!(stream["problems"], 0, "{v}");
    assert_eq!(stream["failed_batches"], 0, "{v}");
    let acked = stream["acked_messages"].as_u64().unwrap();
    assert!(acked > 0, "{v}");
    assert!(stream["stored_messages"].as_u64().unwrap() >= acked, "{v}");
}

#[test]
fn cluster_without_failover_measures_throughput_only() {
    let v = clean_run(&["cluster", "--messages", "1000", "--no-failover"], 1000);
    assert_eq!(v["failover"], false, "{v}");
    assert!(v.get("failover_rounds").is_none(), "{v}");
}

#[test]
fn cluster_refuses_a_running_broker() {
    let run = bench(&["cluster", "--messages", "10", "--addr", "127.0.0.1:1"]);
    assert!(!run.success);
    assert!(run.stderr.contains("takes no --addr"), "{}", run.stderr);
}

#[test]
fn an_unreachable_broker_is_a_failure() {
    let run = bench(&["produce", "--messages", "10", "--addr", "127.0.0.1:1"]);
    assert!(!run.success);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
}
