//! Queue entries past a shard's memory budget move to its cold file and read back the same:
//! gets (with tag filters), lookups by time, a restart, and a topic delete.

mod common;

use common::{config, get_request};
use shardmq_engine::{FlushMode, GetResult, GetStatus, MessageInput, Perm, Store, StoreConfig};

const QUEUES: u32 = 4;
const PER_QUEUE: u64 = 6_000;
const BUDGET: usize = 2_000;

fn get(store: &Store, queue: u32, offset: u64, max: u32, filter: &str) -> GetResult {
    let req = get_request("cold", queue, offset, max, filter);
    futures_lite::future::block_on(store.get_message(req)).unwrap()
}

fn body(queue: u32, seq: u64) -> String {
    format!("q{queue}-{seq}")
}

/// Reads every queue from 0 and checks every message, then the `A`-tagged ones alone.
fn check_all(store: &Store, round: &str) {
    for q in 0..QUEUES {
        let mut offset = 0;
        while offset < PER_QUEUE {
            let r = get(store, q, offset, 50, "*");
            assert_eq!(r.status, GetStatus::Found, "{round}: queue {q} at {offset}");
            assert_eq!(r.messages[0].queue_offset, offset, "{round}: no gap");
            for m in &r.messages {
                assert_eq!(
                    m.message.body,
                    body(q, m.queue_offset).as_bytes(),
                    "{round}: queue {q} offset {}",
                    m.queue_offset
                );
            }
            offset = r.next_begin_offset;
        }
        let mut offset = 0;
        let mut seen = 0;
        while offset < PER_QUEUE {
            let r = get(store, q, offset, 64, "A");
            for m in &r.messages {
                assert_eq!(m.queue_offset % 2, 0, "{round}: only tag A");
                assert_eq!(m.message.body, body(q, m.queue_offset).as_bytes());
                seen += 1;
            }
            assert!(
                r.next_begin_offset > offset,
                "{round}: a filtered read moves on"
            );
            offset = r.next_begin_offset;
        }
        assert_eq!(seen, PER_QUEUE / 2, "{round}: queue {q}");
    }
}

#[test]
fn entries_past_the_budget_move_to_the_cold_file_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        queue_entries_in_memory_max: BUDGET,
        ..config(dir.path(), 2, FlushMode::Async)
    };
    let store = Store::open(cfg.clone()).unwrap();
    store
        .create_topic("cold", QUEUES, QUEUES, Perm::READ_WRITE)
        .unwrap();
    for from in (0..PER_QUEUE).step_by(100) {
        let batch: Vec<_> = (from..from + 100)
            .flat_map(|seq| {
                let tag = if seq % 2 == 0 { "A" } else { "B" };
                (0..QUEUES).map(move |q| MessageInput::new("cold", q, body(q, seq)).with_tags(tag))
            })
            .collect();
        let results = futures_lite::future::block_on(store.put_messages(batch)).unwrap();
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.queue_offset, Some(from + i as u64 / QUEUES as u64));
        }
    }
    let memory = futures_lite::future::block_on(store.spill_now());
    for (shard, m) in memory.iter().enumerate() {
        let m = m.expect("shard answers");
        let owned = (0..QUEUES)
            .filter(|&q| store.queue_shard("cold", q) == shard)
            .count();
        if owned > 0 {
            assert!(m.entries_in_memory <= BUDGET, "shard {shard}: {m:?}");
            assert!(m.cold_blocks > 0, "shard {shard}: {m:?}");
        }
    }
    check_all(&store, "spilled");

    // A lookup by time lands on the first entry at or after the time, cold or not.
    for probe in [5, 700, 3_001, PER_QUEUE - 3] {
        let at = get(&store, 1, probe, 1, "*").messages[0]
            .message
            .store_timestamp_ms;
        let found = futures_lite::future::block_on(store.offset_for_time("cold", 1, at)).unwrap();
        assert!(found <= probe, "{found} > {probe}");
        let there = get(&store, 1, found, 1, "*").messages[0]
            .message
            .store_timestamp_ms;
        assert!(there >= at);
        if found > 0 {
            let before = get(&store, 1, found - 1, 1, "*").messages[0]
                .message
                .store_timestamp_ms;
            assert!(before < at, "the first at or after the time");
        }
    }
    futures_lite::future::block_on(store.shutdown()).unwrap();

    // The cold file is rebuilt from the ConsumeQueue log at open.
    // Opening moves entries out as it reads the log: within the budget once open.
    let store = Store::open(cfg).unwrap();
    for shard in 0..store.shards() {
        let m = futures_lite::future::block_on(store.queue_memory(shard)).unwrap();
        assert!(m.entries_in_memory <= BUDGET, "shard {shard}: {m:?}");
    }
    check_all(&store, "reopened");

    // A deleted topic gives its cold blocks back.
    futures_lite::future::block_on(store.delete_topic("cold")).unwrap();
    for shard in 0..store.shards() {
        let m = futures_lite::future::block_on(store.queue_memory(shard)).unwrap();
        assert_eq!(m.cold_blocks, 0, "shard {shard}");
        assert_eq!(m.entries_in_memory, 0, "shard {shard}");
    }
    futures_lite::future::block_on(store.shutdown()).unwrap();
}
