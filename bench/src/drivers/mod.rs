//! The systems a load runs against, behind one interface, so that every workload is defined
//! once: ShardMQ (always built), Redis Streams (feature `redis`) and NATS JetStream
//! (feature `nats`).
//!
//! A [`Target`] creates the topics of a [`Layout`], hands out one [`Sender`] per producer
//! and the [`Fetcher`]s of a consumer group. A sender keeps several sends in flight:
//! [`Sender::submit`] starts one (a message, or a batch), and each completion is posted, in
//! whatever order they complete, to the channel of the thread running the producer
//! ([`Notify`]): one thread runs many producers, so that 64 producers do not cost 64 threads
//! of the load generator's own. How each system maps a topic and its queues:
//!
//! | layout | ShardMQ | Redis Streams | NATS JetStream |
//! |---|---|---|---|
//! | topic `t` | topic `<prefix>-t` with `queues` queues | `queues` streams `<prefix>-t-q` | stream `<prefix>-t`, subjects `<prefix>.t.*` |
//! | a send | to the next queue (the client's round robin) | XADD to the next stream | publish to `<prefix>.t.q`, next `q` |
//! | a batch | one SendBatch (one queue) | one pipeline of XADDs | that many publishes, done when all are acknowledged |
//! | consumer group | pull consumers, queues split among them | XREADGROUP + XACK, streams split | one durable pull consumer per stream, shared |

pub mod admin;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
pub mod shardmq;
pub mod spawn;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

/// Why talking to the system under test failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("shardmq: {0}")]
    Client(#[from] shardmq_client::ClientError),
    #[error("shardmq admin: {0}")]
    Admin(String),
    #[error("starting the broker: {0}")]
    Spawn(String),
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[cfg(feature = "nats")]
    #[error("nats: {0}")]
    Nats(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("target {0:?} is not known (shardmq, redis://HOST:PORT, nats://HOST:PORT)")]
    UnknownTarget(String),
    #[cfg(not(all(feature = "redis", feature = "nats")))]
    #[error("target {target:?} needs the bench built with `--features {feature}`")]
    FeatureMissing { target: String, feature: String },
}

impl DriverError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The topics (and queues per topic) a run sends to and reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub prefix: String,
    pub topics: usize,
    pub queues: usize,
}

impl Layout {
    /// The name of topic `t` (ShardMQ topic, NATS stream).
    pub fn topic(&self, t: usize) -> String {
        format!("{}-{t}", self.prefix)
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At the oldest message still stored.
    Earliest,
    /// After the newest message stored now: only what is sent from here on.
    Latest,
}

/// What a sender tells the thread running its producer: a send finished.
#[derive(Debug)]
pub enum Event {
    Done(u64, Result<(), DriverError>),
}

/// Where a sender posts its events: the channel of the thread running its producer (one
/// thread runs several producers), tagged with the producer's index on that thread.
#[derive(Debug, Clone)]
pub struct Notify {
    index: usize,
    tx: flume::Sender<(usize, Event)>,
}

impl Notify {
    pub fn new(index: usize, tx: flume::Sender<(usize, Event)>) -> Self {
        Notify { index, tx }
    }

    pub fn post(&self, event: Event) {
        // The producer thread is gone only at the end of a run: nobody waits for it then.
        let _ = self.tx.send((self.index, event));
    }
}

/// One producer's connection: sends in flight, completed in any order, each completion
/// posted to the sender's [`Notify`].
pub trait Sender: Send {
    /// Starts sending `bodies` (one message, or a batch) to topic `topic` of the layout;
    /// `token` names the send in its completion. An error here means it never went out.
    fn submit(&mut self, token: u64, topic: usize, bodies: Vec<Bytes>) -> Result<(), DriverError>;

    /// The send an event this sender posted completes, if any, and how it went.
    fn on_event(&mut self, event: Event) -> Option<(u64, Result<(), DriverError>)> {
        match event {
            Event::Done(token, result) => Some((token, result)),
        }
    }
}

/// One consumer of a group: fetches what its share of the queues has next.
pub trait Fetcher: Send {
    /// Waits up to about `wait` for messages, hands each body to `on_body` as it arrives, and
    /// acknowledges (commits) them; returns how many there were.
    fn fetch(
        &mut self,
        wait: Duration,
        on_body: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DriverError>;
}

/// A system under test.
pub trait Target: Send + Sync {
    /// What to call it in reports (`shardmq`, `redis`, `nats`).
    fn name(&self) -> &str;

    /// Its settings, for the report's params.
    fn describe(&self) -> Map<String, Value>;

    /// The directory holding its data, if known (device flushes are counted on its disk).
    fn data_dir(&self) -> Option<PathBuf>;

    /// The server process this run started, if any (its CPU time is measured).
    fn server_pid(&self) -> Option<u32> {
        None
    }

    /// Creates the layout's topics (streams), empty where the system allows it.
    fn create_topics(&self, layout: &Layout) -> Result<(), DriverError>;

    /// A sender for producer `id` that keeps up to `inflight` sends out and posts their
    /// completions to `notify`.
    fn sender(
        &self,
        layout: &Layout,
        id: usize,
        inflight: usize,
        notify: Notify,
    ) -> Result<Box<dyn Sender>, DriverError>;

    /// `count` consumers of a new group named `group`, each with its share of the queues,
    /// positioned at `start` before this returns.
    fn fetchers(
        &self,
        layout: &Layout,
        group: &str,
        count: usize,
        start: StartAt,
    ) -> Result<Vec<Box<dyn Fetcher>>, DriverError>;
}

/// Which system `--target` names: `shardmq`, `redis://...` or `nats://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    ShardMq,
    Redis(String),
    Nats(String),
}

impl TargetKind {
    pub fn parse(s: &str) -> Result<TargetKind, DriverError> {
        if s == "shardmq" {
            Ok(TargetKind::ShardMq)
        } else if s.starts_with("redis://") {
            Ok(TargetKind::Redis(s.to_string()))
        } else if s.starts_with("nats://") {
            Ok(TargetKind::Nats(s.to_string()))
        } else {
            Err(DriverError::UnknownTarget(s.to_string()))
        }
    }
}

/// The items of `0..total` that consumer `k` of `n` takes (round robin).
pub fn assigned(total: usize, k: usize, n: usize) -> Vec<usize> {
    (0..total).filter(|i| i % n.max(1) == k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(TargetKind::parse("shardmq").ok(), Some(TargetKind::ShardMq));
        assert!(matches!(
            TargetKind::parse("redis://127.0.0.1:6379"),
            Ok(TargetKind::Redis(_))
        ));
        assert!(matches!(
            TargetKind::parse("nats://127.0.0.1:4222"),
            Ok(TargetKind::Nats(_))
        ));
        assert!(matches!(
            TargetKind::parse("kafka://x"),
            Err(DriverError::UnknownTarget(_))
        ));
    }

    #[test]
    fn assignment_covers_everything_once() {
        let all: Vec<Vec<usize>> = (0..3).map(|k| assigned(8, k, 3)).collect();
        assert_eq!(all[0], vec![0, 3, 6]);
        let mut flat: Vec<usize> = all.concat();
        flat.sort_unstable();
        assert_eq!(flat, (0..8).collect::<Vec<_>>());
        assert!(assigned(2, 3, 4).is_empty());
    }
}
