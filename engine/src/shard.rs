//! One shard: the state its executor owns and the tasks that drive it.
//!
//! *As a source* it reserves each put's queue offsets from the owners of its queues, appends
//! the records (offsets included) to its CommitLog and, once their bytes are written
//! (ASYNC_FLUSH) or flushed (SYNC_FLUSH), answers the puts and dispatches the records to
//! their owners. *As an owner* it answers reservations and takes dispatch batches from every
//! source into its ConsumeQueues.
//! Only the shard's own executor touches this state; other threads send requests and read
//! the published [`LogShared`] atomics.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::catalog::TopicView;
use crate::config::{AsyncAck, FlushMode, StoreConfig};
use crate::consumequeue::read::ClReader;
use crate::consumequeue::ConsumeQueues;
use crate::dispatch::{
    push_run, DispatchBatch, DispatchRecord, DropTopic, Intake, OwnerInbox, OwnerLink, Reply,
    Reserve, Run, Sink, Slot,
};
use crate::error::PutError;
use crate::filter::tag_hash;
use crate::log::recovery::SealedPolicy;
use crate::log::zerofill::ZeroAhead;
use crate::log::{FlushPolicy, Log, LogSpec, NoSpace};
use crate::meta::{queue_shard, FnvBuild};
use crate::oneshot;
use crate::put::{PutResult, PutStatus};
use crate::record::{self, encoded_len, MessageInput, StoreStamp};
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

    pub fn as_mut_slice(&mut self) -> &mut [MessageInput] {
        match self {
            Puts::One(m) => std::slice::from_mut(m),
            Puts::Many(ms) => ms,
        }
    }
}

/// The encoded sizes of a put's messages (one needs no allocation).
pub enum Sizes {
    One(usize),
    Many(Vec<usize>),
}

impl Sizes {
    pub fn as_slice(&self) -> &[usize] {
        match self {
            Sizes::One(n) => std::slice::from_ref(n),
            Sizes::Many(v) => v,
        }
    }

    pub fn total(&self) -> usize {
        self.as_slice().iter().sum()
    }
}

/// A put waiting for its queue offsets (a round of reservations is out).
struct Staged {
    msgs: Puts,
    sizes: Sizes,
    sink: Sink,
    deadline: Option<Instant>,
}

/// Puts whose offsets were asked for, in arrival order.
struct Round {
    puts: VecDeque<Staged>,
    /// Per message: (owner, run, index in run).
    places: Vec<(usize, usize, u32)>,
    /// Per owner: the first offset of each run, once answered.
    firsts: Vec<Vec<u64>>,
    asks: Vec<(usize, oneshot::Receiver<Vec<u64>>)>,
    lost: bool,
}

/// An owner that gets no records from this source's writes is still sent its progress (the
/// watermark recovery re-dispatches from) once it lags this far, so it lags at most this
/// much, and a group write wakes only the shards it has records for.
const MARK_STRIDE_BYTES: u64 = 4 << 20;

/// Rounds started ahead of the one being appended.
const ROUNDS_AHEAD_MAX: usize = 2;

/// What a shard counts for others to read (each counter written by its shard only, so no
/// cache line is shared on the hot path until someone reads it).
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Messages this shard sent to another shard: reservations and their answers, dispatch
    /// batches, abandoned offsets, and requests its thread handed to another shard (reads,
    /// waits).
    pub cross_shard_sends: AtomicU64,
}

impl ShardCounters {
    pub(crate) fn hop(&self) {
        self.cross_shard_sends.fetch_add(1, Ordering::Relaxed);
    }
}

/// An appended record waiting to be acknowledged and dispatched.
struct Pending {
    end: u64,
    record: DispatchRecord,
    /// On a put's last record.
    reply: Option<Reply>,
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
    /// Disk use while it is at or above the refuse ratio: puts are refused.
    disk_full: Cell<Option<f64>>,
    /// Puts waiting for a round of reservations, in arrival order.
    staged: RefCell<VecDeque<Staged>>,
    /// Rounds started, waiting for their answers, in order.
    rounds: RefCell<VecDeque<Round>>,
    /// A round is being finished (appended).
    reserving: Cell<bool>,
    /// Emptied staging buffers (with their capacity), for the next rounds: one per round
    /// in flight, so a staging buffer never starts from nothing and regrows.
    spares: RefCell<Vec<VecDeque<Staged>>>,
    /// Rounds the stager began and the appender finished (a delete waits for the rounds
    /// holding puts accepted before it; rounds finish in the order they begin).
    rounds_begun: Cell<u64>,
    rounds_done: Cell<u64>,
    /// Something was staged, or a round started or ended.
    staged_event: LocalEvent,
    /// Appended records waiting for their write or flush, in CommitLog order.
    pending: RefCell<VecDeque<Pending>>,
    /// `end` of the newest pending put whose answer waits for its write (or flush), and the
    /// `end` of the last record dispatched: while the first is past the second, an answer is
    /// waiting, and a put acknowledged at append would overtake it.
    reply_waiting_end: Cell<u64>,
    dispatched_end: Cell<u64>,
    /// Per owner: the `upto` of the last dispatch batch sent to it.
    marks_sent: RefCell<Vec<u64>>,
    pub(crate) counters: Arc<ShardCounters>,
    /// One link per owner shard (this one included).
    links: Vec<OwnerLink>,
    /// Topic names shared by dispatch records.
    topics: RefCell<HashMap<String, Arc<str>, FnvBuild>>,
    /// The topic table as this shard last saw it: puts are checked against it.
    catalog: TopicView,
    /// The intake task is handling a message.
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
        zero_ahead: config
            .zero_fill_ahead
            .unwrap_or(config.flush_mode == FlushMode::Sync)
            .then(ZeroAhead::default),
        step: Rc::new(record::scan_step),
        sealed: SealedPolicy::Refuse,
    }
}

