//! Which queues this member consumes, and handing them over without duplicates.
//!
//! - **Rebalance** (every interval and on a broker's notification): for each subscribed
//!   topic (and, CLUSTERING, the group's retry topic) the readable queues and the group's
//!   members go through the allocation strategy; BROADCASTING takes every queue.
//! - **Taking a queue** (CLUSTERING): the member first locks it on its broker. A member
//!   giving the queue up lets its messages in flight finish, commits, and only then unlocks,
//!   so the taker starts exactly where the giver stopped: a rebalance among live members
//!   consumes nothing twice. A member that is gone loses its locks at once (its connection
//!   closed) and its successor starts from its last committed offset: what it consumed after
//!   that commit comes again. (RocketMQ locks only for orderly consumption; locking always
//!   is what makes a graceful hand-over exact.)
//! - **Where a queue starts**: the committed offset; for a group with none, the consume-from
//!   policy (a retry topic always from its first offset).
//! - **Offsets** are committed every interval, on pulls, at hand-over and at shutdown;
//!   BROADCASTING keeps them in the member's own file instead.

use std::collections::{BTreeMap, BTreeSet};

use shardmq_protocol::groups::{retry_topic, RETRY_PREFIX};
use shardmq_protocol::message::{ConsumerData, HeartbeatRequest};

use super::broker::BrokerCalls;
use super::driver::{Driver, QueueState, Timer};
use super::{ConsumeFrom, MessageModel};
use crate::consumer::process_queue::ProcessQueue;
use crate::consumer::rebalance::allocate;
use crate::error::ClientError;
use crate::route::MessageQueue;

