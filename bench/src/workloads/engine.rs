//! `engine`: appends through the embedded store, the way a broker would.
//!
//! A fresh store is created in a temporary directory under `--dir` (removed at the end) with
//! `--shards` shards. `--producers` tasks are spread over the shards (spawned *on* them, so
//! every put takes the on-shard fast path); each keeps `--inflight` puts outstanding and
//! awaits them oldest first. Latency = from the put call to its acknowledgement: the write
//! (ASYNC_FLUSH) or the covering fdatasync (SYNC_FLUSH). The timed region runs from the
//! producers' start to the last acknowledgement; under ASYNC_FLUSH it ends with one
//! `fdatasync` per shard (`shutdown`), included, like the disk mode's final flush.
//!
//! `bytes` counts message bodies (`--size` each); `params.log_bytes` is what the CommitLogs
//! hold (bodies plus record headers and topics), `params.consume_queue_bytes` what the
//! ConsumeQueue logs hold. The run ends when every queue holds every entry and its log is
//! flushed (the store's shutdown).

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use shardmq_engine::{FlushMode, MessageInput, PutStatus, Store, StoreConfig};

use crate::device::{BlockDevice, FlushCounter};
use crate::error::BenchError;
use crate::report::{latency_histogram, record_latency, Report};
use crate::size::parse_size;

#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Directory for the temporary store (created if missing; the store is removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Shards (executor threads).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shards: u16,
    /// Message body size in bytes.
    #[arg(long, value_parser = parse_size, default_value = "1024")]
    pub size: u64,
    /// Messages to put in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// sync (SYNC_FLUSH, group commit) or async (ASYNC_FLUSH).
    #[arg(long, default_value = "async")]
    pub flush: FlushMode,
    /// Concurrent producers (tasks), spread evenly over the shards.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub producers: u32,
    /// Puts each producer keeps outstanding (default: 1 under sync, 256 under async).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub inflight: Option<u32>,
    /// Queues per topic the producers cycle through (one topic).
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
    /// CommitLog segment size.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub segment: u64,
    /// Engine write chunk (one full chunk = one write); default: the engine's.
    #[arg(long, value_parser = parse_size)]
    pub chunk: Option<u64>,
    /// Engine writes in flight per shard; default: the engine's.
    #[arg(long)]
    pub writes_in_flight: Option<usize>,
}

struct ProducerResult {
    hist: Histogram<u64>,
    done: u64,
    errors: u64,
    timeouts: u64,
}

