//! A push consumer's settings and their builder. Defaults are RocketMQ's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::listener::Listener;
use super::{ConsumeFrom, MessageModel, PushConsumer};
use crate::consumer::process_queue::FlowLimits;
use crate::consumer::rebalance::Strategy;
use crate::error::ClientError;
use crate::route::ROUTE_MAX_AGE;

/// Everything a push consumer runs with.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub namesrv: String,
    pub group: String,
    /// (topic, tag expression `*` or `A || B`).
    pub subscriptions: Vec<(String, String)>,
    pub model: MessageModel,
    pub consume_from: ConsumeFrom,
    pub strategy: Strategy,
    /// This member's id in its group (unique per process and consumer).
    pub client_id: String,
    /// Worker threads calling the listener.
    pub consume_threads: usize,
    /// Messages handed to one listener call at most.
    pub consume_batch_size: usize,
    /// Messages one pull asks for at most.
    pub pull_batch_size: u32,
    /// How long the broker may hold a pull with nothing to return.
    pub long_poll: Duration,
    /// Pulling a queue pauses past these.
    pub flow: FlowLimits,
    /// A failed message is sent back at most this many times, then goes to the group's
    /// dead-letter topic.
    pub max_reconsume_times: u32,
    pub rebalance_interval: Duration,
    pub heartbeat_interval: Duration,
    /// How often consumed offsets are committed (they also ride on pulls, and are committed
    /// at shutdown and when a queue is handed over).
    pub commit_interval: Duration,
    /// How often a queue this member should own but another member still holds is asked
    /// for again; also how long an orderly consumer waits before retrying a queue whose
    /// listener asked to suspend.
    pub lock_retry_interval: Duration,
    /// How often held queue locks are renewed (below the broker's lock TTL, 60 s).
    pub lock_renew_interval: Duration,
    /// BROADCASTING: where each member keeps its own offsets.
    pub offset_store_dir: PathBuf,
    /// How long shutdown waits for messages being consumed before committing.
    pub shutdown_grace: Duration,
    /// A call's timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub route_max_age: Duration,
}

/// Builds a [`PushConsumer`].
pub struct PushConsumerBuilder {
    config: PushConfig,
    listener: Option<Listener>,
}

impl Default for PushConsumerBuilder {
    fn default() -> Self {
        PushConsumerBuilder {
            config: PushConfig {
                namesrv: String::new(),
                group: String::new(),
                subscriptions: Vec::new(),
                model: MessageModel::Clustering,
                consume_from: ConsumeFrom::LastOffset,
                strategy: Strategy::Averagely,
                client_id: default_client_id(),
                consume_threads: 20,
                consume_batch_size: 1,
                pull_batch_size: 32,
                long_poll: Duration::from_secs(15),
                flow: FlowLimits::default(),
                max_reconsume_times: 16,
                rebalance_interval: Duration::from_secs(20),
                heartbeat_interval: Duration::from_secs(30),
                commit_interval: Duration::from_secs(5),
                lock_retry_interval: Duration::from_secs(1),
                lock_renew_interval: Duration::from_secs(20),
                offset_store_dir: default_offset_dir(),
                shutdown_grace: Duration::from_secs(30),
                timeout: Duration::from_secs(3),
                connect_timeout: Duration::from_secs(3),
                route_max_age: ROUTE_MAX_AGE,
            },
            listener: None,
        }
    }
}

/// `host@pid@n`: unique among the consumers of one process, and across processes.
fn default_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}@{}@{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn default_offset_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".shardmq_offsets")
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $t:ty,)*) => {
        $($(#[$doc])* pub fn $name(mut self, v: $t) -> Self {
            self.config.$name = v;
            self
        })*
    };
}

impl PushConsumerBuilder {
    /// NameServer addresses, "host:port;host:port" (required).
    pub fn namesrv_addr(mut self, addrs: impl Into<String>) -> Self {
        self.config.namesrv = addrs.into();
        self
    }

    /// The consumer group (required).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self
    }

    /// Consumes `topic`'s messages whose tag matches `expression` (`*` for all).
    pub fn subscribe(mut self, topic: impl Into<String>, expression: impl Into<String>) -> Self {
        self.config
            .subscriptions
            .push((topic.into(), expression.into()));
        self
    }

    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }

    pub fn offset_store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.offset_store_dir = dir.into();
        self
    }

    setters! {
        /// CLUSTERING (default) or BROADCASTING.
        model: MessageModel,
        /// Where a group with no committed offset starts (default: the last offset).
        consume_from: ConsumeFrom,
        /// How the group shares queues (default: averagely).
        strategy: Strategy,
        consume_threads: usize,
        consume_batch_size: usize,
        pull_batch_size: u32,
        long_poll: Duration,
        flow: FlowLimits,
        max_reconsume_times: u32,
        rebalance_interval: Duration,
        heartbeat_interval: Duration,
        commit_interval: Duration,
        lock_retry_interval: Duration,
        lock_renew_interval: Duration,
        shutdown_grace: Duration,
        timeout: Duration,
        connect_timeout: Duration,
        route_max_age: Duration,
    }

    /// Consumes messages concurrently: `f` gets batches of up to `consume_batch_size`
    /// messages from any queue, on any worker thread.
    pub fn listener_concurrently(
        mut self,
        f: impl Fn(&[crate::WireMessage], &super::ConsumeContext) -> super::ConsumeStatus
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.listener = Some(Listener::Concurrent(Arc::new(f)));
        self
    }

    /// Consumes each queue in order, one batch at a time, on the member holding the queue's
    /// lock.
    pub fn listener_orderly(
        mut self,
        f: impl Fn(&[crate::WireMessage], &super::ConsumeContext) -> super::OrderlyStatus
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.listener = Some(Listener::Orderly(Arc::new(f)));
        self
    }

    pub fn build(self) -> Result<PushConsumer, ClientError> {
        let c = &self.config;
        let bad = |why: &str| Err(ClientError::Config(why.into()));
        if c.group.is_empty() {
            return bad("the consumer group is empty");
        }
        if c.subscriptions.is_empty() {
            return bad("the push consumer subscribes to no topic");
        }
        if c.consume_threads == 0 || c.consume_batch_size == 0 || c.pull_batch_size == 0 {
            return bad("consume_threads, consume_batch_size and pull_batch_size must be > 0");
        }
        let zero = [
            c.rebalance_interval,
            c.heartbeat_interval,
            c.commit_interval,
            c.lock_retry_interval,
            c.lock_renew_interval,
        ];
        if zero.iter().any(Duration::is_zero) {
            return bad("the rebalance, heartbeat, commit and lock intervals must be > 0");
        }
        let Some(listener) = self.listener else {
            return bad("no listener: call listener_concurrently or listener_orderly");
        };
        PushConsumer::new(self.config, listener)
    }
}
