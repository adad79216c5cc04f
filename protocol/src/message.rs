//! Typed fields of every request and response, and the table tying each opcode to them.
//!
//! Every struct encodes its fields in declaration order with the primitives of `wire.rs`;
//! `docs/format.md` lists them. Message bodies travel inside the fields (`Bytes`, decoded
//! without a copy); the frame body is reserved and empty in protocol version 1.

use bytes::Bytes;

use crate::codes::{Opcode, Status};
use crate::frame::{Frame, Header};
use crate::wire::{self, wire_struct, FieldError};

wire_struct! {
    /// SendMessage: one message to `topic`/`queue_id`.
    pub struct SendMessageRequest {
        pub producer_group: String,
        pub topic: String,
        pub queue_id: u32,
        /// The client-generated unique id (RocketMQ's UNIQ_KEY); empty for none.
        pub unique_id: String,
        pub tags: String,
        /// Space-separated keys.
        pub keys: String,
        /// User flags, stored as given.
        pub flags: u32,
        /// System flags (`SYS_FLAG_*`).
        pub sys_flag: u32,
        pub born_timestamp_ms: i64,
        pub reconsume_times: u32,
        /// RocketMQ delay level; 0 for none.
        pub delay_level: u32,
        /// Absolute delivery time in ms since the epoch; 0 for none.
        pub deliver_at_ms: i64,
        pub properties: Vec<(String, String)>,
        pub body: Bytes,
    }
}

/// `sys_flag` bit: a transactional message (refused while transactions are not supported).
pub const SYS_FLAG_TRANSACTION: u32 = 0b0100;

wire_struct! {
    /// One message of a SendBatch (all go to the batch's topic and queue).
    pub struct BatchEntry {
        pub unique_id: String,
        pub tags: String,
        pub keys: String,
        pub flags: u32,
        pub born_timestamp_ms: i64,
        pub properties: Vec<(String, String)>,
        pub body: Bytes,
    }
}

wire_struct! {
    /// SendBatch: messages stored contiguously, acknowledged together.
    pub struct SendBatchRequest {
        pub producer_group: String,
        pub topic: String,
        pub queue_id: u32,
        pub entries: Vec<BatchEntry>,
    }
}

wire_struct! {
    /// Where a sent message was stored.
    pub struct SendResult {
        /// The broker's message id (hex; encodes the store address).
        pub msg_id: String,
        pub queue_id: u32,
        pub queue_offset: u64,
        pub store_timestamp_ms: i64,
    }
}

wire_struct! {
    pub struct SendBatchResponse {
        pub results: Vec<SendResult>,
    }
}

wire_struct! {
    /// PullMessage: messages of one queue from an offset, waiting up to `suspend_timeout_ms`
    /// (long polling) when there are none yet.
    pub struct PullMessageRequest {
        pub consumer_group: String,
        pub topic: String,
        pub queue_id: u32,
        pub queue_offset: u64,
        pub max_msgs: u32,
        pub max_bytes: u32,
        pub suspend_timeout_ms: u32,
        /// The group's offset to commit for this queue on the way; -1 for none.
        pub commit_offset: i64,
        /// Tag expression: `*` or `TagA || TagB`.
        pub subscription: String,
    }
}

wire_struct! {
    /// A stored message as readers see it.
    pub struct WireMessage {
        pub topic: String,
        pub queue_id: u32,
        pub queue_offset: u64,
        pub msg_id: String,
        pub unique_id: String,
        pub tags: String,
        pub keys: String,
        pub flags: u32,
        pub sys_flag: u32,
        pub born_timestamp_ms: i64,
        pub store_timestamp_ms: i64,
        pub born_host: String,
        pub store_host: String,
        pub reconsume_times: u32,
        pub properties: Vec<(String, String)>,
        pub body: Bytes,
    }
}

wire_struct! {
    /// The answer to a pull with status Success (messages), PullNotFound, PullRetryImmediately
    /// or PullOffsetMoved (no messages; `next_begin_offset` says where to go on).
    pub struct PullMessageResponse {
        pub next_begin_offset: u64,
        pub min_offset: u64,
        pub max_offset: u64,
        pub messages: Vec<WireMessage>,
    }
}

wire_struct! {
    pub struct ViewMessageRequest {
        /// The broker's message id or the client's unique id.
        pub id: String,
    }
}

wire_struct! {
    pub struct ViewMessageResponse {
        pub message: WireMessage,
    }
}

