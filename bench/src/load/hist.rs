//! `--hist FILE`: the latency histogram as a percentile distribution for plotting.
//!
//! The format is HdrHistogram's percentile distribution text (what its Java
//! `outputPercentileDistribution` prints, usually saved as `*.hgrm`): a header line, then one
//! row per step with `Value` (latency in microseconds), `Percentile` (0..1), `TotalCount`
//! (messages at or below the value) and `1/(1-Percentile)`, then `#[...]` summary lines. The
//! steps halve the distance to 100 % five times per halving, so the tail gets as many rows as
//! the body. HdrHistogram's online plotter and its `HistogramLogProcessor` tooling read these
//! files, and a plot of `Percentile` against `Value` (with `1/(1-Percentile)` on a log axis)
//! is one line of gnuplot or matplotlib: `plot "run.hgrm" using 4:1 with lines` (set logscale x).

use std::io::{self, Write};
use std::path::Path;

use hdrhistogram::Histogram;

use crate::error::BenchError;

/// Steps per halving of the distance to the 100th percentile.
const TICKS_PER_HALF: u32 = 5;

/// Writes the percentile distribution of `hist` (values in µs) to `out`.
pub fn write_percentiles(hist: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "# latency in microseconds")?;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in hist.iter_quantiles(TICKS_PER_HALF) {
        total += step.count_since_last_iteration();
        let q = step.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "inf")
        };
        writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            step.value_iterated_to() as f64,
            q,
            total
        )?;
    }
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        hist.mean(),
        hist.stdev()
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        hist.max() as f64,
        hist.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SigFigures     = {:>12}]",
        hist.buckets(),
        hist.sigfig()
    )
}

/// Writes the distribution to `path` (created or truncated).
pub fn save(hist: &Histogram<u64>, path: &Path) -> Result<(), BenchError> {
    let io_err = |e| BenchError::io(format!("write histogram {}", path.display()), e);
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut out = io::BufWriter::new(file);
    write_percentiles(hist, &mut out).map_err(io_err)?;
    out.flush().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::latency_histogram;

    #[test]
    fn distribution_is_monotonic_and_complete() {
        let mut h = latency_histogram();
        for us in 1..=10_000u64 {
            h.record(us).expect("in range");
        }
        let mut out = Vec::new();
        write_percentiles(&h, &mut out).expect("write to memory");
        let text = String::from_utf8(out).expect("utf-8");
        let rows: Vec<(f64, f64, u64)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().expect("value"),
                    f[1].parse().expect("percentile"),
                    f[2].parse().expect("count"),
                )
            })
            .collect();
        assert!(rows.len() > 20);
        assert!(rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        let last = rows.last().expect("rows");
        assert_eq!(last.2, 10_000);
        assert!((last.1 - 1.0).abs() < 1e-12);
        assert!((9_990.0..=10_010.0).contains(&last.0));
        // The median row sits near 5000 us.
        let median = rows.iter().find(|r| r.1 >= 0.5).expect("median row");
        assert!((4_990.0..=5_010.0).contains(&median.0), "{median:?}");
        assert!(text.contains("Total count    =        10000"));
    }
}
