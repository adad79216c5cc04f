//! `engine`: appends through the embedded store, the way a broker would.
//!
//! A fresh store is created in a temporary directory under `--dir` (removed at the end) with
//! `--shards` shards. `--producers` tasks are spread over the shards (spawned *on* them, so
//! every put takes the on-shard fast path); each keeps `--inflight` puts outstanding and
//! awaits them oldest first. With `--placement spread` (the default) each producer cycles
//! through all the queues, so about half its puts go to queues another shard owns (whose
//! offsets that shard reserves: one round trip between cores); with `--placement owner`
//! it cycles through the queues its own shard owns, the way a thread-per-core server routes
//! each request to the core that owns its queue. Latency = from the put call to its acknowledgement: the write
//! (ASYNC_FLUSH) or the covering fdatasync (SYNC_FLUSH). The timed region runs from the
//! producers' start to the last acknowledgement; under ASYNC_FLUSH it ends with one
//! `fdatasync` per shard (`shutdown`), included, like the disk mode's final flush; with
//! `--tail-readers`, the time the readers take to finish after the producers stopped is left
//! out of it (it is in the read rate).
//!
//! `bytes` counts message bodies (`--size` each); `params.log_bytes` is what the CommitLogs
//! hold (bodies plus record headers and topics), `params.consume_queue_bytes` what the
//! ConsumeQueue logs hold. The run ends when every queue holds every entry and its log is
//! flushed (the store's shutdown).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shardmq_engine::{
    FlushMode, GetRequest, GetStatus, MessageInput, Perm, PutStatus, Store, StoreConfig, TagFilter,
};

/// The one topic the producers send to.
const TOPIC: &str = "bench";

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
    /// Tail cache per shard in bytes (K/M/G), for `--tail-readers` (default: the store's
    /// `tail_cache_bytes`, 64 MiB).
    #[arg(long, value_parser = parse_size)]
    pub tail_cache: Option<u64>,
    /// Read cache per shard in bytes (K/M/G): CommitLog blocks kept after a device read, for
    /// readers behind the tail cache (default: the store's `read_cache_bytes`, 32 MiB).
    #[arg(long, value_parser = parse_size)]
    pub read_cache: Option<u64>,
    /// Queue entries each shard keeps in memory before moving the oldest to its cold file
    /// (default: the store's `queue_entries_in_memory_max`; 0 keeps all in memory).
    #[arg(long)]
    pub entries_in_memory: Option<usize>,
    /// How long a shard runs tasks before it submits and reaps I/O, in µs (default: the
    /// store's `io_poll_interval_us`).
    #[arg(long)]
    pub io_poll_us: Option<u64>,
    /// Which queues each producer cycles through: `spread` (all of them) or `owner` (those
    /// its shard owns; with more shards than owned queues a shard without any sends to all).
    #[arg(long, value_enum, default_value = "spread")]
    pub placement: Placement,
    /// Queues the producers cycle through (one topic, created with this many queues; at most
    /// 65 536).
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
    /// Tailing readers (tasks on the shards) reading every queue while the appends run; the
    /// report adds their read rate and the largest lag (messages behind a queue's max) seen.
    #[arg(long, default_value_t = 0)]
    pub tail_readers: u32,
    /// CommitLog segment size.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub segment: u64,
    /// Engine write chunk (one full chunk = one write); default: the engine's.
    #[arg(long, value_parser = parse_size)]
    pub chunk: Option<u64>,
    /// Engine writes in flight per shard; default: the engine's.
    #[arg(long)]
    pub writes_in_flight: Option<usize>,
    /// Open-loop load: messages per second in all, spread evenly over the producers. Each
    /// put's latency counts from when it was due to be sent (so a stall is not hidden by
    /// the sends it delayed). Without it, every producer sends as fast as its `--inflight`
    /// window allows.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

