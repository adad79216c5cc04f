//! `shardmq-bench`: ShardMQ's load generator. Every subcommand prints a human table and, with
//! `--json`, exactly one JSON object as the last line of stdout (see `report.rs`).
//!
//! Modes: the machine's ceilings (`disk`, `net`), the embedded engine (`engine`, `delay`),
//! and a broker over the wire (`produce`, `consume`, `e2e`; `load/` and `drivers/`), against
//! ShardMQ or, with the `redis` / `nats` features, Redis Streams and NATS JetStream.

mod device;
mod drivers;
mod error;
mod load;
mod report;
mod runtime;
mod size;
mod workloads;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::BenchError;
use crate::report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "shardmq-bench",
    version,
    about = "ShardMQ load generator and benchmarks"
)]
struct Cli {
    /// Print the report as one JSON object on the last line of stdout (table goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Raw O_DIRECT sequential writes through io_uring: the disk's ceiling, no engine.
    Disk(workloads::disk::DiskArgs),
    /// Appends through the embedded engine (`shardmq-engine`) from tasks on its shards.
    Engine(workloads::engine::EngineArgs),
    /// Delivery lateness of exact-time delayed messages through the embedded engine.
    Delay(workloads::delay::DelayArgs),
    /// Producers sending to a broker over the wire (ShardMQ, or a peer with --target).
    Produce(workloads::produce::ProduceArgs),
    /// A consumer group reading (by default what the producers sent first).
    Consume(workloads::consume::ConsumeArgs),
    /// Producers and consumers together: end-to-end latency carried in each message.
    E2e(workloads::e2e::E2eArgs),
    /// The loopback TCP ceiling: bytes through a socket pair on 127.0.0.1, no broker.
    Net(workloads::net::NetArgs),
}

fn run(command: &Command) -> Result<Report, BenchError> {
    match command {
        Command::Disk(args) => workloads::disk::run(args),
        Command::Engine(args) => workloads::engine::run(args),
        Command::Delay(args) => workloads::delay::run(args),
        Command::Produce(args) => workloads::produce::run(args),
        Command::Consume(args) => workloads::consume::run(args),
        Command::E2e(args) => workloads::e2e::run(args),
        Command::Net(args) => workloads::net::run(args),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(&cli.command) {
        Ok(report) => match report.emit(cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardmq-bench: error: writing the report: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("shardmq-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
