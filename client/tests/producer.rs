//! `Producer` against fake brokers and a fake NameServer: routing, unique ids, retries on
//! the other broker, fault avoidance, backoff, batches, ordered and oneway sends.

mod common;

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use common::{cluster_of, dead_addr, route_over, FakeBroker, FakeNamesrv, Mode};
use shardmq_client::{ClientError, Message, Producer};
use shardmq_protocol::{Request, Status};

const TOPIC: &str = "TopicTest";

fn producer(namesrv: &str) -> Producer {
    let p = Producer::builder()
        .namesrv_addr(namesrv)
        .group("test-producers")
        .send_timeout(Duration::from_secs(10))
        .busy_backoff(Duration::from_millis(5))
        .build()
        .unwrap();
    p.start().unwrap();
    p
}

/// Brokers a and b, 2 queues each, and a NameServer routing TOPIC over them.
fn cluster() -> (FakeBroker, FakeBroker, FakeNamesrv) {
    let a = FakeBroker::start("broker-a");
    let b = FakeBroker::start("broker-b");
    let ns = FakeNamesrv::start(vec![(TOPIC, route_over(&[&a, &b], 2))]);
    (a, b, ns)
}

#[test]
fn sends_go_round_robin_and_carry_unique_ids() {
    let (a, b, ns) = cluster();
    let p = producer(&ns.addr());
    let mut ids = HashSet::new();
    let mut per_queue = std::collections::HashMap::new();
    for i in 0..8 {
        let r = p
            .send(
                Message::new(TOPIC, format!("m{i}"))
                    .with_tags("t")
                    .with_key("k"),
            )
            .unwrap();
        assert_eq!(r.unique_id.len(), 32);
        assert!(r.unique_id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(ids.insert(r.unique_id.clone()), "ids are unique");
        assert_eq!(
            r.msg_id,
            format!("{}-{}-{}", r.broker_name, r.queue_id, r.queue_offset)
        );
        *per_queue.entry((r.broker_name, r.queue_id)).or_insert(0) += 1;
    }
    assert_eq!(per_queue.len(), 4, "{per_queue:?}");
    assert!(per_queue.values().all(|n| *n == 2), "{per_queue:?}");
    // What the brokers stored is what was sent, with the same unique ids.
    let stored: HashSet<String> = [&a, &b]
        .iter()
        .flat_map(|br| (0..2).flat_map(move |q| br.state.stored(TOPIC, q)))
        .map(|m| {
            assert_eq!((m.tags.as_str(), m.keys.as_str()), ("t", "k"));
            m.unique_id
        })
        .collect();
    assert_eq!(stored, ids);
    let (_, req) = &a.state.requests.lock().unwrap()[0];
    match req {
        Request::SendMessage(r) => assert_eq!(r.producer_group, "test-producers"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ns.query_count(), 1, "the route is cached");
}

#[test]
fn a_broker_answering_service_not_available_is_retried_elsewhere_and_avoided() {
    let (a, b, ns) = cluster();
    a.state.set_mode(Mode::Fail(Status::ServiceNotAvailable));
    let p = producer(&ns.addr());
    for _ in 0..6 {
        let r = p.send(Message::new(TOPIC, "x")).unwrap();
        assert_eq!(r.broker_name, "broker-b");
    }
    // Round robin starts on broker-a: one try there, then it is avoided.
    assert_eq!(a.state.send_count(), 1);
    assert_eq!(b.state.send_count(), 6);
    assert!(!p.is_broker_available("broker-a"));
    assert!(p.is_broker_available("broker-b"));
}

#[test]
fn a_broker_dropping_the_connection_is_retried_elsewhere() {
    let (a, b, ns) = cluster();
    a.state.set_mode(Mode::Close);
    let p = producer(&ns.addr());
    let r = p.send(Message::new(TOPIC, "x")).unwrap();
    assert_eq!(r.broker_name, "broker-b");
    assert_eq!((a.state.send_count(), b.state.send_count()), (1, 1));
    assert!(!p.is_broker_available("broker-a"));
}

#[test]
fn a_dead_broker_is_retried_elsewhere() {
    let b = FakeBroker::start("broker-b");
    let mut route = route_over(&[&b], 2);
    let mut dead = route.brokers[0].clone();
    dead.broker_name = "broker-a".into();
    dead.addrs = vec![(0, dead_addr())];
    route.brokers.push(dead);
    let mut q = route.queues[0].clone();
    q.broker_name = "broker-a".into();
    route.queues.push(q);
    let ns = FakeNamesrv::start(vec![(TOPIC, route)]);
    let p = producer(&ns.addr());
    for _ in 0..4 {
        assert_eq!(
            p.send(Message::new(TOPIC, "x")).unwrap().broker_name,
            "broker-b"
        );
    }
    assert!(!p.is_broker_available("broker-a"));
}

#[test]
fn when_every_broker_fails_the_send_reports_each_try() {
    let (a, b, ns) = cluster();
    a.state.set_mode(Mode::Fail(Status::SystemError));
    b.state.set_mode(Mode::Fail(Status::SystemError));
    let p = producer(&ns.addr());
    let err = p.send(Message::new(TOPIC, "x")).unwrap_err();
    match &err {
        ClientError::AllBrokersFailed { topic, tries, last } => {
            assert_eq!((topic.as_str(), *tries), (TOPIC, 3));
            assert_eq!(last.status(), Some(Status::SystemError));
        }
        other => panic!("{other:?}"),
    }
    // Tries alternate brokers: a, b, a.
    assert_eq!((a.state.send_count(), b.state.send_count()), (2, 1));
}

#[test]
fn system_busy_is_retried_after_a_backoff() {
    let a = FakeBroker::start("broker-a");
    let ns = FakeNamesrv::start(vec![(TOPIC, route_over(&[&a], 1))]);
    a.state.set_mode(Mode::BusyFor(2));
    let p = producer(&ns.addr());
    let r = p.send(Message::new(TOPIC, "x")).unwrap();
    assert_eq!((r.broker_name.as_str(), r.queue_offset), ("broker-a", 0));
    assert_eq!(a.state.send_count(), 3, "two busy answers, then stored");
}

#[test]
fn a_refused_message_is_not_retried() {
    let (a, b, ns) = cluster();
    a.state.set_mode(Mode::Fail(Status::MessageIllegal));
    b.state.set_mode(Mode::Fail(Status::MessageIllegal));
    let p = producer(&ns.addr());
    let err = p.send(Message::new(TOPIC, "x")).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Broker {
                status: Status::MessageIllegal,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(a.state.send_count() + b.state.send_count(), 1);
}

#[test]
fn no_retries_means_one_try() {
    let (a, b, ns) = cluster();
    a.state.set_mode(Mode::Fail(Status::SystemBusy));
    let p = Producer::builder()
        .namesrv_addr(ns.addr())
        .retries(0)
        .build()
        .unwrap();
    p.start().unwrap();
    let err = p.send(Message::new(TOPIC, "x")).unwrap_err();
    assert!(
        matches!(err, ClientError::AllBrokersFailed { tries: 1, .. }),
        "{err:?}"
    );
    assert_eq!((a.state.send_count(), b.state.send_count()), (1, 0));
}

#[test]
fn async_sends_are_all_in_flight_and_all_land() {
    let (a, b, ns) = cluster();
    let p = producer(&ns.addr());
    let futures: Vec<_> = (0..200)
        .map(|i| p.send_async(Message::new(TOPIC, format!("m{i}"))))
        .collect();
    let receipts: Vec<_> = futures_lite::future::block_on(async {
        let mut out = Vec::new();
        for f in futures {
            out.push(f.await.unwrap());
        }
        out
    });
    let ids: HashSet<_> = receipts.iter().map(|r| r.unique_id.clone()).collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(a.state.send_count() + b.state.send_count(), 200);
    assert_eq!(
        a.server.connections() + b.server.connections(),
        2,
        "one connection per broker"
    );
}

#[test]
fn async_sends_retry_too() {
    let (a, _b, ns) = cluster();
    a.state.set_mode(Mode::Fail(Status::ServiceNotAvailable));
    let p = producer(&ns.addr());
    let fs: Vec<_> = (0..10)
        .map(|_| p.send_async(Message::new(TOPIC, "x")))
        .collect();
    for f in fs {
        assert_eq!(f.wait().unwrap().broker_name, "broker-b");
    }
}

#[test]
fn callback_sends_are_all_in_flight_retry_and_each_call_back_once() {
    let (a, b, ns) = cluster();
    a.state.set_mode(Mode::Fail(Status::ServiceNotAvailable));
    let p = producer(&ns.addr());
    let (tx, rx) = flume::unbounded();
    for i in 0..100 {
        let tx = tx.clone();
        p.send_with(Message::new(TOPIC, format!("m{i}")), move |r| {
            let on_io_thread = std::thread::current().name() == Some("shardmq-io");
            let _ = tx.send((r, on_io_thread));
        });
    }
    let mut ids = HashSet::new();
    for _ in 0..100 {
        let (r, on_io_thread) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let r = r.unwrap();
        assert_eq!(
            r.broker_name, "broker-b",
            "retried away from the failing broker"
        );
        assert!(
            on_io_thread,
            "answers are handed over on the shared I/O thread"
        );
        assert!(ids.insert(r.unique_id));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "each callback runs once"
    );
    assert_eq!(b.state.send_count(), 100);
}

#[test]
fn a_callback_send_that_cannot_start_calls_back_at_once_with_the_reason() {
    let (_a, _b, ns) = cluster();
    let p = producer(&ns.addr());
    let (tx, rx) = flume::unbounded();
    p.send_with(Message::new("bad topic name!", "x"), move |r| {
        let _ = tx.send(r);
    });
    let r = rx
        .try_recv()
        .expect("called back before send_with returned");
    assert!(r.is_err(), "{r:?}");
    p.shutdown();
    let (tx, rx) = flume::unbounded();
    p.send_with(Message::new(TOPIC, "x"), move |r| {
        let _ = tx.send(r);
    });
    assert!(rx.try_recv().expect("called back at once").is_err());
}

#[test]
fn a_batch_goes_to_one_queue_in_one_request() {
    let (a, b, ns) = cluster();
    let p = producer(&ns.addr());
    let msgs: Vec<_> = (0..5)
        .map(|i| Message::new(TOPIC, format!("b{i}")))
        .collect();
    let receipts = p.send_batch(msgs).unwrap();
    assert_eq!(receipts.len(), 5);
    let first = &receipts[0];
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!(
            (&r.broker_name, r.queue_id),
            (&first.broker_name, first.queue_id)
        );
        assert_eq!(r.queue_offset, i as u64);
    }
    assert_eq!(a.state.send_count() + b.state.send_count(), 1);
    let broker = if first.broker_name == "broker-a" {
        &a
    } else {
        &b
    };
    let bodies: Vec<_> = broker
        .state
        .stored(TOPIC, first.queue_id)
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, vec!["b0", "b1", "b2", "b3", "b4"]);
    let mixed = vec![Message::new(TOPIC, "x"), Message::new("Other", "y")];
    assert!(matches!(
        p.send_batch(mixed),
        Err(ClientError::InvalidMessage(_))
    ));
}

#[test]
fn ordered_sends_keep_their_key_on_one_queue_in_order() {
    let (a, b, ns) = cluster();
    // Two busy answers per broker (a send has 3 tries, so each still succeeds): retries
    // must stay on the queue and keep the order.
    a.state.set_mode(Mode::BusyFor(2));
    b.state.set_mode(Mode::BusyFor(2));
    let p = producer(&ns.addr());
    std::thread::scope(|s| {
        for t in 0..4 {
            let p = p.clone();
            s.spawn(move || {
                let key = format!("order-{t}");
                let queue = p.queue_for_key(TOPIC, &key).unwrap();
                for i in 0..20 {
                    let m = Message::new(TOPIC, format!("{t}:{i}")).with_key(key.clone());
                    let r = p.send_ordered(m, &key).unwrap();
                    assert_eq!(
                        (&r.broker_name, r.queue_id),
                        (&queue.broker_name, queue.queue_id)
                    );
                }
            });
        }
    });
    for t in 0..4 {
        let key = format!("order-{t}");
        let q = p.queue_for_key(TOPIC, &key).unwrap();
        let broker = if q.broker_name == "broker-a" { &a } else { &b };
        let seq: Vec<String> = broker
            .state
            .stored(TOPIC, q.queue_id)
            .into_iter()
            .filter(|m| m.keys == key)
            .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(seq, want, "key {key}");
    }
}

#[test]
fn oneway_sends_arrive_flagged() {
    let (tx, rx) = flume::unbounded();
    let a = FakeBroker::start_with_events("broker-a", Some(tx));
    let ns = FakeNamesrv::start(vec![(TOPIC, route_over(&[&a], 1))]);
    let p = producer(&ns.addr());
    p.send_oneway(Message::new(TOPIC, "fire")).unwrap();
    let req = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(req, Request::SendMessage(ref r) if &r.body[..] == b"fire"));
    let (h, _) = a.state.requests.lock().unwrap()[0];
    assert!(h.is_oneway());
}

