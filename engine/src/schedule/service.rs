//! The schedule service's tasks: one per delay level, on the shard owning the level's queue,
//! and one for the wheel of exact times, on shard 0. Each learns due times from queue entries
//! (`Store::entry_times`), reads a message only to deliver it, delivers up to `WINDOW`
//! messages at once, and advances its progress in order as deliveries complete.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::plan::{delivered, Plan, SCHEDULE_TOPIC, SLOT_MS};
use super::progress::Progress;
use crate::consumequeue::read::{GetRequest, GetStatus};
use crate::error::PutError;
use crate::filter::TagFilter;
use crate::record::MessageInput;
use crate::store::{Store, WeakStore};

/// Deliveries in flight per task.
const WINDOW: usize = 256;
/// How long a task waits for news before it looks again (also bounds how late it notices a
/// stop).
const IDLE: Duration = Duration::from_millis(500);
/// How often the wheel looks for new entries while it has deliveries to wait for, in ms.
const RELOAD_MS: i64 = 10;
/// How long before its due time the wheel reads a message, in ms.
const PREFETCH_MS: i64 = 100;
/// Read-ahead copies held at most.
const READY_MAX: usize = 4 * WINDOW;
/// How long after its minute ends a wheel slot is still drained (puts made in the last
/// moments of the minute may become visible a little later).
const GRACE_MS: i64 = 2_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the tasks share. The store is held weakly: dropping the last `Store` stops the
/// store (as after a crash) even with the service running.
pub struct Shared {
    pub(crate) store: WeakStore,
    pub plan: Plan,
    pub progress: Mutex<Progress>,
    /// Dropped to stop the tasks.
    pub stop: flume::Receiver<()>,
}

/// Each call takes the store for as long as it builds its future and no longer: a task never
/// holds the store across an await, so dropping the last `Store` still stops it.
impl Shared {
    fn store(&self) -> Option<Store> {
        self.store.upgrade()
    }

    fn entry_times(
        &self,
        queue: u32,
        from: u64,
        max: usize,
    ) -> Option<impl std::future::Future<Output = (Vec<(u64, i64)>, u64)>> {
        Some(self.store()?.entry_times(SCHEDULE_TOPIC, queue, from, max))
    }

    fn wait(
        &self,
        queue: u32,
        offset: u64,
        d: Duration,
    ) -> Option<impl std::future::Future<Output = bool>> {
        Some(
            self.store()?
                .wait_for_message(SCHEDULE_TOPIC, queue, offset, d),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(flume::TryRecvError::Disconnected))
    }

    /// Sleeps `d` or until the service stops.
    async fn pause(&self, d: Duration) {
        futures_lite::future::or(glommio::timer::sleep(d), async {
            let _ = self.stop.recv_async().await;
        })
        .await;
    }
}

/// How a delivery ended.
enum Outcome {
    Delivered,
    /// Cannot ever be delivered (its topic is gone, the record is bad): skipped, logged.
    Dropped,
    /// The store could not take it now: try again later.
    Retry,
}

/// Most messages one read takes.
const FETCH_RUN: usize = 64;

/// Reads the delayed messages at `offsets` (ascending, of one queue, within `FETCH_RUN` of
/// the first) in one get, and makes the copies to deliver, in the order asked.
async fn fetch_run(
    weak: WeakStore,
    queue: u32,
    offsets: Vec<u64>,
) -> Vec<Result<MessageInput, Outcome>> {
    let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
        return Vec::new();
    };
    let Some(store) = weak.upgrade() else {
        return offsets.iter().map(|_| Err(Outcome::Retry)).collect();
    };
    let get = store.get_message(GetRequest {
        group: "SCHEDULE_SERVICE".into(),
        topic: SCHEDULE_TOPIC.into(),
        queue_id: queue,
        offset: first,
        max_messages: (last - first + 1) as u32,
        max_bytes: u32::MAX,
        filter: TagFilter::All,
    });
    drop(store);
    let mut found: std::collections::HashMap<u64, crate::consumequeue::read::QueueMessage> =
        match get.await {
            Ok(r) if r.status == GetStatus::Found => r
                .messages
                .into_iter()
                .map(|m| (m.queue_offset, m))
                .collect(),
            Ok(_) => Default::default(),
            Err(e) => {
                tracing::warn!(queue, first, error = %e, "cannot read delayed messages");
                return offsets.iter().map(|_| Err(Outcome::Retry)).collect();
            }
        };
    offsets
        .iter()
        .map(|o| match found.remove(o) {
            Some(m) => copy_of(queue, m),
            None => Err(Outcome::Dropped),
        })
        .collect()
}

