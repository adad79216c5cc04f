//! Serving one request on the shard its connection lives on: the table below hands each
//! request kind to its own handler — `send` (SendMessage, SendBatch), `pull`, `view`,
//! `offsets` (consumer and queue offsets), `topics` (administration), `status`, `send_back`,
//! and `super::membership` (heartbeats, group members, queue locks).

mod offsets;
mod pull;
mod send;
mod send_back;
mod status;
mod topics;
mod view;

use std::sync::atomic::Ordering;
use std::time::Instant;

use shardmq_protocol::{error_response, Frame, Header, Request, Status};

use super::budget::{Answers, Grant, ShardBusy};
use super::check::Refusal;
use super::conn::ConnCtx;
use super::{membership, Broker};

/// The property a message's client-generated unique id is stored under.
pub const UNIQ_KEY: &str = "UNIQ_KEY";

/// Room for an answer about to be built (`budget.rs`), or the frame refusing the request:
/// SYSTEM_BUSY when the shard's answers are full, SERVICE_NOT_AVAILABLE when the broker
/// stops while the connection's are.
async fn reserve(
    broker: &Broker,
    h: &Header,
    answers: &Answers,
    need: usize,
) -> Result<Grant, Frame> {
    match broker.until_stopped(answers.reserve(need)).await {
        Some(Ok(grant)) => Ok(grant),
        Some(Err(ShardBusy)) => {
            broker.metrics.here().busy.fetch_add(1, Ordering::Relaxed);
            Err(error_response(
                h,
                Status::SystemBusy,
                "the shard holds broker.shard_out_max_bytes of answers; retry later",
            ))
        }
        None => Err(error_response(
            h,
            Status::ServiceNotAvailable,
            "the broker is shutting down",
        )),
    }
}

fn refused(h: &Header, r: Refusal) -> Frame {
    error_response(h, r.status, r.remark)
}

/// Answers `frame` (a request). Runs on a shard executor.
pub async fn handle(broker: &Broker, frame: Frame, ctx: &ConnCtx) -> Frame {
    let h = frame.header;
    let req = match Request::from_frame(&frame) {
        Ok(r) => r,
        Err(e) => return error_response(&h, e.status(), e.to_string()),
    };
    let h = &h;
    let started = Instant::now();
    match req {
        Request::SendMessage(r) => {
            let reply = send::send(broker, h, r, ctx.peer).await;
            broker.metrics.here().put_latency.record(started.elapsed());
            reply
        }
        Request::SendBatch(r) => {
            let reply = send::send_batch(broker, h, r.topic, r.queue_id, r.entries, ctx.peer).await;
            broker.metrics.here().put_latency.record(started.elapsed());
            reply
        }
        Request::PullMessage(r) => {
            let reply = Box::pin(pull::pull(broker, h, r, &ctx.answers)).await;
            broker.metrics.here().pull_latency.record(started.elapsed());
            reply
        }
        Request::ViewMessageById(r) => Box::pin(view::view_message(broker, h, &r, ctx)).await,
        Request::QueryConsumerOffset(r) => offsets::query(broker, h, &r),
        Request::UpdateConsumerOffset(r) => offsets::update(broker, h, &r),
        Request::GetMinOffset(r) => Box::pin(offsets::min(broker, h, &r)).await,
        Request::GetMaxOffset(r) => Box::pin(offsets::max(broker, h, &r)).await,
        Request::SearchOffsetByTime(r) => Box::pin(offsets::search_by_time(broker, h, &r)).await,
        Request::Heartbeat(r) => membership::heartbeat(broker, h, r, ctx),
        Request::UnregisterClient(r) => membership::unregister(broker, h, &r),
        Request::ConsumerSendBack(r) => Box::pin(send_back::send_back(broker, h, r)).await,
        Request::GetConsumerList(g) => membership::members(broker, h, &g),
        Request::LockBatchQueue(r) => membership::lock(broker, h, &r),
        Request::UnlockBatchQueue(r) => membership::unlock(broker, h, &r),
        Request::GetConsumerGroups(_) => membership::groups(broker, h),
        Request::CreateTopic(t) => topics::create_topic(broker, h, t),
        Request::DeleteTopic(t) => Box::pin(topics::delete(broker, h, &t)).await,
        Request::GetAllTopicConfig(_) => topics::all_configs(broker, h),
        Request::GetBrokerStatus(_) => status::broker_status(broker, h),
        Request::GetScheduleStatus(_) => Box::pin(status::schedule(broker, h)).await,
        Request::GetTopicStats(t) => Box::pin(topics::stats(broker, h, &t)).await,
        other => error_response(
            h,
            Status::RequestCodeNotSupported,
            format!("a broker does not serve {}", other.opcode()),
        ),
    }
}

pub(super) async fn queue_range(broker: &Broker, topic: &str, queue_id: u32) -> (u64, u64) {
    broker
        .store
        .queue_offsets(topic, queue_id)
        .await
        .unwrap_or((0, 0))
}
