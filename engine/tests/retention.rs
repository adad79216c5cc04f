//! Retention and disk guards, driven through an injectable disk-usage probe (plus one coarse
//! check against the real file system).

mod common;

use std::sync::Arc;

use common::config;
use shardmq_engine::{
    FixedProbe, FlushMode, GetRequest, GetStatus, MessageInput, ProbeHandle, PutError, ReadError,
    RetentionConfig, StatvfsProbe, Store, StoreConfig, TagFilter, UsageProbe,
};

fn get(store: &Store, offset: u64) -> shardmq_engine::GetResult {
    let req = GetRequest {
        group: "g".into(),
        topic: "r".into(),
        queue_id: 0,
        offset,
        max_messages: 1,
        max_bytes: 1 << 20,
        filter: TagFilter::parse("*"),
    };
    futures_lite::future::block_on(store.get_message(req)).unwrap()
}

fn body(i: u64) -> Vec<u8> {
    let mut b = format!("message {i:08} ").into_bytes();
    b.resize(1000, b'.');
    b
}

#[test]
fn oldest_segments_go_above_the_warn_ratio_and_puts_stop_above_the_refuse_ratio() {
    retention_and_guards(0);
}

#[test]
fn retention_drops_queue_entries_moved_to_the_cold_file() {
    // Most of the queue's entries move out of memory before retention runs.
    retention_and_guards(300);
}

fn retention_and_guards(queue_entries_in_memory_max: usize) {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(FixedProbe::with_ratio(0.50));
    let store = Store::open(StoreConfig {
        usage_probe: Some(ProbeHandle(probe.clone())),
        queue_entries_in_memory_max,
        retention: RetentionConfig {
            // Passes run when the test says (`clean_now`), not on a timer.
            interval_ms: 3_600_000,
            ..RetentionConfig::default()
        },
        ..config(dir.path(), 2, FlushMode::Async)
    })
    .unwrap();
    // About 2 MB into one queue: eight 256 KiB segments on the shard it lives on.
    let n = 2_000;
    let mut shard = 0;
    for i in 0..n {
        let r = store
            .put_message_blocking(MessageInput::new("r", 0, body(i)))
            .unwrap();
        assert_eq!(r.queue_offset, Some(i));
        shard = r.shard;
    }
    if queue_entries_in_memory_max > 0 {
        let memory = futures_lite::future::block_on(store.spill_now());
        let m = memory[store.queue_shard("r", 0)].expect("the owner answers");
        assert!(m.cold_blocks > 0 && m.entries_in_memory <= queue_entries_in_memory_max);
    }
    // Below the warn ratio nothing is expired (72 h): nothing goes.
    futures_lite::future::block_on(store.clean_now());
    assert_eq!(get(&store, 0).status, GetStatus::Found);

    // Above it, the oldest segments go at once (at most `delete_pace` per pass).
    probe.set_ratio(0.80);
    futures_lite::future::block_on(store.clean_now());
    let (min, max) = futures_lite::future::block_on(store.queue_offsets("r", 0)).unwrap();
    assert!(
        min > 0,
        "the queue's oldest entries went with their segments"
    );
    assert_eq!(max, n);
    let r = get(&store, 0);
    assert_eq!(
        (r.status, r.min_offset, r.next_begin_offset),
        (GetStatus::OffsetTooSmall, min, min)
    );
    let r = get(&store, min);
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.messages[0].message.body, body(min));
    assert!(matches!(
        store.read_message_blocking(shard, 0),
        Err(ReadError::OffsetTooSmall { min: m, .. }) if m > 0
    ));
    // The newest data is never deleted, whatever the disk says.
    for _ in 0..3 {
        futures_lite::future::block_on(store.clean_now());
    }
    let r = get(&store, n - 1);
    assert_eq!(r.messages[0].message.body, body(n - 1));

    // Above the refuse ratio puts are refused with a clear error; reads keep working.
    probe.set_ratio(0.95);
    futures_lite::future::block_on(store.clean_now());
    let refused = store.put_message_blocking(MessageInput::new("r", 0, body(n)));
    assert!(
        matches!(
            refused,
            Err(PutError::DiskFull {
                used_percent: 95,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(get(&store, n - 1).status, GetStatus::Found);
    // And accepted again once the disk has room.
    probe.set_ratio(0.50);
    futures_lite::future::block_on(store.clean_now());
    let r = store
        .put_message_blocking(MessageInput::new("r", 0, body(n)))
        .unwrap();
    assert_eq!(r.queue_offset, Some(n), "offsets continue, never reused");
    futures_lite::future::block_on(store.shutdown()).unwrap();

    // After a restart the queue still starts at the new minimum.
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    let r = get(&store, 0);
    assert_eq!(r.status, GetStatus::OffsetTooSmall);
    assert!(r.min_offset >= min);
    futures_lite::future::block_on(store.shutdown()).unwrap();
}

#[test]
fn the_real_file_system_reports_a_sane_usage() {
    let dir = tempfile::tempdir().unwrap();
    let usage = StatvfsProbe.usage(dir.path()).unwrap();
    assert!(usage.total_bytes > 0 && usage.available_bytes <= usage.total_bytes);
    let ratio = usage.ratio();
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    // A pass with the real probe: puts go on unless this disk really is that full.
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    futures_lite::future::block_on(store.clean_now());
    let put = store.put_message_blocking(MessageInput::new("r", 0, "x"));
    if ratio < RetentionConfig::default().disk_refuse_ratio {
        put.unwrap();
    } else {
        assert!(matches!(put, Err(PutError::DiskFull { .. })));
    }
    futures_lite::future::block_on(store.shutdown()).unwrap();
}

/// Names of shard `shard`'s ConsumeQueue log segments, oldest first.
fn cq_segments(dir: &std::path::Path, shard: usize) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("consumequeue").join(shard.to_string()))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.len() == 20)
        .collect();
    out.sort();
    out
}

