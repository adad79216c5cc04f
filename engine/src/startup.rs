//! Bringing a store up, one phase at a time across all shards, and each shard's request loop.
//!
//! Recovery of the ConsumeQueues needs every shard's recovered CommitLog end, and re-dispatch
//! needs every owner's marks, so `Store::open` steps the shard threads through:
//! 1. each recovers its CommitLog and reports its end;
//! 2. each recovers its ConsumeQueue log against all ends, rebuilds its queues and reports,
//!    per source shard, how far that source is covered (its marks);
//! 3. each source scans its CommitLog from the lowest mark and returns, per owner, the
//!    records that owner lacks;
//! 4. each owner places them at the queue offsets their records hold, turns offsets nobody
//!    filled (reserved for records that did not survive) into skips, and flushes;
//! 5. all serve.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

use crate::catalog::{Catalog, TopicView};
use crate::config::StoreConfig;
use crate::consumequeue::read::ClReader;
use crate::consumequeue::ConsumeQueues;
use crate::dispatch::{DispatchBatch, DispatchRecord, Intake, OwnerInbox, OwnerLink, Reserve};
use crate::error::{OpenError, RecoveryError};
use crate::filter::tag_hash;
use crate::log::recovery::RecoveryReport;
use crate::log::{Log, LogShared};
use crate::meta::queue_shard;
use crate::record::{decode, Entry};
use crate::requests::{set_local_shard, Request};
use crate::shard::{commitlog_spec, Shard};

/// What a shard thread reports to `Store::open`.
pub enum Init {
    Cl(usize, Result<(RecoveryReport, u64), OpenError>),
    Cq(usize, Result<(RecoveryReport, Vec<u64>), OpenError>),
    Scanned(usize, Result<Vec<Vec<DispatchRecord>>, OpenError>),
    Applied(Result<(), OpenError>),
}

/// What `Store::open` tells a shard thread next.
pub enum Ctl {
    ClEnds(Vec<u64>),
    Scan(Vec<u64>),
    Apply(Vec<DispatchBatch>),
    Serve,
}

/// The channels and shared state a shard thread starts with.
pub struct ShardThread {
    pub store: u64,
    pub id: usize,
    pub config: Arc<StoreConfig>,
    pub store_host: SocketAddr,
    pub shared: Arc<Vec<Arc<LogShared>>>,
    /// This shard's ConsumeQueue log's published offsets.
    pub cq_shared: Arc<LogShared>,
    pub requests: flume::Receiver<Request>,
    pub ctl: flume::Receiver<Ctl>,
    pub init: flume::Sender<Init>,
    pub links: Vec<OwnerLink>,
    pub intake: flume::Receiver<Intake>,
    pub reserve: flume::Receiver<Reserve>,
    pub catalog: Arc<Catalog>,
    pub counters: Arc<crate::shard::ShardCounters>,
}

fn recovery(shard: usize) -> impl Fn(RecoveryError) -> OpenError {
    move |source| OpenError::Recovery { shard, source }
}

/// Records applied per step while catching up (the ConsumeQueue log's buffer is bounded).
const APPLY_CHUNK_RECORDS: usize = 4096;

pub fn run_shard(builder: LocalExecutorBuilder, t: ShardThread) {
    let executor = match builder.make() {
        Ok(ex) => ex,
        Err(e) => {
            let reason = format!("cannot start its glommio executor: {e}");
            let _ = t.init.send(Init::Cl(
                t.id,
                Err(OpenError::ShardStart {
                    shard: t.id,
                    reason,
                }),
            ));
            return;
        }
    };
    executor.run(async move {
        let id = t.id;
        let meta = t.config.store_path.join(crate::meta::META_FILE);
        if let Err(source) = crate::runtime::settle_iopoll_probe(&meta).await {
            let err = RecoveryError::Io {
                what: "cannot open",
                path: meta,
                source,
            };
            let _ = t.init.send(Init::Cl(id, Err(recovery(id)(err))));
            return;
        }
        let (cl, report) =
            match Log::open(commitlog_spec(id, &t.config), t.shared[id].clone()).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = t.init.send(Init::Cl(id, Err(recovery(id)(e))));
                    return;
                }
            };
        let _ = t.init.send(Init::Cl(id, Ok((report, cl.written()))));
        let Some(cqs) = bring_up(&t, &cl).await else {
            cl.stop();
            cl.quiesce().await;
            cl.close_files().await;
            return;
        };
        let reader = ClReader::new(
            cl.clone(),
            t.config.store_path.clone(),
            t.config.segment_size_bytes,
            t.config.message_size_max_bytes as u64,
            t.store_host,
            t.shared.clone(),
            t.config.read_cache_bytes,
        );
        let shard = Shard::start(
            id,
            t.config.clone(),
            cl,
            cqs,
            reader,
            t.links.clone(),
            OwnerInbox {
                intake: t.intake.clone(),
                reserve: t.reserve.clone(),
            },
            TopicView::new(t.catalog.clone()),
            t.counters.clone(),
        );
        // Retention runs on the shard, as one of its CommitLog's tasks (stopped with it); it is
        // started here so that the shard does not depend on the cleaner that works on it.
        shard.cl.spawn(crate::cleaner::cleaner(shard.clone()));
        set_local_shard(Some((t.store, shard.clone())));
        serve(&shard, &t.requests, &t.intake).await;
        shard.stop();
        shard.quiesce().await;
        set_local_shard(None);
    });
}

