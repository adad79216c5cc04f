//! The ConsumeQueues a shard owns: every `(topic, queue)` whose hash picks this shard.
//!
//! Sources reserve queue offsets here before appending (the offset is stored in the
//! CommitLog record, so the record's flush makes it durable). Dispatch records arrive once
//! their records are written (ASYNC_FLUSH) or flushed (SYNC_FLUSH) and fill the reserved
//! slots; as each queue's reserved prefix fills in, its entries become visible to readers and
//! are appended to the ConsumeQueue log (one log per shard, shared by all its queues: 10 000
//! queues cost no more files, preallocation or write calls than one). The log is an index
//! that recovery could rebuild from the CommitLog, so nothing waits for its flush; it is
//! flushed on its own interval and keeps recovery short.

pub mod cold;
mod inflight;
pub mod read;
pub mod record;
pub mod retire;
pub mod spill;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Queues by topic: hashbrown's map, for `entry_ref` (one lookup, and a key allocated only
/// for a new topic).
type QueueMap = hashbrown::HashMap<String, BTreeMap<u32, Queue>, FnvBuild>;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{FlushMode, StoreConfig};
use crate::dispatch::{DispatchBatch, DispatchRecord, Run, Slot};
use crate::error::RecoveryError;
use crate::log::recovery::{RecoveryReport, SealedPolicy, Step};
use crate::log::{FlushPolicy, Log, LogShared, LogSpec};
use crate::meta::FnvBuild;
use record::{CqEntry, CqRecord};

/// An entry as a reader needs it (the topic and queue are the map's keys). An entry of size 0
/// is a *skip*: an offset reserved for a record that never became durable; it holds no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    pub source: u16,
    pub cl_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub time_ms: i64,
}

impl QueueEntry {
    pub fn skip(time_ms: i64) -> Self {
        QueueEntry {
            source: 0,
            cl_offset: 0,
            size: 0,
            tag_hash: 0,
            time_ms,
        }
    }

    pub fn is_skip(&self) -> bool {
        self.size == 0
    }
}

/// One queue: visible entries at offsets `min .. visible()`, then the offsets sources have
/// reserved but not yet dispatched (`None`) or dispatched ahead of an earlier one (`Some`).
#[derive(Debug, Default)]
pub struct Queue {
    /// The first offset readers may ask for.
    pub min: u64,
    /// The oldest full blocks of entries, in the shard's cold file (`cold.rs`): they cover
    /// `[cold[0].first, hot_start)` contiguously, and `min` lies in the first.
    pub cold: VecDeque<cold::ColdBlock>,
    /// Queue offset of `entries[0]` (`min` when nothing is cold).
    pub hot_start: u64,
    /// The newest entries, in memory.
    pub entries: VecDeque<QueueEntry>,
    reserved: VecDeque<Option<QueueEntry>>,
    waiters: Vec<(u64, flume::Sender<bool>)>,
    /// This shard's own puts to this queue waiting in a round (while there are any, a later
    /// put to the queue must queue behind them to keep their order).
    staged_here: u32,
}

impl Queue {
    /// One past the last offset readers may see.
    pub fn visible(&self) -> u64 {
        self.hot_start + self.entries.len() as u64
    }

    /// The next offset to reserve.
    pub fn next(&self) -> u64 {
        self.visible() + self.reserved.len() as u64
    }

    /// The entry at `offset` if it is in memory.
    pub fn entry(&self, offset: u64) -> Option<&QueueEntry> {
        offset
            .checked_sub(self.hot_start)
            .and_then(|i| self.entries.get(i as usize))
    }

    /// Store time of the newest entry, wherever it is.
    fn last_time_ms(&self) -> i64 {
        self.entries
            .back()
            .map(|e| e.time_ms)
            .or_else(|| self.cold.back().map(|b| b.first_time_ms))
            .unwrap_or(0)
    }

