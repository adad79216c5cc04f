//! CPU time spent by processes over a run's measured window: the load generator itself and
//! the server process(es) under test, so that a report can say what each message cost.
//!
//! The figure is utime + stime of `/proc/<pid>/stat` (fields 14 and 15, clock ticks of
//! `sysconf(_SC_CLK_TCK)`, usually 100 per second): every thread of the process, not its
//! waited-for children (a Redis AOF rewrite child is not counted). A tick is the resolution,
//! so a window of a few hundred ticks is needed for a figure good to 1 %.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Whose CPU time is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// This process (`/proc/self`).
    Current,
    Pid(u32),
}

impl Process {
    fn stat_path(self) -> PathBuf {
        PathBuf::from(format!("/proc/{self}/stat"))
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Current => f.write_str("self"),
            Process::Pid(pid) => write!(f, "{pid}"),
        }
    }
}

/// What is wrong with a stat line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatParseError {
    #[error("no ')' closing the command name")]
    NoCommEnd,
    #[error("{found} fields after the command name, expected at least {STIME_AFTER_COMM}")]
    TooShort { found: usize },
    #[error("field {field} is not a number: {text:?}")]
    NotNumber { field: usize, text: String },
}

/// Why a process's CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("process {0} does not exist (no /proc/{0}/stat): a wrong pid, or it has exited")]
    Gone(Process),
    #[error("reading /proc/{process}/stat: {source}")]
    Read {
        process: Process,
        #[source]
        source: io::Error,
    },
    #[error("/proc/{process}/stat: {source}")]
    Parse {
        process: Process,
        #[source]
        source: StatParseError,
    },
}

/// CPU time of one process, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// Field 14: time in user mode.
    pub utime: u64,
    /// Field 15: time in kernel mode.
    pub stime: u64,
}

impl CpuTicks {
    pub fn total(self) -> u64 {
        self.utime + self.stime
    }
}

/// 1-based field numbers of `proc_pid_stat(5)`, counted after the command name (field 2),
/// whose end is the first field we can find reliably.
const UTIME_AFTER_COMM: usize = 14 - 2;
const STIME_AFTER_COMM: usize = 15 - 2;

/// Parses utime and stime out of one `/proc/<pid>/stat` line.
///
/// Field 2 is the command name in parentheses, and it may hold spaces and ')' itself (a
/// thread can name itself anything), so the fields are counted from its last ')'.
pub fn parse_stat(line: &str) -> Result<CpuTicks, StatParseError> {
    let end = line.rfind(')').ok_or(StatParseError::NoCommEnd)?;
    let fields: Vec<&str> = line[end + 1..].split_ascii_whitespace().collect();
    if fields.len() < STIME_AFTER_COMM {
        return Err(StatParseError::TooShort {
            found: fields.len(),
        });
    }
    let number = |n: usize| {
        let text = fields[n - 1];
        text.parse::<u64>().map_err(|_| StatParseError::NotNumber {
            field: n + 2,
            text: text.to_string(),
        })
    };
    Ok(CpuTicks {
        utime: number(UTIME_AFTER_COMM)?,
        stime: number(STIME_AFTER_COMM)?,
    })
}

/// Reads a process's CPU time now.
pub fn read_ticks(process: Process) -> Result<CpuTicks, CpuError> {
    let text = std::fs::read_to_string(process.stat_path()).map_err(|source| {
        // ESRCH: the process went away between the open and the read.
        let gone = source.kind() == io::ErrorKind::NotFound
            || source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error());
        match gone {
            true => CpuError::Gone(process),
            false => CpuError::Read { process, source },
        }
    })?;
    parse_stat(&text).map_err(|source| CpuError::Parse { process, source })
}

/// Clock ticks per second of the stat fields (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// One reading of the window's processes: the bench, and the servers' sum (`None` without
/// servers). An error is kept as its text: it becomes a note in the report.
#[derive(Debug, Clone)]
struct Sample {
    bench: Result<u64, String>,
    servers: Option<Result<u64, String>>,
}

/// Samples the load generator and the server processes at the start and the end of the
/// measured window. [`CpuMeter::open`] checks every process can be read before the run
/// starts; after that, nothing fails: a figure that cannot be had is `None`, with a reason.
#[derive(Debug)]
pub struct CpuMeter {
    servers: Vec<u32>,
    hz: u64,
    start: Option<Sample>,
}

/// CPU seconds spent in the window, and why a figure is missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUsage {
    pub bench_s: Option<f64>,
    /// `None` when there was no server process to read, or it could not be read.
    pub server_s: Option<f64>,
    pub unavailable: Vec<String>,
}

impl CpuMeter {
    /// A meter for this process and the server processes `servers` (duplicates dropped);
    /// fails if any of them cannot be read now.
    pub fn open(servers: &[u32]) -> Result<CpuMeter, CpuError> {
        let mut pids = servers.to_vec();
        pids.sort_unstable();
        pids.dedup();
        read_ticks(Process::Current)?;
        for &pid in &pids {
            read_ticks(Process::Pid(pid))?;
        }
        Ok(CpuMeter {
            servers: pids,
            hz: ticks_per_second(),
            start: None,
        })
    }

    /// The server pids read, for the report.
    pub fn servers(&self) -> &[u32] {
        &self.servers
    }

