//! Consumers. [`PullConsumer`] reads queues at offsets the caller manages; a push consumer
//! (rebalance, listener, retry topics) is to be built on it.

pub mod pull;

pub use pull::{PullConsumer, PullConsumerBuilder, PullOptions, PullResult, PullStatus};
