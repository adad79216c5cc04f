//! The ShardMQ driver: `shardmq_client::Producer` and `PullConsumer` against a NameServer
//! given with `--namesrv`, or against a broker started for the run (`--spawn`).
//!
//! A single send is `Producer::send_with`, whose callback posts the send's outcome to the
//! producer thread's channel ([`Notify`]) from the client's I/O thread, so completions are
//! seen in the order they happen (no head-of-line wait on the oldest send) and a send costs
//! no future, channel or waker of its own. A batch is
//! `Producer::send_batch`, which blocks: batches go to `inflight` worker threads per sender
//! that post their outcome on the same channel.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use shardmq_client::consumer::PullOptions;
use shardmq_client::{Message, MessageQueue, Producer, PullConsumer, PullStatus};

use super::spawn::{SpawnOptions, SpawnedBroker};
use super::{
    admin, assigned, DriverError, Event, Fetcher, Layout, Notify, Sender, StartAt, Target,
};

/// Messages asked for per pull (the broker caps it at 1024).
const PULL_MSGS_MAX: u32 = 256;
/// Producer and consumer group names.
const PRODUCER_GROUP: &str = "shardmq-bench";

/// A ShardMQ cluster reached through its NameServer; owns the broker when it spawned one.
#[derive(Debug)]
pub struct ShardMq {
    namesrv: String,
    spawned: Option<SpawnedBroker>,
    flush: Option<String>,
}

impl ShardMq {
    /// An existing cluster.
    pub fn connect(namesrv: &str) -> ShardMq {
        ShardMq {
            namesrv: namesrv.to_string(),
            spawned: None,
            flush: None,
        }
    }

    /// A fresh standalone broker, stopped and removed when this is dropped.
    pub fn spawn(opts: &SpawnOptions) -> Result<ShardMq, DriverError> {
        let broker = SpawnedBroker::start(opts)?;
        Ok(ShardMq {
            namesrv: broker.namesrv.clone(),
            spawned: Some(broker),
            flush: Some(opts.flush.clone()),
        })
    }
}

impl Target for ShardMq {
    fn name(&self) -> &str {
        "shardmq"
    }

    fn describe(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("namesrv".into(), self.namesrv.clone().into());
        m.insert("spawned".into(), self.spawned.is_some().into());
        if let Some(f) = &self.flush {
            m.insert("flush".into(), f.clone().into());
        }
        m
    }

    fn data_dir(&self) -> Option<PathBuf> {
        self.spawned.as_ref().map(|b| b.data_dir.clone())
    }

    fn server_pid(&self) -> Option<u32> {
        self.spawned.as_ref().map(SpawnedBroker::pid)
    }

    fn create_topics(&self, layout: &Layout) -> Result<(), DriverError> {
        let names: Vec<String> = (0..layout.topics).map(|t| layout.topic(t)).collect();
        let queues = u32::try_from(layout.queues).unwrap_or(u32::MAX);
        admin::create_topics(&self.namesrv, &names, queues)
    }

    fn sender(
        &self,
        layout: &Layout,
        _id: usize,
        inflight: usize,
        notify: Notify,
    ) -> Result<Box<dyn Sender>, DriverError> {
        let producer = Producer::builder()
            .namesrv_addr(self.namesrv.clone())
            .group(PRODUCER_GROUP)
            .build()?;
        producer.start()?;
        // Look the routes up now, so that the first send is not the one that waits for it.
        for t in 0..layout.topics {
            producer.writable_queues(&layout.topic(t))?;
        }
        Ok(Box::new(ShardSender {
            producer,
            topics: (0..layout.topics).map(|t| layout.topic(t)).collect(),
            notify,
            inflight,
            batches: None,
        }))
    }

    fn fetchers(
        &self,
        layout: &Layout,
        group: &str,
        count: usize,
        start: StartAt,
    ) -> Result<Vec<Box<dyn Fetcher>>, DriverError> {
        let mut out: Vec<Box<dyn Fetcher>> = Vec::with_capacity(count);
        for k in 0..count {
            let consumer = PullConsumer::builder()
                .namesrv_addr(self.namesrv.clone())
                .group(group)
                .build()?;
            consumer.start()?;
            let mut all = Vec::new();
            for t in 0..layout.topics {
                all.extend(consumer.queues(&layout.topic(t))?);
            }
            all.sort();
            let mut queues = Vec::new();
            for i in assigned(all.len(), k, count) {
                let q = all[i].clone();
                let offset = match start {
                    StartAt::Earliest => consumer.min_offset(&q)?,
                    StartAt::Latest => consumer.max_offset(&q)?,
                };
                queues.push((q, offset));
            }
            out.push(Box::new(ShardFetcher {
                consumer,
                queues,
                next: 0,
            }));
        }
        Ok(out)
    }
}

