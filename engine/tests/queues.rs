//! ConsumeQueues: dispatch, dense per-queue offsets, order per sender, reading back with tag
//! filters, long-poll wake-ups, statuses.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::config;
use shardmq_engine::{
    FlushMode, GetRequest, GetStatus, MessageInput, Perm, PutStatus, ReadError, Store, StoreConfig,
    TagFilter,
};

const QUEUES: u32 = 64;
const SENDERS: u32 = 8;
const PER_SENDER: u64 = 25_000;
const WINDOW: usize = 64;

fn body(sender: u32, seq: u64) -> Vec<u8> {
    let mut b = format!("{sender}:{seq}:").into_bytes();
    b.resize(40 + (seq % 60) as usize, b'x');
    b
}

fn parse(body: &[u8]) -> (u32, u64) {
    let text = std::str::from_utf8(body).unwrap();
    let mut parts = text.split(':');
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    )
}

fn get(
    store: &Store,
    topic: &str,
    queue: u32,
    offset: u64,
    max: u32,
    filter: &str,
) -> shardmq_engine::GetResult {
    let req = GetRequest {
        group: "g".into(),
        topic: topic.into(),
        queue_id: queue,
        offset,
        max_messages: max,
        max_bytes: 1 << 20,
        filter: TagFilter::parse(filter),
    };
    futures_lite::future::block_on(store.get_message(req)).unwrap()
}

#[test]
fn two_hundred_thousand_messages_make_dense_ordered_queues() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size_bytes: 4 << 20,
        ..config(dir.path(), 2, FlushMode::Async)
    };
    let store = Store::open(cfg).unwrap();
    // More queues than auto-creation gives a topic.
    store
        .create_topic("orders", QUEUES, QUEUES, Perm::READ_WRITE)
        .unwrap();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let s = store.clone();
        tasks.push(store.spawn_on(sender as usize % 2, move || async move {
            let mut window = std::collections::VecDeque::new();
            let mut acked = Vec::new();
            for seq in 0..PER_SENDER {
                let queue = ((seq * 7 + sender as u64) % QUEUES as u64) as u32;
                let msg = MessageInput::new("orders", queue, body(sender, seq));
                window.push_back((queue, seq, s.put_message(msg)));
                if window.len() >= WINDOW {
                    let (q, seq, put) = window.pop_front().unwrap();
                    acked.push((q, seq, put.await.unwrap()));
                }
            }
            for (q, seq, put) in window {
                acked.push((q, seq, put.await.unwrap()));
            }
            acked
        }));
    }
    // (queue, queue offset) -> (sender, seq), from the acknowledgements.
    let mut assigned = HashMap::new();
    for t in tasks {
        for (queue, seq, r) in futures_lite::future::block_on(t).unwrap() {
            assert_eq!(r.status, PutStatus::PutOk);
            let qo = r
                .queue_offset
                .expect("acknowledged puts carry their queue offset");
            assert!(
                assigned.insert((queue, qo), seq).is_none(),
                "offset {qo} of queue {queue} given twice"
            );
        }
    }
    assert_eq!(assigned.len() as u64, SENDERS as u64 * PER_SENDER);
    let mut total = 0;
    for queue in 0..QUEUES {
        let (min, max) =
            futures_lite::future::block_on(store.queue_offsets("orders", queue)).unwrap();
        assert_eq!(min, 0);
        let mut last_seq: HashMap<u32, u64> = HashMap::new();
        let mut offset = 0;
        while offset < max {
            let r = get(&store, "orders", queue, offset, 256, "*");
            assert_eq!(r.status, GetStatus::Found);
            for m in &r.messages {
                assert_eq!(m.queue_offset, offset, "queue {queue} is dense");
                let (sender, seq) = parse(&m.message.body);
                assert_eq!(
                    &m.message.body[..],
                    &body(sender, seq)[..],
                    "the entry points at the right bytes"
                );
                assert_eq!(m.message.queue_id, queue);
                assert_eq!(
                    assigned.get(&(queue, offset)),
                    Some(&seq),
                    "the acknowledged offset holds it"
                );
                if let Some(prev) = last_seq.insert(sender, seq) {
                    assert!(
                        prev < seq,
                        "sender {sender}'s order is kept in queue {queue}"
                    );
                }
                offset += 1;
            }
            assert_eq!(r.next_begin_offset, offset);
        }
        assert_eq!(
            get(&store, "orders", queue, max, 1, "*").status,
            GetStatus::OffsetOverflowOne
        );
        assert_eq!(
            get(&store, "orders", queue, max + 5, 1, "*").status,
            GetStatus::OffsetOverflowBadly
        );
        total += max;
    }
    assert_eq!(total, SENDERS as u64 * PER_SENDER);
    // A queue the topic does not have is refused, as RocketMQ's pull refuses it.
    let beyond = futures_lite::future::block_on(store.get_message(common::get_request(
        "orders",
        QUEUES + 1,
        0,
        1,
        "*",
    )));
    assert!(
        matches!(
            beyond,
            Err(ReadError::QueueIdOutOfRange {
                read_queues: QUEUES,
                ..
            })
        ),
        "{beyond:?}"
    );
    assert_eq!(
        get(&store, "nothing", 0, 0, 1, "*").status,
        GetStatus::NoMatchedLogicQueue
    );
}

