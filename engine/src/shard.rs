//! One shard: the state its executor owns (CommitLog writer, flush state, waiting puts), the
//! put and read paths, and shutdown. Only the shard's own executor touches this state; other
//! threads go through [`Request`]s and read the published [`ShardShared`] atomics.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use glommio::io::DmaBuffer;

use crate::commitlog::writer::WritePlanner;
use crate::config::{FlushMode, StoreConfig, BLOCK_BYTES};
use crate::error::{PutError, ReadError, RecoveryError};
use crate::io::SegmentFile;
use crate::record::{self, decode, encoded_len, Entry, MessageInput, StoreStamp, StoredMessage};
use crate::recovery::{recover, RecoverParams, RecoveryReport};
use crate::store::{PutResult, PutStatus};
use crate::waiters::{AckQueue, LocalEvent, Reply};

/// What other threads may read about a shard without asking it.
#[derive(Debug, Default)]
pub struct ShardShared {
    /// Bytes below this are on the device (written) and never change: readable by anyone.
    pub written: AtomicU64,
    /// Bytes below this were covered by a completed fdatasync.
    pub flushed: AtomicU64,
    pub failed: AtomicBool,
}

pub struct Shard {
    pub(crate) id: usize,
    pub(crate) config: Arc<StoreConfig>,
    pub(crate) dir: PathBuf,
    store_host: SocketAddr,
    pub(crate) segments: RefCell<BTreeMap<u64, Rc<SegmentFile>>>,
    pub(crate) creating: RefCell<HashSet<u64>>,
    pub(crate) segment_ready: LocalEvent,
    pub(crate) planner: RefCell<WritePlanner<DmaBuffer>>,
    flushed: Cell<u64>,
    failed: RefCell<Option<String>>,
    closing: Cell<bool>,
    stopping: Cell<bool>,
    write_acks: RefCell<AckQueue>,
    flush_acks: RefCell<AckQueue>,
    pub(crate) writer_wake: LocalEvent,
    pub(crate) flush_wake: LocalEvent,
    pub(crate) space_wake: LocalEvent,
    pub(crate) shared: Arc<ShardShared>,
    /// Chunk buffers whose writes completed, for reuse.
    pool: Rc<RefCell<Vec<DmaBuffer>>>,
    /// Jobs on glommio's blocking pool still running: the executor must outlive them.
    blocking_jobs: Cell<usize>,
    blocking_done: LocalEvent,
}

