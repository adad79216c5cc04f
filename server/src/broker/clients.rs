//! Clients that sent heartbeats, by client id: their producer and consumer groups, and the
//! connection their latest heartbeat came on.
//!
//! A consumer group's membership changes when a client names a group it did not name before,
//! unregisters from it, falls silent past the TTL, or loses its connection (a killed client
//! is noticed at once, as RocketMQ's channel-close event does). Every mutating call returns
//! the groups that changed; the caller then tells the remaining members
//! ([`Clients::notify_members`]), which rebalance at once instead of at their next interval.
//!
//! The table holds only weak handles on connections: it never keeps a closed connection's
//! writer alive.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_protocol::message::{GroupRequest, HeartbeatRequest};
use shardmq_protocol::Request;

/// A way to push a frame to a client over the connection it heartbeats on.
#[derive(Clone)]
pub struct ClientChannel {
    /// Which connection of this broker (unique per broker process).
    pub conn_id: u64,
    pub tx: flume::WeakSender<Bytes>,
}

struct Member {
    hb: HeartbeatRequest,
    seen: Instant,
    channel: Option<ClientChannel>,
}

/// Clients dropped at once, and the groups they left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Departed {
    pub groups: Vec<String>,
    pub clients: Vec<String>,
}

#[derive(Default)]
pub struct Clients {
    table: Mutex<HashMap<String, Member>>,
}

fn groups_of(hb: &HeartbeatRequest) -> BTreeSet<String> {
    hb.consumers.iter().map(|c| c.group.clone()).collect()
}

impl Clients {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat; returns the consumer groups the client joined with it.
    pub fn heartbeat(&self, hb: HeartbeatRequest, channel: Option<ClientChannel>) -> Vec<String> {
        let mut table = self.lock();
        let before = table.get(&hb.client_id).map(|m| groups_of(&m.hb));
        let joined = groups_of(&hb)
            .into_iter()
            .filter(|g| !before.as_ref().is_some_and(|b| b.contains(g)))
            .collect();
        table.insert(
            hb.client_id.clone(),
            Member {
                hb,
                seen: Instant::now(),
                channel,
            },
        );
        joined
    }

    /// Forgets a client at once (its graceful shutdown), or only its membership of one
    /// consumer group when `group` is given and it has others. Returns the groups it left.
    pub fn unregister(&self, client_id: &str, group: &str) -> Vec<String> {
        let mut table = self.lock();
        let Some(m) = table.get_mut(client_id) else {
            return Vec::new();
        };
        let left: Vec<String> = if group.is_empty() {
            groups_of(&m.hb).into_iter().collect()
        } else {
            m.hb.consumers.retain(|c| c.group != group);
            vec![group.to_owned()]
        };
        if group.is_empty() || (m.hb.consumers.is_empty() && m.hb.producer_groups.is_empty()) {
            table.remove(client_id);
        }
        left
    }

    /// Drops clients silent longer than `ttl`.
    pub fn expire(&self, ttl: Duration) -> Departed {
        let now = Instant::now();
        self.remove_where(|m| now.saturating_duration_since(m.seen) > ttl)
    }

    /// Drops the clients whose latest heartbeat came on connection `conn_id`, which closed.
    pub fn connection_closed(&self, conn_id: u64) -> Departed {
        self.remove_where(|m| m.channel.as_ref().is_some_and(|c| c.conn_id == conn_id))
    }

    fn remove_where(&self, gone: impl Fn(&Member) -> bool) -> Departed {
        let mut groups = BTreeSet::new();
        let mut clients = Vec::new();
        self.lock().retain(|id, m| {
            if gone(m) {
                groups.extend(groups_of(&m.hb));
                clients.push(id.clone());
                false
            } else {
                true
            }
        });
        Departed {
            groups: groups.into_iter().collect(),
            clients,
        }
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The client ids of a consumer group's live members, sorted (what every member's
    /// rebalance allocates over).
    pub fn members(&self, group: &str, ttl: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, m)| {
                now.saturating_duration_since(m.seen) <= ttl
                    && m.hb.consumers.iter().any(|c| c.group == group)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Every consumer group some live client is a member of.
    pub fn groups(&self) -> BTreeSet<String> {
        self.lock()
            .values()
            .flat_map(|m| groups_of(&m.hb))
            .collect()
    }

    /// Tells each member of each of `groups` that the group's membership changed (a oneway
    /// `NotifyConsumerIdsChanged`, best effort: a member that misses it rebalances at its
    /// next interval anyway).
    pub fn notify_members(&self, groups: &[String]) {
        if groups.is_empty() {
            return;
        }
        let table = self.lock();
        for group in groups {
            let frame = Request::NotifyConsumerIdsChanged(GroupRequest {
                group: group.clone(),
            })
            .to_frame(0, true)
            .to_bytes();
            for m in table.values() {
                if !m.hb.consumers.iter().any(|c| &c.group == group) {
                    continue;
                }
                if let Some(tx) = m.channel.as_ref().and_then(|c| c.tx.upgrade()) {
                    let _ = tx.send(frame.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_protocol::message::ConsumerData;

    fn hb(id: &str, groups: &[&str]) -> HeartbeatRequest {
        HeartbeatRequest {
            client_id: id.into(),
            producer_groups: vec![],
            consumers: groups
                .iter()
                .map(|g| ConsumerData {
                    group: (*g).into(),
                    message_model: 0,
                    consume_from: 0,
                    subscriptions: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn membership_changes_are_reported_once() {
        let c = Clients::default();
        assert_eq!(c.heartbeat(hb("a", &["G"]), None), vec!["G".to_string()]);
        assert!(c.heartbeat(hb("a", &["G"]), None).is_empty());
        assert_eq!(
            c.heartbeat(hb("a", &["G", "H"]), None),
            vec!["H".to_string()]
        );
        assert_eq!(c.unregister("a", "H"), vec!["H".to_string()]);
        assert_eq!(
            c.members("G", Duration::from_secs(1)),
            vec!["a".to_string()]
        );
        assert_eq!(c.unregister("a", ""), vec!["G".to_string()]);
        assert_eq!(c.count(), 0);
    }

    #[test]
    fn a_closed_connection_drops_its_clients_and_notifies_the_rest() {
        let c = Clients::default();
        let (tx1, rx1) = flume::unbounded();
        let (tx2, _rx2) = flume::unbounded();
        let ch = |id, tx: &flume::Sender<Bytes>| ClientChannel {
            conn_id: id,
            tx: tx.downgrade(),
        };
        c.heartbeat(hb("a", &["G"]), Some(ch(1, &tx1)));
        c.heartbeat(hb("b", &["G"]), Some(ch(2, &tx2)));
        let gone = c.connection_closed(2);
        assert_eq!(gone.groups, vec!["G".to_string()]);
        assert_eq!(gone.clients, vec!["b".to_string()]);
        c.notify_members(&gone.groups);
        let frame = rx1.try_recv().expect("a notification");
        let mut buf = bytes::BytesMut::from(&frame[..]);
        let f = shardmq_protocol::FrameDecoder::default()
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert!(matches!(
            Request::from_frame(&f),
            Ok(Request::NotifyConsumerIdsChanged(g)) if g.group == "G"
        ));
        assert_eq!(
            c.members("G", Duration::from_secs(1)),
            vec!["a".to_string()]
        );
    }
}
