//! `e2e`: producers and a consumer group at once; the latency of each message from its
//! intended send time to the moment a consumer has it.
//!
//! Each body carries its intended send time in its first 8 bytes (nanoseconds on this
//! process's monotonic clock; producers and consumers share the process, so no clock sync is
//! needed). The consumers start at the newest message before the producers start. Messages
//! sent in the warm-up are read but not counted. After the producers stop, the run waits up
//! to [`DRAIN`] for the consumers to read everything acknowledged; `params.lost` counts
//! what they did not. `messages`/`bytes` and the rates are the measured messages read, over
//! the time from the end of the warm-up to the last of them; `params.produce_*` are the
//! send side's figures over the same window. The CPU time of the load generator and of the
//! server process(es) runs from the end of the warm-up to the end of the drain.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drivers::StartAt;
use crate::error::BenchError;
use crate::load::consumer::{ConsumerSet, Measure};
use crate::load::producer::{self, ProducerSet};
use crate::load::stats::{now_ns, sleep_until_ns, Live, Progress, Recorder};
use crate::load::{cpu_meter, elapsed, flush_counter, merge, record_cpu, save_hist, LoadArgs};
use crate::report::Report;
use crate::workloads::consume::{consumer_count, fresh_group};

/// How long the consumers may take to read the last acknowledged messages.
pub const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Consumer threads (default: one per queue, at most 64).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub consumers: Option<u32>,
}

pub fn run(args: &E2eArgs) -> Result<Report, BenchError> {
    let a = &args.load;
    a.validate(true)?;
    let target = a.open_target()?;
    let mut cpu = cpu_meter(a, target.as_ref())?;
    let layout = a.layout();
    target.create_topics(&layout)?;
    let consumers = consumer_count(args.consumers, &layout);
    let group = fresh_group(&a.topic_prefix, "e2e");
    let fetchers = target.fetchers(&layout, &group, consumers, StartAt::Latest)?;
    let (sent_live, read_live) = (Arc::new(Live::default()), Arc::new(Live::default()));
    let (producers, inflight) = (a.producers as usize, a.inflight as usize);
    let senders = ProducerSet::open(
        target.as_ref(),
        &layout,
        producers,
        a.producer_threads(),
        inflight,
    )?;

    let start = now_ns();
    let window = a.window(start);
    let measure = Measure::EndToEnd {
        measure_start_ns: window.measure_start_ns,
    };
    let progress = Progress::start("e2e", Arc::clone(&read_live));
    let readers = ConsumerSet::start(fetchers, measure, &read_live)?;
    let plans = producer::plans(
        producers,
        layout.topics,
        a.size as usize,
        a.batch as usize,
        inflight,
        a.rate,
        window,
        start,
        true,
    );
    let writers = ProducerSet::start(senders, &plans, &sent_live)?;
    sleep_until_ns(window.measure_start_ns);
    let mut flushes = flush_counter(target.as_ref(), a.data_dir.as_ref());
    cpu.start();
    let sent = writers.join();
    let acked: u64 = sent.iter().map(|o| o.acked).sum();
    let drain_until = Instant::now() + DRAIN;
    while read_live.messages.load(Ordering::Relaxed) < acked && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let read = readers.stop();
    let cpu_used = cpu.finish();
    let device_flushes = flushes.finish();
    progress.finish();

    let recorders: Vec<&Recorder> = read.iter().map(|o| &o.recorder).collect();
    let (messages, bytes, hist) = merge(&recorders);
    let took = elapsed(
        window.measure_start_ns,
        read_live.last_ns.load(Ordering::Relaxed),
    );
    let mut report = Report::new("e2e", messages, bytes, took, &hist);
    report.errors =
        sent.iter().map(|o| o.errors).sum::<u64>() + read.iter().map(|o| o.errors).sum::<u64>();
    report.device_flushes = device_flushes;
    record_cpu(&mut report, &cpu, &cpu_used);
    a.params(&mut report, target.as_ref());

    let send_recs: Vec<&Recorder> = sent.iter().map(|o| &o.recorder).collect();
    let (sent_msgs, _, send_hist) = merge(&send_recs);
    let send_took = elapsed(
        window.measure_start_ns,
        sent_live.last_ns.load(Ordering::Relaxed),
    );
    let read_all = read_live.messages.load(Ordering::Relaxed);
    report
        .param("consumers", consumers as u64)
        .param(
            "produce_msgs_per_s",
            sent_msgs as f64 / send_took.as_secs_f64(),
        )
        .param("produce_p50_us", send_hist.value_at_quantile(0.5))
        .param("produce_p99_us", send_hist.value_at_quantile(0.99))
        .param("acked_with_warmup", acked)
        .param("read_with_warmup", read_all)
        .param("lost", acked.saturating_sub(read_all));
    save_hist(a, &hist)?;
    Ok(report)
}