    /// Clock ticks per second, for the report.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    fn sample(&self) -> Sample {
        let total = |p: Process| read_ticks(p).map(CpuTicks::total);
        let servers = (!self.servers.is_empty()).then(|| {
            self.servers
                .iter()
                .map(|&pid| total(Process::Pid(pid)))
                .sum::<Result<u64, CpuError>>()
                .map_err(|e| e.to_string())
        });
        Sample {
            bench: total(Process::Current).map_err(|e| e.to_string()),
            servers,
        }
    }

    /// Marks the start of the measured window.
    pub fn start(&mut self) {
        self.start = Some(self.sample());
    }

    /// Marks the end of the window: the CPU seconds each side spent since [`CpuMeter::start`].
    pub fn finish(&mut self) -> CpuUsage {
        let Some(start) = self.start.take() else {
            return CpuUsage {
                unavailable: vec!["the window was never started".into()],
                ..CpuUsage::default()
            };
        };
        usage(&start, &self.sample(), self.hz)
    }
}

/// The seconds between two samples, and the reasons for those missing (pure).
fn usage(start: &Sample, end: &Sample, hz: u64) -> CpuUsage {
    let mut unavailable = Vec::new();
    let mut seconds = |from: &Result<u64, String>, to: &Result<u64, String>| match (from, to) {
        (Ok(a), Ok(b)) => Some(b.saturating_sub(*a) as f64 / hz.max(1) as f64),
        (Err(e), _) | (_, Err(e)) => {
            unavailable.push(e.clone());
            None
        }
    };
    let bench_s = seconds(&start.bench, &end.bench);
    let server_s = match (&start.servers, &end.servers) {
        (Some(a), Some(b)) => seconds(a, b),
        _ => None,
    };
    CpuUsage {
        bench_s,
        server_s,
        unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (Linux 6.x), with utime 1234 and stime 56, behind a given command name.
    fn line(comm: &str) -> String {
        format!(
            "24529 ({comm}) R 24525 24525 23586 0 -1 4194304 100 0 0 0 1234 56 0 0 20 0 1 0 \
             233844 3133440 412 18446744073709551615 93879692767232 93879692787113 0 0 0 0 0 \
             0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        )
    }

    #[test]
    fn parses_utime_and_stime() {
        let want = CpuTicks {
            utime: 1234,
            stime: 56,
        };
        assert_eq!(parse_stat(&line("shardmq")), Ok(want));
        assert_eq!(want.total(), 1290);
    }

    #[test]
    fn command_names_with_spaces_and_parentheses() {
        let want = Ok(CpuTicks {
            utime: 1234,
            stime: 56,
        });
        for comm in [
            "a b",
            "x) R 1 2 3 4 5 6 7 8 9 10 11 12",
            ")",
            "((",
            ") (",
            "",
            "redis-server *:6379",
        ] {
            assert_eq!(parse_stat(&line(comm)), want, "comm {comm:?}");
        }
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse_stat(""), Err(StatParseError::NoCommEnd));
        assert_eq!(parse_stat("1 (x R 1 2"), Err(StatParseError::NoCommEnd));
        assert_eq!(
            parse_stat("1 (x) R 1 2 3"),
            Err(StatParseError::TooShort { found: 4 })
        );
        let bad = line("x").replace(" 1234 ", " -5 ");
        assert_eq!(
            parse_stat(&bad),
            Err(StatParseError::NotNumber {
                field: 14,
                text: "-5".into()
            })
        );
    }

    #[test]
    fn reads_this_process() {
        let ticks = read_ticks(Process::Current).expect("/proc/self/stat");
        let pid = std::process::id();
        assert!(read_ticks(Process::Pid(pid)).expect("own pid").total() >= ticks.total());
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn a_gone_process_is_an_error() {
        // Past the largest pid_max (2^22), so no process has it.
        let gone = Process::Pid(u32::MAX - 1);
        assert!(matches!(read_ticks(gone), Err(CpuError::Gone(p)) if p == gone));
        let err = CpuMeter::open(&[u32::MAX - 1]).expect_err("refused");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn meter_measures_a_window() {
        let own = std::process::id();
        let mut meter = CpuMeter::open(&[own, own]).expect("readable");
        assert_eq!(meter.servers(), &[own]);
        meter.start();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        let u = meter.finish();
        assert!(u.unavailable.is_empty(), "{:?}", u.unavailable);
        assert!(u.bench_s.is_some_and(|s| s >= 0.0));
        assert!(u.server_s.is_some());
        assert_eq!(CpuMeter::open(&[]).expect("self").finish().bench_s, None);
    }

    #[test]
    fn usage_between_samples() {
        let s = |bench, servers| Sample { bench, servers };
        let start = s(Ok(100), Some(Ok(1000)));
        let u = usage(&start, &s(Ok(150), Some(Ok(1250))), 100);
        assert_eq!((u.bench_s, u.server_s), (Some(0.5), Some(2.5)));
        let gone = s(Ok(150), Some(Err("process 7 is gone".into())));
        let u = usage(&start, &gone, 100);
        assert_eq!((u.bench_s, u.server_s), (Some(0.5), None));
        assert_eq!(u.unavailable, vec!["process 7 is gone".to_string()]);
        let none = usage(&s(Ok(1), None), &s(Ok(2), None), 100);
        assert_eq!((none.server_s, none.unavailable.len()), (None, 0));
    }
}
