//! `PullConsumer` against a fake broker holding what a producer sent: queues, pulls at
//! offsets with their statuses, long polling within the call timeout, committed offsets.

mod common;

use std::time::Duration;

use common::{route_over, FakeBroker, FakeNamesrv};
use shardmq_client::{ClientError, Message, Producer, PullConsumer, PullStatus};
use shardmq_protocol::Request;

const TOPIC: &str = "PullTopic";

fn setup() -> (FakeBroker, FakeNamesrv, PullConsumer) {
    let a = FakeBroker::start("broker-a");
    let ns = FakeNamesrv::start(vec![(TOPIC, route_over(&[&a], 2))]);
    let c = PullConsumer::builder()
        .namesrv_addr(ns.addr())
        .group("pullers")
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    c.start().unwrap();
    (a, ns, c)
}

fn produce(ns: &FakeNamesrv, n: usize) {
    let p = Producer::builder().namesrv_addr(ns.addr()).build().unwrap();
    p.start().unwrap();
    for i in 0..n {
        p.send(Message::new(TOPIC, format!("m{i}"))).unwrap();
    }
    p.shutdown();
}

#[test]
fn pulls_walk_a_queue_by_offset() {
    let (_a, ns, c) = setup();
    produce(&ns, 10); // round robin: 5 per queue
    let queues = c.queues(TOPIC).unwrap();
    assert_eq!(queues.len(), 2);
    let q = &queues[0];
    let r = c.pull(q, 0, 3, Duration::ZERO).unwrap();
    assert_eq!(r.status, PullStatus::Found);
    assert_eq!((r.next_offset, r.min_offset, r.max_offset), (3, 0, 5));
    let offsets: Vec<u64> = r.messages.iter().map(|m| m.queue_offset).collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert!(r.messages.iter().all(|m| m.queue_id == q.queue_id));
    let r = c.pull(q, r.next_offset, 32, Duration::ZERO).unwrap();
    assert_eq!(
        (r.status, r.messages.len(), r.next_offset),
        (PullStatus::Found, 2, 5)
    );
    let r = c.pull(q, 9, 32, Duration::ZERO).unwrap();
    assert_eq!((r.status, r.next_offset), (PullStatus::OffsetMoved, 5));
    assert!(r.messages.is_empty());
}

#[test]
fn a_long_poll_may_outlast_the_call_timeout() {
    // The fake holds a pull at the end of the queue for its whole wait, 2 s, while the
    // consumer's call timeout is 1 s: the call must wait the pull's wait on top.
    let (_a, _ns, c) = setup();
    let q = &c.queues(TOPIC).unwrap()[0];
    let r = c.pull(q, 0, 32, Duration::from_secs(2)).unwrap();
    assert_eq!((r.status, r.next_offset), (PullStatus::NotFound, 0));
}

#[test]
fn the_request_carries_the_options() {
    let (a, _ns, c) = setup();
    let q = &c.queues(TOPIC).unwrap()[1];
    let mut opts = shardmq_client::consumer::PullOptions::new(0, 7, Duration::from_millis(5));
    opts.subscription = "TagA || TagB".into();
    opts.commit_offset = Some(4);
    opts.max_bytes = 1000;
    c.pull_with(q, &opts).unwrap();
    let reqs = a.state.requests.lock().unwrap();
    let Some((_, Request::PullMessage(r))) = reqs.last() else {
        panic!("no pull: {reqs:?}");
    };
    assert_eq!(
        (
            r.consumer_group.as_str(),
            r.topic.as_str(),
            r.queue_id,
            r.max_msgs
        ),
        ("pullers", TOPIC, 1, 7)
    );
    assert_eq!(
        (r.max_bytes, r.suspend_timeout_ms, r.commit_offset),
        (1000, 5, 4)
    );
    assert_eq!(r.subscription, "TagA || TagB");
}

#[test]
fn offsets_commit_and_read_back() {
    let (_a, ns, c) = setup();
    produce(&ns, 4);
    let q = &c.queues(TOPIC).unwrap()[0];
    assert_eq!(c.committed_offset(q).unwrap(), None);
    c.commit_offset(q, 2).unwrap();
    assert_eq!(c.committed_offset(q).unwrap(), Some(2));
    assert_eq!(c.min_offset(q).unwrap(), 0);
    assert_eq!(c.max_offset(q).unwrap(), 2);
    assert_eq!(c.offset_for_time(q, 1).unwrap(), 1);
}

#[test]
fn an_unknown_topic_or_broker_has_no_route() {
    let (_a, _ns, c) = setup();
    assert!(matches!(c.queues("Nope"), Err(ClientError::NoRoute { .. })));
    let mut q = c.queues(TOPIC).unwrap()[0].clone();
    q.broker_name = "broker-z".into();
    let err = c.pull(&q, 0, 1, Duration::ZERO).unwrap_err();
    assert!(matches!(err, ClientError::NoRoute { .. }), "{err:?}");
    c.shutdown();
    assert!(matches!(c.queues(TOPIC), Err(ClientError::NotRunning)));
}