#[test]
fn an_unknown_topic_has_no_route() {
    let (_a, _b, ns) = cluster();
    let p = producer(&ns.addr());
    let err = p.send(Message::new("Nope", "x")).unwrap_err();
    assert!(
        matches!(err, ClientError::NoRoute { ref topic } if topic == "Nope"),
        "{err:?}"
    );
}

#[test]
fn a_dead_namesrv_is_skipped_for_a_live_one() {
    let (_a, _b, ns) = cluster();
    let p = producer(&format!("{};{}", dead_addr(), ns.addr()));
    assert!(p.send(Message::new(TOPIC, "x")).is_ok());
    let p = producer(&dead_addr());
    let err = p.send(Message::new(TOPIC, "x")).unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");
}

#[test]
fn messages_are_checked_before_anything_is_sent() {
    let (a, b, ns) = cluster();
    let p = Producer::builder()
        .namesrv_addr(ns.addr())
        .max_message_size(10)
        .build()
        .unwrap();
    let err = p.send(Message::new(TOPIC, "x")).unwrap_err();
    assert!(matches!(err, ClientError::NotRunning), "{err:?}");
    p.start().unwrap();
    let err = p.send(Message::new(TOPIC, "x".repeat(11))).unwrap_err();
    assert!(
        matches!(err, ClientError::MessageTooLarge { size: 11, max: 10 }),
        "{err:?}"
    );
    let err = p.send(Message::new("bad topic", "x")).unwrap_err();
    assert!(matches!(err, ClientError::InvalidMessage(_)), "{err:?}");
    assert_eq!(a.state.send_count() + b.state.send_count(), 0);
    assert_eq!(ns.query_count(), 0);
    p.shutdown();
    assert!(matches!(
        p.send(Message::new(TOPIC, "x")),
        Err(ClientError::NotRunning)
    ));
    assert!(
        Producer::builder().build().is_err(),
        "a NameServer address is required"
    );
}