impl Driver {
    pub(super) fn calls(&self) -> BrokerCalls<'_> {
        BrokerCalls::of(&self.api)
    }

    /// Locks (or renews) `queues` on their masters. For each queue whose broker answered:
    /// whether this member holds it now.
    fn lock_queues(&self, queues: Vec<MessageQueue>) -> BTreeMap<MessageQueue, bool> {
        let mut by_addr: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
        for mq in queues {
            match self.api.master_of(&mq) {
                Ok(addr) => by_addr.entry(addr).or_default().push(mq),
                Err(e) => tracing::debug!(queue = %mq, error = %e, "no master to lock on"),
            }
        }
        let mut held = BTreeMap::new();
        for (addr, qs) in by_addr {
            let names = qs.iter().map(lock_name).collect();
            match self
                .calls()
                .lock(&addr, &self.cfg.group, &self.cfg.client_id, names)
            {
                Ok(locked) => held.extend(qs.into_iter().map(|mq| {
                    let mine = locked.contains(&lock_name(&mq));
                    (mq, mine)
                })),
                Err(e) => tracing::debug!(%addr, error = %e, "cannot lock queues"),
            }
        }
        held
    }

    /// The subscriptions, with the group's retry topic when CLUSTERING.
    pub fn subscriptions(&self) -> Vec<(String, String)> {
        let mut subs = self.cfg.subscriptions.clone();
        if self.clustering() {
            subs.push((retry_topic(&self.cfg.group), "*".into()));
        }
        subs
    }

    fn heartbeat_request(&self) -> HeartbeatRequest {
        HeartbeatRequest {
            client_id: self.cfg.client_id.clone(),
            producer_groups: Vec::new(),
            consumers: vec![ConsumerData {
                group: self.cfg.group.clone(),
                message_model: match self.cfg.model {
                    MessageModel::Clustering => 0,
                    MessageModel::Broadcasting => 1,
                },
                consume_from: match self.cfg.consume_from {
                    ConsumeFrom::LastOffset => 0,
                    ConsumeFrom::FirstOffset => 1,
                    ConsumeFrom::Timestamp(_) => 2,
                },
                subscriptions: self.subscriptions(),
            }],
        }
    }

    /// Every broker address in the subscribed topics' routes (masters and slaves).
    fn broker_addrs(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (topic, _) in &self.cfg.subscriptions {
            if let Ok(r) = self.api.routes().get(topic) {
                for b in &r.route.brokers {
                    out.extend(b.addrs.iter().map(|(_, a)| a.clone()));
                }
            }
        }
        out
    }

    /// Tells every broker of the subscribed topics that this member is alive.
    pub fn heartbeat(&mut self) {
        let hb = self.heartbeat_request();
        for addr in self.broker_addrs() {
            match self.calls().heartbeat(&addr, &hb) {
                Ok(()) => {
                    self.brokers.insert(addr);
                }
                Err(e) => tracing::debug!(%addr, error = %e, "heartbeat failed"),
            }
        }
    }

    /// Recomputes this member's queues and starts handing over the difference.
    pub fn rebalance(&mut self) {
        if self
            .broker_addrs()
            .iter()
            .any(|a| !self.brokers.contains(a))
        {
            self.heartbeat();
        }
        let mut want: BTreeMap<MessageQueue, String> = BTreeMap::new();
        for (topic, expr) in self.subscriptions() {
            match self.allocate_topic(&topic) {
                Ok(queues) => want.extend(queues.into_iter().map(|q| (q, expr.clone()))),
                Err(e) => {
                    tracing::debug!(%topic, error = %e, "cannot rebalance the topic now; keeping its queues");
                    for (mq, q) in &self.queues {
                        if mq.topic == topic && !q.dropping {
                            want.insert(mq.clone(), q.expr.clone());
                        }
                    }
                }
            }
        }
        let gone: Vec<MessageQueue> = self
            .queues
            .iter()
            .filter(|(mq, q)| !q.dropping && !want.contains_key(*mq))
            .map(|(mq, _)| mq.clone())
            .collect();
        for mq in gone {
            self.start_drop(&mq);
        }
        self.pending.retain(|mq, _| want.contains_key(mq));
        for (mq, expr) in want {
            let held = self.queues.get(&mq).is_some_and(|q| !q.dropping);
            if !held {
                self.pending.insert(mq, expr);
            }
        }
        self.acquire();
        self.publish_assignment();
    }

    fn allocate_topic(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        let route = self.api.routes().get(topic)?;
        let queues: Vec<MessageQueue> = route.read.iter().map(|t| t.queue.clone()).collect();
        if self.cfg.model == MessageModel::Broadcasting {
            return Ok(queues);
        }
        // Any broker of the topic knows the group's members (every member heartbeats to all).
        let mut last = ClientError::NoRoute {
            topic: topic.to_owned(),
        };
        let addrs: BTreeSet<&str> = route.read.iter().map(|t| t.addr.as_str()).collect();
        for addr in addrs {
            match self.calls().members(addr, &self.cfg.group) {
                Ok(members) if members.contains(&self.cfg.client_id) => {
                    return Ok(allocate(
                        self.cfg.strategy,
                        &self.cfg.client_id,
                        &members,
                        &queues,
                    ));
                }
                Ok(_) => {
                    last =
                        ClientError::Config(format!("broker {addr} does not list this member yet"))
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts consuming the pending queues this member can take now (CLUSTERING: those it
    /// could lock); tries the rest again later.
    pub fn acquire(&mut self) {
        if self.is_stopping() {
            self.pending.clear();
            return;
        }
        let ready: Vec<MessageQueue> = self
            .pending
            .keys()
            .filter(|mq| !self.queues.contains_key(*mq))
            .cloned()
            .collect();
        let granted: Vec<MessageQueue> = if self.clustering() {
            self.lock_queues(ready)
                .into_iter()
                .filter_map(|(mq, mine)| mine.then_some(mq))
                .collect()
        } else {
            ready
        };
        for mq in granted {
            let Some(expr) = self.pending.get(&mq).cloned() else {
                continue;
            };
            match self.start_queue(&mq, expr) {
                Ok(()) => {
                    self.pending.remove(&mq);
                }
                Err(e) => {
                    tracing::warn!(queue = %mq, error = %e, "cannot start the queue; trying again")
                }
            }
        }
        self.retry_pending_later();
        self.publish_assignment();
    }

    /// Asks again for the pending queues after `lock_retry_interval` (one timer at a time,
    /// however often this is called).
    pub fn retry_pending_later(&mut self) {
        if !self.pending.is_empty() && !self.lock_retry_armed {
            self.lock_retry_armed = true;
            let every = self.cfg.lock_retry_interval;
            self.schedule(every, Timer::LockRetry);
        }
    }

    fn start_queue(&mut self, mq: &MessageQueue, expr: String) -> Result<(), ClientError> {
        let offset = self.start_offset(mq)?;
        let gen = self.new_gen();
        let mut pq = ProcessQueue::new();
        pq.advance_to(offset);
        self.queues.insert(
            mq.clone(),
            QueueState {
                gen,
                expr,
                pq,
                next_offset: offset,
                committed: None,
                dropping: false,
                local_retry: Vec::new(),
                waiting: Default::default(),
                consuming: false,
                suspended: None,
            },
        );
        tracing::debug!(queue = %mq, offset, "consuming");
        self.pull(mq);
        Ok(())
    }

    fn start_offset(&self, mq: &MessageQueue) -> Result<u64, ClientError> {
        let stored = match &self.local {
            Some((_, offsets)) => offsets.get(mq).copied(),
            None => self.api.committed_offset(mq)?,
        };
        if let Some(o) = stored {
            return Ok(o);
        }
        if mq.topic.starts_with(RETRY_PREFIX) {
            return self.api.min_offset(mq);
        }
        match self.cfg.consume_from {
            ConsumeFrom::LastOffset => self.api.max_offset(mq),
            ConsumeFrom::FirstOffset => self.api.min_offset(mq),
            ConsumeFrom::Timestamp(ms) => self.api.offset_for_time(mq, ms),
        }
    }

    /// Stops pulling `mq`; it is committed and given back once its messages in flight are
    /// done (or the grace period ends).
    pub fn start_drop(&mut self, mq: &MessageQueue) {
        let grace = self.cfg.shutdown_grace;
        let orderly = self.listener.is_orderly();
        let Some(q) = self.queues.get_mut(mq) else {
            return;
        };
        q.dropping = true;
        // Orderly: messages waiting their turn stay in the process queue, so the commit
        // offset stays below them; only the batch with the listener is waited for.
        q.waiting.clear();
        let gen = q.gen;
        if q.drained(orderly) {
            self.finish_drop(mq);
        } else {
            self.schedule(grace, Timer::DropDeadline(mq.clone(), gen));
        }
        self.publish_assignment();
    }

    /// Commits `mq`'s offset, gives its lock back and forgets it.
    pub fn finish_drop(&mut self, mq: &MessageQueue) {
        let Some(q) = self.queues.remove(mq) else {
            return;
        };
        if let Some(offset) = q.pq.commit_offset() {
            self.commit(mq, offset);
        }
        if self.clustering() {
            let given = self.api.master_of(mq).and_then(|addr| {
                self.calls().unlock(
                    &addr,
                    &self.cfg.group,
                    &self.cfg.client_id,
                    vec![lock_name(mq)],
                )
            });
            if let Err(e) = given {
                tracing::debug!(queue = %mq, error = %e, "cannot unlock; the lock will expire");
            }
        }
        self.local_save();
        self.publish_assignment();
        if self.pending.contains_key(mq) {
            self.acquire();
        }
    }

    fn commit(&mut self, mq: &MessageQueue, offset: u64) {
        if let Some((_, offsets)) = &mut self.local {
            offsets.insert(mq.clone(), offset);
            return;
        }
        if let Err(e) = self.api.commit_offset(mq, offset) {
            tracing::warn!(queue = %mq, offset, error = %e, "cannot commit the offset");
        }
    }

    fn local_save(&self) {
        if let Some((store, offsets)) = &self.local {
            if let Err(e) = store.save(offsets) {
                tracing::warn!(path = %store.path().display(), error = %e, "cannot save offsets");
            }
        }
    }

    /// Commits every queue whose offset moved since its last commit.
    pub fn commit_all(&mut self) {
        let moved: Vec<(MessageQueue, u64)> = self
            .queues
            .iter()
            .filter_map(|(mq, q)| {
                let o = q.pq.commit_offset()?;
                (q.committed != Some(o)).then(|| (mq.clone(), o))
            })
            .collect();
        for (mq, o) in &moved {
            self.commit(mq, *o);
            if let Some(q) = self.queues.get_mut(mq) {
                q.committed = Some(*o);
            }
        }
        if !moved.is_empty() {
            self.local_save();
        }
    }

    /// Renews the locks of the queues consumed; a queue whose lock was lost stops at once
    /// (without committing: it is someone else's now) and is asked for again.
    pub fn renew_locks(&mut self) {
        let consumed: Vec<MessageQueue> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.dropping)
            .map(|(mq, _)| mq.clone())
            .collect();
        for (mq, mine) in self.lock_queues(consumed) {
            if !mine {
                tracing::warn!(queue = %mq, "lost the queue's lock; stopping it");
                if let Some(q) = self.queues.remove(&mq) {
                    self.pending.insert(mq, q.expr);
                }
            }
        }
        self.publish_assignment();
        self.retry_pending_later();
    }

    /// Leaves the group on every broker (the others rebalance at once).
    pub fn unregister(&mut self) {
        let brokers = std::mem::take(&mut self.brokers);
        for addr in brokers {
            if let Err(e) = self
                .calls()
                .unregister(&addr, &self.cfg.client_id, &self.cfg.group)
            {
                tracing::debug!(%addr, error = %e, "cannot unregister");
            }
        }
    }
}

/// A queue as lock requests name it: (topic, queue id) on its broker.
fn lock_name(mq: &MessageQueue) -> (String, u32) {
    (mq.topic.clone(), mq.queue_id)
}
