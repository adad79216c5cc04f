//! Where a message a consumer's listener failed goes next (RocketMQ's consume-back rule):
//! the rule is pure; the handler (`handler.rs`, `ConsumerSendBack`) applies it.
//!
//! A failed message goes back to the broker for the group's retry topic `%RETRY%<group>`
//! with delay level `3 + reconsume_times` (10 s, 30 s, 1 m, 2 m, ... with the default
//! levels), so the broker's schedule service does the waiting; after `max_reconsume_times`
//! (16 by default) it goes to the group's dead-letter topic `%DLQ%<group>` instead.

pub use shardmq_protocol::groups::{dlq_topic, retry_topic};

pub const MAX_RECONSUME_TIMES: u32 = 16;

/// Where a failed message is sent back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBack {
    /// To the retry topic, delayed by this level; its reconsume count becomes `times`.
    Retry {
        topic: String,
        delay_level: u32,
        times: u32,
    },
    /// To the dead-letter topic, for good.
    DeadLetter { topic: String },
}

/// The next stop of a message consumed `reconsume_times` times before and failed again.
pub fn after_failure(group: &str, reconsume_times: u32, max_reconsume_times: u32) -> SendBack {
    if reconsume_times >= max_reconsume_times {
        return SendBack::DeadLetter {
            topic: dlq_topic(group),
        };
    }
    SendBack::Retry {
        topic: retry_topic(group),
        delay_level: 3 + reconsume_times,
        times: reconsume_times + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_by_level_then_go_to_the_dead_letter_queue() {
        assert_eq!(
            after_failure("g", 0, MAX_RECONSUME_TIMES),
            SendBack::Retry {
                topic: "%RETRY%g".into(),
                delay_level: 3,
                times: 1
            }
        );
        assert_eq!(
            after_failure("g", 15, MAX_RECONSUME_TIMES),
            SendBack::Retry {
                topic: "%RETRY%g".into(),
                delay_level: 18,
                times: 16
            }
        );
        assert_eq!(
            after_failure("g", 16, MAX_RECONSUME_TIMES),
            SendBack::DeadLetter {
                topic: "%DLQ%g".into()
            }
        );
        assert_eq!(
            after_failure("g", 2, 2),
            SendBack::DeadLetter {
                topic: "%DLQ%g".into()
            }
        );
    }
}