wire_struct! {
    pub struct ConsumerOffsetRequest {
        pub consumer_group: String,
        pub topic: String,
        pub queue_id: u32,
    }
}

wire_struct! {
    pub struct UpdateConsumerOffsetRequest {
        pub consumer_group: String,
        pub topic: String,
        pub queue_id: u32,
        pub offset: u64,
    }
}

wire_struct! {
    /// GetMinOffset, GetMaxOffset.
    pub struct QueueRequest {
        pub topic: String,
        pub queue_id: u32,
    }
}

wire_struct! {
    pub struct SearchOffsetRequest {
        pub topic: String,
        pub queue_id: u32,
        pub timestamp_ms: i64,
    }
}

wire_struct! {
    pub struct OffsetResponse {
        pub offset: u64,
    }
}

wire_struct! {
    pub struct ConsumerData {
        pub group: String,
        /// 0 clustering, 1 broadcasting.
        pub message_model: u8,
        /// 0 last offset, 1 first offset, 2 timestamp.
        pub consume_from: u8,
        /// (topic, tag expression).
        pub subscriptions: Vec<(String, String)>,
    }
}

wire_struct! {
    pub struct HeartbeatRequest {
        pub client_id: String,
        pub producer_groups: Vec<String>,
        pub consumers: Vec<ConsumerData>,
    }
}

wire_struct! {
    /// GetConsumerList: the live members of a consumer group.
    pub struct GroupRequest {
        pub group: String,
    }
}

wire_struct! {
    /// ConsumerSendBack: a message the group's listener failed goes back to the broker, to
    /// be delivered again later through the group's retry topic (or to its dead-letter topic
    /// once it was reconsumed `max_reconsume_times` times).
    pub struct ConsumerSendBackRequest {
        pub group: String,
        /// The broker message id of the message that failed.
        pub msg_id: String,
        /// How many times it was consumed again before this failure.
        pub reconsume_times: u32,
        pub max_reconsume_times: u32,
    }
}

wire_struct! {
    /// LockBatchQueue / UnlockBatchQueue: an orderly consumer takes (or gives back) the
    /// exclusive right to consume queues of this broker for its group.
    pub struct LockBatchRequest {
        pub group: String,
        pub client_id: String,
        /// (topic, queue id).
        pub queues: Vec<(String, u32)>,
    }
}

wire_struct! {
    /// The queues of a `LockBatchQueue` that the client holds now (taken or renewed).
    pub struct LockBatchResponse {
        pub locked: Vec<(String, u32)>,
    }
}

wire_struct! {
    pub struct UnregisterClientRequest {
        pub client_id: String,
        pub producer_group: String,
        pub consumer_group: String,
    }
}

wire_struct! {
    /// A topic's configuration (CreateTopic's request; listed by GetAllTopicConfig).
    pub struct TopicConfigData {
        pub topic: String,
        pub read_queues: u32,
        pub write_queues: u32,
        /// Bits: 4 read, 2 write.
        pub perm: u8,
        pub order: bool,
    }
}

wire_struct! {
    /// DeleteTopic, GetTopicStats, GetRouteByTopic.
    pub struct TopicRequest {
        pub topic: String,
    }
}

wire_struct! {
    pub struct TopicConfigList {
        pub topics: Vec<TopicConfigData>,
    }
}

wire_struct! {
    pub struct QueueStat {
        pub queue_id: u32,
        pub min_offset: u64,
        pub max_offset: u64,
        pub last_store_timestamp_ms: i64,
    }
}

wire_struct! {
    pub struct TopicStats {
        pub queues: Vec<QueueStat>,
    }
}

wire_struct! {
    /// A table of named values (broker status).
    pub struct KeyValues {
        pub entries: Vec<(String, String)>,
    }
}

wire_struct! {
    pub struct RegisterBrokerRequest {
        pub cluster: String,
        pub broker_name: String,
        /// 0 for a master.
        pub broker_id: u64,
        pub broker_addr: String,
        pub topics: Vec<TopicConfigData>,
        /// One address per shard (index = shard; see `shards::queue_shard`), each served
        /// by that shard alone; empty when the broker advertises none.
        pub shard_addrs: Vec<String>,
    }
}

wire_struct! {
    pub struct UnregisterBrokerRequest {
        pub cluster: String,
        pub broker_name: String,
        pub broker_id: u64,
        pub broker_addr: String,
    }
}

