//! Embed the engine: open a store, append from a plain thread and from tasks running on the
//! shards (the fast path), read records back, shut down cleanly.
//!
//! ```text
//! cargo run --release -p shardmq-engine --example embed -- ./shardmq-data sync
//! ```

use std::time::Instant;

use shardmq_engine::{FlushMode, MessageInput, Store, StoreConfig};

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

    // From an ordinary thread: blocking puts, routed to the shard owning the queue.
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

    // On the shards: 32 tasks per shard appending 1 KiB messages into their own shard's log.
    let per_task = 2_000u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for shard in 0..store.shards() {
        for t in 0..32u32 {
            let s = store.clone();
            tasks.push(store.spawn_on(shard, move || async move {
                for i in 0..per_task {
                    let m = MessageInput::new("bench", t % 8, vec![b'x'; 1024])
                        .with_keys(i.to_string());
                    s.put_message(m).await?;
                }
                Ok::<_, shardmq_engine::PutError>(())
            }));
        }
    }
    let n = tasks.len() as u64 * per_task;
    for t in tasks {
        futures_lite::future::block_on(t).ok_or("shard stopped")??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} puts of 1 KiB in {secs:.2}s: {:.0} msgs/s",
        n as f64 / secs
    );
    futures_lite::future::block_on(store.shutdown())?;
    println!("shut down cleanly");
    Ok(())
}
