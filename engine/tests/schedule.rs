//! Delayed messages through the store: levels (configured in milliseconds) and exact times.
//! Nothing is delivered before it is due, each level delivers in due order, and every one of
//! 100 000 delayed messages is delivered exactly once in a run without restarts.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::config;
use shardmq_engine::schedule::plan::{PROP_DELAY_LEVEL, PROP_DELIVER_AT, PROP_ORIGIN_MSG_ID};
use shardmq_engine::schedule::ScheduleConfig;
use shardmq_engine::{
    FlushMode, GetRequest, GetStatus, MessageInput, Perm, PutStatus, Store, StoreConfig, TagFilter,
};

const LEVELS_MS: [i64; 3] = [100, 300, 700];
const WRITERS_PER_SHARD: u32 = 4;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn scheduled(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        schedule: ScheduleConfig {
            enabled: true,
            levels: "100ms 300ms 700ms".into(),
            max_delay_ms: 3_600_000,
            persist_interval_ms: 200,
        },
        segment_size_bytes: 64 << 20,
        write_buffer_max_bytes: 16 << 20,
        ..config(dir, 2, FlushMode::Async)
    }
}

/// What a writer's k-th message asks for: a level (1-based) or an exact time offset.
fn ask(seq: u64) -> (Option<u32>, Option<i64>) {
    match seq % 4 {
        3 => (None, Some((seq % 1_200) as i64)),
        l => (Some(l as u32 + 1), None),
    }
}

/// Puts `per_writer` delayed messages from each writer; returns, per (writer, seq), the
/// earliest time it may be delivered.
fn put_all(store: &Store, per_writer: u64) -> HashMap<(u32, u64), i64> {
    let mut tasks = Vec::new();
    for shard in 0..2usize {
        for i in 0..WRITERS_PER_SHARD {
            let writer = shard as u32 * WRITERS_PER_SHARD + i;
            let s = store.clone();
            tasks.push(store.spawn_on(shard, move || async move {
                let mut due = Vec::new();
                for seq in 0..per_writer {
                    let mut m = MessageInput::new("delayed", writer % 4, format!("{writer}-{seq}"));
                    let before = now_ms();
                    let earliest = match ask(seq) {
                        (Some(level), _) => {
                            m.properties
                                .push((PROP_DELAY_LEVEL.into(), level.to_string()));
                            before + LEVELS_MS[level as usize - 1]
                        }
                        (_, Some(ahead)) => {
                            let at = before + ahead;
                            m.properties.push((PROP_DELIVER_AT.into(), at.to_string()));
                            at
                        }
                        _ => unreachable!(),
                    };
                    let r = s.put_message(m).await.expect("delayed put");
                    assert_eq!(r.status, PutStatus::PutOk);
                    due.push(((writer, seq), earliest));
                }
                due
            }));
        }
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(futures_lite::future::block_on(t).expect("writer ran"));
    }
    all
}

struct Delivered {
    store_ms: i64,
    queue_id: u32,
    queue_offset: u64,
    has_origin: bool,
}

/// Reads the real topic until `want` messages arrived (or a generous deadline passed).
fn read_all(store: &Store, want: usize) -> HashMap<(u32, u64), Vec<Delivered>> {
    let mut got: HashMap<(u32, u64), Vec<Delivered>> = HashMap::new();
    let mut offsets = [0u64; 4];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while count < want {
        assert!(
            Instant::now() < deadline,
            "only {count} of {want} delivered"
        );
        let mut progressed = false;
        for q in 0..4u32 {
            let r = futures_lite::future::block_on(store.get_message(GetRequest {
                group: "check".into(),
                topic: "delayed".into(),
                queue_id: q,
                offset: offsets[q as usize],
                max_messages: 512,
                max_bytes: 8 << 20,
                filter: TagFilter::All,
            }))
            .unwrap();
            if r.status != GetStatus::Found {
                continue;
            }
            for m in r.messages {
                let body = String::from_utf8(m.message.body.to_vec()).unwrap();
                let (w, s) = body.split_once('-').unwrap();
                got.entry((w.parse().unwrap(), s.parse().unwrap()))
                    .or_default()
                    .push(Delivered {
                        store_ms: m.message.store_timestamp_ms,
                        queue_id: q,
                        queue_offset: m.queue_offset,
                        has_origin: m.message.property(PROP_ORIGIN_MSG_ID).is_some(),
                    });
                offsets[q as usize] = m.queue_offset + 1;
                count += 1;
                progressed = true;
            }
        }
        if !progressed {
            let _ = futures_lite::future::block_on(store.wait_for_message(
                "delayed",
                0,
                offsets[0],
                Duration::from_millis(100),
            ));
        }
    }
    got
}

#[test]
fn delayed_messages_arrive_once_never_early_and_in_due_order_per_level() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(scheduled(dir.path())).unwrap();
    store
        .create_topic("delayed", 4, 4, Perm::READ_WRITE)
        .unwrap();
    let per_writer = 100_000 / (2 * WRITERS_PER_SHARD as u64);
    let due = put_all(&store, per_writer);
    let got = read_all(&store, due.len());
    assert_eq!(got.len(), due.len(), "every message delivered");
    for (key, copies) in &got {
        assert_eq!(copies.len(), 1, "{key:?} delivered {} times", copies.len());
        let d = &copies[0];
        let earliest = due[key];
        assert!(
            d.store_ms >= earliest,
            "{key:?} delivered at {} before it was due at {earliest}",
            d.store_ms
        );
        assert!(d.has_origin, "{key:?} lacks the original message id");
        assert_eq!(d.queue_id, key.0 % 4);
    }
    // Each level delivers in due order: a writer's messages of one level (sent in order, so
    // due in order) reach the real queue in that order.
    for writer in 0..2 * WRITERS_PER_SHARD {
        for level in 0..3u64 {
            let offsets: Vec<u64> = (0..per_writer)
                .filter(|s| s % 4 == level)
                .map(|s| got[&(writer, s)][0].queue_offset)
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "writer {writer} level {} out of order",
                level + 1
            );
        }
    }
    // Nothing is left pending, and the progress says so.
    let progress = store.schedule_progress().expect("the service runs");
    assert_eq!(progress.levels.len(), 3);
    futures_lite::future::block_on(store.shutdown()).unwrap();
}

#[test]
fn a_delivery_time_past_the_longest_delay_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(scheduled(dir.path())).unwrap();
    let mut m = MessageInput::new("delayed", 0, "far");
    m.properties.push((
        PROP_DELIVER_AT.into(),
        (now_ms() + 2 * 3_600_000).to_string(),
    ));
    let err = store.put_message_blocking(m).unwrap_err();
    assert!(err.to_string().contains("longest delay"), "{err}");
    futures_lite::future::block_on(store.shutdown()).unwrap();
}
