//! A segmented append-only log on O_DIRECT io_uring: the machinery shared by a shard's
//! CommitLog and its ConsumeQueue log. It owns the segment files, the write planner, the
//! writer task, flushing (group commit or RocketMQ's interval rule), the checkpoint and
//! recovery. What the records mean is the caller's business: recovery takes the format's
//! step function, appends take an encoder.
//!
//! Progress (`written`, `flushed`, failure) is announced on [`Log::progress`]; callers keep
//! their own queues of what waits for which offset.

pub mod flush;
pub mod recovery;
pub mod segment;
pub mod tail;
pub mod writer;
pub mod zerofill;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::io::DmaBuffer;

use crate::config::BLOCK_BYTES;
use crate::error::RecoveryError;
use crate::io::{FaultPlan, SegmentFile};
use crate::waiters::LocalEvent;
use recovery::{recover, RecoverParams, RecoveryReport, SealedPolicy, Step, StepFn};
use writer::WritePlanner;

/// When a log fdatasyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// As soon as something written is not yet flushed, one fdatasync at a time.
    Group,
    /// RocketMQ's rule: every `interval`, if `least_pages` 4 KiB pages are pending, or anything
    /// pending once `thorough` passed.
    Interval {
        interval: Duration,
        least_pages: u32,
        thorough: Duration,
    },
}

/// The writer waits for space: the segment starting at `base` could not be created because
/// the disk (or the user's quota) is full. Nothing written is lost; appends wait, and the
/// shard refuses new puts until the creation succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSpace {
    /// The log's name (`commitlog`, `consumequeue`).
    pub log: &'static str,
    pub base: u64,
    /// `StorageFull` (ENOSPC) or `QuotaExceeded` (EDQUOT).
    pub kind: std::io::ErrorKind,
    pub reason: String,
}

/// How often the writer checks for space again while it waits for it.
const SPACE_RETRY: Duration = Duration::from_millis(250);

/// Everything a log needs to know about itself.
#[derive(Clone)]
pub struct LogSpec {
    /// `commitlog` or `consumequeue`: for messages.
    pub name: &'static str,
    pub shard: usize,
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub record_max: u64,
    pub chunk_bytes: usize,
    pub writes_in_flight_max: usize,
    pub buffer_max_bytes: usize,
    pub flush: FlushPolicy,
    pub checkpoint_interval: Duration,
    pub plan: Option<Arc<FaultPlan>>,
    /// Zero-fill this far ahead of the append offset (see `zerofill`); `None`: off.
    pub zero_ahead: Option<zerofill::ZeroAhead>,
    pub step: StepFn,
    pub sealed: SealedPolicy,
}

/// What other threads may read about a log without asking its shard.
#[derive(Debug, Default)]
pub struct LogShared {
    /// Bytes below this are on the device and never change: readable by anyone.
    pub written: AtomicU64,
    /// Bytes below this were covered by a completed fdatasync.
    pub flushed: AtomicU64,
    pub failed: AtomicBool,
    /// The log's first offset still on disk (retention deletes whole segments below it).
    pub min: AtomicU64,
    /// Recently written chunks, for readers on any shard (CommitLogs only).
    pub tail: tail::TailCache,
}

impl LogShared {
    pub fn with_tail_cache(cap_bytes: usize, linger_ms: u64) -> Self {
        LogShared {
            tail: tail::TailCache::new(cap_bytes, linger_ms),
            ..LogShared::default()
        }
    }
}

