//! The schedule service's tasks: one per delay level, on the shard owning the level's queue,
//! and one wheel task per shard for the exact times whose minute slots that shard owns. So
//! every task reads only queues of its own shard (served in place, through no channel).
//! Each learns due times from queue entries (`Store::entry_times`), reads a message only to
//! deliver it, puts what is due at once as one batch per real queue, and advances its
//! progress in order as deliveries complete.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::plan::{delivered, Plan, SCHEDULE_TOPIC, SLOT_MS};
use super::progress::Progress;
use crate::consumequeue::read::{GetRequest, GetStatus};
use crate::error::PutError;
use crate::filter::TagFilter;
use crate::record::MessageInput;
use crate::store::{Store, WeakStore};
use crate::waiters::LocalEvent;

/// Deliveries in flight per task.
const WINDOW: usize = 256;
/// How long a task waits for news before it looks again (also bounds how late it notices a
/// stop).
const IDLE: Duration = Duration::from_millis(500);
/// How often the wheel looks for new entries while it has deliveries to wait for, in ms.
const RELOAD_MS: i64 = 10;
/// How long before its due time the wheel reads a message, in ms.
const PREFETCH_MS: i64 = 100;
/// Read-ahead copies held at most (per wheel task).
const READY_MAX: usize = 32 * WINDOW;
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
    /// Per shard, the oldest minute its wheel has not retired (changed under `progress`'s
    /// lock, whose `minute` is the least of them).
    wheel_minutes: Vec<AtomicI64>,
    /// Per shard, the due time of the earliest entry its wheel has not delivered
    /// (`i64::MIN` until it first loaded, `i64::MAX` for none): a wheel puts an entry only
    /// once no other wheel has an earlier one left, so exact times reach their real queues in
    /// due order also across slot queues of different shards (a minute's last entries and the
    /// next minute's first, a backlog after a restart).
    frontiers: Vec<AtomicI64>,
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

    /// Shard `shard`'s wheel retired every minute before `minute`: the persisted minute
    /// becomes the oldest no wheel has retired.
    fn advance_minute(&self, p: &mut Progress, shard: usize, minute: i64) {
        if let Some(m) = self.wheel_minutes.get(shard) {
            m.store(minute, Ordering::Relaxed);
        }
        if let Some(least) = self
            .wheel_minutes
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .min()
        {
            p.minute = least;
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Cannot ever be delivered (its topic is gone, the record is bad): skipped, logged.
    Dropped,
    /// The store could not take it now: try again later.
    Retry,
}

/// Most messages one read takes.
const FETCH_RUN: usize = 64;
/// Most copies one batch put carries.
const BATCH_MAX: usize = 512;

/// Reads the delayed messages at `offsets` (ascending, of one queue, within `FETCH_RUN` of
/// the first) in one get, and makes the copies to deliver, in the order asked. On the shard
/// owning the queue (where the tasks run) the get is served in place.
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
    let max_size = store.config().message_size_max_bytes;
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
    let found = match get.await {
        Ok(r) if r.status == GetStatus::Found => r.messages,
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(queue, first, error = %e, "cannot read delayed messages");
            return offsets.iter().map(|_| Err(Outcome::Retry)).collect();
        }
    };
    // Both lists ascend: walk them together.
    let mut found = found.into_iter().peekable();
    offsets
        .iter()
        .map(|&o| {
            while found.next_if(|m| m.queue_offset < o).is_some() {}
            match found.next_if(|m| m.queue_offset == o) {
                Some(m) => copy_of(queue, m, max_size),
                None => Err(Outcome::Dropped),
            }
        })
        .collect()
}

/// The copy to deliver for a delayed message read from `queue`; a copy the store would
/// refuse for itself (too large once it carries the original's id) is dropped here, so a
/// batch put fails only for what all its copies share (their topic and queue, the store).
fn copy_of(
    queue: u32,
    m: crate::consumequeue::read::QueueMessage,
    max_size: usize,
) -> Result<MessageInput, Outcome> {
    let Some((topic, queue_id, props)) = delivered(&m.message.properties, &m.msg_id) else {
        tracing::warn!(
            queue,
            offset = m.queue_offset,
            "a delayed message lacks its real topic: dropped"
        );
        return Err(Outcome::Dropped);
    };
    let copy = MessageInput::copy_of(&m.message, topic, queue_id, props);
    match crate::record::encoded_len(&copy) {
        Ok(len) if len <= max_size => Ok(copy),
        size => {
            tracing::warn!(
                queue,
                offset = m.queue_offset,
                ?size,
                max_size,
                "the copy of a delayed message cannot be stored: dropped"
            );
            Err(Outcome::Dropped)
        }
    }
}