    fn wake(&mut self) {
        let visible = self.visible();
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

/// Log bytes `rebuild` reads before it moves entries past the memory budget out.
const REBUILD_SLICE_BYTES: u64 = 64 << 20;
/// Bytes the ConsumeQueue log may hold appended but unwritten.
const CQ_BUFFER_MAX_BYTES: usize = 16 << 20;

pub struct ConsumeQueues {
    pub shard: usize,
    pub cq: Rc<Log>,
    pub queues: RefCell<QueueMap>,
    /// Per source shard: its CommitLog below this is wholly in this log (as entries or skips).
    pub marks: RefCell<Vec<u64>>,
    /// Per source: the highest watermark received.
    received: RefCell<Vec<u64>>,
    /// Per source: its records dispatched but parked behind an earlier reserved offset of
    /// their queue (not yet in the log, so the mark stays below them).
    parked: RefCell<Vec<Parked>>,
    /// Recovery only (emptied by `seal`): per deleted topic, per source, the CommitLog offset
    /// below which that source's records of the topic belong to a deleted incarnation, so
    /// re-dispatch must not put them into the topic's current queues.
    deleted_below: RefCell<HashMap<String, Vec<u64>, FnvBuild>>,
    /// The `(topic, generation)` of every "topic deleted" record in the log, so that opening
    /// the store can finish a delete that was recorded here but not in the topic table.
    deleted_generations: RefCell<BTreeSet<(String, u64)>>,
    /// Entries in memory against the shard's budget.
    pub hot: spill::HotCount,
    /// Where the oldest blocks of entries go past the budget (`None`: no budget).
    pub cold: Option<Rc<cold::ColdFile>>,
    /// What each segment of the log refers to, for deleting old ones (`retire.rs`).
    seg_refs: RefCell<retire::RefMap>,
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
        // Nothing waits for this log's flush (the CommitLog holds every queue offset), so it
        // flushes on its own interval in both modes.
        flush: FlushPolicy::Interval {
            interval: Duration::from_millis(config.consume_queue_flush_interval_ms),
            least_pages: config.consume_queue_flush_least_pages,
            thorough: Duration::from_millis(config.flush_thorough_interval_ms),
        },
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
        plan: config.fault_plan.clone(),
        // Nothing waits for this log's fdatasyncs.
        zero_ahead: None,
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
        let cold = match config.queue_entries_in_memory_max {
            0 => None,
            _ => {
                let dir = config.store_path.join("cqcold").join(id.to_string());
                let file =
                    cold::ColdFile::create(&dir)
                        .await
                        .map_err(|source| RecoveryError::Io {
                            what: "cannot create the cold entry file in",
                            path: dir.clone(),
                            source,
                        })?;
                Some(Rc::new(file))
            }
        };
        let cqs = Rc::new(ConsumeQueues {
            shard: id,
            cq,
            queues: RefCell::default(),
            marks: RefCell::new(vec![0; shards]),
            received: RefCell::new(vec![0; shards]),
            parked: RefCell::new((0..shards).map(|_| Parked::default()).collect()),
            deleted_below: RefCell::default(),
            deleted_generations: RefCell::default(),
            hot: spill::HotCount::new(config.queue_entries_in_memory_max),
            cold,
            seg_refs: RefCell::default(),
        });
        cqs.rebuild().await.map_err(|source| RecoveryError::Io {
            what: "cannot read the ConsumeQueue log in",
            path: cqs.cq.spec.dir.clone(),
            source,
        })?;
        *cqs.received.borrow_mut() = cqs.marks.borrow().clone();
        Ok((cqs, report))
    }

    /// Reloads every queue from the log (all of it is visible: its entries point at CommitLog
    /// bytes that survived).
    async fn rebuild(&self) -> std::io::Result<()> {
        let first = self
            .cq
            .segments
            .borrow()
            .keys()
            .next()
            .copied()
            .unwrap_or(0);
        // A slice of the log at a time, moving entries past the memory budget out between
        // slices, so that opening a large store does not need every entry in memory.
        let mut from = first;
        loop {
            let mut records = Vec::new();
            let next = self
                .cq
                .scan_upto(from, REBUILD_SLICE_BYTES, |offset, bytes| {
                    if let Ok(Some(r)) = record::decode(bytes, offset, u64::MAX) {
                        records.push((offset, r));
                    }
                })
                .await?;
            for (offset, r) in records {
                self.note(offset, &r);
                self.load_record(r);
            }
            if self.hot.over() {
                if let Err(e) = self.spill().await {
                    tracing::error!(shard = self.shard, error = %e, "cannot move queue entries to the cold file while opening; they stay in memory");
                }
            }
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(())
    }

    fn load_record(&self, r: CqRecord) {
        match r {
            CqRecord::Entry(e) => self.load_entry(e),
            // Only watermarks move marks: entries after the last one may have been
            // appended out of CommitLog order (a queue's prefix filling in late).
            CqRecord::Watermark { source, upto } => {
                if let Some(m) = self.marks.borrow_mut().get_mut(source as usize) {
                    *m = (*m).max(upto);
                }
            }
            CqRecord::TopicDeleted {
                topic,
                generation,
                source,
                upto,
            } => self.load_topic_deleted(topic, generation, source, upto),
            CqRecord::QueuePosition {
                topic,
                queue_id,
                next,
            } => self.load_queue_position(topic, queue_id, next),
        }
    }

    /// A queue's next offset, written before older segments were deleted: a queue whose
    /// entries all went with them continues from it.
    fn load_queue_position(&self, topic: String, queue_id: u32, next: u64) {
        let mut queues = self.queues.borrow_mut();
        let q = queues
            .entry(topic)
            .or_default()
            .entry(queue_id)
            .or_default();
        if q.entries.is_empty() && q.cold.is_empty() && q.visible() < next {
            q.min = next;
            q.hot_start = next;
        } else if q.visible() < next {
            tracing::error!(
                shard = self.shard,
                queue = queue_id,
                visible = q.visible(),
                next,
                "ConsumeQueue position ahead of the queue's entries; ignored"
            );
        }
    }

    /// A "topic deleted" record while rebuilding: the entries of the topic loaded so far are
    /// void; what follows in the log belongs to a later incarnation.
    fn load_topic_deleted(&self, topic: String, generation: u64, source: u16, upto: u64) {
        let dropped = self.queues.borrow_mut().remove(&topic);
        self.forget(dropped.iter().flat_map(|qs| qs.values()));
        let shards = self.marks.borrow().len();
        let mut deleted = self.deleted_below.borrow_mut();
        let below = deleted
            .entry(topic.clone())
            .or_insert_with(|| vec![0; shards]);
        if let Some(b) = below.get_mut(source as usize) {
            *b = (*b).max(upto);
        }
        self.deleted_generations
            .borrow_mut()
            .insert((topic, generation));
    }

    /// The `(topic, generation)` of every delete recorded in this shard's log.
    pub fn deleted_generations(&self) -> Vec<(String, u64)> {
        self.deleted_generations.borrow().iter().cloned().collect()
    }

    /// Whether a re-dispatched record belongs to a deleted incarnation of its topic.
    fn of_deleted_topic(&self, r: &DispatchRecord) -> bool {
        let deleted = self.deleted_below.borrow();
        if deleted.is_empty() {
            return false;
        }
        deleted
            .get(&*r.topic)
            .and_then(|below| below.get(r.source as usize))
            .is_some_and(|&below| r.cl_offset < below)
    }

    /// Bytes `drop_topic` may append.
    pub fn drop_bytes(&self, topic: &str) -> usize {
        let sources = self.marks.borrow().len();
        (record::topic_deleted_len(topic) + record::WATERMARK_LEN) * sources
    }

    /// Deletes a topic's queues, once every source's records of it (everything appended
    /// before the delete, each source below `upto[source]`) were applied: forgets the queues
    /// (their waiting readers get `false`), releases their parked records, and appends a
    /// "topic deleted" record per source and the watermarks that rose. Returns the log offset
    /// the caller must see flushed before the delete is durable.
    pub fn drop_topic(&self, topic: &str, generation: u64, upto: &[u64]) -> u64 {
        let dropped = self.queues.borrow_mut().remove(topic);
        {
            let mut parked = self.parked.borrow_mut();
            let reserved = dropped
                .iter()
                .flat_map(|qs| qs.values())
                .flat_map(|q| q.reserved.iter().flatten());
            for e in reserved.filter(|e| !e.is_skip()) {
                if let Some(p) = parked.get_mut(e.source as usize) {
                    p.settled(e.cl_offset);
                }
            }
        }
        self.forget(dropped.iter().flat_map(|qs| qs.values()));
        // Dropping the queues drops their waiters' senders: each waiter wakes with `false`.
        drop(dropped);
        if self.cq.failure().is_none() {
            for (source, &upto) in upto.iter().enumerate() {
                let at = self
                    .cq
                    .append(record::topic_deleted_len(topic), |pos, out| {
                        record::encode_topic_deleted(
                            topic,
                            generation,
                            source as u16,
                            upto,
                            pos,
                            out,
                        )
                    });
                self.note_deleted(at, source as u16, upto);
            }
        }
        self.write_marks();
        self.cq.kick();
        self.cq.append_offset()
    }

    /// Uncounts the entries of queues being dropped and releases their cold blocks.
    fn forget<'a>(&self, queues: impl Iterator<Item = &'a Queue>) {
        let mut released = Vec::new();
        for q in queues {
            self.hot.uncount(q.entries.len());
            released.extend(q.cold.iter().map(|b| b.pos));
        }
        self.release_cold(released);
    }

    fn load_entry(&self, e: CqEntry) {
        let mut queues = self.queues.borrow_mut();
        let q = queues
            .entry(e.topic)
            .or_default()
            .entry(e.queue_id)
            .or_default();
        if q.entries.is_empty() && q.cold.is_empty() {
            q.min = e.queue_offset;
            q.hot_start = e.queue_offset;
        }
        if e.queue_offset != q.visible() {
            tracing::error!(
                shard = self.shard,
                queue = e.queue_id,
                expected = q.visible(),
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
        self.hot.count(1);
    }

    /// Bytes a batch may take in the log, for the room check.
    pub fn batch_bytes(&self, records: &[DispatchRecord]) -> usize {
        records
            .iter()
            .map(|r| record::entry_len(&r.topic))
            .sum::<usize>()
            + record::WATERMARK_LEN * self.marks.borrow().len()
    }

    /// Reserves `count` offsets per run; returns each run's first.
    pub fn reserve(&self, runs: &[Run]) -> Vec<u64> {
        let mut queues = self.queues.borrow_mut();
        runs.iter()
            .map(|run| {
                let q = queue_mut(&mut queues, &run.topic, run.queue_id);
                let first = q.next();
                q.reserved
                    .extend(std::iter::repeat_n(None, run.count as usize));
                first
            })
            .collect()
    }

    /// Reserves one offset (a put of one message to a queue this shard owns).
    pub fn reserve_one(&self, topic: &str, queue_id: u32) -> u64 {
        let mut queues = self.queues.borrow_mut();
        let q = queue_mut(&mut queues, topic, queue_id);
        let at = q.next();
        q.reserved.push_back(None);
        at
    }

    /// Whether no put of this shard to any of these (own) queues waits in a round.
    pub fn none_staged<'a>(&self, mut queues: impl Iterator<Item = (&'a str, u32)>) -> bool {
        let map = self.queues.borrow();
        queues.all(|(topic, queue_id)| {
            map.get(topic)
                .and_then(|t| t.get(&queue_id))
                .is_none_or(|q| q.staged_here == 0)
        })
    }

    /// Counts a put of this shard to one of its own queues into (`true`) or out of a round.
    pub fn count_staged(&self, topic: &str, queue_id: u32, staged: bool) {
        let mut map = self.queues.borrow_mut();
        let q = queue_mut(&mut map, topic, queue_id);
        q.staged_here = if staged {
            q.staged_here + 1
        } else {
            q.staged_here.saturating_sub(1)
        };
    }

    /// Fills the reserved slots of a batch's records, appends what became contiguous and the
    /// watermarks that rose.
    pub fn apply(&self, batch: DispatchBatch) {
        for r in batch.records {
            if self.of_deleted_topic(&r) {
                continue;
            }
            self.place(r);
        }
        if let Some(got) = self.received.borrow_mut().get_mut(batch.source as usize) {
            *got = (*got).max(batch.upto);
        }
        self.write_marks();
        self.cq.kick();
    }

    /// Reserved offsets whose records will never come: skip entries.
    pub fn abandon(&self, slots: Vec<Slot>) {
        for s in slots {
            let mut queues = self.queues.borrow_mut();
            let q = queue_mut(&mut queues, &s.topic, s.queue_id);
            let Some(idx) = s.queue_offset.checked_sub(q.visible()) else {
                continue;
            };
            if let Some(slot @ None) = q.reserved.get_mut(idx as usize) {
                *slot = Some(QueueEntry::skip(0));
            }
            self.settle(&s.topic, s.queue_id, q);
        }
        self.write_marks();
        self.cq.kick();
    }

    /// Bytes `seal` will append.
    pub fn seal_bytes(&self) -> usize {
        let queues = self.queues.borrow();
        let holes: usize = queues
            .iter()
            .flat_map(|(topic, qs)| {
                qs.values().map(move |q| {
                    q.reserved.iter().filter(|s| s.is_none()).count() * record::entry_len(topic)
                })
            })
            .sum();
        holes + record::WATERMARK_LEN * self.marks.borrow().len()
    }

    /// Recovery, after every re-dispatched record was placed: offsets nobody filled were
    /// reserved for records that did not survive; they become skips. The watermarks written
    /// here cover every surviving record, so no later recovery re-reads a record a delete
    /// voided, and the voided ranges are forgotten.
    pub fn seal(&self) {
        self.deleted_below.borrow_mut().clear();
        let mut queues = self.queues.borrow_mut();
        for (topic, qs) in queues.iter_mut() {
            for (&queue_id, q) in qs.iter_mut() {
                for slot in q.reserved.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(QueueEntry::skip(0));
                }
                self.settle(topic, queue_id, q);
            }
        }
        drop(queues);
        self.write_marks();
        self.cq.kick();
    }

