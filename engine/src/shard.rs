//! One shard: the state its executor owns (its CommitLog, waiting puts), the put and read
//! paths, and shutdown. Only the shard's own executor touches this state; other threads go
//! through the store's requests and read the published [`LogShared`] atomics.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{FlushMode, StoreConfig};
use crate::error::{PutError, ReadError, RecoveryError};
use crate::log::recovery::{RecoveryReport, SealedPolicy};
use crate::log::{FlushPolicy, Log, LogShared, LogSpec};
use crate::record::{self, decode, encoded_len, Entry, MessageInput, StoreStamp, StoredMessage};
use crate::store::{PutResult, PutStatus};
use crate::waiters::{AckQueue, Reply};

pub struct Shard {
    pub(crate) id: usize,
    pub(crate) config: Arc<StoreConfig>,
    store_host: SocketAddr,
    /// The shard's CommitLog.
    pub(crate) cl: Rc<Log>,
    closing: Cell<bool>,
    /// Puts waiting for their bytes to be written (ASYNC_FLUSH) or flushed (SYNC_FLUSH).
    write_acks: RefCell<AckQueue>,
    flush_acks: RefCell<AckQueue>,
}

impl Shard {
    /// Recovers the shard's CommitLog and starts its tasks.
    pub async fn start(
        id: usize,
        config: Arc<StoreConfig>,
        shared: Arc<LogShared>,
    ) -> Result<(Rc<Shard>, RecoveryReport), RecoveryError> {
        let meta_path = config.store_path.join(crate::meta::META_FILE);
        crate::runtime::settle_iopoll_probe(&meta_path)
            .await
            .map_err(|source| RecoveryError::Io {
                what: "cannot open",
                path: meta_path.clone(),
                source,
            })?;
        let (cl, report) = Log::open(commitlog_spec(id, &config), shared).await?;
        let shard = Rc::new(Shard {
            id,
            store_host: SocketAddr::from(([127, 0, 0, 1], 0)),
            cl,
            closing: Cell::new(false),
            write_acks: RefCell::new(AckQueue::default()),
            flush_acks: RefCell::new(AckQueue::default()),
            config,
        });
        glommio::spawn_local(acker(shard.clone())).detach();
        if shard.config.flush_mode == FlushMode::Sync {
            glommio::spawn_local(flush_timeouts(shard.clone())).detach();
        }
        Ok((shard, report))
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn stopped(&self) -> bool {
        self.cl.stopped()
    }

    fn acks_on_flush(&self) -> bool {
        self.config.flush_mode == FlushMode::Sync && !self.config.unsafe_ack_before_flush
    }

    fn check_open(&self) -> Result<(), PutError> {
        if let Some(reason) = self.cl.failure() {
            return Err(PutError::ShardFailed {
                shard: self.id,
                reason,
            });
        }
        if self.closing.get() || self.cl.stopped() {
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

    /// Appends a batch contiguously; returns where each record went and the batch's end offset
    /// (pass it to [`Shard::await_ack`]). Nothing is appended if any message is invalid or the
    /// write buffer is full.
    pub fn put(&self, msgs: &[MessageInput]) -> Result<(Vec<PutResult>, u64), PutError> {
        self.check_open()?;
        let sizes = self.sizes(msgs)?;
        if !self.cl.has_room(sizes.iter().sum()) {
            return Err(PutError::Busy { shard: self.id });
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut results = Vec::with_capacity(msgs.len());
        let mut end = 0;
        for (msg, &len) in msgs.iter().zip(&sizes) {
            let offset = self.cl.append(len, |offset, out| {
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
        self.cl.kick();
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

    /// Reads the record at `offset` back from the device, checking its CRC.
    pub async fn read(&self, offset: u64) -> Result<StoredMessage, ReadError> {
        let written = self.cl.written();
        let out_of_range = ReadError::OffsetOutOfRange {
            shard: self.id,
            offset,
            readable: written,
        };
        if offset >= written {
            return Err(out_of_range);
        }
        let left = self.config.segment_size_bytes - offset % self.config.segment_size_bytes;
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
        let head = self
            .cl
            .read_bytes(offset, left.min(4096) as usize)
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
            self.cl
                .read_bytes(offset, size as usize)
                .await
                .map_err(io)?
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
        self.cl.kick();
        self.cl.drain().await?;
        self.cl
            .flush_once()
            .await
            .map_err(|_| self.cl.failure().unwrap_or_default())?;
        // Let the acker hand out what the last flush covered before the tasks stop.
        self.ack_upto(self.cl.written(), self.cl.flushed());
        self.cl
            .write_checkpoint(self.cl.flushed())
            .await
            .map_err(|e| e.to_string())?;
        self.stop();
        Ok(())
    }

    /// Stops the shard's tasks without flushing (a crash, as far as the data is concerned).
    pub fn stop(&self) {
        self.cl.stop();
    }

    fn ack_upto(&self, written: u64, flushed: u64) {
        let mut done = self.write_acks.borrow_mut().take_upto(written);
        done.extend(self.flush_acks.borrow_mut().take_upto(flushed));
        done.into_iter()
            .for_each(|r| r.finish(Ok(PutStatus::PutOk)));
    }

    fn fail_waiting(&self, reason: String) {
        let err = PutError::ShardFailed {
            shard: self.id,
            reason,
        };
        let mut waiting = self.write_acks.borrow_mut().take_all();
        waiting.extend(self.flush_acks.borrow_mut().take_all());
        waiting.into_iter().for_each(|r| r.finish(Err(err.clone())));
    }
}

/// The CommitLog of shard `id`.
fn commitlog_spec(id: usize, config: &StoreConfig) -> LogSpec {
    LogSpec {
        name: "commitlog",
        shard: id,
        dir: config.store_path.join("commitlog").join(id.to_string()),
        segment_bytes: config.segment_size_bytes,
        record_max: config.message_size_max_bytes as u64,
        chunk_bytes: config.write_chunk_bytes,
        writes_in_flight_max: config.writes_in_flight_max,
        buffer_max_bytes: config.write_buffer_max_bytes,
        flush: match config.flush_mode {
            FlushMode::Sync => FlushPolicy::Group,
            FlushMode::Async => FlushPolicy::Interval {
                interval: Duration::from_millis(config.flush_interval_ms),
                least_pages: config.flush_least_pages,
                thorough: Duration::from_millis(config.flush_thorough_interval_ms),
            },
        },
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
        plan: config.fault_plan.clone(),
        step: record::scan_step,
        sealed: SealedPolicy::Refuse,
    }
}

/// Acknowledges puts as the CommitLog's progress covers them; fails them if it fails.
async fn acker(shard: Rc<Shard>) {
    loop {
        let generation = shard.cl.progress.generation();
        if let Some(reason) = shard.cl.failure() {
            shard.fail_waiting(reason);
            return;
        }
        shard.ack_upto(shard.cl.written(), shard.cl.flushed());
        if shard.cl.stopped() {
            return;
        }
        shard.cl.progress.wait_past(generation).await;
    }
}

/// SYNC_FLUSH: completes puts still not covered by a flush after the timeout with
/// FLUSH_DISK_TIMEOUT (their bytes stay in the log and may become durable later).
async fn flush_timeouts(shard: Rc<Shard>) {
    let tick = (shard.config.sync_flush_timeout() / 20)
        .clamp(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        glommio::timer::sleep(tick).await;
        if shard.stopped() {
            return;
        }
        shard.expire_flush_waiters(Instant::now());
    }
}
