//! `shardmq`: the broker binary. The protocol front (standalone, broker and NameServer roles,
//! admin commands) is not built yet; until it is, this binary says so instead of pretending.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "shardmq: the broker server is not implemented yet. To run the storage engine \
         embedded, use `cargo run --release -p shardmq-engine --example embed -- ./shardmq-data`; \
         to measure it, `shardmq-bench engine` (see README.md)."
    );
    ExitCode::from(2)
}
