//! Topic administration: CreateTopic, DeleteTopic, GetAllTopicConfig, GetTopicStats.

use shardmq_engine::{Perm, TopicUpdate};
use shardmq_protocol::message::{
    Empty, QueueStat, TopicConfigData, TopicConfigList, TopicRequest, TopicStats,
};
use shardmq_protocol::{error_response, response, Frame, Header, Status};

use super::super::check;
use super::super::Broker;
use super::{queue_range, refused};

pub(super) fn create_topic(broker: &Broker, h: &Header, t: TopicConfigData) -> Frame {
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

pub(super) async fn delete(broker: &Broker, h: &Header, t: &TopicRequest) -> Frame {
    match broker.store.delete_topic(&t.topic).await {
        Ok(_) => {
            broker.offsets.drop_topic(&t.topic);
            broker.topics_changed();
            response(h, Status::Success, &Empty {})
        }
        Err(e) => error_response(h, admin_status(&e), e.to_string()),
    }
}

pub(super) fn all_configs(broker: &Broker, h: &Header) -> Frame {
    response(
        h,
        Status::Success,
        &TopicConfigList {
            topics: broker.topic_configs(),
        },
    )
}

pub(super) async fn stats(broker: &Broker, h: &Header, t: &TopicRequest) -> Frame {
    let Some(cfg) = broker.store.topic(&t.topic) else {
        return error_response(
            h,
            Status::TopicNotExist,
            format!("topic {:?} does not exist", t.topic),
        );
    };
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
    response(h, Status::Success, &TopicStats { queues })
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