wire_struct! {
    pub struct BrokerData {
        pub cluster: String,
        pub broker_name: String,
        /// (broker id, address).
        pub addrs: Vec<(u64, String)>,
        /// (broker id, one address per shard): where each queue's owner shard is reached
        /// directly; a broker id absent here advertises no shard addresses.
        pub shard_addrs: Vec<(u64, Vec<String>)>,
    }
}

wire_struct! {
    pub struct QueueData {
        pub broker_name: String,
        pub read_queues: u32,
        pub write_queues: u32,
        pub perm: u8,
    }
}

wire_struct! {
    pub struct TopicRoute {
        pub brokers: Vec<BrokerData>,
        pub queues: Vec<QueueData>,
    }
}

wire_struct! {
    pub struct ClusterInfo {
        pub brokers: Vec<BrokerData>,
        /// (cluster, broker names).
        pub clusters: Vec<(String, Vec<String>)>,
    }
}

wire_struct! {
    pub struct NameList {
        pub names: Vec<String>,
    }
}

wire_struct! {
    /// Requests without fields, and responses that only say it worked.
    pub struct Empty {
    }
}

wire_struct! {
    /// The fields of every response whose status has no typed answer: what went wrong.
    pub struct ErrorResponse {
        pub remark: String,
    }
}

/// Why a frame is not the request it claims to be. Unlike a `FrameError`, the connection's
/// framing is intact: answer it and go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("a {opcode} request's fields are malformed: {source}")]
    Fields { opcode: Opcode, source: FieldError },
    #[error("a {opcode} request carries a {len}-byte frame body; version 1 has none")]
    UnexpectedBody { opcode: Opcode, len: usize },
}

impl RequestError {
    /// The status to answer it with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::UnknownOpcode(_) => Status::RequestCodeNotSupported,
            RequestError::Fields { .. } | RequestError::UnexpectedBody { .. } => Status::BadRequest,
        }
    }
}

macro_rules! requests {
    ($($op:ident($t:ty) => $resp:ty,)*) => {
        /// A decoded request.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $($op($t),)*
        }

        impl Request {
            pub fn opcode(&self) -> Opcode {
                match self {
                    $(Request::$op(_) => Opcode::$op,)*
                }
            }

            fn put_fields(&self, w: &mut bytes::BytesMut) {
                match self {
                    $(Request::$op(r) => wire::Wire::put(r, w),)*
                }
            }

            fn decode_fields(opcode: Opcode, fields: Bytes) -> Result<Request, FieldError> {
                Ok(match opcode {
                    $(Opcode::$op => Request::$op(wire::from_bytes(fields, stringify!($op))?),)*
                })
            }
        }

        /// The typed answer each opcode gets on success, by name (for docs and tests).
        pub const RESPONSE_TYPES: &[(Opcode, &str)] = &[
            $((Opcode::$op, stringify!($resp)),)*
        ];

        #[cfg(test)]
        impl Request {
            /// A made-up request of every opcode.
            pub(crate) fn samples(rng: &mut wire::gen::Rng) -> Vec<Request> {
                vec![$(Request::$op(<$t as wire::gen::Gen>::gen(rng)),)*]
            }
        }

        /// Checks that a response frame for each opcode round-trips its typed fields.
        #[cfg(test)]
        pub(crate) fn response_round_trips(rng: &mut wire::gen::Rng) {
            $({
                let v = <$resp as wire::gen::Gen>::gen(rng);
                let h = Header::request(Opcode::$op, rng.next());
                let f = response(&h, Status::Success, &v);
                let wire_bytes = f.to_bytes();
                let mut buf = bytes::BytesMut::from(&wire_bytes[..]);
                let back = crate::frame::FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
                assert_eq!(back.header.request_id, h.request_id);
                assert_eq!(decode_reply::<$resp>(&back, &[]).unwrap(), Reply::Typed(Status::Success, v));
            })*
        }
    };
}

