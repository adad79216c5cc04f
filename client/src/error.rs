//! `ClientError`: everything a client call can fail with, and which failures are worth a retry.

use std::time::Duration;

use shardmq_protocol::{FrameError, ReplyError, Status};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to, writing to or reading from `addr` failed.
    #[error("I/O with {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// No response from `addr` within `after`.
    #[error("no response from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The connection to `addr` is unusable (closed by the peer, a read or write failed, or
    /// it was closed here); every request pending on it fails with this.
    #[error("connection to {addr} is broken: {reason}")]
    Broken { addr: String, reason: String },
    /// The peer's bytes lost their framing (the connection is closed).
    #[error("bad frame from the peer: {0}")]
    Frame(#[from] FrameError),
    /// A response whose fields do not decode.
    #[error("bad response: {0}")]
    Reply(#[from] ReplyError),
    /// The broker or NameServer answered with a failure status.
    #[error("{status}: {remark}")]
    Broker { status: Status, remark: String },
    /// No NameServer knows the topic, or its route has no queue for this use.
    #[error("no route for topic {topic:?}")]
    NoRoute { topic: String },
    /// Every try of a send failed; `last` is the last failure.
    #[error("sending to topic {topic:?} failed {tries} times; last: {last}")]
    AllBrokersFailed {
        topic: String,
        tries: u32,
        last: Box<ClientError>,
    },
    /// A response that decodes but does not answer the request as it should.
    #[error("unexpected response from {addr}: {what}")]
    Unexpected { addr: String, what: String },
    /// A message the client refuses to send (checked before anything goes on the wire).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A message (or batch) over the configured maximum size.
    #[error("message of {size} bytes is over the maximum of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    /// A setting the client cannot work with (such as an empty NameServer list).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The producer or consumer was not started, or was shut down.
    #[error("the client is not running (call start(), or it was shut down)")]
    NotRunning,
    /// A blocking wait for an answer on the client's shared I/O thread, that is from inside a
    /// callback or peer-request handler: the answer could only come from the thread that is
    /// waiting, so the wait is refused instead of deadlocking. Callbacks must not block.
    #[error(
        "refused to wait for an answer on the client's I/O thread (inside a callback), \
         where it would deadlock: callbacks must not block"
    )]
    WaitOnIoThread,
}

impl ClientError {
    /// A failure of the transport (connect, write, read, timeout), as opposed to an answer.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. }
                | ClientError::Timeout { .. }
                | ClientError::Broken { .. }
                | ClientError::Frame(_)
        )
    }

    /// The broker's status, if the broker answered with a failure.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Broker { status, .. } => Some(*status),
            ClientError::AllBrokersFailed { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// Statuses after which a send is retried (on another broker where there is one).
///
/// `FlushDiskTimeout`, `FlushSlaveTimeout` and `SlaveNotAvailable` mean the message was
/// stored but not acknowledged as durable or replicated: a retry may store it twice, which
/// at-least-once delivery allows (consumers deduplicate by unique id).
pub fn is_retryable_status(status: Status) -> bool {
    matches!(
        status,
        Status::SystemError
            | Status::SystemBusy
            | Status::ServiceNotAvailable
            | Status::DiskFull
            | Status::FlushDiskTimeout
            | Status::FlushSlaveTimeout
            | Status::SlaveNotAvailable
            | Status::TopicNotExist
            | Status::NoPermission
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_failures() {
        let t = ClientError::Timeout {
            addr: "a:1".into(),
            after: Duration::from_secs(1),
        };
        assert!(t.is_transport());
        assert_eq!(t.status(), None);
        let b = ClientError::Broker {
            status: Status::SystemBusy,
            remark: "busy".into(),
        };
        assert!(!b.is_transport());
        let all = ClientError::AllBrokersFailed {
            topic: "T".into(),
            tries: 3,
            last: Box::new(b),
        };
        assert_eq!(all.status(), Some(Status::SystemBusy));
        assert!(all.to_string().contains("3 times"), "{all}");
        assert!(is_retryable_status(Status::SystemBusy));
        assert!(!is_retryable_status(Status::MessageIllegal));
        assert!(!is_retryable_status(Status::Success));
    }
}