/// Phases 2 to 4; `None` if the store gave up opening (or this shard failed).
async fn bring_up(t: &ShardThread, cl: &Rc<Log>) -> Option<Rc<ConsumeQueues>> {
    let id = t.id;
    let Ok(Ctl::ClEnds(ends)) = t.ctl.recv_async().await else {
        return None;
    };
    let cqs = match ConsumeQueues::open(id, &t.config, ends.clone(), t.cq_shared.clone()).await {
        Ok((cqs, report)) => {
            let marks = cqs.marks.borrow().clone();
            let _ = t.init.send(Init::Cq(id, Ok((report, marks))));
            cqs
        }
        Err(e) => {
            let _ = t.init.send(Init::Cq(id, Err(recovery(id)(e))));
            return None;
        }
    };
    let stop = |cqs: &Rc<ConsumeQueues>| cqs.cq.stop();
    let Ok(Ctl::Scan(starts)) = t.ctl.recv_async().await else {
        stop(&cqs);
        return None;
    };
    let scanned = missing_records(cl, &starts).await.map_err(|source| {
        recovery(id)(RecoveryError::Io {
            what: "cannot re-read",
            path: cl.spec.dir.clone(),
            source,
        })
    });
    let failed = scanned.is_err();
    let _ = t.init.send(Init::Scanned(id, scanned));
    let Ok(Ctl::Apply(batches)) = t.ctl.recv_async().await else {
        stop(&cqs);
        return None;
    };
    if failed {
        stop(&cqs);
        return None;
    }
    let applied = catch_up(&cqs, batches).await;
    let ok = applied.is_ok();
    let _ = t.init.send(Init::Applied(
        applied.map_err(|reason| OpenError::ShardStart { shard: id, reason }),
    ));
    match t.ctl.recv_async().await {
        Ok(Ctl::Serve) if ok => Some(cqs),
        _ => {
            stop(&cqs);
            None
        }
    }
}

