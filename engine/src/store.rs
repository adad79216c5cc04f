//! The embeddable store: opens the shards, routes puts and reads to them, shuts them down.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::catalog::Catalog;
use crate::config::StoreConfig;
use crate::consumequeue::read::{GetRequest, GetResult};
use crate::dispatch::{DispatchBatch, DispatchRecord, DropTopic, OwnerLink, Sink};
use crate::error::{io_context, OpenError, PutError, ReadError, ShutdownError, TopicAdminError};
use crate::log::recovery::RecoveryReport;
use crate::log::LogShared;
use crate::meta::{self, DirLock, Meta};
use crate::oneshot;
use crate::record::{MessageInput, StoredMessage};
use crate::requests::{local_shard, Job, Request};
use crate::runtime;
use crate::shard::Puts;
use crate::shard::ShardCounters;
use crate::startup::{run_shard, Ctl, Init, ShardThread};
use crate::topics::{Perm, TopicConfig, TopicTable, TopicUpdate};

/// Requests a shard's channel may hold before senders wait (or get `Busy`).
pub const SHARD_REQUESTS_MAX: usize = 4096;

pub use crate::put::{PutResult, PutStatus};

type ShutdownPhase = fn(flume::Sender<Result<(), String>>) -> Request;

struct ShardHandle {
    tx: flume::Sender<Request>,
    shared: Arc<LogShared>,
    cq_shared: Arc<LogShared>,
    counters: Arc<ShardCounters>,
}

struct Inner {
    id: u64,
    config: Arc<StoreConfig>,
    meta: Meta,
    shards: Vec<ShardHandle>,
    threads: Mutex<Vec<(ThreadId, JoinHandle<()>)>>,
    reports: Vec<RecoveryReport>,
    cq_reports: Vec<RecoveryReport>,
    /// The topic table: its one writer, and the snapshots the shards read.
    catalog: Arc<Catalog>,
    /// The schedule service, once started (none when `schedule.enabled` is off).
    schedule: Mutex<Option<crate::schedule::service::Running>>,
    /// Where delayed puts wait (from `schedule`).
    plan: Option<crate::schedule::plan::Plan>,
    _lock: DirLock,
}

/// A store reference that does not keep the store running (the schedule service's).
#[derive(Clone)]
pub(crate) struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    pub(crate) fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

/// A ShardMQ store: N shards, one glommio executor thread each. Cheap to clone; the store
/// stops when `shutdown` is awaited, or — as after a crash, recovered on the next open — when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

