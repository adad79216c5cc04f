//! Unit tests of the pure route functions: queue lists and selection.

use std::time::{Duration, Instant};

use shardmq_protocol::message::{BrokerData, QueueData, TopicRoute};

use super::*;

fn broker(name: &str, addrs: &[(u64, &str)]) -> BrokerData {
    BrokerData {
        cluster: "c".into(),
        broker_name: name.into(),
        addrs: addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
        shard_addrs: Vec::new(),
    }
}

fn queues(name: &str, read: u32, write: u32, perm: u8) -> QueueData {
    QueueData {
        broker_name: name.into(),
        read_queues: read,
        write_queues: write,
        perm,
    }
}

/// Brokers a and b, two write queues each, listed in reverse name order.
fn two_brokers() -> TopicRoute {
    TopicRoute {
        brokers: vec![
            broker("b", &[(0, "b:1"), (1, "b-slave:1")]),
            broker("a", &[(1, "a-slave:1"), (0, "a:1")]),
        ],
        queues: vec![queues("b", 2, 2, 6), queues("a", 2, 2, 6)],
    }
}

fn ids(qs: &[QueueTarget]) -> Vec<(String, u32, String)> {
    qs.iter()
        .map(|q| {
            (
                q.queue.broker_name.clone(),
                q.queue.queue_id,
                q.addr.clone(),
            )
        })
        .collect()
}

fn names(v: &[(&str, u32, &str)]) -> Vec<(String, u32, String)> {
    v.iter()
        .map(|(b, q, a)| (b.to_string(), *q, a.to_string()))
        .collect()
}

#[test]
fn writable_queues_are_on_masters_sorted_by_broker() {
    let qs = writable_queues("T", &two_brokers());
    assert_eq!(
        ids(&qs),
        names(&[
            ("a", 0, "a:1"),
            ("a", 1, "a:1"),
            ("b", 0, "b:1"),
            ("b", 1, "b:1")
        ])
    );
    assert!(qs.iter().all(|q| q.queue.topic == "T"));
}

#[test]
fn permissions_and_counts_decide_which_queues_exist() {
    let route = TopicRoute {
        brokers: vec![
            broker("ro", &[(0, "ro:1")]),
            broker("wo", &[(0, "wo:1")]),
            broker("rw", &[(0, "rw:1")]),
            broker("none", &[(0, "none:1")]),
        ],
        queues: vec![
            queues("ro", 2, 2, PERM_READ),
            queues("wo", 1, 3, PERM_WRITE),
            queues("rw", 1, 0, PERM_READ | PERM_WRITE),
            queues("none", 4, 4, 0),
        ],
    };
    assert_eq!(
        ids(&writable_queues("T", &route)),
        names(&[("wo", 0, "wo:1"), ("wo", 1, "wo:1"), ("wo", 2, "wo:1")])
    );
    assert_eq!(
        ids(&readable_queues("T", &route)),
        names(&[("ro", 0, "ro:1"), ("ro", 1, "ro:1"), ("rw", 0, "rw:1")])
    );
}

#[test]
fn a_broker_without_master_is_not_written_but_read_from_its_slave() {
    let route = TopicRoute {
        brokers: vec![broker("a", &[(2, "a2:1"), (1, "a1:1")])],
        queues: vec![queues("a", 1, 1, 6)],
    };
    assert!(writable_queues("T", &route).is_empty());
    assert_eq!(
        ids(&readable_queues("T", &route)),
        names(&[("a", 0, "a1:1")])
    );
    let no_broker = TopicRoute {
        brokers: vec![],
        queues: vec![queues("a", 1, 1, 6)],
    };
    assert!(readable_queues("T", &no_broker).is_empty());
}

#[test]
fn duplicate_queue_data_counts_once() {
    let mut route = two_brokers();
    route.queues.push(queues("a", 2, 2, 6));
    assert_eq!(writable_queues("T", &route).len(), 4);
}

