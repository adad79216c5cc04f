//! One shard: the state its executor owns and the tasks that drive it.
//!
//! *As a source* it appends puts to its CommitLog and, once their bytes are written
//! (ASYNC_FLUSH) or flushed (SYNC_FLUSH), dispatches them to the owners of their queues.
//! *As an owner* it takes dispatch batches from every source into its ConsumeQueues.
//! Only the shard's own executor touches this state; other threads send requests and read
//! the published [`LogShared`] atomics.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{FlushMode, StoreConfig};
use crate::consumequeue::read::ClReader;
use crate::consumequeue::ConsumeQueues;
use crate::dispatch::{Collector, DispatchBatch, DispatchRecord, ReplyPart, Sink};
use crate::error::PutError;
use crate::filter::tag_hash;
use crate::log::recovery::SealedPolicy;
use crate::log::{FlushPolicy, Log, LogSpec};
use crate::meta::queue_shard;
use crate::record::{self, encoded_len, MessageInput, StoreStamp};
use crate::store::{PutResult, PutStatus};
use crate::waiters::LocalEvent;

/// The messages of one put call.
pub enum Puts {
    One(MessageInput),
    Many(Vec<MessageInput>),
}

impl Puts {
    pub fn first(&self) -> &MessageInput {
        match self {
            Puts::One(m) => m,
            Puts::Many(ms) => &ms[0],
        }
    }

    pub fn as_slice(&self) -> &[MessageInput] {
        match self {
            Puts::One(m) => std::slice::from_ref(m),
            Puts::Many(ms) => ms,
        }
    }
}

struct Pending {
    end: u64,
    record: DispatchRecord,
}

pub struct Shard {
    pub(crate) id: usize,
    pub(crate) config: Arc<StoreConfig>,
    pub(crate) store_host: SocketAddr,
    /// The shard's CommitLog.
    pub(crate) cl: Rc<Log>,
    /// The queues this shard owns.
    pub(crate) cqs: Rc<ConsumeQueues>,
    pub(crate) reader: ClReader,
    closing: Cell<bool>,
    /// Appended records waiting to be dispatched, in CommitLog order.
    pending: RefCell<VecDeque<Pending>>,
    /// One sender per owner shard (this one included).
    dispatch_tx: Vec<flume::Sender<DispatchBatch>>,
    /// The intake task is applying a batch.
    intake_busy: Cell<bool>,
    intake_idle: LocalEvent,
}

/// The CommitLog of shard `id`.
pub fn commitlog_spec(id: usize, config: &StoreConfig) -> LogSpec {
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
        step: Rc::new(record::scan_step),
        sealed: SealedPolicy::Refuse,
    }
}

