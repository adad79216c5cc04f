//! `disk`: the raw ceiling of the log device, without the engine.
//!
//! O_DIRECT sequential writes of `--block` bytes through glommio's io_uring `DmaFile` into a
//! temporary file in `--dir` (removed at the end). The whole file is preallocated up front
//! with `fallocate` (unwritten extents, file size set, then `fdatasync`), untimed, the way a
//! CommitLog segment is preallocated; each first write into an extent converts it, which costs
//! a journal commit at the next `fdatasync`, as in the engine.
//!
//! * Default: `--inflight` writes in flight at consecutive positions (each worker takes the
//!   next block when its write completes). Latency = one write's time from submission to
//!   completion. The timed region runs from the first submission to the completion of the
//!   one final `fdatasync`, so `seconds` and the rates *include* that fdatasync (its own time
//!   is `params.final_fdatasync_us`).
//! * `--sync`: one block at a time (QD1), each write followed by an `fdatasync`.
//!   Latency = write + fdatasync; `seconds` covers all of them.
//!
//! `messages` = blocks written.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use hdrhistogram::Histogram;

use crate::device::{BlockDevice, DeviceError, FlushCounter};
use crate::error::BenchError;
use crate::report::{latency_histogram, record_latency, Report};
use crate::runtime::{self, IoMemory};
use crate::size::{format_bytes, parse_size};

/// Largest `--block` accepted.
const MAX_BLOCK: u64 = 64 << 20;
/// Largest `--inflight` × `--block` (write buffers held in memory).
const MAX_BUFFERS: u64 = 2 << 30;

#[derive(Debug, Clone, clap::Args)]
pub struct DiskArgs {
    /// Directory for the temporary bench file (created if missing; the file is removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Total bytes to write (K/M/G/T are binary: 4G = 4 GiB); a multiple of --block.
    #[arg(long, value_parser = parse_size, default_value = "4G")]
    pub bytes: u64,
    /// Bytes per write; a multiple of the file's O_DIRECT alignment.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub block: u64,
    /// Writes in flight (ignored with --sync, which is QD1).
    #[arg(long, default_value_t = 32, conflicts_with = "sync",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub inflight: u32,
    /// fdatasync after every write, one block at a time.
    #[arg(long)]
    pub sync: bool,
}

/// Validated settings.
#[derive(Debug, Clone)]
struct Plan {
    block: usize,
    blocks: u64,
    inflight: usize,
    sync: bool,
}

impl Plan {
    fn new(args: &DiskArgs) -> Result<Self, BenchError> {
        let bad = |m: String| Err(BenchError::InvalidArgs(m));
        if args.block == 0 || args.block > MAX_BLOCK {
            return bad(format!("--block must be 1 .. {}", format_bytes(MAX_BLOCK)));
        }
        if args.bytes < args.block || args.bytes % args.block != 0 {
            return bad(format!(
                "--bytes {} must be a nonzero multiple of --block {}",
                args.bytes, args.block
            ));
        }
        let blocks = args.bytes / args.block;
        let inflight = if args.sync {
            1
        } else {
            u64::from(args.inflight).min(blocks)
        };
        if inflight * args.block > MAX_BUFFERS {
            return bad(format!(
                "--inflight × --block = {} of buffers, more than {}",
                format_bytes(inflight * args.block),
                format_bytes(MAX_BUFFERS)
            ));
        }
        Ok(Plan {
            block: args.block as usize,
            blocks,
            inflight: inflight as usize,
            sync: args.sync,
        })
    }

    fn total(&self) -> u64 {
        self.blocks * self.block as u64
    }
}

/// What the executor measured.
struct Outcome {
    elapsed: Duration,
    latencies: Histogram<u64>,
    final_fdatasync: Option<Duration>,
    alignment: u64,
    prealloc: Duration,
    flushes: FlushCounter,
    device_flushes: Option<u64>,
}

