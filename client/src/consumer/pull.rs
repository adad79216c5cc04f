//! `PullConsumer`: the low-level consumer. The caller picks queues and offsets: it lists a
//! topic's readable queues, pulls messages from an offset (long polling up to a wait), and
//! stores or looks up the group's committed offsets on the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardmq_protocol::message::{
    ConsumerOffsetRequest, Empty, OffsetResponse, PullMessageRequest, PullMessageResponse,
    QueueRequest, SearchOffsetRequest, UpdateConsumerOffsetRequest, WireMessage, PULL_TYPED,
};
use shardmq_protocol::{Frame, Request, Status};

use crate::conn::Connection;
use crate::error::ClientError;
use crate::pool::ConnectionPool;
use crate::route::{
    master_addr, parse_addrs, queue_addr, MessageQueue, TopicRouteCache, ROUTE_MAX_AGE,
};
use crate::rpc;

/// How a pull went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    /// Messages were found (`messages` is not empty).
    Found,
    /// Nothing at or after the offset within the wait.
    NotFound,
    /// The offset is outside the queue: go on from `next_offset`.
    OffsetMoved,
    /// Nothing matched the filter in what was scanned: pull again from `next_offset` now.
    RetryImmediately,
}

/// A pull's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResult {
    pub status: PullStatus,
    /// Where the next pull starts.
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub messages: Vec<WireMessage>,
}

/// Everything a pull can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    pub offset: u64,
    pub max_msgs: u32,
    /// At most this many bytes of messages (the broker returns at least one message).
    pub max_bytes: u32,
    /// How long the broker may hold the pull when there is nothing yet (long polling).
    pub wait: Duration,
    /// Tag expression: `*` or `TagA || TagB`.
    pub subscription: String,
    /// Commit this offset for the group on the way.
    pub commit_offset: Option<u64>,
}

impl PullOptions {
    pub fn new(offset: u64, max_msgs: u32, wait: Duration) -> Self {
        PullOptions {
            offset,
            max_msgs,
            max_bytes: 4 << 20,
            wait,
            subscription: "*".into(),
            commit_offset: None,
        }
    }
}

/// Builds a [`PullConsumer`].
#[derive(Debug, Clone)]
pub struct PullConsumerBuilder {
    namesrv: String,
    group: String,
    timeout: Duration,
    connect_timeout: Duration,
    route_max_age: Duration,
}

impl Default for PullConsumerBuilder {
    fn default() -> Self {
        PullConsumerBuilder {
            namesrv: String::new(),
            group: "DEFAULT_CONSUMER".into(),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            route_max_age: ROUTE_MAX_AGE,
        }
    }
}

impl PullConsumerBuilder {
    /// NameServer addresses, "host:port;host:port" (required).
    pub fn namesrv_addr(mut self, addrs: impl Into<String>) -> Self {
        self.namesrv = addrs.into();
        self
    }

    /// The consumer group (default `DEFAULT_CONSUMER`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// A call's timeout (default 3 s); a pull waits its long-polling time on top.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    pub fn route_max_age(mut self, t: Duration) -> Self {
        self.route_max_age = t;
        self
    }

    pub fn build(self) -> Result<PullConsumer, ClientError> {
        let pool = Arc::new(ConnectionPool::new(self.connect_timeout));
        self.build_with_pool(pool)
    }

    /// Builds over an existing pool (the push consumer's, whose connections take the
    /// broker's notifications).
    pub(crate) fn build_with_pool(
        self,
        pool: Arc<ConnectionPool>,
    ) -> Result<PullConsumer, ClientError> {
        let namesrv = parse_addrs(&self.namesrv)?;
        if self.group.is_empty() {
            return Err(ClientError::Config("the consumer group is empty".into()));
        }
        let routes = TopicRouteCache::new(namesrv, Arc::clone(&pool), self.timeout)?
            .with_max_age(self.route_max_age);
        Ok(PullConsumer {
            group: self.group,
            timeout: self.timeout,
            pool,
            routes,
            running: AtomicBool::new(false),
        })
    }
}

