//! One module per `shardmq-bench` subcommand. Each exposes `XxxArgs` (clap) and
//! `run(&XxxArgs) -> Result<Report, BenchError>`; `main.rs` wires them up and prints the
//! report.

pub mod consume;
pub mod delay;
pub mod disk;
pub mod e2e;
pub mod engine;
pub mod net;
pub mod produce;
