//! ViewMessageById: one message by the id the broker gave it.

use shardmq_engine::QueueMessage;
use shardmq_protocol::message::{ViewMessageRequest, ViewMessageResponse};
use shardmq_protocol::{error_response, response, Frame, Header, Status};

use super::super::conn::ConnCtx;
use super::super::Broker;
use super::pull::wire_message;
use super::reserve;

/// A viewed message's fields and properties beyond its body.
const VIEW_OVERHEAD_BYTES: usize = 64 << 10;

/// Answers a ViewMessageById: room for one whole message first, as for a pull.
pub(super) async fn view_message(
    broker: &Broker,
    h: &Header,
    r: &ViewMessageRequest,
    ctx: &ConnCtx,
) -> Frame {
    let need = broker.settings.message_max_bytes as usize + VIEW_OVERHEAD_BYTES;
    let _grant = match reserve(broker, h, &ctx.answers, need).await {
        Ok(g) => g,
        Err(refusal) => return refusal,
    };
    view(broker, h, &r.id).await
}

/// Whether `id` is a message id of this broker (ids encode the broker's address): another
/// broker's id is never looked up here.
pub(super) fn is_ours(broker: &Broker, id: &str) -> bool {
    shardmq_engine::msgid::decode(id)
        .map(|(shard, offset)| shardmq_engine::msgid::encode(broker.store_host, shard, offset))
        .is_some_and(|again| again.eq_ignore_ascii_case(id))
}

async fn view(broker: &Broker, h: &Header, id: &str) -> Frame {
    if !is_ours(broker, id) {
        return error_response(
            h,
            Status::QueryNotFound,
            format!("{id:?} is not a message id of this broker"),
        );
    }
    match broker.store.message_by_id(id).await {
        Ok(m) => {
            let msg_id = id.to_owned();
            let q = QueueMessage {
                queue_offset: m.queue_offset,
                msg_id,
                message: m,
            };
            response(
                h,
                Status::Success,
                &ViewMessageResponse {
                    message: wire_message(q),
                },
            )
        }
        Err(e) => error_response(
            h,
            Status::QueryNotFound,
            format!("no message with id {id:?} on this broker: {e}"),
        ),
    }
}