impl Shard {
    /// Assembles a recovered shard and starts its tasks.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: usize,
        config: Arc<StoreConfig>,
        cl: Rc<Log>,
        cqs: Rc<ConsumeQueues>,
        reader: ClReader,
        links: Vec<OwnerLink>,
        inbox: OwnerInbox,
        catalog: TopicView,
        counters: Arc<ShardCounters>,
    ) -> Rc<Shard> {
        let shard = Rc::new(Shard {
            id,
            store_host: reader.store_host,
            config,
            cl,
            cqs,
            reader,
            closing: Cell::new(false),
            disk_full: Cell::new(None),
            staged: RefCell::default(),
            rounds: RefCell::default(),
            reserving: Cell::new(false),
            spares: RefCell::default(),
            rounds_begun: Cell::new(0),
            rounds_done: Cell::new(0),
            staged_event: LocalEvent::default(),
            pending: RefCell::default(),
            reply_waiting_end: Cell::new(0),
            dispatched_end: Cell::new(0),
            marks_sent: RefCell::new(vec![0; links.len()]),
            counters,
            links,
            topics: RefCell::default(),
            catalog,
            intake_busy: Cell::new(false),
            intake_idle: LocalEvent::default(),
        });
        // Spawned through the logs so that stopping them cancels these too (they hold the
        // shard, which holds the logs).
        shard.cl.spawn(dispatcher(shard.clone()));
        shard.cl.spawn(stager(shard.clone()));
        shard.cl.spawn(appender(shard.clone()));
        shard.cqs.cq.spawn(intake_loop(shard.clone(), inbox.intake));
        // Other shards wait for these answers before they can append: answer within a
        // millisecond even while this shard is busy.
        shard.cqs.cq.spawn_urgent(
            "reservations",
            Duration::from_millis(1),
            reserver(shard.clone(), inbox.reserve),
        );
        shard.cqs.cq.spawn(stop_with_queues(shard.clone()));
        shard
            .cqs
            .cq
            .spawn(crate::consumequeue::spill::spiller(shard.cqs.clone()));
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

    /// A round is started or being appended: new puts must queue behind it.
    fn rounds_busy(&self) -> bool {
        self.reserving.get() || !self.rounds.borrow().is_empty()
    }

    fn owners(&self) -> usize {
        self.links.len()
    }

    fn dispatch_on_flush(&self) -> bool {
        self.config.flush_mode == FlushMode::Sync
    }

    /// Why appends cannot go on, if they cannot.
    fn log_down(&self) -> Option<PutError> {
        if let Some(reason) = self.cl.failure() {
            return Some(PutError::ShardFailed {
                shard: self.id,
                reason,
            });
        }
        self.cl.stopped().then_some(PutError::ShuttingDown)
    }

    fn check_open(&self) -> Result<(), PutError> {
        match self.log_down() {
            Some(e) => Err(e),
            None if self.closing.get() => Err(PutError::ShuttingDown),
            None => match self.disk_full.get() {
                Some(ratio) => Err(PutError::DiskFull {
                    shard: self.id,
                    used_percent: (ratio * 100.0).floor() as u32,
                }),
                None => self.space_check(),
            },
        }
    }

    /// Refuses puts while either log waits for space for a new segment: what is accepted
    /// would only wait behind it (and, for the ConsumeQueue log, grow its memory).
    fn space_check(&self) -> Result<(), PutError> {
        let waiting = self.cl.no_space().or_else(|| self.cqs.cq.no_space());
        match waiting {
            Some(n) => Err(PutError::NoSpace {
                shard: self.id,
                log: n.log,
                kind: n.kind,
                reason: n.reason,
            }),
            None => Ok(()),
        }
    }

    /// Set by the cleaner: `Some(disk use)` refuses puts until it is cleared. `reading` is
    /// the disk use this pass read, for the log.
    pub(crate) fn set_disk_full(&self, ratio: Option<f64>, reading: f64) {
        if ratio.is_some() != self.disk_full.get().is_some() {
            tracing::warn!(
                shard = self.id,
                disk_used = reading,
                "disk guard: puts {}",
                if ratio.is_some() {
                    "refused"
                } else {
                    "accepted again"
                }
            );
        }
        self.disk_full.set(ratio);
    }

    pub(crate) fn disk_full(&self) -> Option<f64> {
        self.disk_full.get()
    }

    /// Validates a put and returns its encoded sizes.
    pub fn sizes(&self, msgs: &Puts) -> Result<Sizes, PutError> {
        let max = self.config.message_size_max_bytes;
        let size = |m: &MessageInput| {
            let len = encoded_len(m)?;
            if len > max {
                return Err(PutError::MessageTooLarge { size: len, max });
            }
            Ok(len)
        };
        match msgs {
            Puts::One(m) => size(m).map(Sizes::One),
            Puts::Many(ms) => ms
                .iter()
                .map(size)
                .collect::<Result<_, _>>()
                .map(Sizes::Many),
        }
    }

    /// Checks every message's topic and queue against the topic table (auto-creating missing
    /// topics by the store's policy): the topic must take writes and the queue id be below its
    /// write queue count.
    fn admit(&self, msgs: &Puts) -> Result<(), PutError> {
        let mut last: Option<(&str, u32)> = None;
        for m in msgs.as_slice() {
            let key = Some((m.topic.as_str(), m.queue_id));
            if last != key {
                self.catalog.admit(&m.topic, m.queue_id)?;
                last = key;
            }
        }
        Ok(())
    }

    /// Checks that a consumer may read `(topic, queue_id)` (RocketMQ's pull checks: the
    /// topic is readable, the queue one of its read queues).
    pub fn admit_read(&self, topic: &str, queue_id: u32) -> Result<(), crate::error::ReadError> {
        use crate::catalog::ReadRefused;
        use crate::error::ReadError;
        self.catalog
            .admit_read(topic, queue_id)
            .map_err(|refused| match refused {
                ReadRefused::NoPermission(perm) => ReadError::NoPermission {
                    topic: topic.to_owned(),
                    perm,
                },
                ReadRefused::QueueIdOutOfRange(read_queues) => ReadError::QueueIdOutOfRange {
                    topic: topic.to_owned(),
                    queue_id,
                    read_queues,
                },
            })
    }

    /// The topic's name shared by this shard's dispatch records (interned: one allocation per
    /// topic, not per record).
    fn intern(&self, topic: &str) -> Arc<str> {
        let mut topics = self.topics.borrow_mut();
        if let Some(t) = topics.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        topics.insert(topic.to_owned(), t.clone());
        t
    }

    /// Appends a put's messages contiguously once their queue offsets are reserved; `sink` is
    /// answered once every record is written (ASYNC_FLUSH) or flushed (SYNC_FLUSH). Nothing is
    /// appended (and the sink is failed) if any message is invalid or the write buffer is full.
    pub fn put(&self, msgs: Puts, sink: Sink) {
        let sizes = match self.check_open().and_then(|()| self.sizes(&msgs)) {
            Ok(s) => s,
            Err(e) => return sink.fail(e),
        };
        self.put_sized(msgs, sizes, sink);
    }

    /// `put` of messages whose sizes are checked; checks their topics and queues.
    pub fn put_sized(&self, msgs: Puts, sizes: Sizes, sink: Sink) {
        if let Err(e) = self.check_open().and_then(|()| self.admit(&msgs)) {
            return sink.fail(e);
        }
        if !self.cl.has_room(sizes.total()) {
            return sink.fail(PutError::Busy { shard: self.id });
        }
        let deadline = self
            .dispatch_on_flush()
            .then(|| Instant::now() + self.config.sync_flush_timeout());
        let staged = Staged {
            msgs,
            sizes,
            sink,
            deadline,
        };
        let msgs = staged.msgs.as_slice();
        let all_local = msgs.iter().all(|m| self.owns(m));
        // Order only matters per queue: a put whose queues are all this shard's goes at once
        // unless an earlier put of this shard to one of them still waits in a round.
        let queued = self.rounds_busy() || !self.staged.borrow().is_empty();
        let now = all_local
            && (!queued
                || self
                    .cqs
                    .none_staged(msgs.iter().map(|m| (m.topic.as_str(), m.queue_id))));
        if !now {
            self.count_staged(msgs, true);
            self.staged.borrow_mut().push_back(staged);
            self.staged_event.notify();
            return;
        }
        // Every queue is this shard's and nothing is queued ahead on them: reserve and
        // append now.
        match &staged.msgs {
            Puts::One(m) => {
                let offset = self.cqs.reserve_one(&m.topic, m.queue_id);
                self.append(staged, &[offset], now_ms());
            }
            Puts::Many(ms) => {
                let mut runs = Vec::new();
                let places: Vec<_> = ms
                    .iter()
                    .map(|m| push_run(&mut runs, &m.topic, m.queue_id))
                    .collect();
                let firsts = self.cqs.reserve(&runs);
                let offsets: Vec<u64> = places.iter().map(|&(r, k)| firsts[r] + k as u64).collect();
                self.append(staged, &offsets, now_ms());
            }
        }
        self.cl.kick();
    }

    fn owns(&self, m: &MessageInput) -> bool {
        queue_shard(&m.topic, m.queue_id, self.owners()) == self.id
    }

    /// Counts a staged put's messages to this shard's own queues in or out of a round.
    fn count_staged(&self, msgs: &[MessageInput], staged: bool) {
        for m in msgs.iter().filter(|m| self.owns(m)) {
            self.cqs.count_staged(&m.topic, m.queue_id, staged);
        }
    }

    /// Starts a round: asks each other owner for the offsets of the round's queues (one
    /// message per owner) and reserves this shard's own. Rounds are answered in the order
    /// they start (the channels are FIFO), so a round may start while the one before still
    /// waits for its answers.
    fn start_round(&self, puts: VecDeque<Staged>) -> Round {
        let owners = self.owners();
        let mut runs: Vec<Vec<Run>> = (0..owners).map(|_| Vec::new()).collect();
        // One run per queue in the round (its messages keep their order within it).
        let mut index: HashMap<(&str, u32), (usize, usize), FnvBuild> = HashMap::default();
        let mut places = Vec::new();
        for m in puts.iter().flat_map(|s| s.msgs.as_slice()) {
            let (owner, run) = *index.entry((&m.topic, m.queue_id)).or_insert_with(|| {
                let owner = queue_shard(&m.topic, m.queue_id, owners);
                runs[owner].push(Run {
                    topic: m.topic.clone(),
                    queue_id: m.queue_id,
                    count: 0,
                });
                (owner, runs[owner].len() - 1)
            });
            let r = &mut runs[owner][run];
            let k = r.count;
            r.count += 1;
            places.push((owner, run, k));
        }
        let mut firsts: Vec<Vec<u64>> = (0..owners).map(|_| Vec::new()).collect();
        let mut asks = Vec::new();
        let mut lost = false;
        for (owner, runs) in runs.iter_mut().enumerate() {
            if owner == self.id || runs.is_empty() {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let ask = Reserve {
                runs: std::mem::take(runs),
                reply: tx,
            };
            self.count_hop(owner);
            if self.links[owner].reserve.send(ask).is_ok() {
                asks.push((owner, rx));
            } else {
                lost = true;
            }
        }
        if !runs[self.id].is_empty() {
            firsts[self.id] = self.cqs.reserve(&runs[self.id]);
        }
        Round {
            puts,
            places,
            firsts,
            asks,
            lost,
        }
    }

    /// Finishes a round: waits for its owners' answers, then appends its puts in order. If
    /// the round cannot finish, its puts fail and whatever was reserved is given back as
    /// skips.
    async fn finish_round(&self, round: Round) {
        let Round {
            mut puts,
            places,
            mut firsts,
            asks,
            mut lost,
        } = round;
        for (owner, rx) in asks {
            match rx.await {
                Some(f) => firsts[owner] = f,
                None => lost = true,
            }
        }
        let down = self.log_down().or(lost.then_some(PutError::ShuttingDown));
        if let Some(err) = down {
            self.fail_round(puts, &places, &firsts, err);
            return;
        }
        let now_ms = now_ms();
        let mut at = 0;
        let mut since_yield = 0;
        let mut offsets = Vec::new();
        loop {
            // The log may have failed while this round yielded: its dispatcher has answered
            // what was pending and gone, so nothing more may be appended (it would wait
            // forever); the rest of the round fails and gives its offsets back.
            if let Some(err) = self.log_down() {
                self.fail_round(puts, &places[at..], &firsts, err);
                return;
            }
            let Some(staged) = puts.pop_front() else {
                break;
            };
            let n = staged.sizes.as_slice().len();
            offsets.clear();
            offsets.extend(
                places[at..at + n]
                    .iter()
                    .map(|&(owner, run, k)| firsts[owner][run] + k as u64),
            );
            at += n;
            self.count_staged(staged.msgs.as_slice(), false);
            self.append(staged, &offsets, now_ms);
            since_yield += n;
            if since_yield >= APPLY_SLICE && !puts.is_empty() {
                // Let the writer start on what is appended, and other shards' requests in.
                since_yield = 0;
                self.cl.kick();
                futures_lite::future::yield_now().await;
            }
        }
        self.cl.kick();
        let mut spares = self.spares.borrow_mut();
        if spares.len() <= ROUNDS_AHEAD_MAX {
            spares.push(puts);
        }
    }

    /// Fails a round's puts that were not appended (`places` are theirs, in order) and gives
    /// their reserved offsets back as skips.
    fn fail_round(
        &self,
        mut puts: VecDeque<Staged>,
        places: &[(usize, usize, u32)],
        firsts: &[Vec<u64>],
        err: PutError,
    ) {
        let mut slots = Vec::new();
        let msgs = puts.iter().flat_map(|s| s.msgs.as_slice());
        for (m, &(owner, run, k)) in msgs.zip(places.iter()) {
            if let Some(first) = firsts[owner].get(run) {
                slots.push(Slot {
                    topic: m.topic.clone(),
                    queue_id: m.queue_id,
                    queue_offset: first + k as u64,
                });
            }
        }
        for s in puts.drain(..) {
            self.count_staged(s.msgs.as_slice(), false);
            s.sink.fail(err.clone());
        }
        self.abandon(slots);
    }

    /// Fails every staged put (the log stopped taking writes, so no round will take them).
    fn fail_staged(&self) {
        let err = self.log_down().unwrap_or(PutError::ShuttingDown);
        let staged = std::mem::take(&mut *self.staged.borrow_mut());
        for s in staged {
            self.count_staged(s.msgs.as_slice(), false);
            s.sink.fail(err.clone());
        }
        self.staged_event.notify();
    }

    /// Appends a put's records with their reserved queue offsets.
    fn append(&self, staged: Staged, offsets: &[u64], now_ms: i64) {
        let Staged {
            msgs,
            sizes,
            sink,
            deadline,
        } = staged;
        debug_assert_eq!(offsets.len(), sizes.as_slice().len());
        let mut pending = self.pending.borrow_mut();
        let mut topic: Option<Arc<str>> = None;
        let mut append_one = |msg: &MessageInput, len: usize, queue_offset: u64| {
            let offset = self.cl.append(len, |offset, out| {
                let stamp = StoreStamp {
                    physical_offset: offset,
                    queue_offset,
                    store_timestamp_ms: now_ms,
                    store_host: self.store_host,
                };
                record::encode(msg, &stamp, out);
            });
            let topic = match &topic {
                Some(t) if **t == *msg.topic => t.clone(),
                _ => topic.insert(self.intern(&msg.topic)).clone(),
            };
            pending.push_back(Pending {
                end: offset + len as u64,
                record: DispatchRecord {
                    topic,
                    queue_id: msg.queue_id,
                    queue_offset,
                    source: self.id as u16,
                    cl_offset: offset,
                    size: len as u32,
                    tag_hash: tag_hash(msg.tags.as_deref()),
                    store_timestamp_ms: crate::schedule::plan::entry_time(
                        &msg.topic,
                        msg.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                        now_ms,
                    ),
                },
                reply: None,
            });
            PutResult {
                status: PutStatus::PutOk,
                shard: self.id,
                offset,
                size: len as u32,
                store_timestamp_ms: now_ms,
                queue_offset: Some(queue_offset),
            }
        };
        let reply = match (msgs, sink) {
            (Puts::One(msg), Sink::One(tx)) => Reply::One {
                result: append_one(&msg, sizes.as_slice()[0], offsets[0]),
                tx,
                deadline,
            },
            (msgs, sink) => {
                let results = msgs
                    .as_slice()
                    .iter()
                    .zip(sizes.as_slice())
                    .zip(offsets)
                    .map(|((msg, &len), &q)| append_one(msg, len, q))
                    .collect();
                match sink {
                    Sink::Batch(tx) => Reply::Many {
                        results,
                        tx,
                        deadline,
                    },
                    // `Store` pairs a single-message sink with `Puts::One`; answer with the
                    // last result should that ever change.
                    Sink::One(tx) => {
                        let mut results: Vec<PutResult> = results;
                        match results.pop() {
                            Some(result) => Reply::One {
                                result,
                                tx,
                                deadline,
                            },
                            None => return tx.send(Err(PutError::ShuttingDown)),
                        }
                    }
                }
            }
        };
        if self.acks_on_append() {
            reply.complete(PutStatus::PutOk);
        } else if let Some(last) = pending.back_mut() {
            self.reply_waiting_end.set(last.end);
            last.reply = Some(reply);
        }
    }

    /// Whether `topic` exists, from this shard's snapshot of the topic table.
    pub(crate) fn topic_exists(&self, topic: &str) -> bool {
        self.catalog.exists(topic)
    }

    fn count_hop(&self, to: usize) {
        if to != self.id {
            self.counters.hop();
        }
    }

    /// Whether a put just appended is acknowledged now (`AsyncAck::Appended`): under
    /// ASYNC_FLUSH, with at most half the write buffer unwritten, and no earlier answer still
    /// waiting (puts are acknowledged in offset order).
    fn acks_on_append(&self) -> bool {
        self.config.async_ack == AsyncAck::Appended
            && self.config.flush_mode == FlushMode::Async
            && self.cl.unwritten_bytes() <= self.config.write_buffer_max_bytes as u64 / 2
            && self.reply_waiting_end.get() <= self.dispatched_end.get()
    }

    /// Answers every pending put the CommitLog's progress covers and sends its records to
    /// their owners.
    fn dispatch_ready(&self) {
        self.dispatch(false);
    }

    /// [`dispatch_ready`](Self::dispatch_ready), and every owner is told how far this source
    /// has dispatched, records or not (shutdown, topic deletes).
    fn dispatch_all(&self) {
        self.dispatch(true);
    }

    fn dispatch(&self, every_owner: bool) {
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
                if let Some(reply) = p.reply.take() {
                    reply.complete(PutStatus::PutOk);
                }
            }
        }
        if pending.front().is_none_or(|p| p.end > upto) && !every_owner {
            return;
        }
        let owners = self.owners();
        let ready = pending.partition_point(|p| p.end <= upto);
        let share = ready / owners + ready / 8 + 1;
        let mut batches: Vec<Vec<DispatchRecord>> =
            (0..owners).map(|_| Vec::with_capacity(share)).collect();
        let mut replies = Vec::with_capacity(ready);
        let mut mark = self.dispatched_end.get();
        while pending.front().is_some_and(|p| p.end <= upto) {
            let Some(p) = pending.pop_front() else { break };
            mark = p.end;
            replies.extend(p.reply);
            batches[queue_shard(&p.record.topic, p.record.queue_id, owners)].push(p.record);
        }
        drop(pending);
        self.dispatched_end.set(mark);
        let mut sent = self.marks_sent.borrow_mut();
        for (owner, records) in batches.into_iter().enumerate() {
            // An owner with no records from this write is not woken for the mark alone,
            // unless it lags MARK_STRIDE_BYTES behind (or everyone must hear a moved mark).
            let behind = mark.saturating_sub(sent[owner]);
            let stride = if every_owner { 1 } else { MARK_STRIDE_BYTES };
            if records.is_empty() && behind < stride {
                continue;
            }
            sent[owner] = mark;
            self.count_hop(owner);
            let batch = DispatchBatch {
                source: self.id as u16,
                upto: mark,
                records,
            };
            // An owner that is gone is shutting down or crashed: recovery re-dispatches.
            let _ = self.links[owner].intake.send(Intake::Dispatch(batch));
        }
        // Answered after the records went to their owners, so that readers rarely have to
        // wait for them (see `ConsumeQueues::in_flight`).
        for reply in replies {
            reply.complete(PutStatus::PutOk);
        }
    }

    /// Gives reserved offsets back to their owners as skips.
    fn abandon(&self, slots: Vec<Slot>) {
        if slots.is_empty() {
            return;
        }
        let owners = self.owners();
        let mut by_owner: Vec<Vec<Slot>> = (0..owners).map(|_| Vec::new()).collect();
        for s in slots {
            by_owner[queue_shard(&s.topic, s.queue_id, owners)].push(s);
        }
        for (owner, slots) in by_owner.into_iter().enumerate() {
            if !slots.is_empty() {
                self.count_hop(owner);
                let _ = self.links[owner].intake.send(Intake::Abandon(slots));
            }
        }
    }

    /// The CommitLog failed: no pending put is acknowledged, and their offsets are given back.
    fn fail_pending(&self, reason: String) {
        let err = PutError::ShardFailed {
            shard: self.id,
            reason,
        };
        self.fail_pending_from(0, err);
    }

    /// Shutdown gave up on the records waiting for space (they will never be written): their
    /// puts are refused, their offsets given back. Those written go on as usual.
    fn fail_unwritten(&self, no_space: NoSpace) {
        let written = self.cl.written();
        let first = self.pending.borrow().partition_point(|p| p.end <= written);
        let unwritten = self.pending.borrow().len() - first;
        tracing::warn!(shard = self.id, records = unwritten, reason = %no_space.reason,
            "shutdown: records waiting for space are dropped, their puts refused");
        let err = PutError::NoSpace {
            shard: self.id,
            log: no_space.log,
            kind: no_space.kind,
            reason: no_space.reason,
        };
        self.fail_pending_from(first, err);
    }

    /// Fails the pending puts from index `first` on and gives their offsets back.
    fn fail_pending_from(&self, first: usize, err: PutError) {
        let mut slots = Vec::new();
        for p in self.pending.borrow_mut().drain(first..) {
            if let Some(reply) = p.reply {
                reply.fail(err.clone());
            }
            slots.push(Slot {
                topic: p.record.topic.to_string(),
                queue_id: p.record.queue_id,
                queue_offset: p.record.queue_offset,
            });
        }
        self.abandon(slots);
    }

    fn expire(&self, now: Instant) {
        for p in self.pending.borrow_mut().iter_mut() {
            if p.reply
                .as_ref()
                .is_some_and(|r| r.deadline().is_some_and(|d| d <= now))
            {
                if let Some(reply) = p.reply.take() {
                    reply.complete(PutStatus::FlushDiskTimeout);
                }
            }
        }
    }

    /// A topic delete, source side: every put accepted before this call is appended, written
    /// and flushed (under ASYNC_FLUSH too: a delete's record in a ConsumeQueue log must never
    /// point past a CommitLog a power cut could shorten), and its records are sent to their
    /// owners. Returns the CommitLog end this covers. Unlike `shutdown_sources`, puts keep
    /// coming meanwhile and nothing waits for them.
    pub async fn dispatch_accepted(&self) -> Result<u64, String> {
        // The puts staged now run in the current round (if one is out) or the next.
        let rounds = self.rounds_begun.get() + u64::from(!self.staged.borrow().is_empty());
        loop {
            let generation = self.staged_event.generation();
            if self.cl.stopped() || self.rounds_done.get() >= rounds {
                break;
            }
            self.staged_event.wait_past(generation).await;
        }
        let end = self.cl.append_offset();
        self.cl.kick();
        let written = self.cl.wait_written(end).await;
        if let Some(e) = self.log_down() {
            return Err(e.to_string());
        }
        if !written {
            // Waiting for space: the delete fails now and is retried, rather than hang.
            return Err(self.space_check().err().map_or_else(
                || "the CommitLog stopped before it was written".into(),
                |e| e.to_string(),
            ));
        }
        if self.cl.flushed() < end {
            self.cl
                .flush_once()
                .await
                .map_err(|_| self.cl.failure().unwrap_or_default())?;
        }
        self.dispatch_all();
        Ok(end)
    }

    /// A topic delete, owner side: queued behind every dispatch batch received so far.
    pub fn drop_topic(&self, drop: DropTopic) {
        if let Err(flume::SendError(Intake::DropTopic(drop))) =
            self.links[self.id].intake.send(Intake::DropTopic(drop))
        {
            let _ = drop.reply.send(Err("the shard is stopping".into()));
        }
    }

    /// Handles a delete in the intake: every batch sent before it is applied.
    async fn apply_drop_topic(&self, drop: DropTopic) {
        let cq = &self.cqs.cq;
        cq.wait_for_room(self.cqs.drop_bytes(&drop.topic)).await;
        let end = self
            .cqs
            .drop_topic(&drop.topic, drop.generation, &drop.upto);
        let written = cq.wait_written(end).await;
        let flushed = match cq.failure() {
            Some(reason) => Err(reason),
            None if !written && cq.waiting_for_space() => Err(format!(
                "its ConsumeQueue log waits for space: {}",
                cq.no_space().map(|n| n.reason).unwrap_or_default()
            )),
            None if !written => Err("the shard is stopping".into()),
            None => cq
                .flush_once()
                .await
                .map_err(|_| cq.failure().unwrap_or_default()),
        };
        let _ = drop.reply.send(flushed);
    }

    /// Shutdown, first step (on every shard before the second): no new puts; everything
    /// accepted is appended, written, flushed and dispatched.
    pub async fn shutdown_sources(&self) -> Result<(), String> {
        self.closing.set(true);
        loop {
            let generation = self.staged_event.generation();
            if self.cl.stopped() || (!self.rounds_busy() && self.staged.borrow().is_empty()) {
                break;
            }
            self.staged_event.wait_past(generation).await;
        }
        if let Some(no_space) = self.cl.drain_for_shutdown().await? {
            self.fail_unwritten(no_space);
        }
        self.cl
            .flush_once()
            .await
            .map_err(|_| self.cl.failure().unwrap_or_default())?;
        self.dispatch_all();
        Ok(())
    }

    /// Shutdown, second step: every dispatched entry is applied and flushed, checkpoints
    /// written, tasks stopped.
    pub async fn shutdown_owner(&self, intake: &flume::Receiver<Intake>) -> Result<(), String> {
        loop {
            let generation = self.intake_idle.generation();
            if intake.is_empty() && !self.intake_busy.get() {
                break;
            }
            self.intake_idle.wait_past(generation).await;
        }
        let cq = &self.cqs.cq;
        if let Some(no_space) = cq.drain_for_shutdown().await? {
            // An index: the next open rebuilds what is missing from the CommitLogs.
            tracing::warn!(shard = self.id, reason = %no_space.reason,
                "shutdown: ConsumeQueue entries left unwritten for lack of space; the next open rebuilds them");
        }
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
        self.staged_event.notify();
    }

    /// After `stop`: waits for what is still in flight, then closes every file.
    pub async fn quiesce(&self) {
        self.cl.quiesce().await;
        self.cqs.cq.quiesce().await;
        self.reader.close_files().await;
        self.cl.close_files().await;
        self.cqs.cq.close_files().await;
        if let Some(cold) = &self.cqs.cold {
            cold.close().await;
        }
    }
}

