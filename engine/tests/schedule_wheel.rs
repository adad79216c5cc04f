//! The wheel of exact times runs one task per shard, each for the minute slots its shard
//! owns. A backlog of exact-time messages in the slots of four minutes, on both shards, is
//! laid down with the service off (written straight into the schedule topic, as a delayed put
//! leaves it) together with a persisted progress saying part of it was delivered; the store
//! is reopened with the service on. Every message the progress does not cover is delivered
//! once, none it covers is, each real queue gets its copies in due order across both shards'
//! wheels, and a later restart delivers nothing again. A crash (the store dropped) in the
//! middle of such a backlog loses nothing and repeats only what the persisted progress did
//! not cover.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::config;
use shardmq_engine::schedule::plan::{
    parse_levels, Plan, PROP_DUE, PROP_REAL_QUEUE, PROP_REAL_TOPIC, SCHEDULE_TOPIC, SLOT_MS,
};
use shardmq_engine::schedule::progress::Progress;
use shardmq_engine::schedule::ScheduleConfig;
use shardmq_engine::{FlushMode, MessageInput, Perm, Store, StoreConfig};

const LEVELS: &str = "1s";
const REAL: &str = "real";
const REAL_QUEUES: u32 = 4;
/// The backlog spans this many minutes, ending with the current one.
const MINUTES: i64 = 4;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn cfg(dir: &Path, enabled: bool, max_delay_ms: u64) -> StoreConfig {
    StoreConfig {
        schedule: ScheduleConfig {
            enabled,
            levels: LEVELS.into(),
            max_delay_ms,
            persist_interval_ms: 100,
        },
        segment_size_bytes: 16 << 20,
        write_buffer_max_bytes: 16 << 20,
        ..config(dir, 2, FlushMode::Async)
    }
}

/// A message of the backlog: where it waits and when it is due.
#[derive(Debug, Clone)]
struct Waiting {
    slot: u32,
    offset: u64,
    due: i64,
    real_queue: u32,
}

/// Lays down `per_minute` exact-time messages in each of the `MINUTES` minutes ending with the
/// current one (due times spread over each minute, never past now; each minute's messages
/// put out of due order), in a store without the service, and picks a wheel size under
/// which those minutes' slots live on both shards. Returns the longest delay to configure,
/// the wheel, the first minute and the messages by body.
fn lay_down(dir: &Path, per_minute: u64) -> (u64, Plan, i64, HashMap<String, Waiting>) {
    let store = Store::open(cfg(dir, false, 3_600_000)).unwrap();
    let first = now_ms().div_euclid(SLOT_MS) - (MINUTES - 1);
    let minutes = first..first + MINUTES;
    let (max_delay_ms, plan) = (0..100u64)
        .map(|k| {
            let max = 3_600_000 + k * SLOT_MS as u64;
            (max, Plan::new(parse_levels(LEVELS).unwrap(), max))
        })
        .find(|(_, plan)| {
            let owners: std::collections::BTreeSet<usize> = minutes
                .clone()
                .map(|m| store.queue_shard(SCHEDULE_TOPIC, plan.slot_queue(m)))
                .collect();
            owners.len() == 2
        })
        .expect("some wheel size puts the minutes' slots on both shards");
    store
        .create_topic(
            SCHEDULE_TOPIC,
            plan.queues(),
            plan.queues(),
            Perm::READ_WRITE,
        )
        .unwrap();
    store
        .create_topic(REAL, REAL_QUEUES, REAL_QUEUES, Perm::READ_WRITE)
        .unwrap();
    let mut waiting = HashMap::new();
    let now = now_ms();
    for m in minutes {
        let start = m * SLOT_MS;
        let span = (now - start).clamp(0, SLOT_MS - 1);
        let slot = plan.slot_queue(m);
        // Put order: a permutation of due order (7 is prime to the counts used).
        let mut batch = Vec::new();
        for i in 0..per_minute {
            let j = (i * 7) % per_minute;
            let due = start + span * j as i64 / per_minute as i64;
            let real_queue = (j % REAL_QUEUES as u64) as u32;
            let body = format!("{m}-{j}");
            let mut msg = MessageInput::new(SCHEDULE_TOPIC, slot, body.clone());
            msg.properties.push((PROP_REAL_TOPIC.into(), REAL.into()));
            msg.properties
                .push((PROP_REAL_QUEUE.into(), real_queue.to_string()));
            msg.properties.push((PROP_DUE.into(), due.to_string()));
            batch.push((
                msg,
                body,
                Waiting {
                    slot,
                    offset: 0,
                    due,
                    real_queue,
                },
            ));
        }
        for chunk in batch.chunks(500) {
            let msgs = chunk.iter().map(|(m, _, _)| m.clone()).collect();
            let results = futures_lite::future::block_on(store.put_messages(msgs)).unwrap();
            for ((_, body, w), r) in chunk.iter().zip(results) {
                let w = Waiting {
                    offset: r.queue_offset.unwrap(),
                    ..w.clone()
                };
                waiting.insert(body.clone(), w);
            }
        }
    }
    futures_lite::future::block_on(store.shutdown()).unwrap();
    (max_delay_ms, plan, first, waiting)
}