impl Shard {
    /// Recovers the shard's CommitLog and starts its writer, flusher and checkpoint tasks.
    pub async fn start(
        id: usize,
        config: Arc<StoreConfig>,
        shared: Arc<ShardShared>,
    ) -> Result<(Rc<Shard>, RecoveryReport), RecoveryError> {
        let dir = config.store_path.join("commitlog").join(id.to_string());
        let meta_path = config.store_path.join(crate::meta::META_FILE);
        crate::runtime::settle_iopoll_probe(&meta_path)
            .await
            .map_err(|source| RecoveryError::Io {
                what: "cannot open",
                path: meta_path.clone(),
                source,
            })?;
        let recovered = recover(RecoverParams {
            shard: id,
            dir: &dir,
            segment_bytes: config.segment_size_bytes,
            record_max: config.message_size_max_bytes as u64,
            plan: config.fault_plan.clone(),
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
                path: dir,
                reason: format!(
                    "device alignment {} does not divide {BLOCK_BYTES}",
                    any_file.alignment()
                ),
            });
        }
        // Chunk-sized buffers are recycled: a fresh large allocation is a fresh mmap whose
        // pages all fault in again, which cost more CPU than the copy into them.
        let pool: Rc<RefCell<Vec<DmaBuffer>>> = Rc::default();
        let chunk_bytes = config.write_chunk_bytes;
        let free = pool.clone();
        let alloc = Box::new(move |n| {
            let reused = if n == chunk_bytes {
                free.borrow_mut().pop()
            } else {
                None
            };
            let mut buf = reused.unwrap_or_else(|| any_file.alloc_dma_buffer(n));
            debug_assert_eq!(buf.as_mut_ptr() as usize % BLOCK_BYTES as usize, 0);
            buf
        });
        let end = recovered.end;
        let planner = WritePlanner::new(
            end,
            &recovered.tail,
            BLOCK_BYTES as usize,
            config.segment_size_bytes,
            config.write_chunk_bytes,
            alloc,
        );
        shared.written.store(end, Ordering::Release);
        shared.flushed.store(end, Ordering::Release);
        let shard = Rc::new(Shard {
            id,
            store_host: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            segments: RefCell::new(recovered.segments),
            creating: RefCell::new(HashSet::new()),
            segment_ready: LocalEvent::default(),
            planner: RefCell::new(planner),
            flushed: Cell::new(end),
            failed: RefCell::new(None),
            closing: Cell::new(false),
            stopping: Cell::new(false),
            write_acks: RefCell::new(AckQueue::default()),
            flush_acks: RefCell::new(AckQueue::default()),
            writer_wake: LocalEvent::default(),
            flush_wake: LocalEvent::default(),
            space_wake: LocalEvent::default(),
            shared,
            config,
            blocking_jobs: Cell::new(0),
            blocking_done: LocalEvent::default(),
            pool,
        });
        // Recovery made everything up to `end` durable: start the next scan there.
        shard
            .write_checkpoint(end)
            .await
            .map_err(|source| RecoveryError::Io {
                what: "cannot write checkpoint in",
                path: shard.dir.clone(),
                source,
            })?;
        glommio::spawn_local(crate::commitlog::writer_loop(shard.clone())).detach();
        glommio::spawn_local(crate::flush::flusher(shard.clone())).detach();
        glommio::spawn_local(crate::flush::checkpointer(shard.clone())).detach();
        if shard.config.flush_mode == FlushMode::Sync {
            glommio::spawn_local(crate::flush::flush_timeouts(shard.clone())).detach();
        }
        Ok((shard, recovered.report))
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn written(&self) -> u64 {
        self.planner.borrow().written()
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.get()
    }

    /// Failed or stopping: background tasks should exit.
    pub fn stopped(&self) -> bool {
        self.stopping.get() || self.failed.borrow().is_some()
    }

    fn acks_on_flush(&self) -> bool {
        self.config.flush_mode == FlushMode::Sync && !self.config.unsafe_ack_before_flush
    }

    fn check_open(&self) -> Result<(), PutError> {
        if let Some(reason) = self.failed.borrow().as_ref() {
            return Err(PutError::ShardFailed {
                shard: self.id,
                reason: reason.clone(),
            });
        }
        if self.closing.get() || self.stopping.get() {
            return Err(PutError::ShuttingDown);
        }
        Ok(())
    }

    /// Validates a batch and returns its encoded sizes.
    pub fn sizes(&self, msgs: &[MessageInput]) -> Result<Vec<usize>, PutError> {
        let max = self.config.message_size_max_bytes;
        msgs.iter()
            .map(|m| {
                let len = encoded_len(m)?;
                if len > max {
                    return Err(PutError::MessageTooLarge { size: len, max });
                }
                Ok(len)
            })
            .collect()
    }