/// A wheel entry: (due time, slot queue, offset).
type Due = (i64, u32, u64);

/// A run of reads under way.
type FetchTask = glommio::task::JoinHandle<Vec<Result<MessageInput, Outcome>>>;

/// A put under way, resolving to how the delivery went.
type PutOutcome = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome>>>;

/// What a put's error means for a delivery.
fn outcome_of(put: Result<(), PutError>) -> Outcome {
    match put {
        Ok(()) => Outcome::Delivered,
        Err(
            e @ (PutError::Busy { .. }
            | PutError::ShuttingDown
            | PutError::ShardFailed { .. }
            | PutError::DiskFull { .. }
            | PutError::NoSpace { .. }
            | PutError::TopicDeleting { .. }),
        ) => {
            tracing::debug!(error = %e, "delivery of delayed messages deferred");
            Outcome::Retry
        }
        Err(e) => {
            tracing::warn!(error = %e, "delayed messages cannot be delivered: dropped");
            Outcome::Dropped
        }
    }
}

/// Starts delivering fetched copies, given in due order with a key each: a copy that could
/// not be made settles at once, the others are put now as one batch per real queue (in the
/// order of each queue's first copy, each batch in due order, so every real queue gets its
/// copies in due order). Returns each batch's keys with how it went (the same for all of
/// them: the store takes or refuses a batch whole, and the copies of one batch share
/// everything it can refuse them for).
fn deliver<K>(
    weak: &WeakStore,
    fetched: impl IntoIterator<Item = (K, Result<MessageInput, Outcome>)>,
) -> Vec<(Vec<K>, PutOutcome)> {
    let mut out: Vec<(Vec<K>, PutOutcome)> = Vec::new();
    let mut groups: Vec<(Vec<K>, Vec<MessageInput>)> = Vec::new();
    // Topic -> queue -> the group taking its copies.
    let mut index: HashMap<String, HashMap<u32, usize>> = HashMap::new();
    for (key, copy) in fetched {
        match copy {
            Err(o) => out.push((vec![key], Box::pin(async move { o }))),
            Ok(copy) => {
                let known = index
                    .get(copy.topic.as_str())
                    .and_then(|t| t.get(&copy.queue_id))
                    .copied();
                let at = match known {
                    Some(at) if groups[at].1.len() < BATCH_MAX => at,
                    _ => {
                        let queues = match index.get_mut(copy.topic.as_str()) {
                            Some(t) => t,
                            None => index.entry(copy.topic.clone()).or_default(),
                        };
                        queues.insert(copy.queue_id, groups.len());
                        groups.push((Vec::new(), Vec::new()));
                        groups.len() - 1
                    }
                };
                groups[at].0.push(key);
                groups[at].1.push(copy);
            }
        }
    }
    let Some(store) = weak.upgrade() else {
        out.extend(
            groups
                .into_iter()
                .map(|(keys, _)| (keys, Box::pin(async { Outcome::Retry }) as PutOutcome)),
        );
        return out;
    };
    for (keys, copies) in groups {
        let put = store.put_messages(copies);
        out.push((
            keys,
            Box::pin(async move { outcome_of(put.await.map(drop)) }),
        ));
    }
    out
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
        // Read in runs, then put as one batch per real queue.
        let fetches: Vec<_> = due
            .chunks(FETCH_RUN)
            .map(|run| glommio::spawn_local(fetch_run(shared.store.clone(), queue, run.to_vec())))
            .collect();
        let mut fetched = Vec::with_capacity(due.len());
        for f in fetches {
            fetched.extend(f.await);
        }
        let mut outcomes = vec![Outcome::Retry; due.len()];
        for (keys, put) in deliver(&shared.store, fetched.into_iter().enumerate()) {
            let o = put.await;
            for k in keys {
                outcomes[k] = o;
            }
        }
        // Progress stops at the first delivery that must go again (those after it that went
        // through go again too: at least once).
        let mut blocked = false;
        for (o, outcome) in due.iter().zip(outcomes) {
            match outcome {
                Outcome::Retry => blocked = true,
                Outcome::Delivered | Outcome::Dropped if !blocked => next = o + 1,
                Outcome::Delivered | Outcome::Dropped => {}
            }
        }
        shared.lock().set_level(level, next);
        if blocked {
            // The first could not go: give the store a moment.
            shared.pause(Duration::from_millis(50)).await;
        }
    }
}

