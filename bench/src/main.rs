//! `shardmq-bench`: ShardMQ's load generator. Every subcommand prints a human table and, with
//! `--json`, exactly one JSON object as the last line of stdout (see `report.rs`).

mod device;
mod error;
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
}

fn run(command: &Command) -> Result<Report, BenchError> {
    match command {
        Command::Disk(args) => workloads::disk::run(args),
        Command::Engine(args) => workloads::engine::run(args),
        Command::Delay(args) => workloads::delay::run(args),
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