/// The copy to deliver for a delayed message read from `queue`.
fn copy_of(
    queue: u32,
    m: crate::consumequeue::read::QueueMessage,
) -> Result<MessageInput, Outcome> {
    let Some((topic, queue_id, props)) = delivered(&m.message.properties, &m.msg_id) else {
        tracing::warn!(
            queue,
            offset = m.queue_offset,
            "a delayed message lacks its real topic: dropped"
        );
        return Err(Outcome::Dropped);
    };
    Ok(MessageInput::copy_of(&m.message, topic, queue_id, props))
}

/// A wheel entry: (due time, slot queue, offset).
type Due = (i64, u32, u64);

/// A run of reads under way.
type FetchTask = glommio::task::JoinHandle<Vec<Result<MessageInput, Outcome>>>;

/// A put under way, resolving to how the delivery went.
type PutOutcome = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome>>>;

/// Puts a fetched copy now (appends happen in call order, so copies put in due order reach
/// their queues in due order); the future tells how it went.
fn put(weak: &WeakStore, fetched: Result<MessageInput, Outcome>) -> PutOutcome {
    let input = match fetched {
        Ok(i) => i,
        Err(o) => return Box::pin(async move { o }),
    };
    let Some(store) = weak.upgrade() else {
        return Box::pin(async { Outcome::Retry });
    };
    let put = store.put_message(input);
    drop(store);
    Box::pin(async move {
        match put.await {
            Ok(_) => Outcome::Delivered,
            Err(
                e @ (PutError::Busy { .. }
                | PutError::ShuttingDown
                | PutError::ShardFailed { .. }
                | PutError::DiskFull { .. }
                | PutError::NoSpace { .. }
                | PutError::TopicDeleting { .. }),
            ) => {
                tracing::debug!(error = %e, "delivery of a delayed message deferred");
                Outcome::Retry
            }
            Err(e) => {
                tracing::warn!(error = %e, "a delayed message cannot be delivered: dropped");
                Outcome::Dropped
            }
        }
    })
}

/// Delivers the level `level`'s queue (0-based) for as long as the service runs.
pub async fn level_task(shared: Arc<Shared>, level: usize) {
    let queue = level as u32;
    let mut next = shared.lock().level(level);
    while !shared.stopped() {
        let Some(times) = shared.entry_times(queue, next, WINDOW) else {
            return;
        };
        let (times, end) = times.await;
        let Some(&(_, head_due)) = times.first() else {
            if end > next {
                // Only skips (or entries retention removed) up to the end.
                next = end;
                shared.lock().set_level(level, next);
                continue;
            }
            let Some(wait) = shared.wait(queue, next, IDLE) else {
                return;
            };
            futures_lite::future::or(
                async {
                    wait.await;
                },
                async {
                    let _ = shared.stop.recv_async().await;
                },
            )
            .await;
            continue;
        };
        let now = now_ms();
        if head_due > now {
            let d = Duration::from_millis((head_due - now) as u64).min(IDLE);
            shared.pause(d).await;
            continue;
        }
        // Every entry due now, delivered concurrently and settled in queue order.
        let due: Vec<u64> = times
            .iter()
            .take_while(|(_, t)| *t <= now)
            .map(|(o, _)| *o)
            .collect();
        // Read in runs, put in queue (= due) order as the reads come in.
        let fetches: Vec<_> = due
            .chunks(FETCH_RUN)
            .map(|run| glommio::spawn_local(fetch_run(shared.store.clone(), queue, run.to_vec())))
            .collect();
        let mut puts = Vec::with_capacity(due.len());
        for f in fetches {
            for fetched in f.await {
                puts.push(put(&shared.store, fetched));
            }
        }
        // Progress stops at the first delivery that must go again (those after it that went
        // through go again too: at least once).
        let mut blocked = false;
        for (o, t) in due.iter().zip(puts) {
            match t.await {
                Outcome::Retry => blocked = true,
                Outcome::Delivered | Outcome::Dropped if !blocked => {
                    next = o + 1;
                    shared.lock().set_level(level, next);
                }
                Outcome::Delivered | Outcome::Dropped => {}
            }
        }
        if blocked {
            // The first could not go: give the store a moment.
            shared.pause(Duration::from_millis(50)).await;
        }
    }
}