impl Store {
    /// Opens (or creates) the store at `config.store_path`, recovering every shard.
    pub fn open(config: StoreConfig) -> Result<Store, OpenError> {
        config.validate()?;
        let dir = config.store_path.clone();
        std::fs::create_dir_all(&dir).map_err(io_context("cannot create store directory", &dir))?;
        runtime::probe_direct_io(&dir)?;
        let lock = meta::lock_dir(&dir)?;
        let cpus = runtime::allowed_cpus();
        let meta = meta::load_or_create(&dir, config.shards, cpus.len().max(1))?;
        let table = TopicTable::load(&dir)?;
        let catalog = Arc::new(Catalog::new(dir.clone(), config.auto_create, table));
        runtime::probe_io_uring()?;
        let shards = meta.shards as usize;
        let io = runtime::size_io_memory(shards, config.io_memory_bytes)?;
        tracing::info!(
            dir = %dir.display(), shards, io_memory_per_shard = io.per_shard_bytes,
            memlock_limit = ?io.limit_bytes, memlock_raised = io.raised, "opening store"
        );
        let config = Arc::new(config);
        let id = NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed);
        let shared: Arc<Vec<Arc<LogShared>>> = Arc::new(
            (0..shards)
                .map(|_| {
                    Arc::new(LogShared::with_tail_cache(
                        config.tail_cache_bytes,
                        config.tail_cache_linger_ms,
                    ))
                })
                .collect(),
        );
        let (links, intakes): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| {
                let (intake_tx, intake_rx) = flume::unbounded();
                let (reserve_tx, reserve_rx) = flume::unbounded();
                let link = OwnerLink {
                    intake: intake_tx,
                    reserve: reserve_tx,
                };
                (link, (intake_rx, reserve_rx))
            })
            .unzip();
        let (init_tx, init_rx) = flume::unbounded();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let mut ctls = Vec::new();
        for (shard, (intake, reserve)) in intakes.into_iter().enumerate() {
            let (tx, rx) = flume::bounded(SHARD_REQUESTS_MAX);
            let counters = Arc::new(ShardCounters::default());
            let (ctl_tx, ctl_rx) = flume::unbounded();
            let cq_shared = Arc::new(LogShared::default());
            let placement = if config.pin_shards && cpus.len() >= shards {
                Placement::Fixed(cpus[shard])
            } else {
                Placement::Unbound
            };
            let builder = LocalExecutorBuilder::new(placement)
                .name(&format!("shardmq-{shard}"))
                .io_memory(io.per_shard_bytes)
                .preempt_timer(Duration::from_micros(config.io_poll_interval_us.max(100)));
            let t = ShardThread {
                store: id,
                id: shard,
                config: config.clone(),
                store_host: config.store_host,
                shared: shared.clone(),
                cq_shared: cq_shared.clone(),
                requests: rx,
                ctl: ctl_rx,
                init: init_tx.clone(),
                links: links.clone(),
                intake,
                reserve,
                catalog: catalog.clone(),
                counters: counters.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shardmq-shard-{shard}"))
                .spawn(move || run_shard(builder, t))
                .map_err(|e| OpenError::ShardStart {
                    shard,
                    reason: e.to_string(),
                })?;
            threads.push((thread.thread().id(), thread));
            handles.push(ShardHandle {
                tx,
                shared: shared[shard].clone(),
                cq_shared,
                counters,
            });
            ctls.push(ctl_tx);
        }
        drop(init_tx);
        drop(links);
        let mut inner = Inner {
            id,
            config,
            meta,
            shards: handles,
            threads: Mutex::new(threads),
            reports: Vec::new(),
            cq_reports: Vec::new(),
            catalog,
            schedule: Mutex::new(None),
            plan: None,
            _lock: lock,
        };
        // On error, dropping `inner` (and the control channels) stops and joins the threads.
        let (reports, cq_reports) = bring_up(&init_rx, &ctls, shards)?;
        inner.reports = reports;
        inner.cq_reports = cq_reports;
        drop(ctls);
        if inner.config.schedule.enabled {
            let plan = inner.config.schedule.plan().map_err(|e| {
                OpenError::Config(crate::error::ConfigError::Invalid(format!("schedule: {e}")))
            })?;
            inner.plan = Some(plan);
        }
        let store = Store {
            inner: Arc::new(inner),
        };
        store.finish_interrupted_deletes()?;
        if let Some(plan) = store.inner.plan.clone() {
            let running = crate::schedule::service::start(&store, plan)?;
            *store
                .inner
                .schedule
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(running);
        }
        Ok(store)
    }

    pub(crate) fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }

    /// The schedule service's progress: (next offset per level, current wheel minute), for
    /// `admin schedule status`; `None` when the service is off.
    pub fn schedule_progress(&self) -> Option<crate::schedule::progress::Progress> {
        let s = self
            .inner
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        s.as_ref().map(|r| r.progress())
    }

    /// The delay levels in force (empty when the service is off).
    pub fn delay_levels(&self) -> Vec<Duration> {
        self.inner
            .plan
            .as_ref()
            .map(|p| p.levels.clone())
            .unwrap_or_default()
    }

    /// A delete whose "topic deleted" records reached a ConsumeQueue log but whose topic is
    /// still in the table (the store stopped before the table was saved, or before every
    /// shard recorded it) is run again, so no shard keeps serving the deleted incarnation.
    fn finish_interrupted_deletes(&self) -> Result<(), OpenError> {
        let recorded: BTreeSet<(String, u64)> =
            futures_lite::future::block_on(self.ask_all(Request::DeletedTopics))
                .into_iter()
                .flatten()
                .flatten()
                .collect();
        if recorded.is_empty() {
            return Ok(());
        }
        for topic in self.inner.catalog.all() {
            if !recorded.contains(&(topic.name.clone(), topic.generation)) {
                continue;
            }
            tracing::warn!(
                topic = %topic.name, generation = topic.generation,
                "finishing the delete of a topic interrupted when the store last stopped"
            );
            futures_lite::future::block_on(self.delete(&topic.name)).map_err(|e| {
                OpenError::InterruptedDelete {
                    topic: topic.name.clone(),
                    source: Box::new(e),
                }
            })?;
        }
        Ok(())
    }

    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn meta(&self) -> &Meta {
        &self.inner.meta
    }

    pub fn path(&self) -> &Path {
        &self.inner.config.store_path
    }

    /// What recovery did to each shard's CommitLog when this store was opened.
    pub fn recovery_reports(&self) -> &[RecoveryReport] {
        &self.inner.reports
    }

    /// What recovery did to each shard's ConsumeQueue log when this store was opened.
    pub fn consume_queue_reports(&self) -> &[RecoveryReport] {
        &self.inner.cq_reports
    }

    /// The shard owning `(topic, queue_id)`.
    pub fn queue_shard(&self, topic: &str, queue_id: u32) -> usize {
        meta::queue_shard(topic, queue_id, self.shards())
    }

    /// Shard `shard`'s CommitLog: written (readable) and flushed (durable) offsets.
    pub fn offsets(&self, shard: usize) -> Option<(u64, u64)> {
        let s = &self.inner.shards.get(shard)?.shared;
        Some((
            s.written.load(Ordering::Acquire),
            s.flushed.load(Ordering::Acquire),
        ))
    }

    /// Shard `shard`'s ConsumeQueue log: written and flushed offsets (its size in bytes).
    pub fn consume_queue_offsets(&self, shard: usize) -> Option<(u64, u64)> {
        let s = &self.inner.shards.get(shard)?.cq_shared;
        Some((
            s.written.load(Ordering::Acquire),
            s.flushed.load(Ordering::Acquire),
        ))
    }

    /// The shard the calling thread runs, if it is one of this store's shard threads.
    pub fn current_shard(&self) -> Option<usize> {
        local_shard(self.inner.id).map(|s| s.id())
    }

    /// Messages shard `shard` has sent to other shards since the store opened (see
    /// the shard counters): what a thread-per-core path should keep near zero per message.
    pub fn cross_shard_sends(&self, shard: usize) -> Option<u64> {
        let h = self.inner.shards.get(shard)?;
        Some(h.counters.cross_shard_sends.load(Ordering::Relaxed))
    }

    /// Counts a request this thread hands to shard `to`, when this thread is another shard.
    fn count_hop(&self, to: usize) {
        if let Some(here) = local_shard(self.inner.id) {
            if here.id() != to {
                here.counters.hop();
            }
        }
    }

    /// Appends one message. The append happens now, in call order (on a shard thread it goes
    /// straight into that shard's log; elsewhere it is queued to the shard owning the queue);
    /// the returned future, which any executor can await, resolves once the put is
    /// acknowledged by the flush mode's rule.
    pub fn put_message(&self, msg: MessageInput) -> PutFuture<PutResult> {
        let (tx, rx) = oneshot::channel();
        PutFuture::new(self.submit(Puts::One(msg), Sink::One(tx)), rx)
    }

    /// Appends a batch contiguously to one shard (the owner of the first message's queue when
    /// called off-shard) and acknowledges it as a whole.
    pub fn put_messages(&self, msgs: Vec<MessageInput>) -> PutFuture<Vec<PutResult>> {
        let (tx, rx) = oneshot::channel();
        if msgs.is_empty() {
            tx.send(Ok(Vec::new()));
            return PutFuture::new(Ok(Submitted::Done), rx);
        }
        PutFuture::new(self.submit(Puts::Many(msgs), Sink::Batch(tx)), rx)
    }

    /// Blocking form of [`Store::put_message`], for threads outside any executor.
    pub fn put_message_blocking(&self, msg: MessageInput) -> Result<PutResult, PutError> {
        if local_shard(self.inner.id).is_some() {
            return Err(PutError::BlockingOnShard);
        }
        futures_lite::future::block_on(self.put_message(msg))
    }

    fn submit(&self, mut msgs: Puts, sink: Sink) -> Result<Submitted, PutError> {
        // Delayed puts wait in the schedule topic.
        for m in msgs.as_mut_slice() {
            if m.properties.is_empty() {
                continue;
            }
            let asks = m.properties.iter().any(|(k, _)| {
                k == crate::schedule::plan::PROP_DELAY_LEVEL
                    || k == crate::schedule::plan::PROP_DELIVER_AT
            });
            if !asks {
                continue;
            }
            match &self.inner.plan {
                Some(plan) => {
                    plan.rewrite(m, crate::schedule::service::now_ms())?;
                }
                None => return Err(PutError::ScheduleDisabled),
            }
        }
        if let Some(shard) = local_shard(self.inner.id) {
            shard.put(msgs, sink);
            return Ok(Submitted::Done);
        }
        let first = msgs.first();
        let owner = self.queue_shard(&first.topic, first.queue_id);
        let tx = &self.inner.shards[owner].tx;
        match tx.try_send(Request::Put(msgs, sink)) {
            Ok(()) => Ok(Submitted::Done),
            Err(flume::TrySendError::Full(req)) => Ok(Submitted::Queue(tx.clone(), Box::new(req))),
            Err(flume::TrySendError::Disconnected(_)) => Err(PutError::ShuttingDown),
        }
    }

    /// Runs one retention pass on every shard now (RocketMQ's `deleteExpiredFile` admin
    /// command) instead of waiting for `retention.interval_ms`: deletes what the plan says,
    /// trims the queues, and sets or clears the disk guard.
    pub async fn clean_now(&self) {
        let id = self.inner.id;
        for shard in 0..self.shards() {
            let pass = self.spawn_on(shard, move || async move {
                if let Some(s) = local_shard(id) {
                    crate::cleaner::pass(&s).await;
                }
            });
            pass.await;
        }
    }

    /// Moves queue entries past each shard's `queue_entries_in_memory_max` to its cold file
    /// now, instead of when the shard gets to it; returns each shard's state after.
    pub async fn spill_now(&self) -> Vec<Option<QueueMemory>> {
        let id = self.inner.id;
        let mut out = Vec::new();
        for shard in 0..self.shards() {
            let pass = self.spawn_on(shard, move || async move {
                if let Some(s) = local_shard(id) {
                    if let Err(e) = s.cqs.spill().await {
                        tracing::error!(shard, error = %e, "spill failed");
                    }
                }
            });
            pass.await;
            out.push(self.queue_memory(shard).await);
        }
        out
    }

    /// `(hits, misses)` of shard `shard`'s tail cache: reads of its CommitLog served from
    /// memory, and reads that went to the device.
    pub fn tail_cache_stats(&self, shard: usize) -> Option<(u64, u64)> {
        self.inner.shards.get(shard).map(|s| s.shared.tail.stats())
    }

    /// Queue entries shard `shard` holds in memory, and blocks of entries it moved to its
    /// cold file (`StoreConfig::queue_entries_in_memory_max`).
    pub fn queue_memory(&self, shard: usize) -> impl Future<Output = Option<QueueMemory>> + Send {
        let id = self.inner.id;
        let asked = self.spawn_on(shard, move || async move {
            local_shard(id).map(|s| QueueMemory {
                entries_in_memory: s.cqs.hot.total(),
                cold_blocks: s
                    .cqs
                    .queues
                    .borrow()
                    .values()
                    .flat_map(|t| t.values())
                    .map(|q| q.cold.len())
                    .sum(),
            })
        });
        async move { asked.await.flatten() }
    }

    /// Reads the record at `(shard, offset)` back, checking its CRC.
    pub fn read_message(
        &self,
        shard: usize,
        offset: u64,
    ) -> impl Future<Output = Result<StoredMessage, ReadError>> + Send + 'static {
        let tx = self.inner.shards.get(shard).map(|s| s.tx.clone());
        async move {
            let tx = tx.ok_or(ReadError::NoSuchShard(shard))?;
            let (rtx, rrx) = flume::bounded(1);
            tx.send_async(Request::Read(shard, offset, rtx))
                .await
                .map_err(|_| ReadError::ShuttingDown)?;
            rrx.recv_async()
                .await
                .unwrap_or(Err(ReadError::ShuttingDown))
        }
    }

    pub fn read_message_blocking(
        &self,
        shard: usize,
        offset: u64,
    ) -> Result<StoredMessage, ReadError> {
        futures_lite::future::block_on(self.read_message(shard, offset))
    }

    /// Runs `task` on shard `shard`'s executor (where puts take the fast path) and resolves to
    /// its output (`None` if the shard is gone). The task is queued at once — only when the
    /// shard's request queue is full does queuing wait for the returned future to be polled —
    /// so dropping the future detaches the task. This is how a server puts its listeners and
    /// connections on the shards.
    pub fn spawn_on<F, Fut, T>(
        &self,
        shard: usize,
        task: F,
    ) -> impl Future<Output = Option<T>> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.count_hop(shard);
        let (otx, orx) = flume::bounded(1);
        let job: Job = Box::new(move || {
            glommio::spawn_local(async move {
                let _ = otx.send_async(task().await).await;
            })
            .detach();
        });
        let pending = match self.inner.shards.get(shard) {
            None => None,
            Some(s) => match s.tx.try_send(Request::Run(job)) {
                Ok(()) => Some(Submitted::Done),
                Err(flume::TrySendError::Full(req)) => {
                    Some(Submitted::Queue(s.tx.clone(), Box::new(req)))
                }
                Err(flume::TrySendError::Disconnected(_)) => None,
            },
        };
        async move {
            pending?.send().await.ok()?;
            orx.recv_async().await.ok()
        }
    }

    /// Writes out and flushes everything appended, answers every put, checkpoints, and stops
    /// every shard: first every shard finishes its CommitLog and dispatches, then every shard
    /// applies and flushes what it was sent.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let mut result = Ok(());
        // The schedule service first: it stops delivering and persists its progress.
        let running = self
            .inner
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = running {
            if let Err(e) = r.stop() {
                result = Err(ShutdownError::Shard {
                    shard: 0,
                    reason: format!("cannot persist the schedule progress: {e}"),
                });
            }
        }
        let phases: [ShutdownPhase; 2] = [Request::ShutdownSources, Request::ShutdownOwner];
        for phase in phases {
            for (shard, handle) in self.inner.shards.iter().enumerate() {
                let (tx, rx) = flume::bounded(1);
                let outcome = match handle.tx.send_async(phase(tx)).await {
                    Ok(()) => rx.recv_async().await.unwrap_or(Err("shard exited".into())),
                    Err(_) => Err("shard already stopped".into()),
                };
                if let Err(reason) = outcome {
                    result = Err(ShutdownError::Shard { shard, reason });
                }
            }
        }
        result
    }

    /// Sends every shard a request (all of them first), then collects the answers in shard
    /// order (`None` for a shard that is gone).
    async fn ask_all<T>(&self, make: impl Fn(flume::Sender<T>) -> Request) -> Vec<Option<T>> {
        let mut answers = Vec::with_capacity(self.shards());
        for handle in &self.inner.shards {
            let (tx, rx) = flume::bounded(1);
            let sent = handle.tx.send_async(make(tx)).await.is_ok();
            answers.push(sent.then_some(rx));
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(match rx {
                Some(rx) => rx.recv_async().await.ok(),
                None => None,
            });
        }
        out
    }

    /// Creates a topic (RocketMQ's `updateAndCreateTopic` for a new one), saving the table.
    pub fn create_topic(
        &self,
        name: &str,
        read_queues: u32,
        write_queues: u32,
        perm: Perm,
    ) -> Result<TopicConfig, TopicAdminError> {
        self.inner
            .catalog
            .create(name, read_queues, write_queues, perm)
    }

    /// Changes a topic's queue counts or permission, saving the table. Shrinking the queue
    /// counts keeps the messages of the queues beyond them (as RocketMQ does); puts to them are
    /// refused.
    pub fn update_topic(
        &self,
        name: &str,
        update: TopicUpdate,
    ) -> Result<TopicConfig, TopicAdminError> {
        self.inner.catalog.update(name, update)
    }

    /// Every user topic, sorted by name (a topic being deleted is left out, and so is the
    /// schedule topic delayed messages wait in; `topic()` shows it).
    pub fn topics(&self) -> Vec<TopicConfig> {
        let mut all = self.inner.catalog.list();
        all.retain(|t| t.name != crate::schedule::plan::SCHEDULE_TOPIC);
        all
    }

    /// A topic's config, if it exists (and is not being deleted).
    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.inner.catalog.get(name)
    }

    /// Whether topic `name` exists (and is not being deleted). On a shard thread it reads the
    /// shard's snapshot of the topic table (no lock, nothing cloned: the per-request check);
    /// elsewhere the catalog.
    pub fn topic_exists(&self, name: &str) -> bool {
        match local_shard(self.inner.id) {
            Some(shard) => shard.topic_exists(name),
            None => self.inner.catalog.get(name).is_some(),
        }
    }

    /// Deletes a topic with its queues and returns its last config. Once this resolves, the
    /// topic's messages and offsets are gone for good: a topic created again under the name
    /// (a new generation) starts every queue at offset 0 with only its own messages, also
    /// after a crash and recovery.
    ///
    /// Puts to the topic are refused (`TopicDeleting`) from the call on. It is a barrier
    /// over every shard: each makes what it appended before durable and dispatches it; then
    /// each, as an owner, applies all of it, forgets the topic's queues and flushes a "topic
    /// deleted" record (with, per source shard, the CommitLog offset the deleted incarnation
    /// ends below, which recovery's re-dispatch honours); then the table is saved. Await it
    /// from any thread or task, but never block a shard thread on it (the shard takes part).
    pub fn delete_topic(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<TopicConfig, TopicAdminError>> + Send + 'static {
        let store = self.clone();
        let name = name.to_owned();
        async move { store.delete(&name).await }
    }

    async fn delete(&self, name: &str) -> Result<TopicConfig, TopicAdminError> {
        let config = self.inner.catalog.begin_delete(name)?;
        match self.drop_everywhere(&config).await {
            Ok(()) => self.inner.catalog.finish_delete(name),
            Err(e) => {
                self.inner.catalog.stall_delete(name);
                Err(e)
            }
        }
    }

    /// The delete barrier (see `delete_topic`): every source dispatches what it accepted,
    /// then every owner drops the topic behind all of it.
    async fn drop_everywhere(&self, config: &TopicConfig) -> Result<(), TopicAdminError> {
        let incomplete = |shard: usize, reason: String| TopicAdminError::DeleteIncomplete {
            name: config.name.clone(),
            shard,
            reason,
        };
        let stopping = || "the shard is stopping".to_owned();
        let mut upto = Vec::with_capacity(self.shards());
        let ends = self.ask_all(Request::DispatchAccepted).await;
        for (shard, end) in ends.into_iter().enumerate() {
            upto.push(
                end.unwrap_or_else(|| Err(stopping()))
                    .map_err(|r| incomplete(shard, r))?,
            );
        }
        let dropped = self
            .ask_all(|reply| {
                Request::DropTopic(DropTopic {
                    topic: config.name.clone(),
                    generation: config.generation,
                    upto: upto.clone(),
                    reply,
                })
            })
            .await;
        for (shard, done) in dropped.into_iter().enumerate() {
            done.unwrap_or_else(|| Err(stopping()))
                .map_err(|r| incomplete(shard, r))?;
        }
        Ok(())
    }

    fn ask<T: Send + 'static>(
        &self,
        shard: usize,
        make: impl FnOnce(flume::Sender<T>) -> Request,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        let (rtx, rrx) = flume::bounded(1);
        let mut request = Some(make(rtx));
        // On the owning shard already: a query is served here, through no channel.
        if let Some(here) = local_shard(self.inner.id).filter(|s| s.id() == shard) {
            request = request.and_then(|r| crate::startup::serve_query(&here, r));
        } else {
            self.count_hop(shard);
        }
        let tx = match request {
            Some(_) => self.inner.shards.get(shard).map(|s| s.tx.clone()),
            None => None,
        };
        async move {
            let Some(request) = request else {
                return rrx.recv_async().await.ok();
            };
            tx?.send_async(request).await.ok()?;
            rrx.recv_async().await.ok()
        }
    }

    /// RocketMQ's getMessage: up to `max_messages` messages of a queue from `offset`, through
    /// the tag filter, served by the queue's owner shard.
    pub fn get_message(
        &self,
        req: GetRequest,
    ) -> impl Future<Output = Result<GetResult, ReadError>> + Send + 'static {
        let owner = self.queue_shard(&req.topic, req.queue_id);
        let asked = self.ask(owner, |tx| Request::Get(req, tx));
        async move { asked.await.unwrap_or(Err(ReadError::ShuttingDown)) }
    }

    /// A queue's (min, max) offsets — max is one past the last readable message —, or `None`
    /// if the queue has never held a message.
    pub fn queue_offsets(
        &self,
        topic: &str,
        queue_id: u32,
    ) -> impl Future<Output = Option<(u64, u64)>> + Send + 'static {
        let owner = self.queue_shard(topic, queue_id);
        let topic = topic.to_owned();
        let asked = self.ask(owner, move |tx| Request::Offsets(topic, queue_id, tx));
        async move { asked.await.flatten() }
    }

    /// The first offset of a queue stored at or after `timestamp_ms`.
    pub fn offset_for_time(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> impl Future<Output = Option<u64>> + Send + 'static {
        let owner = self.queue_shard(topic, queue_id);
        let topic = topic.to_owned();
        let asked = self.ask(owner, move |tx| {
            Request::OffsetForTime(topic, queue_id, timestamp_ms, tx)
        });
        async move { asked.await.flatten() }
    }

    /// The entry times (store time; for the schedule topic, the due time) of up to `max`
    /// entries of a queue from `from`, skips left out, and the queue's visible end. Reads no
    /// message body.
    pub fn entry_times(
        &self,
        topic: &str,
        queue_id: u32,
        from: u64,
        max: usize,
    ) -> impl Future<Output = (Vec<(u64, i64)>, u64)> + Send + 'static {
        let owner = self.queue_shard(topic, queue_id);
        let topic = topic.to_owned();
        let asked = self.ask(owner, move |tx| {
            Request::Times(topic, queue_id, from, max, tx)
        });
        async move { asked.await.unwrap_or_default() }
    }

    /// Resolves to `true` once the queue holds a readable message at `offset` (its max passed
    /// `offset`), or to `false` after `timeout`: the long-polling primitive.
    pub fn wait_for_message(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send + 'static {
        let owner = self.queue_shard(topic, queue_id);
        let topic = topic.to_owned();
        let asked = self.ask(owner, move |tx| {
            Request::Wait(topic, queue_id, offset, timeout, tx)
        });
        async move { asked.await.unwrap_or(false) }
    }

    /// A message by the id `get_message` gave it.
    pub fn message_by_id(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<StoredMessage, ReadError>> + Send + 'static {
        let read = crate::msgid::decode(id).map(|(shard, offset)| self.read_message(shard, offset));
        async move {
            match read {
                Some(read) => read.await,
                None => Err(ReadError::NoSuchShard(usize::MAX)),
            }
        }
    }
}

