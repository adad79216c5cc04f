//! `PushConsumer`: a member of a consumer group that is handed messages. It heartbeats to the
//! brokers of its topics, rebalances queues with the other members, pulls its queues with
//! long polling and calls the listener on a worker pool, sends failed messages back for a
//! later retry, and commits its offsets.
//!
//! Threads: one driver (`driver.rs`: every queue's state, timers, pull answers — pulls do not
//! take a thread each), `consume_threads` workers (`workers.rs`), and the process's shared client I/O
//! thread, which reads every connection. See `assign.rs` for rebalancing and hand-over, `consume.rs` for
//! concurrent and orderly consumption.
//!
//! ```no_run
//! use shardmq_client::consumer::push::{ConsumeStatus, PushConsumer};
//!
//! let consumer = PushConsumer::builder()
//!     .namesrv_addr("127.0.0.1:9876")
//!     .group("example-consumers")
//!     .subscribe("TopicTest", "*")
//!     .listener_concurrently(|msgs, _ctx| {
//!         for m in msgs {
//!             println!("{} {}", m.queue_offset, String::from_utf8_lossy(&m.body));
//!         }
//!         ConsumeStatus::Success
//!     })
//!     .build()?;
//! consumer.start()?;
//! // ...
//! consumer.shutdown();
//! # Ok::<(), shardmq_client::ClientError>(())
//! ```

mod assign;
mod broker;
mod config;
mod consume;
mod driver;
mod listener;
pub mod local_offsets;
mod workers;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::{PushConfig, PushConsumerBuilder};
pub use listener::{ConsumeContext, ConsumeStatus, OrderlyStatus};

use crate::consumer::pull::PullConsumer;
use crate::error::ClientError;
use crate::pool::ConnectionPool;
use crate::route::MessageQueue;
use crate::{lock, Frame};
use driver::{Assignment, Driver, Event};
use listener::Listener;

/// How a group shares messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageModel {
    /// Each message to one member of the group; offsets on the broker.
    Clustering,
    /// Every message to every member; each member keeps its own offsets.
    Broadcasting,
}

/// Where a group with no committed offset starts on a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// After the last message stored now.
    LastOffset,
    /// At the first message still stored.
    FirstOffset,
    /// At the first message stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A running (or not yet started) push consumer.
pub struct PushConsumer {
    cfg: Arc<PushConfig>,
    listener: Listener,
    api: Arc<PullConsumer>,
    events: (flume::Sender<Event>, flume::Receiver<Event>),
    assignment: Arc<Assignment>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: Mutex<bool>,
}

impl PushConsumer {
    pub fn builder() -> PushConsumerBuilder {
        PushConsumerBuilder::default()
    }

    fn new(cfg: PushConfig, listener: Listener) -> Result<Self, ClientError> {
        let events = flume::unbounded::<Event>();
        // A broker's notification (on the shared I/O thread: an unbounded send, no
        // blocking) wakes the driver.
        let notify = events.0.clone();
        let group = cfg.group.clone();
        let on_request = Arc::new(move |f: Frame| {
            if let Ok(shardmq_protocol::Request::NotifyConsumerIdsChanged(g)) =
                shardmq_protocol::Request::from_frame(&f)
            {
                if g.group == group {
                    let _ = notify.send(Event::Notified);
                }
            }
        });
        let pool = Arc::new(ConnectionPool::with_request_handler(
            cfg.connect_timeout,
            on_request,
        ));
        let api = PullConsumer::builder()
            .namesrv_addr(cfg.namesrv.clone())
            .group(cfg.group.clone())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .route_max_age(cfg.route_max_age)
            .build_with_pool(pool)?;
        Ok(PushConsumer {
            cfg: Arc::new(cfg),
            listener,
            api: Arc::new(api),
            events,
            assignment: Arc::default(),
            threads: Mutex::new(Vec::new()),
            started: Mutex::new(false),
        })
    }

    pub fn config(&self) -> &PushConfig {
        &self.cfg
    }

    /// This member's id in its group.
    pub fn client_id(&self) -> &str {
        &self.cfg.client_id
    }

    /// Starts heartbeats, rebalancing, pulling and consuming. The first rebalance happens
    /// on the driver thread; [`PushConsumer::wait_for_assignment`] waits for its outcome.
    pub fn start(&self) -> Result<(), ClientError> {
        let mut started = lock(&self.started);
        if *started {
            return Ok(());
        }
        self.api.start()?;
        let (work_tx, work_rx) = flume::unbounded();
        let driver = Driver::new(
            Arc::clone(&self.cfg),
            self.listener.clone(),
            Arc::clone(&self.api),
            self.events.clone(),
            work_tx,
            Arc::clone(&self.assignment),
        )?;
        let spawn_err =
            |e: std::io::Error| ClientError::Config(format!("cannot start a thread: {e}"));
        let mut threads = workers::start(
            &self.cfg,
            &self.listener,
            &self.api,
            &self.events.0,
            &work_rx,
        )
        .map_err(spawn_err)?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("shardmq-push {}", self.cfg.group))
                .spawn(move || driver.run())
                .map_err(spawn_err)?,
        );
        *lock(&self.threads) = threads;
        *started = true;
        Ok(())
    }

    /// Stops pulling, waits (up to the grace period) for the messages being consumed,
    /// commits every offset, gives the queues back, leaves the group and closes the
    /// connections. Other members take the queues over from exactly where this one stopped.
    pub fn shutdown(&self) {
        let mut started = lock(&self.started);
        if !*started {
            return;
        }
        let (ack_tx, ack_rx) = flume::bounded(1);
        if self.events.0.send(Event::Shutdown(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        self.api.shutdown();
        *started = false;
    }

    /// The queues this member consumes now.
    pub fn assigned(&self) -> Vec<MessageQueue> {
        lock(&self.assignment.queues).clone()
    }

    /// Waits until the queues this member consumes satisfy `done`, at most `timeout`;
    /// returns them (satisfying or not).
    pub fn wait_for_assignment(
        &self,
        timeout: Duration,
        done: impl Fn(&[MessageQueue]) -> bool,
    ) -> Vec<MessageQueue> {
        let deadline = Instant::now() + timeout;
        let mut cur = lock(&self.assignment.queues);
        while !done(&cur) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            cur = self
                .assignment
                .changed
                .wait_timeout(cur, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        cur.clone()
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