pub struct Log {
    pub(crate) spec: LogSpec,
    pub(crate) segments: RefCell<BTreeMap<u64, Rc<SegmentFile>>>,
    creating: RefCell<HashSet<u64>>,
    segment_ready: LocalEvent,
    pub(crate) planner: RefCell<WritePlanner<DmaBuffer>>,
    flushed: Cell<u64>,
    failed: RefCell<Option<String>>,
    stopping: Cell<bool>,
    /// Set while the writer waits for space for a new segment.
    no_space: RefCell<Option<NoSpace>>,
    /// Shutdown began: if the writer waits for space, shutdown gives up on what waits for
    /// it, so the writer must never write that any more.
    closing: Cell<bool>,
    pub(crate) writer_wake: LocalEvent,
    /// Notified when `written` or `flushed` advance, and on failure or stop.
    pub progress: LocalEvent,
    pub shared: Arc<LogShared>,
    /// Chunk buffers whose writes completed, for reuse.
    pool: Rc<RefCell<Vec<DmaBuffer>>>,
    /// Jobs on glommio's blocking pool still running: the executor must outlive them.
    blocking_jobs: Cell<usize>,
    blocking_done: LocalEvent,
    /// The log's background tasks; dropping them (on stop) cancels them, which releases the
    /// references they hold to the log (and its open files).
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    /// Write tasks submitted and not finished (they are not canceled: I/O is in flight).
    writes_running: Cell<usize>,
    /// The zero-filler's write in flight, which the writer's writes must not overlap.
    zero: zerofill::ZeroState,
}

impl Log {
    /// Recovers the log in `spec.dir` and starts its writer, flusher and checkpoint tasks.
    pub async fn open(
        spec: LogSpec,
        shared: Arc<LogShared>,
    ) -> Result<(Rc<Log>, RecoveryReport), RecoveryError> {
        let recovered = recover(RecoverParams {
            step: spec.step.clone(),
            sealed: spec.sealed,
            shard: spec.shard,
            dir: &spec.dir,
            segment_bytes: spec.segment_bytes,
            record_max: spec.record_max,
            plan: spec.plan.clone(),
        })
        .await?;
        let any_file = recovered
            .segments
            .values()
            .next()
            .cloned()
            .expect("recovery opens one");
        if BLOCK_BYTES % any_file.alignment() != 0 {
            return Err(RecoveryError::Checkpoint {
                path: spec.dir.clone(),
                reason: format!(
                    "device alignment {} does not divide {BLOCK_BYTES}",
                    any_file.alignment()
                ),
            });
        }
        // Chunk-sized buffers are recycled: a fresh large allocation is a fresh mmap whose
        // pages all fault in again, which cost more CPU than the copy into them.
        let pool: Rc<RefCell<Vec<DmaBuffer>>> = Rc::default();
        let chunk_bytes = spec.chunk_bytes;
        let free = pool.clone();
        let alloc = Box::new(move |n| {
            let reused = if n == chunk_bytes {
                free.borrow_mut().pop()
            } else {
                None
            };
            let mut buf = reused.unwrap_or_else(|| glommio::allocate_dma_buffer(n));
            debug_assert_eq!(buf.as_mut_ptr() as usize % BLOCK_BYTES as usize, 0);
            buf
        });
        let end = recovered.end;
        let planner = WritePlanner::new(
            end,
            &recovered.tail,
            BLOCK_BYTES as usize,
            spec.segment_bytes,
            spec.chunk_bytes,
            alloc,
        );
        shared.written.store(end, Ordering::Release);
        shared.flushed.store(end, Ordering::Release);
        let first = recovered.segments.keys().next().copied().unwrap_or(0);
        shared.min.store(first, Ordering::Release);
        let log = Rc::new(Log {
            segments: RefCell::new(recovered.segments),
            creating: RefCell::new(HashSet::new()),
            segment_ready: LocalEvent::default(),
            planner: RefCell::new(planner),
            flushed: Cell::new(end),
            failed: RefCell::new(None),
            stopping: Cell::new(false),
            no_space: RefCell::new(None),
            closing: Cell::new(false),
            writer_wake: LocalEvent::default(),
            progress: LocalEvent::default(),
            shared,
            pool,
            blocking_jobs: Cell::new(0),
            blocking_done: LocalEvent::default(),
            tasks: RefCell::default(),
            writes_running: Cell::new(0),
            zero: zerofill::ZeroState::default(),
            spec,
        });
        // Recovery made everything up to `end` durable: start the next scan there.
        log.write_checkpoint(end)
            .await
            .map_err(|source| RecoveryError::Io {
                what: "cannot write checkpoint in",
                path: log.spec.dir.clone(),
                source,
            })?;
        log.spawn(writer_loop(log.clone()));
        log.spawn(flush::flusher(log.clone()));
        log.spawn(flush::checkpointer(log.clone()));
        if let Some(ahead) = log.spec.zero_ahead {
            log.spawn(zerofill::filler(log.clone(), ahead));
        }
        Ok((log, recovered.report))
    }

