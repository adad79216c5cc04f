//! Serving one request on the shard its connection lives on: sends, pulls (with long
//! polling), offsets, clients and topic administration.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shardmq_engine::{
    GetRequest, GetStatus, MessageInput, Perm, PutError, PutResult, PutStatus, QueueMessage,
    StoredMessage, TagFilter, TopicUpdate,
};
use shardmq_protocol::message::{
    BatchEntry, Empty, KeyValues, OffsetResponse, PullMessageRequest, PullMessageResponse,
    QueueStat, SendBatchResponse, SendMessageRequest, SendResult, TopicConfigData, TopicConfigList,
    TopicStats, ViewMessageResponse, WireMessage,
};
use shardmq_protocol::{error_response, response, Frame, Header, Request, Status};

use super::budget::{pull_reserve, Answers, Grant, ShardBusy};
use super::check::{self, put_refusal, read_refusal, Refusal};
use super::conn::ConnCtx;
use super::{membership, Broker};

/// The property a message's client-generated unique id is stored under.
pub const UNIQ_KEY: &str = "UNIQ_KEY";

/// A viewed message's fields and properties beyond its body.
const VIEW_OVERHEAD_BYTES: usize = 64 << 10;

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
    let peer = ctx.peer;
    let req = match Request::from_frame(&frame) {
        Ok(r) => r,
        Err(e) => return error_response(&h, e.status(), e.to_string()),
    };
    match req {
        Request::SendMessage(r) => {
            let t = Instant::now();
            let reply = send(broker, &h, r, peer).await;
            broker.metrics.here().put_latency.record(t.elapsed());
            reply
        }
        Request::SendBatch(r) => {
            let t = Instant::now();
            let reply = send_batch(broker, &h, r.topic, r.queue_id, r.entries, peer).await;
            broker.metrics.here().put_latency.record(t.elapsed());
            reply
        }
        Request::PullMessage(r) => {
            let t = Instant::now();
            let reply = pull(broker, &h, r, &ctx.answers).await;
            broker.metrics.here().pull_latency.record(t.elapsed());
            reply
        }
        Request::ViewMessageById(r) => {
            // The answer carries one whole message: room for it first, as for a pull.
            let need = broker.settings.message_max_bytes as usize + VIEW_OVERHEAD_BYTES;
            let _grant = match reserve(broker, &h, &ctx.answers, need).await {
                Ok(g) => g,
                Err(refusal) => return refusal,
            };
            view(broker, &h, &r.id).await
        }
        Request::QueryConsumerOffset(r) => {
            match broker.offsets.get(&r.consumer_group, &r.topic, r.queue_id) {
                Some(offset) => response(&h, Status::Success, &OffsetResponse { offset }),
                None => error_response(
                    &h,
                    Status::QueryNotFound,
                    format!(
                        "group {:?} has no offset for {}:{}",
                        r.consumer_group, r.topic, r.queue_id
                    ),
                ),
            }
        }
        Request::UpdateConsumerOffset(r) => {
            broker
                .offsets
                .commit(&r.consumer_group, &r.topic, r.queue_id, r.offset);
            response(&h, Status::Success, &Empty {})
        }
        Request::GetMinOffset(r) => {
            let (min, _) = queue_range(broker, &r.topic, r.queue_id).await;
            response(&h, Status::Success, &OffsetResponse { offset: min })
        }
        Request::GetMaxOffset(r) => {
            let (_, max) = queue_range(broker, &r.topic, r.queue_id).await;
            response(&h, Status::Success, &OffsetResponse { offset: max })
        }
        Request::SearchOffsetByTime(r) => {
            let found = broker
                .store
                .offset_for_time(&r.topic, r.queue_id, r.timestamp_ms)
                .await;
            let offset = match found {
                Some(o) => o,
                None => queue_range(broker, &r.topic, r.queue_id).await.1,
            };
            response(&h, Status::Success, &OffsetResponse { offset })
        }
        Request::Heartbeat(r) => membership::heartbeat(broker, &h, r, ctx),
        Request::UnregisterClient(r) => membership::unregister(broker, &h, &r),
        Request::ConsumerSendBack(r) => send_back(broker, &h, r).await,
        Request::GetConsumerList(g) => membership::members(broker, &h, &g),
        Request::LockBatchQueue(r) => membership::lock(broker, &h, &r),
        Request::UnlockBatchQueue(r) => membership::unlock(broker, &h, &r),
        Request::GetConsumerGroups(_) => membership::groups(broker, &h),
        Request::CreateTopic(t) => create_topic(broker, &h, t),
        Request::DeleteTopic(t) => match broker.store.delete_topic(&t.topic).await {
            Ok(_) => {
                broker.offsets.drop_topic(&t.topic);
                broker.topics_changed();
                response(&h, Status::Success, &Empty {})
            }
            Err(e) => error_response(&h, admin_status(&e), e.to_string()),
        },
        Request::GetAllTopicConfig(_) => response(
            &h,
            Status::Success,
            &TopicConfigList {
                topics: broker.topic_configs(),
            },
        ),
        Request::GetBrokerStatus(_) => response(&h, Status::Success, &status(broker)),
        Request::GetScheduleStatus(_) => match schedule_status(broker).await {
            Some(kv) => response(&h, Status::Success, &kv),
            None => error_response(
                &h,
                Status::ServiceNotAvailable,
                "delayed messages are off on this broker (store.schedule.enabled = false)",
            ),
        },
        Request::GetTopicStats(t) => match broker.store.topic(&t.topic) {
            None => error_response(
                &h,
                Status::TopicNotExist,
                format!("topic {:?} does not exist", t.topic),
            ),
            Some(cfg) => {
                let mut queues = Vec::new();
                for q in 0..cfg.read_queues.max(cfg.write_queues) {
                    let (min, max) = queue_range(broker, &t.topic, q).await;
                    queues.push(QueueStat {
                        queue_id: q,
                        min_offset: min,
                        max_offset: max,
                        last_store_timestamp_ms: 0,
                    });
                }
                response(&h, Status::Success, &TopicStats { queues })
            }
        },
        other => error_response(
            &h,
            Status::RequestCodeNotSupported,
            format!("a broker does not serve {}", other.opcode()),
        ),
    }
}

