//! ConsumerSendBack: a message the group failed goes to its retry or dead-letter topic.

use shardmq_engine::schedule::plan::PROP_ORIGIN_MSG_ID;
use shardmq_engine::MessageInput;
use shardmq_protocol::groups::PROP_RETRY_TOPIC;
use shardmq_protocol::message::{ConsumerSendBackRequest, Empty};
use shardmq_protocol::{error_response, response, Frame, Header, Status};

use super::super::check::put_refusal;
use super::super::sendback::{after_failure, SendBack};
use super::super::Broker;
use super::refused;
use super::view::is_ours;

/// A message the group failed goes to its retry topic, delayed by the consume-back rule, or
/// to its dead-letter topic; the copy keeps the body, tags, keys and properties, with the
/// original topic and message id.
pub(super) async fn send_back(broker: &Broker, h: &Header, r: ConsumerSendBackRequest) -> Frame {
    let original = match is_ours(broker, &r.msg_id) {
        true => broker.store.message_by_id(&r.msg_id).await.ok(),
        false => None,
    };
    let Some(m) = original else {
        return error_response(
            h,
            Status::QueryNotFound,
            format!("no message with id {:?} on this broker", r.msg_id),
        );
    };
    let (topic, delay_level, times) =
        match after_failure(&r.group, r.reconsume_times, r.max_reconsume_times) {
            SendBack::Retry {
                topic,
                delay_level,
                times,
            } => (topic, delay_level, times),
            SendBack::DeadLetter { topic } => (topic, 0, r.reconsume_times),
        };
    broker.ensure_group_topic(&topic);
    let prop = |k: &str| m.property(k).map(str::to_owned);
    let origin_topic = prop(PROP_RETRY_TOPIC).unwrap_or_else(|| m.topic.clone());
    let origin_id = prop(PROP_ORIGIN_MSG_ID).unwrap_or_else(|| r.msg_id.clone());
    let kept = m
        .properties
        .iter()
        .filter(|(k, _)| k != PROP_RETRY_TOPIC && k != PROP_ORIGIN_MSG_ID)
        .cloned()
        .collect();
    let mut input = MessageInput::copy_of(&m, topic, 0, kept);
    input
        .properties
        .push((PROP_RETRY_TOPIC.into(), origin_topic));
    input
        .properties
        .push((PROP_ORIGIN_MSG_ID.into(), origin_id));
    if delay_level > 0 {
        input.properties.push((
            shardmq_engine::schedule::plan::PROP_DELAY_LEVEL.into(),
            delay_level.to_string(),
        ));
    }
    input.reconsume_times = times;
    match broker.store.put_message(input).await {
        Ok(_) => response(h, Status::Success, &Empty {}),
        Err(e) => refused(h, put_refusal(&e)),
    }
}
