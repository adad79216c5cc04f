//! The push consumer's driver: one thread that owns every queue's state and reacts to
//! events — a pull's answer, a batch consumed, a membership notification, shutdown — and to
//! its timers (rebalance, heartbeat, offset commits, lock retries and renewals, pulls put
//! off by flow control or an error).
//!
//! Pulls do not take a thread each: they go out with [`PullConsumer::pull_async`] and their
//! answers come back here as events, so one thread drives any number of queues. Listeners run
//! on the worker pool (`workers.rs`); their results come back here too. Queue assignment,
//! hand-over and offsets are in `assign.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::config::PushConfig;
use super::listener::Listener;
use super::local_offsets::{LocalOffsetStore, Offsets};
use super::workers::Work;
use super::MessageModel;
use crate::consumer::process_queue::ProcessQueue;
use crate::consumer::pull::{PullConsumer, PullOptions, PullResult, PullStatus};
use crate::error::ClientError;
use crate::route::MessageQueue;
use crate::WireMessage;

/// A pull that failed is tried again after this.
const PULL_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// A queue paused by flow control is looked at again after this.
const FLOW_BACKOFF: Duration = Duration::from_millis(50);

pub enum Event {
    Pulled {
        mq: MessageQueue,
        gen: u64,
        result: Result<PullResult, ClientError>,
    },
    /// A batch came back from the listener.
    Consumed {
        mq: MessageQueue,
        gen: u64,
        outcome: Outcome,
    },
    /// A broker says the group's members changed.
    Notified,
    Shutdown(flume::Sender<()>),
}

/// What became of a batch.
pub enum Outcome {
    /// `done`: offsets finished (consumed, or sent back to the broker); `retry`: messages to
    /// consume again here (sending them back failed).
    Concurrent {
        done: Vec<u64>,
        retry: Vec<WireMessage>,
    },
    /// Whether the listener took the batch; the batch itself, to retry or move past.
    Orderly { ok: bool, batch: Vec<WireMessage> },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Rebalance,
    Heartbeat,
    Commit,
    LockRetry,
    LockRenew,
    Pull(MessageQueue, u64),
    /// Consume again messages whose send-back failed (concurrent).
    LocalRetry(MessageQueue, u64),
    /// An orderly queue suspended by its listener goes on.
    Resume(MessageQueue, u64),
    /// A queue being handed over stops waiting for its messages in flight.
    DropDeadline(MessageQueue, u64),
}

/// One queue this member consumes.
pub struct QueueState {
    pub gen: u64,
    pub expr: String,
    pub pq: ProcessQueue,
    /// Where the next pull starts.
    pub next_offset: u64,
    /// The offset last committed (or carried on a pull).
    pub committed: Option<u64>,
    /// Handed over (or shutting down): no more pulls; commit and unlock once nothing is in
    /// flight.
    pub dropping: bool,
    /// Concurrent: messages to consume again here.
    pub local_retry: Vec<WireMessage>,
    /// Orderly: pulled, waiting their turn.
    pub waiting: VecDeque<WireMessage>,
    /// Orderly: a batch is with the listener.
    pub consuming: bool,
    /// Orderly: the batch the listener asked to suspend, and how often it failed.
    pub suspended: Option<(Vec<WireMessage>, u32)>,
}

impl QueueState {
    /// Nothing of this queue is with the listener any more, so a hand-over can commit:
    /// concurrent, every message pulled is done; orderly, no batch is being consumed (the
    /// ones waiting their turn are not consumed after a hand-over begins).
    pub fn drained(&self, orderly: bool) -> bool {
        if orderly {
            !self.consuming
        } else {
            self.pq.is_empty()
        }
    }
}

/// The queues a member consumes, for callers that wait for a rebalance.
#[derive(Default)]
pub struct Assignment {
    pub queues: Mutex<Vec<MessageQueue>>,
    pub changed: Condvar,
}

pub struct Driver {
    pub cfg: Arc<PushConfig>,
    pub listener: Listener,
    pub api: Arc<PullConsumer>,
    pub events_tx: flume::Sender<Event>,
    pub events_rx: flume::Receiver<Event>,
    pub work_tx: Option<flume::Sender<Work>>,
    pub queues: HashMap<MessageQueue, QueueState>,
    /// Assigned by the last rebalance, not consumed yet (another member still holds it).
    pub pending: BTreeMap<MessageQueue, String>,
    /// Brokers this member has sent a heartbeat to.
    pub brokers: BTreeSet<String>,
    pub local: Option<(LocalOffsetStore, Offsets)>,
    pub assignment: Arc<Assignment>,
    /// A `LockRetry` timer is pending.
    pub lock_retry_armed: bool,
    timers: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
    next_gen: u64,
    stopping: Option<(Instant, flume::Sender<()>)>,
}