/// See [`Store::queue_memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueMemory {
    pub entries_in_memory: usize,
    pub cold_blocks: usize,
}

enum Submitted {
    Done,
    /// The shard's queue was full: send when polled (rare, so boxed).
    Queue(flume::Sender<Request>, Box<Request>),
}

impl Submitted {
    async fn send(self) -> Result<(), PutError> {
        match self {
            Submitted::Done => Ok(()),
            Submitted::Queue(tx, req) => tx
                .send_async(*req)
                .await
                .map_err(|_| PutError::ShuttingDown),
        }
    }
}

/// The answer to a put: resolves once the put is acknowledged by the flush mode's rule (or
/// failed). Small (a pointer or two), so callers can keep many in flight cheaply; `Send`, and
/// any executor can poll it.
#[must_use = "a put is appended at once, but its acknowledgement is only seen by awaiting this"]
pub struct PutFuture<T> {
    state: PutState<T>,
}

type Answer<T> = oneshot::Receiver<Result<T, PutError>>;

enum PutState<T> {
    Wait(Answer<T>),
    /// Still to be handed to its shard, whose request queue was full.
    Queue(
        Pin<Box<dyn Future<Output = Result<(), PutError>> + Send>>,
        Answer<T>,
    ),
    Failed(Option<Box<PutError>>),
}

