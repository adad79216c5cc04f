//! The consumer side of a load: one thread per [`Fetcher`] of a group, fetching until told
//! to stop. In `e2e` runs each body carries its intended send time in its first 8 bytes
//! (`pace::write_stamp`); the consumer records the time from then to the moment the body
//! reached it, for the messages sent after the warm-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::pace::{latency_ns, read_stamp};
use super::stats::{now_ns, Live, Recorder};
use crate::drivers::Fetcher;
use crate::error::BenchError;

/// How long one fetch may wait for messages (long polling), so that a stop is seen soon.
pub const FETCH_WAIT: Duration = Duration::from_millis(100);
/// The pause after a failed fetch.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// How a consumer counts what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Every message counts; no latency (the `consume` mode).
    Throughput,
    /// End-to-end latency from the body's stamp; messages stamped before `measure_start_ns`
    /// (the warm-up) are read but not counted.
    EndToEnd { measure_start_ns: u64 },
}

impl Measure {
    /// Whether a body counts, and its latency, read at `now_ns`.
    pub fn judge(self, body: &[u8], now_ns: u64) -> (bool, Option<u64>) {
        match self {
            Measure::Throughput => (true, None),
            Measure::EndToEnd { measure_start_ns } => match read_stamp(body) {
                Some(sent) => (sent >= measure_start_ns, Some(latency_ns(sent, now_ns))),
                None => (false, None),
            },
        }
    }
}

/// What one consumer did.
#[derive(Debug)]
pub struct ConsumerOutcome {
    pub recorder: Recorder,
    pub errors: u64,
}

fn run_consumer(
    fetcher: &mut dyn Fetcher,
    measure: Measure,
    live: Arc<Live>,
    stop: &AtomicBool,
) -> ConsumerOutcome {
    let mut rec = Recorder::new(Arc::clone(&live));
    let mut errors = 0;
    while !stop.load(Ordering::Acquire) {
        let mut on_body = |body: &[u8]| {
            let now = now_ns();
            let (measured, lat) = measure.judge(body, now);
            rec.done(1, body.len() as u64, now, measured, lat);
        };
        if let Err(e) = fetcher.fetch(FETCH_WAIT, &mut on_body) {
            tracing::debug!("fetch failed: {e}");
            errors += 1;
            live.add_error();
            std::thread::sleep(ERROR_PAUSE);
        }
        rec.flush();
    }
    ConsumerOutcome {
        recorder: rec,
        errors,
    }
}

/// The consumers of a run.
pub struct ConsumerSet {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ConsumerOutcome>>,
}

impl ConsumerSet {
    pub fn start(
        fetchers: Vec<Box<dyn Fetcher>>,
        measure: Measure,
        live: &Arc<Live>,
    ) -> Result<ConsumerSet, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(fetchers.len());
        for (i, mut f) in fetchers.into_iter().enumerate() {
            let (live, stop) = (Arc::clone(live), Arc::clone(&stop));
            let t = std::thread::Builder::new()
                .name(format!("bench-consumer-{i}"))
                .spawn(move || run_consumer(f.as_mut(), measure, live, &stop))
                .map_err(|e| BenchError::io("start a consumer thread", e))?;
            threads.push(t);
        }
        Ok(ConsumerSet { stop, threads })
    }

    /// Tells every consumer to stop after its current fetch and waits for them.
    pub fn stop(self) -> Vec<ConsumerOutcome> {
        self.stop.store(true, Ordering::Release);
        self.threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::pace::write_stamp;

    #[test]
    fn end_to_end_judges_by_the_stamp() {
        let m = Measure::EndToEnd {
            measure_start_ns: 1_000,
        };
        let mut body = vec![0u8; 32];
        write_stamp(&mut body, 1_500);
        assert_eq!(m.judge(&body, 4_000), (true, Some(2_500)));
        write_stamp(&mut body, 999);
        assert_eq!(m.judge(&body, 4_000), (false, Some(3_001)));
        assert_eq!(m.judge(&body[..4], 4_000), (false, None));
        assert_eq!(Measure::Throughput.judge(&body, 1), (true, None));
    }
}
