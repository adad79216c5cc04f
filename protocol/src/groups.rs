//! Names a consumer group's broker and clients agree on: the group's retry and dead-letter
//! topics, and the properties a message sent back carries.

/// Topics of failed messages waiting to be consumed again: `%RETRY%<group>`.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Topics of messages that failed too often: `%DLQ%<group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// A retried message's original topic.
pub const PROP_RETRY_TOPIC: &str = "RETRY_TOPIC";

pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}
