//! `consume`: a consumer group reading as fast as it can. By default the run first sends
//! `--count` messages with the producers (as fast as they can, untimed, reported in
//! `params.prefill_*`), then reads them back with `--consumers` consumers, each with its
//! share of the queues (streams). `--no-prefill` reads what is stored already, from the
//! oldest message.
//!
//! The timed region runs from the consumers' start to the last message read; it ends when
//! `--count` messages were read, `--duration` passed, or nothing arrived for
//! [`IDLE_STOP`]. The CPU time of the load generator and of the server process(es) is
//! measured over the same region (the prefill left out). No latency is measured (the
//! latency columns are 0, and `--hist` writes an empty distribution).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drivers::{Layout, StartAt, Target};
use crate::error::BenchError;
use crate::load::consumer::{ConsumerSet, Measure};
use crate::load::pace::Window;
use crate::load::producer::{self, ProducerSet};
use crate::load::stats::{now_ns, Live, Progress, Recorder};
use crate::load::{
    cpu_meter, elapsed, flush_counter, merge, record_cpu, save_hist, secs_ns, LoadArgs,
};
use crate::report::Report;

/// Messages sent and read back when `--count` is not given.
pub const DEFAULT_COUNT: u64 = 1_000_000;
/// A consume run stops when nothing arrived for this long.
pub const IDLE_STOP: Duration = Duration::from_secs(5);
/// Most consumer threads chosen by default (one per queue up to this).
pub const DEFAULT_CONSUMERS_MAX: usize = 64;

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Consumer threads (default: one per queue, at most 64).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub consumers: Option<u32>,
    /// Read the messages already stored (from the oldest) instead of sending --count first.
    #[arg(long)]
    pub no_prefill: bool,
}

/// Consumer threads for a layout: `asked`, else one per queue up to the default maximum.
pub fn consumer_count(asked: Option<u32>, layout: &Layout) -> usize {
    asked.map_or(
        (layout.topics * layout.queues).min(DEFAULT_CONSUMERS_MAX),
        |n| n as usize,
    )
}

/// A consumer group name no earlier run used.
pub fn fresh_group(prefix: &str, mode: &str) -> String {
    format!("{prefix}-{mode}-{}-{}", std::process::id(), now_ns())
}

/// Sends `count` messages as fast as the producers can; (acknowledged, failed, seconds).
fn prefill(
    target: &dyn Target,
    layout: &Layout,
    a: &LoadArgs,
    count: u64,
) -> Result<(u64, u64, f64), BenchError> {
    let live = Arc::new(Live::default());
    let (n, inflight) = (a.producers as usize, a.inflight as usize);
    let senders = ProducerSet::open(target, layout, n, a.producer_threads(), inflight)?;
    let start = now_ns();
    let window = Window {
        measure_start_ns: start,
        quota: Some(count),
        end_ns: None,
    };
    let plans = producer::plans(
        n,
        layout.topics,
        a.size as usize,
        a.batch as usize,
        inflight,
        None,
        window,
        start,
        false,
    );
    let progress = Progress::start("prefill", Arc::clone(&live));
    let outcomes = ProducerSet::start(senders, &plans, &live)?.join();
    progress.finish();
    let secs = (now_ns() - start) as f64 / 1e9;
    let acked = outcomes.iter().map(|o| o.acked).sum();
    Ok((acked, outcomes.iter().map(|o| o.errors).sum(), secs))
}

pub fn run(args: &ConsumeArgs) -> Result<Report, BenchError> {
    let a = &args.load;
    a.validate(false)?;
    let target = a.open_target()?;
    let mut cpu = cpu_meter(a, target.as_ref())?;
    let layout = a.layout();
    let count = a.count.unwrap_or(DEFAULT_COUNT);
    if !args.no_prefill {
        target.create_topics(&layout)?;
    }
    let group = fresh_group(&a.topic_prefix, "consume");
    let start_at = if args.no_prefill {
        StartAt::Earliest
    } else {
        StartAt::Latest
    };
    let consumers = consumer_count(args.consumers, &layout);
    let fetchers = target.fetchers(&layout, &group, consumers, start_at)?;
    let (mut sent, mut send_errors, mut prefill_s) = (0, 0, 0.0);
    if !args.no_prefill {
        (sent, send_errors, prefill_s) = prefill(target.as_ref(), &layout, a, count)?;
    }
    let expected = if args.no_prefill {
        count
    } else {
        sent.min(count)
    };

    let live = Arc::new(Live::default());
    let mut flushes = flush_counter(target.as_ref(), a.data_dir.as_ref());
    cpu.start();
    let start = now_ns();
    let deadline = a.duration.map(|d| start + secs_ns(d));
    let progress = Progress::start("consume", Arc::clone(&live));
    let set = ConsumerSet::start(fetchers, Measure::Throughput, &live)?;
    let (mut seen, mut last_change) = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let n = live.messages.load(Ordering::Relaxed);
        if n != seen {
            (seen, last_change) = (n, Instant::now());
        }
        let timed_out = deadline.is_some_and(|d| now_ns() >= d);
        if n >= expected || timed_out || last_change.elapsed() >= IDLE_STOP {
            break;
        }
    }
    let outcomes = set.stop();
    let cpu_used = cpu.finish();
    let device_flushes = flushes.finish();
    progress.finish();

    let recorders: Vec<&Recorder> = outcomes.iter().map(|o| &o.recorder).collect();
    let (messages, bytes, hist) = merge(&recorders);
    let took = elapsed(start, live.last_ns.load(Ordering::Relaxed));
    let mut report = Report::new("consume", messages, bytes, took, &hist);
    report.errors = outcomes.iter().map(|o| o.errors).sum();
    report.device_flushes = device_flushes;
    record_cpu(&mut report, &cpu, &cpu_used);
    a.params(&mut report, target.as_ref());
    report
        .param("consumers", consumers as u64)
        .param("expected", expected)
        .param("prefill", !args.no_prefill);
    if !args.no_prefill {
        report
            .param("prefill_acked", sent)
            .param("prefill_errors", send_errors)
            .param("prefill_seconds", prefill_s)
            .param(
                "prefill_msgs_per_s",
                if prefill_s > 0.0 {
                    sent as f64 / prefill_s
                } else {
                    0.0
                },
            );
    }
    save_hist(a, &hist)?;
    Ok(report)
}