/// Delivers exact-time messages for as long as the service runs.
///
/// The wheel keeps the minutes from the oldest not yet retired up to now (and the next one
/// in the last second of a minute) loaded: their undelivered entries in one due-ordered set.
/// It reads messages up to `PREFETCH_MS` before they are due and puts each at its due time,
/// in due order. Progress is by queue offset (a slot's low offset and the delivered ranges
/// above it), so entries that become visible late, or that are delivered out of queue order,
/// are never taken for delivered. A minute is retired — its slot's offset saved, the slot
/// free for the minute `slots` later — once it ended `GRACE_MS` ago and nothing of it is left.
pub async fn wheel_task(shared: Arc<Shared>) {
    let plan = shared.plan.clone();
    let now_min = now_ms().div_euclid(SLOT_MS);
    let mut oldest = {
        let p = shared.lock();
        // A persisted minute the wheel has since come round past (a store stopped for
        // longer than the longest delay) is worthless: start just behind now.
        if p.minute > 0 && now_min - p.minute < plan.slots as i64 - 4 {
            p.minute
        } else {
            now_min - 2
        }
    };
    // minute -> (queue, loaded up to)
    let mut loaded: std::collections::BTreeMap<i64, (u32, u64)> = Default::default();
    let mut pending: std::collections::BTreeSet<Due> = Default::default();
    let mut in_flight: VecDeque<(Vec<Due>, FetchTask)> = VecDeque::new();
    let mut ready: VecDeque<(Due, Result<MessageInput, Outcome>)> = VecDeque::new();
    let mut putting: VecDeque<(Due, PutOutcome)> = VecDeque::new();
    let mut need_load = true;
    let mut last_load = i64::MIN / 2;
    while !shared.stopped() {
        if shared.store().is_none() {
            return;
        }
        let now = now_ms();
        // Load the minutes that should be loaded, and what arrived in those already loaded.
        let newest = (now + 1_000).div_euclid(SLOT_MS);
        if need_load {
            last_load = now;
            need_load = false;
            for m in oldest..=newest {
                let q = plan.slot_queue(m);
                let from = match loaded.get(&m) {
                    Some(&(_, to)) => to,
                    None => shared.lock().slots.get(&q).copied().unwrap_or(0),
                };
                let mut fresh = Vec::new();
                let Some(to) = load_slot(&shared, q, from, &mut fresh).await else {
                    return;
                };
                loaded.insert(m, (q, to));
                // Leave out what the progress says was delivered (before a restart).
                let p = shared.lock();
                pending.extend(fresh.into_iter().filter(|&(_, q, o)| !p.slot_done(q, o)));
            }
        }
        // Read ahead what falls due soon, in runs of one queue's offsets.
        let horizon = now + PREFETCH_MS;
        while in_flight.len() < WINDOW / 8
            && ready.len() < READY_MAX
            && pending.first().is_some_and(|&(d, _, _)| d <= horizon)
        {
            let Some(first) = pending.pop_first() else {
                break;
            };
            let mut run = vec![first];
            while let Some(&(d, q2, o2)) = pending.first() {
                let last = run[run.len() - 1].2;
                if d > horizon || q2 != first.1 || o2 <= last || o2 - first.2 >= FETCH_RUN as u64 {
                    break;
                }
                pending.pop_first();
                run.push((d, q2, o2));
            }
            let offsets = run.iter().map(|e| e.2).collect();
            let task =
                glommio::spawn_local(fetch_run(shared.store.clone(), first.1, offsets)).detach();
            in_flight.push_back((run, task));
        }
        // Reads that came back wait in due order.
        if let Some((run, task)) = in_flight.pop_front() {
            let fetched = task
                .await
                .unwrap_or_else(|| run.iter().map(|_| Err(Outcome::Retry)).collect());
            ready.extend(run.into_iter().zip(fetched));
        }
        // Put what is due, in due order.
        let now = now_ms();
        while putting.len() < WINDOW && ready.front().is_some_and(|(e, _)| e.0 <= now) {
            let Some((e, f)) = ready.pop_front() else {
                break;
            };
            putting.push_back((e, put(&shared.store, f)));
        }
        // Settle finished deliveries in order.
        let mut retry = false;
        while let Some((e, p)) = putting.pop_front() {
            match p.await {
                Outcome::Delivered | Outcome::Dropped => shared.lock().mark_slot(e.1, e.2),
                // Back to pending: it goes again after a pause (the entries of its slot
                // after it may go first: delivery of exact times is at least once, due
                // order among what went through).
                Outcome::Retry => {
                    pending.insert(e);
                    retry = true;
                }
            }
            if ready.front().is_some_and(|(e, _)| e.0 <= now_ms()) {
                break;
            }
        }
        if retry {
            shared.pause(Duration::from_millis(50)).await;
            continue;
        }
        if !in_flight.is_empty() || ready.front().is_some_and(|(e, _)| e.0 <= now_ms()) {
            continue;
        }
        // Retire the oldest minute once it is over and nothing of it is left.
        let now = now_ms();
        let over = now >= (oldest + 1) * SLOT_MS + GRACE_MS && oldest < newest;
        if let Some(&(q, to)) = loaded.get(&oldest).filter(|_| over) {
            // Its entries are due before every later minute's: only the front can be its.
            let left = pending.first().is_some_and(|e| e.1 == q)
                || ready.iter().any(|(e, _)| e.1 == q)
                || putting.iter().any(|(e, _)| e.1 == q);
            if !left {
                loaded.remove(&oldest);
                let mut p = shared.lock();
                p.retire_slot(q, to);
                p.minute = oldest + 1;
                drop(p);
                oldest += 1;
                need_load = true;
                continue;
            }
        }
        // Nothing to do now: wait for the next read-ahead or put, a minute boundary, or the
        // next look for new entries (every `RELOAD_MS`: a message put due sooner than that
        // waits at most that long; one put further ahead is loaded well before it is due).
        let next_read = pending.first().map(|&(d, _, _)| d - PREFETCH_MS);
        let next_put = ready.front().map(|(e, _)| e.0);
        let boundary = (now.div_euclid(SLOT_MS) + 1) * SLOT_MS - 1_000;
        let reload_at = last_load + RELOAD_MS;
        let mut until = next_read
            .into_iter()
            .chain(next_put)
            .min()
            .unwrap_or(i64::MAX)
            .min(reload_at.max(now + 1));
        if boundary > now {
            until = until.min(boundary);
        }
        if oldest < now.div_euclid(SLOT_MS) {
            until = until.min((oldest + 1) * SLOT_MS + GRACE_MS);
        }
        if until > now {
            shared
                .pause(Duration::from_millis((until - now) as u64))
                .await;
        }
        if now_ms() >= reload_at {
            need_load = true;
        }
    }
}