/// See `--placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    Spread,
    Owner,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "--rate must be a positive number of messages per second, not {s:?}"
        )),
    }
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
        queue_entries_in_memory_max: args
            .entries_in_memory
            .unwrap_or(defaults.queue_entries_in_memory_max),
        read_cache_bytes: args
            .read_cache
            .map_or(defaults.read_cache_bytes, |b| b as usize),
        io_poll_interval_us: args.io_poll_us.unwrap_or(defaults.io_poll_interval_us),
        tail_cache_bytes: args
            .tail_cache
            .map_or(defaults.tail_cache_bytes, |b| b as usize),
        ..StoreConfig::new(tmp.path())
    };
    let (store_chunk, store_writes) = (config.write_chunk_bytes, config.writes_in_flight_max);
    let store = Store::open(config).map_err(|e| BenchError::Engine(e.to_string()))?;
    // Producers send to queues `0..--queues`: the topic needs that many write queues, more
    // than auto-creation would give it.
    store
        .create_topic(
            TOPIC,
            args.queues.max(1),
            args.queues.max(1),
            Perm::READ_WRITE,
        )
        .map_err(|e| BenchError::Engine(format!("cannot create the bench topic: {e}")))?;
    let mut flushes = FlushCounter::start(BlockDevice::for_path(tmp.path()));
    let body = Bytes::from(vec![b'm'; args.size as usize]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let shard = p as usize % args.shards as usize;
        let n = args.count / args.producers as u64
            + u64::from((p as u64) < args.count % args.producers as u64);
        // A body per producer: one shared by all would have both cores bounce its
        // reference count on every put.
        let body = Bytes::copy_from_slice(&body);
        let all: Vec<u32> = (0..args.queues.max(1)).collect();
        let owned: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&q| store.queue_shard(TOPIC, q) == shard)
            .collect();
        let queues = match args.placement {
            Placement::Owner if !owned.is_empty() => owned,
            _ => all,
        };
        let s = store.clone();
        let pace = args.rate.map(|r| r / args.producers as f64);
        tasks.push(store.spawn_on(shard, move || {
            produce(s, p, n, inflight as usize, body, queues, pace)
        }));
    }
    let producing = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = (0..args.tail_readers)
        .map(|r| {
            let (s, flag) = (store.clone(), producing.clone());
            let mine: Vec<u32> = (0..args.queues.max(1))
                .filter(|q| q % args.tail_readers == r)
                .collect();
            store.spawn_on(r as usize % args.shards as usize, move || {
                tail(s, mine, flag)
            })
        })
        .collect();
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
    let produced = start.elapsed();
    producing.store(false, Ordering::Release);
    let (mut read, mut max_lag) = (0u64, 0u64);
    for r in readers {
        let (n, lag) = futures_lite::future::block_on(r)
            .ok_or_else(|| BenchError::Engine("a shard stopped".into()))?;
        read += n;
        max_lag = max_lag.max(lag);
    }
    let read_seconds = start.elapsed().as_secs_f64();
    let log_bytes: u64 = (0..store.shards())
        .filter_map(|s| store.offsets(s))
        .map(|(w, _)| w)
        .sum();
    let (cache_hits, cache_misses) = (0..store.shards())
        .filter_map(|s| store.tail_cache_stats(s))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let handle = store.clone();
    let closing = Instant::now();
    futures_lite::future::block_on(store.shutdown())
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    // Appends and the final flush; the time readers took to drain after the producers
    // stopped is not the appends' (it is in the read rate).
    let elapsed = produced + closing.elapsed();
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
        .param(
            "io_poll_us",
            args.io_poll_us
                .unwrap_or(StoreConfig::default().io_poll_interval_us),
        )
        .param("inflight_per_producer", inflight)
        .param("rate_msgs_per_s", args.rate.unwrap_or(0.0))
        .param(
            "entries_in_memory_max_per_shard",
            args.entries_in_memory
                .unwrap_or(StoreConfig::default().queue_entries_in_memory_max),
        )
        .param("flush", format!("{:?}", args.flush))
        .param("segment_bytes", args.segment)
        .param("write_chunk_bytes", store_chunk)
        .param("writes_in_flight_max", store_writes)
        .param("log_bytes", log_bytes)
        .param("consume_queue_bytes", cq_bytes)
        .param("tail_readers", args.tail_readers)
        .param("tail_read_messages", read)
        .param(
            "tail_read_msgs_per_s",
            if args.tail_readers > 0 {
                read as f64 / read_seconds
            } else {
                0.0
            },
        )
        .param("tail_max_lag_messages", max_lag)
        .param("tail_cache_hits", cache_hits)
        .param(
            "tail_cache_bytes_per_shard",
            args.tail_cache.unwrap_or(64 << 20),
        )
        .param("tail_cache_misses", cache_misses)
        .param(
            "read_cache_bytes_per_shard",
            args.read_cache.unwrap_or(32 << 20),
        )
        .param("queues", args.queues)
        .param("placement", format!("{:?}", args.placement).to_lowercase())
        .param("flush_disk_timeouts", timeouts)
        .param("latency", "put call to acknowledgement")
        .param("timed", "producers start .. last ack + shutdown flush");
    if let Some(dev) = flushes.device() {
        report.param("device", dev.name.clone());
    }
    Ok(report)
}

