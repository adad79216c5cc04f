//! Counters and latency histograms the broker keeps, shown by `admin broker status` and, in
//! Prometheus' text format, by the metrics endpoint (`broker.metrics_listen`, off by default).
//!
//! Each shard writes its own set (`Metrics::here`, by the shard a thread runs), each on its
//! own cache lines, so no counter line moves between cores per message; readers sum them.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: powers of two from 16 µs to ~33 s, plus +Inf.
const BUCKETS: usize = 22;
const FIRST_BUCKET_US: u64 = 16;

/// A lock-free latency histogram with power-of-two buckets (Prometheus' cumulative form is
/// built at scrape time).
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = bucket(us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the sum of `parts` (one histogram per shard) as one histogram.
    fn render<'a>(
        parts: impl Iterator<Item = &'a LatencyHistogram> + Clone,
        name: &str,
        help: &str,
        out: &mut String,
    ) {
        let total = |f: &dyn Fn(&LatencyHistogram) -> &AtomicU64| -> u64 {
            parts.clone().map(|h| f(h).load(Ordering::Relaxed)).sum()
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for i in 0..=BUCKETS {
            cumulative += total(&|h| &h.buckets[i]);
            if i < BUCKETS {
                let le = (FIRST_BUCKET_US << i) as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            } else {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
        let sum = total(&|h| &h.sum_us) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", total(&|h| &h.count));
    }
}

/// The bucket of a latency in µs: the first whose bound is at least it.
fn bucket(us: u64) -> usize {
    let mut i = 0;
    while i < BUCKETS && (FIRST_BUCKET_US << i) < us {
        i += 1;
    }
    i
}

/// One shard's counters, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub put_messages: AtomicU64,
    pub put_bytes: AtomicU64,
    pub get_messages: AtomicU64,
    pub get_bytes: AtomicU64,
    /// Requests refused by a check (bad input, permissions, ...).
    pub refused: AtomicU64,
    /// Requests answered SYSTEM_BUSY by a cap.
    pub busy: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// From a send's arrival to its answer (after the covering fdatasync under SYNC_FLUSH).
    pub put_latency: LatencyHistogram,
    /// From a pull's arrival to its answer, long-poll waits included.
    pub pull_latency: LatencyHistogram,
}

impl ShardMetrics {
    pub fn put(&self, messages: u64, bytes: u64) {
        self.put_messages.fetch_add(messages, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn got(&self, messages: u64, bytes: u64) {
        self.get_messages.fetch_add(messages, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

thread_local! {
    /// The shard this thread serves, once it said so (`Metrics::enter_shard`).
    static THREAD_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Every shard's counters, plus one set for threads that are not shards.
pub struct Metrics {
    sets: Vec<ShardMetrics>,
}

impl Metrics {
    pub fn new(shards: usize) -> Self {
        Metrics {
            sets: (0..=shards).map(|_| ShardMetrics::default()).collect(),
        }
    }

    /// Marks the calling thread as shard `shard`'s: its counts go to that shard's set.
    pub fn enter_shard(shard: usize) {
        THREAD_SHARD.with(|s| s.set(Some(shard)));
    }

    /// The counters the calling thread writes.
    pub fn here(&self) -> &ShardMetrics {
        let last = self.sets.len() - 1;
        let i = THREAD_SHARD.with(Cell::get).map_or(last, |s| s.min(last));
        &self.sets[i]
    }

    /// A counter summed over every set.
    pub fn total(&self, counter: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.sets
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    /// The counters and histograms in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        type Counter = fn(&ShardMetrics) -> &AtomicU64;
        let counters: [(&str, &str, Counter); 6] = [
            ("shardmq_put_messages_total", "Messages stored.", |s| {
                &s.put_messages
            }),
            (
                "shardmq_put_bytes_total",
                "Message body bytes stored.",
                |s| &s.put_bytes,
            ),
            (
                "shardmq_get_messages_total",
                "Messages returned by pulls.",
                |s| &s.get_messages,
            ),
            (
                "shardmq_get_bytes_total",
                "Message body bytes returned by pulls.",
                |s| &s.get_bytes,
            ),
            (
                "shardmq_refused_total",
                "Requests refused by a check.",
                |s| &s.refused,
            ),
            (
                "shardmq_busy_total",
                "Requests answered SYSTEM_BUSY.",
                |s| &s.busy,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", self.total(counter));
        }
        let name = "shardmq_connections";
        let _ = writeln!(
            out,
            "# HELP {name} Open client connections.\n# TYPE {name} gauge"
        );
        let _ = writeln!(out, "{name} {}", self.total(|s| &s.connections));
        LatencyHistogram::render(
            self.sets.iter().map(|s| &s.put_latency),
            "shardmq_put_latency_seconds",
            "Send latency at the broker.",
            out,
        );
        LatencyHistogram::render(
            self.sets.iter().map(|s| &s.pull_latency),
            "shardmq_pull_latency_seconds",
            "Pull latency at the broker, long polling included.",
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(16), 0);
        assert_eq!(bucket(17), 1);
        assert_eq!(bucket(u64::MAX), BUCKETS);
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(100));
        h.record(Duration::from_secs(100));
        let mut out = String::new();
        LatencyHistogram::render(std::iter::once(&h), "x", "test", &mut out);
        assert!(out.contains("x_bucket{le=\"0.000016\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.000128\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"));
    }

    #[test]
    fn each_thread_counts_in_its_shards_set_and_readers_see_the_sum() {
        let m = std::sync::Arc::new(Metrics::new(2));
        m.here().put(1, 10); // not a shard thread: the extra set
        let m1 = m.clone();
        std::thread::spawn(move || {
            Metrics::enter_shard(1);
            m1.here().put(2, 20);
            m1.here().put_latency.record(Duration::from_micros(50));
        })
        .join()
        .unwrap();
        assert_eq!(m.sets[1].put_messages.load(Ordering::Relaxed), 2);
        assert_eq!(m.total(|s| &s.put_messages), 3);
        assert_eq!(m.total(|s| &s.put_bytes), 30);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("shardmq_put_messages_total 3"), "{out}");
        assert!(out.contains("shardmq_put_latency_seconds_count 1"), "{out}");
    }
}
