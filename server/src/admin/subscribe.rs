//! `admin subscribe`: joins a consumer group with a push consumer and prints one JSON line
//! per message and per change of the queues it consumes, until SIGTERM or SIGINT, when it
//! shuts down gracefully (finishes what it consumes, commits, leaves the group).
//!
//! Lines: `{"event":"assigned","queues":["T@broker-a#0",...]}`,
//! `{"event":"message","topic":..,"broker":..,"queue":..,"offset":..,"msg_id":..,
//! "reconsume_times":..,"body":..}` (body as lossy UTF-8), and `{"event":"stopped"}` last.
//! Each line is written before the message counts as consumed, so a line printed is a
//! message delivered. When stdout's reader goes away (`| head -1`) the batch that could not
//! be printed is not consumed (reconsumed later, or the orderly queue suspended) and the
//! command stops as on a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use shardmq_client::consumer::push::{ConsumeContext, ConsumeFrom, MessageModel, PushConsumer};
use shardmq_client::{ConsumeStatus, OrderlyStatus, WireMessage};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::{outln, AdminError};

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

/// Where the command's output goes: stdout, until a line cannot be written; then the first
/// such error is kept and the wait for a signal ends, which stops the consumer.
struct Output {
    failed: Mutex<Option<AdminError>>,
    stop: Handle,
}

impl Output {
    /// Prints `v` as a line; false once stdout cannot be written (this line or an earlier one).
    fn line(&self, v: serde_json::Value) -> bool {
        let mut failed = lock(&self.failed);
        if failed.is_some() {
            return false;
        }
        match outln!("{v}") {
            Ok(()) => true,
            Err(e) => {
                *failed = Some(e);
                self.stop.close();
                false
            }
        }
    }

    /// Prints every message of a batch; false if any could not be.
    fn batch(&self, msgs: &[WireMessage], ctx: &ConsumeContext) -> bool {
        msgs.iter().all(|m| self.line(message(m, ctx)))
    }
}

/// The output still works after a listener panicked while holding the lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn message(m: &WireMessage, ctx: &ConsumeContext) -> serde_json::Value {
    serde_json::json!({
        "event": "message",
        "topic": m.topic,
        "broker": ctx.queue.broker_name,
        "queue": m.queue_id,
        "offset": m.queue_offset,
        "msg_id": m.msg_id,
        "reconsume_times": m.reconsume_times,
        "body": String::from_utf8_lossy(&m.body),
    })
}

pub fn run(namesrv: &str, a: SubscribeArgs) -> Result<(), AdminError> {
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let out = Arc::new(Output {
        failed: Mutex::new(None),
        stop: signals.handle(),
    });
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
    let o = out.clone();
    b = if a.orderly {
        b.listener_orderly(move |msgs, ctx| {
            if o.batch(msgs, ctx) && !fail {
                OrderlyStatus::Success
            } else {
                OrderlyStatus::SuspendCurrentQueueAMoment
            }
        })
    } else {
        b.listener_concurrently(move |msgs, ctx| {
            if o.batch(msgs, ctx) && !fail {
                ConsumeStatus::Success
            } else {
                ConsumeStatus::ReconsumeLater
            }
        })
    };
    let consumer = Arc::new(b.build().map_err(|e| e.to_string())?);
    consumer.start().map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, done, out) = (consumer.clone(), done.clone(), out.clone());
        std::thread::spawn(move || {
            let mut last = None;
            while !done.load(Ordering::Acquire) {
                let now = c.wait_for_assignment(Duration::from_millis(200), |q| {
                    last.as_deref() != Some(q)
                });
                if last.as_ref() != Some(&now) {
                    let names: Vec<String> = now.iter().map(ToString::to_string).collect();
                    out.line(serde_json::json!({"event": "assigned", "queues": names}));
                    last = Some(now);
                }
            }
        })
    };
    // Ends at SIGTERM or SIGINT, or when `Output` closes the handle.
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    consumer.shutdown();
    done.store(true, Ordering::Release);
    let _ = watcher.join();
    out.line(serde_json::json!({"event": "stopped"}));
    let failed = lock(&out.failed).take();
    failed.map_or(Ok(()), Err)
}
