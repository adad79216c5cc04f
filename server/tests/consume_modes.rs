//! Push consumer modes against a real broker, with the consumers in this process: retries
//! through the retry topic ending in the dead-letter topic, BROADCASTING, and orderly
//! consumption keeping each queue's order across a rebalance.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin, producer, standalone};
use shardmq_client::consumer::push::{ConsumeFrom, MessageModel, PushConsumer};
use shardmq_client::{ConsumeStatus, Message, OrderlyStatus, PullConsumer};

const WAIT: Duration = Duration::from_secs(60);

fn admin_ok(namesrv: &str, args: &[&str]) {
    let (ok, _, err) = admin(namesrv, args);
    assert!(ok, "{err}");
}

/// Waits for `cond` (checked whenever `changed` is signalled), panicking after `WAIT`.
fn wait_until<T>(state: &(Mutex<T>, std::sync::Condvar), what: &str, cond: impl Fn(&T) -> bool) {
    let deadline = Instant::now() + WAIT;
    let mut g = state.0.lock().unwrap();
    while !cond(&g) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        g = state.1.wait_timeout(g, left).unwrap().0;
    }
}

type Shared<T> = Arc<(Mutex<T>, std::sync::Condvar)>;

fn shared<T: Default>() -> Shared<T> {
    Arc::new((Mutex::new(T::default()), std::sync::Condvar::new()))
}