    pub fn shard(&self) -> usize {
        self.spec.shard
    }

    pub fn written(&self) -> u64 {
        self.planner.borrow().written()
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.get()
    }

    /// The base of the segment appends go to (never deleted by retention).
    pub fn active_segment(&self) -> u64 {
        let planner = self.planner.borrow();
        planner.segment_base(planner.append_offset())
    }

    pub fn append_offset(&self) -> u64 {
        self.planner.borrow().append_offset()
    }

    /// Failed or stopping: background tasks should exit.
    pub fn stopped(&self) -> bool {
        self.stopping.get() || self.failed.borrow().is_some()
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Why the writer waits for space, while it does.
    pub fn no_space(&self) -> Option<NoSpace> {
        self.no_space.borrow().clone()
    }

    pub fn waiting_for_space(&self) -> bool {
        self.no_space.borrow().is_some()
    }

    /// Bytes appended and not yet written.
    pub fn unwritten_bytes(&self) -> u64 {
        self.planner.borrow().pending_bytes()
    }

    /// Whether `bytes` more fit the write buffer now.
    ///
    /// Under group commit the bytes not yet flushed count too: everything appended and not
    /// durable is held (with its waiting puts) until a flush covers it, so a stalled device
    /// pushes back instead of growing memory. Anything fits an empty buffer, so a caller
    /// never waits forever for room it can never get.
    pub fn has_room(&self, bytes: usize) -> bool {
        let planner = self.planner.borrow();
        let held = match self.spec.flush {
            FlushPolicy::Group => planner.append_offset() - self.flushed.get(),
            FlushPolicy::Interval { .. } => planner.pending_bytes(),
        };
        held == 0 || held + bytes as u64 <= self.spec.buffer_max_bytes as u64
    }

    /// Appends a record of `len` bytes that `encode` fills given its offset; returns the
    /// offset. The caller checked the size and the room.
    pub fn append(&self, len: usize, encode: impl FnOnce(u64, &mut [u8])) -> u64 {
        debug_assert!(len as u64 <= self.spec.record_max);
        self.planner.borrow_mut().append(len, encode)
    }

    /// Tells the writer that appends are waiting.
    pub fn kick(&self) {
        self.writer_wake.notify();
    }

    /// Takes back a buffer whose write completed, if it is a whole chunk and the pool has room.
    fn recycle(&self, buf: DmaBuffer) {
        let mut pool = self.pool.borrow_mut();
        if buf.len() == self.spec.chunk_bytes && pool.len() < self.spec.writes_in_flight_max + 2 {
            pool.push(buf);
        }
    }

    fn on_written(&self, written: u64) {
        self.shared.written.store(written, Ordering::Release);
        self.progress.notify();
        self.writer_wake.notify();
    }

    /// One fdatasync covering everything written so far.
    pub async fn flush_once(&self) -> Result<(), ()> {
        let target = self.written();
        let from = self.flushed.get();
        if target <= from {
            return Ok(());
        }
        let seg = self.spec.segment_bytes;
        let files: Vec<Rc<SegmentFile>> = self
            .segments
            .borrow()
            .range(from - from % seg..=(target - 1) - (target - 1) % seg)
            .map(|(_, f)| f.clone())
            .collect();
        for file in files {
            if let Err(e) = file.fdatasync().await {
                self.fail(format!(
                    "fdatasync of {} failed: {e}",
                    file.path().display()
                ));
                return Err(());
            }
        }
        if self.failed.borrow().is_some() {
            return Err(());
        }
        if target > self.flushed.get() {
            self.flushed.set(target);
            self.shared.flushed.store(target, Ordering::Release);
            self.progress.notify();
        }
        Ok(())
    }

    /// Stops taking writes after an I/O error; waiters learn it through `progress`. Nothing
    /// is retried: the bytes' fate on the device is unknown.
    pub fn fail(&self, reason: String) {
        if self.failed.borrow().is_some() {
            return;
        }
        tracing::error!(shard = self.spec.shard, log = self.spec.name, %reason, "log stopped taking writes");
        *self.failed.borrow_mut() = Some(reason);
        self.shared.failed.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Runs `task` on this executor until it ends or the log stops.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        // One handle per task for the log's life: three, plus one per segment roll.
        let handle = glommio::spawn_local(task).detach();
        self.tasks.borrow_mut().push(handle);
    }

    /// `spawn` into a task queue that asks the scheduler to preempt other work within
    /// `latency` whenever this task has something to do.
    pub fn spawn_urgent(
        &self,
        name: &str,
        latency: Duration,
        task: impl std::future::Future<Output = ()> + 'static,
    ) {
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::Matters(latency),
            name,
        );
        // Held outside the spawned wrapper, so that the task still runs (in the default
        // queue) should glommio refuse the new queue.
        let slot = Rc::new(RefCell::new(Some(task)));
        let wrapper = {
            let slot = slot.clone();
            async move {
                let task = slot.borrow_mut().take();
                if let Some(task) = task {
                    task.await;
                }
            }
        };
        let handle = match glommio::spawn_local_into(wrapper, queue) {
            Ok(t) => t.detach(),
            Err(e) => {
                tracing::warn!(%e, name, "cannot create a task queue; using the default one");
                let task = slot.borrow_mut().take();
                glommio::spawn_local(async move {
                    if let Some(task) = task {
                        task.await;
                    }
                })
                .detach()
            }
        };
        self.tasks.borrow_mut().push(handle);
    }

