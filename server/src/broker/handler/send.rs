//! SendMessage and SendBatch: checked, then put on the shard that owns the queue.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use shardmq_engine::{MessageInput, PutError, PutResult, PutStatus, Store};
use shardmq_protocol::message::{BatchEntry, SendBatchResponse, SendMessageRequest, SendResult};
use shardmq_protocol::{error_response, response, Frame, Header, Status};

use super::super::check::{self, put_refusal};
use super::super::Broker;
use super::{refused, UNIQ_KEY};

pub(super) fn message_input(
    topic: String,
    queue_id: u32,
    e: BatchEntry,
    sys_flag: u32,
    reconsume_times: u32,
    peer: SocketAddr,
) -> MessageInput {
    let mut properties = e.properties;
    if !e.unique_id.is_empty() {
        properties.push((UNIQ_KEY.into(), e.unique_id));
    }
    let mut m = MessageInput::new(topic, queue_id, e.body);
    m.tags = (!e.tags.is_empty()).then_some(e.tags);
    m.keys = (!e.keys.is_empty()).then_some(e.keys);
    m.properties = properties;
    m.flag = e.flags;
    m.sys_flag = sys_flag;
    m.reconsume_times = reconsume_times;
    m.born_timestamp_ms = e.born_timestamp_ms;
    m.born_host = peer;
    m
}

fn send_result(broker: &Broker, queue_id: u32, r: &PutResult) -> SendResult {
    SendResult {
        msg_id: shardmq_engine::msgid::encode(broker.store_host, r.shard, r.offset),
        queue_id,
        queue_offset: r.queue_offset.unwrap_or(u64::MAX),
        store_timestamp_ms: r.store_timestamp_ms,
    }
}

/// The shard that owns a put's queue, when it is not the one this request runs on.
fn foreign_owner(broker: &Broker, msg: &MessageInput) -> Option<usize> {
    let owner = broker.store.queue_shard(&msg.topic, msg.queue_id);
    let here = broker.store.current_shard()?;
    (here != owner).then_some(owner)
}

/// Runs `put` on shard `owner`, the one owning the put's queue when it is not the one this
/// request runs on: the put is handed to the owner whole (one hop there and the answer
/// back) rather than appended here with a reservation round trip to the owner and a dispatch
/// to it after the write. Shard-aware clients send each queue's puts to its owner's port,
/// so the hand-over is the path of the others. Boxed by its callers: the common path (the
/// owner is here) then keeps every request's task small.
async fn hand_over<T, F, Fut>(broker: &Broker, owner: usize, put: F) -> Result<T, PutError>
where
    T: Send + 'static,
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, PutError>> + 'static,
{
    let store = broker.store.clone();
    broker
        .store
        .spawn_on(owner, move || put(store))
        .await
        .unwrap_or(Err(PutError::ShuttingDown))
}

/// The put of `msg`, submitted to the engine before this returns when this shard owns its
/// queue (the future then holds only the engine's small answer future).
fn put_on_owner(
    broker: &Broker,
    msg: MessageInput,
) -> impl Future<Output = Result<PutResult, PutError>> + '_ {
    let put = match foreign_owner(broker, &msg) {
        None => Ok(broker.store.put_message(msg)),
        Some(owner) => Err(Box::pin(hand_over(broker, owner, move |s| async move {
            s.put_message(msg).await
        }))),
    };
    async move {
        match put {
            Ok(here) => here.await,
            Err(there) => there.await,
        }
    }
}

/// [`put_on_owner`] for a batch (one topic and queue).
async fn put_batch_on_owner(
    broker: &Broker,
    msgs: Vec<MessageInput>,
) -> Result<Vec<PutResult>, PutError> {
    match msgs.first().and_then(|m| foreign_owner(broker, m)) {
        None => broker.store.put_messages(msgs).await,
        Some(owner) => {
            Box::pin(hand_over(broker, owner, move |s| async move {
                s.put_messages(msgs).await
            }))
            .await
        }
    }
}