    /// Whether `bytes` more fit the write buffer now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.planner.borrow().pending_bytes() + bytes as u64
            <= self.config.write_buffer_max_bytes as u64
    }

    /// Appends a batch contiguously; returns where each record went and the batch's end offset
    /// (pass it to [`Shard::await_ack`]). Nothing is appended if any message is invalid or the
    /// write buffer is full.
    pub fn put(&self, msgs: &[MessageInput]) -> Result<(Vec<PutResult>, u64), PutError> {
        self.check_open()?;
        let sizes = self.sizes(msgs)?;
        if !self.has_room(sizes.iter().sum()) {
            return Err(PutError::Busy { shard: self.id });
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut results = Vec::with_capacity(msgs.len());
        let mut end = 0;
        {
            let mut planner = self.planner.borrow_mut();
            for (msg, &len) in msgs.iter().zip(&sizes) {
                let offset = planner.append(len, |offset, out| {
                    let stamp = StoreStamp {
                        physical_offset: offset,
                        store_timestamp_ms: now_ms,
                        store_host: self.store_host,
                    };
                    record::encode(msg, &stamp, out);
                });
                end = offset + len as u64;
                results.push(PutResult {
                    status: PutStatus::PutOk,
                    shard: self.id,
                    offset,
                    size: len as u32,
                    store_timestamp_ms: now_ms,
                });
            }
        }
        self.writer_wake.notify();
        Ok((results, end))
    }

    /// Sends `reply` once the log up to `end` is acknowledged by the flush mode's rule.
    pub fn await_ack(&self, end: u64, reply: Reply) {
        if self.acks_on_flush() {
            let deadline = Instant::now() + self.config.sync_flush_timeout();
            self.flush_acks
                .borrow_mut()
                .push(end, Some(deadline), reply);
        } else {
            self.write_acks.borrow_mut().push(end, None, reply);
        }
    }

    /// Takes back a buffer whose write completed, if it is a whole chunk and the pool has room.
    pub fn recycle(&self, buf: DmaBuffer) {
        let mut pool = self.pool.borrow_mut();
        if buf.len() == self.config.write_chunk_bytes
            && pool.len() < self.config.writes_in_flight_max + 2
        {
            pool.push(buf);
        }
    }

    /// A write completed and the written prefix is now `written`.
    pub fn on_written(&self, written: u64) {
        self.shared.written.store(written, Ordering::Release);
        let done = self.write_acks.borrow_mut().take_upto(written);
        done.into_iter()
            .for_each(|r| r.finish(Ok(PutStatus::PutOk)));
        self.flush_wake.notify();
        self.space_wake.notify();
        self.writer_wake.notify();
    }

    /// One fdatasync covering everything written so far; acknowledges what it covered.
    pub async fn flush_once(&self) -> Result<(), ()> {
        let target = self.written();
        let from = self.flushed.get();
        if target <= from {
            return Ok(());
        }
        let seg = self.config.segment_size_bytes;
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
        }
        let done = self.flush_acks.borrow_mut().take_upto(self.flushed.get());
        done.into_iter()
            .for_each(|r| r.finish(Ok(PutStatus::PutOk)));
        Ok(())
    }

    pub fn expire_flush_waiters(&self, now: Instant) {
        let expired = self.flush_acks.borrow_mut().take_expired(now);
        if !expired.is_empty() {
            tracing::warn!(
                shard = self.id,
                puts = expired.len(),
                "flush timed out: FLUSH_DISK_TIMEOUT"
            );
        }
        expired
            .into_iter()
            .for_each(|r| r.finish(Ok(PutStatus::FlushDiskTimeout)));
    }

    /// Stops taking writes after an I/O error. Nothing still waiting is acknowledged, and
    /// nothing is retried: the bytes' fate on the device is unknown.
    pub fn fail(&self, reason: String) {
        if self.failed.borrow().is_some() {
            return;
        }
        tracing::error!(shard = self.id, %reason, "shard stopped taking writes");
        *self.failed.borrow_mut() = Some(reason.clone());
        self.shared.failed.store(true, Ordering::Release);
        let err = PutError::ShardFailed {
            shard: self.id,
            reason,
        };
        let mut waiting = self.write_acks.borrow_mut().take_all();
        waiting.extend(self.flush_acks.borrow_mut().take_all());
        waiting.into_iter().for_each(|r| r.finish(Err(err.clone())));
        self.wake_all();
    }

    fn wake_all(&self) {
        self.writer_wake.notify();
        self.flush_wake.notify();
        self.space_wake.notify();
        self.segment_ready.notify();
    }

    pub async fn write_checkpoint(&self, flushed: u64) -> std::io::Result<()> {
        let dir = self.dir.clone();
        self.run_blocking(move || crate::commitlog::segment::write_checkpoint(&dir, flushed))
            .await
    }

    /// Runs a blocking file-system call (fsync of a small file or a directory) on glommio's
    /// blocking pool, so the shard keeps serving meanwhile.
    pub async fn run_blocking<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        self.blocking_jobs.set(self.blocking_jobs.get() + 1);
        let result = glommio::executor().spawn_blocking(job).await;
        self.blocking_jobs.set(self.blocking_jobs.get() - 1);
        self.blocking_done.notify();
        result
    }

    /// Waits for jobs on the blocking pool: glommio's pool thread panics if the executor that
    /// asked is gone when the job finishes.
    pub async fn quiesce(&self) {
        loop {
            let generation = self.blocking_done.generation();
            if self.blocking_jobs.get() == 0 {
                return;
            }
            self.blocking_done.wait_past(generation).await;
        }
    }

    /// Reads the record at `offset` back from the device, checking its CRC.
    pub async fn read(&self, offset: u64) -> Result<StoredMessage, ReadError> {
        let written = self.written();
        let out_of_range = ReadError::OffsetOutOfRange {
            shard: self.id,
            offset,
            readable: written,
        };
        if offset >= written {
            return Err(out_of_range);
        }
        let found = self
            .segments
            .borrow()
            .range(..=offset)
            .next_back()
            .map(|(b, f)| (*b, f.clone()));
        let Some((base, file)) = found else {
            return Err(out_of_range);
        };
        let pos = offset - base;
        let left = self.config.segment_size_bytes - pos;
        let io = |e: std::io::Error| ReadError::Io {
            shard: self.id,
            offset,
            reason: e.to_string(),
        };
        let bad = |reason| ReadError::BadRecord {
            shard: self.id,
            offset,
            reason,
        };
        let head = file
            .read_bytes(pos, left.min(4096) as usize)
            .await
            .map_err(io)?;
        let size =
            record::peek_size(&head).ok_or(bad(record::DecodeError::Malformed("short read")))?;
        if size as u64 > left || size as usize > self.config.message_size_max_bytes {
            return Err(bad(record::DecodeError::BadSize(size)));
        }
        let bytes = if size as usize <= head.len() {
            head.slice(..size as usize)
        } else {
            file.read_bytes(pos, size as usize).await.map_err(io)?
        };
        match decode(&bytes, offset, left) {
            Ok(Entry::Message(m)) => Ok(m),
            Ok(Entry::Blank { .. }) => Err(bad(record::DecodeError::Malformed("blank marker"))),
            Err(e) => Err(bad(e)),
        }
    }

    /// Graceful stop: write out everything appended, flush it, checkpoint, and stop tasks.
    pub async fn shutdown(&self) -> Result<(), String> {
        self.closing.set(true);
        self.writer_wake.notify();
        loop {
            let generation = self.space_wake.generation();
            if let Some(reason) = self.failed.borrow().as_ref() {
                return Err(reason.clone());
            }
            let drained = {
                let planner = self.planner.borrow();
                planner.written() == planner.append_offset()
            };
            if drained {
                break;
            }
            self.space_wake.wait_past(generation).await;
        }
        self.flush_once()
            .await
            .map_err(|_| self.failed.borrow().clone().unwrap_or_default())?;
        self.write_checkpoint(self.flushed())
            .await
            .map_err(|e| e.to_string())?;
        self.stop();
        Ok(())
    }

    /// Stops background tasks without flushing (a crash, as far as the data is concerned).
    pub fn stop(&self) {
        self.stopping.set(true);
        self.wake_all();
    }
}
