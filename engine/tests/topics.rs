//! Topic configurations through the store: create, update, list, delete, persistence in
//! `topics.toml`, the auto-create policy, the checks on puts, and delete then re-create
//! (the new topic never serves the old one's messages or offsets, also after a crash).

mod common;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config;
use shardmq_engine::{
    AutoCreate, FaultPlan, FlushMode, GetRequest, GetStatus, MessageInput, OpenError, Perm,
    PutError, PutFuture, PutResult, ReadError, Store, StoreConfig, TagFilter, TopicAdminError,
    TopicError, TopicUpdate,
};

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(f)
}

/// Every message of a queue from offset 0, as (queue offset, body); empty if the queue does
/// not exist.
fn read_queue(store: &Store, topic: &str, queue_id: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let req = GetRequest {
            group: "g".into(),
            topic: topic.into(),
            queue_id,
            offset,
            max_messages: 64,
            max_bytes: 1 << 20,
            filter: TagFilter::All,
        };
        let got = block_on(store.get_message(req)).unwrap();
        match got.status {
            GetStatus::Found => {}
            GetStatus::OffsetOverflowOne | GetStatus::NoNewMsg | GetStatus::NoMatchedLogicQueue => {
                return out
            }
            other => panic!("{topic}/{queue_id} at {offset}: {other:?}"),
        }
        for m in got.messages {
            assert_eq!(m.queue_offset, offset, "{topic}/{queue_id} is dense");
            out.push((
                m.queue_offset,
                String::from_utf8_lossy(&m.message.body).into(),
            ));
            offset += 1;
        }
    }
}

fn put(store: &Store, topic: &str, queue_id: u32, body: String) -> Result<u64, PutError> {
    let r = store.put_message_blocking(MessageInput::new(topic, queue_id, body))?;
    Ok(r.queue_offset
        .expect("an acknowledged put has its queue offset"))
}