/// The message a SendMessage stores, or the frame refusing it.
fn send_input(
    broker: &Broker,
    h: &Header,
    r: SendMessageRequest,
    peer: SocketAddr,
) -> Result<MessageInput, Frame> {
    let max = broker.settings.message_max_bytes;
    if let Err(refusal) = check::check_send(
        &r.topic,
        r.body.len(),
        r.sys_flag,
        r.delay_level,
        r.deliver_at_ms,
        max,
    ) {
        broker
            .metrics
            .here()
            .refused
            .fetch_add(1, Ordering::Relaxed);
        return Err(refused(h, refusal));
    }
    let entry = BatchEntry {
        unique_id: r.unique_id,
        tags: r.tags,
        keys: r.keys,
        flags: r.flags,
        born_timestamp_ms: r.born_timestamp_ms,
        properties: r.properties,
        body: r.body,
    };
    let mut msg = message_input(
        r.topic,
        r.queue_id,
        entry,
        r.sys_flag,
        r.reconsume_times,
        peer,
    );
    // Delays travel as properties; the store moves the message to the schedule topic.
    if r.delay_level > 0 {
        msg.properties.push((
            shardmq_engine::schedule::plan::PROP_DELAY_LEVEL.into(),
            r.delay_level.to_string(),
        ));
    }
    if r.deliver_at_ms != 0 {
        msg.properties.push((
            shardmq_engine::schedule::plan::PROP_DELIVER_AT.into(),
            r.deliver_at_ms.to_string(),
        ));
    }
    Ok(msg)
}

/// Answers a SendMessage. The checks and the put's submission run when this is called, as
/// plain code: the request's task then holds only the engine's answer to come (every send
/// spawns a task and moves it whole, so its size is paid per message).
pub(super) fn send(
    broker: &Broker,
    h: Header,
    r: SendMessageRequest,
    peer: SocketAddr,
) -> impl Future<Output = Frame> + '_ {
    let submitted = send_input(broker, &h, r, peer).map(|msg| {
        let created = !broker.store.topic_exists(&msg.topic);
        let (queue_id, bytes) = (msg.queue_id, msg.body.len() as u64);
        (put_on_owner(broker, msg), created, queue_id, bytes)
    });
    async move {
        let (put, created, queue_id, bytes) = match submitted {
            Ok(s) => s,
            Err(refusal) => return refusal,
        };
        match put.await {
            Ok(res) => {
                if created {
                    broker.topics_changed();
                }
                broker.metrics.here().put(1, bytes);
                match res.status {
                    PutStatus::PutOk => {
                        response(&h, Status::Success, &send_result(broker, queue_id, &res))
                    }
                    PutStatus::FlushDiskTimeout => error_response(
                        &h,
                        Status::FlushDiskTimeout,
                        "stored, but no fdatasync covered it within the sync flush timeout",
                    ),
                }
            }
            Err(e) => {
                broker
                    .metrics
                    .here()
                    .refused
                    .fetch_add(1, Ordering::Relaxed);
                refused(&h, put_refusal(&e))
            }
        }
    }
}

pub(super) async fn send_batch(
    broker: &Broker,
    h: &Header,
    topic: String,
    queue_id: u32,
    entries: Vec<BatchEntry>,
    peer: SocketAddr,
) -> Frame {
    let max = broker.settings.message_max_bytes;
    let mut bytes = 0u64;
    for e in &entries {
        if let Err(refusal) = check::check_send(&topic, e.body.len(), 0, 0, 0, max) {
            return refused(h, refusal);
        }
        bytes += e.body.len() as u64;
    }
    if entries.is_empty() {
        return response(h, Status::Success, &SendBatchResponse { results: vec![] });
    }
    let n = entries.len() as u64;
    let created = !broker.store.topic_exists(&topic);
    let msgs = entries
        .into_iter()
        .map(|e| message_input(topic.clone(), queue_id, e, 0, 0, peer))
        .collect();
    match put_batch_on_owner(broker, msgs).await {
        Ok(results) => {
            if created {
                broker.topics_changed();
            }
            broker.metrics.here().put(n, bytes);
            if results
                .iter()
                .any(|r| r.status == PutStatus::FlushDiskTimeout)
            {
                return error_response(
                    h,
                    Status::FlushDiskTimeout,
                    "stored, but no fdatasync covered the batch within the sync flush timeout",
                );
            }
            let results = results
                .iter()
                .map(|r| send_result(broker, queue_id, r))
                .collect();
            response(h, Status::Success, &SendBatchResponse { results })
        }
        Err(e) => refused(h, put_refusal(&e)),
    }
}
