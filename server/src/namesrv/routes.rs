//! The NameServer's table: which brokers are alive and which topics each serves. Pure: time
//! comes in as an argument, so expiry is tested without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shardmq_protocol::message::{
    BrokerData, ClusterInfo, QueueData, RegisterBrokerRequest, TopicConfigData, TopicRoute,
    UnregisterBrokerRequest,
};

/// One live broker (a master or a slave of a broker group).
#[derive(Debug, Clone)]
struct Live {
    cluster: String,
    broker_name: String,
    broker_id: u64,
    topics: Vec<TopicConfigData>,
    /// One address per shard, when the broker advertises them.
    shard_addrs: Vec<String>,
    last_seen: Instant,
}

/// A group's members as the wire lists them: (broker id, address, shard addresses).
type Members = Vec<(u64, String, Vec<String>)>;

/// Brokers by address.
#[derive(Debug, Default)]
pub struct RouteTable {
    brokers: BTreeMap<String, Live>,
}

impl RouteTable {
    /// Registers (or refreshes) a broker with the topics it serves now.
    pub fn register(&mut self, r: RegisterBrokerRequest, now: Instant) {
        self.brokers.insert(
            r.broker_addr,
            Live {
                cluster: r.cluster,
                broker_name: r.broker_name,
                broker_id: r.broker_id,
                topics: r.topics,
                shard_addrs: r.shard_addrs,
                last_seen: now,
            },
        );
    }

    /// Forgets a broker at once (its graceful shutdown). Returns whether it was known.
    pub fn unregister(&mut self, r: &UnregisterBrokerRequest) -> bool {
        self.brokers.remove(&r.broker_addr).is_some()
    }

