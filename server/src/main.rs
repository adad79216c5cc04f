//! `shardmq`: the broker, the NameServer, both in one process (`standalone`), and the admin
//! commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardmq_engine::FlushMode;
use shardmq_server::config::{ms, split_addrs, ServerConfig};
use shardmq_server::namesrv::{NameServer, NamesrvConfig};
use shardmq_server::{admin, broker};

#[derive(Parser)]
#[command(
    name = "shardmq",
    version,
    about = "ShardMQ: a thread-per-core message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by the roles that run a broker; each overrides the config file.
#[derive(clap::Args, Clone)]
struct BrokerFlags {
    /// TOML config file (`[broker]`, `[namesrv]`, `[store]` tables; see docs/config.md).
    #[arg(long, env = "SHARDMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (the store).
    #[arg(long, env = "SHARDMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Broker listen address; port 0 picks a free one.
    #[arg(long, env = "SHARDMQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Shards (executor threads); default: the cores this process may use.
    #[arg(long, env = "SHARDMQ_SHARDS")]
    shards: Option<usize>,
    /// sync (SYNC_FLUSH: acknowledged after an fdatasync) or async (ASYNC_FLUSH).
    #[arg(long, env = "SHARDMQ_FLUSH", value_parser = parse_flush)]
    flush: Option<FlushMode>,
    /// Serve Prometheus metrics here (`GET /metrics`); off by default.
    #[arg(long, env = "SHARDMQ_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Any configuration key: `--set broker.long_poll_max_ms=5000` (repeatable; see
    /// docs/config.md). Environment variables `SHARDMQ_CFG__BROKER__LONG_POLL_MAX_MS=5000`
    /// set keys too; flags win over the environment, which wins over the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// NameServer and broker in one process, data in ./shardmq-data by default.
    Standalone {
        #[command(flatten)]
        flags: BrokerFlags,
        /// NameServer listen address; port 0 picks a free one.
        #[arg(long, env = "SHARDMQ_NAMESRV_LISTEN")]
        namesrv_listen: Option<SocketAddr>,
    },
    /// A NameServer alone.
    Namesrv {
        #[arg(long, env = "SHARDMQ_NAMESRV_LISTEN")]
        listen: Option<SocketAddr>,
        #[arg(long, env = "SHARDMQ_CONFIG")]
        config: Option<PathBuf>,
        /// Any configuration key (see `standalone --help`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// A broker registering with NameServers.
    Broker {
        #[command(flatten)]
        flags: BrokerFlags,
        /// NameServer addresses, `;`-separated.
        #[arg(long, env = "SHARDMQ_NAMESRV")]
        namesrv: Option<String>,
        #[arg(long, env = "SHARDMQ_CLUSTER")]
        cluster: Option<String>,
        #[arg(long, env = "SHARDMQ_BROKER_NAME")]
        broker_name: Option<String>,
        /// 0 for a master.
        #[arg(long, env = "SHARDMQ_BROKER_ID")]
        broker_id: Option<u64>,
    },
    /// Administration, like RocketMQ's mqadmin.
    Admin(admin::AdminArgs),
}

fn parse_flush(s: &str) -> Result<FlushMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "sync" | "sync_flush" => Ok(FlushMode::Sync),
        "async" | "async_flush" => Ok(FlushMode::Async),
        _ => Err(format!("--flush must be sync or async, not {s:?}")),
    }
}

fn load(config: &Option<PathBuf>, sets: &[String]) -> Result<ServerConfig, String> {
    ServerConfig::layered(config.as_deref(), std::env::vars(), sets).map_err(|e| e.to_string())
}