/// The wheel's state on one shard: the minutes whose slot queues this shard owns.
struct Wheel {
    shared: Arc<Shared>,
    shard: usize,
    shards: usize,
    /// Notified when a read or a put of this wheel finishes.
    wake: Rc<LocalEvent>,
    /// The oldest minute not retired (by this shard; a minute whose slot another shard owns
    /// is retired as soon as it is over).
    oldest: i64,
    /// Minute -> (its slot queue, loaded up to).
    loaded: BTreeMap<i64, (u32, u64)>,
    /// Entries loaded, not yet read, in due order.
    pending: BTreeSet<Due>,
    /// Runs being read, in due order of their first entries.
    reading: VecDeque<(Vec<Due>, FetchTask)>,
    /// Copies read, waiting for their due time, in due order.
    ready: VecDeque<(Due, Result<MessageInput, Outcome>)>,
    /// Batches being put, in the order they were put.
    putting: VecDeque<(Vec<Due>, glommio::task::JoinHandle<Outcome>)>,
    /// Entries in `putting`.
    putting_len: usize,
}

impl Wheel {
    fn owns(&self, minute: i64) -> bool {
        let q = self.shared.plan.slot_queue(minute);
        crate::meta::queue_shard(SCHEDULE_TOPIC, q, self.shards) == self.shard
    }