requests! {
    SendMessage(SendMessageRequest) => SendResult,
    SendBatch(SendBatchRequest) => SendBatchResponse,
    PullMessage(PullMessageRequest) => PullMessageResponse,
    ViewMessageById(ViewMessageRequest) => ViewMessageResponse,
    QueryConsumerOffset(ConsumerOffsetRequest) => OffsetResponse,
    UpdateConsumerOffset(UpdateConsumerOffsetRequest) => Empty,
    GetMinOffset(QueueRequest) => OffsetResponse,
    GetMaxOffset(QueueRequest) => OffsetResponse,
    SearchOffsetByTime(SearchOffsetRequest) => OffsetResponse,
    Heartbeat(HeartbeatRequest) => Empty,
    UnregisterClient(UnregisterClientRequest) => Empty,
    GetConsumerList(GroupRequest) => NameList,
    ConsumerSendBack(ConsumerSendBackRequest) => Empty,
    NotifyConsumerIdsChanged(GroupRequest) => Empty,
    LockBatchQueue(LockBatchRequest) => LockBatchResponse,
    UnlockBatchQueue(LockBatchRequest) => Empty,
    CreateTopic(TopicConfigData) => Empty,
    DeleteTopic(TopicRequest) => Empty,
    GetAllTopicConfig(Empty) => TopicConfigList,
    GetBrokerStatus(Empty) => KeyValues,
    GetTopicStats(TopicRequest) => TopicStats,
    GetScheduleStatus(Empty) => KeyValues,
    GetConsumerGroups(Empty) => NameList,
    RegisterBroker(RegisterBrokerRequest) => Empty,
    UnregisterBroker(UnregisterBrokerRequest) => Empty,
    GetRouteByTopic(TopicRequest) => TopicRoute,
    GetClusterInfo(Empty) => ClusterInfo,
    GetTopicList(Empty) => NameList,
}

impl Request {
    /// The request as a frame.
    pub fn to_frame(&self, request_id: u64, oneway: bool) -> Frame {
        let header = if oneway {
            Header::oneway(self.opcode(), request_id)
        } else {
            Header::request(self.opcode(), request_id)
        };
        let mut w = bytes::BytesMut::new();
        self.put_fields(&mut w);
        Frame::new(header, w.freeze(), Bytes::new())
    }

    /// Appends the request as a frame to `dst`, its fields encoded in place (what
    /// `to_frame(..).encode(dst)` writes, without the intermediate buffers). Returns the
    /// frame's encoded length.
    pub fn encode_frame(&self, request_id: u64, oneway: bool, dst: &mut bytes::BytesMut) -> usize {
        let header = if oneway {
            Header::oneway(self.opcode(), request_id)
        } else {
            Header::request(self.opcode(), request_id)
        };
        crate::frame::encode_fields_frame(&header, dst, |w| self.put_fields(w))
    }

    /// Decodes a request frame (the caller checked it is not a response).
    pub fn from_frame(frame: &Frame) -> Result<Request, RequestError> {
        let opcode = frame
            .header
            .opcode()
            .ok_or(RequestError::UnknownOpcode(frame.header.opcode))?;
        if !frame.body.is_empty() {
            return Err(RequestError::UnexpectedBody {
                opcode,
                len: frame.body.len(),
            });
        }
        Request::decode_fields(opcode, frame.fields.clone())
            .map_err(|source| RequestError::Fields { opcode, source })
    }
}

/// A response frame answering `request` with `status` and typed fields.
pub fn response<T: wire::Wire>(request: &Header, status: Status, fields: &T) -> Frame {
    Frame::new(
        request.response_to(status),
        wire::to_bytes(fields),
        Bytes::new(),
    )
}

/// A response frame with a non-success status and a remark.
pub fn error_response(request: &Header, status: Status, remark: impl Into<String>) -> Frame {
    response(
        request,
        status,
        &ErrorResponse {
            remark: remark.into(),
        },
    )
}

/// What a response frame says, for a caller expecting `T` on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    /// Status Success (or another status the opcode answers with typed fields, such as
    /// the pull statuses), with its fields.
    Typed(Status, T),
    /// Any other status, with the broker's remark.
    Error(Status, String),
}