    /// Stops background tasks without flushing (a crash, as far as the data is concerned).
    pub fn stop(&self) {
        self.stopping.set(true);
        self.wake_all();
        for task in self.tasks.take() {
            task.cancel();
        }
    }

    fn wake_all(&self) {
        self.writer_wake.notify();
        self.progress.notify();
        self.segment_ready.notify();
    }

    /// Waits until `ready(self)` holds or the log stops (failed or stopping), re-checking on
    /// every progress announcement.
    pub async fn wait_until(&self, ready: impl Fn(&Log) -> bool) {
        loop {
            let generation = self.progress.generation();
            if self.stopped() || ready(self) {
                return;
            }
            self.progress.wait_past(generation).await;
        }
    }

    /// Waits until `bytes` more fit the write buffer (see `has_room`), the log stops, or it
    /// waits for space: room may then never come, and the caller's put is refused instead
    /// (what was accepted before bounds what is appended meanwhile).
    pub async fn wait_for_room(&self, bytes: usize) {
        self.wait_until(|log| log.has_room(bytes) || log.waiting_for_space())
            .await
    }

    /// Waits until everything below `target` is written; false if the log stopped or waits
    /// for space first (the caller cannot count on those bytes now).
    pub async fn wait_written(&self, target: u64) -> bool {
        self.wait_until(|log| log.written() >= target || log.waiting_for_space())
            .await;
        self.written() >= target
    }

    /// Waits until everything appended is written; an error if the log failed, stopped, or
    /// waits for space.
    pub async fn drain(&self) -> Result<(), String> {
        if self.wait_written(self.append_offset()).await {
            return Ok(());
        }
        Err(self.why_not_written())
    }

    /// Shutdown's drain: waits until everything appended is written, but not for space that
    /// may never come. If the writer waits for space, it gives up on what is unwritten (it
    /// will never write it: the caller answers the puts waiting for it) and says why.
    pub async fn drain_for_shutdown(&self) -> Result<Option<NoSpace>, String> {
        self.closing.set(true);
        self.kick();
        if self.wait_written(self.append_offset()).await {
            return Ok(None);
        }
        match self.no_space() {
            Some(no_space) if self.failure().is_none() => Ok(Some(no_space)),
            _ => Err(self.why_not_written()),
        }
    }

    fn why_not_written(&self) -> String {
        if let Some(reason) = self.failure() {
            return reason;
        }
        match self.no_space() {
            Some(n) => format!(
                "{} of shard {} waits for space for a new segment: {}",
                n.log,
                self.shard(),
                n.reason
            ),
            None => format!(
                "{} of shard {} stopped before it drained",
                self.spec.name,
                self.shard()
            ),
        }
    }

    pub async fn write_checkpoint(self: &Rc<Self>, flushed: u64) -> std::io::Result<()> {
        let dir = self.spec.dir.clone();
        self.run_blocking(move || segment::write_checkpoint(&dir, flushed))
            .await
    }

