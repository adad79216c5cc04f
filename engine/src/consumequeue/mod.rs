//! The ConsumeQueues a shard owns: every `(topic, queue)` whose hash picks this shard.
//!
//! Dispatch batches arrive from every source shard; the owner assigns each record the next
//! offset of its queue, appends an entry to its ConsumeQueue log (one log per shard, shared by
//! all its queues: 10 000 queues cost no more files, preallocation or write calls than one)
//! and keeps the queue's entries in memory for reads. Under SYNC_FLUSH an entry becomes
//! visible to readers, and its put is acknowledged, only once the log flush covering it
//! completed; under ASYNC_FLUSH at once.

pub mod read;
pub mod record;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{FlushMode, StoreConfig};
use crate::dispatch::{DispatchBatch, DispatchRecord, ReplyPart};
use crate::error::{PutError, RecoveryError};
use crate::log::recovery::{RecoveryReport, SealedPolicy, Step};
use crate::log::{FlushPolicy, Log, LogShared, LogSpec};
use crate::meta::FnvBuild;
use crate::store::PutStatus;
use record::{CqEntry, CqRecord};

/// An entry as a reader needs it (the topic and queue are the map's keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    pub source: u16,
    pub cl_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub time_ms: i64,
}

/// One queue: dense offsets `min .. min + entries.len()`, of which those below `visible` may
/// be read.
#[derive(Debug, Default)]
pub struct Queue {
    pub min: u64,
    pub entries: VecDeque<QueueEntry>,
    pub visible: u64,
    waiters: Vec<(u64, flume::Sender<bool>)>,
}

impl Queue {
    pub fn assigned(&self) -> u64 {
        self.min + self.entries.len() as u64
    }

    pub fn entry(&self, offset: u64) -> Option<&QueueEntry> {
        offset
            .checked_sub(self.min)
            .and_then(|i| self.entries.get(i as usize))
    }

    fn make_visible(&mut self, upto: u64) {
        if upto <= self.visible {
            return;
        }
        self.visible = upto;
        let visible = self.visible;
        self.waiters.retain(|(offset, tx)| {
            if *offset < visible {
                let _ = tx.send(true);
                false
            } else {
                !tx.is_disconnected()
            }
        });
    }
}

struct PendingAck {
    cq_end: u64,
    topic: String,
    queue_id: u32,
    queue_offset: u64,
    deadline: Option<Instant>,
    reply: Option<ReplyPart>,
}

/// Bytes the ConsumeQueue log may hold appended but unwritten.
const CQ_BUFFER_MAX_BYTES: usize = 16 << 20;

pub struct ConsumeQueues {
    pub shard: usize,
    acks_on_flush: bool,
    pub cq: Rc<Log>,
    pub queues: RefCell<HashMap<String, BTreeMap<u32, Queue>, FnvBuild>>,
    pending: RefCell<VecDeque<PendingAck>>,
    /// Per source shard: its CommitLog below this is wholly in this log (entries or skipped).
    pub marks: RefCell<Vec<u64>>,
}

fn spec(id: usize, config: &StoreConfig, cl_ends: Vec<u64>) -> LogSpec {
    LogSpec {
        name: "consumequeue",
        shard: id,
        dir: config.store_path.join("consumequeue").join(id.to_string()),
        segment_bytes: config.consume_queue_segment_bytes,
        record_max: record::CQ_RECORD_MAX as u64,
        chunk_bytes: 64 << 10,
        writes_in_flight_max: 8,
        buffer_max_bytes: CQ_BUFFER_MAX_BYTES,
        flush: match config.flush_mode {
            FlushMode::Sync => FlushPolicy::Group,
            FlushMode::Async => FlushPolicy::Interval {
                interval: Duration::from_millis(config.consume_queue_flush_interval_ms),
                least_pages: config.consume_queue_flush_least_pages,
                thorough: Duration::from_millis(config.flush_thorough_interval_ms),
            },
        },
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
        plan: config.fault_plan.clone(),
        step: Rc::new(move |avail: &Bytes, offset, left, _max| -> Step {
            record::scan_step(avail, offset, left, &cl_ends)
        }),
        // Under SYNC_FLUSH an entry is only written once its CommitLog bytes are durable, so a
        // bad entry in a sealed segment is corruption; under ASYNC_FLUSH a power cut may take
        // CommitLog bytes an older entry points at, and recovery re-dispatches instead.
        sealed: match config.flush_mode {
            FlushMode::Sync => SealedPolicy::Refuse,
            FlushMode::Async => SealedPolicy::Cut,
        },
    }
}

