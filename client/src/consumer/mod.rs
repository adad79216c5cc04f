//! Consumers. [`PullConsumer`] reads queues at offsets the caller manages; `rebalance` is
//! the pure queue allocation a push consumer group shares its topics with (the push consumer
//! itself — listener, retry topics — is to be built on these).

pub mod process_queue;
pub mod pull;
pub mod push;
pub mod rebalance;

pub use pull::{PullConsumer, PullConsumerBuilder, PullOptions, PullResult, PullStatus};
pub use push::{
    ConsumeContext, ConsumeFrom, ConsumeStatus, MessageModel, OrderlyStatus, PushConsumer,
    PushConsumerBuilder,
};
