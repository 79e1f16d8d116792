//! What a run prints: a summary in iggy-bench's shape, Kafka's
//! producer-perf-test line, and with `--json` one JSON object on the last
//! stdout line.
//!
//! Units: MB = 10^6 payload bytes (message values, not protocol overhead)
//! in the summary and the JSON; the Kafka line follows Kafka's own tool,
//! whose "MB" is 2^20 bytes. Latencies are recorded in nanoseconds.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Highest latency a histogram records (longer ones are clamped to it).
pub const LATENCY_NS_MAX: u64 = 600_000_000_000;
/// Significant decimal digits the histograms keep.
const LATENCY_SIGFIGS: u8 = 3;

/// A latency histogram in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIGS)
        .expect("the histogram bounds are valid")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, latency_ns: u64) {
    let v = latency_ns.clamp(1, LATENCY_NS_MAX);
    h.record(v).expect("the value is clamped into range");
}

/// One actor's share of a run (a producer, a consumer), for the per-actor
/// lines of the summary.
#[derive(Debug, Clone)]
pub struct Actor {
    /// "Producer #1", "Consumer #2", ...
    pub label: String,
    /// Messages it sent or received and had confirmed.
    pub messages: u64,
    /// Requests (batches, fetches, pings) it completed.
    pub requests: u64,
    /// Payload bytes of those messages.
    pub payload_bytes: u64,
    /// Its own elapsed time.
    pub elapsed: Duration,
    /// Its latencies (ns).
    pub latency: Histogram<u64>,
}

/// The outcome of one scenario run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name: produce, consume, e2e, ping, hutong.
    pub scenario: &'static str,
    /// The run's parameters, as the JSON reports them.
    pub params: Map<String, Value>,
    /// One line describing the run for people.
    pub title: String,
    /// Messages confirmed (acknowledged, received and checked, echoed).
    pub messages: u64,
    /// Messages the run meant to confirm, when it had a count.
    pub expected: Option<u64>,
    /// Payload bytes of the confirmed messages.
    pub payload_bytes: u64,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// What one latency sample measures ("batch from send to acknowledgement").
    pub latency_of: &'static str,
    /// All latency samples (ns); empty when the scenario measures none.
    pub latency: Histogram<u64>,
    /// Failed requests, bad answers, wrong or missing messages.
    pub errors: u64,
    /// The first errors, for people.
    pub error_messages: Vec<String>,
    /// Per-actor figures.
    pub actors: Vec<Actor>,
    /// Further figures for the JSON and the summary (name, value).
    pub extra: Vec<(&'static str, Value)>,
    /// A line that says it all, printed first in the results (hutong).
    pub headline: Option<String>,
    /// Print Kafka's producer-perf-test line (scenarios that move records).
    pub kafka_line: bool,
}