#[test]
fn tag_filter_matches_on_hash_then_tag() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Sync)).unwrap();
    let tags = ["A", "B", "C", "A", "B", "C", "B", "B"];
    for (i, tag) in tags.iter().enumerate() {
        let m = MessageInput::new("t", 3, format!("m{i}")).with_tags(*tag);
        assert_eq!(
            store.put_message_blocking(m).unwrap().queue_offset,
            Some(i as u64)
        );
    }
    store
        .put_message_blocking(MessageInput::new("t", 3, "untagged"))
        .unwrap();
    let r = get(&store, "t", 3, 0, 32, "A || C");
    let bodies: Vec<_> = r
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.message.body).into_owned())
        .collect();
    assert_eq!(bodies, vec!["m0", "m2", "m3", "m5"]);
    assert_eq!(
        r.messages
            .iter()
            .map(|m| m.queue_offset)
            .collect::<Vec<_>>(),
        vec![0, 2, 3, 5]
    );
    assert_eq!(r.next_begin_offset, 9, "the scan went to the end");
    let r = get(&store, "t", 3, 6, 32, "A");
    assert_eq!(
        (r.status, r.next_begin_offset),
        (GetStatus::NoMatchedMsg, 9)
    );
    assert_eq!(get(&store, "t", 3, 0, 32, "*").messages.len(), 9);
    // A message found by its id.
    let first = &get(&store, "t", 3, 0, 1, "*").messages[0];
    let by_id = futures_lite::future::block_on(store.message_by_id(&first.msg_id)).unwrap();
    assert_eq!(by_id.body, first.message.body);
    // The offset for a time: everything was stored at or after 0.
    assert_eq!(
        futures_lite::future::block_on(store.offset_for_time("t", 3, 0)),
        Some(0)
    );
    assert_eq!(
        futures_lite::future::block_on(store.offset_for_time("t", 3, i64::MAX)),
        Some(9)
    );
}

#[test]
fn waiting_reader_is_woken_by_the_next_put() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Sync)).unwrap();
    store
        .put_message_blocking(MessageInput::new("t", 1, "first"))
        .unwrap();
    // Nothing at offset 1 yet: the wait parks (a 1 hour timeout: only a put can end it).
    let waiting = store.wait_for_message("t", 1, 1, Duration::from_secs(3600));
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter =
        std::thread::spawn(move || tx.send(futures_lite::future::block_on(waiting)).unwrap());
    assert!(rx.try_recv().is_err(), "nothing new yet");
    store
        .put_message_blocking(MessageInput::new("t", 1, "second"))
        .unwrap();
    assert!(rx.recv().unwrap(), "woken by the put, not by the timeout");
    waiter.join().unwrap();
    // Already past: resolves at once; and a short timeout ends a wait with nothing new.
    assert!(futures_lite::future::block_on(store.wait_for_message(
        "t",
        1,
        0,
        Duration::from_secs(3600)
    )));
    assert!(!futures_lite::future::block_on(store.wait_for_message(
        "t",
        1,
        2,
        Duration::from_millis(20)
    )));
}