    /// Runs a blocking file-system call (fsync of a small file or a directory) on glommio's
    /// blocking pool, so the shard keeps serving meanwhile.
    pub async fn run_blocking(
        self: &Rc<Self>,
        job: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The job runs in its own detached task, so that canceling the caller (on stop) still
        // lets `quiesce` see it finish: glommio's pool thread panics if the executor that asked
        // is gone when the job completes.
        self.blocking_jobs.set(self.blocking_jobs.get() + 1);
        let (tx, rx) = flume::bounded(1);
        let log = self.clone();
        glommio::spawn_local(async move {
            let result = glommio::executor().spawn_blocking(job).await;
            log.blocking_jobs.set(log.blocking_jobs.get() - 1);
            log.blocking_done.notify();
            let _ = tx.send(result);
        })
        .detach();
        rx.recv_async().await.unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "blocking job dropped with its executor",
            ))
        })
    }

    /// Waits for jobs on the blocking pool (glommio's pool thread panics if the executor that
    /// asked is gone when the job finishes) and for writes in flight (their tasks hold the
    /// log's files).
    pub async fn quiesce(&self) {
        loop {
            let generation = self.blocking_done.generation();
            if self.blocking_jobs.get() == 0 {
                break;
            }
            self.blocking_done.wait_past(generation).await;
        }
        loop {
            let generation = self.writer_wake.generation();
            if self.writes_running.get() == 0 {
                break;
            }
            self.writer_wake.wait_past(generation).await;
        }
        // Canceled tasks drop their futures (and references) when next run.
        futures_lite::future::yield_now().await;
    }

    /// Closes the segment files (after `stop` and `quiesce`). glommio closes a dropped file
    /// asynchronously on its next I/O cycle, which never comes once the executor ends: the
    /// descriptors, and the space of deleted segments, would leak.
    pub async fn close_files(&self) {
        let files = std::mem::take(&mut *self.segments.borrow_mut());
        SegmentFile::close_all(files.into_values()).await;
    }

    /// Reads `len` bytes at `offset`, which must lie below `written`, within one segment.
    /// Deletes the given sealed segments (oldest first, all below the one appends go to) and
    /// raises the published `min` past them. Readers on other shards may still hold the
    /// files open; the space is freed when they let go.
    pub async fn retire(self: &Rc<Self>, bases: &[u64]) -> std::io::Result<()> {
        let active = self.planner.borrow().segment_base(self.append_offset());
        for &base in bases {
            if base >= active {
                break;
            }
            let Some(file) = self.segments.borrow_mut().remove(&base) else {
                continue;
            };
            let next = self
                .segments
                .borrow()
                .range(base + 1..)
                .next()
                .map_or(active, |(&b, _)| b);
            self.shared.min.fetch_max(next, Ordering::AcqRel);
            let path = file.path().to_path_buf();
            SegmentFile::close_all(std::iter::once(file)).await;
            self.run_blocking(move || std::fs::remove_file(&path))
                .await?;
        }
        Ok(())
    }

    /// Per segment, oldest first: (base, last modification in ms since the epoch, bytes).
    /// A `stat` per segment (a handful, every cleaning pass): cheap enough to run inline.
    pub fn segment_times(&self) -> std::io::Result<Vec<(u64, i64, u64)>> {
        self.segments
            .borrow()
            .iter()
            .map(|(&base, f)| {
                let meta = std::fs::metadata(f.path())?;
                let ms = meta
                    .modified()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                Ok((base, ms, meta.len()))
            })
            .collect()
    }

    pub async fn read_bytes(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let found = self
            .segments
            .borrow()
            .range(..=offset)
            .next_back()
            .map(|(b, f)| (*b, f.clone()));
        let Some((base, file)) = found else {
            return Err(std::io::Error::other(format!(
                "no segment holds offset {offset}"
            )));
        };
        file.read_bytes(offset - base, len).await
    }
}

impl Log {
    /// Calls `f(offset, record)` for each valid record from `from` (a record boundary) up to
    /// the written end, in order, using the format's step function; stops at the first
    /// position that is not a valid record.
    pub async fn scan(&self, from: u64, f: impl FnMut(u64, &Bytes)) -> std::io::Result<()> {
        self.scan_upto(from, u64::MAX, f).await.map(|_| ())
    }

