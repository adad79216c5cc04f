//! Clients that sent heartbeats, by client id: their producer and consumer groups. The push
//! consumer (group membership, rebalance notifications) builds on this table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardmq_protocol::message::HeartbeatRequest;

#[derive(Default)]
pub struct Clients {
    table: Mutex<HashMap<String, (HeartbeatRequest, Instant)>>,
}

impl Clients {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (HeartbeatRequest, Instant)>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn heartbeat(&self, hb: HeartbeatRequest) {
        self.lock()
            .insert(hb.client_id.clone(), (hb, Instant::now()));
    }

    /// Forgets a client at once (its graceful shutdown), or only its membership of one
    /// consumer group when `group` is given and it has others.
    pub fn unregister(&self, client_id: &str, group: &str) {
        let mut table = self.lock();
        let forget = match table.get_mut(client_id) {
            Some((hb, _)) if !group.is_empty() => {
                hb.consumers.retain(|c| c.group != group);
                hb.consumers.is_empty() && hb.producer_groups.is_empty()
            }
            Some(_) => true,
            None => false,
        };
        if forget {
            table.remove(client_id);
        }
    }

    /// Drops clients silent longer than `ttl`.
    pub fn expire(&self, ttl: Duration) {
        let now = Instant::now();
        self.lock()
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= ttl);
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
            .filter(|(_, (hb, seen))| {
                now.saturating_duration_since(*seen) <= ttl
                    && hb.consumers.iter().any(|c| c.group == group)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}