#[test]
fn create_update_list_and_delete_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    assert!(store.topics().is_empty());
    let orders = store
        .create_topic("orders", 4, 2, Perm::READ_WRITE)
        .unwrap();
    assert_eq!((orders.read_queues, orders.write_queues), (4, 2));
    store.create_topic("audit", 1, 1, Perm::READ).unwrap();
    let names: Vec<_> = store.topics().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["audit", "orders"]);
    assert_eq!(store.topic("orders"), Some(orders.clone()));
    assert_eq!(store.topic("missing"), None);

    assert!(matches!(
        store.create_topic("orders", 1, 1, Perm::READ),
        Err(TopicAdminError::Topic(TopicError::Exists { .. }))
    ));
    assert!(matches!(
        store.create_topic("bad name", 1, 1, Perm::READ),
        Err(TopicAdminError::Topic(TopicError::NameChar { .. }))
    ));
    let update = TopicUpdate {
        write_queues: Some(8),
        perm: Some(Perm::READ_WRITE | Perm::INHERIT),
        ..TopicUpdate::default()
    };
    let updated = store.update_topic("orders", update).unwrap();
    assert_eq!(
        (updated.write_queues, updated.generation),
        (8, orders.generation)
    );
    assert_eq!(store.topic("orders"), Some(updated.clone()));
    assert!(matches!(
        store.update_topic("missing", update),
        Err(TopicAdminError::Topic(TopicError::NotFound { .. }))
    ));

    assert_eq!(block_on(store.delete_topic("orders")).unwrap(), updated);
    assert_eq!(store.topic("orders"), None);
    assert!(matches!(
        block_on(store.delete_topic("orders")),
        Err(TopicAdminError::Topic(TopicError::NotFound { .. }))
    ));
    let names: Vec<_> = store.topics().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["audit"]);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn topics_persist_across_reopen_and_a_corrupt_file_stops_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, FlushMode::Sync);
    let store = Store::open(cfg.clone()).unwrap();
    store.create_topic("kept", 3, 3, Perm::READ_WRITE).unwrap();
    store.create_topic("gone", 1, 1, Perm::READ_WRITE).unwrap();
    let update = TopicUpdate {
        read_queues: Some(5),
        ..TopicUpdate::default()
    };
    store.update_topic("kept", update).unwrap();
    block_on(store.delete_topic("gone")).unwrap();
    let before = store.topics();
    // Crash semantics: the table was saved on every change, not at shutdown.
    drop(store);
    assert!(dir.path().join("topics.toml").exists());

    let store = Store::open(cfg.clone()).unwrap();
    assert_eq!(store.topics(), before);
    assert_eq!(store.topic("kept").map(|t| t.read_queues), Some(5));
    // Generations only grow, also across a reopen.
    let again = store.create_topic("gone", 1, 1, Perm::READ_WRITE).unwrap();
    assert_eq!(again.generation, 3);
    block_on(store.shutdown()).unwrap();

    std::fs::write(
        dir.path().join("topics.toml"),
        "format_version = 1\ntopics = [",
    )
    .unwrap();
    let err = Store::open(cfg)
        .err()
        .expect("a corrupt topics file stops open");
    assert!(matches!(err, OpenError::Topics(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("topics.toml") && msg.contains("is corrupt"),
        "{msg}"
    );
}

#[test]
fn a_put_auto_creates_its_topic_with_eight_queues() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, FlushMode::Async);
    let store = Store::open(cfg.clone()).unwrap();
    assert_eq!(put(&store, "fresh", 7, "a".into()), Ok(0));
    let created = store.topic("fresh").expect("auto-created");
    assert_eq!((created.read_queues, created.write_queues), (8, 8));
    assert_eq!(created.perm, Perm::READ_WRITE);
    assert_eq!(
        put(&store, "fresh", 8, "b".into()),
        Err(PutError::QueueIdOutOfRange {
            topic: "fresh".into(),
            queue_id: 8,
            write_queues: 8
        })
    );
    // A batch with one bad queue id appends nothing.
    let batch = vec![
        MessageInput::new("fresh", 1, "c"),
        MessageInput::new("fresh", 9, "d"),
    ];
    assert!(matches!(
        block_on(store.put_messages(batch)),
        Err(PutError::QueueIdOutOfRange { queue_id: 9, .. })
    ));
    assert_eq!(read_queue(&store, "fresh", 1), []);
    // Names a topic cannot have are refused, not created.
    assert!(matches!(
        put(&store, "no.dots", 0, "e".into()),
        Err(PutError::TopicNotCreated { .. })
    ));
    assert!(matches!(
        put(&store, "rmq_sys_x", 0, "e".into()),
        Err(PutError::TopicNotCreated { .. })
    ));
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.topic("fresh"), Some(created));
    assert_eq!(read_queue(&store, "fresh", 7), [(0, "a".to_owned())]);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn with_auto_create_disabled_unknown_topics_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        auto_create: AutoCreate {
            enabled: false,
            ..AutoCreate::default()
        },
        ..config(dir.path(), 2, FlushMode::Sync)
    };
    let store = Store::open(cfg).unwrap();
    assert_eq!(
        put(&store, "unknown", 0, "x".into()),
        Err(PutError::TopicNotExist {
            topic: "unknown".into()
        })
    );
    assert_eq!(store.topic("unknown"), None);
    assert_eq!(
        store.offsets(0).map(|o| o.0),
        Some(0),
        "nothing was appended"
    );
    assert_eq!(
        store.offsets(1).map(|o| o.0),
        Some(0),
        "nothing was appended"
    );
    store
        .create_topic("unknown", 2, 2, Perm::READ_WRITE)
        .unwrap();
    assert_eq!(put(&store, "unknown", 1, "x".into()), Ok(0));
    block_on(store.shutdown()).unwrap();
}

#[test]
fn a_topic_without_write_permission_refuses_puts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    store.create_topic("ro", 4, 4, Perm::READ).unwrap();
    assert_eq!(
        put(&store, "ro", 0, "x".into()),
        Err(PutError::NoPermission {
            topic: "ro".into(),
            perm: Perm::READ
        })
    );
    let writable = TopicUpdate {
        perm: Some(Perm::READ_WRITE),
        write_queues: Some(2),
        ..TopicUpdate::default()
    };
    store.update_topic("ro", writable).unwrap();
    assert_eq!(put(&store, "ro", 1, "x".into()), Ok(0));
    assert!(matches!(
        put(&store, "ro", 2, "x".into()),
        Err(PutError::QueueIdOutOfRange {
            write_queues: 2,
            ..
        })
    ));
    block_on(store.shutdown()).unwrap();
}

