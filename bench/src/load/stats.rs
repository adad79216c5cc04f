//! Counting what a run did while it runs: the run clock, shared live counters, per-thread
//! latency recorders and the progress line.
//!
//! Every producer and consumer thread records into its own histograms (no lock per
//! message) and adds its interval histogram to the shared one every [`FLUSH_EVERY`], so the
//! progress line can show the p99 so far. The progress line is drawn by `indicatif` on
//! stderr once a second (hidden when stderr is not a terminal).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::latency_histogram;

/// How often a recorder hands its latencies to the shared histogram.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The run clock: nanoseconds since the first call in this process (monotonic). Send
/// stamps in message bodies use it, so producers and consumers must share the process.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Sleeps until the run clock reads `ns` (returns at once if it already does).
pub fn sleep_until_ns(ns: u64) {
    let now = now_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

/// Counters shared by all threads of a run, for the progress line and the stop decisions.
#[derive(Debug)]
pub struct Live {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Latencies of measured messages so far (in µs), merged in by the recorders.
    pub latencies: Mutex<Histogram<u64>>,
    /// The latest completion of a measured message on the run clock.
    pub last_ns: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latencies: Mutex::new(latency_histogram()),
            last_ns: AtomicU64::new(0),
        }
    }
}

impl Live {
    pub fn p99_us(&self) -> u64 {
        let h = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        match h.len() {
            0 => 0,
            _ => h.value_at_quantile(0.99),
        }
    }

    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// One thread's latency recording: everything it measured, and what it has not yet handed
/// to [`Live`].
#[derive(Debug)]
pub struct Recorder {
    live: Arc<Live>,
    pub total: Histogram<u64>,
    interval: Histogram<u64>,
    last_flush: Instant,
    pub measured_messages: u64,
    pub measured_bytes: u64,
}

impl Recorder {
    pub fn new(live: Arc<Live>) -> Self {
        Recorder {
            live,
            total: latency_histogram(),
            interval: latency_histogram(),
            last_flush: Instant::now(),
            measured_messages: 0,
            measured_bytes: 0,
        }
    }

    /// Counts `messages` of `bytes` done at `done_ns`; `measured` ones (outside the warm-up)
    /// count in the figures, each with `latency_ns` if the mode measures one.
    pub fn done(
        &mut self,
        messages: u64,
        bytes: u64,
        done_ns: u64,
        measured: bool,
        latency_ns: Option<u64>,
    ) {
        self.live.messages.fetch_add(messages, Ordering::Relaxed);
        self.live.bytes.fetch_add(bytes, Ordering::Relaxed);
        if !measured {
            return;
        }
        self.measured_messages += messages;
        self.measured_bytes += bytes;
        self.live.last_ns.fetch_max(done_ns, Ordering::Relaxed);
        if let Some(lat) = latency_ns {
            let us = (lat / 1_000).max(1);
            self.total.saturating_record_n(us, messages);
            self.interval.saturating_record_n(us, messages);
        }
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Hands the interval's latencies to the shared histogram.
    pub fn flush(&mut self) {
        if !self.interval.is_empty() {
            let mut shared = self
                .live
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides, so adding cannot fail.
            let _ = shared.add(&self.interval);
            self.interval.reset();
        }
        self.last_flush = Instant::now();
    }
}

/// The live progress line: one update a second with msgs/s, MB/s and p99 so far.
#[derive(Debug)]
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `label`'s progress from `live` on stderr.
    pub fn start(label: &str, live: Arc<Live>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} {msg}") {
            bar.set_style(style);
        }
        let (label, flag) = (label.to_string(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || draw(&bar, &label, &live, &flag))
            .ok();
        Progress { stop, thread }
    }

    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end();
    }
}

fn draw(bar: &ProgressBar, label: &str, live: &Live, stop: &AtomicBool) {
    let (mut last_msgs, mut last_bytes, mut last_at) = (0u64, 0u64, Instant::now());
    while !stop.load(Ordering::Acquire) {
        // Wake often so that finishing does not wait a whole second.
        std::thread::sleep(Duration::from_millis(50));
        if last_at.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let (msgs, bytes) = (
            live.messages.load(Ordering::Relaxed),
            live.bytes.load(Ordering::Relaxed),
        );
        let secs = last_at.elapsed().as_secs_f64();
        bar.set_message(progress_line(
            label,
            (msgs - last_msgs) as f64 / secs,
            (bytes - last_bytes) as f64 / secs / 1e6,
            live.p99_us(),
            live.errors.load(Ordering::Relaxed),
        ));
        bar.tick();
        (last_msgs, last_bytes, last_at) = (msgs, bytes, Instant::now());
    }
    bar.finish_and_clear();
}

/// One progress line's text.
pub fn progress_line(
    label: &str,
    msgs_per_s: f64,
    mb_per_s: f64,
    p99_us: u64,
    errors: u64,
) -> String {
    format!("{label}: {msgs_per_s:>10.0} msgs/s {mb_per_s:>8.1} MB/s  p99 so far {p99_us} us  errors {errors}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_hands_its_latencies_over() {
        let live = Arc::new(Live::default());
        let mut r = Recorder::new(Arc::clone(&live));
        r.done(3, 300, 10, true, Some(2_000_000));
        r.done(1, 100, 20, false, None);
        r.done(1, 100, 5, true, Some(500));
        r.flush();
        assert_eq!(live.messages.load(Ordering::Relaxed), 5);
        assert_eq!(live.bytes.load(Ordering::Relaxed), 500);
        assert_eq!((r.measured_messages, r.measured_bytes), (4, 400));
        assert_eq!(live.last_ns.load(Ordering::Relaxed), 10);
        // 3 × 2000 us and one sub-microsecond latency (recorded as 1 us).
        assert_eq!(r.total.len(), 4);
        assert_eq!(r.total.min(), 1);
        assert!((1999..=2001).contains(&live.p99_us()));
    }

    #[test]
    fn run_clock_moves_forward() {
        let a = now_ns();
        sleep_until_ns(a + 1_000_000);
        assert!(now_ns() >= a + 1_000_000);
    }

    #[test]
    fn progress_line_reads() {
        let s = progress_line("produce", 1234.4, 1.26, 87, 0);
        assert!(
            s.contains("1234 msgs/s") && s.contains("1.3 MB/s") && s.contains("p99 so far 87 us")
        );
    }
}