#[test]
fn consume_queue_segments_go_once_their_messages_did_and_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(FixedProbe::with_ratio(0.50));
    let cfg = StoreConfig {
        usage_probe: Some(ProbeHandle(probe.clone())),
        // Small log segments: a few hundred entries each.
        consume_queue_segment_bytes: 64 << 10,
        retention: RetentionConfig {
            interval_ms: 3_600_000,
            ..RetentionConfig::default()
        },
        ..config(dir.path(), 2, FlushMode::Sync)
    };
    let store = Store::open(cfg.clone()).unwrap();
    // Two queues of one owner: their records share its CommitLog, so retention takes the
    // idle queue's with the oldest segments.
    let owner = store.queue_shard("r", 0);
    let idle = (1..8)
        .find(|&q| store.queue_shard("r", q) == owner)
        .unwrap();
    let put = |queue: u32, i: u64| {
        store
            .put_message_blocking(MessageInput::new("r", queue, body(i)))
            .unwrap()
            .queue_offset
            .unwrap()
    };
    // The idle queue gets 200 messages first and then nothing: all its entries will go.
    for i in 0..200 {
        assert_eq!(put(idle, i), i);
    }
    let n = 5_000;
    for i in 0..n {
        assert_eq!(put(0, i), i);
    }
    let before = cq_segments(dir.path(), owner);
    // Above the warn ratio the oldest CommitLog segments go, a few per pass, and with them
    // the ConsumeQueue log segments whose entries all pointed into them.
    probe.set_ratio(0.80);
    for _ in 0..20 {
        futures_lite::future::block_on(store.clean_now());
    }
    let after = cq_segments(dir.path(), owner);
    assert!(
        after.first() > before.first() && after.len() < before.len(),
        "oldest ConsumeQueue segments deleted: {before:?} -> {after:?}"
    );
    let (min0, max0) = futures_lite::future::block_on(store.queue_offsets("r", 0)).unwrap();
    assert!(min0 > 0 && max0 == n);
    assert_eq!(
        futures_lite::future::block_on(store.queue_offsets("r", idle)),
        Some((200, 200)),
        "the idle queue's messages all went"
    );
    futures_lite::future::block_on(store.shutdown()).unwrap();

    // Reopened from what is left: the idle queue continues at 200, never at 0 again, and
    // queue 0 keeps its minimum and every message above it.
    probe.set_ratio(0.50);
    let store = Store::open(cfg).unwrap();
    assert_eq!(
        futures_lite::future::block_on(store.queue_offsets("r", idle)),
        Some((200, 200))
    );
    let (min0_again, max0_again) =
        futures_lite::future::block_on(store.queue_offsets("r", 0)).unwrap();
    assert_eq!(max0_again, n);
    assert!(
        min0_again <= min0 + 1 && min0_again > 0,
        "{min0_again} vs {min0}"
    );
    let first = get(&store, min0);
    assert_eq!(first.messages[0].message.body, body(min0));
    let r = store
        .put_message_blocking(MessageInput::new("r", idle, body(200)))
        .unwrap();
    assert_eq!(r.queue_offset, Some(200), "offsets are never reused");
    futures_lite::future::block_on(store.shutdown()).unwrap();
}