/// Every copy in the real topic, per real queue in queue order: bodies.
fn delivered(store: &Store) -> Vec<Vec<String>> {
    (0..REAL_QUEUES)
        .map(|q| common::queue_bodies(store, REAL, q))
        .collect()
}

fn count(d: &[Vec<String>]) -> usize {
    d.iter().map(Vec::len).sum()
}

fn distinct(d: &[Vec<String>]) -> usize {
    d.iter()
        .flatten()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Waits until at least `want` different messages are in the real topic.
fn wait_for(store: &Store, want: usize, within: Duration) -> Vec<Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let d = delivered(store);
        if distinct(&d) >= want {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} delivered",
            distinct(&d)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exact_times_on_both_shards_arrive_once_in_due_order_and_honour_the_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (max_delay, plan, first, waiting) = lay_down(dir.path(), 300);
    // The persisted progress: the first minute's slot delivered below offset 50, the third's
    // at offsets 10..20 and 100..150; the wheel resumes at the first minute.
    let mut progress = Progress {
        minute: first,
        ..Progress::default()
    };
    progress.slots.insert(plan.slot_queue(first), 50);
    let third = plan.slot_queue(first + 2);
    for o in (10..20).chain(100..150) {
        progress.mark_slot(third, o);
    }
    progress.save(dir.path()).unwrap();
    let covered = |w: &Waiting| progress.slot_done(w.slot, w.offset);
    let want = waiting.values().filter(|w| !covered(w)).count();
    assert_eq!(want, waiting.len() - 50 - 60);

    let store = Store::open(cfg(dir.path(), true, max_delay)).unwrap();
    let got = wait_for(&store, want, Duration::from_secs(60));
    // A moment for anything that should not come.
    std::thread::sleep(Duration::from_millis(500));
    let got_after = delivered(&store);
    assert_eq!(got, got_after, "nothing more arrives");
    let mut seen = HashMap::new();
    for (q, bodies) in got.iter().enumerate() {
        let mut last_due = i64::MIN;
        for body in bodies {
            let w = &waiting[body];
            assert!(!covered(w), "{body} was covered by the progress: {w:?}");
            assert_eq!(w.real_queue, q as u32, "{body} in the wrong queue");
            assert!(
                w.due >= last_due,
                "queue {q}: {body} due {} after one due {last_due}",
                w.due
            );
            last_due = w.due;
            *seen.entry(body.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), want, "every uncovered message delivered");
    assert!(seen.values().all(|&n| n == 1), "each once");
    futures_lite::future::block_on(store.shutdown()).unwrap();

    // A restart delivers nothing again: the progress persisted at shutdown covers it all.
    let store = Store::open(cfg(dir.path(), true, max_delay)).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(delivered(&store), got_after, "nothing delivered twice");
    futures_lite::future::block_on(store.shutdown()).unwrap();
}

#[test]
fn a_crash_during_a_backlog_on_both_shards_loses_nothing_and_repeats_only_unpersisted() {
    let dir = tempfile::tempdir().unwrap();
    let (max_delay, plan, first, waiting) = lay_down(dir.path(), 10_000);
    Progress {
        minute: first,
        ..Progress::default()
    }
    .save(dir.path())
    .unwrap();
    let total = waiting.len();
    let store = Store::open(cfg(dir.path(), true, max_delay)).unwrap();
    // Crash (drop without a shutdown) once a persisted progress (every 100 ms) says
    // something was delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = Progress::load(dir.path()).unwrap_or_default();
        if p.slots.values().any(|&o| o > 0) || !p.done.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no progress persisted");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(store);
    // The store's directory lock is released once its last task is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match Store::open(cfg(dir.path(), false, max_delay)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot reopen: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let before = delivered(&store);
    futures_lite::future::block_on(store.shutdown()).unwrap();
    let progress = Progress::load(dir.path()).unwrap();
    let covered = |w: &Waiting| progress.slot_done(w.slot, w.offset);
    // (On a fast machine the whole backlog may go before the crash: then only the restart's
    // "nothing lost, nothing covered repeated" is checked.)
    eprintln!("{} of {total} delivered before the crash", count(&before));
    // What was persisted was delivered.
    let before_set: std::collections::HashSet<&String> = before.iter().flatten().collect();
    for (body, w) in &waiting {
        if covered(w) {
            assert!(
                before_set.contains(body),
                "{body} persisted as delivered but not"
            );
        }
    }

    let store = Store::open(cfg(dir.path(), true, max_delay)).unwrap();
    let got = wait_for(&store, total, Duration::from_secs(60));
    let mut times: HashMap<&String, u32> = HashMap::new();
    for body in got.iter().flatten() {
        *times.entry(body).or_insert(0) += 1;
    }
    assert_eq!(times.len(), total, "every message delivered");
    let mut duplicates = 0;
    for (body, n) in times {
        if n > 1 {
            duplicates += 1;
            let w = &waiting[body];
            assert!(
                !covered(w),
                "{body} delivered {n} times though the persisted progress covered it"
            );
        }
    }
    eprintln!(
        "{duplicates} duplicates of {total}, all past the persisted progress; slots {:?}",
        (first..first + MINUTES)
            .map(|m| plan.slot_queue(m))
            .collect::<Vec<_>>()
    );
    futures_lite::future::block_on(store.shutdown()).unwrap();
}
