//! The result of one benchmark run, for humans and for scripts.
//!
//! Throughput: `mb_per_s` is in MB/s with 1 MB = 10^6 bytes (as fio and iperf print it);
//! the human table adds MiB/s. Latencies are microseconds from an HDR histogram with 3
//! significant figures, so a percentile is exact to within 0.1 %. CPU figures are utime +
//! stime over the measured window (`cpu.rs`), per message counted in `messages`.

use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::size::format_bytes;

/// Highest latency a histogram tracks exactly: one hour in µs (longer ones are clamped to it).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A new latency histogram in microseconds: 1 µs .. [`MAX_LATENCY_US`], 3 significant figures.
/// Fixed bounds on purpose: `saturating_record` never resizes, it clamps.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

/// Records one latency, in whole microseconds (truncated; clamped to [`MAX_LATENCY_US`]).
pub fn record_latency(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(us);
}

/// One run's figures. Serialised as one flat JSON object plus a `params` object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran, e.g. `disk` or `disk-sync`.
    pub mode: String,
    /// Operations completed (disk mode: blocks written).
    pub messages: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall-clock seconds of the timed region (each mode documents what it covers).
    pub seconds: f64,
    pub msgs_per_s: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    /// Operations that failed (not counted in `messages`).
    pub errors: u64,
    /// Device cache flushes completed during the run, `null` if they could not be counted.
    pub device_flushes: Option<u64>,
    /// CPU seconds of the server process(es) in the measured window; `null` when none was
    /// known (no `--spawn`, no `--server-pid`) or it could not be read.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of the load generator (its whole process) in the measured window; `null`
    /// in the modes that do not measure it.
    pub bench_cpu_s: Option<f64>,
    /// `server_cpu_s` in µs per message; `null` with it, or when no message was measured.
    pub server_cpu_us_per_msg: Option<f64>,
    /// `bench_cpu_s` in µs per message; `null` with it, or when no message was measured.
    pub bench_cpu_us_per_msg: Option<f64>,
    /// The run's settings and notes (mode specific).
    pub params: Map<String, Value>,
}

impl Report {
    /// Figures from a count, a duration and a latency histogram; `errors`, `device_flushes`,
    /// the CPU figures and `params` start empty (set the public fields, or use
    /// [`Report::set_cpu`] and [`Report::param`]).
    pub fn new(
        mode: impl Into<String>,
        messages: u64,
        bytes: u64,
        elapsed: Duration,
        latencies: &Histogram<u64>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        let rate = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        let q = |quantile: f64| match latencies.len() {
            0 => 0,
            _ => latencies.value_at_quantile(quantile),
        };
        Report {
            mode: mode.into(),
            messages,
            bytes,
            seconds,
            msgs_per_s: rate(messages as f64),
            mb_per_s: rate(bytes as f64 / 1e6),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: latencies.max(),
            errors: 0,
            device_flushes: None,
            server_cpu_s: None,
            bench_cpu_s: None,
            server_cpu_us_per_msg: None,
            bench_cpu_us_per_msg: None,
            params: Map::new(),
        }
    }

    /// Adds one entry to `params`.
    pub fn param(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.params.insert(key.to_string(), value.into());
        self
    }

    /// Sets the CPU seconds of the window and, from `messages`, the µs per message.
    pub fn set_cpu(&mut self, bench_s: Option<f64>, server_s: Option<f64>) {
        let messages = self.messages;
        let per_msg = |s: Option<f64>| {
            s.filter(|_| messages > 0)
                .map(|s| s * 1e6 / messages as f64)
        };
        (self.bench_cpu_s, self.server_cpu_s) = (bench_s, server_s);
        (self.bench_cpu_us_per_msg, self.server_cpu_us_per_msg) =
            (per_msg(bench_s), per_msg(server_s));
    }

    /// The report as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a Report always serialises")
    }

    /// A small aligned table for humans.
    pub fn write_table(&self, out: &mut impl Write) -> io::Result<()> {
        let mib_s = if self.seconds > 0.0 {
            self.bytes as f64 / f64::from(1 << 20) / self.seconds
        } else {
            0.0
        };
        let flushes = match self.device_flushes {
            Some(n) => n.to_string(),
            None => "unavailable".to_string(),
        };
        writeln!(out, "{:<16}{}", "mode", self.mode)?;
        writeln!(out, "{:<16}{}", "messages", self.messages)?;
        writeln!(
            out,
            "{:<16}{} ({})",
            "bytes",
            self.bytes,
            format_bytes(self.bytes)
        )?;
        writeln!(out, "{:<16}{:.3}", "seconds", self.seconds)?;
        writeln!(out, "{:<16}{:.1}", "msgs/s", self.msgs_per_s)?;
        writeln!(
            out,
            "{:<16}{:.1} MB/s ({mib_s:.1} MiB/s)",
            "throughput", self.mb_per_s
        )?;
        writeln!(
            out,
            "{:<16}p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            "latency (us)",
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.p9999_us,
            self.max_us
        )?;
        writeln!(out, "{:<16}{}", "errors", self.errors)?;
        writeln!(out, "{:<16}{flushes}", "device flushes")?;
        writeln!(
            out,
            "{:<16}server {}  bench {}",
            "cpu (us/msg)",
            cpu_cell(self.server_cpu_us_per_msg, self.server_cpu_s),
            cpu_cell(self.bench_cpu_us_per_msg, self.bench_cpu_s)
        )?;
        for (key, value) in &self.params {
            match value {
                Value::String(s) => writeln!(out, "  {key:<22}{s}")?,
                other => writeln!(out, "  {key:<22}{other}")?,
            }
        }
        Ok(())
    }

    /// Prints the report: the table on stdout, or with `json` the table on stderr and exactly
    /// one JSON object as the only (hence last) line of stdout.
    pub fn emit(&self, json: bool) -> io::Result<()> {
        if json {
            self.write_table(&mut io::stderr().lock())?;
            let mut out = io::stdout().lock();
            writeln!(out, "{}", self.to_json_line())?;
            out.flush()
        } else {
            let mut out = io::stdout().lock();
            self.write_table(&mut out)?;
            out.flush()
        }
    }
}