fn apply(c: &mut ServerConfig, f: &BrokerFlags) {
    if let Some(d) = &f.data_dir {
        c.store.store_path = d.clone();
    }
    if let Some(l) = f.listen {
        c.broker.listen = l;
    }
    if let Some(s) = f.shards {
        c.store.shards = Some(s);
    }
    if let Some(m) = f.flush {
        c.store.flush_mode = m;
    }
    if let Some(m) = f.metrics_listen {
        c.broker.metrics_listen = Some(m);
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Standalone {
            flags,
            namesrv_listen,
        } => load(&flags.config, &flags.sets).and_then(|mut c| {
            apply(&mut c, &flags);
            if let Some(l) = namesrv_listen {
                c.namesrv.listen = l;
            }
            run(c, true)
        }),
        Command::Namesrv {
            listen,
            config,
            sets,
        } => load(&config, &sets).and_then(|mut c| {
            if let Some(l) = listen {
                c.namesrv.listen = l;
            }
            run_namesrv(c)
        }),
        Command::Broker {
            flags,
            namesrv,
            cluster,
            broker_name,
            broker_id,
        } => load(&flags.config, &flags.sets).and_then(|mut c| {
            apply(&mut c, &flags);
            if let Some(n) = namesrv {
                c.broker.namesrv = n;
            }
            if let Some(v) = cluster {
                c.broker.cluster = v;
            }
            if let Some(v) = broker_name {
                c.broker.broker_name = v;
            }
            if let Some(v) = broker_id {
                c.broker.broker_id = v;
            }
            run(c, false)
        }),
        Command::Admin(args) => match admin::run(args) {
            // stdout's reader stopped reading: the command ends quietly with status 0 (see
            // `AdminError::StdoutClosed` for why not 141).
            Ok(()) | Err(admin::AdminError::StdoutClosed) => Ok(()),
            Err(admin::AdminError::Failed(e)) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardmq: {e}");
            ExitCode::FAILURE
        }
    }
}

fn namesrv_config(c: &ServerConfig) -> NamesrvConfig {
    NamesrvConfig {
        listen: c.namesrv.listen,
        broker_ttl: ms(c.namesrv.broker_ttl_ms),
        scan_interval: ms(c.namesrv.scan_interval_ms),
        connections_max: c.namesrv.connections_max,
        frame_timeout: ms(c.namesrv.frame_timeout_ms),
        idle_timeout: ms(c.namesrv.connection_idle_timeout_ms),
    }
}

/// The one machine-readable start-up line on stdout (tests and scripts read the addresses
/// from it instead of guessing free ports).
fn ready(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn run_namesrv(c: ServerConfig) -> Result<(), String> {
    c.validate().map_err(|e| e.to_string())?;
    let ns = NameServer::start(namesrv_config(&c))
        .map_err(|e| format!("cannot listen on {}: {e}", c.namesrv.listen))?;
    ready(serde_json::json!({"event": "ready", "namesrv": ns.addr().to_string()}));
    shardmq_server::wait_for_signal()?;
    ns.stop();
    Ok(())
}

/// Runs a broker (with a NameServer in the same process when `standalone`) until a signal.
fn run(mut c: ServerConfig, standalone: bool) -> Result<(), String> {
    c.validate().map_err(|e| e.to_string())?;
    let ns = if standalone {
        let ns = NameServer::start(namesrv_config(&c))
            .map_err(|e| format!("cannot listen on {}: {e}", c.namesrv.listen))?;
        c.broker.namesrv = ns.addr().to_string();
        Some(ns)
    } else {
        None
    };
    let namesrv = split_addrs(&c.broker.namesrv);
    let data_dir = c.store.store_path.clone();
    let handle = broker::start(c.broker.clone(), c.store.clone(), namesrv.clone())
        .map_err(|e| e.to_string())?;
    ready(serde_json::json!({
        "event": "ready",
        "broker": handle.addr.to_string(),
        "advertised": handle.advertised,
        "namesrv": namesrv.join(";"),
        "data_dir": data_dir.display().to_string(),
        "metrics": handle.metrics_addr.map(|a| a.to_string()),
        "shards": handle.broker.shard_addrs.get().cloned().unwrap_or_default(),
    }));
    shardmq_server::wait_for_signal()?;
    let result = handle.shutdown();
    if let Some(ns) = ns {
        ns.stop();
    }
    result
}