    fn place(&self, r: DispatchRecord) {
        let mut queues = self.queues.borrow_mut();
        let q = queue_mut(&mut queues, &r.topic, r.queue_id);
        let entry = QueueEntry {
            source: r.source,
            cl_offset: r.cl_offset,
            size: r.size,
            tag_hash: r.tag_hash,
            time_ms: r.store_timestamp_ms,
        };
        let Some(idx) = r.queue_offset.checked_sub(q.visible()) else {
            // Recovery re-dispatches records whose entries follow the log's last watermark.
            if q.entry(r.queue_offset) != Some(&entry) {
                self.refuse(
                    &r,
                    "dispatched record's queue offset is already taken; ignored",
                );
            }
            return;
        };
        let idx = idx as usize;
        if idx >= q.reserved.len() {
            // Only recovery places records nobody reserved in this run.
            q.reserved.resize(idx + 1, None);
        }
        if q.reserved[idx].is_some() {
            self.refuse(&r, "queue offset dispatched twice; ignored");
            return;
        }
        q.reserved[idx] = Some(entry);
        if idx > 0 {
            if let Some(p) = self.parked.borrow_mut().get_mut(r.source as usize) {
                p.park(r.cl_offset);
            }
            return;
        }
        self.settle(&r.topic, r.queue_id, q);
    }

