//! Consumer offsets and queue offsets: QueryConsumerOffset, UpdateConsumerOffset,
//! GetMinOffset, GetMaxOffset, SearchOffsetByTime.

use shardmq_protocol::message::{
    ConsumerOffsetRequest, Empty, OffsetResponse, QueueRequest, SearchOffsetRequest,
    UpdateConsumerOffsetRequest,
};
use shardmq_protocol::{error_response, response, Frame, Header, Status};

use super::super::Broker;
use super::queue_range;

pub(super) fn query(broker: &Broker, h: &Header, r: &ConsumerOffsetRequest) -> Frame {
    match broker.offsets.get(&r.consumer_group, &r.topic, r.queue_id) {
        Some(offset) => response(h, Status::Success, &OffsetResponse { offset }),
        None => error_response(
            h,
            Status::QueryNotFound,
            format!(
                "group {:?} has no offset for {}:{}",
                r.consumer_group, r.topic, r.queue_id
            ),
        ),
    }
}

pub(super) fn update(broker: &Broker, h: &Header, r: &UpdateConsumerOffsetRequest) -> Frame {
    broker
        .offsets
        .commit(&r.consumer_group, &r.topic, r.queue_id, r.offset);
    response(h, Status::Success, &Empty {})
}

pub(super) async fn min(broker: &Broker, h: &Header, r: &QueueRequest) -> Frame {
    let (min, _) = queue_range(broker, &r.topic, r.queue_id).await;
    response(h, Status::Success, &OffsetResponse { offset: min })
}

pub(super) async fn max(broker: &Broker, h: &Header, r: &QueueRequest) -> Frame {
    let (_, max) = queue_range(broker, &r.topic, r.queue_id).await;
    response(h, Status::Success, &OffsetResponse { offset: max })
}

/// The first offset stored at or after the time; the queue's max when none is.
pub(super) async fn search_by_time(broker: &Broker, h: &Header, r: &SearchOffsetRequest) -> Frame {
    let found = broker
        .store
        .offset_for_time(&r.topic, r.queue_id, r.timestamp_ms)
        .await;
    let offset = match found {
        Some(o) => o,
        None => queue_range(broker, &r.topic, r.queue_id).await.1,
    };
    response(h, Status::Success, &OffsetResponse { offset })
}