/// Posts a send's token when its future is woken.
/// The worker threads sending batches.
struct BatchPool {
    jobs: Option<flume::Sender<(u64, Vec<Message>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for BatchPool {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct ShardSender {
    producer: Producer,
    topics: Vec<String>,
    notify: Notify,
    inflight: usize,
    batches: Option<BatchPool>,
}

impl ShardSender {
    fn batch_pool(&mut self) -> Result<&BatchPool, DriverError> {
        if self.batches.is_none() {
            let (jobs, rx) = flume::unbounded::<(u64, Vec<Message>)>();
            let mut threads = Vec::new();
            for i in 0..self.inflight.max(1) {
                let (rx, done, producer) = (rx.clone(), self.notify.clone(), self.producer.clone());
                let t = std::thread::Builder::new()
                    .name(format!("bench-batch-{i}"))
                    .spawn(move || {
                        for (token, msgs) in rx.iter() {
                            let r = producer
                                .send_batch(msgs)
                                .map(|_| ())
                                .map_err(DriverError::from);
                            done.post(Event::Done(token, r));
                        }
                    })
                    .map_err(|e| DriverError::io("start a batch sender thread", e))?;
                threads.push(t);
            }
            self.batches = Some(BatchPool {
                jobs: Some(jobs),
                threads,
            });
        }
        self.batches
            .as_ref()
            .ok_or_else(|| DriverError::Admin("batch pool missing".into()))
    }
}

impl Sender for ShardSender {
    fn submit(&mut self, token: u64, topic: usize, bodies: Vec<Bytes>) -> Result<(), DriverError> {
        let name = &self.topics[topic % self.topics.len()];
        if bodies.len() == 1 {
            let body = bodies.into_iter().next().unwrap_or_default();
            // The outcome is posted from the client's I/O thread: no future, channel or
            // waker per send.
            let notify = self.notify.clone();
            self.producer
                .send_with(Message::new(name.clone(), body), move |r| {
                    notify.post(Event::Done(token, r.map(|_| ()).map_err(DriverError::from)));
                });
            return Ok(());
        }
        let msgs = bodies
            .into_iter()
            .map(|b| Message::new(name.clone(), b))
            .collect();
        let pool = self.batch_pool()?;
        match &pool.jobs {
            Some(jobs) if jobs.send((token, msgs)).is_ok() => Ok(()),
            _ => Err(DriverError::Admin("the batch senders stopped".into())),
        }
    }
}

impl Drop for ShardSender {
    fn drop(&mut self) {
        self.batches.take();
        self.producer.shutdown();
    }
}

struct ShardFetcher {
    consumer: PullConsumer,
    queues: Vec<(MessageQueue, u64)>,
    next: usize,
}

impl Fetcher for ShardFetcher {
    /// One pass over this consumer's queues. With one queue the pull long-polls up to
    /// `wait`; with several each is pulled without waiting, and a pass that found nothing
    /// sleeps a millisecond (or `wait`, if shorter) before returning.
    fn fetch(
        &mut self,
        wait: Duration,
        on_body: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DriverError> {
        if self.queues.is_empty() {
            std::thread::sleep(wait);
            return Ok(0);
        }
        let single = self.queues.len() == 1;
        let mut found = 0;
        for _ in 0..self.queues.len() {
            let i = self.next % self.queues.len();
            self.next = self.next.wrapping_add(1);
            let (queue, offset) = &mut self.queues[i];
            let mut opts = PullOptions::new(
                *offset,
                PULL_MSGS_MAX,
                if single { wait } else { Duration::ZERO },
            );
            opts.commit_offset = Some(*offset);
            let r = self.consumer.pull_with(queue, &opts)?;
            if r.status == PullStatus::Found {
                for m in &r.messages {
                    on_body(&m.body);
                }
                found += r.messages.len();
            }
            *offset = r.next_offset;
        }
        if found == 0 && !single {
            std::thread::sleep(wait.min(Duration::from_millis(1)));
        }
        Ok(found)
    }
}

impl Drop for ShardFetcher {
    fn drop(&mut self) {
        self.consumer.shutdown();
    }
}
