//! ShardMQ client: a producer, a pull consumer and a push consumer over the ShardMQ wire
//! protocol.
//!
//! The client is runtime-agnostic: it uses blocking `std::net` sockets with pipelined
//! requests (many in flight per connection, matched by request id) and hands out `flume`
//! futures that any executor can await.
//!
//! - [`conn`] holds [`Connection`], one pipelined RPC connection, and [`ResponseFuture`];
//! - [`pool`] holds [`ConnectionPool`], one connection per address, reopened when broken;
//! - [`route`] holds [`TopicRouteCache`] (routes from the NameServers) and queue selection;
//! - [`fault`] holds [`LatencyFaultTolerance`], which brokers to avoid after slow or failed
//!   sends;
//! - [`producer`] holds [`Producer`] (sync, async, oneway, batch and ordered sends);
//! - [`consumer`] holds [`PullConsumer`] (explicit offsets) and [`PushConsumer`] (consumer
//!   groups: rebalance, listeners, retries, dead letters, broadcasting, orderly);
//! - [`uniq`] makes client-generated unique message ids;
//! - [`error`] holds [`ClientError`].
//!
//! ```no_run
//! use shardmq_client::{Message, Producer};
//!
//! let producer = Producer::builder()
//!     .namesrv_addr("127.0.0.1:9876")
//!     .group("example-producers")
//!     .build()?;
//! producer.start()?;
//! let receipt = producer.send(Message::new("TopicTest", "hello"))?;
//! println!("stored at {}:{} offset {}", receipt.broker_name, receipt.queue_id, receipt.queue_offset);
//! producer.shutdown();
//! # Ok::<(), shardmq_client::ClientError>(())
//! ```

pub mod conn;
pub mod consumer;
pub mod error;
pub mod fault;
pub mod pool;
pub mod producer;
pub mod route;
mod rpc;
pub mod uniq;

pub use conn::{Connection, ResponseFuture};
pub use consumer::{
    ConsumeContext, ConsumeFrom, ConsumeStatus, MessageModel, OrderlyStatus, PullConsumer,
    PullConsumerBuilder, PullOptions, PullResult, PullStatus, PushConsumer, PushConsumerBuilder,
};
pub use error::ClientError;
pub use fault::LatencyFaultTolerance;
pub use pool::ConnectionPool;
pub use producer::{Message, Producer, ProducerBuilder, SendFuture, SendReceipt};
pub use route::{MessageQueue, TopicRouteCache};
pub use shardmq_protocol::message::WireMessage;
pub use shardmq_protocol::Frame;

/// Locks `m`, taking the data even if a thread panicked while holding it (every critical
/// section here leaves the data consistent at each step).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