/// Runs the disk workload and reports it.
pub fn run(args: &DiskArgs) -> Result<Report, BenchError> {
    let plan = Plan::new(args)?;
    let dir = &args.dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    let device = BlockDevice::for_path(dir);
    let io = runtime::io_memory_budget(1)?;
    let temp = tempfile::Builder::new()
        .prefix("shardmq-bench-disk-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| BenchError::io(format!("creating a temporary file in {}", dir.display()), e))?
        .into_temp_path();
    let path = temp.to_path_buf();
    let (exec_path, exec_plan) = (path.clone(), plan.clone());
    let outcome = runtime::run_on_executor("bench-disk", io, move || async move {
        execute(&exec_path, &exec_plan, device).await
    });
    let removed = temp
        .close()
        .map_err(|e| BenchError::io(format!("removing {}", path.display()), e));
    let outcome = outcome?;
    removed?;
    Ok(report(args, &plan, &path, io, outcome))
}

async fn execute(
    path: &Path,
    plan: &Plan,
    device: Result<BlockDevice, DeviceError>,
) -> Result<Outcome, BenchError> {
    // Read access too: glommio probes iopoll support with a read at open and logs an
    // EBADF error for write-only files.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| {
            let e = std::io::Error::from(e);
            let hint = match e.kind() {
                std::io::ErrorKind::InvalidInput => " (does this file system support O_DIRECT?)",
                _ => "",
            };
            BenchError::io(format!("opening {} with O_DIRECT{hint}", path.display()), e)
        })?;
    let alignment = file.alignment();
    if plan.block as u64 % alignment != 0 {
        return Err(BenchError::InvalidArgs(format!(
            "--block {} is not a multiple of the file's O_DIRECT alignment ({alignment} bytes)",
            plan.block
        )));
    }
    let t = Instant::now();
    file.pre_allocate(plan.total(), false)
        .await
        .map_err(|e| BenchError::io(format!("fallocate {} bytes", plan.total()), e))?;
    file.fdatasync()
        .await
        .map_err(|e| BenchError::io("fdatasync after fallocate", e))?;
    let prealloc = t.elapsed();

    let file = Rc::new(file);
    let mut flushes = FlushCounter::start(device);
    let timed = if plan.sync {
        write_sync(&file, plan).await
    } else {
        write_concurrent(&file, plan).await
    };
    let device_flushes = flushes.finish();
    if let Ok(file) = Rc::try_unwrap(file) {
        file.close()
            .await
            .map_err(|e| BenchError::io(format!("closing {}", path.display()), e))?;
    }
    let (elapsed, latencies, final_fdatasync) = timed?;
    Ok(Outcome {
        elapsed,
        latencies,
        final_fdatasync,
        alignment,
        prealloc,
        flushes,
        device_flushes,
    })
}

type Timed = (Duration, Histogram<u64>, Option<Duration>);

/// QD1: write, fdatasync, next.
async fn write_sync(file: &DmaFile, plan: &Plan) -> Result<Timed, BenchError> {
    let buf = Rc::new(filled_buffer(file, plan.block, 1));
    let mut hist = latency_histogram();
    let start = Instant::now();
    for i in 0..plan.blocks {
        let pos = i * plan.block as u64;
        let t = Instant::now();
        write_block(file, &buf, pos).await?;
        file.fdatasync()
            .await
            .map_err(|e| BenchError::io(format!("fdatasync after the write at {pos}"), e))?;
        record_latency(&mut hist, t.elapsed());
    }
    Ok((start.elapsed(), hist, None))
}

/// State the workers share (single thread: `Cell`/`RefCell`, never borrowed across awaits).
struct Shared {
    next_block: Cell<u64>,
    failed: Cell<bool>,
    latencies: RefCell<Histogram<u64>>,
}

