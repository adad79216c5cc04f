//! Two brokers and a NameServer as separate processes under SYNC_FLUSH; a producer sends
//! 100 000 messages while one broker is SIGKILLed mid-run. Every send is acknowledged or
//! reported failed, sends move to the live broker, and after the killed broker restarts
//! every acknowledged message is there with its bytes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use shardmq_client::{Message, MessageQueue, Producer, PullConsumer, PullStatus};

const TOTAL: u64 = 100_000;
const THREADS: u64 = 32;
const KILL_AFTER: u64 = 30_000;

#[derive(Default)]
struct Outcomes {
    /// (broker, queue, offset) → body, for every acknowledged send.
    acked: HashMap<(String, u32, u64), String>,
    failed: u64,
    /// Broker of each acknowledgement, in the order they came back after the kill.
    after_kill: Vec<String>,
}

#[test]
fn a_broker_killed_mid_run_loses_no_acknowledged_message_and_sends_move_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        "[namesrv]\nbroker_ttl_ms = 3000\nscan_interval_ms = 200\n\
         [broker]\nregister_interval_ms = 500\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let ns = spawn(
        &["namesrv", "--listen", "127.0.0.1:0", "--config", &cfg],
        dir.path(),
        "namesrv",
    );
    let ns_addr = ns.get("namesrv");
    let start_broker = |name: &str, listen: &str| {
        let data = dir.path().join(name);
        spawn(
            &[
                "broker",
                "--config",
                &cfg,
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                listen,
                "--shards",
                "2",
                "--flush",
                "sync",
                "--namesrv",
                &ns_addr,
                "--broker-name",
                name,
            ],
            dir.path(),
            name,
        )
    };
    let a = start_broker("broker-a", "127.0.0.1:0");
    let mut b = start_broker("broker-b", "127.0.0.1:0");
    let b_listen = b.get("broker");
    for p in [&a, &b] {
        let mut c = connect(&p.get("broker"));
        create_topic(&mut c, "Failover", 4);
    }
    let producer = Arc::new(
        Producer::builder()
            .namesrv_addr(ns_addr.clone())
            .group("failover-producers")
            .send_timeout(Duration::from_secs(3))
            .retries(2)
            .build()
            .unwrap(),
    );
    producer.start().unwrap();
    // Both brokers in the route before the run starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        producer.routes().refresh("Failover").ok();
        let queues = producer.writable_queues("Failover").unwrap_or_default();
        if queues.iter().any(|q| q.broker_name == "broker-b")
            && queues.iter().any(|q| q.broker_name == "broker-a")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both brokers should be routed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let acks = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicU64::new(0));
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let kill_tx = Mutex::new(Some(kill_tx));
    let kill_tx = Arc::new(kill_tx);
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let (producer, outcomes, acks, killed, kill_tx) = (
                producer.clone(),
                outcomes.clone(),
                acks.clone(),
                killed.clone(),
                kill_tx.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..TOTAL / THREADS {
                    let body = format!("t{t}-m{i}");
                    let result = producer.send(Message::new("Failover", body.clone()));
                    let mut o = outcomes.lock().unwrap();
                    match result {
                        Ok(r) => {
                            let prev = o
                                .acked
                                .insert((r.broker_name.clone(), r.queue_id, r.queue_offset), body);
                            assert!(
                                prev.is_none(),
                                "two acks for {}:{}:{}",
                                r.broker_name,
                                r.queue_id,
                                r.queue_offset
                            );
                            if killed.load(Ordering::Acquire) == 1 {
                                o.after_kill.push(r.broker_name);
                            }
                            if acks.fetch_add(1, Ordering::AcqRel) + 1 == KILL_AFTER {
                                if let Some(tx) = kill_tx.lock().unwrap().take() {
                                    let _ = tx.send(());
                                }
                            }
                        }
                        Err(_) => o.failed += 1,
                    }
                }
            })
        })
        .collect();
    kill_rx.recv().unwrap();
    b.kill9();
    killed.store(1, Ordering::Release);
    for s in senders {
        s.join().unwrap();
    }
    let o = outcomes.lock().unwrap();
    let acked = o.acked.len() as u64;
    eprintln!("acknowledged {acked}, failed {}", o.failed);
    let on_b = o.acked.keys().filter(|(b, _, _)| b == "broker-b").count();
    assert!(on_b > 0, "broker-b took sends before it was killed");
    // Every send was answered one way or the other: none vanished.
    assert_eq!(acked + o.failed, TOTAL);
    // The retry budget moves sends to the live broker: failures are the few sends in flight
    // to the killed broker whose every try went there, far from all that followed the kill.
    assert!(o.failed < THREADS * 3, "{} sends failed", o.failed);
    let late = &o.after_kill[o.after_kill.len().saturating_sub(1000)..];
    assert!(
        late.iter().all(|b| b == "broker-a"),
        "late acks went to the dead broker"
    );

    // broker-b comes back on its data; every acknowledged message is there, same bytes.
    let b2 = start_broker("broker-b", &b_listen);
    let consumer = PullConsumer::builder()
        .namesrv_addr(ns_addr.clone())
        .group("checker")
        .build()
        .unwrap();
    consumer.start().unwrap();
    let mut stored: HashMap<(String, u32, u64), String> = HashMap::new();
    for broker in ["broker-a", "broker-b"] {
        for queue_id in 0..4 {
            let q = MessageQueue {
                topic: "Failover".into(),
                broker_name: broker.into(),
                queue_id,
            };
            let mut offset = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let r = match consumer.pull(&q, offset, 256, Duration::ZERO) {
                    Ok(r) => r,
                    Err(e) => {
                        // broker-b may not be routed again yet.
                        assert!(std::time::Instant::now() < deadline, "pull {q}: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        consumer.routes().refresh("Failover").ok();
                        continue;
                    }
                };
                if r.status != PullStatus::Found {
                    break;
                }
                for m in r.messages {
                    stored.insert(
                        (broker.to_owned(), queue_id, m.queue_offset),
                        String::from_utf8(m.body.to_vec()).unwrap(),
                    );
                    offset = m.queue_offset + 1;
                }
            }
        }
    }
    for (key, body) in o.acked.iter() {
        assert_eq!(
            stored.get(key),
            Some(body),
            "acknowledged {key:?} is missing or changed"
        );
    }
    drop(b2);
    drop(a);
}