    /// A dispatched record that cannot take its offset (a bug or a damaged store): said
    /// loudly, and the queue keeps what it has.
    fn refuse(&self, r: &DispatchRecord, why: &'static str) {
        tracing::error!(
            shard = self.shard,
            topic = &*r.topic,
            queue = r.queue_id,
            offset = r.queue_offset,
            source = r.source,
            cl_offset = r.cl_offset,
            "{why}"
        );
    }

    /// Moves the queue's filled reserved prefix into its visible entries and the log.
    fn settle(&self, topic: &str, queue_id: u32, q: &mut Queue) {
        let before = q.visible();
        while let Some(Some(_)) = q.reserved.front() {
            let Some(Some(mut e)) = q.reserved.pop_front() else {
                break;
            };
            let queue_offset = q.visible();
            if e.is_skip() {
                e.time_ms = q.last_time_ms();
            } else if let Some(p) = self.parked.borrow_mut().get_mut(e.source as usize) {
                p.settled(e.cl_offset);
            }
            q.entries.push_back(e);
            self.hot.count(1);
            if self.cq.failure().is_none() {
                let rec = record::EntryRef {
                    topic,
                    queue_id,
                    queue_offset,
                    source: e.source,
                    cl_offset: e.cl_offset,
                    size: e.size,
                    tag_hash: e.tag_hash,
                    time_ms: e.time_ms,
                };
                let at = self.cq.append(record::entry_len(topic), |pos, out| {
                    record::encode_entry(rec, pos, out)
                });
                if !e.is_skip() {
                    self.note_entry(at, e.source, e.cl_offset + e.size as u64);
                }
            }
        }
        if q.visible() > before {
            q.wake();
        }
    }

