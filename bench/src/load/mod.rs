//! The load generator shared by `produce`, `consume` and `e2e`: the common flags
//! ([`LoadArgs`]), opening the system under test, and turning what the threads recorded into
//! a [`Report`].
//!
//! Submodules: `pace` (intended send times, coordinated-omission correction, stamps; pure),
//! `stats` (run clock, live counters, recorders, progress line), `producer` and `consumer`
//! (the threads), `hist` (`--hist` output).

pub mod consumer;
pub mod hist;
pub mod pace;
pub mod producer;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::cpu::{CpuMeter, CpuUsage};
use crate::device::{BlockDevice, FlushCounter};
use crate::drivers::shardmq::ShardMq;
use crate::drivers::spawn::SpawnOptions;
use crate::drivers::{Layout, Target, TargetKind};
use crate::error::BenchError;
use crate::report::{latency_histogram, Report};
use crate::size::parse_size;
use pace::Window;
use stats::Recorder;

/// Seconds of sending when neither `--count` nor `--duration` is given.
pub const DEFAULT_DURATION_S: f64 = 10.0;
/// Largest message body accepted (the broker's default maximum is 4 MiB less 64 KiB).
pub const SIZE_MAX: u64 = 4 << 20;

/// Flags of every mode that runs against a broker.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// System under test: `shardmq`, `redis://HOST:PORT` (build with `--features redis`) or
    /// `nats://HOST:PORT` (`--features nats`).
    #[arg(long, default_value = "shardmq")]
    pub target: String,
    /// NameServer(s) of a running ShardMQ cluster, `host:port;host:port`.
    #[arg(long, conflicts_with = "spawn")]
    pub namesrv: Option<String>,
    /// Start a fresh `shardmq standalone` for this run (temporary directory, free loopback
    /// ports), stopped and removed at the end.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn: where the broker's temporary directory is made (the device under test;
    /// default: the system's temp dir). With redis/nats: the server's data directory, whose
    /// device's flushes are counted.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// With --spawn: the broker's flush mode, `sync` (SYNC_FLUSH) or `async` (ASYNC_FLUSH,
    /// the default).
    #[arg(long, value_parser = ["sync", "async"])]
    pub flush: Option<String>,
    /// With --spawn: the `shardmq` binary (default: next to this executable).
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// With --spawn: the broker's shards (default: the broker's, one per core).
    #[arg(long)]
    pub broker_shards: Option<usize>,
    /// With --spawn: any broker configuration key, `--broker-set store.flush_interval_ms=200`
    /// (repeatable; see docs/config.md).
    #[arg(long = "broker-set", value_name = "KEY=VALUE")]
    pub broker_sets: Vec<String>,
    /// Message body size (K/M are binary: 1K = 1024).
    #[arg(long, value_parser = parse_size, default_value = "1024")]
    pub size: u64,
    /// Messages per send (a batch send when > 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch: u32,
    /// Producer threads, each with its own connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers: u32,
    /// Threads running the producers (default: one per core, at most --producers); each
    /// producer keeps its own connection whatever thread runs it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
    /// Sends each producer keeps in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub inflight: u32,
    /// Topics (streams); sends go round robin over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub topics: u32,
    /// Queues per topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,
    /// Messages to measure (after the warm-up).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Seconds to measure (after the warm-up); 10 when neither --count nor --duration.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<f64>,
    /// Messages per second in all (open loop at fixed rate; latency counts from each send's
    /// intended time). Without it, each producer sends as fast as --inflight allows.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Seconds of load before measuring starts (left out of every figure).
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    pub warmup: f64,
    /// Write the latency histogram here (HdrHistogram percentile distribution, µs; see
    /// `load/hist.rs`).
    #[arg(long)]
    pub hist: Option<PathBuf>,
    /// Topic (stream) names are `<prefix>-<n>`.
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// A server process whose CPU time is measured over the window (a running broker, Redis
    /// or NATS server; repeatable, summed). With --spawn the spawned broker is measured
    /// anyway.
    #[arg(long = "server-pid", value_name = "PID",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub server_pids: Vec<u32>,
}

pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1e7).contains(&v) => Ok(v),
        _ => Err(format!("expected seconds (a number >= 0), not {s:?}")),
    }
}

pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "--rate must be a positive number of messages per second, not {s:?}"
        )),
    }
}

impl LoadArgs {
    /// Refuses combinations that parse but cannot run.
    pub fn validate(&self, needs_stamp: bool) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::InvalidArgs(m.to_string()));
        if self.size == 0 || self.size > SIZE_MAX {
            return bad("--size must be 1 B .. 4 MiB");
        }
        if needs_stamp && self.size < pace::STAMP_BYTES as u64 {
            return bad("--size must be at least 8 bytes: each message carries its send time");
        }
        if self.count == Some(0) || self.duration == Some(0.0) {
            return bad("--count and --duration must be > 0");
        }
        let broker_flags = self.flush.is_some()
            || self.broker_bin.is_some()
            || self.broker_shards.is_some()
            || !self.broker_sets.is_empty();
        if broker_flags && !self.spawn {
            return bad("--flush, --broker-bin, --broker-shards and --broker-set need --spawn");
        }
        let kind = TargetKind::parse(&self.target)?;
        if kind == TargetKind::ShardMq && self.namesrv.is_none() && !self.spawn {
            return bad("give --namesrv ADDR (a running broker) or --spawn (a fresh one)");
        }
        if kind != TargetKind::ShardMq && (self.spawn || self.namesrv.is_some()) {
            return bad("--spawn and --namesrv are for the shardmq target");
        }
        Ok(())
    }

    /// Threads for the producers: `--threads`, else one per core.
    pub fn producer_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .map_or(cores, |t| t as usize)
            .min(self.producers as usize)
    }

    pub fn layout(&self) -> Layout {
        Layout {
            prefix: self.topic_prefix.clone(),
            topics: self.topics as usize,
            queues: self.queues as usize,
        }
    }

    /// The measured window: from `start_ns` + warm-up, for --count messages or --duration.
    pub fn window(&self, start_ns: u64) -> Window {
        let measure_start_ns = start_ns + secs_ns(self.warmup);
        let end_ns = match (self.count, self.duration) {
            (Some(_), _) => None,
            (None, d) => Some(measure_start_ns + secs_ns(d.unwrap_or(DEFAULT_DURATION_S))),
        };
        Window {
            measure_start_ns,
            quota: self.count,
            end_ns,
        }
    }

    /// Opens the system under test (starting a broker with --spawn).
    pub fn open_target(&self) -> Result<Box<dyn Target>, BenchError> {
        match TargetKind::parse(&self.target)? {
            TargetKind::ShardMq if self.spawn => Ok(Box::new(ShardMq::spawn(&SpawnOptions {
                binary: self.broker_bin.clone(),
                parent_dir: self.data_dir.clone(),
                flush: self.flush.clone().unwrap_or_else(|| "async".into()),
                shards: self.broker_shards,
                sets: self.broker_sets.clone(),
            })?)),
            TargetKind::ShardMq => Ok(Box::new(ShardMq::connect(
                self.namesrv.as_deref().unwrap_or_default(),
            ))),
            TargetKind::Redis(url) => open_redis(&url, self.data_dir.clone()),
            TargetKind::Nats(url) => open_nats(&url, self.data_dir.clone()),
        }
    }

    /// The run's settings, for the report.
    pub fn params(&self, report: &mut Report, target: &dyn Target) {
        report
            .param("target", target.name())
            .param("size", self.size)
            .param("batch", self.batch)
            .param("producers", self.producers)
            .param("producer_threads", self.producer_threads() as u64)
            .param("inflight", self.inflight)
            .param("topics", self.topics)
            .param("queues", self.queues)
            .param("rate", self.rate.map_or(Value::Null, Value::from))
            .param("warmup_s", self.warmup)
            .param("count", self.count.map_or(Value::Null, Value::from))
            .param("duration_s", self.duration.map_or(Value::Null, Value::from));
        for (k, v) in target.describe() {
            report.param(&k, v);
        }
    }
}