#[test]
fn queues_survive_restart_and_are_rebuilt_by_redispatch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, FlushMode::Sync);
    let store = Store::open(cfg.clone()).unwrap();
    let mut acked = Vec::new();
    for i in 0..300u64 {
        let q = (i % 5) as u32;
        let r = store
            .put_message_blocking(MessageInput::new("r", q, format!("v{i}")))
            .unwrap();
        acked.push((q, r.queue_offset.unwrap(), i));
    }
    futures_lite::future::block_on(store.shutdown()).unwrap();
    // Lose the ConsumeQueue logs entirely: recovery rebuilds them from the CommitLogs.
    for round in 0..2 {
        if round == 1 {
            std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
        }
        let store = Store::open(cfg.clone()).unwrap();
        for &(q, qo, i) in &acked {
            let r = get(&store, "r", q, qo, 1, "*");
            assert_eq!(
                String::from_utf8_lossy(&r.messages[0].message.body),
                format!("v{i}"),
                "round {round}"
            );
        }
        for q in 0..5 {
            assert_eq!(
                futures_lite::future::block_on(store.queue_offsets("r", q)),
                Some((0, 60))
            );
        }
        futures_lite::future::block_on(store.shutdown()).unwrap();
    }
}

#[test]
fn tailing_reads_are_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        // The cache fills for as long as the test runs after the first read.
        tail_cache_linger_ms: 3_600_000,
        ..config(dir.path(), 2, FlushMode::Async)
    })
    .unwrap();
    let topic = "tail";
    store
        .put_message_blocking(MessageInput::new(topic, 0, "before anyone read"))
        .unwrap();
    assert_eq!(get(&store, topic, 0, 0, 1, "*").messages.len(), 1);
    let misses_before: u64 = (0..2).map(|s| store.tail_cache_stats(s).unwrap().1).sum();
    for i in 0..200 {
        store
            .put_message_blocking(MessageInput::new(topic, 0, format!("tail {i}")))
            .unwrap();
    }
    let mut offset = 1;
    while offset < 201 {
        let r = get(&store, topic, 0, offset, 64, "*");
        assert_eq!(r.status, GetStatus::Found);
        for m in &r.messages {
            assert_eq!(
                m.message.body,
                format!("tail {}", m.queue_offset - 1).as_bytes()
            );
        }
        offset = r.next_begin_offset;
    }
    let (hits, misses): (u64, u64) = (0..2)
        .map(|s| store.tail_cache_stats(s).unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(hits >= 200, "every tailing read from memory: {hits} hits");
    assert_eq!(misses, misses_before, "no tailing read went to the device");
}

#[test]
fn reads_behind_the_tail_give_the_same_messages_with_or_without_the_read_cache() {
    let dir = tempfile::tempdir().unwrap();
    let base = StoreConfig {
        // 4 MiB segments and 1 MiB read blocks: records land across both boundaries.
        segment_size_bytes: 4 << 20,
        ..config(dir.path(), 2, FlushMode::Async)
    };
    let store = Store::open(base.clone()).unwrap();
    let topic = "behind";
    let text = |i: u64| {
        let mut b = format!("m{i}:").into_bytes();
        b.resize(40 + (i as usize * 997) % 6000, b'a' + (i % 26) as u8);
        b
    };
    let mut expected: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for i in 0..3000u64 {
        let q = (i % 4) as u32;
        let r = store
            .put_message_blocking(MessageInput::new(topic, q, text(i)))
            .unwrap();
        let list = expected.entry(q).or_default();
        assert_eq!(r.queue_offset, Some(list.len() as u64));
        list.push(text(i));
    }
    futures_lite::future::block_on(store.shutdown()).unwrap();
    // Reopened, nothing is in the tail cache: every read goes to the device, through the
    // read cache or (turned off) one record at a time.
    for read_cache_bytes in [32 << 20, 2 << 20, 0] {
        let store = Store::open(StoreConfig {
            read_cache_bytes,
            tail_cache_bytes: 0,
            ..base.clone()
        })
        .unwrap();
        for (&q, bodies) in &expected {
            let mut offset = 0;
            while offset < bodies.len() as u64 {
                let r = get(&store, topic, q, offset, 97, "*");
                assert_eq!(r.status, GetStatus::Found, "cache {read_cache_bytes}");
                for m in &r.messages {
                    assert_eq!(
                        m.message.body, bodies[m.queue_offset as usize],
                        "queue {q} offset {} with a read cache of {read_cache_bytes}",
                        m.queue_offset
                    );
                }
                offset = r.next_begin_offset;
            }
        }
        futures_lite::future::block_on(store.shutdown()).unwrap();
    }
}