/// A consumer reading queues at explicit offsets.
#[derive(Debug)]
pub struct PullConsumer {
    group: String,
    timeout: Duration,
    pool: Arc<ConnectionPool>,
    routes: TopicRouteCache,
    running: AtomicBool,
}

/// Which broker of a group a call goes to.
#[derive(Clone, Copy)]
enum Role {
    /// The master (offset commits).
    Master,
    /// The master, else a slave (reads and queries).
    Reader,
}

impl PullConsumer {
    pub fn builder() -> PullConsumerBuilder {
        PullConsumerBuilder::default()
    }

    pub fn start(&self) -> Result<(), ClientError> {
        self.running.store(true, Ordering::Release);
        Ok(())
    }

    /// Closes the consumer's connections; calls fail until it is started again.
    pub fn shutdown(&self) {
        self.running.store(false, Ordering::Release);
        self.pool.close_all();
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn routes(&self) -> &TopicRouteCache {
        &self.routes
    }

    /// `topic`'s readable queues.
    pub fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        self.check_running()?;
        let route = self.routes.get(topic)?;
        Ok(route.read.iter().map(|q| q.queue.clone()).collect())
    }

    /// Pulls up to `max_msgs` messages of `queue` from `offset`, letting the broker hold the
    /// pull up to `wait` while there are none.
    pub fn pull(
        &self,
        queue: &MessageQueue,
        offset: u64,
        max_msgs: u32,
        wait: Duration,
    ) -> Result<PullResult, ClientError> {
        self.pull_with(queue, &PullOptions::new(offset, max_msgs, wait))
    }

    /// A pull with every option.
    pub fn pull_with(
        &self,
        queue: &MessageQueue,
        opts: &PullOptions,
    ) -> Result<PullResult, ClientError> {
        let request = self.pull_request(queue, opts);
        let frame = self.call(queue, Role::Reader, &request, opts.wait + self.timeout)?;
        pull_result(&frame)
    }

    /// [`PullConsumer::pull_with`] without blocking: `done` gets the answer (exactly once),
    /// on the client's shared I/O thread, so it must not block. Only finding the broker's
    /// address (a route lookup, a connect) happens on this thread.
    pub fn pull_async(
        &self,
        queue: &MessageQueue,
        opts: &PullOptions,
        done: impl FnOnce(Result<PullResult, ClientError>) + Send + 'static,
    ) {
        let conn = self
            .check_running()
            .and_then(|()| self.conn_for(queue, Role::Reader));
        match conn {
            Ok(conn) => conn.call_with(
                &self.pull_request(queue, opts),
                opts.wait + self.timeout,
                move |answer| done(answer.and_then(|f| pull_result(&f))),
            ),
            Err(e) => done(Err(e)),
        }
    }

    fn pull_request(&self, queue: &MessageQueue, opts: &PullOptions) -> Request {
        Request::PullMessage(PullMessageRequest {
            consumer_group: self.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            queue_offset: opts.offset,
            max_msgs: opts.max_msgs,
            max_bytes: opts.max_bytes,
            suspend_timeout_ms: u32::try_from(opts.wait.as_millis()).unwrap_or(u32::MAX),
            commit_offset: opts
                .commit_offset
                .map_or(-1, |o| i64::try_from(o).unwrap_or(i64::MAX)),
            subscription: opts.subscription.clone(),
        })
    }

    /// Stores the group's offset for `queue` on its broker (the next offset to consume).
    pub fn commit_offset(&self, queue: &MessageQueue, offset: u64) -> Result<(), ClientError> {
        let request = Request::UpdateConsumerOffset(UpdateConsumerOffsetRequest {
            consumer_group: self.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            offset,
        });
        let frame = self.call(queue, Role::Master, &request, self.timeout)?;
        rpc::expect::<Empty>(&frame, &[]).map(|_| ())
    }