    /// Appends a watermark for every source whose mark rose: all its records below the mark
    /// are in the log.
    /// Appends every watermark, risen or not (before older segments holding the last ones
    /// are deleted).
    fn rewrite_marks(&self) {
        self.write_marks();
        if self.cq.failure().is_some() {
            return;
        }
        for (source, &mark) in self.marks.borrow().iter().enumerate() {
            self.cq.append(record::WATERMARK_LEN, |pos, out| {
                record::encode_watermark(source as u16, mark, pos, out)
            });
        }
    }

    fn write_marks(&self) {
        let received = self.received.borrow();
        let parked = self.parked.borrow();
        let mut marks = self.marks.borrow_mut();
        for (source, mark) in marks.iter_mut().enumerate() {
            let safe = parked[source]
                .first()
                .map_or(received[source], |p| p.min(received[source]));
            if safe > *mark && self.cq.failure().is_none() {
                *mark = safe;
                self.cq.append(record::WATERMARK_LEN, |pos, out| {
                    record::encode_watermark(source as u16, safe, pos, out)
                });
            }
        }
    }

    /// What a reader must wait for to see every offset reserved so far (`upto = None`), or the
    /// reserved offset `upto`: a receiver that fires once the queue shows it, or `None` if
    /// there is nothing in flight to wait for. Dispatch lags acknowledgement by one channel
    /// hop; waiting here gives readers the queue as of every put acknowledged before them.
    pub fn in_flight(
        &self,
        topic: &str,
        queue_id: u32,
        upto: Option<u64>,
    ) -> Option<flume::Receiver<bool>> {
        let (visible, next) = {
            let queues = self.queues.borrow();
            let q = queues.get(topic).and_then(|t| t.get(&queue_id))?;
            (q.visible(), q.next())
        };
        let want = match upto {
            Some(offset) if (visible..next).contains(&offset) => offset,
            Some(_) => return None,
            None if next > visible => next - 1,
            None => return None,
        };
        self.watch(topic, queue_id, want)
    }