/// Adds a slot's entries from `from` to `pending`; returns how far it loaded.
async fn load_slot(
    shared: &Shared,
    queue: u32,
    mut from: u64,
    pending: &mut Vec<Due>,
) -> Option<u64> {
    loop {
        let (times, end) = shared.entry_times(queue, from, 4096)?.await;
        if times.is_empty() {
            return Some(from.max(end));
        }
        for &(o, due) in &times {
            pending.push((due, queue, o));
        }
        from = times.last().map_or(end, |&(o, _)| o + 1);
    }
}

/// The running service: its tasks (on the shards) and its persister (a thread).
pub struct Running {
    shared: Arc<Shared>,
    stop_tx: Option<flume::Sender<()>>,
    persister: Option<std::thread::JoinHandle<()>>,
    store_path: std::path::PathBuf,
}

impl Running {
    pub fn progress(&self) -> Progress {
        self.shared.lock().clone()
    }

    /// Stops the tasks and persists the progress one last time.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_tx.take();
        if let Some(t) = self.persister.take() {
            let _ = t.join();
        }
        self.shared.lock().save(&self.store_path)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Without `stop` (the store dropped without a shutdown: a crash) nothing is persisted.
        self.stop_tx.take();
    }
}

/// Creates the schedule topic if needed and starts the tasks and the persister.
pub fn start(store: &Store, plan: Plan) -> Result<Running, crate::error::OpenError> {
    use crate::topics::{Perm, TopicUpdate};
    let queues = plan.queues();
    let invalid = |e: String| {
        crate::error::OpenError::Config(crate::error::ConfigError::Invalid(format!(
            "schedule topic: {e}"
        )))
    };
    match store.topic(SCHEDULE_TOPIC) {
        None => {
            store
                .create_topic(SCHEDULE_TOPIC, queues, queues, Perm::READ_WRITE)
                .map_err(|e| invalid(e.to_string()))?;
        }
        Some(t) if t.read_queues < queues || t.write_queues < queues => {
            store
                .update_topic(
                    SCHEDULE_TOPIC,
                    TopicUpdate {
                        read_queues: Some(queues),
                        write_queues: Some(queues),
                        perm: None,
                    },
                )
                .map_err(|e| invalid(e.to_string()))?;
        }
        Some(_) => {}
    }
    let store_path = store.path().to_path_buf();
    let progress = Progress::load(&store_path).map_err(|source| crate::error::OpenError::Io {
        what: "cannot read the schedule progress",
        path: Progress::path(&store_path),
        source,
    })?;
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let levels = plan.levels.len();
    let shared = Arc::new(Shared {
        store: store.downgrade(),
        plan,
        progress: Mutex::new(progress),
        stop: stop_rx,
    });
    for level in 0..levels {
        let owner = store.queue_shard(SCHEDULE_TOPIC, level as u32);
        let s = shared.clone();
        drop(store.spawn_on(owner, move || level_task(s, level)));
    }
    {
        let s = shared.clone();
        drop(store.spawn_on(0, move || wheel_task(s)));
    }
    let persister = {
        let (s, path) = (shared.clone(), store_path.clone());
        let every = Duration::from_millis(store.config().schedule.persist_interval_ms);
        std::thread::Builder::new()
            .name("schedule-persist".into())
            .spawn(move || loop {
                let stopped = matches!(
                    s.stop.recv_timeout(every),
                    Err(flume::RecvTimeoutError::Disconnected)
                );
                if stopped {
                    return;
                }
                let snapshot = s.lock().clone();
                if let Err(e) = snapshot.save(&path) {
                    tracing::error!(error = %e, "cannot persist the schedule progress");
                }
            })
            .ok()
    };
    Ok(Running {
        shared,
        stop_tx: Some(stop_tx),
        persister,
        store_path,
    })
}
