//! Opcodes and status codes: the numbers on the wire, one table each (`docs/format.md`).

/// Defines a `u16`-backed enum with `from_u16` (unknown numbers are `None`, never a panic),
/// `as_u16` and `name`.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name {
            $($(#[$vm])* $v = $n,)*
        }

        impl $name {
            /// Every value, in number order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            pub fn from_u16(n: u16) -> Option<$name> {
                match n {
                    $($n => Some($name::$v),)*
                    _ => None,
                }
            }

            pub fn as_u16(self) -> u16 {
                self as u16
            }

            /// The name as written in `docs/format.md`.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$v => stringify!($v),)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum! {
    /// What a request asks for (responses carry the request's opcode back).
    Opcode {
        // Broker: messages.
        SendMessage = 10,
        SendBatch = 11,
        PullMessage = 12,
        ViewMessageById = 13,
        // Broker: offsets.
        QueryConsumerOffset = 20,
        UpdateConsumerOffset = 21,
        GetMinOffset = 22,
        GetMaxOffset = 23,
        SearchOffsetByTime = 24,
        // Broker: clients.
        Heartbeat = 30,
        UnregisterClient = 31,
        GetConsumerList = 32,
        ConsumerSendBack = 33,
        /// Broker to client, oneway: a consumer group's members changed; rebalance now.
        NotifyConsumerIdsChanged = 34,
        LockBatchQueue = 35,
        UnlockBatchQueue = 36,
        // Broker: administration.
        CreateTopic = 40,
        DeleteTopic = 41,
        GetAllTopicConfig = 42,
        GetBrokerStatus = 43,
        GetTopicStats = 44,
        GetScheduleStatus = 45,
        GetConsumerGroups = 46,
        // NameServer.
        RegisterBroker = 100,
        UnregisterBroker = 101,
        GetRouteByTopic = 102,
        GetClusterInfo = 103,
        GetTopicList = 104,
    }
}

wire_enum! {
    /// A response's outcome. Requests carry `Success` (0) in the status slot.
    Status {
        Success = 0,
        /// The broker failed in a way the request did not cause (the remark says how).
        SystemError = 1,
        /// Over a cap (in-flight requests or bytes, a full write buffer): retry with backoff.
        SystemBusy = 2,
        /// The opcode is unknown or not served by this role.
        RequestCodeNotSupported = 3,
        /// The frame's fields do not decode for its opcode.
        BadRequest = 4,
        /// SYNC_FLUSH: the fdatasync did not complete within the sync flush timeout. The message
        /// is stored and may survive; the send is not acknowledged as durable.
        FlushDiskTimeout = 10,
        SlaveNotAvailable = 11,
        FlushSlaveTimeout = 12,
        /// A message the broker refuses: bad topic name, too large, properties too large, a
        /// user send to a reserved topic, an unsupported kind (transactions).
        MessageIllegal = 13,
        /// The broker is starting, stopping, or its store stopped taking writes.
        ServiceNotAvailable = 14,
        /// The broker's disk is full (past the disk guard's refuse ratio, or no space for a
        /// new segment): puts are refused, reads keep working, and puts are taken again on
        /// their own once space returns. Retry on another broker, or later.
        DiskFull = 15,
        /// The topic (or broker) does not allow this read or write.
        NoPermission = 16,
        TopicNotExist = 17,
        /// A queue id at or past the topic's queue count.
        QueueIdOutOfRange = 18,
        /// Pull: nothing at or after the offset within the wait.
        PullNotFound = 19,
        /// Pull: ask again now (nothing matched the filter in what was scanned).
        PullRetryImmediately = 20,
        /// Pull: the offset is outside the queue; the response's next offset is where to go.
        PullOffsetMoved = 21,
        /// A query (offset, message, route) found nothing.
        QueryNotFound = 22,
        /// Topic create: it exists already with another configuration.
        TopicExists = 23,
    }
}

/// Frame flags (a bit set).
pub mod flags {
    /// The frame answers a request (else it is a request).
    pub const RESPONSE: u8 = 0b0000_0001;
    /// A request that wants no response.
    pub const ONEWAY: u8 = 0b0000_0010;
    /// Every defined bit; a frame with any other bit set is refused.
    pub const KNOWN: u8 = RESPONSE | ONEWAY;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_u16(op.as_u16()), Some(op));
            assert!(seen.insert(op.as_u16()), "{op} reuses a number");
        }
        let mut seen = std::collections::HashSet::new();
        for &st in Status::ALL {
            assert_eq!(Status::from_u16(st.as_u16()), Some(st));
            assert!(seen.insert(st.as_u16()), "{st} reuses a number");
        }
        assert_eq!(Opcode::from_u16(9999), None);
        assert_eq!(Status::from_u16(9999), None);
    }
}
