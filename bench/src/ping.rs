//! The `ping` scenario: Ping round trips on one connection, one in flight
//! (the broker's request/response latency floor) or pipelined.
//!
//! Each Ping carries its request number, and the echo must bring it back.

use crate::report::Report;
use crate::ui::{Ui, PROGRESS_TICK};
use crate::window::{self, Pace, Source, Window};
use anyhow::{bail, Context, Result};
use hutong::client::{Connection, ConnectionConfig, ResponseRef};
use hutong::wire::codec::{le_u64, set_u64};
use hutong::wire::ApiKey;
use serde_json::{json, Map};
use std::net::SocketAddr;
use std::time::Duration;

/// Bytes of a Ping body that carry the request number.
const TAG_BYTES: usize = 8;

/// Options of `ping`.
#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    /// Round trips to make.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Pings in flight (1: one round trip at a time).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Bytes of each Ping body (at least 8).
    #[arg(long, default_value_t = 8)]
    pub message_size: usize,
}

struct PingSource {
    left: u64,
    tag: u64,
    body: Vec<u8>,
}

impl Source for PingSource {
    fn api(&self) -> ApiKey {
        ApiKey::Ping
    }

    fn next(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        set_u64(&mut self.body, 0, self.tag);
        self.tag += 1;
        Some(1)
    }

    fn encode(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.body);
    }
}

/// Runs `ping`.
///
/// # Errors
/// When the connection cannot be made or the arguments are out of range.
pub fn run(addr: SocketAddr, args: &PingArgs, ui: &Ui) -> Result<Report> {
    if args.message_size < TAG_BYTES {
        bail!("--message-size must be at least {TAG_BYTES}");
    }
    let mut params = Map::new();
    params.insert("in_flight".into(), json!(args.in_flight));
    params.insert("message_size".into(), json!(args.message_size));
    let title = format!(
        "ping, {} round trips, {} in flight, {} B bodies",
        args.messages, args.in_flight, args.message_size
    );
    let mut report = Report::new("ping", title, params);
    report.expected = Some(args.messages);
    report.latency_of = "round trip";
    report.kafka_line = false;
    let conn = Connection::connect_with(
        addr,
        &ConnectionConfig {
            in_flight_max: args
                .in_flight
                .max(hutong::client::connection::IN_FLIGHT_MAX_DEFAULT),
            client_id: "hutong-bench".into(),
            ..ConnectionConfig::default()
        },
    )
    .with_context(|| format!("cannot connect to {addr}"))?;
    let size = args.message_size;
    let check = move |tag: u64, r: ResponseRef<'_>| {
        if r.body.len() == size && le_u64(r.body, 0) == tag {
            Ok(())
        } else {
            Err(format!("ping {tag} echoed {} wrong bytes", r.body.len()))
        }
    };
    let win = Window::new(args.in_flight, Box::new(check));
    let mut source = PingSource {
        left: args.messages,
        tag: 0,
        body: vec![0u8; size],
    };
    let bar = ui.bar("ping", args.messages, "pings");
    let start_ns = window::now_ns();
    std::thread::scope(|s| {
        let h = s.spawn(|| window::drive(&conn, &win, &mut source, Pace::default()));
        while !h.is_finished() {
            std::thread::sleep(PROGRESS_TICK);
            bar.set_position(win.acked_messages());
        }
        if h.join().is_err() {
            report.error("the ping thread panicked");
        }
    });
    bar.finish_and_clear();
    win.file(&mut report, "Pinger #1".into(), size as u64, start_ns);
    report.elapsed = Duration::from_nanos(win.last_ack_ns().saturating_sub(start_ns));
    Ok(report)
}
