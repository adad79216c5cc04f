//! The embeddable store: opens the shards, routes puts and reads to them, shuts them down.

use std::cell::RefCell;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::StoreConfig;
use crate::error::{io_context, OpenError, PutError, ReadError, ShutdownError};
use crate::log::recovery::RecoveryReport;
use crate::log::LogShared;
use crate::meta::{self, DirLock, Meta};
use crate::record::{MessageInput, StoredMessage};
use crate::runtime;
use crate::shard::Shard;
use crate::waiters::Reply;

/// Requests a shard's channel may hold before senders wait (or get `Busy`).
pub const SHARD_REQUESTS_MAX: usize = 4096;

/// Outcome of a stored put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutStatus {
    /// Stored (and, under SYNC_FLUSH, covered by a completed fdatasync).
    PutOk,
    /// SYNC_FLUSH only: stored, but no flush covered it within the timeout. The record is in
    /// the log and may yet become durable; it is *not* confirmed durable.
    FlushDiskTimeout,
}

/// Where a put landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub status: PutStatus,
    pub shard: usize,
    /// Physical offset of the record in its shard's CommitLog.
    pub offset: u64,
    /// Encoded record size in bytes.
    pub size: u32,
    pub store_timestamp_ms: i64,
}

type Job = Box<dyn FnOnce() + Send>;

enum Request {
    Put(Vec<MessageInput>, Sink),
    Read(u64, flume::Sender<Result<StoredMessage, ReadError>>),
    Run(Job),
    Shutdown(flume::Sender<Result<(), String>>),
}

enum Sink {
    One(flume::Sender<Result<PutResult, PutError>>),
    Batch(flume::Sender<Result<Vec<PutResult>, PutError>>),
}

impl Sink {
    fn into_reply(self, mut results: Vec<PutResult>) -> Reply {
        match self {
            Sink::One(tx) => Reply::One(results.remove(0), tx),
            Sink::Batch(tx) => Reply::Batch(results, tx),
        }
    }
    fn fail(self, e: PutError) {
        match self {
            Sink::One(tx) => drop(tx.send(Err(e))),
            Sink::Batch(tx) => drop(tx.send(Err(e))),
        }
    }
}

struct ShardHandle {
    tx: flume::Sender<Request>,
    shared: Arc<LogShared>,
}

struct Inner {
    id: u64,
    config: Arc<StoreConfig>,
    meta: Meta,
    shards: Vec<ShardHandle>,
    threads: Mutex<Vec<(ThreadId, JoinHandle<()>)>>,
    reports: Vec<RecoveryReport>,
    _lock: DirLock,
}

/// A ShardMQ store: N shards, one glommio executor thread each. Cheap to clone; the store
/// stops when `shutdown` is awaited, or — as after a crash, recovered on the next open — when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The shard this thread runs, if it is a shard thread: (store id, shard).
    static LOCAL_SHARD: RefCell<Option<(u64, Rc<Shard>)>> = const { RefCell::new(None) };
}

