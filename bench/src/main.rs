//! `hutong-bench`: the load generator of the hutong broker.
//!
//! Scenarios (names follow iggy-bench where they overlap):
//! - [`produce`]: producers send record batches with a window of requests in
//!   flight (closed loop), or at a fixed rate (open loop, `--rate`).
//! - [`consume`]: a topic is pre-filled, then consumers read it from the
//!   start (catch-up) and check every sequence number.
//! - `e2e` (in [`consume`]): producers and consumers at once; latency is the
//!   consumer's receive time minus the send time carried in the message.
//! - [`ping`]: Ping round trips, one in flight or pipelined.
//! - [`conversation`]: the two-neighbours conversation of DESIGN.md §9 over
//!   one loopback connection, without a broker.
//! - [`cluster`]: a replication group of three brokers started here:
//!   `produce` against its leader, then kill -9 of the leader under a
//!   stream of batches (failover time, election time, nothing acknowledged
//!   lost).
//! - [`suite`]: the standard suite that `make bench` runs.
//!
//! Every broker scenario takes `--addr` to target a running broker (any
//! member of a replication group: the run goes to its leader); without
//! it the bench starts one itself ([`broker`]). The measuring machinery is in
//! [`window`] (requests in flight, acknowledgements, latency) and the output
//! in [`report`].

mod broker;
mod cluster;
mod consume;
mod conversation;
mod floor;
mod ping;
mod produce;
mod report;
mod suite;
mod ui;
mod window;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Load generator for the hutong broker.
#[derive(Debug, Parser)]
#[command(name = "hutong-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Target a running broker at ADDR instead of starting one.
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// Print one JSON object with the figures on the last stdout line.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Producers send batches; throughput and latency from send to ack.
    Produce(produce::ProduceArgs),
    /// Pre-fill a topic, then read it from the start (catch-up).
    Consume(consume::ConsumeArgs),
    /// Producers and consumers together; end-to-end latency per message.
    E2e(consume::E2eArgs),
    /// Ping round trips, one in flight or pipelined.
    Ping(ping::PingArgs),
    /// The two-neighbours conversation of DESIGN.md §9 (no broker).
    Hutong(conversation::HutongArgs),
    /// The standard suite (`make bench`): starts a broker unless --addr.
    Suite(suite::SuiteArgs),
    /// A group of 3 brokers started here: produce against its leader, then
    /// kill -9 of the leader under a stream (failover time).
    Cluster(cluster::ClusterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hutong-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenario and prints its report. Returns whether the run
/// was clean (no error, nothing missing).
fn run(cli: Cli) -> Result<bool> {
    let ui = ui::Ui::new(&cli.common);
    let report = match &cli.scenario {
        Scenario::Hutong(args) => conversation::run(args, &ui)?,
        Scenario::Suite(args) => return suite::run(args, &cli.common, &ui),
        Scenario::Cluster(args) => cluster::run(args, &cli.common, &ui)?,
        scenario => {
            let target = broker::Target::resolve(cli.common.addr)?;
            let addr = target.addr();
            let report = match scenario {
                Scenario::Produce(args) => produce::run(addr, args, &ui)?,
                Scenario::Consume(args) => consume::run_consume(addr, args, &ui)?,
                Scenario::E2e(args) => consume::run_e2e(addr, args, &ui)?,
                Scenario::Ping(args) => ping::run(addr, args, &ui)?,
                Scenario::Hutong(_) | Scenario::Suite(_) | Scenario::Cluster(_) => {
                    unreachable!("handled above")
                }
            };
            target.stop()?;
            report
        }
    };
    report.print(cli.common.json);
    Ok(report.is_clean())
}
