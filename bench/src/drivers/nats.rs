//! The NATS JetStream driver (feature `nats`, the `async-nats` crate on a small tokio
//! runtime owned by the driver: 2 worker threads running the connections' tasks; the bench's
//! own threads enter it with `block_on`).
//!
//! Topic `t` is the stream `<prefix>-t` (file storage, one replica) over the subjects
//! `<prefix>.t.*`; a send publishes to `<prefix>.t.q` for the next `q` and completes when
//! JetStream acknowledges it (the stream stored it). JetStream has no batch publish in the
//! server versions Debian ships, so a batch is that many publishes, complete when all are
//! acknowledged. Each producer and each consumer has its own connection. A consumer group is
//! one durable pull consumer per stream (explicit acks), shared by the group's fetchers.
//!
//! Durability is the server's setting: JetStream's file store writes to the OS and syncs on
//! a timer (`sync_interval`, 2 min by default in 2.10+; not configurable before 2.10), so its
//! acknowledgement comes before a flush unless the server was set to sync every write.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures_lite::StreamExt;
use serde_json::{Map, Value as Json};
use tokio::runtime::Runtime;

use super::{assigned, DriverError, Event, Fetcher, Layout, Notify, Sender, StartAt, Target};

/// Messages one fetch hands over at most before returning.
const FETCH_MAX: usize = 256;
/// Unacknowledged messages a consumer may have out.
const MAX_ACK_PENDING: i64 = 20_000;

fn nats_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Nats(e.to_string())
}

/// A NATS server with JetStream.
pub struct NatsTarget {
    rt: Arc<Runtime>,
    url: String,
    js: Context,
    version: String,
    data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for NatsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTarget")
            .field("url", &self.url)
            .finish()
    }
}

impl NatsTarget {
    pub fn open(url: &str, data_dir: Option<PathBuf>) -> Result<NatsTarget, DriverError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-nats")
            .enable_all()
            .build()
            .map_err(|e| DriverError::io("start the tokio runtime", e))?;
        let client = rt.block_on(async_nats::connect(url)).map_err(nats_err)?;
        let version = client.server_info().version;
        // The JetStream context spawns a task: it must be made inside the runtime.
        let js = {
            let _inside = rt.enter();
            jetstream::new(client)
        };
        Ok(NatsTarget {
            js,
            rt: Arc::new(rt),
            url: url.to_string(),
            version,
            data_dir,
        })
    }

    fn context(&self) -> Result<Context, DriverError> {
        let client = self
            .rt
            .block_on(async_nats::connect(&self.url))
            .map_err(nats_err)?;
        let _inside = self.rt.enter();
        Ok(jetstream::new(client))
    }

    fn subject(layout: &Layout, t: usize, q: usize) -> String {
        format!("{}.{t}.{q}", layout.prefix)
    }
}

impl Target for NatsTarget {
    fn name(&self) -> &str {
        "nats"
    }

    fn describe(&self) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("nats_url".into(), self.url.clone().into());
        m.insert("nats_version".into(), self.version.clone().into());
        m.insert("nats_storage".into(), "file".into());
        m
    }

    fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.clone()
    }

    /// Deletes and creates each stream (file storage), so that each run starts empty.
    fn create_topics(&self, layout: &Layout) -> Result<(), DriverError> {
        self.rt.block_on(async {
            for t in 0..layout.topics {
                let name = layout.topic(t);
                let _ = self.js.delete_stream(&name).await;
                let cfg = StreamConfig {
                    name,
                    subjects: vec![format!("{}.{t}.*", layout.prefix)],
                    storage: StorageType::File,
                    num_replicas: 1,
                    ..Default::default()
                };
                self.js.create_stream(cfg).await.map_err(nats_err)?;
            }
            Ok(())
        })
    }

    fn sender(
        &self,
        layout: &Layout,
        _id: usize,
        _inflight: usize,
        notify: Notify,
    ) -> Result<Box<dyn Sender>, DriverError> {
        Ok(Box::new(NatsSender {
            rt: Arc::clone(&self.rt),
            js: self.context()?,
            subjects: (0..layout.topics)
                .map(|t| {
                    (0..layout.queues)
                        .map(|q| Self::subject(layout, t, q))
                        .collect()
                })
                .collect(),
            next: 0,
            notify,
        }))
    }

    fn fetchers(
        &self,
        layout: &Layout,
        group: &str,
        count: usize,
        start: StartAt,
    ) -> Result<Vec<Box<dyn Fetcher>>, DriverError> {
        let deliver_policy = match start {
            StartAt::Earliest => DeliverPolicy::All,
            StartAt::Latest => DeliverPolicy::New,
        };
        self.rt.block_on(async {
            for t in 0..layout.topics {
                let stream = self
                    .js
                    .get_stream(layout.topic(t))
                    .await
                    .map_err(nats_err)?;
                let cfg = pull::Config {
                    durable_name: Some(group.to_string()),
                    deliver_policy,
                    ack_policy: AckPolicy::Explicit,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                };
                stream.create_consumer(cfg).await.map_err(nats_err)?;
            }
            Ok::<(), DriverError>(())
        })?;
        let mut out: Vec<Box<dyn Fetcher>> = Vec::with_capacity(count);
        for k in 0..count {
            // More fetchers than streams share them; fewer take several each.
            let mine = match assigned(layout.topics, k, count) {
                v if v.is_empty() => vec![k % layout.topics.max(1)],
                v => v,
            };
            let js = self.context()?;
            let mut consumers = Vec::new();
            for t in mine {
                let c = self.rt.block_on(async {
                    let stream = js.get_stream(layout.topic(t)).await.map_err(nats_err)?;
                    stream
                        .get_consumer::<pull::Config>(group)
                        .await
                        .map_err(nats_err)
                })?;
                consumers.push((c, None));
            }
            out.push(Box::new(NatsFetcher {
                rt: Arc::clone(&self.rt),
                consumers,
                next: 0,
            }));
        }
        Ok(out)
    }
}