    /// Drops each queue's leading entries (and skips) whose records lie below their source
    /// shard's published CommitLog minimum (`logs[source].min`): retention deleted them. The
    /// queue's minimum offset moves up; its offsets are not reused.
    pub fn trim_below(&self, logs: &[Arc<LogShared>]) {
        let mut queues = self.queues.borrow_mut();
        let mut released = Vec::new();
        for q in queues.values_mut().flat_map(|t| t.values_mut()) {
            self.hot.uncount(trim(q, logs, &mut released));
        }
        self.release_cold(released);
    }

    /// `trim_below` for one queue.
    pub fn trim_queue(&self, topic: &str, queue_id: u32, logs: &[Arc<LogShared>]) {
        if let Some(q) = self
            .queues
            .borrow_mut()
            .get_mut(topic)
            .and_then(|t| t.get_mut(&queue_id))
        {
            let mut released = Vec::new();
            self.hot.uncount(trim(q, logs, &mut released));
            self.release_cold(released);
        }
    }

    /// Registers interest in `(topic, queue)` passing `offset`; `None` if it already has.
    pub fn watch(&self, topic: &str, queue_id: u32, offset: u64) -> Option<flume::Receiver<bool>> {
        let mut queues = self.queues.borrow_mut();
        let q = queue_mut(&mut queues, topic, queue_id);
        if q.visible() > offset {
            return None;
        }
        let (tx, rx) = flume::bounded(1);
        q.waiters.push((offset, tx));
        Some(rx)
    }
}