fn local_shard(store: u64) -> Option<Rc<Shard>> {
    LOCAL_SHARD.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(id, _)| *id == store)
            .map(|(_, s)| s.clone())
    })
}

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
        runtime::probe_io_uring()?;
        let shards = meta.shards as usize;
        let io = runtime::size_io_memory(shards, config.io_memory_bytes)?;
        tracing::info!(
            dir = %dir.display(), shards, io_memory_per_shard = io.per_shard_bytes,
            memlock_limit = ?io.limit_bytes, memlock_raised = io.raised, "opening store"
        );
        let config = Arc::new(config);
        let id = NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed);
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let (init_tx, init_rx) = flume::unbounded();
        for shard in 0..shards {
            let (tx, rx) = flume::bounded(SHARD_REQUESTS_MAX);
            let shared = Arc::new(LogShared::default());
            let placement = if config.pin_shards && cpus.len() >= shards {
                Placement::Fixed(cpus[shard])
            } else {
                Placement::Unbound
            };
            let builder = LocalExecutorBuilder::new(placement)
                .name(&format!("shardmq-{shard}"))
                .io_memory(io.per_shard_bytes);
            let (cfg, sh, init) = (config.clone(), shared.clone(), init_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("shardmq-shard-{shard}"))
                .spawn(move || run_shard(builder, id, shard, cfg, sh, rx, init))
                .map_err(|e| OpenError::ShardStart {
                    shard,
                    reason: e.to_string(),
                })?;
            threads.push((thread.thread().id(), thread));
            handles.push(ShardHandle { tx, shared });
        }
        drop(init_tx);
        let mut reports = vec![None; shards];
        let mut failure = None;
        for _ in 0..shards {
            match init_rx.recv() {
                Ok((shard, Ok(report))) => reports[shard] = Some(report),
                Ok((_, Err(e))) => failure = failure.or(Some(e)),
                Err(_) => break,
            }
        }
        let reports: Vec<RecoveryReport> = reports.into_iter().flatten().collect();
        let inner = Inner {
            id,
            config,
            meta,
            shards: handles,
            threads: Mutex::new(threads),
            reports,
            _lock: lock,
        };
        if let Some(e) = failure.or_else(|| {
            (inner.reports.len() != shards).then(|| OpenError::ShardStart {
                shard: 0,
                reason: "a shard thread exited".into(),
            })
        }) {
            drop(inner); // closes the channels and joins the threads
            return Err(e);
        }
        Ok(Store {
            inner: Arc::new(inner),
        })
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

    /// What recovery did on each shard when this store was opened.
    pub fn recovery_reports(&self) -> &[RecoveryReport] {
        &self.inner.reports
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

    /// The shard the calling thread runs, if it is one of this store's shard threads.
    pub fn current_shard(&self) -> Option<usize> {
        local_shard(self.inner.id).map(|s| s.id())
    }

    /// Appends one message. The append happens now, in call order (on a shard thread it goes
    /// straight into that shard's log; elsewhere it is queued to the shard owning the queue);
    /// the returned future, which any executor can await, resolves once the put is
    /// acknowledged by the flush mode's rule.
    pub fn put_message(
        &self,
        msg: MessageInput,
    ) -> impl Future<Output = Result<PutResult, PutError>> + Send + 'static {
        let (tx, rx) = flume::bounded(1);
        let submitted = self.submit(vec![msg], Sink::One(tx));
        async move {
            submitted?.send().await?;
            rx.recv_async().await.unwrap_or(Err(PutError::ShuttingDown))
        }
    }

    /// Appends a batch contiguously to one shard (the owner of the first message's queue when
    /// called off-shard) and acknowledges it as a whole.
    pub fn put_messages(
        &self,
        msgs: Vec<MessageInput>,
    ) -> impl Future<Output = Result<Vec<PutResult>, PutError>> + Send + 'static {
        let (tx, rx) = flume::bounded(1);
        let empty = msgs.is_empty();
        let submitted = if empty {
            Ok(Submitted::Done)
        } else {
            self.submit(msgs, Sink::Batch(tx))
        };
        async move {
            if empty {
                return Ok(Vec::new());
            }
            submitted?.send().await?;
            rx.recv_async().await.unwrap_or(Err(PutError::ShuttingDown))
        }
    }

    /// Blocking form of [`Store::put_message`], for threads outside any executor.
    pub fn put_message_blocking(&self, msg: MessageInput) -> Result<PutResult, PutError> {
        if local_shard(self.inner.id).is_some() {
            return Err(PutError::BlockingOnShard);
        }
        futures_lite::future::block_on(self.put_message(msg))
    }

    fn submit(&self, msgs: Vec<MessageInput>, sink: Sink) -> Result<Submitted, PutError> {
        if let Some(shard) = local_shard(self.inner.id) {
            let (results, end) = shard.put(&msgs)?;
            shard.await_ack(end, sink.into_reply(results));
            return Ok(Submitted::Done);
        }
        let owner = self.queue_shard(&msgs[0].topic, msgs[0].queue_id);
        let tx = &self.inner.shards[owner].tx;
        match tx.try_send(Request::Put(msgs, sink)) {
            Ok(()) => Ok(Submitted::Done),
            Err(flume::TrySendError::Full(req)) => Ok(Submitted::Queue(tx.clone(), req)),
            Err(flume::TrySendError::Disconnected(_)) => Err(PutError::ShuttingDown),
        }
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
            tx.send_async(Request::Read(offset, rtx))
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
                Err(flume::TrySendError::Full(req)) => Some(Submitted::Queue(s.tx.clone(), req)),
                Err(flume::TrySendError::Disconnected(_)) => None,
            },
        };
        async move {
            pending?.send().await.ok()?;
            orx.recv_async().await.ok()
        }
    }

    /// Writes out and flushes everything appended, checkpoints, and stops every shard.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let mut result = Ok(());
        for (shard, handle) in self.inner.shards.iter().enumerate() {
            let (tx, rx) = flume::bounded(1);
            let outcome = match handle.tx.send_async(Request::Shutdown(tx)).await {
                Ok(()) => rx.recv_async().await.unwrap_or(Err("shard exited".into())),
                Err(_) => Err("shard already stopped".into()),
            };
            if let Err(reason) = outcome {
                result = Err(ShutdownError::Shard { shard, reason });
            }
        }
        result
    }
}