#[test]
fn a_route_change_is_picked_up_on_topic_not_exist() {
    let (a, b, ns) = cluster();
    ns.routes
        .lock()
        .unwrap()
        .insert(TOPIC.into(), route_over(&[&a], 1));
    let p = producer(&ns.addr());
    assert_eq!(
        p.send(Message::new(TOPIC, "x")).unwrap().broker_name,
        "broker-a"
    );
    // The topic moves to broker-b; broker-a no longer has it.
    ns.routes
        .lock()
        .unwrap()
        .insert(TOPIC.into(), route_over(&[&b], 1));
    a.state.set_mode(Mode::Fail(Status::TopicNotExist));
    assert_eq!(
        p.send(Message::new(TOPIC, "y")).unwrap().broker_name,
        "broker-b"
    );
    assert_eq!(ns.query_count(), 2);
}

/// Issue 16: sends to a topic that does not exist yet. The producer sends by the fallback
/// route (queue 0 of every master, where the broker's first put creates the topic); the
/// broker registers the topic it created a moment later, on another thread, as the real one
/// does; from then on the sends spread over all 8 of the topic's queues instead of staying
/// on queue 0.
#[test]
fn sends_to_a_new_topic_spread_over_its_queues_once_the_broker_registers_it() {
    let (tx, rx) = flume::unbounded();
    let a = FakeBroker::start_with_events("broker-a", Some(tx));
    let ns = FakeNamesrv::start(vec![]);
    *ns.cluster.lock().unwrap() = Some(cluster_of(&[&a]));
    let (routes, route) = (std::sync::Arc::clone(&ns.routes), route_over(&[&a], 8));
    let registrar = std::thread::spawn(move || {
        while let Ok(req) = rx.recv() {
            if matches!(req, Request::SendMessage(ref r) if r.topic == "Fresh") {
                routes.lock().unwrap().insert("Fresh".into(), route);
                return;
            }
        }
    });
    let p = producer(&ns.addr());
    let mut per_queue = [0u32; 8];
    for i in 0..500 {
        let r = p.send(Message::new("Fresh", format!("m{i}"))).unwrap();
        assert_eq!(r.broker_name, "broker-a");
        per_queue[r.queue_id as usize] += 1;
    }
    registrar.join().unwrap();
    assert!(per_queue.iter().all(|n| *n > 0), "{per_queue:?}");
    // Once the route is there the sends go round robin: queues 1..8 within one of each
    // other; queue 0 has those plus the sends made before the route arrived, a few.
    let (min, max) = (
        per_queue[1..].iter().min().unwrap(),
        per_queue[1..].iter().max().unwrap(),
    );
    assert!(max - min <= 1, "{per_queue:?}");
    assert!(
        per_queue[0] < 250,
        "most sends should spread: {per_queue:?}"
    );
    assert!(a.state.stored("Fresh", 7).len() as u32 == per_queue[7]);
}

