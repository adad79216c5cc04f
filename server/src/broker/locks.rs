//! Queue locks for orderly consumption: at most one client of a consumer group holds a
//! queue of this broker at a time, so one queue's messages are consumed by one member, in
//! order, even while a rebalance moves the queue between members.
//!
//! A lock lasts `ttl` past its last renewal (RocketMQ: 60 s; members renew every 20 s and
//! trust their own lock for less than the TTL). A member gives its queues back when a
//! rebalance takes them away, after committing its offset, and all of them when it
//! unregisters; a member that is gone (its connection closed, or silent past the client
//! TTL) loses them at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Key = (String, String, u32);

pub struct QueueLocks {
    ttl: Duration,
    table: Mutex<HashMap<Key, (String, Instant)>>,
}

impl QueueLocks {
    pub fn new(ttl: Duration) -> Self {
        QueueLocks {
            ttl,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (String, Instant)>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes or renews each queue that is free, expired or already `client`'s; returns the
    /// queues `client` holds afterwards.
    pub fn lock_batch(
        &self,
        group: &str,
        client: &str,
        queues: &[(String, u32)],
        now: Instant,
    ) -> Vec<(String, u32)> {
        let mut table = self.lock();
        let mut locked = Vec::new();
        for (topic, q) in queues {
            let key = (group.to_owned(), topic.clone(), *q);
            let free = match table.get(&key) {
                None => true,
                Some((holder, renewed)) => {
                    holder == client || now.saturating_duration_since(*renewed) > self.ttl
                }
            };
            if free {
                table.insert(key, (client.to_owned(), now));
                locked.push((topic.clone(), *q));
            }
        }
        locked
    }

    /// Gives back those of `queues` that `client` holds.
    pub fn unlock_batch(&self, group: &str, client: &str, queues: &[(String, u32)]) {
        let mut table = self.lock();
        for (topic, q) in queues {
            let key = (group.to_owned(), topic.clone(), *q);
            if table.get(&key).is_some_and(|(holder, _)| holder == client) {
                table.remove(&key);
            }
        }
    }

    /// Gives back every lock `client` holds for `group` (every group when it is empty).
    pub fn release_client(&self, client: &str, group: &str) {
        self.lock()
            .retain(|(g, _, _), (holder, _)| holder != client || !(group.is_empty() || g == group));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u32) -> Vec<(String, u32)> {
        (0..n).map(|i| ("T".to_owned(), i)).collect()
    }

    #[test]
    fn one_holder_per_queue_until_unlock_or_expiry() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(locks.lock_batch("G", "a", &q(2), t0), q(2));
        assert!(locks.lock_batch("G", "b", &q(2), t0).is_empty());
        // Another group is independent.
        assert_eq!(locks.lock_batch("H", "b", &q(1), t0), q(1));
        // Renewal by the holder.
        assert_eq!(locks.lock_batch("G", "a", &q(1), t0), q(1));
        locks.unlock_batch("G", "b", &q(1));
        assert!(locks.lock_batch("G", "b", &q(1), t0).is_empty());
        locks.unlock_batch("G", "a", &q(1));
        assert_eq!(locks.lock_batch("G", "b", &q(1), t0), q(1));
        // Queue 1 is still a's until it expires.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(locks.lock_batch("G", "b", &q(2), later), q(2));
    }

    #[test]
    fn releasing_a_client_frees_its_queues_of_that_group() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        locks.lock_batch("G", "a", &q(2), t0);
        locks.lock_batch("H", "a", &q(2), t0);
        locks.release_client("a", "G");
        assert_eq!(locks.lock_batch("G", "b", &q(2), t0), q(2));
        assert!(locks.lock_batch("H", "b", &q(2), t0).is_empty());
    }
}