#[test]
fn a_topic_without_read_permission_refuses_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    store.create_topic("wo", 4, 4, Perm::WRITE).unwrap();
    assert_eq!(put(&store, "wo", 3, "x".into()), Ok(0));
    let get =
        |queue_id: u32| block_on(store.get_message(common::get_request("wo", queue_id, 0, 1, "*")));
    assert!(
        matches!(
            get(3),
            Err(ReadError::NoPermission {
                perm: Perm::WRITE,
                ..
            })
        ),
        "{:?}",
        get(3)
    );
    // Readable again, but only its read queues: shrinking them hides queue 3.
    let readable = TopicUpdate {
        perm: Some(Perm::READ_WRITE),
        read_queues: Some(2),
        ..TopicUpdate::default()
    };
    store.update_topic("wo", readable).unwrap();
    assert!(matches!(
        get(3),
        Err(ReadError::QueueIdOutOfRange {
            queue_id: 3,
            read_queues: 2,
            ..
        })
    ));
    let all = TopicUpdate {
        read_queues: Some(4),
        ..TopicUpdate::default()
    };
    store.update_topic("wo", all).unwrap();
    let got = get(3).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(got.messages[0].message.body, &b"x"[..]);
    block_on(store.shutdown()).unwrap();
}

const QUEUES: u32 = 4;

/// The bodies every queue of `topic` should hold: `prefix-<i>` for message `i` of `count`,
/// message `i` going to queue `i % QUEUES`.
fn expected(prefix: &str, count: u32) -> Vec<Vec<(u64, String)>> {
    let mut queues = vec![Vec::new(); QUEUES as usize];
    for i in 0..count {
        let q = &mut queues[(i % QUEUES) as usize];
        q.push((q.len() as u64, format!("{prefix}-{i}")));
    }
    queues
}

fn put_all(store: &Store, topic: &str, prefix: &str, count: u32) {
    for i in 0..count {
        put(store, topic, i % QUEUES, format!("{prefix}-{i}")).unwrap();
    }
}

fn assert_holds(store: &Store, topic: &str, want: &[Vec<(u64, String)>], when: &str) {
    for (q, want) in want.iter().enumerate() {
        assert_eq!(
            &read_queue(store, topic, q as u32),
            want,
            "queue {q} {when}"
        );
        let offsets = block_on(store.queue_offsets(topic, q as u32));
        assert_eq!(offsets, Some((0, want.len() as u64)), "queue {q} {when}");
    }
}

/// Puts old messages to a topic (from other threads and from tasks on a shard), deletes it,
/// creates it again and puts new ones: every queue holds exactly the new messages from offset
/// 0 — at once, after a crash (recovery re-dispatches from the CommitLogs, which still hold
/// the old records) and after a clean shutdown.
fn delete_and_re_create(flush: FlushMode) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, flush);
    let store = Store::open(cfg.clone()).unwrap();
    let old = store
        .create_topic("T", QUEUES, QUEUES, Perm::READ_WRITE)
        .unwrap();
    put_all(&store, "T", "old", 40);
    let s = store.clone();
    let on_shard = block_on(store.spawn_on(1, move || async move {
        let puts: Vec<_> = (0..20)
            .map(|i| s.put_message(MessageInput::new("T", i % QUEUES, format!("older-{i}"))))
            .collect();
        for p in puts {
            p.await.unwrap();
        }
    }));
    assert_eq!(on_shard, Some(()));
    put_all(&store, "other", "other", 12);

    let deleted = block_on(store.delete_topic("T")).unwrap();
    assert_eq!(deleted, old);
    for q in 0..QUEUES {
        assert_eq!(read_queue(&store, "T", q), [], "queue {q} after the delete");
        assert_eq!(block_on(store.queue_offsets("T", q)), None);
    }
    let new = store
        .create_topic("T", QUEUES, QUEUES, Perm::READ_WRITE)
        .unwrap();
    assert!(new.generation > old.generation);
    put_all(&store, "T", "new", 30);
    let want = expected("new", 30);
    let others = expected("other", 12);
    assert_holds(&store, "T", &want, "after re-creating");
    assert_holds(&store, "other", &others, "after re-creating");

    // A crash: the shards stop without flushing; recovery re-reads the CommitLogs.
    drop(store);
    let store = Store::open(cfg.clone()).unwrap();
    assert_eq!(store.topic("T"), Some(new.clone()));
    assert_holds(&store, "T", &want, "after a crash");
    assert_holds(&store, "other", &others, "after a crash");
    block_on(store.shutdown()).unwrap();

    let store = Store::open(cfg).unwrap();
    assert_holds(&store, "T", &want, "after a clean shutdown");
    // New puts continue after the new messages.
    assert_eq!(
        put(&store, "T", 0, "newer".into()),
        Ok(want[0].len() as u64)
    );
    block_on(store.shutdown()).unwrap();
}

