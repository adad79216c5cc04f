//! Embed the engine: open a store, put a message and read it back, then append 1 KiB
//! messages four ways and print each rate, and shut down cleanly.
//!
//! ```text
//! cargo run --release -p shardmq-engine --example embed -- ./shardmq-data [async|sync]
//! ```
//!
//! The four ways, slowest first (it is the one that looks natural):
//! 1. `put_message_blocking` from a plain thread, one put at a time. Each put hops to the
//!    shard owning its queue, waits for its write (its fdatasync under SYNC_FLUSH) and hops
//!    back before the next starts: one put in flight, so the rate is 1 / latency.
//! 2. The same loop with `put_messages`, 64 messages per call: one hop, one write wait and
//!    one answer per batch. Costs: a batch is stored contiguously on one shard and succeeds
//!    or fails as a whole; batch what goes to one queue.
//! 3. `put_message` from the same plain thread with many puts in flight: the call appends
//!    (queues the put to its shard, in call order) and returns a future at once; awaiting
//!    only the oldest once `WINDOW` are out lets one write, or one fdatasync, serve them
//!    all. Costs: still a hop per put, and memory for the window (past
//!    `write_buffer_max_bytes` pending on a shard, puts are refused with `Busy`).
//! 4. The same code run *on* the shards (`spawn_on`), each task putting to the queues its
//!    shard owns (`queue_shard`): no hop at all, the put appends in the calling task. This
//!    is how the broker and `shardmq-bench engine` reach their rates. Costs: the task runs
//!    in the shard's executor, so it must never block (no `put_message_blocking`, no
//!    blocking I/O) and it shares the core with the store.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::future::block_on;
use shardmq_engine::{FlushMode, MessageInput, PutError, Store, StoreConfig};

const TOPIC: &str = "bench";
/// Queues of `TOPIC` (a topic created by its first put gets 8).
const QUEUES: u32 = 8;
/// Puts kept in flight by each pipelined producer (ways 3 and 4).
const WINDOW: usize = 256;
/// Messages per `put_messages` call (way 2).
const BATCH: u64 = 64;
/// Puts of each fast way.
const FAST: u64 = 256_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "shardmq-data".into());
    let flush: FlushMode = args.next().as_deref().unwrap_or("async").parse()?;
    let store = Store::open(StoreConfig {
        flush_mode: flush,
        ..StoreConfig::new(&dir)
    })?;
    println!("opened {dir} with {} shards ({flush:?})", store.shards());
    for r in store.recovery_reports() {
        println!(
            "  shard {}: log ends at {}, cut: {:?}",
            r.shard, r.end_offset, r.cut
        );
    }

    let put = store.put_message_blocking(
        MessageInput::new("orders", 0, "order #1")
            .with_tags("created")
            .with_keys("order-1"),
    )?;
    let back = store.read_message_blocking(put.shard, put.offset)?;
    println!(
        "put {put:?}\nread back {:?} tags={:?}",
        String::from_utf8_lossy(&back.body),
        back.tags()
    );

    let body = Bytes::from(vec![b'x'; 1024]);
    let all: Vec<u32> = (0..QUEUES).collect();

    // 1. One blocking put at a time (fewer under SYNC_FLUSH: each waits for an fdatasync).
    let slow = if flush == FlushMode::Sync {
        500
    } else {
        10_000
    };
    let start = Instant::now();
    for i in 0..slow {
        store.put_message_blocking(MessageInput::new(TOPIC, i as u32 % QUEUES, body.clone()))?;
    }
    report("1. put_message_blocking, one at a time", slow, start);

    // 2. One blocking batch at a time.
    let start = Instant::now();
    for b in 0..FAST / BATCH {
        let queue = b as u32 % QUEUES;
        let batch = (0..BATCH)
            .map(|_| MessageInput::new(TOPIC, queue, body.clone()))
            .collect();
        block_on(store.put_messages(batch))?;
    }
    report("2. put_messages, 64 a call, one at a time", FAST, start);

    // 3. Many puts in flight from this thread.
    let start = Instant::now();
    block_on(pipelined(store.clone(), FAST, all.clone(), body.clone()))?;
    report("3. put_message, 256 in flight, this thread", FAST, start);

    // 4. The same on every shard: 8 tasks per shard, each to the queues its shard owns.
    let tasks_per_shard = 8;
    let per_task = FAST / (store.shards() as u64 * tasks_per_shard);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for shard in 0..store.shards() {
        let mut owned: Vec<u32> = (0..QUEUES)
            .filter(|&q| store.queue_shard(TOPIC, q) == shard)
            .collect();
        if owned.is_empty() {
            // This shard owns none of the queues: its tasks hop like way 3.
            owned = all.clone();
        }
        for _ in 0..tasks_per_shard {
            let (s, queues) = (store.clone(), owned.clone());
            // A body per task: one shared by every core would bounce its reference count
            // between them on each put.
            let body = Bytes::copy_from_slice(&body);
            tasks.push(store.spawn_on(shard, move || pipelined(s, per_task, queues, body)));
        }
    }
    let n = tasks.len() as u64 * per_task;
    for t in tasks {
        block_on(t).ok_or("a shard stopped")??;
    }
    report("4. put_message, 256 in flight, on the shards", n, start);

    block_on(store.shutdown())?;
    println!("shut down cleanly");
    Ok(())
}

/// Puts `n` messages round robin over `queues`, keeping up to `WINDOW` in flight and
/// awaiting the oldest first. Where it runs decides what a put costs (ways 3 and 4).
async fn pipelined(store: Store, n: u64, queues: Vec<u32>, body: Bytes) -> Result<(), PutError> {
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if in_flight.len() == WINDOW {
            if let Some(oldest) = in_flight.pop_front() {
                oldest.await?;
            }
        }
        let queue = queues[i as usize % queues.len()];
        in_flight.push_back(store.put_message(MessageInput::new(TOPIC, queue, body.clone())));
    }
    for put in in_flight {
        put.await?;
    }
    Ok(())
}

fn report(what: &str, n: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what:<46} {n:>7} puts of 1 KiB in {secs:5.2}s: {:>7.0} msgs/s",
        n as f64 / secs
    );
}