/// The woken thread's name, and what a blocking send and a batch send there gave.
type WokenSends = (
    Option<String>,
    Result<(), ClientError>,
    Result<(), ClientError>,
);

/// Sends with `p` when woken: on the client's I/O thread when it wakes a polled send.
struct SendOnWake {
    p: Producer,
    tx: flume::Sender<WokenSends>,
}

impl std::task::Wake for SendOnWake {
    fn wake(self: std::sync::Arc<Self>) {
        let name = std::thread::current().name().map(String::from);
        let send = self.p.send(Message::new(TOPIC, "inner")).map(|_| ());
        let batch = self
            .p
            .send_batch(vec![Message::new(TOPIC, "inner batch")])
            .map(|_| ());
        let _ = self.tx.send((name, send, batch));
    }
}

#[test]
fn a_blocking_send_on_the_io_thread_is_refused_without_sending() {
    use std::future::Future;
    use std::task::{Context, Waker};

    let (a, b, ns) = cluster();
    let p = producer(&ns.addr());
    p.send(Message::new(TOPIC, "warm-up")).unwrap();
    let (tx, rx) = flume::unbounded();
    let waker = Waker::from(std::sync::Arc::new(SendOnWake { p: p.clone(), tx }));
    // A future polled while pending is woken from the I/O thread when its answer comes (an
    // answer may come before the first poll: try again then).
    let mut polled_pending = None;
    for _ in 0..50 {
        let mut f = p.send_async(Message::new(TOPIC, "outer"));
        if Pin::new(&mut f)
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            polled_pending = Some(f);
            break;
        }
    }
    let outer = polled_pending.expect("a send still pending when first polled");
    let (thread, send, batch) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(thread.as_deref(), Some("shardmq-io"));
    assert!(matches!(send, Err(ClientError::WaitOnIoThread)), "{send:?}");
    assert!(
        matches!(batch, Err(ClientError::WaitOnIoThread)),
        "{batch:?}"
    );
    outer.wait().unwrap();
    let stored: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|br| (0..2).flat_map(move |q| br.state.stored(TOPIC, q)))
        .collect();
    assert!(
        stored.iter().all(|m| !m.body.starts_with(b"inner")),
        "a refused send sent nothing"
    );
}