/// This source's CommitLog records each owner lacks: those at or past `starts[owner]`.
async fn missing_records(
    cl: &Rc<Log>,
    starts: &[u64],
) -> std::io::Result<Vec<Vec<DispatchRecord>>> {
    let owners = starts.len();
    let mut out: Vec<Vec<DispatchRecord>> = (0..owners).map(|_| Vec::new()).collect();
    let first = cl.segments.borrow().keys().next().copied().unwrap_or(0);
    let end = cl.written();
    let from = starts
        .iter()
        .copied()
        .min()
        .unwrap_or(end)
        .clamp(first, end);
    let source = cl.shard() as u16;
    cl.scan(from, |offset, bytes| {
        let Ok(Entry::Message(m)) = decode(bytes, offset, u64::MAX) else {
            return;
        };
        let owner = queue_shard(&m.topic, m.queue_id, owners);
        if offset < starts[owner] {
            return;
        }
        let time = crate::schedule::plan::entry_time(
            &m.topic,
            m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            m.store_timestamp_ms,
        );
        out[owner].push(DispatchRecord {
            store_timestamp_ms: time,
            tag_hash: tag_hash(m.tags()),
            topic: m.topic.into(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            source,
            cl_offset: offset,
            size: m.total_size,
        });
    })
    .await?;
    Ok(out)
}

/// Places re-dispatched records at the queue offsets their records hold, turns the offsets
/// nobody filled into skips, then makes the log durable.
async fn catch_up(cqs: &Rc<ConsumeQueues>, batches: Vec<DispatchBatch>) -> Result<(), String> {
    for batch in batches {
        let (source, upto) = (batch.source, batch.upto);
        let mut records = batch.records.into_iter().peekable();
        loop {
            let chunk: Vec<DispatchRecord> = records.by_ref().take(APPLY_CHUNK_RECORDS).collect();
            let last = records.peek().is_none();
            let need = cqs.batch_bytes(&chunk);
            cqs.cq.wait_for_room(need).await;
            if let Some(reason) = cqs.cq.failure() {
                return Err(reason);
            }
            cqs.apply(DispatchBatch {
                source,
                upto: if last { upto } else { 0 },
                records: chunk,
            });
            if last {
                break;
            }
        }
    }
    cqs.cq.wait_for_room(cqs.seal_bytes()).await;
    cqs.seal();
    cqs.cq.drain().await?;
    cqs.cq
        .flush_once()
        .await
        .map_err(|_| cqs.cq.failure().unwrap_or_default())?;
    Ok(())
}

/// The shard's request loop: until shutdown, or until every sender is gone (a dropped store).
async fn serve(shard: &Rc<Shard>, rx: &flume::Receiver<Request>, intake: &flume::Receiver<Intake>) {
    while let Ok(request) = rx.recv_async().await {
        let Some(request) = serve_query(shard, request) else {
            continue;
        };
        match request {
            Request::Put(msgs, sink) => {
                // Off-shard callers wait for room rather than get `Busy`: the bounded channel
                // already pushes back on them.
                match shard.sizes(&msgs) {
                    Ok(sizes) => {
                        shard.cl.wait_for_room(sizes.total()).await;
                        shard.put_sized(msgs, sizes, sink);
                    }
                    Err(e) => sink.fail(e),
                }
            }
            // Served by `serve_query` above.
            Request::Read(..)
            | Request::Get(..)
            | Request::Offsets(..)
            | Request::Times(..)
            | Request::OffsetForTime(..)
            | Request::Wait(..) => {}
            Request::Run(job) => job(),
            Request::DispatchAccepted(reply) => {
                // A task of the CommitLog's, so that stopping the shard cancels it (it may be
                // flushing); the request loop goes on meanwhile.
                let task_shard = shard.clone();
                shard.cl.spawn(async move {
                    let _ = reply.send(task_shard.dispatch_accepted().await);
                });
            }
            Request::DropTopic(drop) => shard.drop_topic(drop),
            Request::DeletedTopics(reply) => {
                let _ = reply.send(shard.cqs.deleted_generations());
            }
            Request::ShutdownSources(reply) => {
                let _ = reply.send(shard.shutdown_sources().await);
            }
            Request::ShutdownOwner(reply) => {
                let _ = reply.send(shard.shutdown_owner(intake).await);
                return;
            }
        }
    }
}

/// Serves a read-side request (reads, gets, offsets, waits: each answered by a task of its
/// own, never awaited here); gives any other request back. The request loop calls it first,
/// and `Store` calls it directly when the caller already runs on the owning shard, so such
/// a query crosses no channel.
pub(crate) fn serve_query(shard: &Rc<Shard>, request: Request) -> Option<Request> {
    match request {
        Request::Read(shard_id, offset, reply) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(shard.reader.read(shard_id, offset, None).await);
            })
            .detach();
        }
        Request::Get(req, reply) => {
            let shard = shard.clone();
            if let Err(e) = shard.admit_read(&req.topic, req.queue_id) {
                let _ = reply.send(Err(e));
                return None;
            }
            glommio::spawn_local(async move {
                settled(&shard, &req.topic, req.queue_id, Some(req.offset)).await;
                let _ = reply.send(shard.cqs.get(&shard.reader, &req).await);
            })
            .detach();
        }
        Request::Offsets(topic, queue_id, reply) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                settled(&shard, &topic, queue_id, None).await;
                let _ = reply.send(shard.cqs.offsets(&topic, queue_id));
            })
            .detach();
        }
        Request::Times(topic, queue_id, from, max, reply) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let times = shard.cqs.entry_times(&topic, queue_id, from, max).await;
                let _ = reply.send(times);
            })
            .detach();
        }
        Request::OffsetForTime(topic, queue_id, at_ms, reply) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let cold = shard
                    .cqs
                    .cold_offset_for_time(&topic, queue_id, at_ms)
                    .await;
                let _ =
                    reply.send(cold.or_else(|| shard.cqs.offset_for_time(&topic, queue_id, at_ms)));
            })
            .detach();
        }
        Request::Wait(topic, queue_id, offset, timeout, reply) => {
            wait_for(shard, &topic, queue_id, offset, timeout, reply);
        }
        other => return Some(other),
    }
    None
}

/// Waits (at most the sync flush timeout) for the offsets of `(topic, queue)` reserved so
/// far, or for the reserved offset `upto`, to become visible: a reader sees every put
/// acknowledged before it asked.
async fn settled(shard: &Rc<Shard>, topic: &str, queue_id: u32, upto: Option<u64>) {
    let Some(rx) = shard.cqs.in_flight(topic, queue_id, upto) else {
        return;
    };
    let timeout = shard.config.sync_flush_timeout();
    futures_lite::future::or(
        async {
            let _ = rx.recv_async().await;
        },
        glommio::timer::sleep(timeout),
    )
    .await;
}

fn wait_for(
    shard: &Rc<Shard>,
    topic: &str,
    queue_id: u32,
    offset: u64,
    timeout: Duration,
    reply: flume::Sender<bool>,
) {
    let Some(rx) = shard.cqs.watch(topic, queue_id, offset) else {
        let _ = reply.send(true);
        return;
    };
    glommio::spawn_local(async move {
        let woken =
            futures_lite::future::or(async { rx.recv_async().await.unwrap_or(false) }, async {
                glommio::timer::sleep(timeout).await;
                false
            })
            .await;
        let _ = reply.send(woken);
    })
    .detach();
}