#[test]
fn topic_delete_and_re_create_sync_flush() {
    delete_and_re_create(FlushMode::Sync);
}

#[test]
fn topic_delete_and_re_create_async_flush() {
    delete_and_re_create(FlushMode::Async);
}

#[test]
fn a_put_after_a_delete_auto_creates_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, FlushMode::Sync);
    let store = Store::open(cfg.clone()).unwrap();
    put_all(&store, "auto", "old", 16);
    let old = store.topic("auto").unwrap();
    block_on(store.delete_topic("auto")).unwrap();
    put_all(&store, "auto", "new", 8);
    let new = store.topic("auto").unwrap();
    assert!(new.generation > old.generation);
    assert_holds(&store, "auto", &expected("new", 8), "after auto-creating");
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_holds(&store, "auto", &expected("new", 8), "after a crash");
    block_on(store.shutdown()).unwrap();
}

#[test]
fn a_delete_wakes_readers_waiting_on_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    put(&store, "w", 0, "first".into()).unwrap();
    let timeout = Duration::from_secs(60);
    let mut wait = Box::pin(store.wait_for_message("w", 0, 1, timeout));
    // Polled once: the wait is queued to the queue's owner ahead of the delete.
    assert_eq!(block_on(futures_lite::future::poll_once(&mut wait)), None);
    let start = Instant::now();
    block_on(store.delete_topic("w")).unwrap();
    assert!(!block_on(wait), "woken by the delete, without a message");
    assert!(start.elapsed() < timeout / 2, "woken, not timed out");
    block_on(store.shutdown()).unwrap();
}

/// The store stopped after every shard recorded the delete but before the table was saved:
/// the next open finishes the delete.
#[test]
fn a_delete_interrupted_before_the_table_was_saved_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, FlushMode::Sync);
    let store = Store::open(cfg.clone()).unwrap();
    store
        .create_topic("T", QUEUES, QUEUES, Perm::READ_WRITE)
        .unwrap();
    put_all(&store, "T", "old", 20);
    let table = dir.path().join("topics.toml");
    let saved = std::fs::read(&table).unwrap();
    block_on(store.delete_topic("T")).unwrap();
    drop(store);
    restore(&table, &saved);

    let store = Store::open(cfg.clone()).unwrap();
    assert_eq!(store.topic("T"), None, "the delete was finished");
    for q in 0..QUEUES {
        assert_eq!(read_queue(&store, "T", q), []);
    }
    block_on(store.shutdown()).unwrap();
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.topic("T"), None, "and saved");
    block_on(store.shutdown()).unwrap();
}

