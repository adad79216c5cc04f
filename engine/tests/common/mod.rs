//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::Path;

use shardmq_engine::{
    FlushMode, GetRequest, GetStatus, MessageInput, Store, StoreConfig, TagFilter,
};

/// A small-footprint config for tests: small segments and chunks, little locked memory (many
/// stores run at once and share the per-user memlock limit).
pub fn config(dir: &Path, shards: usize, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        shards: Some(shards),
        segment_size_bytes: 256 << 10,
        flush_mode: flush,
        message_size_max_bytes: 64 << 10,
        write_buffer_max_bytes: 4 << 20,
        write_chunk_bytes: 64 << 10,
        io_memory_bytes: Some(256 << 10),
        pin_shards: false,
        checkpoint_interval_ms: 50,
        flush_interval_ms: 20,
        // Retention acts on the real disk's fill level: tests that do not test it must not
        // lose data to it on a full CI disk. (tests/retention.rs sets its own.)
        retention: shardmq_engine::RetentionConfig {
            interval_ms: 3_600_000,
            ..Default::default()
        },
        ..StoreConfig::new(dir)
    }
}

/// A message whose body is a deterministic function of (writer, seq, len).
pub fn message(writer: u32, seq: u64, len: usize) -> MessageInput {
    MessageInput::new(
        format!("topic-{}", writer % 3),
        writer % 4,
        body(writer, seq, len),
    )
    .with_tags(format!("w{writer}"))
    .with_keys(format!("{writer}-{seq}"))
}

pub fn body(writer: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut x = (writer as u64) << 40 ^ seq ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A get of up to `max` messages (1 MiB at most) of `(topic, queue)` from `offset` through
/// the tag filter expression `filter`.
pub fn get_request(topic: &str, queue_id: u32, offset: u64, max: u32, filter: &str) -> GetRequest {
    GetRequest {
        group: "g".into(),
        topic: topic.into(),
        queue_id,
        offset,
        max_messages: max,
        max_bytes: 1 << 20,
        filter: TagFilter::parse(filter),
    }
}

/// Every body stored in `(topic, queue)`, in queue order, as text (read from a thread outside
/// the store's executors).
pub fn queue_bodies(store: &Store, topic: &str, queue_id: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = futures_lite::future::block_on(store.get_message(GetRequest {
            group: "check".into(),
            topic: topic.into(),
            queue_id,
            offset,
            max_messages: 1024,
            max_bytes: 8 << 20,
            filter: TagFilter::All,
        }))
        .unwrap();
        if r.status != GetStatus::Found {
            return out;
        }
        for m in r.messages {
            out.push(String::from_utf8(m.message.body.to_vec()).unwrap());
            offset = m.queue_offset + 1;
        }
    }
}