enum Submitted {
    Done,
    Queue(flume::Sender<Request>, Request),
}

impl Submitted {
    async fn send(self) -> Result<(), PutError> {
        match self {
            Submitted::Done => Ok(()),
            Submitted::Queue(tx, req) => {
                tx.send_async(req).await.map_err(|_| PutError::ShuttingDown)
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

type InitResult = (usize, Result<RecoveryReport, OpenError>);

fn run_shard(
    builder: LocalExecutorBuilder,
    store: u64,
    id: usize,
    config: Arc<StoreConfig>,
    shared: Arc<LogShared>,
    rx: flume::Receiver<Request>,
    init: flume::Sender<InitResult>,
) {
    let executor = match builder.make() {
        Ok(ex) => ex,
        Err(e) => {
            let reason = format!("cannot start its glommio executor: {e}");
            let _ = init.send((id, Err(OpenError::ShardStart { shard: id, reason })));
            return;
        }
    };
    executor.run(async move {
        let shard = match Shard::start(id, config, shared).await {
            Ok((shard, report)) => {
                let _ = init.send((id, Ok(report)));
                shard
            }
            Err(source) => {
                let _ = init.send((id, Err(OpenError::Recovery { shard: id, source })));
                return;
            }
        };
        drop(init);
        LOCAL_SHARD.with(|l| *l.borrow_mut() = Some((store, shard.clone())));
        serve(&shard, rx).await;
        shard.cl.quiesce().await;
        LOCAL_SHARD.with(|l| *l.borrow_mut() = None);
    });
}

/// The shard's request loop: until shutdown, or until every sender is gone (a dropped store).
async fn serve(shard: &Rc<Shard>, rx: flume::Receiver<Request>) {
    while let Ok(request) = rx.recv_async().await {
        match request {
            Request::Put(msgs, sink) => {
                // Off-shard callers wait for room rather than get `Busy`: the bounded channel
                // already pushes back on them.
                let bytes = match shard.sizes(&msgs) {
                    Ok(sizes) => sizes.iter().sum(),
                    Err(e) => {
                        sink.fail(e);
                        continue;
                    }
                };
                loop {
                    let generation = shard.cl.progress.generation();
                    if shard.stopped() || shard.cl.has_room(bytes) {
                        break;
                    }
                    shard.cl.progress.wait_past(generation).await;
                }
                match shard.put(&msgs) {
                    Ok((results, end)) => shard.await_ack(end, sink.into_reply(results)),
                    Err(e) => sink.fail(e),
                }
            }
            Request::Read(offset, reply) => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.read(offset).await);
                })
                .detach();
            }
            Request::Run(job) => job(),
            Request::Shutdown(reply) => {
                let _ = reply.send(shard.shutdown().await);
                return;
            }
        }
    }
    shard.stop();
}