/// Decodes a response to a request that expects `T`. `typed` says which statuses carry `T`
/// (Success always does).
pub fn decode_reply<T: wire::Wire>(
    frame: &Frame,
    typed: &[Status],
) -> Result<Reply<T>, ReplyError> {
    let status = frame
        .header
        .status()
        .ok_or(ReplyError::UnknownStatus(frame.header.status))?;
    if status == Status::Success || typed.contains(&status) {
        let v = wire::from_bytes(frame.fields.clone(), "response")?;
        return Ok(Reply::Typed(status, v));
    }
    let e: ErrorResponse = wire::from_bytes(frame.fields.clone(), "error response")?;
    Ok(Reply::Error(status, e.remark))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unknown status {0}")]
    UnknownStatus(u16),
    #[error("malformed response: {0}")]
    Fields(#[from] FieldError),
}

/// The statuses a pull answers with `PullMessageResponse` fields.
pub const PULL_TYPED: &[Status] = &[
    Status::PullNotFound,
    Status::PullRetryImmediately,
    Status::PullOffsetMoved,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_encoded_in_place_is_the_frame_to_frame_encodes() {
        let send = Request::SendMessage(SendMessageRequest {
            producer_group: "g".into(),
            topic: "T".into(),
            queue_id: 3,
            tags: "TagA".into(),
            properties: vec![("k".into(), "v".into())],
            body: Bytes::from(vec![7u8; 3000]),
            ..Default::default()
        });
        for (req, oneway) in [(send, false), (Request::GetBrokerStatus(Empty {}), true)] {
            let mut dst = bytes::BytesMut::from(&b"before"[..]);
            let n = req.encode_frame(42, oneway, &mut dst);
            assert_eq!(&dst[..6], b"before");
            assert_eq!(&dst[6..], &req.to_frame(42, oneway).to_bytes()[..]);
            assert_eq!(n, dst.len() - 6);
        }
    }
    use crate::frame::FrameDecoder;
    use crate::wire::gen::Rng;
    use proptest::prelude::*;

    #[test]
    fn every_opcode_has_a_request_type() {
        let samples = Request::samples(&mut Rng(7));
        let ops: Vec<Opcode> = samples.iter().map(Request::opcode).collect();
        assert_eq!(ops, Opcode::ALL.to_vec());
        assert_eq!(RESPONSE_TYPES.len(), Opcode::ALL.len());
    }

    #[test]
    fn errors_carry_their_remark_and_unknown_opcodes_are_answered() {
        let h = Header::request(Opcode::PullMessage, 9);
        let f = error_response(&h, Status::TopicNotExist, "topic T does not exist");
        assert_eq!(
            decode_reply::<PullMessageResponse>(&f, PULL_TYPED).unwrap(),
            Reply::Error(Status::TopicNotExist, "topic T does not exist".into())
        );
        let odd = Frame::new(Header { opcode: 777, ..h }, Bytes::new(), Bytes::new());
        let err = Request::from_frame(&odd).unwrap_err();
        assert_eq!(err, RequestError::UnknownOpcode(777));
        assert_eq!(err.status(), Status::RequestCodeNotSupported);
    }

    proptest! {
        #[test]
        fn every_request_round_trips(seed in 1u64.., id: u64, oneway: bool) {
            let mut rng = Rng(seed);
            for req in Request::samples(&mut rng) {
                let frame = req.to_frame(id, oneway);
                let mut buf = bytes::BytesMut::new();
                frame.encode(&mut buf);
                let back = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
                prop_assert_eq!(back.header.is_oneway(), oneway);
                prop_assert_eq!(back.header.request_id, id);
                prop_assert_eq!(Request::from_frame(&back).unwrap(), req);
            }
        }

        #[test]
        fn every_response_round_trips(seed in 1u64..) {
            response_round_trips(&mut Rng(seed));
        }

        #[test]
        fn arbitrary_fields_never_panic(
            op in 0usize..64,
            fields in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let opcode = Opcode::ALL[op % Opcode::ALL.len()];
            let frame = Frame::new(Header::request(opcode, 1), Bytes::from(fields), Bytes::new());
            match Request::from_frame(&frame) {
                Ok(r) => prop_assert_eq!(r.opcode(), opcode),
                Err(e) => prop_assert_eq!(e.status(), Status::BadRequest),
            }
            let _ = decode_reply::<PullMessageResponse>(&frame, PULL_TYPED);
            let _ = decode_reply::<TopicRoute>(&frame, &[]);
        }

        /// A valid request cut short or padded never decodes as something else silently.
        #[test]
        fn damaged_requests_are_refused(seed in 1u64.., cut in 1usize..64) {
            for req in Request::samples(&mut Rng(seed)) {
                let frame = req.to_frame(1, false);
                let mut padded = frame.fields.to_vec();
                padded.push(0);
                let long = Frame::new(frame.header, Bytes::from(padded), Bytes::new());
                prop_assert!(Request::from_frame(&long).is_err());
                if !frame.fields.is_empty() {
                    let n = frame.fields.len().saturating_sub(cut);
                    let short = Frame::new(frame.header, frame.fields.slice(..n), Bytes::new());
                    prop_assert!(Request::from_frame(&short).is_err());
                }
            }
        }
    }
}
