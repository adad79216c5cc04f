//! The worker pool: a fixed number of threads calling the listener. A concurrent batch that
//! fails is sent back to the broker message by message (to the group's retry topic, or its
//! dead-letter topic past the limit); a message whose send-back fails is handed back to the
//! driver to be consumed again here. Orderly batches only report success or failure: the
//! driver decides what comes next.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::broker::BrokerCalls;
use super::config::PushConfig;
use super::driver::{Event, Outcome};
use super::listener::{as_sent, ConsumeContext, Listener};
use super::MessageModel;
use crate::consumer::pull::PullConsumer;
use crate::route::MessageQueue;
use crate::WireMessage;

/// A batch for the listener.
pub struct Work {
    pub mq: MessageQueue,
    pub gen: u64,
    pub msgs: Vec<WireMessage>,
}

pub fn start(
    cfg: &Arc<PushConfig>,
    listener: &Listener,
    api: &Arc<PullConsumer>,
    events: &flume::Sender<Event>,
    work: &flume::Receiver<Work>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..cfg.consume_threads)
        .map(|i| {
            let (cfg, listener, api, events, work) = (
                Arc::clone(cfg),
                listener.clone(),
                Arc::clone(api),
                events.clone(),
                work.clone(),
            );
            std::thread::Builder::new()
                .name(format!("shardmq-consume-{i}"))
                .spawn(move || {
                    while let Ok(w) = work.recv() {
                        let ev = consume(&cfg, &listener, &api, w);
                        if events.send(ev).is_err() {
                            return;
                        }
                    }
                })
        })
        .collect()
}

fn consume(cfg: &PushConfig, listener: &Listener, api: &PullConsumer, w: Work) -> Event {
    let ctx = ConsumeContext {
        queue: w.mq.clone(),
    };
    let shown: Vec<WireMessage> = w.msgs.iter().cloned().map(as_sent).collect();
    let ok = listener.call(&shown, &ctx);
    let outcome = if listener.is_orderly() {
        Outcome::Orderly { ok, batch: w.msgs }
    } else if ok || cfg.model == MessageModel::Broadcasting {
        if !ok {
            // Every member has its own copy: there is no group retry topic to send it to.
            tracing::warn!(queue = %w.mq, count = w.msgs.len(), "broadcast messages failed; dropped");
        }
        Outcome::Concurrent {
            done: w.msgs.iter().map(|m| m.queue_offset).collect(),
            retry: Vec::new(),
        }
    } else {
        send_back(cfg, api, &w.mq, w.msgs)
    };
    Event::Consumed {
        mq: w.mq,
        gen: w.gen,
        outcome,
    }
}

/// Sends each failed message back to the broker; those that cannot go are consumed again
/// here.
fn send_back(
    cfg: &PushConfig,
    api: &PullConsumer,
    mq: &MessageQueue,
    msgs: Vec<WireMessage>,
) -> Outcome {
    let calls = BrokerCalls::of(api);
    let addr = api.master_of(mq).map_err(|e| e.to_string());
    let (mut done, mut retry) = (Vec::new(), Vec::new());
    for mut m in msgs {
        let sent = addr.clone().and_then(|addr| {
            calls
                .send_back(
                    &addr,
                    &cfg.group,
                    &m.msg_id,
                    m.reconsume_times,
                    cfg.max_reconsume_times,
                )
                .map_err(|e| e.to_string())
        });
        match sent {
            Ok(()) => done.push(m.queue_offset),
            Err(e) => {
                tracing::warn!(queue = %mq, offset = m.queue_offset, error = %e,
                    "cannot send a failed message back; consuming it again here");
                m.reconsume_times += 1;
                retry.push(m);
            }
        }
    }
    Outcome::Concurrent { done, retry }
}
