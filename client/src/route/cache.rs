//! `TopicRouteCache`: topic routes fetched from the NameServers (GetRouteByTopic, any of
//! them), cached, and fetched again when older than [`ROUTE_MAX_AGE`] or on demand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardmq_protocol::message::{TopicRequest, TopicRoute};
use shardmq_protocol::{Request, Status};

use super::{readable_queues, writable_queues, QueueTarget};
use crate::error::ClientError;
use crate::pool::ConnectionPool;
use crate::{lock, rpc};

/// A cached route older than this is fetched again before use.
pub const ROUTE_MAX_AGE: Duration = Duration::from_secs(30);

/// A topic's route as fetched, with its queue lists worked out.
#[derive(Debug)]
pub struct RouteEntry {
    pub topic: String,
    pub route: TopicRoute,
    /// See [`writable_queues`].
    pub write: Vec<QueueTarget>,
    /// See [`readable_queues`].
    pub read: Vec<QueueTarget>,
    pub fetched_at: Instant,
    /// Round-robin position of the topic's sends (carried over when the route is refreshed).
    counter: AtomicUsize,
}

impl RouteEntry {
    pub fn new(topic: &str, route: TopicRoute, fetched_at: Instant) -> Self {
        RouteEntry {
            topic: topic.to_string(),
            write: writable_queues(topic, &route),
            read: readable_queues(topic, &route),
            route,
            fetched_at,
            counter: AtomicUsize::new(0),
        }
    }

    /// The next round-robin start position for a send to this topic.
    pub fn next_index(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The address serving `broker_name`'s reads (master, else a slave).
    pub fn read_addr(&self, broker_name: &str) -> Option<&str> {
        super::read_addr(&self.route, broker_name)
    }
}

/// Routes by topic, from the NameServers.
#[derive(Debug)]
pub struct TopicRouteCache {
    namesrv: Vec<String>,
    pool: Arc<ConnectionPool>,
    timeout: Duration,
    max_age: Duration,
    /// The NameServer to ask first (the last one that answered).
    preferred: AtomicUsize,
    entries: Mutex<HashMap<String, Arc<RouteEntry>>>,
}

/// Splits "a:9876;b:9876" (`;` or `,` between addresses, blanks ignored).
pub fn parse_addrs(addrs: &str) -> Result<Vec<String>, ClientError> {
    let out: Vec<String> = addrs
        .split([';', ','])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if out.is_empty() {
        return Err(ClientError::Config(format!(
            "no NameServer address in {addrs:?} (expected \"host:port;host:port\")"
        )));
    }
    Ok(out)
}

impl TopicRouteCache {
    /// A cache asking `namesrv` (at least one address) over `pool`, each call waiting at most
    /// `timeout`.
    pub fn new(
        namesrv: Vec<String>,
        pool: Arc<ConnectionPool>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        if namesrv.is_empty() {
            return Err(ClientError::Config("no NameServer address".into()));
        }
        Ok(TopicRouteCache {
            namesrv,
            pool,
            timeout,
            max_age: ROUTE_MAX_AGE,
            preferred: AtomicUsize::new(0),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Sets how old a cached route may get before it is fetched again.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    pub fn namesrv_addrs(&self) -> &[String] {
        &self.namesrv
    }

    /// The cached route of `topic`, however old.
    pub fn cached(&self, topic: &str) -> Option<Arc<RouteEntry>> {
        lock(&self.entries).get(topic).cloned()
    }

    /// The route of `topic`: the cached one while younger than the maximum age, else a fresh
    /// one. When fetching fails and an older route is cached, the older route is used.
    pub fn get(&self, topic: &str) -> Result<Arc<RouteEntry>, ClientError> {
        let cached = self.cached(topic);
        if let Some(e) = &cached {
            if e.fetched_at.elapsed() < self.max_age {
                return Ok(Arc::clone(e));
            }
        }
        match self.refresh(topic) {
            Ok(e) => Ok(e),
            Err(err) => match cached {
                Some(old) if !matches!(err, ClientError::NoRoute { .. }) => {
                    tracing::warn!(topic, error = %err, "route refresh failed; using the cached route");
                    Ok(old)
                }
                _ => Err(err),
            },
        }
    }

    /// Fetches `topic`'s route now and caches it. A topic no NameServer knows is dropped
    /// from the cache and gives [`ClientError::NoRoute`].
    pub fn refresh(&self, topic: &str) -> Result<Arc<RouteEntry>, ClientError> {
        let route = match self.fetch(topic) {
            Ok(r) => r,
            Err(err) => {
                if matches!(err, ClientError::NoRoute { .. }) {
                    lock(&self.entries).remove(topic);
                }
                return Err(err);
            }
        };
        let entry = RouteEntry::new(topic, route, Instant::now());
        let mut entries = lock(&self.entries);
        if let Some(old) = entries.get(topic) {
            entry
                .counter
                .store(old.counter.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let entry = Arc::new(entry);
        entries.insert(topic.to_string(), Arc::clone(&entry));
        Ok(entry)
    }

    /// Asks the NameServers for `topic`'s route, the preferred one first, the others in turn
    /// when one cannot be reached. `NoRoute` when none that answered knows the topic.
    pub fn fetch(&self, topic: &str) -> Result<TopicRoute, ClientError> {
        let n = self.namesrv.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut not_found = false;
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match self.fetch_from(&self.namesrv[at], topic) {
                Ok(route) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(route);
                }
                Err(ClientError::Broker {
                    status: Status::TopicNotExist | Status::QueryNotFound,
                    ..
                }) => not_found = true,
                Err(e) => {
                    tracing::debug!(namesrv = %self.namesrv[at], topic, error = %e, "route query failed");
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) if !not_found => Err(e),
            _ => Err(ClientError::NoRoute {
                topic: topic.to_string(),
            }),
        }
    }

    fn fetch_from(&self, addr: &str, topic: &str) -> Result<TopicRoute, ClientError> {
        let conn = self.pool.get(addr)?;
        let request = Request::GetRouteByTopic(TopicRequest {
            topic: topic.to_string(),
        });
        let frame = conn.call(&request, self.timeout)?;
        rpc::expect::<TopicRoute>(&frame, &[]).map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namesrv_lists_parse() {
        assert_eq!(
            parse_addrs(" a:9876; b:9876 ,c:1;;").unwrap(),
            vec!["a:9876", "b:9876", "c:1"]
        );
        assert!(matches!(parse_addrs(" ; "), Err(ClientError::Config(_))));
        let pool = Arc::new(ConnectionPool::new(Duration::from_secs(1)));
        assert!(TopicRouteCache::new(vec![], pool, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn an_entry_counts_its_round_robin_position() {
        let e = RouteEntry::new("T", TopicRoute::default(), Instant::now());
        assert_eq!((e.next_index(), e.next_index()), (0, 1));
        assert!(e.write.is_empty() && e.read.is_empty());
    }
}
