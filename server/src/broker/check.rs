//! What a broker refuses before it touches the store (RocketMQ's msgCheck), and how engine
//! errors become wire statuses. Pure.

use shardmq_engine::{PutError, ReadError};
use shardmq_protocol::message::SYS_FLAG_TRANSACTION;
use shardmq_protocol::Status;

/// A topic name at most (RocketMQ's limit).
pub const TOPIC_LEN_MAX: usize = 127;

/// Topics only the broker itself writes.
const RESERVED_PREFIXES: &[&str] = &[
    shardmq_protocol::groups::RETRY_PREFIX,
    shardmq_protocol::groups::DLQ_PREFIX,
    "rmq_sys_",
];
const RESERVED_NAMES: &[&str] = &["SCHEDULE_TOPIC_XXXX", "RMQ_SYS_TRANS_HALF_TOPIC"];

/// A refusal: the status and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub remark: String,
}

fn refuse(status: Status, remark: impl Into<String>) -> Refusal {
    Refusal {
        status,
        remark: remark.into(),
    }
}

/// Letters, digits, `_`, `-`, `%` and `|`, 1..=127 bytes.
pub fn check_topic_name(topic: &str) -> Result<(), Refusal> {
    if topic.is_empty() || topic.len() > TOPIC_LEN_MAX {
        return Err(refuse(
            Status::MessageIllegal,
            format!(
                "topic name must be 1..={TOPIC_LEN_MAX} bytes, got {}",
                topic.len()
            ),
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|')))
    {
        return Err(refuse(
            Status::MessageIllegal,
            format!(
                "topic name {topic:?} has the character {c:?}; allowed: letters, digits, _ - % |"
            ),
        ));
    }
    Ok(())
}

pub fn is_reserved_topic(topic: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| topic.starts_with(p)) || RESERVED_NAMES.contains(&topic)
}

/// A user's send: the topic, the size, and the kinds this broker does not take yet.
pub fn check_send(
    topic: &str,
    body_len: usize,
    sys_flag: u32,
    delay_level: u32,
    deliver_at_ms: i64,
    body_max: u32,
) -> Result<(), Refusal> {
    check_topic_name(topic)?;
    if is_reserved_topic(topic) {
        return Err(refuse(
            Status::MessageIllegal,
            format!("topic {topic:?} is reserved for the broker; users cannot send to it"),
        ));
    }
    if body_len > body_max as usize {
        return Err(refuse(
            Status::MessageIllegal,
            format!("message body of {body_len} bytes is over the limit of {body_max}"),
        ));
    }
    if sys_flag & SYS_FLAG_TRANSACTION != 0 {
        return Err(refuse(
            Status::MessageIllegal,
            "transactional messages are not supported by this broker",
        ));
    }
    let _ = (delay_level, deliver_at_ms);
    Ok(())
}

pub fn put_refusal(e: &PutError) -> Refusal {
    let status = match e {
        PutError::MessageIllegal(_) | PutError::MessageTooLarge { .. } => Status::MessageIllegal,
        PutError::Busy { .. } => Status::SystemBusy,
        PutError::ShardFailed { .. } | PutError::ShuttingDown => Status::ServiceNotAvailable,
        PutError::DiskFull { .. } | PutError::NoSpace { .. } => Status::DiskFull,
        PutError::BlockingOnShard => Status::SystemError,
        PutError::TopicNotExist { .. } => Status::TopicNotExist,
        PutError::TopicNotCreated { .. } => Status::SystemError,
        PutError::TopicDeleting { .. } => Status::ServiceNotAvailable,
        PutError::QueueIdOutOfRange { .. } => Status::QueueIdOutOfRange,
        PutError::NoPermission { .. } => Status::NoPermission,
        PutError::Delay(_) | PutError::ScheduleDisabled => Status::MessageIllegal,
    };
    refuse(status, e.to_string())
}

pub fn read_refusal(e: &ReadError) -> Refusal {
    let status = match e {
        ReadError::NoPermission { .. } => Status::NoPermission,
        ReadError::QueueIdOutOfRange { .. } => Status::QueueIdOutOfRange,
        ReadError::ShuttingDown => Status::ServiceNotAvailable,
        ReadError::NoSuchShard(_)
        | ReadError::OffsetTooSmall { .. }
        | ReadError::OffsetOutOfRange { .. } => Status::QueryNotFound,
        ReadError::BadRecord { .. } | ReadError::Io { .. } => Status::SystemError,
    };
    refuse(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_has_one_status_whichever_guard_saw_it() {
        let ratio = put_refusal(&PutError::DiskFull {
            shard: 0,
            used_percent: 95,
        });
        let enospc = put_refusal(&PutError::NoSpace {
            shard: 1,
            log: "commitlog",
            kind: std::io::ErrorKind::StorageFull,
            reason: "fallocate x: No space left on device (os error 28)".into(),
        });
        assert_eq!(
            (ratio.status, enospc.status),
            (Status::DiskFull, Status::DiskFull)
        );
        assert!(enospc.remark.contains("No space left"), "{}", enospc.remark);
        assert!(
            enospc.remark.contains("once space is freed"),
            "{}",
            enospc.remark
        );
    }

    #[test]
    fn bad_sends_get_a_specific_refusal() {
        let ok = |t: &str| check_send(t, 10, 0, 0, 0, 100);
        assert!(ok("Orders_2024-eu|x%").is_ok());
        for bad in ["", "a b", "topic/1", "é", &"x".repeat(128)] {
            assert_eq!(
                ok(bad).unwrap_err().status,
                Status::MessageIllegal,
                "{bad:?}"
            );
        }
        for reserved in ["%RETRY%g", "%DLQ%g", "SCHEDULE_TOPIC_XXXX"] {
            let r = ok(reserved).unwrap_err();
            assert!(r.remark.contains("reserved"), "{r:?}");
        }
        assert!(check_send("T", 101, 0, 0, 0, 100)
            .unwrap_err()
            .remark
            .contains("over the limit"));
        assert!(check_send("T", 1, SYS_FLAG_TRANSACTION, 0, 0, 100).is_err());
        assert!(check_send("T", 1, 0, 3, 0, 100).is_ok());
    }
}