/// `plan.inflight` workers, each writing the next unwritten block; then one fdatasync.
async fn write_concurrent(file: &Rc<DmaFile>, plan: &Plan) -> Result<Timed, BenchError> {
    let shared = Rc::new(Shared {
        next_block: Cell::new(0),
        failed: Cell::new(false),
        latencies: RefCell::new(latency_histogram()),
    });
    let buffers: Vec<_> = (0..plan.inflight)
        .map(|w| Rc::new(filled_buffer(file, plan.block, w as u64 + 1)))
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = buffers
        .into_iter()
        .map(|buf| glommio::spawn_local(worker(file.clone(), buf, shared.clone(), plan.clone())))
        .collect();
    let mut first_error = None;
    for task in tasks {
        if let Err(e) = task.await {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let t = Instant::now();
    file.fdatasync()
        .await
        .map_err(|e| BenchError::io("final fdatasync", e))?;
    let final_fdatasync = t.elapsed();
    let elapsed = start.elapsed();
    let latencies = shared.latencies.replace(latency_histogram());
    Ok((elapsed, latencies, Some(final_fdatasync)))
}

async fn worker(
    file: Rc<DmaFile>,
    buf: Rc<DmaBuffer>,
    shared: Rc<Shared>,
    plan: Plan,
) -> Result<(), BenchError> {
    loop {
        let i = shared.next_block.get();
        if i >= plan.blocks || shared.failed.get() {
            return Ok(());
        }
        shared.next_block.set(i + 1);
        let t = Instant::now();
        if let Err(e) = write_block(&file, &buf, i * plan.block as u64).await {
            shared.failed.set(true);
            return Err(e);
        }
        record_latency(&mut shared.latencies.borrow_mut(), t.elapsed());
    }
}

async fn write_block(file: &DmaFile, buf: &Rc<DmaBuffer>, pos: u64) -> Result<(), BenchError> {
    let written = file
        .write_rc_at(buf.clone(), pos)
        .await
        .map_err(|e| BenchError::io(format!("write of {} bytes at {pos}", buf.len()), e))?;
    if written != buf.len() {
        return Err(BenchError::ShortWrite {
            pos,
            written,
            expected: buf.len(),
        });
    }
    Ok(())
}

/// A DMA buffer filled with pseudo-random bytes (no zero pages for anything to elide).
fn filled_buffer(file: &DmaFile, len: usize, seed: u64) -> DmaBuffer {
    let mut buf = file.alloc_dma_buffer(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.as_bytes_mut().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    buf
}

fn report(args: &DiskArgs, plan: &Plan, path: &Path, io: IoMemory, out: Outcome) -> Report {
    let mode = if plan.sync { "disk-sync" } else { "disk" };
    let mut r = Report::new(mode, plan.blocks, plan.total(), out.elapsed, &out.latencies);
    r.device_flushes = out.device_flushes;
    r.param("dir", args.dir.display().to_string())
        .param("file", format!("{} (removed)", path.display()))
        .param("block", plan.block as u64)
        .param("inflight", plan.inflight as u64)
        .param("sync", plan.sync)
        .param("alignment", out.alignment)
        .param(
            "prealloc",
            format!(
                "fallocate of the whole file ({}) up front, then fdatasync; untimed",
                format_bytes(plan.total())
            ),
        )
        .param("prealloc_us", out.prealloc.as_micros() as u64)
        .param("fdatasyncs", if plan.sync { plan.blocks } else { 1 });
    if plan.sync {
        r.param("latency", "write + fdatasync, QD1")
            .param("timed", "all writes and their fdatasyncs");
    } else {
        r.param("latency", "one write, submission to completion")
            .param(
                "timed",
                "first write submitted .. final fdatasync completed",
            );
    }
    if let Some(d) = out.final_fdatasync {
        r.param("final_fdatasync_us", d.as_micros() as u64);
    }
    r.param("io_memory", io.per_executor as u64)
        .param("memlock_soft_limit", io.memlock_soft_limit);
    if let Some(dev) = out.flushes.device() {
        r.param("device", dev.name.clone());
        if let Some(part) = &dev.partition {
            r.param("partition", part.clone());
        }
        r.param(
            "device_flushes_note",
            "device-wide count, other processes included",
        );
    }
    if out.device_flushes.is_none() {
        let why = out
            .flushes
            .unavailable()
            .unwrap_or("flush counter unreadable");
        r.param("device_flushes_unavailable", why.to_string());
    }
    r
}
