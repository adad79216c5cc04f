//! GetBrokerStatus and GetScheduleStatus.

use shardmq_protocol::message::KeyValues;
use shardmq_protocol::{error_response, response, Frame, Header, Status};

use super::super::Broker;
use super::queue_range;

pub(super) fn broker_status(broker: &Broker, h: &Header) -> Frame {
    response(h, Status::Success, &status(broker))
}

pub(super) async fn schedule(broker: &Broker, h: &Header) -> Frame {
    match schedule_status(broker).await {
        Some(kv) => response(h, Status::Success, &kv),
        None => error_response(
            h,
            Status::ServiceNotAvailable,
            "delayed messages are off on this broker (store.schedule.enabled = false)",
        ),
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
