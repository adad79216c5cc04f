//! Reads every queue of a topic from the group's committed offset (or the queue's start),
//! prints the messages, and commits how far it got.
//!
//! `cargo run -p shardmq-client --example pull_consumer -- <namesrv host:port[;host:port]> <topic> [group]`

use std::process::ExitCode;
use std::time::Duration;

use shardmq_client::{PullConsumer, PullStatus};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(namesrv), Some(topic)) = (args.first(), args.get(1)) else {
        eprintln!("usage: pull_consumer <namesrv host:port[;host:port]> <topic> [group]");
        return ExitCode::from(2);
    };
    let group = args.get(2).map_or("example-consumer", String::as_str);
    match run(namesrv, topic, group) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(namesrv: &str, topic: &str, group: &str) -> Result<(), shardmq_client::ClientError> {
    let consumer = PullConsumer::builder()
        .namesrv_addr(namesrv)
        .group(group)
        .build()?;
    consumer.start()?;
    for queue in consumer.queues(topic)? {
        let mut offset = match consumer.committed_offset(&queue)? {
            Some(o) => o,
            None => consumer.min_offset(&queue)?,
        };
        loop {
            let r = consumer.pull(&queue, offset, 32, Duration::from_millis(500))?;
            for m in &r.messages {
                println!(
                    "{queue} offset {}: tags {:?} keys {:?} body {:?}",
                    m.queue_offset,
                    m.tags,
                    m.keys,
                    String::from_utf8_lossy(&m.body)
                );
            }
            offset = r.next_offset;
            match r.status {
                PullStatus::Found | PullStatus::RetryImmediately | PullStatus::OffsetMoved => {}
                PullStatus::NotFound => break,
            }
        }
        consumer.commit_offset(&queue, offset)?;
        println!("{queue}: committed offset {offset}");
    }
    consumer.shutdown();
    Ok(())
}