/// How many error messages a report keeps.
pub const ERROR_MESSAGES_MAX: usize = 10;

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str, title: String, params: Map<String, Value>) -> Report {
        Report {
            scenario,
            params,
            title,
            messages: 0,
            expected: None,
            payload_bytes: 0,
            elapsed: Duration::ZERO,
            latency_of: "request",
            latency: histogram(),
            errors: 0,
            error_messages: Vec::new(),
            actors: Vec::new(),
            extra: Vec::new(),
            headline: None,
            kafka_line: true,
        }
    }

    /// Counts an error and keeps its message if there is room.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        if self.error_messages.len() < ERROR_MESSAGES_MAX {
            self.error_messages.push(message.into());
        }
    }

    /// Adds an actor's figures to the run's totals.
    pub fn add_actor(&mut self, actor: Actor) {
        self.messages += actor.messages;
        self.payload_bytes += actor.payload_bytes;
        self.latency
            .add(&actor.latency)
            .expect("histograms share their bounds");
        self.actors.push(actor);
    }

    /// True when nothing failed and nothing is missing.
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.expected.is_none_or(|e| e == self.messages)
    }

    /// Messages per second.
    pub fn msgs_per_s(&self) -> f64 {
        per_s(self.messages as f64, self.elapsed)
    }

    /// Payload MB (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        per_s(self.payload_bytes as f64 / 1e6, self.elapsed)
    }

    /// The JSON object of the run.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("scenario".into(), json!(self.scenario));
        for (k, v) in &self.params {
            o.insert(k.clone(), v.clone());
        }
        o.insert("messages".into(), json!(self.messages));
        o.insert("payload_bytes".into(), json!(self.payload_bytes));
        o.insert("elapsed_s".into(), json!(self.elapsed.as_secs_f64()));
        o.insert("msgs_per_s".into(), json!(self.msgs_per_s()));
        o.insert("mb_per_s".into(), json!(self.mb_per_s()));
        o.insert("latency_of".into(), json!(self.latency_of));
        let h = &self.latency;
        let empty = h.is_empty();
        let us = |ns: u64| {
            if empty {
                Value::Null
            } else {
                json!(ns as f64 / 1e3)
            }
        };
        o.insert("latency_samples".into(), json!(h.len()));
        for (name, q) in PERCENTILES {
            o.insert(format!("{name}_us"), us(h.value_at_quantile(q)));
        }
        o.insert(
            "avg_us".into(),
            if empty {
                Value::Null
            } else {
                json!(h.mean() / 1e3)
            },
        );
        o.insert("min_us".into(), us(h.min()));
        o.insert("max_us".into(), us(h.max()));
        for (k, v) in &self.extra {
            o.insert((*k).into(), v.clone());
        }
        o.insert("errors".into(), json!(self.errors));
        Value::Object(o)
    }

    /// The latency part of a summary line, iggy-bench style.
    fn latency_text(h: &Histogram<u64>) -> String {
        if h.is_empty() {
            return "no latency samples".to_string();
        }
        let mut s = String::new();
        for (name, q) in PERCENTILES {
            s.push_str(&format!(
                "{name} latency: {}, ",
                fmt_ns(h.value_at_quantile(q))
            ));
        }
        s.push_str(&format!(
            "average latency: {}, min latency: {}, max latency: {}",
            fmt_ns(h.mean() as u64),
            fmt_ns(h.min()),
            fmt_ns(h.max())
        ));
        s
    }

    /// Kafka producer-perf-test's closing line (its MB is 2^20 bytes; the
    /// percentiles keep three decimals where Kafka prints whole ms).
    pub fn kafka_line(&self) -> String {
        let h = &self.latency;
        let ms = |ns: u64| ns as f64 / 1e6;
        let (avg, max, p50, p95, p99, p999) = if h.is_empty() {
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        } else {
            (
                h.mean() / 1e6,
                ms(h.max()),
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.95)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
            )
        };
        format!(
            "{} records sent, {:.1} records/sec ({:.2} MB/sec), {avg:.3} ms avg latency, \
             {max:.3} ms max latency, {p50:.3} ms 50th, {p95:.3} ms 95th, {p99:.3} ms 99th, \
             {p999:.3} ms 99.9th.",
            self.messages,
            self.msgs_per_s(),
            per_s(self.payload_bytes as f64 / (1024.0 * 1024.0), self.elapsed),
        )
    }

    /// The human summary (without the JSON line).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("Benchmark: {}\n", self.title));
        for a in &self.actors {
            out.push_str(&format!(
                "{} → {} messages in {} requests in {:.3} s, total size: {} bytes, \
                 average throughput: {:.2} MB/s, {}\n",
                a.label,
                a.messages,
                a.requests,
                a.elapsed.as_secs_f64(),
                a.payload_bytes,
                per_s(a.payload_bytes as f64 / 1e6, a.elapsed),
                Self::latency_text(&a.latency),
            ));
        }
        if let Some(h) = &self.headline {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(&format!(
            "Results: total throughput: {:.2} MB/s, {:.0} messages/s, {} messages in {:.3} s, \
             latency per {}: {}\n",
            self.mb_per_s(),
            self.msgs_per_s(),
            self.messages,
            self.elapsed.as_secs_f64(),
            self.latency_of,
            Self::latency_text(&self.latency),
        ));
        for (k, v) in &self.extra {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        if self.kafka_line {
            out.push_str(&self.kafka_line());
            out.push('\n');
        }
        if let Some(expected) = self.expected {
            if expected != self.messages {
                out.push_str(&format!(
                    "MISSING: expected {expected} messages, confirmed {}\n",
                    self.messages
                ));
            }
        }
        if self.errors > 0 {
            out.push_str(&format!("ERRORS: {}\n", self.errors));
            for e in &self.error_messages {
                out.push_str(&format!("  {e}\n"));
            }
        }
        out
    }

    /// Prints the summary, then the JSON line when asked.
    pub fn print(&self, json: bool) {
        print!("{}", self.summary());
        if json {
            println!("{}", self.to_json());
        }
    }
}

/// The percentiles reported, with their JSON names.
pub const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

/// `amount / elapsed`, or 0 for an empty run.
pub fn per_s(amount: f64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        amount / s
    } else {
        0.0
    }
}

/// A duration in ns as people read it: µs below 10 ms, ms above.
pub fn fmt_ns(ns: u64) -> String {
    if ns < 10_000_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_holds_the_fields_the_issue_lists() {
        let mut r = Report::new("produce", "test".into(), Map::new());
        let mut a = Actor {
            label: "Producer #1".into(),
            messages: 1000,
            requests: 10,
            payload_bytes: 100_000,
            elapsed: Duration::from_millis(500),
            latency: histogram(),
        };
        record(&mut a.latency, 20_000);
        r.add_actor(a);
        r.elapsed = Duration::from_millis(500);
        let v = r.to_json();
        for field in [
            "scenario",
            "messages",
            "elapsed_s",
            "msgs_per_s",
            "mb_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "p9999_us",
            "max_us",
            "errors",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["messages"], 1000);
        assert_eq!(v["msgs_per_s"], 2000.0);
        assert_eq!(v["mb_per_s"], 0.2);
        assert!((v["p50_us"].as_f64().unwrap() - 20.0).abs() < 0.1);
        assert!(r.is_clean());
    }

    #[test]
    fn a_missing_message_makes_the_run_unclean() {
        let mut r = Report::new("consume", "test".into(), Map::new());
        r.expected = Some(10);
        r.messages = 9;
        assert!(!r.is_clean());
        assert!(r.summary().contains("MISSING"));
    }
}
