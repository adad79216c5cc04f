//! Topic routes: which queues of which brokers a topic has, and choosing among them.
//!
//! A route ([`TopicRoute`], from the NameServer) lists broker groups (name, id → address; id
//! 0 is the master) and per broker name the topic's read and write queue counts and
//! permission bits. From it:
//! - [`writable_queues`]: for each broker name whose permission has the write bit (2), queue
//!   ids `0..write_queues` on its master; brokers without a master are skipped;
//! - [`readable_queues`]: for each broker name with the read bit (4), queue ids
//!   `0..read_queues`, on the master or, without one, the slave with the lowest id;
//! - [`select_queue`]: round robin over writable queues that skips brokers the
//!   [`LatencyFaultTolerance`] marks unavailable and, on a retry, the broker that just
//!   failed; [`queue_for_key`]: the queue an ordering key maps to.
//!
//! Everything here is pure; [`TopicRouteCache`] fetches and caches routes.

mod cache;

use std::time::Instant;

use shardmq_protocol::message::TopicRoute;

pub use cache::{parse_addrs, RouteEntry, TopicRouteCache, ROUTE_MAX_AGE};

use crate::fault::LatencyFaultTolerance;

/// Permission bit: consumers may read.
pub const PERM_READ: u8 = 4;
/// Permission bit: producers may write.
pub const PERM_WRITE: u8 = 2;

/// One queue of a topic on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
}

impl std::fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.topic, self.broker_name, self.queue_id)
    }
}

/// A queue and the address of the broker that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTarget {
    pub queue: MessageQueue,
    pub addr: String,
}

/// The master's address of `broker_name` in `route`.
pub fn master_addr<'a>(route: &'a TopicRoute, broker_name: &str) -> Option<&'a str> {
    route
        .brokers
        .iter()
        .filter(|b| b.broker_name == broker_name)
        .flat_map(|b| b.addrs.iter())
        .find(|(id, _)| *id == 0)
        .map(|(_, a)| a.as_str())
}

/// The address to read `broker_name`'s queues from: its master, else its lowest-id slave.
pub fn read_addr<'a>(route: &'a TopicRoute, broker_name: &str) -> Option<&'a str> {
    route
        .brokers
        .iter()
        .filter(|b| b.broker_name == broker_name)
        .flat_map(|b| b.addrs.iter())
        .min_by_key(|(id, _)| *id)
        .map(|(_, a)| a.as_str())
}

/// Where `queue_id` of `topic` is served by the member at `addr` of `broker_name`'s group:
/// the address of the shard that owns the queue when that broker advertises one per shard
/// (`shardmq_protocol::shards`), so the queue's requests reach its owner's core directly;
/// else `addr` itself.
pub fn queue_addr(
    route: &TopicRoute,
    broker_name: &str,
    addr: &str,
    topic: &str,
    queue_id: u32,
) -> String {
    let shards = route
        .brokers
        .iter()
        .filter(|b| b.broker_name == broker_name)
        .find_map(|b| {
            let (id, _) = b.addrs.iter().find(|(_, a)| a == addr)?;
            b.shard_addrs.iter().find(|(i, _)| i == id).map(|(_, s)| s)
        });
    match shards {
        Some(s) if !s.is_empty() => {
            s[shardmq_protocol::shards::queue_shard(topic, queue_id, s.len())].clone()
        }
        _ => addr.to_string(),
    }
}

fn queues_where(
    topic: &str,
    route: &TopicRoute,
    perm: u8,
    count: impl Fn(&shardmq_protocol::message::QueueData) -> u32,
    addr: impl for<'a> Fn(&'a TopicRoute, &str) -> Option<&'a str>,
) -> Vec<QueueTarget> {
    let mut data: Vec<_> = route.queues.iter().filter(|q| q.perm & perm != 0).collect();
    data.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
    data.dedup_by(|a, b| a.broker_name == b.broker_name);
    let mut out = Vec::new();
    for q in data {
        let Some(addr) = addr(route, &q.broker_name) else {
            continue;
        };
        out.extend((0..count(q)).map(|queue_id| QueueTarget {
            queue: MessageQueue {
                topic: topic.to_string(),
                broker_name: q.broker_name.clone(),
                queue_id,
            },
            addr: queue_addr(route, &q.broker_name, addr, topic, queue_id),
        }));
    }
    out
}

/// The queues producers may send `topic`'s messages to, ordered by broker name then id.
pub fn writable_queues(topic: &str, route: &TopicRoute) -> Vec<QueueTarget> {
    queues_where(topic, route, PERM_WRITE, |q| q.write_queues, master_addr)
}

/// The queues consumers may read `topic`'s messages from, ordered by broker name then id.
pub fn readable_queues(topic: &str, route: &TopicRoute) -> Vec<QueueTarget> {
    queues_where(topic, route, PERM_READ, |q| q.read_queues, read_addr)
}

/// Chooses a queue for a send, round robin from position `start`:
/// 1. the first queue whose broker is available and is not `avoid` (the broker that failed
///    the previous try);
/// 2. else, from the brokers other than `avoid` (all of them if it is the only one), the
///    least bad one (see [`LatencyFaultTolerance::pick_least_bad`]), its first queue from
///    `start` on;
/// 3. `None` only when `queues` is empty.
pub fn select_queue<'a>(
    queues: &'a [QueueTarget],
    start: usize,
    avoid: Option<&str>,
    fault: &LatencyFaultTolerance,
    now: Instant,
) -> Option<&'a QueueTarget> {
    let n = queues.len();
    let in_turn = || (0..n).map(move |i| &queues[start.wrapping_add(i) % n]);
    let not_avoided = |q: &&QueueTarget| Some(q.queue.broker_name.as_str()) != avoid;
    if let Some(q) = in_turn()
        .filter(not_avoided)
        .find(|q| fault.is_available(&q.queue.broker_name, now))
    {
        return Some(q);
    }
    let others_exist = queues.iter().any(|q| not_avoided(&q));
    let mut brokers: Vec<&str> = Vec::new();
    for q in in_turn().filter(|q| !others_exist || not_avoided(q)) {
        if !brokers.contains(&q.queue.broker_name.as_str()) {
            brokers.push(&q.queue.broker_name);
        }
    }
    let best = fault.pick_least_bad(brokers, now)?;
    in_turn().find(|q| q.queue.broker_name == best)
}

/// The queue an ordering key maps to: a stable hash (FNV-1a) of the key over `queues`, so
/// the same key keeps its queue while the route stays the same.
pub fn queue_for_key<'a>(queues: &'a [QueueTarget], key: &str) -> Option<&'a QueueTarget> {
    if queues.is_empty() {
        return None;
    }
    let i = (fnv1a(key.as_bytes()) % queues.len() as u64) as usize;
    queues.get(i)
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