impl<T> PutFuture<T> {
    fn new(submitted: Result<Submitted, PutError>, rx: Answer<T>) -> Self {
        let state = match submitted {
            Ok(Submitted::Done) => PutState::Wait(rx),
            Ok(queued @ Submitted::Queue(..)) => PutState::Queue(Box::pin(queued.send()), rx),
            Err(e) => PutState::Failed(Some(Box::new(e))),
        };
        PutFuture { state }
    }
}

impl<T> Future for PutFuture<T> {
    type Output = Result<T, PutError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                PutState::Wait(rx) => {
                    return Pin::new(rx)
                        .poll(cx)
                        .map(|r| r.unwrap_or(Err(PutError::ShuttingDown)))
                }
                PutState::Queue(send, _) => {
                    if let Err(e) = std::task::ready!(send.as_mut().poll(cx)) {
                        self.state = PutState::Failed(Some(Box::new(e)));
                        continue;
                    }
                    if let PutState::Queue(_, rx) =
                        std::mem::replace(&mut self.state, PutState::Failed(None))
                    {
                        self.state = PutState::Wait(rx);
                    }
                }
                PutState::Failed(e) => {
                    return Poll::Ready(Err(e.take().map_or(PutError::ShuttingDown, |e| *e)))
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channels stops each shard's request loop (without a final flush: as
        // after a crash). Join unless we are one of those threads ourselves.
        self.shards.clear();
        let me = std::thread::current().id();
        let threads = self
            .threads
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (id, handle) in threads {
            if id != me {
                let _ = handle.join();
            }
        }
    }
}