async fn queue_range(broker: &Broker, topic: &str, queue_id: u32) -> (u64, u64) {
    broker
        .store
        .queue_offsets(topic, queue_id)
        .await
        .unwrap_or((0, 0))
}

fn message_input(
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

/// Puts `msg` on the shard that owns its queue: here when this is that shard, else handed to
/// the owner whole (one hop there and the answer back) rather than appended here with a
/// reservation round trip to the owner and a dispatch to it after the write. Shard-aware
/// clients send each queue's puts to its owner's port, so this is the path of the others.
async fn put_on_owner(broker: &Broker, msg: MessageInput) -> Result<PutResult, PutError> {
    let Some(owner) = foreign_owner(broker, &msg) else {
        return broker.store.put_message(msg).await;
    };
    let store = broker.store.clone();
    let on_owner = broker
        .store
        .spawn_on(owner, move || async move { store.put_message(msg).await });
    on_owner.await.unwrap_or(Err(PutError::ShuttingDown))
}

/// [`put_on_owner`] for a batch (one topic and queue).
async fn put_batch_on_owner(
    broker: &Broker,
    msgs: Vec<MessageInput>,
) -> Result<Vec<PutResult>, PutError> {
    let Some(owner) = msgs.first().and_then(|m| foreign_owner(broker, m)) else {
        return broker.store.put_messages(msgs).await;
    };
    let store = broker.store.clone();
    let on_owner = broker
        .store
        .spawn_on(owner, move || async move { store.put_messages(msgs).await });
    on_owner.await.unwrap_or(Err(PutError::ShuttingDown))
}

async fn send(broker: &Broker, h: &Header, r: SendMessageRequest, peer: SocketAddr) -> Frame {
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
        return refused(h, refusal);
    }
    let bytes = r.body.len() as u64;
    let entry = BatchEntry {
        unique_id: r.unique_id,
        tags: r.tags,
        keys: r.keys,
        flags: r.flags,
        born_timestamp_ms: r.born_timestamp_ms,
        properties: r.properties,
        body: r.body,
    };
    let queue_id = r.queue_id;
    let mut msg = message_input(
        r.topic,
        queue_id,
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
    let created = !broker.store.topic_exists(&msg.topic);
    match put_on_owner(broker, msg).await {
        Ok(res) => {
            if created {
                broker.topics_changed();
            }
            broker.metrics.here().put(1, bytes);
            match res.status {
                PutStatus::PutOk => {
                    response(h, Status::Success, &send_result(broker, queue_id, &res))
                }
                PutStatus::FlushDiskTimeout => error_response(
                    h,
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
            refused(h, put_refusal(&e))
        }
    }
}

async fn send_batch(
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

fn wire_message(q: QueueMessage) -> WireMessage {
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
        .filter(|(k, _)| !matches!(k.as_str(), "TAGS" | "KEYS" | UNIQ_KEY))
        .cloned()
        .collect()
}

async fn pull(broker: &Broker, h: &Header, r: PullMessageRequest, answers: &Answers) -> Frame {
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
        Ok(g) => g,
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
            drop(grant);
            let woken = broker
                .until_stopped(broker.store.wait_for_message(
                    &r.topic,
                    r.queue_id,
                    r.queue_offset,
                    wait,
                ))
                .await;
            grant = match reserve(broker, h, answers, need).await {
                Ok(g) => g,
                Err(refusal) => return refusal,
            };
            if woken == Some(true) {
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
    let fields = PullMessageResponse {
        next_begin_offset: res.next_begin_offset,
        min_offset: res.min_offset,
        max_offset: res.max_offset,
        messages: res.messages.into_iter().map(wire_message).collect(),
    };
    response(h, status, &fields)
}

/// Whether `id` is a message id of this broker (ids encode the broker's address): another
/// broker's id is never looked up here.
fn is_ours(broker: &Broker, id: &str) -> bool {
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

fn create_topic(broker: &Broker, h: &Header, t: TopicConfigData) -> Frame {
    if let Err(r) = check::check_topic_name(&t.topic) {
        return refused(h, r);
    }
    let Some(perm) = Perm::from_bits(t.perm) else {
        return error_response(
            h,
            Status::BadRequest,
            format!("permission bits {:#x} are not valid", t.perm),
        );
    };
    let outcome = if broker.store.topic(&t.topic).is_some() {
        broker.store.update_topic(
            &t.topic,
            TopicUpdate {
                read_queues: Some(t.read_queues),
                write_queues: Some(t.write_queues),
                perm: Some(perm),
            },
        )
    } else {
        broker
            .store
            .create_topic(&t.topic, t.read_queues, t.write_queues, perm)
    };
    match outcome {
        Ok(_) => {
            broker.topics_changed();
            response(h, Status::Success, &Empty {})
        }
        Err(e) => error_response(h, admin_status(&e), e.to_string()),
    }
}

/// The status of a topic administration failure.
fn admin_status(e: &shardmq_engine::TopicAdminError) -> Status {
    use shardmq_engine::{TopicAdminError as A, TopicError as T};
    match e {
        A::Topic(T::NotFound { .. }) => Status::TopicNotExist,
        A::Topic(_) => Status::BadRequest,
        A::Deleting { .. } => Status::ServiceNotAvailable,
        A::File(_) | A::DeleteIncomplete { .. } => Status::SystemError,
    }
}

fn status(broker: &Broker) -> KeyValues {
    let m = &broker.metrics;
    let mut entries = vec![
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        (
            "broker_name".to_owned(),
            broker.settings.broker_name.clone(),
        ),
        ("cluster".to_owned(), broker.settings.cluster.clone()),
        (
            "flush_mode".to_owned(),
            format!("{:?}", broker.store.config().flush_mode),
        ),
        ("shards".to_owned(), broker.store.shards().to_string()),
        ("topics".to_owned(), broker.store.topics().len().to_string()),
        (
            "put_messages".to_owned(),
            m.total(|s| &s.put_messages).to_string(),
        ),
        (
            "put_bytes".to_owned(),
            m.total(|s| &s.put_bytes).to_string(),
        ),
        (
            "get_messages".to_owned(),
            m.total(|s| &s.get_messages).to_string(),
        ),
        (
            "get_bytes".to_owned(),
            m.total(|s| &s.get_bytes).to_string(),
        ),
        ("refused".to_owned(), m.total(|s| &s.refused).to_string()),
        ("busy".to_owned(), m.total(|s| &s.busy).to_string()),
        (
            "connections".to_owned(),
            m.total(|s| &s.connections).to_string(),
        ),
        ("clients".to_owned(), broker.clients.count().to_string()),
        (
            "requests_in_flight".to_owned(),
            broker.requests_in_flight().to_string(),
        ),
    ];
    for shard in 0..broker.store.shards() {
        if let Some((min, max)) = broker.store.offsets(shard) {
            entries.push((
                format!("commitlog_{shard}"),
                format!("written {min}, flushed {max}"),
            ));
        }
        if let Some(n) = broker.store.cross_shard_sends(shard) {
            entries.push((format!("cross_shard_sends_{shard}"), n.to_string()));
        }
    }
    KeyValues { entries }
}

/// Per level: the delay, the next offset to deliver (the persisted progress) and how many
/// wait; for the wheel: its minute, its due-time watermark and how many wait.
async fn schedule_status(broker: &Broker) -> Option<KeyValues> {
    use shardmq_engine::schedule::plan::SCHEDULE_TOPIC;
    let progress = broker.store.schedule_progress()?;
    let levels = broker.store.delay_levels();
    let mut entries = Vec::new();
    for (l, d) in levels.iter().enumerate() {
        let max = queue_range(broker, SCHEDULE_TOPIC, l as u32).await.1;
        let next = progress.level(l);
        entries.push((
            format!("level {} ({} ms)", l + 1, d.as_millis()),
            format!("next offset {next}, pending {}", max.saturating_sub(next)),
        ));
    }
    let queues = broker
        .store
        .topic(SCHEDULE_TOPIC)
        .map_or(0, |t| t.read_queues);
    let mut pending = 0u64;
    for q in levels.len() as u32..queues {
        if let Some((_, max)) = broker.store.queue_offsets(SCHEDULE_TOPIC, q).await {
            let low = progress.slots.get(&q).copied().unwrap_or(0);
            let above: u64 = progress
                .done
                .get(&q)
                .map_or(0, |r| r.iter().map(|(a, b)| b - a).sum());
            pending += max.saturating_sub(low).saturating_sub(above);
        }
    }
    entries.push((
        "exact times".to_owned(),
        format!("oldest open minute {}, pending {pending}", progress.minute),
    ));
    Some(KeyValues { entries })
}

/// A message the group failed goes to its retry topic, delayed by the consume-back rule, or
/// to its dead-letter topic; the copy keeps the body, tags, keys and properties, with the
/// original topic and message id.
async fn send_back(
    broker: &Broker,
    h: &Header,
    r: shardmq_protocol::message::ConsumerSendBackRequest,
) -> Frame {
    use super::sendback::{after_failure, SendBack};
    use shardmq_engine::schedule::plan::PROP_ORIGIN_MSG_ID;
    use shardmq_protocol::groups::PROP_RETRY_TOPIC;
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