/// The store time: milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Starts a round of reservations whenever puts are staged, up to `ROUNDS_AHEAD_MAX` ahead
/// of the appender.
async fn stager(shard: Rc<Shard>) {
    loop {
        let generation = shard.staged_event.generation();
        let ready =
            !shard.staged.borrow().is_empty() && shard.rounds.borrow().len() < ROUNDS_AHEAD_MAX;
        if shard.cl.stopped() {
            // No round may start any more (the appender fails those already out): answer what
            // is staged, which would otherwise wait forever when the rounds were full.
            shard.fail_staged();
            return;
        }
        if !ready {
            shard.staged_event.wait_past(generation).await;
            continue;
        }
        // Swapped, not moved: an emptied round's buffer becomes the next staging buffer.
        let puts = std::mem::replace(
            &mut *shard.staged.borrow_mut(),
            shard.spares.borrow_mut().pop().unwrap_or_default(),
        );
        shard.rounds_begun.set(shard.rounds_begun.get() + 1);
        let round = shard.start_round(puts);
        shard.rounds.borrow_mut().push_back(round);
        shard.staged_event.notify();
    }
}

/// Finishes rounds in the order they started.
async fn appender(shard: Rc<Shard>) {
    loop {
        let generation = shard.staged_event.generation();
        let Some(round) = shard.rounds.borrow_mut().pop_front() else {
            if shard.cl.stopped() {
                return;
            }
            shard.staged_event.wait_past(generation).await;
            continue;
        };
        shard.reserving.set(true);
        shard.finish_round(round).await;
        shard.rounds_done.set(shard.rounds_done.get() + 1);
        shard.reserving.set(false);
        shard.staged_event.notify();
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

/// Records applied (or puts appended) between yields.
const APPLY_SLICE: usize = 256;

/// Answers reservations and applies dispatch batches from every source, waiting for room in
/// the ConsumeQueue log.
async fn intake_loop(shard: Rc<Shard>, rx: flume::Receiver<Intake>) {
    while let Ok(msg) = rx.recv_async().await {
        shard.intake_busy.set(true);
        match msg {
            Intake::Dispatch(batch) => {
                // In slices, yielding between them, so that a big batch does not hold up the
                // shard's other work (reservations other shards are waiting for above all).
                let (source, upto) = (batch.source, batch.upto);
                let mut records = batch.records;
                loop {
                    let rest = records.split_off(records.len().min(APPLY_SLICE));
                    let last = rest.is_empty();
                    let need = shard.cqs.batch_bytes(&records);
                    shard.cqs.cq.wait_for_room(need).await;
                    shard.cqs.apply(DispatchBatch {
                        source,
                        upto: if last { upto } else { 0 },
                        records,
                    });
                    if last {
                        break;
                    }
                    records = rest;
                    futures_lite::future::yield_now().await;
                }
            }
            Intake::Abandon(slots) => {
                let need = shard.cqs.batch_bytes(&[]) * (1 + slots.len());
                shard.cqs.cq.wait_for_room(need).await;
                shard.cqs.abandon(slots);
            }
            // Deletes are rare: the intake waits for this one's flush rather than reorder.
            Intake::DropTopic(drop) => shard.apply_drop_topic(drop).await,
        }
        shard.intake_busy.set(false);
        shard.intake_idle.notify();
    }
}

/// Answers reservations from every source as they come.
async fn reserver(shard: Rc<Shard>, rx: flume::Receiver<Reserve>) {
    while let Ok(Reserve { runs, reply }) = rx.recv_async().await {
        // Reservations come only from other shards: the answer crosses back.
        shard.counters.hop();
        reply.send(shard.cqs.reserve(&runs));
    }
}

/// A ConsumeQueue log I/O error stops the shard's puts too: the shard stops taking writes and
/// says why, as for its CommitLog.
async fn stop_with_queues(shard: Rc<Shard>) {
    shard.cqs.cq.wait_until(|_| false).await;
    if let Some(reason) = shard.cqs.cq.failure() {
        shard
            .cl
            .fail(format!("its ConsumeQueue log failed: {reason}"));
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