impl Shard {
    /// Assembles a recovered shard and starts its tasks.
    pub fn start(
        id: usize,
        config: Arc<StoreConfig>,
        cl: Rc<Log>,
        cqs: Rc<ConsumeQueues>,
        reader: ClReader,
        dispatch_tx: Vec<flume::Sender<DispatchBatch>>,
        intake: flume::Receiver<DispatchBatch>,
    ) -> Rc<Shard> {
        let shard = Rc::new(Shard {
            id,
            store_host: reader.store_host,
            config,
            cl,
            cqs,
            reader,
            closing: Cell::new(false),
            pending: RefCell::default(),
            dispatch_tx,
            intake_busy: Cell::new(false),
            intake_idle: LocalEvent::default(),
        });
        // Spawned through the logs so that stopping them cancels these too (they hold the
        // shard, which holds the logs).
        shard.cl.spawn(dispatcher(shard.clone()));
        shard.cqs.cq.spawn(intake_loop(shard.clone(), intake));
        if shard.config.flush_mode == FlushMode::Sync {
            shard.cl.spawn(flush_timeouts(shard.clone()));
        }
        shard
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn stopped(&self) -> bool {
        self.cl.stopped()
    }

    fn dispatch_on_flush(&self) -> bool {
        self.config.flush_mode == FlushMode::Sync
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

    /// Appends a put's messages contiguously; `sink` is answered once every record is
    /// acknowledged. Nothing is appended (and the sink is failed) if any message is invalid or
    /// the write buffer is full.
    pub fn put(&self, msgs: Puts, sink: Sink) {
        let sizes = match self.check_open().and_then(|()| self.sizes(msgs.as_slice())) {
            Ok(s) => s,
            Err(e) => return sink.fail(e),
        };
        if !self.cl.has_room(sizes.iter().sum()) {
            return sink.fail(PutError::Busy { shard: self.id });
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let deadline = self
            .dispatch_on_flush()
            .then(|| Instant::now() + self.config.sync_flush_timeout());
        match (msgs, sink) {
            (Puts::One(msg), Sink::One(tx)) => {
                let (result, mut record) = self.append(&msg, sizes[0], now_ms, deadline);
                record.reply = Some(ReplyPart::Single(result, tx));
                self.pending.borrow_mut().push_back(Pending {
                    end: record.cl_offset + record.size as u64,
                    record,
                });
            }
            (msgs, sink) => {
                let mut results = Vec::with_capacity(sizes.len());
                let mut records = Vec::with_capacity(sizes.len());
                for (msg, &len) in msgs.as_slice().iter().zip(&sizes) {
                    let (result, record) = self.append(msg, len, now_ms, deadline);
                    results.push(result);
                    records.push(record);
                }
                let mut pending = self.pending.borrow_mut();
                for (mut record, part) in records.into_iter().zip(Collector::split(results, sink)) {
                    record.reply = Some(part);
                    pending.push_back(Pending {
                        end: record.cl_offset + record.size as u64,
                        record,
                    });
                }
            }
        }
        self.cl.kick();
    }

    fn append(
        &self,
        msg: &MessageInput,
        len: usize,
        now_ms: i64,
        deadline: Option<Instant>,
    ) -> (PutResult, DispatchRecord) {
        let offset = self.cl.append(len, |offset, out| {
            let stamp = StoreStamp {
                physical_offset: offset,
                store_timestamp_ms: now_ms,
                store_host: self.store_host,
            };
            record::encode(msg, &stamp, out);
        });
        let result = PutResult {
            status: PutStatus::PutOk,
            shard: self.id,
            offset,
            size: len as u32,
            store_timestamp_ms: now_ms,
            queue_offset: None,
        };
        let record = DispatchRecord {
            topic: msg.topic.clone(),
            queue_id: msg.queue_id,
            source: self.id as u16,
            cl_offset: offset,
            size: len as u32,
            tag_hash: tag_hash(msg.tags.as_deref()),
            store_timestamp_ms: now_ms,
            deadline,
            reply: None,
        };
        (result, record)
    }

    /// Sends every pending record the CommitLog's progress covers to its owner.
    fn dispatch_ready(&self) {
        let written = self.cl.written();
        let upto = if self.dispatch_on_flush() {
            self.cl.flushed()
        } else {
            written
        };
        let mut pending = self.pending.borrow_mut();
        if self.config.unsafe_ack_before_flush {
            // Test seam: answer at write time, before any flush (what the power-cut test
            // must catch).
            for p in pending.iter_mut().take_while(|p| p.end <= written) {
                if let Some(reply) = p.record.reply.take() {
                    reply.complete(Ok((PutStatus::PutOk, None)));
                }
            }
        }
        if pending.front().is_none_or(|p| p.end > upto) {
            return;
        }
        let owners = self.dispatch_tx.len();
        let mut batches: Vec<Vec<DispatchRecord>> = (0..owners).map(|_| Vec::new()).collect();
        let mut mark = 0;
        while pending.front().is_some_and(|p| p.end <= upto) {
            let Some(p) = pending.pop_front() else { break };
            mark = p.end;
            batches[queue_shard(&p.record.topic, p.record.queue_id, owners)].push(p.record);
        }
        drop(pending);
        for (owner, records) in batches.into_iter().enumerate() {
            let batch = DispatchBatch {
                source: self.id as u16,
                upto: mark,
                records,
            };
            if let Err(flume::SendError(batch)) = self.dispatch_tx[owner].send(batch) {
                let err = PutError::ShuttingDown;
                batch
                    .records
                    .into_iter()
                    .filter_map(|r| r.reply)
                    .for_each(|p| p.complete(Err(err.clone())));
            }
        }
    }

    fn fail_pending(&self, reason: String) {
        let err = PutError::ShardFailed {
            shard: self.id,
            reason,
        };
        for p in self.pending.borrow_mut().drain(..) {
            if let Some(reply) = p.record.reply {
                reply.complete(Err(err.clone()));
            }
        }
    }

    fn expire(&self, now: Instant) {
        for p in self.pending.borrow_mut().iter_mut() {
            if p.record.deadline.is_some_and(|d| d <= now) {
                if let Some(reply) = p.record.reply.take() {
                    reply.complete(Ok((PutStatus::FlushDiskTimeout, None)));
                }
            }
        }
        self.cqs.expire(now);
    }

    /// Shutdown, first step (on every shard before the second): no new puts; everything
    /// appended is written, flushed and dispatched.
    pub async fn shutdown_sources(&self) -> Result<(), String> {
        self.closing.set(true);
        self.cl.kick();
        self.cl.drain().await?;
        self.cl
            .flush_once()
            .await
            .map_err(|_| self.cl.failure().unwrap_or_default())?;
        self.dispatch_ready();
        Ok(())
    }

    /// Shutdown, second step: every dispatched entry is applied and flushed, puts answered,
    /// checkpoints written, tasks stopped.
    pub async fn shutdown_owner(
        &self,
        intake: &flume::Receiver<DispatchBatch>,
    ) -> Result<(), String> {
        loop {
            let generation = self.intake_idle.generation();
            if intake.is_empty() && !self.intake_busy.get() {
                break;
            }
            self.intake_idle.wait_past(generation).await;
        }
        let cq = &self.cqs.cq;
        cq.drain().await?;
        cq.flush_once()
            .await
            .map_err(|_| cq.failure().unwrap_or_default())?;
        cq.write_checkpoint(cq.flushed())
            .await
            .map_err(|e| e.to_string())?;
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
        self.cqs.cq.stop();
        self.intake_idle.notify();
    }

    /// After `stop`: waits for what is still in flight, then closes every file.
    pub async fn quiesce(&self) {
        self.cl.quiesce().await;
        self.cqs.cq.quiesce().await;
        self.reader.close_files().await;
        self.cl.close_files().await;
        self.cqs.cq.close_files().await;
    }
}

/// Dispatches as the CommitLog's progress allows; fails waiting puts if it fails.
async fn dispatcher(shard: Rc<Shard>) {
    loop {
        let generation = shard.cl.progress.generation();
        if let Some(reason) = shard.cl.failure() {
            shard.fail_pending(reason);
            return;
        }
        shard.dispatch_ready();
        if shard.cl.stopped() {
            return;
        }
        shard.cl.progress.wait_past(generation).await;
    }
}

/// Applies dispatch batches from every source, waiting for room in the ConsumeQueue log.
async fn intake_loop(shard: Rc<Shard>, rx: flume::Receiver<DispatchBatch>) {
    while let Ok(batch) = rx.recv_async().await {
        shard.intake_busy.set(true);
        let need = ConsumeQueues::batch_bytes(&batch);
        shard.cqs.cq.wait_for_room(need).await;
        shard.cqs.apply(batch);
        shard.intake_busy.set(false);
        shard.intake_idle.notify();
    }
}

/// SYNC_FLUSH: answers puts still not acknowledged after the timeout with FLUSH_DISK_TIMEOUT
/// (their records stay and may become durable later).
async fn flush_timeouts(shard: Rc<Shard>) {
    let tick = (shard.config.sync_flush_timeout() / 20)
        .clamp(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        glommio::timer::sleep(tick).await;
        if shard.stopped() {
            return;
        }
        shard.expire(Instant::now());
    }
}
