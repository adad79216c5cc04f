//! `Producer`: sends messages to a topic's queues, found through the NameServers.
//!
//! A send picks a writable queue of the topic's route round robin, skipping brokers the
//! [`LatencyFaultTolerance`](crate::fault::LatencyFaultTolerance) marks as slow or failing,
//! sends on the broker's pipelined connection, records the latency, and on a failure worth
//! retrying (transport errors, SystemBusy with backoff, ServiceNotAvailable, FlushDiskTimeout
//! and the like: see [`is_retryable_status`](crate::error::is_retryable_status)) tries again
//! up to `retries` more times on another broker, within the send timeout. Kinds of send:
//! - [`Producer::send`]: blocks until stored;
//! - [`Producer::send_async`]: returns a [`SendFuture`] once the request is written;
//! - [`Producer::send_oneway`]: writes the request, awaits nothing, never retries;
//! - [`Producer::send_batch`]: several messages of one topic to one queue, stored together;
//! - [`Producer::send_ordered`] / [`Producer::send_with_selector`]: to the queue a key (or a
//!   selector) chooses; retries stay on that queue, and at most one send per queue is in
//!   flight from this producer, so neither pipelining nor retries reorder a queue.
//!
//! Every message gets a client-generated unique id ([`crate::uniq`]).
//!
//! A topic no NameServer routes yet is sent to by a fallback route, queue 0 of every master
//! (whose first put creates the topic), until the topic's own route appears, asked for again
//! every few milliseconds meanwhile ([`TopicRouteCache::get_for_send`]). Ordered and selector
//! sends need the topic's own route: a key mapped over the fallback's queues would move when
//! the real route arrives.

mod config;
mod engine;
mod future;
mod message;
mod retry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shardmq_protocol::message::SendBatchRequest;

pub use config::{ProducerBuilder, ProducerConfig};
pub use future::SendFuture;
pub use message::{validate_batch, validate_topic, Message, SendReceipt, TOPIC_MAX_LEN};

use engine::{attempt, Done, Outcome, Payload, SendJob, Target};
use retry::RetryWorker;

use crate::error::ClientError;
use crate::fault::LatencyFaultTolerance;
use crate::lock;
use crate::pool::ConnectionPool;
use crate::route::{queue_for_key, select_queue, MessageQueue, QueueTarget, TopicRouteCache};
use crate::uniq::next_unique_id;

/// A message producer. Cloning is cheap and shares the producer.
#[derive(Clone)]
pub struct Producer {
    core: Arc<Core>,
}

/// What every send shares.
pub(crate) struct Core {
    config: ProducerConfig,
    pool: Arc<ConnectionPool>,
    routes: TopicRouteCache,
    fault: Mutex<LatencyFaultTolerance>,
    running: AtomicBool,
    retry: Mutex<Option<RetryWorker>>,
    /// One lock per queue that ordered sends went to.
    order_locks: Mutex<HashMap<MessageQueue, Arc<Mutex<()>>>>,
}

impl Core {
    fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    fn submit_retry(&self, at: Instant, job: Box<SendJob>) -> Result<(), Box<SendJob>> {
        match &*lock(&self.retry) {
            Some(w) => w.submit(at, job),
            None => Err(job),
        }
    }

