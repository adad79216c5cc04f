//! `net`: the loopback TCP ceiling, no broker. `--streams` socket pairs on 127.0.0.1, each
//! with a writer thread writing `--chunk`-byte buffers and a reader thread reading them, for
//! `--duration` seconds after a short warm-up; the rate is the bytes the readers got in the
//! measured window. It is the network side of the ceiling min(disk, net) that produce
//! rates are compared with. `messages` counts chunks; no latency is measured.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::load::parse_seconds;
use crate::report::{latency_histogram, Report};
use crate::size::parse_size;

/// Load before the measured window starts.
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Seconds to measure.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    pub duration: f64,
    /// Bytes per write and per read.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub chunk: u64,
    /// Connections side by side.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
}

fn writer(mut s: TcpStream, chunk: usize, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let buf = vec![0x5a_u8; chunk];
    while !stop.load(Ordering::Relaxed) {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)
}

fn reader(mut s: TcpStream, chunk: usize, got: Arc<AtomicU64>) -> std::io::Result<()> {
    let mut buf = vec![0u8; chunk];
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => got.fetch_add(n as u64, Ordering::Relaxed),
        };
    }
}

type Io = JoinHandle<std::io::Result<()>>;

fn spawn(
    name: String,
    f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<Io, BenchError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| BenchError::io("start a net thread", e))
}

pub fn run(args: &NetArgs) -> Result<Report, BenchError> {
    if args.chunk == 0 || args.chunk > 64 << 20 || args.duration <= 0.0 {
        return Err(BenchError::InvalidArgs(
            "--chunk must be 1 B .. 64 MiB and --duration > 0".into(),
        ));
    }
    let chunk = args.chunk as usize;
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("bind 127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::io("local address", e))?;
    let (stop, got) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut threads = Vec::new();
    for i in 0..args.streams {
        let out =
            TcpStream::connect(addr).map_err(|e| BenchError::io(format!("connect {addr}"), e))?;
        let (inp, _) = listener.accept().map_err(|e| BenchError::io("accept", e))?;
        let _ = out.set_nodelay(true);
        let s = Arc::clone(&stop);
        threads.push(spawn(format!("net-writer-{i}"), move || {
            writer(out, chunk, s)
        })?);
        let g = Arc::clone(&got);
        threads.push(spawn(format!("net-reader-{i}"), move || {
            reader(inp, chunk, g)
        })?);
    }
    std::thread::sleep(WARMUP);
    let (t0, b0) = (Instant::now(), got.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let (took, bytes) = (t0.elapsed(), got.load(Ordering::Relaxed) - b0);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(r) => r.map_err(|e| BenchError::io("loopback transfer", e))?,
            Err(_) => {
                return Err(BenchError::io(
                    "loopback transfer",
                    std::io::Error::other("a thread panicked"),
                ))
            }
        }
    }
    let mut report = Report::new("net", bytes / args.chunk, bytes, took, &latency_histogram());
    report
        .param("chunk", args.chunk)
        .param("streams", args.streams);
    Ok(report)
}