    /// The group's committed offset for `queue`; `None` if it never committed one.
    pub fn committed_offset(&self, queue: &MessageQueue) -> Result<Option<u64>, ClientError> {
        let request = Request::QueryConsumerOffset(ConsumerOffsetRequest {
            consumer_group: self.group.clone(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
        });
        match self.offset_call(queue, &request) {
            Ok(o) => Ok(Some(o)),
            Err(ClientError::Broker {
                status: Status::QueryNotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The queue's smallest offset still stored.
    pub fn min_offset(&self, queue: &MessageQueue) -> Result<u64, ClientError> {
        self.offset_call(queue, &Request::GetMinOffset(Self::queue_request(queue)))
    }

    /// The queue's next offset to be written.
    pub fn max_offset(&self, queue: &MessageQueue) -> Result<u64, ClientError> {
        self.offset_call(queue, &Request::GetMaxOffset(Self::queue_request(queue)))
    }

    /// The offset of the queue's first message stored at or after `timestamp_ms`.
    pub fn offset_for_time(
        &self,
        queue: &MessageQueue,
        timestamp_ms: i64,
    ) -> Result<u64, ClientError> {
        let request = Request::SearchOffsetByTime(SearchOffsetRequest {
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            timestamp_ms,
        });
        self.offset_call(queue, &request)
    }

    fn queue_request(queue: &MessageQueue) -> QueueRequest {
        QueueRequest {
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
        }
    }

    fn offset_call(&self, queue: &MessageQueue, request: &Request) -> Result<u64, ClientError> {
        let frame = self.call(queue, Role::Reader, request, self.timeout)?;
        Ok(rpc::expect::<OffsetResponse>(&frame, &[])?.1.offset)
    }

    fn check_running(&self) -> Result<(), ClientError> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ClientError::NotRunning)
        }
    }

    /// Sends `request` to the broker serving `queue` (looked up in a fresh route if the cached
    /// one does not have it) and waits for the answer.
    fn call(
        &self,
        queue: &MessageQueue,
        role: Role,
        request: &Request,
        timeout: Duration,
    ) -> Result<Frame, ClientError> {
        self.check_running()?;
        self.conn_for(queue, role)?.call(request, timeout)
    }

    fn conn_for(&self, queue: &MessageQueue, role: Role) -> Result<Connection, ClientError> {
        let addr = match self.addr_of(queue, role, false)? {
            Some(a) => a,
            None => self
                .addr_of(queue, role, true)?
                .ok_or_else(|| ClientError::NoRoute {
                    topic: queue.topic.clone(),
                })?,
        };
        self.pool.get(&addr)
    }

    /// The master's address of the broker serving `queue`.
    pub(crate) fn master_of(&self, queue: &MessageQueue) -> Result<String, ClientError> {
        self.addr_of(queue, Role::Master, false)?
            .map_or_else(|| self.addr_of(queue, Role::Master, true), |a| Ok(Some(a)))?
            .ok_or_else(|| ClientError::NoRoute {
                topic: queue.topic.clone(),
            })
    }

    pub(crate) fn pool(&self) -> &ConnectionPool {
        &self.pool
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn addr_of(
        &self,
        queue: &MessageQueue,
        role: Role,
        fresh: bool,
    ) -> Result<Option<String>, ClientError> {
        let route = if fresh {
            self.routes.refresh(&queue.topic)?
        } else {
            self.routes.get(&queue.topic)?
        };
        let addr = match role {
            Role::Master => master_addr(&route.route, &queue.broker_name),
            Role::Reader => route.read_addr(&queue.broker_name),
        };
        Ok(addr.map(|a| {
            queue_addr(
                &route.route,
                &queue.broker_name,
                a,
                &queue.topic,
                queue.queue_id,
            )
        }))
    }
}

/// A pull's response frame as a [`PullResult`].
fn pull_result(frame: &Frame) -> Result<PullResult, ClientError> {
    let (status, r) = rpc::expect::<PullMessageResponse>(frame, PULL_TYPED)?;
    let status = match status {
        Status::PullNotFound => PullStatus::NotFound,
        Status::PullOffsetMoved => PullStatus::OffsetMoved,
        Status::PullRetryImmediately => PullStatus::RetryImmediately,
        _ => PullStatus::Found,
    };
    Ok(PullResult {
        status,
        next_offset: r.next_begin_offset,
        min_offset: r.min_offset,
        max_offset: r.max_offset,
        messages: r.messages,
    })
}
