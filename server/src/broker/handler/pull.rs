//! PullMessage: room for the answer first, then the owner's ConsumeQueue, long polling when
//! nothing is new.

use std::net::SocketAddr;
use std::time::Duration;

use shardmq_engine::{GetRequest, GetStatus, QueueMessage, StoredMessage, TagFilter};
use shardmq_protocol::message::{PullMessageRequest, WireMessage};
use shardmq_protocol::pull_answer::{MessageParts, PullAnswer};
use shardmq_protocol::{error_response, Frame, Header, Status};

use super::super::budget::{pull_reserve, Answers};
use super::super::check::read_refusal;
use super::super::Broker;
use super::{refused, reserve, UNIQ_KEY};

pub(super) async fn pull(
    broker: &Broker,
    h: &Header,
    r: PullMessageRequest,
    answers: &Answers,
) -> Frame {
    if !broker.store.topic_exists(&r.topic) {
        return error_response(
            h,
            Status::TopicNotExist,
            format!("topic {:?} does not exist", r.topic),
        );
    }
    if r.commit_offset >= 0 {
        broker.offsets.commit(
            &r.consumer_group,
            &r.topic,
            r.queue_id,
            r.commit_offset as u64,
        );
    }
    let filter = TagFilter::parse(&r.subscription);
    let get = GetRequest {
        group: r.consumer_group.clone(),
        topic: r.topic.clone(),
        queue_id: r.queue_id,
        offset: r.queue_offset,
        max_messages: r.max_msgs.clamp(1, 1024),
        max_bytes: r.max_bytes.clamp(1, broker.settings.pull_bytes_max),
        filter,
    };
    // Room for the answer before a byte of it is read; given back while the pull is parked.
    let need = pull_reserve(get.max_bytes, get.max_messages);
    let mut grant = match reserve(broker, h, answers, need).await {
        Ok(g) => Some(g),
        Err(refusal) => return refusal,
    };
    let mut result = broker.store.get_message(get.clone()).await;
    let parkable = |s: GetStatus| {
        matches!(
            s,
            GetStatus::NoNewMsg | GetStatus::OffsetOverflowOne | GetStatus::NoMatchedLogicQueue
        )
    };
    if let Ok(res) = &result {
        if parkable(res.status) && r.suspend_timeout_ms > 0 {
            let wait = Duration::from_millis(
                (r.suspend_timeout_ms as u64).min(broker.settings.long_poll_max_ms),
            );
            grant = None;
            let woken = broker
                .until_stopped(broker.store.wait_for_message(
                    &r.topic,
                    r.queue_id,
                    r.queue_offset,
                    wait,
                ))
                .await;
            // Room again only for a read: an empty answer is counted when queued.
            if woken == Some(true) {
                grant = match reserve(broker, h, answers, need).await {
                    Ok(g) => Some(g),
                    Err(refusal) => return refusal,
                };
                result = broker.store.get_message(get).await;
            }
        }
    }
    let res = match result {
        Ok(res) => res,
        Err(e) => return refused(h, read_refusal(&e)),
    };
    let _grant = grant;
    let status = match res.status {
        GetStatus::Found => Status::Success,
        GetStatus::NoNewMsg | GetStatus::OffsetOverflowOne | GetStatus::NoMatchedLogicQueue => {
            Status::PullNotFound
        }
        GetStatus::NoMatchedMsg => Status::PullRetryImmediately,
        GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly => Status::PullOffsetMoved,
    };
    let n = res.messages.len() as u64;
    let bytes: u64 = res
        .messages
        .iter()
        .map(|m| m.message.body.len() as u64)
        .sum();
    broker.metrics.here().got(n, bytes);
    // Encoded straight from the stored messages into one buffer sized for them.
    let mut answer = PullAnswer::new(
        res.next_begin_offset,
        res.min_offset,
        res.max_offset,
        bytes as usize + res.messages.len() * MESSAGE_FIELDS_BYTES,
    );
    let (mut born, mut stored) = (HostText::default(), HostText::default());
    for q in &res.messages {
        let m = &q.message;
        let prop = |k: &str| m.property(k).unwrap_or_default();
        answer.push(&MessageParts {
            topic: &m.topic,
            queue_id: m.queue_id,
            queue_offset: q.queue_offset,
            msg_id: &q.msg_id,
            unique_id: prop(UNIQ_KEY),
            tags: prop("TAGS"),
            keys: prop("KEYS"),
            flags: m.flag,
            sys_flag: m.sys_flag,
            born_timestamp_ms: m.born_timestamp_ms,
            store_timestamp_ms: m.store_timestamp_ms,
            born_host: born.text(m.born_host),
            store_host: stored.text(m.store_host),
            reconsume_times: m.reconsume_times,
            properties: m
                .properties
                .iter()
                .filter(|(k, _)| !has_own_field(k))
                .map(|(k, v)| (k.as_str(), v.as_str())),
            body: &m.body,
        });
    }
    answer.finish(h, status)
}

/// Bytes a message's fields take in a pull answer besides its body and properties, about.
const MESSAGE_FIELDS_BYTES: usize = 256;

/// The texts of the hosts formatted so far for one answer: its messages come from a few
/// producers, so most are written without formatting their hosts.
#[derive(Default)]
struct HostText {
    seen: Vec<(SocketAddr, String)>,
}

impl HostText {
    /// Hosts remembered at most (a queue fed by more producers formats the rest each time).
    const MAX: usize = 8;

    fn text(&mut self, addr: SocketAddr) -> &str {
        let at = match self.seen.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None if self.seen.len() < Self::MAX => {
                self.seen.push((addr, addr.to_string()));
                self.seen.len() - 1
            }
            None => {
                self.seen[Self::MAX - 1] = (addr, addr.to_string());
                Self::MAX - 1
            }
        };
        &self.seen[at].1
    }
}

/// Properties carried in a message's own fields, not in its property list.
fn has_own_field(key: &str) -> bool {
    matches!(key, "TAGS" | "KEYS" | UNIQ_KEY)
}

pub(super) fn wire_message(q: QueueMessage) -> WireMessage {
    let m = q.message;
    let prop = |k: &str| m.property(k).unwrap_or_default().to_owned();
    let (tags, keys, unique_id) = (prop("TAGS"), prop("KEYS"), prop(UNIQ_KEY));
    WireMessage {
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        queue_offset: q.queue_offset,
        msg_id: q.msg_id,
        unique_id,
        tags,
        keys,
        flags: m.flag,
        sys_flag: m.sys_flag,
        born_timestamp_ms: m.born_timestamp_ms,
        store_timestamp_ms: m.store_timestamp_ms,
        born_host: m.born_host.to_string(),
        store_host: m.store_host.to_string(),
        reconsume_times: m.reconsume_times,
        properties: user_properties(&m),
        body: m.body,
    }
}

/// Properties without the ones that have their own fields.
fn user_properties(m: &StoredMessage) -> Vec<(String, String)> {
    m.properties
        .iter()
        .filter(|(k, _)| !has_own_field(k))
        .cloned()
        .collect()
}