    /// Spawns `f` on this shard, notifying the wheel when it ends.
    fn spawn<T: 'static>(
        &self,
        f: impl std::future::Future<Output = T> + 'static,
    ) -> glommio::task::JoinHandle<T> {
        let wake = self.wake.clone();
        glommio::spawn_local(async move {
            let out = f.await;
            wake.notify();
            out
        })
        .detach()
    }

    /// Loads what arrived in the minutes from `oldest` to `newest` that this shard owns.
    /// `None` once the store is gone.
    async fn load(&mut self, newest: i64) -> Option<()> {
        for m in self.oldest..=newest {
            if !self.owns(m) {
                continue;
            }
            let q = self.shared.plan.slot_queue(m);
            let from = match self.loaded.get(&m) {
                Some(&(_, to)) => to,
                None => self.shared.lock().slots.get(&q).copied().unwrap_or(0),
            };
            let mut fresh = Vec::new();
            let to = load_slot(&self.shared, q, from, &mut fresh).await?;
            self.loaded.insert(m, (q, to));
            // Leave out what the progress says was delivered (before a restart).
            let p = self.shared.lock();
            self.pending
                .extend(fresh.into_iter().filter(|&(_, q, o)| !p.slot_done(q, o)));
        }
        Some(())
    }

    /// Starts reading what falls due before `horizon`, in runs of one queue's offsets.
    fn read_ahead(&mut self, horizon: i64) {
        while self.reading.len() < WINDOW / 8
            && self.ready.len() < READY_MAX
            && self.pending.first().is_some_and(|&(d, _, _)| d <= horizon)
        {
            let Some(first) = self.pending.pop_first() else {
                break;
            };
            let mut run = vec![first];
            while let Some(&(d, q2, o2)) = self.pending.first() {
                let last = run[run.len() - 1].2;
                if d > horizon || q2 != first.1 || o2 <= last || o2 - first.2 >= FETCH_RUN as u64 {
                    break;
                }
                self.pending.pop_first();
                run.push((d, q2, o2));
            }
            let offsets = run.iter().map(|e| e.2).collect();
            let task = self.spawn(fetch_run(self.shared.store.clone(), first.1, offsets));
            self.reading.push_back((run, task));
        }
    }

    /// Moves the reads that came back, in order, to `ready`.
    async fn collect_reads(&mut self) {
        while let Some((_, task)) = self.reading.front_mut() {
            let Some(fetched) = futures_lite::future::poll_once(task).await else {
                return;
            };
            let Some((run, _)) = self.reading.pop_front() else {
                return;
            };
            let fetched =
                fetched.unwrap_or_else(|| run.iter().map(|_| Err(Outcome::Retry)).collect());
            self.ready.extend(run.into_iter().zip(fetched));
        }
    }

    /// The due time of the earliest entry this wheel has not delivered yet (loaded, being
    /// read, read, or being put), `i64::MAX` for none.
    fn frontier(&self) -> i64 {
        let pending = self.pending.first().map(|e| e.0);
        let reading = self.reading.iter().map(|(run, _)| run[0].0).min();
        let ready = self.ready.front().map(|(e, _)| e.0);
        let putting = self.putting.iter().map(|(keys, _)| keys[0].0).min();
        [pending, reading, ready, putting]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Publishes this wheel's frontier to the other shards' wheels.
    fn publish(&self) {
        if let Some(f) = self.shared.frontiers.get(self.shard) {
            f.store(self.frontier(), Ordering::Release);
        }
    }

    /// The earliest frontier of the other shards' wheels: what is due after it must wait
    /// until they delivered what is due before.
    fn others(&self) -> i64 {
        self.shared
            .frontiers
            .iter()
            .enumerate()
            .filter(|&(s, _)| s != self.shard)
            .map(|(_, f)| f.load(Ordering::Acquire))
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Puts everything due by `now` — and not after what another shard's wheel still has to
    /// deliver —, in due order, one batch per real queue. Returns whether something due
    /// waits for another shard's wheel.
    fn put_due(&mut self, now: i64) -> bool {
        let limit = now.min(self.others());
        while self.putting_len < PUT_WINDOW && self.ready.front().is_some_and(|(e, _)| e.0 <= limit)
        {
            let room = (PUT_WINDOW - self.putting_len).min(BATCH_MAX * 8);
            let n = self
                .ready
                .iter()
                .take(room)
                .take_while(|(e, _)| e.0 <= limit)
                .count();
            let due: Vec<_> = self.ready.drain(..n).collect();
            for (keys, put) in deliver(&self.shared.store, due) {
                self.putting_len += keys.len();
                let task = self.spawn(put);
                self.putting.push_back((keys, task));
            }
        }
        self.ready
            .front()
            .is_some_and(|(e, _)| e.0 <= now && e.0 > limit)
    }

    /// Records the batches that finished, in the order they were put; returns whether one
    /// must go again.
    async fn settle(&mut self) -> bool {
        let mut retry = false;
        while let Some((_, task)) = self.putting.front_mut() {
            let Some(outcome) = futures_lite::future::poll_once(task).await else {
                break;
            };
            let Some((keys, _)) = self.putting.pop_front() else {
                break;
            };
            self.putting_len -= keys.len();
            match outcome.unwrap_or(Outcome::Retry) {
                Outcome::Delivered | Outcome::Dropped => {
                    let mut p = self.shared.lock();
                    for e in keys {
                        p.mark_slot(e.1, e.2);
                    }
                }
                // Back to pending: they go again after a pause (the entries of their slot
                // after them may go first: delivery of exact times is at least once, due
                // order among what went through).
                Outcome::Retry => {
                    self.pending.extend(keys);
                    retry = true;
                }
            }
        }
        retry
    }

    /// Whether anything of slot queue `q` is still to be delivered.
    fn holds(&self, q: u32) -> bool {
        // A minute's entries are due before every later minute's: only the front can be its.
        self.pending.first().is_some_and(|e| e.1 == q)
            || self.reading.iter().any(|(run, _)| run[0].1 == q)
            || self.ready.iter().any(|(e, _)| e.1 == q)
            || self
                .putting
                .iter()
                .any(|(keys, _)| keys.iter().any(|e| e.1 == q))
    }

    /// Retires the minutes that are over (by `GRACE_MS`) and, when they are this shard's,
    /// fully delivered: their slots' offsets saved, the slots free for the minutes `slots`
    /// later. Returns whether a minute was retired.
    fn retire(&mut self, now: i64, newest: i64) -> bool {
        let mut retired = false;
        while self.oldest < newest && now >= (self.oldest + 1) * SLOT_MS + GRACE_MS {
            let m = self.oldest;
            if self.owns(m) {
                let Some(&(q, to)) = self.loaded.get(&m) else {
                    // Not loaded yet (the next load will): it cannot be over for this shard.
                    break;
                };
                if self.holds(q) {
                    break;
                }
                self.loaded.remove(&m);
                let mut p = self.shared.lock();
                p.retire_slot(q, to);
                self.shared.advance_minute(&mut p, self.shard, m + 1);
            } else {
                let mut p = self.shared.lock();
                self.shared.advance_minute(&mut p, self.shard, m + 1);
            }
            self.oldest = m + 1;
            retired = true;
        }
        retired
    }
}

/// Deliveries in flight per wheel task (copies being put).
const PUT_WINDOW: usize = 8 * BATCH_MAX;

/// Delivers the exact-time messages of the slot queues shard `shard` owns, for as long as
/// the service runs; runs on that shard, so its reads of those queues are local.
///
/// The wheel keeps the minutes from the oldest not yet retired up to now (and the next one
/// in the last second of a minute) loaded: the undelivered entries of the minutes it owns,
/// in one due-ordered set. It reads messages up to `PREFETCH_MS` before they are due and puts
/// them at their due time, in due order: what is due at once goes as one batch per real
/// queue. Progress is by queue offset (a slot's low offset and the delivered ranges above
/// it), so entries that become visible late, or that are delivered out of queue order, are
/// never taken for delivered. A minute is retired — its slot's offset saved, the slot free
/// for the minute `slots` later — once it ended `GRACE_MS` ago and nothing of it is left;
/// the persisted minute is the oldest any shard's wheel has not retired.
pub async fn wheel_task(shared: Arc<Shared>, shard: usize, first_minute: i64) {
    let Some(shards) = shared.store().map(|s| s.shards()) else {
        return;
    };
    let mut w = Wheel {
        shared: shared.clone(),
        shard,
        shards,
        wake: Rc::new(LocalEvent::default()),
        oldest: first_minute,
        loaded: BTreeMap::new(),
        pending: BTreeSet::new(),
        reading: VecDeque::new(),
        ready: VecDeque::new(),
        putting: VecDeque::new(),
        putting_len: 0,
    };
    let mut need_load = true;
    let mut last_load = i64::MIN / 2;
    while !shared.stopped() {
        if shared.store().is_none() {
            return;
        }
        // Read before looking at what finished, so a finish after the look is not missed.
        let generation = w.wake.generation();
        let now = now_ms();
        // Load the minutes that should be loaded, and what arrived in those already loaded.
        let newest = (now + 1_000).div_euclid(SLOT_MS);
        if need_load {
            last_load = now;
            need_load = false;
            if w.load(newest).await.is_none() {
                return;
            }
        }
        w.read_ahead(now + PREFETCH_MS);
        w.collect_reads().await;
        let retry = w.settle().await;
        w.publish();
        if retry {
            shared.pause(Duration::from_millis(50)).await;
            continue;
        }
        let held = w.put_due(now_ms());
        let now = now_ms();
        if w.retire(now, newest) {
            need_load = true;
            continue;
        }
        // Nothing to do now: wait for a read or put to finish, the next read-ahead or put, a
        // minute boundary, or the next look for new entries (every `RELOAD_MS`: a message put
        // due sooner than that waits at most that long; one put further ahead is loaded well
        // before it is due).
        // (What waits for room in the windows waits for a read or put to finish.)
        let can_read = w.reading.len() < WINDOW / 8 && w.ready.len() < READY_MAX;
        let next_read = w
            .pending
            .first()
            .filter(|_| can_read)
            .map(|&(d, _, _)| d - PREFETCH_MS);
        let next_put = w
            .ready
            .front()
            .filter(|_| w.putting_len < PUT_WINDOW && !held)
            .map(|(e, _)| e.0);
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
        if held {
            // Another shard's wheel still delivers earlier entries: look again shortly.
            until = until.min(now + 1);
        }
        // The oldest minute's retirement, if it is still to come (one already due waits for
        // its last deliveries, which wake the wheel).
        let retire_at = (w.oldest + 1) * SLOT_MS + GRACE_MS;
        if w.oldest < now.div_euclid(SLOT_MS) && retire_at > now {
            until = until.min(retire_at);
        }
        if until > now {
            futures_lite::future::or(
                shared.pause(Duration::from_millis((until - now) as u64)),
                w.wake.wait_past(generation),
            )
            .await;
        } else {
            // Let the shard's other tasks in between two rounds of work.
            futures_lite::future::yield_now().await;
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
    // Every wheel starts at the persisted minute, unless the wheel has since come round past
    // it (a store stopped for longer than the longest delay): then just behind now.
    let now_min = now_ms().div_euclid(SLOT_MS);
    let first_minute = if progress.minute > 0 && now_min - progress.minute < plan.slots as i64 - 4 {
        progress.minute
    } else {
        now_min - 2
    };
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let levels = plan.levels.len();
    let shared = Arc::new(Shared {
        store: store.downgrade(),
        plan,
        progress: Mutex::new(progress),
        wheel_minutes: (0..store.shards())
            .map(|_| AtomicI64::new(first_minute))
            .collect(),
        frontiers: (0..store.shards())
            .map(|_| AtomicI64::new(i64::MIN))
            .collect(),
        stop: stop_rx,
    });
    for level in 0..levels {
        let owner = store.queue_shard(SCHEDULE_TOPIC, level as u32);
        let s = shared.clone();
        drop(store.spawn_on(owner, move || level_task(s, level)));
    }
    for shard in 0..store.shards() {
        let s = shared.clone();
        drop(store.spawn_on(shard, move || wheel_task(s, shard, first_minute)));
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