/// Reads `queues` from offset 0 as they grow, one pull loop per queue (as a consumer runs
/// one per queue it holds), until the producers are done and every queue is read to its end.
/// Returns (messages read, largest lag seen).
async fn tail(store: Store, queues: Vec<u32>, producing: Arc<AtomicBool>) -> (u64, u64) {
    let loops: Vec<_> = queues
        .into_iter()
        .map(|q| glommio::spawn_local(tail_queue(store.clone(), q, producing.clone())))
        .collect();
    let (mut read, mut max_lag) = (0, 0);
    for l in loops {
        let (n, lag) = l.await;
        read += n;
        max_lag = max_lag.max(lag);
    }
    (read, max_lag)
}

/// One queue's pull loop: get from the next offset; when nothing is new, long-poll.
async fn tail_queue(store: Store, queue: u32, producing: Arc<AtomicBool>) -> (u64, u64) {
    let (mut offset, mut read, mut max_lag) = (0u64, 0u64, 0u64);
    loop {
        let finishing = !producing.load(Ordering::Acquire);
        let req = GetRequest {
            group: "bench-tail".into(),
            topic: TOPIC.into(),
            queue_id: queue,
            offset,
            max_messages: 256,
            max_bytes: 4 << 20,
            filter: TagFilter::All,
        };
        let Ok(got) = store.get_message(req).await else {
            return (read, max_lag);
        };
        let progressed = got.next_begin_offset > offset;
        if got.status != GetStatus::NoMatchedLogicQueue {
            max_lag = max_lag.max(got.max_offset.saturating_sub(offset));
            read += got.messages.len() as u64;
            offset = got.next_begin_offset.max(offset);
        }
        if !progressed {
            if finishing {
                return (read, max_lag);
            }
            store
                .wait_for_message(TOPIC, queue, offset, std::time::Duration::from_millis(50))
                .await;
        }
    }
}

async fn produce(
    store: Store,
    id: u32,
    n: u64,
    inflight: usize,
    body: Bytes,
    queues: Vec<u32>,
    pace: Option<f64>,
) -> ProducerResult {
    let mut result = ProducerResult {
        hist: latency_histogram(),
        done: 0,
        errors: 0,
        timeouts: 0,
    };
    let mut window = std::collections::VecDeque::with_capacity(inflight);
    let mut sent = 0u64;
    let start = Instant::now();
    // When the k-th put is due: at once without `--rate`.
    let due_at = |k: u64| pace.map(|p| start + Duration::from_secs_f64(k as f64 / p));
    // One clock read per completion, shared by the puts sent right after it.
    let mut now = start;
    while sent < n || !window.is_empty() {
        while sent < n && window.len() < inflight {
            let due = due_at(sent);
            if due.is_some_and(|d| d > now) {
                break;
            }
            let queue = queues[(id as usize + sent as usize) % queues.len()];
            let msg = MessageInput::new(TOPIC, queue, body.clone());
            window.push_back((due.unwrap_or(now), store.put_message(msg)));
            sent += 1;
        }
        let room = sent < n && window.len() < inflight;
        let outcome = match window.front_mut() {
            // Nothing in flight: the next put is not due yet.
            None => {
                if let Some(d) = due_at(sent) {
                    glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await;
                }
                now = Instant::now();
                continue;
            }
            Some((_, put)) => match due_at(sent).filter(|_| room) {
                // Wait for the oldest put, or until the next one is due.
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    let done = futures_lite::future::or(async { Some(put.await) }, async {
                        glommio::timer::sleep(wait).await;
                        None
                    })
                    .await;
                    now = Instant::now();
                    match done {
                        Some(outcome) => outcome,
                        None => continue,
                    }
                }
                None => {
                    let outcome = put.await;
                    now = Instant::now();
                    outcome
                }
            },
        };
        let Some((at, _)) = window.pop_front() else {
            break;
        };
        match outcome {
            Ok(r) if r.status == PutStatus::PutOk => {
                record_latency(&mut result.hist, now.duration_since(at));
                result.done += 1;
            }
            Ok(_) => result.timeouts += 1,
            Err(_) => result.errors += 1,
        }
    }
    result
}
