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

    pub fn unregister(&self, client_id: &str) {
        self.lock().remove(client_id);
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
}