impl ConsumeQueues {
    /// Recovers this shard's ConsumeQueue log against the surviving CommitLogs (`cl_ends`, per
    /// shard) and rebuilds the queues from it.
    pub async fn open(
        id: usize,
        config: &StoreConfig,
        cl_ends: Vec<u64>,
        shared: Arc<LogShared>,
    ) -> Result<(Rc<ConsumeQueues>, RecoveryReport), RecoveryError> {
        let shards = cl_ends.len();
        let (cq, report) = Log::open(spec(id, config, cl_ends), shared).await?;
        let cqs = Rc::new(ConsumeQueues {
            shard: id,
            acks_on_flush: config.flush_mode == FlushMode::Sync,
            cq,
            queues: RefCell::default(),
            pending: RefCell::default(),
            marks: RefCell::new(vec![0; shards]),
        });
        cqs.rebuild().await.map_err(|source| RecoveryError::Io {
            what: "cannot read the ConsumeQueue log in",
            path: cqs.cq.spec.dir.clone(),
            source,
        })?;
        cqs.cq.spawn(acker(cqs.clone()));
        Ok((cqs, report))
    }

    /// Reloads every queue from the log (all of it is visible: recovery made it durable).
    async fn rebuild(&self) -> std::io::Result<()> {
        let first = self
            .cq
            .segments
            .borrow()
            .keys()
            .next()
            .copied()
            .unwrap_or(0);
        let mut records = Vec::new();
        self.cq
            .scan(first, |offset, bytes| {
                if let Ok(Some(r)) = record::decode(bytes, offset, u64::MAX) {
                    records.push(r);
                }
            })
            .await?;
        for r in records {
            match r {
                CqRecord::Entry(e) => self.load_entry(e),
                CqRecord::Watermark { source, upto } => self.raise_mark(source, upto),
            }
        }
        Ok(())
    }

    fn raise_mark(&self, source: u16, upto: u64) {
        if let Some(m) = self.marks.borrow_mut().get_mut(source as usize) {
            *m = (*m).max(upto);
        }
    }

    fn load_entry(&self, e: CqEntry) {
        self.raise_mark(e.source, e.cl_offset + e.size as u64);
        let mut queues = self.queues.borrow_mut();
        let q = queues
            .entry(e.topic)
            .or_default()
            .entry(e.queue_id)
            .or_default();
        if q.entries.is_empty() {
            q.min = e.queue_offset;
        }
        if e.queue_offset != q.assigned() {
            tracing::error!(
                shard = self.shard,
                queue = e.queue_id,
                expected = q.assigned(),
                found = e.queue_offset,
                "ConsumeQueue entry out of sequence; ignored"
            );
            return;
        }
        q.entries.push_back(QueueEntry {
            source: e.source,
            cl_offset: e.cl_offset,
            size: e.size,
            tag_hash: e.tag_hash,
            time_ms: e.time_ms,
        });
        q.visible = q.assigned();
    }

    /// Bytes a batch will take in the log, for the room check.
    pub fn batch_bytes(batch: &DispatchBatch) -> usize {
        batch
            .records
            .iter()
            .map(|r| record::entry_len(&r.topic))
            .sum::<usize>()
            + record::WATERMARK_LEN
    }

    /// Assigns queue offsets to a batch and appends its entries and watermark.
    pub fn apply(&self, batch: DispatchBatch) {
        if let Some(reason) = self.cq.failure() {
            let err = PutError::ShardFailed {
                shard: self.shard,
                reason,
            };
            batch
                .records
                .into_iter()
                .filter_map(|r| r.reply)
                .for_each(|p| p.complete(Err(err.clone())));
            return;
        }
        for r in batch.records {
            self.apply_one(r);
        }
        let mark = CqRecord::Watermark {
            source: batch.source,
            upto: batch.upto,
        };
        self.cq.append(record::WATERMARK_LEN, |pos, out| {
            record::encode(&mark, pos, out)
        });
        self.raise_mark(batch.source, batch.upto);
        self.cq.kick();
    }

