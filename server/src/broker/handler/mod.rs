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

use std::future::Future;
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
///
/// The request is decoded and everything that needs no waiting is done when this is
/// called; the future returned holds only what a request still waits for: a send's answer
/// from the engine (the path of nearly every request, kept small: each request's task is
/// moved whole when spawned), or, boxed, a pull, a view or another request that waits.
pub fn handle<'a>(
    broker: &'a Broker,
    frame: Frame,
    ctx: &'a ConnCtx,
) -> impl Future<Output = Frame> + 'a {
    let h = frame.header;
    let started = Instant::now();
    let work = match Request::from_frame(&frame) {
        Ok(req) => start(broker, h, req, ctx),
        Err(e) => Work::Done(error_response(&h, e.status(), e.to_string())),
    };
    async move {
        match work {
            Work::Done(reply) => reply,
            Work::Send(put) => {
                let reply = put.await;
                broker.metrics.here().put_latency.record(started.elapsed());
                reply
            }
            Work::Pull(pull) => {
                let reply = pull.await;
                broker.metrics.here().pull_latency.record(started.elapsed());
                reply
            }
            Work::Other(other) => other.await,
        }
    }
}

/// A request begun: answered already, or what its answer waits for.
enum Work<'a, S> {
    Done(Frame),
    Send(S),
    Pull(Waiting<'a>),
    Other(Waiting<'a>),
}

type Waiting<'a> = std::pin::Pin<Box<dyn Future<Output = Frame> + 'a>>;

/// The table: each request kind to its handler.
fn start<'a>(
    broker: &'a Broker,
    h: Header,
    req: Request,
    ctx: &'a ConnCtx,
) -> Work<'a, impl Future<Output = Frame> + 'a> {
    let hr = &h;
    let reply = match req {
        Request::SendMessage(r) => return Work::Send(send::send(broker, h, r, ctx.peer)),
        Request::PullMessage(r) => {
            return Work::Pull(Box::pin(async move {
                pull::pull(broker, &h, r, &ctx.answers).await
            }))
        }
        Request::SendBatch(r) => {
            let started = Instant::now();
            return Work::Other(Box::pin(async move {
                let reply =
                    send::send_batch(broker, &h, r.topic, r.queue_id, r.entries, ctx.peer).await;
                broker.metrics.here().put_latency.record(started.elapsed());
                reply
            }));
        }
        Request::ViewMessageById(r) => {
            return Work::Other(Box::pin(async move {
                view::view_message(broker, &h, &r, ctx).await
            }))
        }
        Request::GetMinOffset(r) => {
            return Work::Other(Box::pin(async move { offsets::min(broker, &h, &r).await }))
        }
        Request::GetMaxOffset(r) => {
            return Work::Other(Box::pin(async move { offsets::max(broker, &h, &r).await }))
        }
        Request::SearchOffsetByTime(r) => {
            return Work::Other(Box::pin(async move {
                offsets::search_by_time(broker, &h, &r).await
            }))
        }
        Request::ConsumerSendBack(r) => {
            return Work::Other(Box::pin(async move {
                send_back::send_back(broker, &h, r).await
            }))
        }
        Request::DeleteTopic(t) => {
            return Work::Other(Box::pin(
                async move { topics::delete(broker, &h, &t).await },
            ))
        }
        Request::GetScheduleStatus(_) => {
            return Work::Other(Box::pin(async move { status::schedule(broker, &h).await }))
        }
        Request::GetTopicStats(t) => {
            return Work::Other(Box::pin(async move { topics::stats(broker, &h, &t).await }))
        }
        Request::QueryConsumerOffset(r) => offsets::query(broker, hr, &r),
        Request::UpdateConsumerOffset(r) => offsets::update(broker, hr, &r),
        Request::Heartbeat(r) => membership::heartbeat(broker, hr, r, ctx),
        Request::UnregisterClient(r) => membership::unregister(broker, hr, &r),
        Request::GetConsumerList(g) => membership::members(broker, hr, &g),
        Request::LockBatchQueue(r) => membership::lock(broker, hr, &r),
        Request::UnlockBatchQueue(r) => membership::unlock(broker, hr, &r),
        Request::GetConsumerGroups(_) => membership::groups(broker, hr),
        Request::CreateTopic(t) => topics::create_topic(broker, hr, t),
        Request::GetAllTopicConfig(_) => topics::all_configs(broker, hr),
        Request::GetBrokerStatus(_) => status::broker_status(broker, hr),
        other => error_response(
            hr,
            Status::RequestCodeNotSupported,
            format!("a broker does not serve {}", other.opcode()),
        ),
    };
    Work::Done(reply)
}

pub(super) async fn queue_range(broker: &Broker, topic: &str, queue_id: u32) -> (u64, u64) {
    broker
        .store
        .queue_offsets(topic, queue_id)
        .await
        .unwrap_or((0, 0))
}