/// One side's CPU figure for the table: `12.34 (0.617 s)`, or why there is none.
fn cpu_cell(us_per_msg: Option<f64>, seconds: Option<f64>) -> String {
    match (us_per_msg, seconds) {
        (Some(us), Some(s)) => format!("{us:.2} ({s:.3} s)"),
        (None, Some(s)) => format!("- ({s:.3} s)"),
        _ => "unavailable".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_histogram() {
        let mut h = latency_histogram();
        for us in 1..=1000 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        let mut r = Report::new("test", 1000, 2_000_000, Duration::from_secs(2), &h);
        r.param("block", 2000u64);
        assert_eq!(r.msgs_per_s, 500.0);
        assert_eq!(r.mb_per_s, 1.0);
        assert_eq!(r.p50_us, 500);
        assert_eq!(r.max_us, 1000);
        let v: Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(v["device_flushes"], Value::Null);
        assert_eq!(v["params"]["block"], 2000);
        assert!(!r.to_json_line().contains('\n'));
    }

    #[test]
    fn records_long_latencies() {
        let mut h = latency_histogram();
        record_latency(&mut h, Duration::from_micros(2434));
        record_latency(&mut h, Duration::from_secs(10));
        let r = Report::new("long", 2, 0, Duration::from_secs(1), &h);
        assert!((2433..=2436).contains(&r.p50_us), "{}", r.p50_us);
        assert!((9_990_000..=10_010_000).contains(&r.max_us), "{}", r.max_us);
        record_latency(&mut h, Duration::from_secs(7200));
        assert!(h.max() >= MAX_LATENCY_US && h.max() < MAX_LATENCY_US + MAX_LATENCY_US / 500);
    }

    #[test]
    fn json_has_every_key() {
        let mut r = Report::new(
            "produce",
            1,
            1024,
            Duration::from_secs(1),
            &latency_histogram(),
        );
        r.device_flushes = Some(3);
        r.param("size", 1024u64);
        let v: Value = serde_json::from_str(&r.to_json_line()).expect("one JSON object");
        let keys = [
            "mode",
            "messages",
            "bytes",
            "seconds",
            "msgs_per_s",
            "mb_per_s",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "p9999_us",
            "max_us",
            "errors",
            "device_flushes",
            "server_cpu_s",
            "bench_cpu_s",
            "server_cpu_us_per_msg",
            "bench_cpu_us_per_msg",
            "params",
        ];
        let obj = v.as_object().expect("an object");
        for k in keys {
            assert!(obj.contains_key(k), "missing {k}");
        }
        assert_eq!(obj.len(), keys.len(), "unexpected keys in {obj:?}");
        assert_eq!(v["mode"], "produce");
        assert_eq!(v["device_flushes"], 3);
        assert_eq!(v["server_cpu_s"], Value::Null);
        assert_eq!(v["bench_cpu_us_per_msg"], Value::Null);
        assert!(v["params"].is_object() && v["params"]["size"] == 1024);
    }

    #[test]
    fn cpu_per_message() {
        let mut r = Report::new("e2e", 4000, 0, Duration::from_secs(1), &latency_histogram());
        r.set_cpu(Some(0.05), None);
        assert_eq!(r.bench_cpu_s, Some(0.05));
        assert!((r.bench_cpu_us_per_msg.expect("bench") - 12.5).abs() < 1e-9);
        assert_eq!((r.server_cpu_s, r.server_cpu_us_per_msg), (None, None));
        let v: Value = serde_json::from_str(&r.to_json_line()).expect("JSON");
        assert_eq!(v["server_cpu_us_per_msg"], Value::Null);
        assert_eq!(v["bench_cpu_s"], 0.05);
        let mut table = Vec::new();
        r.write_table(&mut table).expect("table");
        let table = String::from_utf8(table).expect("utf-8");
        assert!(
            table.contains("server unavailable  bench 12.50 (0.050 s)"),
            "{table}"
        );
        let mut empty = Report::new("e2e", 0, 0, Duration::ZERO, &latency_histogram());
        empty.set_cpu(Some(0.01), Some(0.02));
        assert_eq!(
            (empty.bench_cpu_us_per_msg, empty.server_cpu_s),
            (None, Some(0.02))
        );
    }

    #[test]
    fn empty_run_has_zero_rates() {
        let r = Report::new("empty", 0, 0, Duration::ZERO, &latency_histogram());
        assert_eq!(
            (r.msgs_per_s, r.mb_per_s, r.p99_us, r.max_us),
            (0.0, 0.0, 0, 0)
        );
    }
}
