//! What the user's code sees: listeners, their answers, and messages as they were sent
//! (a message coming back through the retry topic shows its original topic again).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use shardmq_protocol::groups::PROP_RETRY_TOPIC;

use crate::route::MessageQueue;
use crate::WireMessage;

/// A concurrent listener's answer for its whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeStatus {
    Success,
    /// Deliver the batch again later (through the group's retry topic, delayed by the
    /// broker; after `max_reconsume_times` it goes to the dead-letter topic).
    ReconsumeLater,
}

/// An orderly listener's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderlyStatus {
    Success,
    /// Stop this queue a moment and retry the same batch (after `max_reconsume_times`
    /// retries the batch goes to the dead-letter topic and the queue moves on).
    SuspendCurrentQueueAMoment,
}

/// Where a batch comes from.
#[derive(Debug, Clone)]
pub struct ConsumeContext {
    /// The queue pulled (for a retried message, a queue of the group's retry topic).
    pub queue: MessageQueue,
}

pub type ConcurrentFn = dyn Fn(&[WireMessage], &ConsumeContext) -> ConsumeStatus + Send + Sync;
pub type OrderlyFn = dyn Fn(&[WireMessage], &ConsumeContext) -> OrderlyStatus + Send + Sync;

#[derive(Clone)]
pub enum Listener {
    Concurrent(Arc<ConcurrentFn>),
    Orderly(Arc<OrderlyFn>),
}

impl Listener {
    pub fn is_orderly(&self) -> bool {
        matches!(self, Listener::Orderly(_))
    }

    /// Calls the listener; a panic counts as a failure (`false`).
    pub fn call(&self, msgs: &[WireMessage], ctx: &ConsumeContext) -> bool {
        let ok = catch_unwind(AssertUnwindSafe(|| match self {
            Listener::Concurrent(f) => f(msgs, ctx) == ConsumeStatus::Success,
            Listener::Orderly(f) => f(msgs, ctx) == OrderlyStatus::Success,
        }));
        match ok {
            Ok(ok) => ok,
            Err(_) => {
                tracing::warn!(queue = %ctx.queue, "the listener panicked; the batch counts as failed");
                false
            }
        }
    }
}

/// The message as the listener should see it: one from the retry topic gets its original
/// topic back.
pub fn as_sent(mut m: WireMessage) -> WireMessage {
    if let Some((_, t)) = m.properties.iter().find(|(k, _)| k == PROP_RETRY_TOPIC) {
        m.topic = t.clone();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ConsumeContext {
        ConsumeContext {
            queue: MessageQueue {
                topic: "T".into(),
                broker_name: "b".into(),
                queue_id: 0,
            },
        }
    }

    #[test]
    fn a_panicking_listener_counts_as_a_failure() {
        let l = Listener::Concurrent(Arc::new(|_: &[WireMessage], _: &ConsumeContext| {
            panic!("boom")
        }));
        assert!(!l.call(&[], &ctx()));
        let ok = Listener::Orderly(Arc::new(|_: &[WireMessage], _: &ConsumeContext| {
            OrderlyStatus::Success
        }));
        assert!(ok.call(&[], &ctx()));
    }

    #[test]
    fn a_retried_message_shows_its_original_topic() {
        let m = WireMessage {
            topic: "%RETRY%g".into(),
            properties: vec![(PROP_RETRY_TOPIC.into(), "Orders".into())],
            ..Default::default()
        };
        assert_eq!(as_sent(m).topic, "Orders");
    }
}
