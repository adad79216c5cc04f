//! Consumer group requests: heartbeats (membership, with the group's retry topic created on
//! first sight), unregistration, the member list, queue locks for orderly consumers and the
//! list of groups. Membership changes are pushed to the group's remaining members.

use shardmq_protocol::message::{
    Empty, GroupRequest, HeartbeatRequest, LockBatchRequest, LockBatchResponse, NameList,
    UnregisterClientRequest,
};
use shardmq_protocol::{response, Frame, Header, Status};

use super::conn::ConnCtx;
use super::sendback::retry_topic;
use super::Broker;

/// `ConsumerData::message_model` of a clustering group (each message to one member).
const CLUSTERING: u8 = 0;

pub fn heartbeat(broker: &Broker, h: &Header, r: HeartbeatRequest, ctx: &ConnCtx) -> Frame {
    // A clustering group's failed messages come back through its retry topic, which its
    // members subscribe to from the start: it must exist (and be routed) before they pull.
    for c in r.consumers.iter().filter(|c| c.message_model == CLUSTERING) {
        broker.ensure_group_topic(&retry_topic(&c.group));
    }
    let joined = broker.clients.heartbeat(r, Some(ctx.channel.clone()));
    broker.clients.notify_members(&joined);
    response(h, Status::Success, &Empty {})
}

pub fn unregister(broker: &Broker, h: &Header, r: &UnregisterClientRequest) -> Frame {
    broker.locks.release_client(&r.client_id, &r.consumer_group);
    let left = broker.clients.unregister(&r.client_id, &r.consumer_group);
    broker.clients.notify_members(&left);
    response(h, Status::Success, &Empty {})
}

pub fn members(broker: &Broker, h: &Header, g: &GroupRequest) -> Frame {
    let names = broker.clients.members(&g.group, broker.client_ttl());
    response(h, Status::Success, &NameList { names })
}

pub fn lock(broker: &Broker, h: &Header, r: &LockBatchRequest) -> Frame {
    let locked =
        broker
            .locks
            .lock_batch(&r.group, &r.client_id, &r.queues, std::time::Instant::now());
    response(h, Status::Success, &LockBatchResponse { locked })
}

pub fn unlock(broker: &Broker, h: &Header, r: &LockBatchRequest) -> Frame {
    broker.locks.unlock_batch(&r.group, &r.client_id, &r.queues);
    response(h, Status::Success, &Empty {})
}

/// Every group this broker knows: with live members or with committed offsets.
pub fn groups(broker: &Broker, h: &Header) -> Frame {
    let mut all = broker.clients.groups();
    all.extend(broker.offsets.all().into_iter().map(|(g, _, _, _)| g));
    response(
        h,
        Status::Success,
        &NameList {
            names: all.into_iter().collect(),
        },
    )
}
