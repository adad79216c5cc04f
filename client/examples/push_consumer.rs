//! Joins a consumer group with a push consumer, prints every message, and leaves the group
//! cleanly after a number of messages (default: runs for 60 s).
//!
//! `cargo run -p shardmq-client --example push_consumer -- <namesrv host:port[;host:port]> <topic> [group] [count]`

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardmq_client::{ConsumeFrom, ConsumeStatus, PushConsumer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(namesrv), Some(topic)) = (args.first(), args.get(1)) else {
        eprintln!("usage: push_consumer <namesrv host:port[;host:port]> <topic> [group] [count]");
        return ExitCode::from(2);
    };
    let group = args.get(2).map_or("example-push-consumer", String::as_str);
    let count: Option<u64> = args.get(3).and_then(|c| c.parse().ok());
    match run(namesrv, topic, group, count) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    namesrv: &str,
    topic: &str,
    group: &str,
    count: Option<u64>,
) -> Result<(), shardmq_client::ClientError> {
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let consumer = PushConsumer::builder()
        .namesrv_addr(namesrv)
        .group(group)
        .subscribe(topic, "*")
        .consume_from(ConsumeFrom::FirstOffset)
        .listener_concurrently(move |msgs, ctx| {
            for m in msgs {
                println!(
                    "{} offset={} body={}",
                    ctx.queue,
                    m.queue_offset,
                    String::from_utf8_lossy(&m.body)
                );
            }
            s.fetch_add(msgs.len() as u64, Ordering::Relaxed);
            ConsumeStatus::Success
        })
        .build()?;
    consumer.start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && count.is_none_or(|c| seen.load(Ordering::Relaxed) < c) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Finishes what is being consumed, commits, and leaves the group.
    consumer.shutdown();
    Ok(())
}