/// Steps the shard threads through the phases of `startup`; returns the CommitLog and
/// ConsumeQueue recovery reports.
fn bring_up(
    init: &flume::Receiver<Init>,
    ctls: &[flume::Sender<Ctl>],
    shards: usize,
) -> Result<(Vec<RecoveryReport>, Vec<RecoveryReport>), OpenError> {
    let gone = || OpenError::ShardStart {
        shard: 0,
        reason: "a shard thread exited during open".into(),
    };
    let mut reports = vec![None; shards];
    let mut ends = vec![0; shards];
    for _ in 0..shards {
        match init.recv().map_err(|_| gone())? {
            Init::Cl(s, r) => {
                let (report, end) = r?;
                reports[s] = Some(report);
                ends[s] = end;
            }
            _ => return Err(gone()),
        }
    }
    ctls.iter()
        .for_each(|c| drop(c.send(Ctl::ClEnds(ends.clone()))));
    let mut cq_reports = vec![None; shards];
    let mut marks = vec![Vec::new(); shards];
    for _ in 0..shards {
        match init.recv().map_err(|_| gone())? {
            Init::Cq(s, r) => {
                let (report, m) = r?;
                cq_reports[s] = Some(report);
                marks[s] = m;
            }
            _ => return Err(gone()),
        }
    }
    for (source, ctl) in ctls.iter().enumerate() {
        let starts = (0..shards)
            .map(|owner| marks[owner][source].min(ends[source]))
            .collect();
        let _ = ctl.send(Ctl::Scan(starts));
    }
    let mut missing: Vec<Vec<Vec<DispatchRecord>>> = (0..shards).map(|_| Vec::new()).collect();
    for _ in 0..shards {
        match init.recv().map_err(|_| gone())? {
            Init::Scanned(s, r) => missing[s] = r?,
            _ => return Err(gone()),
        }
    }
    let mut per_owner: Vec<Vec<DispatchBatch>> = (0..shards).map(|_| Vec::new()).collect();
    for (source, lists) in missing.into_iter().enumerate() {
        for (owner, records) in lists.into_iter().enumerate() {
            per_owner[owner].push(DispatchBatch {
                source: source as u16,
                upto: ends[source],
                records,
            });
        }
    }
    let redispatched: usize = per_owner.iter().flatten().map(|b| b.records.len()).sum();
    if redispatched > 0 {
        tracing::info!(
            records = redispatched,
            "re-dispatched CommitLog records to their ConsumeQueues"
        );
    }
    for (owner, batches) in per_owner.into_iter().enumerate() {
        let _ = ctls[owner].send(Ctl::Apply(batches));
    }
    for _ in 0..shards {
        match init.recv().map_err(|_| gone())? {
            Init::Applied(r) => r?,
            _ => return Err(gone()),
        }
    }
    ctls.iter().for_each(|c| drop(c.send(Ctl::Serve)));
    Ok((
        reports.into_iter().flatten().collect(),
        cq_reports.into_iter().flatten().collect(),
    ))
}