    /// Drops brokers silent for longer than `ttl`; returns their addresses.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .brokers
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.last_seen) > ttl)
            .map(|(a, _)| a.clone())
            .collect();
        for a in &dead {
            self.brokers.remove(a);
        }
        dead
    }

    /// Where `topic` lives: every broker group serving it (with all its live addresses) and
    /// its queues per group (from the group's master when it is alive, else any member).
    pub fn route(&self, topic: &str) -> Option<TopicRoute> {
        let mut groups: BTreeMap<(&str, &str), Members> = BTreeMap::new();
        let mut queues: BTreeMap<&str, (u64, QueueData)> = BTreeMap::new();
        for (addr, b) in &self.brokers {
            let Some(t) = b.topics.iter().find(|t| t.topic == topic) else {
                continue;
            };
            groups
                .entry((&b.cluster, &b.broker_name))
                .or_default()
                .push((b.broker_id, addr.clone(), b.shard_addrs.clone()));
            let q = QueueData {
                broker_name: b.broker_name.clone(),
                read_queues: t.read_queues,
                write_queues: t.write_queues,
                perm: t.perm,
            };
            // The lowest broker id (the master, 0) describes the group's queues.
            match queues.get(b.broker_name.as_str()) {
                Some((id, _)) if *id <= b.broker_id => {}
                _ => {
                    queues.insert(&b.broker_name, (b.broker_id, q));
                }
            }
        }
        if groups.is_empty() {
            return None;
        }
        Some(TopicRoute {
            brokers: broker_data(groups),
            queues: queues.into_values().map(|(_, q)| q).collect(),
        })
    }

    /// Every broker group with its live addresses, and the groups of each cluster.
    pub fn cluster_info(&self) -> ClusterInfo {
        let mut groups: BTreeMap<(&str, &str), Members> = BTreeMap::new();
        let mut clusters: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (addr, b) in &self.brokers {
            groups
                .entry((&b.cluster, &b.broker_name))
                .or_default()
                .push((b.broker_id, addr.clone(), b.shard_addrs.clone()));
            clusters
                .entry(&b.cluster)
                .or_default()
                .insert(&b.broker_name);
        }
        ClusterInfo {
            brokers: broker_data(groups),
            clusters: clusters
                .into_iter()
                .map(|(c, names)| (c.to_owned(), names.into_iter().map(str::to_owned).collect()))
                .collect(),
        }
    }

    /// Every topic some live broker serves, sorted.
    pub fn topics(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .brokers
            .values()
            .flat_map(|b| b.topics.iter().map(|t| t.topic.as_str()))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// Broker groups as the wire lists them, each group's addresses sorted by broker id.
fn broker_data(groups: BTreeMap<(&str, &str), Members>) -> Vec<BrokerData> {
    groups
        .into_iter()
        .map(|((cluster, name), mut members)| {
            members.sort();
            BrokerData {
                cluster: cluster.to_owned(),
                broker_name: name.to_owned(),
                addrs: members.iter().map(|(id, a, _)| (*id, a.clone())).collect(),
                shard_addrs: members
                    .into_iter()
                    .filter(|(_, _, shards)| !shards.is_empty())
                    .map(|(id, _, shards)| (id, shards))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(addr: &str, name: &str, id: u64, topics: &[(&str, u32)]) -> RegisterBrokerRequest {
        RegisterBrokerRequest {
            cluster: "C".into(),
            broker_name: name.into(),
            broker_id: id,
            broker_addr: addr.into(),
            topics: topics
                .iter()
                .map(|&(t, q)| TopicConfigData {
                    topic: t.into(),
                    read_queues: q,
                    write_queues: q,
                    perm: 6,
                    order: false,
                })
                .collect(),
            shard_addrs: Vec::new(),
        }
    }

    #[test]
    fn shard_addresses_travel_with_their_broker_id() {
        let mut t = RouteTable::default();
        let now = Instant::now();
        let mut master = reg("m:1", "b", 0, &[("T", 4)]);
        master.shard_addrs = vec!["m:2".into(), "m:3".into()];
        t.register(master, now);
        t.register(reg("s:1", "b", 1, &[("T", 4)]), now);
        let route = t.route("T").unwrap();
        assert_eq!(
            route.brokers[0].shard_addrs,
            vec![(0, vec!["m:2".to_string(), "m:3".to_string()])]
        );
        assert_eq!(t.cluster_info().brokers[0].shard_addrs.len(), 1);
    }

    #[test]
    fn routes_follow_registrations_and_expire() {
        let t0 = Instant::now();
        let mut rt = RouteTable::default();
        rt.register(reg("a:1", "b1", 0, &[("T", 8)]), t0);
        rt.register(reg("b:1", "b2", 0, &[("T", 4), ("U", 2)]), t0);
        let r = rt.route("T").unwrap();
        assert_eq!(r.brokers.len(), 2);
        assert_eq!(r.queues.len(), 2);
        assert_eq!(rt.route("U").unwrap().brokers[0].broker_name, "b2");
        assert!(rt.route("V").is_none());
        assert_eq!(rt.topics(), vec!["T".to_string(), "U".to_string()]);

        // b1 keeps heartbeating, b2 falls silent.
        let ttl = Duration::from_secs(120);
        rt.register(
            reg("a:1", "b1", 0, &[("T", 8)]),
            t0 + Duration::from_secs(100),
        );
        assert!(rt.expire(t0 + Duration::from_secs(110), ttl).is_empty());
        assert_eq!(
            rt.expire(t0 + Duration::from_secs(121), ttl),
            vec!["b:1".to_string()]
        );
        assert!(rt.route("U").is_none());
        assert_eq!(rt.route("T").unwrap().brokers.len(), 1);
    }

    #[test]
    fn a_group_lists_master_and_slave_and_takes_queues_from_the_master() {
        let t0 = Instant::now();
        let mut rt = RouteTable::default();
        rt.register(reg("s:1", "b1", 1, &[("T", 2)]), t0);
        rt.register(reg("m:1", "b1", 0, &[("T", 8)]), t0);
        let r = rt.route("T").unwrap();
        assert_eq!(
            r.brokers[0].addrs,
            vec![(0, "m:1".into()), (1, "s:1".into())]
        );
        assert_eq!(r.queues[0].write_queues, 8);
        let info = rt.cluster_info();
        assert_eq!(info.clusters, vec![("C".into(), vec!["b1".into()])]);
        assert!(rt.unregister(&UnregisterBrokerRequest {
            cluster: "C".into(),
            broker_name: "b1".into(),
            broker_id: 0,
            broker_addr: "m:1".into(),
        }));
        assert_eq!(rt.route("T").unwrap().queues[0].write_queues, 2);
    }
}