#[test]
fn a_message_that_always_fails_is_delivered_max_plus_one_times_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // Delay levels in milliseconds: a retry comes back at once.
    let broker = standalone(
        dir.path(),
        &[
            "--set",
            "store.schedule.levels=\"10ms 10ms 10ms 10ms 10ms 10ms 10ms\"",
        ],
    );
    let ns = broker.get("namesrv");
    admin_ok(
        &ns,
        &["topic", "create", "--topic", "Jobs", "--queues", "2"],
    );
    let max = 3;
    let counts: Shared<HashMap<String, Vec<u32>>> = shared();
    let c = counts.clone();
    let consumer = PushConsumer::builder()
        .namesrv_addr(ns.clone())
        .group("Failing")
        .subscribe("Jobs", "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .max_reconsume_times(max)
        .rebalance_interval(Duration::from_millis(500))
        .listener_concurrently(move |msgs, _| {
            let mut g = c.0.lock().unwrap();
            for m in msgs {
                assert_eq!(
                    m.topic, "Jobs",
                    "a retried message shows its original topic"
                );
                let body = String::from_utf8_lossy(&m.body).into_owned();
                g.entry(body).or_default().push(m.reconsume_times);
            }
            c.1.notify_all();
            ConsumeStatus::ReconsumeLater
        })
        .build()
        .unwrap();
    consumer.start().unwrap();
    let p = producer(&ns);
    for i in 0..5 {
        p.send(Message::new("Jobs", format!("job-{i}"))).unwrap();
    }
    wait_until(&counts, "max + 1 deliveries of each", |g| {
        g.len() == 5 && g.values().all(|v| v.len() > max as usize)
    });

    // Each message ends in the dead-letter topic, once.
    let dlq = PullConsumer::builder()
        .namesrv_addr(ns.clone())
        .group("reader")
        .build()
        .unwrap();
    dlq.start().unwrap();
    let deadline = Instant::now() + WAIT;
    let mut dead = Vec::new();
    while dead.len() < 5 {
        assert!(Instant::now() < deadline, "dead letters: {dead:?}");
        let Ok(queues) = dlq.queues("%DLQ%Failing") else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        dead.clear();
        for q in &queues {
            let r = dlq.pull(q, 0, 32, Duration::from_millis(200)).unwrap();
            dead.extend(
                r.messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
            );
        }
    }
    dead.sort();
    assert_eq!(dead, (0..5).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    // Nothing more comes once all are dead-lettered: exactly max + 1 deliveries each, with
    // reconsume counts 0, 1, ..., max.
    consumer.shutdown();
    let g = counts.0.lock().unwrap();
    for (body, times) in g.iter() {
        assert_eq!(times, &(0..=max).collect::<Vec<_>>(), "{body}");
    }
}

#[test]
fn broadcasting_gives_every_member_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &[]);
    let ns = broker.get("namesrv");
    admin_ok(
        &ns,
        &["topic", "create", "--topic", "News", "--queues", "4"],
    );
    let got: Shared<BTreeMap<usize, Vec<String>>> = shared();
    let members: Vec<PushConsumer> = (0..2)
        .map(|i| {
            let g = got.clone();
            let c = PushConsumer::builder()
                .namesrv_addr(ns.clone())
                .group("Readers")
                .subscribe("News", "*")
                .model(MessageModel::Broadcasting)
                .consume_from(ConsumeFrom::FirstOffset)
                .offset_store_dir(dir.path().join(format!("offsets-{i}")))
                .listener_concurrently(move |msgs, _| {
                    let mut m = g.0.lock().unwrap();
                    for msg in msgs {
                        m.entry(i)
                            .or_default()
                            .push(String::from_utf8_lossy(&msg.body).into_owned());
                    }
                    g.1.notify_all();
                    ConsumeStatus::Success
                })
                .build()
                .unwrap();
            c.start().unwrap();
            c
        })
        .collect();
    for m in &members {
        m.wait_for_assignment(WAIT, |q| q.len() == 4);
    }
    let p = producer(&ns);
    for i in 0..200 {
        p.send(Message::new("News", format!("n-{i}"))).unwrap();
    }
    wait_until(&got, "200 messages at each member", |g| {
        (0..2).all(|i| g.get(&i).is_some_and(|v| v.len() >= 200))
    });
    for m in &members {
        m.shutdown();
    }
    let want: Vec<String> = {
        let mut w: Vec<String> = (0..200).map(|i| format!("n-{i}")).collect();
        w.sort();
        w
    };
    let g = got.0.lock().unwrap();
    for i in 0..2 {
        let mut v = g[&i].clone();
        v.sort();
        assert_eq!(v, want, "member {i}");
    }
    // Each member kept its own offsets, locally.
    for i in 0..2 {
        let files: Vec<_> = walk(&dir.path().join(format!("offsets-{i}")));
        assert!(files.iter().any(|f| f.ends_with("offsets")), "{files:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn orderly_consumption_keeps_each_queues_order_across_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &[]);
    let ns = broker.get("namesrv");
    admin_ok(
        &ns,
        &["topic", "create", "--topic", "Ledger", "--queues", "4"],
    );
    // (member, queue, sequence) in the order consumed, across both members.
    let log: Shared<Vec<(usize, u32, u64)>> = shared();
    let member = |i: usize| {
        let l = log.clone();
        let c = PushConsumer::builder()
            .namesrv_addr(ns.clone())
            .group("Ordered")
            .subscribe("Ledger", "*")
            .consume_from(ConsumeFrom::FirstOffset)
            .lock_retry_interval(Duration::from_millis(100))
            .rebalance_interval(Duration::from_millis(500))
            // A hand-over must not wait for messages that are only queued: with this grace a
            // stall would outlast the test's wait.
            .shutdown_grace(Duration::from_secs(300))
            .listener_orderly(move |msgs, _| {
                for m in msgs {
                    let seq: u64 = String::from_utf8_lossy(&m.body)
                        .rsplit('-')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .expect("body ends in a sequence number");
                    let mut g = l.0.lock().unwrap();
                    g.push((i, m.queue_id, seq));
                    l.1.notify_all();
                }
                // Slow enough that the rebalance lands mid-stream, with messages queued.
                std::thread::sleep(Duration::from_millis(5));
                OrderlyStatus::Success
            })
            .build()
            .unwrap();
        c.start().unwrap();
        c
    };
    let a = member(0);
    a.wait_for_assignment(WAIT, |q| {
        q.iter().filter(|q| q.topic == "Ledger").count() == 4
    });
    let p = producer(&ns);
    let per_key = 150u64;
    let sender = {
        let p = Arc::new(p);
        std::thread::spawn(move || {
            for seq in 0..per_key {
                for key in 0..4 {
                    p.send_ordered(
                        Message::new("Ledger", format!("k{key}-{seq}")),
                        &format!("k{key}"),
                    )
                    .unwrap();
                }
            }
        })
    };
    wait_until(&log, "a first part consumed by one member", |g| {
        g.len() >= 100
    });
    let b = member(1);
    let ledger =
        |q: &[shardmq_client::MessageQueue]| q.iter().filter(|q| q.topic == "Ledger").count();
    assert_eq!(ledger(&b.wait_for_assignment(WAIT, |q| ledger(q) == 2)), 2);
    assert!(
        (log.0.lock().unwrap().len() as u64) < 4 * per_key,
        "the second member joined mid-stream"
    );
    sender.join().unwrap();
    wait_until(&log, "every message", |g| g.len() as u64 >= 4 * per_key);
    // Shutting down hands every queue over at once: nothing is left with the listeners, so
    // neither member waits out its 300 s grace.
    let t = Instant::now();
    a.shutdown();
    b.shutdown();
    assert!(t.elapsed() < WAIT, "shutdown waited {:?}", t.elapsed());
    let g = log.0.lock().unwrap();
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut members_per_queue: HashMap<u32, std::collections::BTreeSet<usize>> = HashMap::new();
    for &(m, q, seq) in g.iter() {
        if let Some(prev) = last.get(&q) {
            assert_eq!(seq, prev + 1, "queue {q}: {seq} after {prev} (member {m})");
        } else {
            assert_eq!(seq, 0, "queue {q} starts at 0");
        }
        last.insert(q, seq);
        members_per_queue.entry(q).or_default().insert(m);
    }
    assert_eq!(g.len() as u64, 4 * per_key, "each message once");
    assert!(
        members_per_queue.values().any(|s| s.len() == 2),
        "some queue moved between members: {members_per_queue:?}"
    );
}

#[test]
fn a_member_joining_makes_the_others_rebalance_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &[]);
    let ns = broker.get("namesrv");
    admin_ok(
        &ns,
        &["topic", "create", "--topic", "Tasks", "--queues", "4"],
    );
    // No periodic rebalance within the test: only the broker's notification can move queues.
    let member = || {
        let c = PushConsumer::builder()
            .namesrv_addr(ns.clone())
            .group("Notified")
            .subscribe("Tasks", "*")
            .rebalance_interval(Duration::from_secs(3600))
            .lock_retry_interval(Duration::from_millis(50))
            .listener_concurrently(|_, _| ConsumeStatus::Success)
            .build()
            .unwrap();
        c.start().unwrap();
        c
    };
    let tasks =
        |q: &[shardmq_client::MessageQueue]| q.iter().filter(|q| q.topic == "Tasks").count();
    let a = member();
    assert_eq!(tasks(&a.wait_for_assignment(WAIT, |q| tasks(q) == 4)), 4);
    let b = member();
    assert_eq!(
        tasks(&a.wait_for_assignment(WAIT, |q| tasks(q) == 2)),
        2,
        "a gave half away"
    );
    assert_eq!(
        tasks(&b.wait_for_assignment(WAIT, |q| tasks(q) == 2)),
        2,
        "b took them"
    );
    // And leaving gives them back, again through the notification.
    b.shutdown();
    assert_eq!(tasks(&a.wait_for_assignment(WAIT, |q| tasks(q) == 4)), 4);
}
