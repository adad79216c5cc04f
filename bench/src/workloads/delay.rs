//! `delay`: delivery lateness of exact-time delayed messages through the embedded engine.
//!
//! A fresh store (schedule service on) in a temporary directory under `--dir`. One producer
//! task per shard puts messages at an open-loop `--rate` (due messages per second in all;
//! each put issued on schedule without waiting for the previous acknowledgement), each due
//! `--lead-ms` after it is put, so the service has them well before they are due; how far
//! behind schedule a producer put is reported (`producer_behind_ms_max`).
//! Readers tail the real topic's queues. Lateness = the delivered copy's store time minus its
//! due time (carried in the body), in whole milliseconds as the store stamps them: p50, p99,
//! max after the due time. The run lasts `--seconds` of due times.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use shardmq_engine::schedule::plan::PROP_DELIVER_AT;
use shardmq_engine::schedule::ScheduleConfig;
use shardmq_engine::{
    FlushMode, GetRequest, GetStatus, MessageInput, Perm, Store, StoreConfig, TagFilter,
};

use crate::device::{BlockDevice, FlushCounter};
use crate::error::BenchError;
use crate::report::{latency_histogram, Report};

const TOPIC: &str = "bench-delayed";
const QUEUES: u32 = 8;

#[derive(Debug, clap::Args)]
pub struct DelayArgs {
    /// Directory for the temporary store (created if missing; the store is removed).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub shards: u16,
    /// Messages falling due per second, in all.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds of due times.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// How long before its due time each message is put, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub lead_ms: u64,
    /// Body size in bytes (at least 8: the due time).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// sync (SYNC_FLUSH) or async (ASYNC_FLUSH).
    #[arg(long, default_value = "async")]
    pub flush: FlushMode,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn run(args: &DelayArgs) -> Result<Report, BenchError> {
    if args.rate <= 0.0 || args.seconds == 0 || args.size < 8 {
        return Err(BenchError::InvalidArgs(
            "--rate and --seconds must be > 0 and --size at least 8".into(),
        ));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| BenchError::io(format!("create {}", args.dir.display()), e))?;
    let tmp = tempfile::Builder::new()
        .prefix("shardmq-bench-delay-")
        .tempdir_in(&args.dir)
        .map_err(|e| BenchError::io(format!("temp dir in {}", args.dir.display()), e))?;
    let config = StoreConfig {
        shards: Some(args.shards as usize),
        flush_mode: args.flush,
        schedule: ScheduleConfig {
            enabled: true,
            ..ScheduleConfig::default()
        },
        ..StoreConfig::new(tmp.path())
    };
    let store = Store::open(config).map_err(|e| BenchError::Engine(e.to_string()))?;
    store
        .create_topic(TOPIC, QUEUES, QUEUES, Perm::READ_WRITE)
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    let total = (args.rate * args.seconds as f64) as u64;
    let shards = args.shards as u64;
    let mut flushes = FlushCounter::start(BlockDevice::for_path(tmp.path()));
    // The first due time: far enough ahead that every producer is running by then.
    let first_due = now_ms() + args.lead_ms as i64 + 500;
    let start = Instant::now();
    let producers: Vec<_> = (0..shards)
        .map(|p| {
            let s = store.clone();
            let (rate, lead, size) = (args.rate, args.lead_ms as i64, args.size);
            store.spawn_on(p as usize, move || async move {
                let mut errors = 0u64;
                // How far behind its schedule the producer put a message, in ms.
                let mut behind_max = 0i64;
                // Puts are issued on schedule, not after the previous one is acknowledged (an
                // acknowledgement waits for the write, longer than the gap between puts at
                // these rates): the acknowledgements are collected as they come.
                let mut acks = std::collections::VecDeque::new();
                // This producer's messages: every `shards`-th of the whole sequence.
                let mut k = p;
                while k < total {
                    let due = first_due + (k as f64 * 1000.0 / rate) as i64;
                    let put_at = due - lead;
                    let wait = put_at - now_ms();
                    if wait > 0 {
                        while let Some(ack) = acks.front_mut() {
                            match futures_lite::future::poll_once(ack).await {
                                Some(r) => {
                                    errors += u64::from(Result::is_err(&r));
                                    acks.pop_front();
                                }
                                None => break,
                            }
                        }
                        glommio::timer::sleep(Duration::from_millis(wait as u64)).await;
                    }
                    behind_max = behind_max.max(now_ms() - put_at);
                    let mut body = BytesMut::with_capacity(size);
                    body.put_i64(due);
                    body.resize(size, b'd');
                    let mut m = MessageInput::new(TOPIC, (k % QUEUES as u64) as u32, body.freeze());
                    m.properties.push((PROP_DELIVER_AT.into(), due.to_string()));
                    acks.push_back(s.put_message(m));
                    k += shards;
                }
                for ack in acks {
                    errors += u64::from(ack.await.is_err());
                }
                (errors, behind_max)
            })
        })
        .collect();
    let hist = Arc::new(std::sync::Mutex::new(latency_histogram()));
    let readers: Vec<_> = (0..QUEUES)
        .map(|q| {
            let (s, hist) = (store.clone(), hist.clone());
            let want = total / QUEUES as u64 + u64::from((q as u64) < total % QUEUES as u64);
            store.spawn_on(q as usize % args.shards as usize, move || async move {
                let mut offset = 0u64;
                let mut local: Histogram<u64> = latency_histogram();
                let mut got = 0u64;
                let deadline = Instant::now() + Duration::from_secs(3_600);
                while got < want && Instant::now() < deadline {
                    let r = s
                        .get_message(GetRequest {
                            group: "bench".into(),
                            topic: TOPIC.into(),
                            queue_id: q,
                            offset,
                            max_messages: 1024,
                            max_bytes: 8 << 20,
                            filter: TagFilter::All,
                        })
                        .await;
                    match r {
                        Ok(r) if r.status == GetStatus::Found => {
                            for m in r.messages {
                                let b: &Bytes = &m.message.body;
                                let due = i64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
                                let late_ms = (m.message.store_timestamp_ms - due).max(0) as u64;
                                local.saturating_record((late_ms * 1_000).max(1));
                                offset = m.queue_offset + 1;
                                got += 1;
                            }
                        }
                        // Lateness comes from store times, not from when this reader looks:
                        // looking every few ms keeps the reader's own cost out of the run.
                        _ => glommio::timer::sleep(Duration::from_millis(5)).await,
                    }
                }
                if let Ok(mut h) = hist.lock() {
                    let _ = h.add(&local);
                }
                got
            })
        })
        .collect();
    let mut errors = 0;
    let mut behind_ms = 0;
    for p in producers {
        let (e, behind) = futures_lite::future::block_on(p)
            .ok_or_else(|| BenchError::Engine("a shard stopped".into()))?;
        errors += e;
        behind_ms = behind_ms.max(behind);
    }
    let mut delivered = 0;
    for r in readers {
        delivered += futures_lite::future::block_on(r)
            .ok_or_else(|| BenchError::Engine("a shard stopped".into()))?;
    }
    let elapsed = start.elapsed();
    futures_lite::future::block_on(store.shutdown())
        .map_err(|e| BenchError::Engine(e.to_string()))?;
    let hist = hist
        .lock()
        .map(|h| h.clone())
        .map_err(|_| BenchError::Engine("a reader panicked".into()))?;
    let mut report = Report::new(
        "delay",
        delivered,
        delivered * args.size as u64,
        elapsed,
        &hist,
    );
    report.errors = errors + total.saturating_sub(delivered);
    report.device_flushes = flushes.finish();
    report
        .param(
            "latency",
            "lateness: delivered copy's store time - due time (ms resolution)",
        )
        .param("rate_due_per_s", args.rate)
        .param("producer_behind_ms_max", behind_ms)
        .param("seconds", args.seconds)
        .param("lead_ms", args.lead_ms)
        .param("shards", args.shards)
        .param("size", args.size as u64)
        .param("flush", format!("{:?}", args.flush));
    Ok(report)
}