fn restore(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A producer on a shard: puts to the two queues of `busy`, shared by every producer (so
/// records of different sources interleave in them, and some wait behind another source's
/// earlier offset), and to the queues of `T` until a put to `T` fails, until told to stop.
async fn produce(store: Store, id: u32, stop: Arc<AtomicBool>, events: flume::Sender<Event>) {
    let mut window = VecDeque::new();
    let mut on_t = true;
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let busy = MessageInput::new("busy", (i % 2) as u32, format!("{id}-{i}"));
        window.push_back((false, store.put_message(busy)));
        if on_t {
            let old = MessageInput::new("T", (i % QUEUES as u64) as u32, format!("old-{id}-{i}"));
            window.push_back((true, store.put_message(old)));
        }
        while window.len() > 16 {
            settle(&mut window, &mut on_t, &events).await;
        }
        if i == 100 {
            let _ = events.send(Event::Warm);
        }
        i += 1;
    }
    while !window.is_empty() {
        settle(&mut window, &mut on_t, &events).await;
    }
}

/// Awaits the oldest put of a producer's window; the first refused put to `T` ends its puts
/// to `T`.
async fn settle(
    window: &mut VecDeque<(bool, PutFuture<PutResult>)>,
    on_t: &mut bool,
    events: &flume::Sender<Event>,
) {
    let Some((to_t, put)) = window.pop_front() else {
        return;
    };
    match put.await {
        Ok(_) => {}
        Err(e) if to_t => {
            let refused = matches!(
                e,
                PutError::TopicDeleting { .. } | PutError::TopicNotExist { .. }
            );
            assert!(refused, "{e}");
            if std::mem::replace(on_t, false) {
                let _ = events.send(Event::LeftT);
            }
        }
        Err(e) => panic!("busy put failed: {e}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// The producer has put a while.
    Warm,
    /// The producer saw a put to `T` refused and no longer puts to it.
    LeftT,
}

/// Deletes `T` while producers on both shards put to it and to shared queues of another
/// topic, re-creates it, and crashes: `T` holds exactly the messages put after re-creating it.
/// Under SYNC_FLUSH the crash is a power cut (every write no fdatasync covered is undone), so
/// the ConsumeQueue logs fall back to what the delete flushed, and recovery re-dispatches
/// from the watermarks it wrote — which a record waiting behind another shard's earlier
/// offset may have held below some of the old topic's records.
/// That timing is not forced, so the SYNC_FLUSH case runs several times.
#[test]
fn a_delete_under_load_leaves_no_old_message_in_the_new_topic() {
    let mut modes = vec![FlushMode::Async];
    modes.extend([FlushMode::Sync; 8]);
    for flush in modes {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(FaultPlan::power_cut_tracking());
        let cfg = StoreConfig {
            // Between the delete and the re-create, puts to `T` must fail rather than
            // create it again.
            auto_create: AutoCreate {
                enabled: false,
                ..AutoCreate::default()
            },
            fault_plan: (flush == FlushMode::Sync).then(|| plan.clone()),
            ..config(dir.path(), 2, flush)
        };
        let store = Store::open(cfg.clone()).unwrap();
        store
            .create_topic("T", QUEUES, QUEUES, Perm::READ_WRITE)
            .unwrap();
        store.create_topic("busy", 2, 2, Perm::READ_WRITE).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = flume::unbounded();
        let producers: Vec<_> = (0..8u32)
            .map(|id| {
                let (s, stop, tx) = (store.clone(), stop.clone(), tx.clone());
                store.spawn_on(id as usize % 2, move || produce(s, id, stop, tx))
            })
            .collect();
        let wait_for = |event: Event| {
            for _ in 0..producers.len() {
                assert_eq!(rx.recv().unwrap(), event);
            }
        };
        wait_for(Event::Warm);
        block_on(store.delete_topic("T")).unwrap();
        wait_for(Event::LeftT);
        store
            .create_topic("T", QUEUES, QUEUES, Perm::READ_WRITE)
            .unwrap();
        put_all(&store, "T", "new", 30);
        stop.store(true, Ordering::Release);
        for p in producers {
            assert_eq!(block_on(p), Some(()));
        }
        let want = expected("new", 30);
        assert_holds(&store, "T", &want, "after re-creating");
        plan.freeze();
        drop(store);
        plan.power_cut().unwrap();
        let store = Store::open(StoreConfig {
            fault_plan: None,
            ..cfg
        })
        .unwrap();
        assert_holds(&store, "T", &want, &format!("after a crash ({flush:?})"));
        for q in 0..2 {
            assert!(
                !read_queue(&store, "busy", q).is_empty(),
                "dense, and not empty"
            );
        }
        block_on(store.shutdown()).unwrap();
    }
}