#[cfg(feature = "redis")]
fn open_redis(url: &str, data_dir: Option<PathBuf>) -> Result<Box<dyn Target>, BenchError> {
    Ok(Box::new(crate::drivers::redis::RedisTarget::open(
        url, data_dir,
    )?))
}

#[cfg(not(feature = "redis"))]
fn open_redis(url: &str, _data_dir: Option<PathBuf>) -> Result<Box<dyn Target>, BenchError> {
    Err(crate::drivers::DriverError::FeatureMissing {
        target: url.to_string(),
        feature: "redis".into(),
    }
    .into())
}

#[cfg(feature = "nats")]
fn open_nats(url: &str, data_dir: Option<PathBuf>) -> Result<Box<dyn Target>, BenchError> {
    Ok(Box::new(crate::drivers::nats::NatsTarget::open(
        url, data_dir,
    )?))
}

#[cfg(not(feature = "nats"))]
fn open_nats(url: &str, _data_dir: Option<PathBuf>) -> Result<Box<dyn Target>, BenchError> {
    Err(crate::drivers::DriverError::FeatureMissing {
        target: url.to_string(),
        feature: "nats".into(),
    }
    .into())
}

pub fn secs_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// Counts device flushes on the disk holding the target's data (else `fallback`, else the
/// current directory).
pub fn flush_counter(target: &dyn Target, fallback: Option<&PathBuf>) -> FlushCounter {
    let dir = target
        .data_dir()
        .or_else(|| fallback.cloned())
        .unwrap_or_else(|| PathBuf::from("."));
    FlushCounter::start(BlockDevice::for_path(&dir))
}

/// A CPU meter for this process and the server processes: the target's own (`--spawn`)
/// and `--server-pid`s. Fails, before any load, if one of them cannot be read.
pub fn cpu_meter(args: &LoadArgs, target: &dyn Target) -> Result<CpuMeter, BenchError> {
    let pids: Vec<u32> = target
        .server_pid()
        .into_iter()
        .chain(args.server_pids.iter().copied())
        .collect();
    Ok(CpuMeter::open(&pids)?)
}

/// Puts the window's CPU figures in the report, with the pids and clock they come from.
pub fn record_cpu(report: &mut Report, meter: &CpuMeter, usage: &CpuUsage) {
    report.set_cpu(usage.bench_s, usage.server_s);
    report
        .param("server_pids", meter.servers().to_vec())
        .param("cpu_ticks_per_s", meter.hz());
    if !usage.unavailable.is_empty() {
        report.param("cpu_unavailable", usage.unavailable.join("; "));
    }
}

/// Everything the recorders measured, merged.
pub fn merge(recorders: &[&Recorder]) -> (u64, u64, Histogram<u64>) {
    let mut hist = latency_histogram();
    let (mut messages, mut bytes) = (0, 0);
    for r in recorders {
        messages += r.measured_messages;
        bytes += r.measured_bytes;
        // Same bounds everywhere, so adding cannot fail.
        let _ = hist.add(&r.total);
    }
    (messages, bytes, hist)
}

/// The measured time: from `start_ns` to `end_ns` on the run clock (at least 1 ns).
pub fn elapsed(start_ns: u64, end_ns: u64) -> Duration {
    Duration::from_nanos(end_ns.saturating_sub(start_ns).max(1))
}

/// Writes `--hist` if asked for.
pub fn save_hist(args: &LoadArgs, hist: &Histogram<u64>) -> Result<(), BenchError> {
    match &args.hist {
        Some(path) => hist::save(hist, path),
        None => Ok(()),
    }
}
