//! Counters and latency histograms the broker keeps, shown by `admin broker status` and, in
//! Prometheus' text format, by the metrics endpoint (`broker.metrics_listen`, off by default).

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

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            if i < BUCKETS {
                let le = (FIRST_BUCKET_US << i) as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            } else {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
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

#[derive(Default)]
pub struct Metrics {
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

impl Metrics {
    pub fn put(&self, messages: u64, bytes: u64) {
        self.put_messages.fetch_add(messages, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn got(&self, messages: u64, bytes: u64) {
        self.get_messages.fetch_add(messages, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The counters and histograms in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let counters = [
            (
                "shardmq_put_messages_total",
                "Messages stored.",
                &self.put_messages,
            ),
            (
                "shardmq_put_bytes_total",
                "Message body bytes stored.",
                &self.put_bytes,
            ),
            (
                "shardmq_get_messages_total",
                "Messages returned by pulls.",
                &self.get_messages,
            ),
            (
                "shardmq_get_bytes_total",
                "Message body bytes returned by pulls.",
                &self.get_bytes,
            ),
            (
                "shardmq_refused_total",
                "Requests refused by a check.",
                &self.refused,
            ),
            (
                "shardmq_busy_total",
                "Requests answered SYSTEM_BUSY.",
                &self.busy,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        let name = "shardmq_connections";
        let _ = writeln!(
            out,
            "# HELP {name} Open client connections.\n# TYPE {name} gauge"
        );
        let _ = writeln!(out, "{name} {}", self.connections.load(Ordering::Relaxed));
        self.put_latency.render(
            "shardmq_put_latency_seconds",
            "Send latency at the broker.",
            out,
        );
        self.pull_latency.render(
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
        h.render("x", "test", &mut out);
        assert!(out.contains("x_bucket{le=\"0.000016\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.000128\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"));
    }
}