    /// `scan`, stopping at the first record boundary at least `limit` bytes past `from`:
    /// returns that position, or `None` if the scan reached the end.
    pub async fn scan_upto(
        &self,
        from: u64,
        limit: u64,
        mut f: impl FnMut(u64, &Bytes),
    ) -> std::io::Result<Option<u64>> {
        let seg = self.spec.segment_bytes;
        let end = self.written();
        let mut pos = from;
        let mut win = Bytes::new();
        let mut win_pos = pos;
        while pos < end {
            if pos - from >= limit {
                return Ok(Some(pos));
            }
            let seg_end = pos - pos % seg + seg;
            let avail = if pos >= win_pos && pos <= win_pos + win.len() as u64 {
                win.slice((pos - win_pos) as usize..)
            } else {
                Bytes::new()
            };
            match (self.spec.step)(&avail, pos, seg_end - pos, self.spec.record_max) {
                Step::Record(n) => {
                    f(pos, &avail.slice(..n as usize));
                    pos += n as u64;
                }
                Step::SegmentFull => pos = seg_end,
                Step::Stop(_) => return Ok(None),
                Step::Need(n) => {
                    let len = (SCAN_WINDOW_BYTES.max(n))
                        .min(seg_end - pos)
                        .min(end.max(pos + n) - pos);
                    let read = self.read_bytes(pos, len as usize).await?;
                    if (read.len() as u64) < n.min(seg_end - pos) {
                        return Ok(None);
                    }
                    win = read;
                    win_pos = pos;
                }
            }
        }
        Ok(None)
    }
}

/// Bytes read at once by [`Log::scan`].
const SCAN_WINDOW_BYTES: u64 = 1 << 20;

/// Submits the planner's writes as they become possible, until the log stops.
async fn writer_loop(log: Rc<Log>) {
    let first = log.written();
    let mut current = log.planner.borrow().segment_base(first);
    prepare_next(&log, current);
    let in_flight_max = log.spec.writes_in_flight_max;
    loop {
        let generation = log.writer_wake.generation();
        if log.stopped() {
            return;
        }
        let op = log.planner.borrow_mut().next_write(in_flight_max);
        let Some(op) = op else {
            log.writer_wake.wait_past(generation).await;
            continue;
        };
        if op.segment_base != current {
            // The planner hands out a new segment's first write only once every earlier
            // write has completed; flushing now makes the old segment whole and durable
            // before the new one gets a byte. Recovery relies on it.
            debug_assert_eq!(
                log.planner.borrow().in_flight(),
                1,
                "only the new segment's write"
            );
            if log.flush_once().await.is_err() {
                return;
            }
            current = op.segment_base;
            prepare_next(&log, current);
        }
        let Some(file) = segment_or_wait(&log, op.segment_base).await else {
            return;
        };
        let start = op.segment_base + op.file_pos;
        log.zero
            .wait_clear(start, start + op.buf.len() as u64)
            .await;
        log.writes_running.set(log.writes_running.get() + 1);
        glommio::spawn_local(write_one(log.clone(), file, op)).detach();
    }
}

/// Counted from spawn (in `writer_loop`) to its end, for `quiesce`.
async fn write_one(log: Rc<Log>, file: Rc<SegmentFile>, op: writer::WriteOp<DmaBuffer>) {
    write_op(&log, &file, op).await;
    log.writes_running.set(log.writes_running.get() - 1);
    log.writer_wake.notify();
}

async fn write_op(log: &Rc<Log>, file: &Rc<SegmentFile>, op: writer::WriteOp<DmaBuffer>) {
    let (id, pos, len) = (op.id, op.file_pos, op.buf.len());
    let buf = Rc::new(op.buf);
    let result = file.write_at(buf.clone(), pos).await;
    if result.is_ok() && log.shared.tail.wanted() {
        let start = op.segment_base + pos;
        let valid = op.data_end.saturating_sub(start).min(len as u64) as usize;
        log.shared.tail.publish(start, &buf.as_bytes()[..valid]);
    }
    if let Ok(buf) = Rc::try_unwrap(buf) {
        log.recycle(buf);
    }
    match result {
        Ok(_) => {
            let written = log.planner.borrow_mut().complete(id);
            log.on_written(written);
        }
        Err(e) => {
            log.fail(format!(
                "write of {len} bytes at {pos} of {} failed: {e}",
                file.path().display()
            ));
        }
    }
}

