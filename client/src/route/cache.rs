//! `TopicRouteCache`: topic routes fetched from the NameServers (GetRouteByTopic, any of
//! them), cached, and fetched again when older than [`ROUTE_MAX_AGE`] or on demand.
//!
//! A producer may send to a topic no NameServer routes yet: the broker creates it on the
//! first put (its auto-create policy). Like RocketMQ's default topic (TBW102),
//! [`TopicRouteCache::get_for_send`] then gives a *fallback* route — queue 0 of every master
//! the NameServers know — and asks for the topic's own route again on each send at most every
//! [`FALLBACK_RECHECK`], so once the broker has registered the topic it created (it does so
//! right after the put, asynchronously) the sends spread over all its write queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardmq_protocol::message::{ClusterInfo, Empty, QueueData, TopicRequest, TopicRoute};
use shardmq_protocol::{Request, Status, Wire};

use super::{readable_queues, writable_queues, QueueTarget, PERM_WRITE};
use crate::error::ClientError;
use crate::pool::ConnectionPool;
use crate::{lock, rpc};

/// A cached route older than this is fetched again before use.
pub const ROUTE_MAX_AGE: Duration = Duration::from_secs(30);

/// While sends use a fallback route, the topic's own route is asked for again this often
/// (at most): a broker registers a topic it created about a millisecond after the put, so
/// waiting for [`ROUTE_MAX_AGE`] would put 30 s of sends on queue 0, and even 10 ms would
/// put a hundred there at a producer's pace. A NameServer round trip (tens of µs) per
/// millisecond costs a few per cent of one thread, and only until the topic is routed.
pub const FALLBACK_RECHECK: Duration = Duration::from_millis(1);

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
    /// The topic has no route yet and this is the fallback for sends (see the module's
    /// documentation): queue 0 of every master, written only.
    pub fallback: bool,
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
            fallback: false,
            counter: AtomicUsize::new(0),
        }
    }

    /// The fallback route of a topic no NameServer routes yet: every broker of `cluster`, one
    /// write queue each. One queue because it is the only queue id every auto-create policy
    /// gives a new topic (the producer does not know the broker's `auto_create.queues`); the
    /// sends spread once the topic's own route arrives.
    pub fn fallback(topic: &str, cluster: &ClusterInfo, fetched_at: Instant) -> Self {
        let route = TopicRoute {
            brokers: cluster.brokers.clone(),
            queues: cluster
                .brokers
                .iter()
                .map(|b| QueueData {
                    broker_name: b.broker_name.clone(),
                    read_queues: 0,
                    write_queues: 1,
                    perm: PERM_WRITE,
                })
                .collect(),
        };
        RouteEntry {
            fallback: true,
            ..RouteEntry::new(topic, route, fetched_at)
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

    /// The cached route of `topic`, however old (a fallback too).
    pub fn cached(&self, topic: &str) -> Option<Arc<RouteEntry>> {
        lock(&self.entries).get(topic).cloned()
    }

    /// The route of `topic`: the cached one while younger than the maximum age, else a fresh
    /// one. When fetching fails and an older route is cached, the older route is used. Never
    /// a fallback: readers and ordered sends need the topic's own queues.
    pub fn get(&self, topic: &str) -> Result<Arc<RouteEntry>, ClientError> {
        let cached = self.cached(topic).filter(|e| !e.fallback);
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

    /// The route sends of `topic` use: as [`get`](Self::get), except that a topic no
    /// NameServer routes yet gets the fallback route (queue 0 of every master, where the
    /// first put creates the topic), and that while it has one its own route is asked for
    /// again at most every [`FALLBACK_RECHECK`]. `NoRoute` when no master is known either.
    pub fn get_for_send(&self, topic: &str) -> Result<Arc<RouteEntry>, ClientError> {
        let cached = match self.cached(topic) {
            Some(e) if e.fallback => e,
            _ => {
                return match self.get(topic) {
                    Err(ClientError::NoRoute { .. }) => self.fall_back(topic, None),
                    other => other,
                }
            }
        };
        if cached.fetched_at.elapsed() < FALLBACK_RECHECK {
            return Ok(cached);
        }
        match self.refresh(topic) {
            Ok(e) => Ok(e),
            Err(ClientError::NoRoute { .. }) => self.fall_back(topic, Some(&cached)),
            Err(err) => {
                tracing::debug!(topic, error = %err, "route query failed; keeping the fallback route");
                Ok(cached)
            }
        }
    }

    /// Caches and returns the fallback route of `topic`: `previous`'s brokers again (the
    /// cluster rarely changes within the few milliseconds a fallback lives), or the cluster
    /// the NameServers describe. `NoRoute` when that cannot be had or has no master.
    fn fall_back(
        &self,
        topic: &str,
        previous: Option<&RouteEntry>,
    ) -> Result<Arc<RouteEntry>, ClientError> {
        let now = Instant::now();
        let entry = match previous {
            Some(p) => RouteEntry {
                fallback: true,
                ..RouteEntry::new(topic, p.route.clone(), now)
            },
            None => {
                let cluster = self
                    .ask::<ClusterInfo>(&Request::GetClusterInfo(Empty {}), topic)
                    .map_err(|e| {
                        tracing::debug!(topic, error = %e, "no cluster for a fallback route");
                        ClientError::NoRoute {
                            topic: topic.to_string(),
                        }
                    })?;
                RouteEntry::fallback(topic, &cluster, now)
            }
        };
        if entry.write.is_empty() {
            tracing::debug!(topic, "no master for a fallback route");
            return Err(ClientError::NoRoute {
                topic: topic.to_string(),
            });
        }
        Ok(self.insert(topic, entry))
    }

    /// Caches `entry` as `topic`'s route, carrying over the round-robin position.
    fn insert(&self, topic: &str, entry: RouteEntry) -> Arc<RouteEntry> {
        let mut entries = lock(&self.entries);
        if let Some(old) = entries.get(topic) {
            entry
                .counter
                .store(old.counter.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let entry = Arc::new(entry);
        entries.insert(topic.to_string(), Arc::clone(&entry));
        entry
    }

    /// Fetches `topic`'s route now and caches it. A topic no NameServer knows gives
    /// [`ClientError::NoRoute`] and leaves the cache without its route (a fallback route
    /// stays: it stands for exactly that).
    pub fn refresh(&self, topic: &str) -> Result<Arc<RouteEntry>, ClientError> {
        let route = match self.fetch(topic) {
            Ok(r) => r,
            Err(err) => {
                if matches!(err, ClientError::NoRoute { .. }) {
                    let mut entries = lock(&self.entries);
                    if entries.get(topic).is_some_and(|e| !e.fallback) {
                        entries.remove(topic);
                    }
                }
                return Err(err);
            }
        };
        Ok(self.insert(topic, RouteEntry::new(topic, route, Instant::now())))
    }

    /// Asks the NameServers for `topic`'s route, the preferred one first, the others in turn
    /// when one cannot be reached. `NoRoute` when none that answered knows the topic.
    pub fn fetch(&self, topic: &str) -> Result<TopicRoute, ClientError> {
        self.ask(
            &Request::GetRouteByTopic(TopicRequest {
                topic: topic.to_string(),
            }),
            topic,
        )
    }

    /// Sends `request` to the NameServers, the preferred one first, the others in turn when
    /// one cannot be reached. `NoRoute` for `topic` when none that answered knows it.
    fn ask<T: Wire>(&self, request: &Request, topic: &str) -> Result<T, ClientError> {
        let n = self.namesrv.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut not_found = false;
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match self.ask_one(&self.namesrv[at], request) {
                Ok(answer) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(answer);
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

    fn ask_one<T: Wire>(&self, addr: &str, request: &Request) -> Result<T, ClientError> {
        let conn = self.pool.get(addr)?;
        let frame = conn.call(request, self.timeout)?;
        rpc::expect::<T>(&frame, &[]).map(|(_, r)| r)
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
    fn a_fallback_route_writes_queue_0_of_every_master_and_reads_nothing() {
        use shardmq_protocol::message::BrokerData;
        let broker = |name: &str, addrs: &[(u64, &str)]| BrokerData {
            cluster: "c".into(),
            broker_name: name.into(),
            addrs: addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            shard_addrs: Vec::new(),
        };
        let cluster = ClusterInfo {
            brokers: vec![
                broker("b", &[(0, "b:1"), (1, "b-slave:1")]),
                broker("a", &[(0, "a:1")]),
                broker("no-master", &[(1, "s:1")]),
            ],
            clusters: vec![("c".into(), vec!["a".into(), "b".into()])],
        };
        let e = RouteEntry::fallback("New", &cluster, Instant::now());
        assert!(e.fallback);
        let got: Vec<(&str, u32, &str)> = e
            .write
            .iter()
            .map(|q| {
                (
                    q.queue.broker_name.as_str(),
                    q.queue.queue_id,
                    q.addr.as_str(),
                )
            })
            .collect();
        assert_eq!(got, vec![("a", 0, "a:1"), ("b", 0, "b:1")]);
        assert!(e.write.iter().all(|q| q.queue.topic == "New"));
        assert!(
            e.read.is_empty(),
            "nothing to read from a topic without a route"
        );
    }

    #[test]
    fn an_entry_counts_its_round_robin_position() {
        let e = RouteEntry::new("T", TopicRoute::default(), Instant::now());
        assert_eq!((e.next_index(), e.next_index()), (0, 1));
        assert!(e.write.is_empty() && e.read.is_empty());
    }
}