/// Drops the queue's leading entries whose records lie below `mins[source]`, and the skips
/// among them: whole cold blocks first (their file positions go to `released`), then
/// entries in memory. Returns how many entries left memory.
fn trim(q: &mut Queue, logs: &[Arc<LogShared>], released: &mut Vec<u64>) -> usize {
    let min_of = |source: usize| {
        logs.get(source)
            .map_or(0, |l| l.min.load(Ordering::Acquire))
    };
    while let Some(b) = q.cold.front() {
        if !b.gone(min_of) {
            return 0;
        }
        released.push(b.pos);
        q.cold.pop_front();
        q.min = q.cold.front().map_or(q.hot_start, |n| n.first);
    }
    let gone = |e: &QueueEntry| {
        !e.is_skip()
            && logs
                .get(e.source as usize)
                .is_some_and(|l| e.cl_offset < l.min.load(Ordering::Acquire))
    };
    if !q.entries.front().is_some_and(gone) {
        return 0;
    }
    let mut dropped = 0;
    while q.entries.front().is_some_and(|e| e.is_skip() || gone(e)) {
        q.entries.pop_front();
        q.min += 1;
        q.hot_start += 1;
        dropped += 1;
    }
    dropped
}

/// One source's parked records, by CommitLog offset. They arrive in CommitLog order (a
/// source dispatches in order), so they are pushed at the back; they settle in any order, and
/// settled ones leave from the front.
#[derive(Debug, Default)]
pub struct Parked {
    records: VecDeque<(u64, bool)>,
}

impl Parked {
    fn park(&mut self, cl_offset: u64) {
        debug_assert!(self
            .records
            .back()
            .is_none_or(|&(last, _)| last < cl_offset));
        self.records.push_back((cl_offset, false));
    }

    fn settled(&mut self, cl_offset: u64) {
        if let Ok(i) = self.records.binary_search_by_key(&cl_offset, |&(o, _)| o) {
            self.records[i].1 = true;
        }
        while self.records.front().is_some_and(|&(_, done)| done) {
            self.records.pop_front();
        }
    }

    /// The lowest parked offset.
    fn first(&self) -> Option<u64> {
        self.records.front().map(|&(o, _)| o)
    }
}

fn queue_mut<'a>(queues: &'a mut QueueMap, topic: &str, queue_id: u32) -> &'a mut Queue {
    queues
        .entry_ref(topic)
        .or_default()
        .entry(queue_id)
        .or_default()
}