/// Puts `bodies` to queue ("mixed", 0) from shard `shard`'s own thread, so their records go to
/// that shard's CommitLog whichever shard owns the queue; returns their queue offsets.
fn put_from(store: &Store, shard: usize, bodies: std::ops::Range<u64>) -> Vec<u64> {
    let s = store.clone();
    let task = store.spawn_on(shard, move || async move {
        let mut offsets = Vec::new();
        for i in bodies {
            let r = s
                .put_message(MessageInput::new("mixed", 0, body(i)))
                .await
                .unwrap();
            assert_eq!(r.shard, shard, "appended where it was put");
            offsets.push(r.queue_offset.unwrap());
        }
        offsets
    });
    futures_lite::future::block_on(task).unwrap()
}

#[test]
fn a_queue_whose_records_one_shard_deleted_moves_the_reader_on_instead_of_failing() {
    // A queue holds records of both shards. Retention deletes shard 0's old segments but
    // none of shard 1's, so the queue's minimum stops at shard 1's live entry, and entries
    // of shard 0 past it point at deleted records.
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(FixedProbe::with_ratio(0.50));
    let store = Store::open(StoreConfig {
        usage_probe: Some(ProbeHandle(probe.clone())),
        ..config(dir.path(), 2, FlushMode::Async)
    })
    .unwrap();
    let first = put_from(&store, 0, 0..600);
    let live = put_from(&store, 1, 600..601)[0];
    let after = put_from(&store, 0, 601..1200);
    assert_eq!((first[0], live, after[0]), (0, 600, 601));
    probe.set_ratio(0.80);
    for _ in 0..10 {
        futures_lite::future::block_on(store.clean_now());
    }
    let get = |offset: u64, max_messages: u32| {
        let req = GetRequest {
            group: "g".into(),
            topic: "mixed".into(),
            queue_id: 0,
            offset,
            max_messages,
            max_bytes: 1 << 20,
            filter: TagFilter::parse("*"),
        };
        futures_lite::future::block_on(store.get_message(req)).unwrap()
    };
    let (min, _) = futures_lite::future::block_on(store.queue_offsets("mixed", 0)).unwrap();
    assert_eq!(min, live, "the minimum stops at shard 1's live entry");
    // From the live entry: it, and the answer ends at the first deleted record.
    let r = get(live, 10);
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].message.body, body(600));
    assert_eq!(r.next_begin_offset, live + 1);
    // At a deleted record: OFFSET_TOO_SMALL with the first live offset after the run.
    let r = get(live + 1, 10);
    assert_eq!(r.status, GetStatus::OffsetTooSmall, "{r:?}");
    let resume = r.next_begin_offset;
    assert!(resume > live + 1 && resume < 1200, "{resume}");
    let r = get(resume, 1);
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.messages[0].message.body, body(resume));
    // Shard 0's first records are really gone.
    assert!(matches!(
        store.read_message_blocking(0, 0),
        Err(ReadError::OffsetTooSmall { .. })
    ));
    futures_lite::future::block_on(store.shutdown()).unwrap();
}