    fn stop(&self) {
        self.running.store(false, Ordering::Release);
        let worker = lock(&self.retry).take();
        if let Some(w) = worker {
            w.stop();
        }
        self.pool.close_all();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking send on the shared I/O thread would wait for that very thread: refused before
/// anything is sent.
fn refuse_on_io_thread() -> Result<(), ClientError> {
    if crate::conn::on_io_thread() {
        return Err(ClientError::WaitOnIoThread);
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    fn with_config(config: ProducerConfig) -> Result<Producer, ClientError> {
        let pool = Arc::new(ConnectionPool::new(config.connect_timeout));
        let routes = TopicRouteCache::new(
            config.namesrv.clone(),
            Arc::clone(&pool),
            config.send_timeout,
        )?
        .with_max_age(config.route_max_age);
        Ok(Producer {
            core: Arc::new(Core {
                config,
                pool,
                routes,
                fault: Mutex::new(LatencyFaultTolerance::new()),
                running: AtomicBool::new(false),
                retry: Mutex::new(None),
                order_locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.core.config
    }

    /// Starts the producer (its retry worker). Connections open on first use. Starting a
    /// running producer does nothing.
    pub fn start(&self) -> Result<(), ClientError> {
        let mut retry = lock(&self.core.retry);
        if retry.is_none() {
            let worker = RetryWorker::spawn(Arc::downgrade(&self.core)).map_err(|source| {
                ClientError::Io {
                    addr: String::new(),
                    source,
                }
            })?;
            *retry = Some(worker);
        }
        self.core.running.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops the producer: sends waiting for a retry fail, connections close (sends in
    /// flight on them fail). It may be started again.
    pub fn shutdown(&self) {
        self.core.stop();
    }

    pub fn is_running(&self) -> bool {
        self.core.is_running()
    }

    /// The route cache (routes of the topics sent to).
    pub fn routes(&self) -> &TopicRouteCache {
        &self.core.routes
    }

    /// The queues `topic`'s messages may be sent to.
    pub fn writable_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        let route = self.core.routes.get(topic)?;
        Ok(route.write.iter().map(|q| q.queue.clone()).collect())
    }

    /// Whether sends currently go to `broker_name` (not avoided for slowness or failure).
    pub fn is_broker_available(&self, broker_name: &str) -> bool {
        lock(&self.core.fault).is_available(broker_name, Instant::now())
    }

    /// Sends `msg` and blocks until it is stored (or every try failed). Like every blocking
    /// send, refused with [`ClientError::WaitOnIoThread`] (and nothing sent) on the client's
    /// shared I/O thread, that is inside a callback or a polled future's waker.
    pub fn send(&self, msg: Message) -> Result<SendReceipt, ClientError> {
        refuse_on_io_thread()?;
        self.send_async(msg).wait()
    }

    /// Sends `msg`, returning once the request is written (and, the first time for a topic or
    /// broker, after the route lookup and connect); the future resolves when it is stored.
    pub fn send_async(&self, msg: Message) -> SendFuture {
        match self.one_job(&msg, Target::RoundRobin) {
            Ok((job, rx)) => {
                let deadline = job.deadline;
                attempt(&self.core, job);
                SendFuture::new(rx, deadline)
            }
            Err(e) => SendFuture::failed(e),
        }
    }

    /// Sends `msg` like [`Producer::send_async`] and hands the outcome to `done`, exactly
    /// once, after any retries: on the thread that learns it — the client's shared I/O
    /// thread for an answer or a timeout, the producer's retry thread for a retry that could
    /// not be written, this thread when the send cannot start (a stopped producer, an
    /// invalid message). `done` must not block. The cheapest way to keep many sends in
    /// flight: no channel or future per send.
    pub fn send_with(
        &self,
        msg: Message,
        done: impl FnOnce(Result<SendReceipt, ClientError>) + Send + 'static,
    ) {
        let payload = match self.one_payload(&msg) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        let done = Done::Callback(Box::new(move |outcome: Outcome| {
            done(future::first(outcome));
        }));
        let job = self.job_to(msg.topic, payload, Target::RoundRobin, done);
        attempt(&self.core, job);
    }

    /// Writes `msg` to a queue and returns: no answer, no retry, no latency recorded.
    pub fn send_oneway(&self, msg: Message) -> Result<(), ClientError> {
        self.check_running()?;
        msg.validate(self.core.config.max_message_size)?;
        let route = self.core.routes.get_for_send(&msg.topic)?;
        let target = {
            let fault = lock(&self.core.fault);
            let start = route.next_index();
            select_queue(&route.write, start, None, &fault, Instant::now()).cloned()
        }
        .ok_or_else(|| ClientError::NoRoute {
            topic: msg.topic.clone(),
        })?;
        let request = Payload::One(msg.to_request(next_unique_id(), now_ms()))
            .request(&self.core.config.group, &target.queue);
        self.core.pool.get(&target.addr)?.oneway(&request)
    }

    /// Sends messages of one topic together to one queue; blocks until stored. Receipts come
    /// in the messages' order.
    pub fn send_batch(&self, msgs: Vec<Message>) -> Result<Vec<SendReceipt>, ClientError> {
        refuse_on_io_thread()?;
        self.check_running()?;
        validate_batch(&msgs, self.core.config.max_message_size)?;
        let born = now_ms();
        let entries = msgs
            .iter()
            .map(|m| m.to_batch_entry(next_unique_id(), born))
            .collect();
        let topic = msgs[0].topic.clone();
        let payload = Payload::Batch(SendBatchRequest {
            producer_group: String::new(),
            topic: topic.clone(),
            queue_id: 0,
            entries,
        });
        let (job, rx) = self.job(topic, payload, Target::RoundRobin);
        let deadline = job.deadline;
        attempt(&self.core, job);
        SendFuture::new(rx, deadline).wait_all()
    }

    /// Sends `msg` to the queue `key` maps to (a stable hash over the topic's writable
    /// queues) and blocks until stored. Messages with one key keep their order.
    pub fn send_ordered(&self, msg: Message, key: &str) -> Result<SendReceipt, ClientError> {
        self.send_with_selector(msg, |queues| {
            let i = crate::route::fnv1a(key.as_bytes()) % queues.len().max(1) as u64;
            Some(i as usize)
        })
    }

    /// Sends `msg` to the queue `select` picks (by index into the topic's writable queues)
    /// and blocks until stored; retries stay on that queue, and sends to one queue go one at
    /// a time.
    pub fn send_with_selector(
        &self,
        msg: Message,
        select: impl FnOnce(&[MessageQueue]) -> Option<usize>,
    ) -> Result<SendReceipt, ClientError> {
        refuse_on_io_thread()?;
        self.check_running()?;
        msg.validate(self.core.config.max_message_size)?;
        let route = self.core.routes.get(&msg.topic)?;
        let queues: Vec<MessageQueue> = route.write.iter().map(|q| q.queue.clone()).collect();
        let no_route = || ClientError::NoRoute {
            topic: msg.topic.clone(),
        };
        if queues.is_empty() {
            return Err(no_route());
        }
        let target: QueueTarget = select(&queues)
            .and_then(|i| route.write.get(i))
            .cloned()
            .ok_or_else(no_route)?;
        let queue_lock = Arc::clone(
            lock(&self.core.order_locks)
                .entry(target.queue.clone())
                .or_default(),
        );
        let _one_at_a_time = lock(&queue_lock);
        let (job, rx) = self.one_job(&msg, Target::Fixed(target))?;
        let deadline = job.deadline;
        attempt(&self.core, job);
        SendFuture::new(rx, deadline).wait()
    }

    /// The queue an ordering key maps to (what `send_ordered` would use now).
    pub fn queue_for_key(&self, topic: &str, key: &str) -> Result<MessageQueue, ClientError> {
        let route = self.core.routes.get(topic)?;
        queue_for_key(&route.write, key)
            .map(|q| q.queue.clone())
            .ok_or_else(|| ClientError::NoRoute {
                topic: topic.to_string(),
            })
    }

    fn check_running(&self) -> Result<(), ClientError> {
        if self.core.is_running() {
            Ok(())
        } else {
            Err(ClientError::NotRunning)
        }
    }

    fn one_job(
        &self,
        msg: &Message,
        target: Target,
    ) -> Result<(SendJob, flume::Receiver<Outcome>), ClientError> {
        let payload = self.one_payload(msg)?;
        Ok(self.job(msg.topic.clone(), payload, target))
    }

    /// One message's request, once the producer runs and the message passes its checks.
    fn one_payload(&self, msg: &Message) -> Result<Payload, ClientError> {
        self.check_running()?;
        msg.validate(self.core.config.max_message_size)?;
        Ok(Payload::One(msg.to_request(next_unique_id(), now_ms())))
    }

    fn job(
        &self,
        topic: String,
        payload: Payload,
        target: Target,
    ) -> (SendJob, flume::Receiver<Outcome>) {
        let (done, rx) = flume::bounded(1);
        (self.job_to(topic, payload, target, Done::Channel(done)), rx)
    }

    fn job_to(&self, topic: String, payload: Payload, target: Target, done: Done) -> SendJob {
        SendJob {
            topic,
            payload,
            target,
            deadline: Instant::now() + self.core.config.send_timeout,
            tries: 0,
            max_tries: self.core.config.retries.saturating_add(1),
            busy: 0,
            avoid: None,
            refresh_route: false,
            last_err: None,
            done,
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("group", &self.core.config.group)
            .field("namesrv", &self.core.config.namesrv)
            .field("running", &self.is_running())
            .finish()
    }
}
