//! The ShardMQ server: the broker (the engine behind the wire protocol), the NameServer, the
//! configuration they share, and the admin commands. The `shardmq` binary (`main.rs`) is a
//! thin command line over these.

pub mod admin;
pub mod broker;
pub mod config;
pub mod namesrv;
pub mod rpc;

/// Blocks until SIGTERM or SIGINT.
pub fn wait_for_signal() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    Ok(())
}
