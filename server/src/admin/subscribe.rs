//! `admin subscribe`: joins a consumer group with a push consumer and prints one JSON line
//! per message and per change of the queues it consumes, until SIGTERM or SIGINT, when it
//! shuts down gracefully (finishes what it consumes, commits, leaves the group).
//!
//! Lines: `{"event":"assigned","queues":["T@broker-a#0",...]}`,
//! `{"event":"message","topic":..,"broker":..,"queue":..,"offset":..,"msg_id":..,
//! "reconsume_times":..,"body":..}` (body as lossy UTF-8), and `{"event":"stopped"}` last.
//! Each line is flushed before the message counts as consumed, so a line printed is a
//! message delivered.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use shardmq_client::consumer::push::{ConsumeContext, ConsumeFrom, MessageModel, PushConsumer};
use shardmq_client::{ConsumeStatus, OrderlyStatus, WireMessage};

#[derive(Args)]
pub struct SubscribeArgs {
    #[arg(long)]
    group: String,
    #[arg(long)]
    topic: String,
    /// Tag expression: `*` or `TagA || TagB`.
    #[arg(long, default_value = "*")]
    expr: String,
    /// Every member gets every message (offsets kept locally).
    #[arg(long)]
    broadcast: bool,
    /// Consume each queue in order, one message at a time, holding its lock.
    #[arg(long)]
    orderly: bool,
    /// A group without committed offsets starts at each queue's first message.
    #[arg(long)]
    from_beginning: bool,
    /// Answer RECONSUME_LATER for every message (to exercise retries).
    #[arg(long)]
    fail: bool,
    /// Rebalance this often (ms) besides on membership changes.
    #[arg(long, default_value_t = 20_000)]
    rebalance_ms: u64,
    /// Commit offsets this often (ms).
    #[arg(long, default_value_t = 5_000)]
    commit_ms: u64,
    #[arg(long, default_value_t = 16)]
    max_reconsume: u32,
    /// The member's id (default: host@pid@n).
    #[arg(long)]
    client_id: Option<String>,
}

fn line(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not panic the listener; the message then counts as consumed.
    let _ = writeln!(out, "{v}").and_then(|()| out.flush());
}

fn print(m: &WireMessage, ctx: &ConsumeContext) {
    line(serde_json::json!({
        "event": "message",
        "topic": m.topic,
        "broker": ctx.queue.broker_name,
        "queue": m.queue_id,
        "offset": m.queue_offset,
        "msg_id": m.msg_id,
        "reconsume_times": m.reconsume_times,
        "body": String::from_utf8_lossy(&m.body),
    }));
}

pub fn run(namesrv: &str, a: SubscribeArgs) -> Result<(), String> {
    let mut b = PushConsumer::builder()
        .namesrv_addr(namesrv)
        .group(&a.group)
        .subscribe(&a.topic, &a.expr)
        .model(if a.broadcast {
            MessageModel::Broadcasting
        } else {
            MessageModel::Clustering
        })
        .consume_from(if a.from_beginning {
            ConsumeFrom::FirstOffset
        } else {
            ConsumeFrom::LastOffset
        })
        .rebalance_interval(Duration::from_millis(a.rebalance_ms.max(1)))
        .commit_interval(Duration::from_millis(a.commit_ms.max(1)))
        .max_reconsume_times(a.max_reconsume);
    if let Some(id) = &a.client_id {
        b = b.client_id(id);
    }
    let fail = a.fail;
    b = if a.orderly {
        b.listener_orderly(move |msgs, ctx| {
            msgs.iter().for_each(|m| print(m, ctx));
            if fail {
                OrderlyStatus::SuspendCurrentQueueAMoment
            } else {
                OrderlyStatus::Success
            }
        })
    } else {
        b.listener_concurrently(move |msgs, ctx| {
            msgs.iter().for_each(|m| print(m, ctx));
            if fail {
                ConsumeStatus::ReconsumeLater
            } else {
                ConsumeStatus::Success
            }
        })
    };
    let consumer = Arc::new(b.build().map_err(|e| e.to_string())?);
    consumer.start().map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, done) = (consumer.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = None;
            while !done.load(Ordering::Acquire) {
                let now = c.wait_for_assignment(Duration::from_millis(200), |q| {
                    last.as_deref() != Some(q)
                });
                if last.as_ref() != Some(&now) {
                    let names: Vec<String> = now.iter().map(ToString::to_string).collect();
                    line(serde_json::json!({"event": "assigned", "queues": names}));
                    last = Some(now);
                }
            }
        })
    };
    crate::wait_for_signal()?;
    consumer.shutdown();
    done.store(true, Ordering::Release);
    let _ = watcher.join();
    line(serde_json::json!({"event": "stopped"}));
    Ok(())
}
