//! `shardmq-bench`: ShardMQ's load generator. Every subcommand prints a human table and, with
//! `--json`, exactly one JSON object as the last line of stdout (see `report.rs`).
//!
//! Modes: the machine's ceilings (`disk`, `net`), the embedded engine (`engine`, `delay`),
//! and a broker over the wire (`produce`, `consume`, `e2e`; `load/` and `drivers/`), against
//! ShardMQ or, with the `redis` / `nats` features, Redis Streams and NATS JetStream.

mod cpu;
mod device;
mod drivers;
mod error;
mod load;
mod report;
mod runtime;
mod size;
mod workloads;

use std::process::ExitCode;

/// The load generator's threads free what another thread allocated (the client's I/O thread
/// decodes every answer; the producer threads drop them), which glibc's allocator serialises
/// on one arena's lock; mimalloc frees into the owning thread's heap without one.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    drivers::spawn::clean_up_on_signal();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shardmq-bench").chain(args.iter().copied()))
    }

    #[test]
    fn produce_flags() {
        let cli = parse(&[
            "produce",
            "--spawn",
            "--flush",
            "sync",
            "--size",
            "1K",
            "--producers",
            "64",
            "--inflight",
            "1",
            "--duration",
            "2.5",
            "--warmup",
            "1",
            "--rate",
            "5000",
            "--batch",
            "4",
            "--topics",
            "2",
            "--queues",
            "16",
            "--server-pid",
            "42",
            "--server-pid",
            "43",
            "--json",
        ])
        .expect("parses");
        assert!(cli.json);
        let Command::Produce(p) = cli.command else {
            panic!("not produce")
        };
        let a = p.load;
        assert!(a.spawn);
        assert_eq!(a.flush.as_deref(), Some("sync"));
        assert_eq!((a.size, a.producers, a.inflight, a.batch), (1024, 64, 1, 4));
        assert_eq!((a.topics, a.queues), (2, 16));
        assert_eq!(
            (a.duration, a.warmup, a.rate),
            (Some(2.5), 1.0, Some(5000.0))
        );
        assert_eq!(a.target, "shardmq");
        assert_eq!(a.server_pids, [42, 43]);
        assert!(a.validate(false).is_ok());
    }

    #[test]
    fn defaults_and_targets() {
        let Command::E2e(e) = parse(&["e2e", "--namesrv", "127.0.0.1:9876"])
            .expect("parses")
            .command
        else {
            panic!("not e2e")
        };
        let a = &e.load;
        assert_eq!((a.size, a.producers, a.inflight, a.batch), (1024, 4, 32, 1));
        assert_eq!(
            (a.count, a.duration, a.rate, e.consumers),
            (None, None, None, None)
        );
        let w = a.window(1_000);
        assert_eq!(w.end_ns, Some(1_000 + 10_000_000_000));
        assert!(a.validate(true).is_ok());
        let Command::Consume(c) = parse(&[
            "consume",
            "--target",
            "redis://127.0.0.1:6379",
            "--no-prefill",
            "--count",
            "5",
        ])
        .expect("parses")
        .command
        else {
            panic!("not consume")
        };
        assert!(c.no_prefill && c.load.count == Some(5));
        assert!(matches!(
            parse(&["net", "--duration", "1", "--chunk", "64K", "--streams", "2"])
                .expect("parses")
                .command,
            Command::Net(n) if n.chunk == 65536 && n.streams == 2
        ));
    }

    #[test]
    fn refuses_bad_combinations() {
        let bad = [
            &["produce", "--spawn", "--namesrv", "x:1"][..],
            &["produce", "--spawn", "--flush", "maybe"],
            &["produce", "--spawn", "--count", "5", "--duration", "1"],
            &["produce", "--spawn", "--rate", "0"],
            &["produce", "--spawn", "--rate", "-3"],
            &["produce", "--spawn", "--inflight", "0"],
            &["produce", "--spawn", "--batch", "2000"],
            &["produce", "--spawn", "--warmup", "-1"],
            &["produce", "--spawn", "--size", "1Q"],
            &["produce", "--spawn", "--server-pid", "0"],
            &["produce", "--spawn", "--server-pid", "me"],
            &["net", "--streams", "0"],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} should not parse");
        }
        // Parse, but cannot run.
        let invalid = [
            (&["produce"][..], false),
            (&["produce", "--flush", "sync", "--namesrv", "x:1"], false),
            (
                &["produce", "--broker-shards", "1", "--namesrv", "x:1"],
                false,
            ),
            (&["produce", "--spawn", "--target", "nats://h:1"], false),
            (&["produce", "--target", "kafka://h:1"], false),
            (&["produce", "--spawn", "--size", "0"], false),
            (&["produce", "--spawn", "--size", "5M"], false),
            (&["produce", "--spawn", "--count", "0"], false),
            (&["e2e", "--spawn", "--size", "4"], true),
        ];
        for (args, stamp) in invalid {
            let cli = parse(args).expect("parses");
            let load = match &cli.command {
                Command::Produce(p) => &p.load,
                Command::E2e(e) => &e.load,
                _ => panic!("unexpected"),
            };
            assert!(load.validate(stamp).is_err(), "{args:?} should be refused");
        }
    }
}
