//! `produce`: producers sending to a broker over the wire, as fast as `--inflight` allows or
//! at a fixed `--rate` (open loop, latency from each send's intended time).
//!
//! Latency = from a send's intended time (its submission without `--rate`) to its
//! acknowledgement: under SYNC_FLUSH after the covering fdatasync, under ASYNC_FLUSH after
//! the write. `seconds` runs from the end of the warm-up to the last measured
//! acknowledgement; `bytes` counts message bodies. Device flushes are counted on the disk
//! holding the broker's data from the end of the warm-up to the end of the run, and so is
//! the CPU time of the load generator and of the server process(es).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::BenchError;
use crate::load::producer::{self, ProducerSet};
use crate::load::stats::{now_ns, sleep_until_ns, Live, Progress, Recorder};
use crate::load::{cpu_meter, elapsed, flush_counter, merge, record_cpu, save_hist, LoadArgs};
use crate::report::Report;

#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub load: LoadArgs,
}

pub fn run(args: &ProduceArgs) -> Result<Report, BenchError> {
    let a = &args.load;
    a.validate(false)?;
    let target = a.open_target()?;
    let mut cpu = cpu_meter(a, target.as_ref())?;
    let layout = a.layout();
    target.create_topics(&layout)?;
    let live = Arc::new(Live::default());
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
    let plans = producer::plans(
        producers,
        layout.topics,
        a.size as usize,
        a.batch as usize,
        inflight,
        a.rate,
        window,
        start,
        false,
    );
    let progress = Progress::start("produce", Arc::clone(&live));
    let set = ProducerSet::start(senders, &plans, &live)?;
    sleep_until_ns(window.measure_start_ns);
    let mut flushes = flush_counter(target.as_ref(), a.data_dir.as_ref());
    cpu.start();
    let outcomes = set.join();
    let cpu_used = cpu.finish();
    let device_flushes = flushes.finish();
    progress.finish();

    let recorders: Vec<&Recorder> = outcomes.iter().map(|o| &o.recorder).collect();
    let (messages, bytes, hist) = merge(&recorders);
    let end = live.last_ns.load(Ordering::Relaxed);
    let took = elapsed(window.measure_start_ns, end);
    let mut report = Report::new("produce", messages, bytes, took, &hist);
    report.errors = outcomes.iter().map(|o| o.errors).sum();
    report.device_flushes = device_flushes;
    record_cpu(&mut report, &cpu, &cpu_used);
    a.params(&mut report, target.as_ref());
    report.param(
        "acked_with_warmup",
        outcomes.iter().map(|o| o.acked).sum::<u64>(),
    );
    if let Some(n) = device_flushes.filter(|&n| n > 0) {
        report.param("messages_per_flush", messages as f64 / n as f64);
    }
    save_hist(a, &hist)?;
    Ok(report)
}
