//! Sends messages to a topic and prints where each was stored.
//!
//! `cargo run -p shardmq-client --example producer -- <namesrv host:port[;host:port]> <topic> [count]`

use std::process::ExitCode;

use shardmq_client::{Message, Producer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(namesrv), Some(topic)) = (args.first(), args.get(1)) else {
        eprintln!("usage: producer <namesrv host:port[;host:port]> <topic> [count]");
        return ExitCode::from(2);
    };
    let count: u32 = match args.get(2).map(|c| c.parse()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("count: {e}");
            return ExitCode::from(2);
        }
    };
    match run(namesrv, topic, count) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(namesrv: &str, topic: &str, count: u32) -> Result<(), shardmq_client::ClientError> {
    let producer = Producer::builder()
        .namesrv_addr(namesrv)
        .group("example-producer")
        .build()?;
    producer.start()?;
    for i in 0..count {
        let msg = Message::new(topic, format!("hello {i}"))
            .with_tags("TagA")
            .with_key(format!("key-{i}"));
        let r = producer.send(msg)?;
        println!(
            "sent {} -> {} queue {} offset {} (msg id {})",
            r.unique_id, r.broker_name, r.queue_id, r.queue_offset, r.msg_id
        );
    }
    producer.shutdown();
    Ok(())
}