#[test]
fn round_robin_visits_every_queue_in_turn() {
    let qs = writable_queues("T", &two_brokers());
    let f = LatencyFaultTolerance::new();
    let now = Instant::now();
    let picked: Vec<u32> = (0..8)
        .map(|i| {
            let q = select_queue(&qs, i, None, &f, now).unwrap();
            q.queue.queue_id + if q.queue.broker_name == "b" { 10 } else { 0 }
        })
        .collect();
    assert_eq!(picked, vec![0, 1, 10, 11, 0, 1, 10, 11]);
    // A start index near the top of usize wraps without panicking.
    assert!(select_queue(&qs, usize::MAX, None, &f, now).is_some());
}

#[test]
fn unavailable_brokers_are_skipped() {
    let qs = writable_queues("T", &two_brokers());
    let now = Instant::now();
    let mut f = LatencyFaultTolerance::new();
    f.update("a", Duration::from_millis(800), now);
    for i in 0..4 {
        let q = select_queue(&qs, i, None, &f, now).unwrap();
        assert_eq!(q.queue.broker_name, "b", "start {i}");
    }
    // Once its avoidance ends, a is chosen again.
    let later = now + Duration::from_secs(30);
    assert_eq!(
        select_queue(&qs, 0, None, &f, later)
            .unwrap()
            .queue
            .broker_name,
        "a"
    );
}

#[test]
fn a_retry_avoids_the_broker_that_failed() {
    let qs = writable_queues("T", &two_brokers());
    let f = LatencyFaultTolerance::new();
    let now = Instant::now();
    for i in 0..4 {
        let q = select_queue(&qs, i, Some("a"), &f, now).unwrap();
        assert_eq!(q.queue.broker_name, "b");
    }
}

#[test]
fn with_a_single_broker_a_retry_goes_back_to_it() {
    let route = TopicRoute {
        brokers: vec![broker("a", &[(0, "a:1")])],
        queues: vec![queues("a", 2, 2, 6)],
    };
    let qs = writable_queues("T", &route);
    let now = Instant::now();
    let mut f = LatencyFaultTolerance::new();
    f.record_failure("a", now);
    let q = select_queue(&qs, 1, Some("a"), &f, now).unwrap();
    assert_eq!((q.queue.broker_name.as_str(), q.queue.queue_id), ("a", 1));
}

#[test]
fn when_every_broker_is_unavailable_the_least_bad_is_chosen() {
    let qs = writable_queues("T", &two_brokers());
    let now = Instant::now();
    let mut f = LatencyFaultTolerance::new();
    f.record_failure("a", now);
    f.update("b", Duration::from_millis(1500), now);
    for i in 0..4 {
        assert_eq!(
            select_queue(&qs, i, None, &f, now)
                .unwrap()
                .queue
                .broker_name,
            "b"
        );
    }
    // On a retry after b failed, a is chosen although it is worse: a retry goes to another
    // broker whenever there is one.
    assert_eq!(
        select_queue(&qs, 0, Some("b"), &f, now)
            .unwrap()
            .queue
            .broker_name,
        "a"
    );
}

#[test]
fn no_queues_no_choice() {
    let f = LatencyFaultTolerance::new();
    assert!(select_queue(&[], 0, None, &f, Instant::now()).is_none());
    assert!(queue_for_key(&[], "k").is_none());
}

#[test]
fn keys_map_to_stable_queues_and_spread() {
    let qs = writable_queues("T", &two_brokers());
    let first = queue_for_key(&qs, "order-42").unwrap().clone();
    for _ in 0..10 {
        assert_eq!(queue_for_key(&qs, "order-42").unwrap(), &first);
    }
    let used: std::collections::HashSet<_> = (0..100)
        .map(|i| {
            queue_for_key(&qs, &format!("order-{i}"))
                .unwrap()
                .queue
                .clone()
        })
        .collect();
    assert_eq!(used.len(), qs.len(), "100 keys reach every one of 4 queues");
    // FNV-1a's published test vectors.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
}
