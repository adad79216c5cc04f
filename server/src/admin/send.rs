//! `admin send`: messages to a topic through the client's [`Producer`], so the command sends
//! the way applications do: round robin over the topic's writable queues, retries on another
//! broker, and a topic that does not exist yet created by the first put and spread over all
//! its queues as soon as the broker has registered it.

use clap::Args;
use shardmq_client::{Message, Producer};

use super::{outln, AdminError, TIMEOUT};

#[derive(Args)]
pub struct SendArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    tag: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    body: String,
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Deliver after this delay level (1 = the first of the broker's levels).
    #[arg(long, default_value_t = 0)]
    delay_level: u32,
    /// Deliver at this time, ms since the epoch.
    #[arg(long)]
    deliver_at_ms: Option<i64>,
}

pub fn run(namesrv: &str, a: SendArgs) -> Result<(), AdminError> {
    let producer = Producer::builder()
        .namesrv_addr(namesrv)
        .group("shardmq-admin")
        .send_timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    producer.start().map_err(|e| e.to_string())?;
    let mut message = Message::new(a.topic.as_str(), a.body).with_delay_level(a.delay_level);
    if let Some(tag) = a.tag {
        message = message.with_tags(tag);
    }
    if let Some(key) = a.key {
        message = message.with_key(key);
    }
    if let Some(at) = a.deliver_at_ms {
        message = message.with_deliver_at_ms(at);
    }
    // One send at a time: each line reports a stored message, in send order.
    for _ in 0..a.count {
        let r = producer
            .send(message.clone())
            .map_err(|e| format!("cannot send to topic {}: {e}", a.topic))?;
        outln!(
            "msg_id={} broker={} queue={} offset={}",
            r.msg_id,
            r.broker_name,
            r.queue_id,
            r.queue_offset
        )?;
    }
    producer.shutdown();
    Ok(())
}