/// The segment starting at `base`, waiting for space as long as the disk is full (and the log
/// neither stops nor is shut down while waiting). `None`: the writer must end (the log
/// failed, stopped, or gave up at shutdown).
async fn segment_or_wait(log: &Rc<Log>, base: u64) -> Option<Rc<SegmentFile>> {
    loop {
        match segment_file(log, base).await {
            // Shutdown may have answered the puts waiting for this segment: write nothing.
            Ok(_) if log.waiting_for_space() && log.closing.get() => return None,
            Ok(file) => {
                log.space_back();
                return Some(file);
            }
            Err(_) if log.stopped() => return None,
            Err(e) if segment::is_out_of_space(&e) => {
                log.mark_no_space(base, &e);
                if log.closing.get() {
                    return None;
                }
                glommio::timer::sleep(SPACE_RETRY).await;
            }
            Err(e) => {
                log.fail(format!("cannot create segment {base}: {e}"));
                return None;
            }
        }
    }
}

impl Log {
    /// Creating segment `base` failed for lack of space: puts are refused from now on (the
    /// shard reads `waiting_for_space`); said once, until space is back.
    fn mark_no_space(&self, base: u64, e: &std::io::Error) {
        if self.no_space.borrow().is_none() {
            tracing::warn!(shard = self.spec.shard, log = self.spec.name, base, error = %e,
                "no space for a new segment: puts refused until space is freed; retrying");
        }
        *self.no_space.borrow_mut() = Some(NoSpace {
            log: self.spec.name,
            base,
            kind: e.kind(),
            reason: e.to_string(),
        });
        // Wakes whoever waits for room, a drain or a write: they must not wait for space.
        self.progress.notify();
    }

    fn space_back(&self) {
        if self.no_space.take().is_some() {
            tracing::warn!(
                shard = self.spec.shard,
                log = self.spec.name,
                "space for a new segment again: puts accepted again"
            );
            self.progress.notify();
        }
    }
}

/// Creates the segment after `base` in the background, so a roll rarely waits for it.
fn prepare_next(log: &Rc<Log>, base: u64) {
    let me = log.clone();
    let next = base + log.spec.segment_bytes;
    log.spawn(async move {
        if let Err(e) = segment_file(&me, next).await {
            tracing::warn!(shard = me.spec.shard, base = next, error = %e, "cannot preallocate segment");
        }
    });
}

/// The segment starting at `base`, created (preallocated, name made durable) once if missing.
/// Not attempted while the file system shows less room than a segment: a `fallocate` that
/// fails takes all the free space before it gives it back, so the disk would look full to
/// everyone meanwhile (the other log's segments, checkpoints, the disk guard's reading).
async fn segment_file(log: &Rc<Log>, base: u64) -> std::io::Result<Rc<SegmentFile>> {
    loop {
        if let Some(f) = log.segments.borrow().get(&base) {
            return Ok(f.clone());
        }
        if log.stopped() {
            return Err(std::io::Error::other("log stopped"));
        }
        if log.creating.borrow().contains(&base) {
            let generation = log.segment_ready.generation();
            log.segment_ready.wait_past(generation).await;
            continue;
        }
        segment::room_for(&log.spec.dir, log.spec.segment_bytes)?;
        log.creating.borrow_mut().insert(base);
        let plan = log.spec.plan.clone();
        let mut created =
            segment::create_segment(&log.spec.dir, base, log.spec.segment_bytes, plan).await;
        if created.is_ok() {
            let dir = log.spec.dir.clone();
            if let Err(e) = log.run_blocking(move || crate::meta::sync_dir(&dir)).await {
                created = Err(e);
            }
        }
        log.creating.borrow_mut().remove(&base);
        log.segment_ready.notify();
        let file = Rc::new(created?);
        log.segments.borrow_mut().insert(base, file.clone());
        return Ok(file);
    }
}