pub fn run(args: &EngineArgs) -> Result<Report, BenchError> {
    if args.size == 0 || args.size > (4 << 20) - 4096 || args.count == 0 {
        return Err(BenchError::InvalidArgs(
            "--size must be 1 .. 4 MiB - 4 KiB and --count > 0".into(),
        ));
    }
    let inflight = args.inflight.unwrap_or(if args.flush == FlushMode::Sync {
        1
    } else {
        256
    });
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| BenchError::io(format!("create {}", args.dir.display()), e))?;
    let tmp = tempfile::Builder::new()
        .prefix("shardmq-bench-engine-")
        .tempdir_in(&args.dir)
        .map_err(|e| BenchError::io(format!("temp dir in {}", args.dir.display()), e))?;
    let window_bytes =
        (inflight as u64 * args.producers as u64 / args.shards as u64 + 1) * (args.size + 512);
    let defaults = StoreConfig::default();
    let config = StoreConfig {
        write_chunk_bytes: args
            .chunk
            .map_or(defaults.write_chunk_bytes, |c| c as usize),
        writes_in_flight_max: args
            .writes_in_flight
            .unwrap_or(defaults.writes_in_flight_max),
        shards: Some(args.shards as usize),
        flush_mode: args.flush,
        segment_size_bytes: args.segment,
        write_buffer_max_bytes: window_bytes.max(64 << 20) as usize,
        ..StoreConfig::new(tmp.path())
    };
    let (store_chunk, store_writes) = (config.write_chunk_bytes, config.writes_in_flight_max);
    let store = Store::open(config).map_err(|e| BenchError::Engine(e.to_string()))?;
    let mut flushes = FlushCounter::start(BlockDevice::for_path(tmp.path()));
    let body = Bytes::from(vec![b'm'; args.size as usize]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let shard = p as usize % args.shards as usize;
        let n = args.count / args.producers as u64
            + u64::from((p as u64) < args.count % args.producers as u64);
        let (s, body, queues) = (store.clone(), body.clone(), args.queues.max(1));
        tasks.push(store.spawn_on(shard, move || {
            produce(s, p, n, inflight as usize, body, queues)
        }));
    }
    let mut hist = latency_histogram();
    let (mut done, mut errors, mut timeouts) = (0, 0, 0);
    for t in tasks {
        let r = futures_lite::future::block_on(t)
            .ok_or_else(|| BenchError::Engine("a shard stopped".into()))?;
        hist.add(&r.hist)
            .map_err(|e| BenchError::Engine(e.to_string()))?;
        done += r.done;
        errors += r.errors;
        timeouts += r.timeouts;
    }
    let log_bytes: u64 = (0..store.shards())
        .filter_map(|s| store.offsets(s))
        .map(|(w, _)| w)
        .sum();
    let handle = store.clone();
    futures_lite::future::block_on(store.shutdown())
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    let elapsed = start.elapsed();
    // Shutdown returned once every queue held every entry and its log was flushed.
    let cq_bytes: u64 = (0..handle.shards())
        .filter_map(|s| handle.consume_queue_offsets(s))
        .map(|(_, flushed)| flushed)
        .sum();
    let device_flushes = flushes.finish();
    let mut report = Report::new(
        if args.flush == FlushMode::Sync {
            "engine-sync"
        } else {
            "engine-async"
        },
        done,
        done * args.size,
        elapsed,
        &hist,
    );
    report.errors = errors + timeouts;
    report.device_flushes = device_flushes;
    report
        .param("shards", args.shards)
        .param("size", args.size)
        .param("producers", args.producers)
        .param("inflight_per_producer", inflight)
        .param("flush", format!("{:?}", args.flush))
        .param("segment_bytes", args.segment)
        .param("write_chunk_bytes", store_chunk)
        .param("writes_in_flight_max", store_writes)
        .param("log_bytes", log_bytes)
        .param("consume_queue_bytes", cq_bytes)
        .param("queues", args.queues)
        .param("flush_disk_timeouts", timeouts)
        .param("latency", "put call to acknowledgement")
        .param("timed", "producers start .. last ack + shutdown flush");
    if let Some(dev) = flushes.device() {
        report.param("device", dev.name.clone());
    }
    Ok(report)
}

async fn produce(
    store: Store,
    id: u32,
    n: u64,
    inflight: usize,
    body: Bytes,
    queues: u32,
) -> ProducerResult {
    let mut result = ProducerResult {
        hist: latency_histogram(),
        done: 0,
        errors: 0,
        timeouts: 0,
    };
    let mut window = std::collections::VecDeque::with_capacity(inflight);
    let mut sent = 0u64;
    while sent < n || !window.is_empty() {
        while sent < n && window.len() < inflight {
            let queue = (id + sent as u32) % queues;
            let msg = MessageInput::new("bench", queue, body.clone());
            window.push_back((Instant::now(), store.put_message(msg)));
            sent += 1;
        }
        let Some((at, put)) = window.pop_front() else {
            break;
        };
        match put.await {
            Ok(r) if r.status == PutStatus::PutOk => {
                record_latency(&mut result.hist, at.elapsed());
                result.done += 1;
            }
            Ok(_) => result.timeouts += 1,
            Err(_) => result.errors += 1,
        }
    }
    result
}