struct NatsSender {
    rt: Arc<Runtime>,
    js: Context,
    subjects: Vec<Vec<String>>,
    next: usize,
    notify: Notify,
}

impl Sender for NatsSender {
    fn submit(&mut self, token: u64, topic: usize, bodies: Vec<Bytes>) -> Result<(), DriverError> {
        let subjects = &self.subjects[topic % self.subjects.len()];
        let subject = subjects[self.next % subjects.len()].clone();
        self.next = self.next.wrapping_add(1);
        let js = &self.js;
        let acks = self.rt.block_on(async {
            let mut acks = Vec::with_capacity(bodies.len());
            for b in bodies {
                acks.push(js.publish(subject.clone(), b).await.map_err(nats_err)?);
            }
            Ok::<_, DriverError>(acks)
        })?;
        let notify = self.notify.clone();
        self.rt.spawn(async move {
            let mut outcome = Ok(());
            for ack in acks {
                if let Err(e) = ack.await {
                    outcome = Err(nats_err(e));
                }
            }
            notify.post(Event::Done(token, outcome));
        });
        Ok(())
    }
}

type Consumer = async_nats::jetstream::consumer::Consumer<pull::Config>;

struct NatsFetcher {
    rt: Arc<Runtime>,
    /// Each consumer and its message stream, opened on first use.
    consumers: Vec<(Consumer, Option<pull::Stream>)>,
    next: usize,
}

impl Fetcher for NatsFetcher {
    /// Takes messages from one of its consumers (in turn) until `wait` passes or
    /// [`FETCH_MAX`] arrived, acknowledging each.
    fn fetch(
        &mut self,
        wait: Duration,
        on_body: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DriverError> {
        let i = self.next % self.consumers.len().max(1);
        self.next = self.next.wrapping_add(1);
        let Some((consumer, stream)) = self.consumers.get_mut(i) else {
            std::thread::sleep(wait);
            return Ok(0);
        };
        let until = tokio::time::Instant::now() + wait;
        self.rt.block_on(async {
            if stream.is_none() {
                *stream = Some(consumer.messages().await.map_err(nats_err)?);
            }
            let Some(messages) = stream.as_mut() else {
                return Ok(0);
            };
            let mut n = 0;
            while n < FETCH_MAX {
                match tokio::time::timeout_at(until, messages.next()).await {
                    Ok(Some(Ok(msg))) => {
                        on_body(&msg.payload);
                        msg.ack().await.map_err(nats_err)?;
                        n += 1;
                    }
                    Ok(Some(Err(e))) => return Err(nats_err(e)),
                    Ok(None) => {
                        *stream = None;
                        break;
                    }
                    Err(_) => break,
                }
            }
            Ok(n)
        })
    }
}

impl Drop for NatsFetcher {
    fn drop(&mut self) {
        // A subscription's drop spawns its unsubscribe: it must run inside the runtime.
        let _inside = self.rt.enter();
        self.consumers.clear();
    }
}