    fn apply_one(&self, r: DispatchRecord) {
        let mut queues = self.queues.borrow_mut();
        let topic = match queues.get_mut(r.topic.as_str()) {
            Some(t) => t,
            None => queues.entry(r.topic.clone()).or_default(),
        };
        let q = topic.entry(r.queue_id).or_default();
        let queue_offset = q.assigned();
        let entry = CqEntry {
            topic: r.topic,
            queue_id: r.queue_id,
            queue_offset,
            source: r.source,
            cl_offset: r.cl_offset,
            size: r.size,
            tag_hash: r.tag_hash,
            time_ms: r.store_timestamp_ms,
        };
        q.entries.push_back(QueueEntry {
            source: entry.source,
            cl_offset: entry.cl_offset,
            size: entry.size,
            tag_hash: entry.tag_hash,
            time_ms: entry.time_ms,
        });
        let len = record::entry_len(&entry.topic);
        let topic = entry.topic.clone();
        let rec = CqRecord::Entry(entry);
        let at = self
            .cq
            .append(len, |pos, out| record::encode(&rec, pos, out));
        if self.acks_on_flush {
            self.pending.borrow_mut().push_back(PendingAck {
                cq_end: at + len as u64,
                topic,
                queue_id: r.queue_id,
                queue_offset,
                deadline: r.deadline,
                reply: r.reply,
            });
        } else {
            q.make_visible(queue_offset + 1);
            if let Some(reply) = r.reply {
                reply.complete(Ok((PutStatus::PutOk, Some(queue_offset))));
            }
        }
    }

    /// Entries covered by the log's flush become visible and their puts are answered.
    pub(crate) fn ack_upto(&self, flushed: u64) {
        let mut pending = self.pending.borrow_mut();
        let mut queues = self.queues.borrow_mut();
        while pending.front().is_some_and(|p| p.cq_end <= flushed) {
            let Some(p) = pending.pop_front() else { break };
            if let Some(q) = queues
                .get_mut(p.topic.as_str())
                .and_then(|t| t.get_mut(&p.queue_id))
            {
                q.make_visible(p.queue_offset + 1);
            }
            if let Some(reply) = p.reply {
                reply.complete(Ok((PutStatus::PutOk, Some(p.queue_offset))));
            }
        }
    }

    /// SYNC_FLUSH puts past their deadline answer FLUSH_DISK_TIMEOUT; the entry stays.
    pub fn expire(&self, now: Instant) {
        for p in self.pending.borrow_mut().iter_mut() {
            if p.deadline.is_some_and(|d| d <= now) {
                if let Some(reply) = p.reply.take() {
                    reply.complete(Ok((PutStatus::FlushDiskTimeout, Some(p.queue_offset))));
                }
            }
        }
    }

    fn fail_pending(&self, reason: String) {
        let err = PutError::ShardFailed {
            shard: self.shard,
            reason,
        };
        for p in self.pending.borrow_mut().drain(..) {
            if let Some(reply) = p.reply {
                reply.complete(Err(err.clone()));
            }
        }
    }

    /// Registers interest in `(topic, queue)` passing `offset`; `None` if it already has.
    pub fn watch(&self, topic: &str, queue_id: u32, offset: u64) -> Option<flume::Receiver<bool>> {
        let mut queues = self.queues.borrow_mut();
        let q = match queues.get_mut(topic) {
            Some(t) => t.entry(queue_id).or_default(),
            None => queues
                .entry(topic.to_owned())
                .or_default()
                .entry(queue_id)
                .or_default(),
        };
        if q.visible > offset {
            return None;
        }
        let (tx, rx) = flume::bounded(1);
        q.waiters.push((offset, tx));
        Some(rx)
    }
}

/// Answers SYNC_FLUSH puts as the log's flushes cover their entries; fails them if it fails.
async fn acker(cqs: Rc<ConsumeQueues>) {
    loop {
        let generation = cqs.cq.progress.generation();
        if let Some(reason) = cqs.cq.failure() {
            cqs.fail_pending(reason);
            return;
        }
        cqs.ack_upto(cqs.cq.flushed());
        if cqs.cq.stopped() {
            return;
        }
        cqs.cq.progress.wait_past(generation).await;
    }
}