impl Driver {
    pub fn new(
        cfg: Arc<PushConfig>,
        listener: Listener,
        api: Arc<PullConsumer>,
        events: (flume::Sender<Event>, flume::Receiver<Event>),
        work_tx: flume::Sender<Work>,
        assignment: Arc<Assignment>,
    ) -> Result<Self, ClientError> {
        let local = match cfg.model {
            MessageModel::Broadcasting => {
                let store =
                    LocalOffsetStore::new(&cfg.offset_store_dir, &cfg.client_id, &cfg.group);
                let offsets = store.load()?;
                Some((store, offsets))
            }
            MessageModel::Clustering => None,
        };
        Ok(Driver {
            cfg,
            listener,
            api,
            events_tx: events.0,
            events_rx: events.1,
            work_tx: Some(work_tx),
            queues: HashMap::new(),
            pending: BTreeMap::new(),
            brokers: BTreeSet::new(),
            local,
            assignment,
            lock_retry_armed: false,
            timers: BTreeMap::new(),
            seq: 0,
            next_gen: 1,
            stopping: None,
        })
    }

    pub fn clustering(&self) -> bool {
        self.cfg.model == MessageModel::Clustering
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    pub fn new_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    pub fn schedule(&mut self, after: Duration, t: Timer) {
        self.seq += 1;
        self.timers.insert((Instant::now() + after, self.seq), t);
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        self.heartbeat();
        self.rebalance();
        let cfg = Arc::clone(&self.cfg);
        self.schedule(cfg.rebalance_interval, Timer::Rebalance);
        self.schedule(cfg.heartbeat_interval, Timer::Heartbeat);
        self.schedule(cfg.commit_interval, Timer::Commit);
        if self.clustering() {
            self.schedule(cfg.lock_renew_interval, Timer::LockRenew);
        }
        loop {
            let now = Instant::now();
            let wait = self
                .timers
                .keys()
                .next()
                .map_or(Duration::from_secs(1), |(at, _)| {
                    at.saturating_duration_since(now)
                });
            let mut rebalance = false;
            match self.events_rx.recv_timeout(wait) {
                Ok(ev) => rebalance |= self.on_event(ev),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => return,
            }
            // Take whatever else arrived before looking at timers.
            while let Ok(ev) = self.events_rx.try_recv() {
                rebalance |= self.on_event(ev);
            }
            if rebalance && !self.is_stopping() {
                self.rebalance();
            }
            self.fire_timers();
            if let Some((deadline, _)) = &self.stopping {
                if self.queues.is_empty() || Instant::now() >= *deadline {
                    self.finish_shutdown();
                    return;
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            self.on_timer(t);
        }
    }

    fn on_timer(&mut self, t: Timer) {
        let cfg = Arc::clone(&self.cfg);
        match t {
            Timer::Rebalance => {
                if !self.is_stopping() {
                    self.rebalance();
                }
                self.schedule(cfg.rebalance_interval, Timer::Rebalance);
            }
            Timer::Heartbeat => {
                self.heartbeat();
                self.schedule(cfg.heartbeat_interval, Timer::Heartbeat);
            }
            Timer::Commit => {
                self.commit_all();
                self.schedule(cfg.commit_interval, Timer::Commit);
            }
            Timer::LockRetry => {
                self.lock_retry_armed = false;
                self.acquire();
            }
            Timer::LockRenew => {
                self.renew_locks();
                self.schedule(cfg.lock_renew_interval, Timer::LockRenew);
            }
            Timer::Pull(mq, gen) if self.gen_of(&mq) == Some(gen) => self.pull(&mq),
            Timer::LocalRetry(mq, gen) if self.gen_of(&mq) == Some(gen) => {
                let msgs = self
                    .queues
                    .get_mut(&mq)
                    .map(|q| std::mem::take(&mut q.local_retry))
                    .unwrap_or_default();
                self.dispatch_concurrent(&mq, gen, msgs);
            }
            Timer::Resume(mq, gen) if self.gen_of(&mq) == Some(gen) => self.consume_orderly(&mq),
            Timer::DropDeadline(mq, gen) if self.gen_of(&mq) == Some(gen) => {
                self.finish_drop(&mq);
            }
            _ => {}
        }
    }

    pub fn gen_of(&self, mq: &MessageQueue) -> Option<u64> {
        self.queues.get(mq).map(|q| q.gen)
    }

    /// Returns whether a rebalance is due.
    fn on_event(&mut self, ev: Event) -> bool {
        match ev {
            Event::Pulled { mq, gen, result } => {
                if self.gen_of(&mq) == Some(gen) {
                    self.on_pulled(&mq, result);
                }
                false
            }
            Event::Consumed { mq, gen, outcome } => {
                if self.gen_of(&mq) == Some(gen) {
                    self.on_consumed(&mq, gen, outcome);
                }
                false
            }
            Event::Notified => true,
            Event::Shutdown(ack) => {
                self.begin_shutdown(ack);
                false
            }
        }
    }

    /// Sends the queue's next pull, unless it is paused by flow control or handed over.
    pub fn pull(&mut self, mq: &MessageQueue) {
        let clustering = self.clustering();
        let flow = self.cfg.flow;
        let stopping = self.is_stopping();
        let Some(q) = self.queues.get_mut(mq) else {
            return;
        };
        if q.dropping || stopping {
            return;
        }
        let gen = q.gen;
        if q.pq.should_pause(flow) {
            self.schedule(FLOW_BACKOFF, Timer::Pull(mq.clone(), gen));
            return;
        }
        let mut opts =
            PullOptions::new(q.next_offset, self.cfg.pull_batch_size, self.cfg.long_poll);
        opts.subscription = q.expr.clone();
        if clustering {
            opts.commit_offset = q.pq.commit_offset();
            if opts.commit_offset.is_some() {
                q.committed = opts.commit_offset;
            }
        }
        let tx = self.events_tx.clone();
        let m = mq.clone();
        self.api.pull_async(mq, &opts, move |result| {
            let _ = tx.send(Event::Pulled { mq: m, gen, result });
        });
    }

    fn on_pulled(&mut self, mq: &MessageQueue, result: Result<PullResult, ClientError>) {
        let Some(q) = self.queues.get_mut(mq) else {
            return;
        };
        if q.dropping {
            return;
        }
        let gen = q.gen;
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                if !self.is_stopping() {
                    tracing::debug!(queue = %mq, error = %e, "pull failed; trying again shortly");
                }
                self.schedule(PULL_ERROR_BACKOFF, Timer::Pull(mq.clone(), gen));
                return;
            }
        };
        q.next_offset = q.next_offset.max(r.next_offset);
        if r.status == PullStatus::OffsetMoved {
            // The offset fell out of the queue: go on from where the broker says.
            q.next_offset = r.next_offset;
        }
        let msgs = r.messages;
        q.pq.put(msgs.iter().map(|m| (m.queue_offset, m.body.len())));
        q.pq.advance_to(q.next_offset);
        if self.listener.is_orderly() {
            q.waiting.extend(msgs);
            self.consume_orderly(mq);
        } else {
            self.dispatch_concurrent(mq, gen, msgs);
        }
        self.pull(mq);
    }

    pub fn send_work(&mut self, work: Work) {
        if let Some(tx) = &self.work_tx {
            let _ = tx.send(work);
        }
    }

    /// Stops pulling, lets the messages in flight finish (up to the grace period), commits,
    /// gives the queues back and unregisters.
    fn begin_shutdown(&mut self, ack: flume::Sender<()>) {
        self.stopping = Some((Instant::now() + self.cfg.shutdown_grace, ack));
        self.pending.clear();
        let all: Vec<MessageQueue> = self.queues.keys().cloned().collect();
        for mq in all {
            self.start_drop(&mq);
        }
    }

    fn finish_shutdown(&mut self) {
        let all: Vec<MessageQueue> = self.queues.keys().cloned().collect();
        for mq in all {
            self.finish_drop(&mq);
        }
        self.unregister();
        self.work_tx = None;
        if let Some((_, ack)) = self.stopping.take() {
            let _ = ack.send(());
        }
    }

    /// Publishes the queues consumed now (not those being handed over).
    pub fn publish_assignment(&self) {
        let mut now: Vec<MessageQueue> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.dropping)
            .map(|(mq, _)| mq.clone())
            .collect();
        now.sort();
        let mut cur = crate::lock(&self.assignment.queues);
        if *cur != now {
            *cur = now;
            self.assignment.changed.notify_all();
        }
    }
}
