//! The producer side of a load: one thread per producer, each keeping up to `inflight` sends
//! out through its [`Sender`], paced by a [`Pacer`] when the load has a rate.
//!
//! A producer's loop: while its window has room and the next send is due, submit it;
//! otherwise wait for a completion, but only until the next send is due (so a slow answer
//! never delays a send in a fixed-rate run: that would be coordinated omission). Each
//! completion records the latency from the send's intended time (see `pace.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::pace::{latency_ns, write_stamp, Pacer, Window};
use super::stats::{now_ns, Live, Recorder};
use crate::drivers::{Layout, Sender, Target};
use crate::error::BenchError;

/// How long a producer waits for its last sends after it stopped sending.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What one producer does.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    pub id: usize,
    pub topics: usize,
    pub size: usize,
    pub batch: usize,
    pub inflight: usize,
    pub pacer: Pacer,
    /// Which sends are measured and when to stop (`quota` counts messages).
    pub window: Window,
    /// Write the intended send time into the first 8 bytes of each body (for `e2e`).
    pub stamp: bool,
}

/// What one producer did.
#[derive(Debug)]
pub struct ProducerOutcome {
    pub recorder: Recorder,
    /// Messages acknowledged, warm-up included.
    pub acked: u64,
    /// Messages whose send failed (or never completed).
    pub errors: u64,
}

struct InFlight {
    intended_ns: u64,
    messages: u64,
}

/// Runs one producer to the end of its window and its drain.
pub fn run_producer(
    sender: &mut dyn Sender,
    plan: &ProducerPlan,
    live: Arc<Live>,
) -> ProducerOutcome {
    let payload = Bytes::from(vec![b'x'; plan.size]);
    let mut rec = Recorder::new(Arc::clone(&live));
    let mut out: HashMap<u64, InFlight> = HashMap::with_capacity(plan.inflight * 2);
    let (mut k, mut measured_sent, mut acked, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut sending = true;
    let mut drain_deadline = None;
    loop {
        let now = now_ns();
        let due = plan.pacer.due(k).unwrap_or(now);
        if sending && !plan.window.may_send(due, measured_sent) {
            sending = false;
        }
        if !sending && out.is_empty() {
            break;
        }
        let room = out.len() < plan.inflight;
        if sending && room && due <= now {
            let measured = plan.window.is_measured(due);
            let n = match (plan.window.quota, measured) {
                (Some(q), true) => (plan.batch as u64).min(q - measured_sent),
                _ => plan.batch as u64,
            };
            let bodies = (0..n).map(|_| body(&payload, plan.stamp, due)).collect();
            let topic = (plan.id + k as usize) % plan.topics.max(1);
            match sender.submit(k, topic, bodies) {
                Ok(()) => {
                    out.insert(
                        k,
                        InFlight {
                            intended_ns: due,
                            messages: n,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!("send failed: {e}");
                    errors += n;
                    live.add_error();
                }
            }
            measured_sent += if measured { n } else { 0 };
            k += 1;
            continue;
        }
        if out.is_empty() && sending {
            super::stats::sleep_until_ns(due);
            continue;
        }
        // Wait for a completion: until the next send is due, or as long as it takes.
        let deadline = if sending && room {
            Instant::now() + Duration::from_nanos(due.saturating_sub(now))
        } else if sending {
            Instant::now() + DRAIN_TIMEOUT
        } else {
            *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT)
        };
        match sender.wait(deadline) {
            Some((token, result)) => {
                let done = now_ns();
                let Some(sent) = out.remove(&token) else {
                    continue;
                };
                match result {
                    Ok(()) => {
                        acked += sent.messages;
                        let measured = plan.window.is_measured(sent.intended_ns);
                        let lat = latency_ns(sent.intended_ns, done);
                        let bytes = sent.messages * plan.size as u64;
                        rec.done(sent.messages, bytes, done, measured, Some(lat));
                    }
                    Err(e) => {
                        tracing::debug!("send failed: {e}");
                        errors += sent.messages;
                        live.add_error();
                    }
                }
            }
            None if Instant::now() >= deadline && (!sending || !room) => {
                // Nothing completed in DRAIN_TIMEOUT: count what is still out as failed.
                errors += out.values().map(|f| f.messages).sum::<u64>();
                out.clear();
                sending = false;
            }
            None => {}
        }
    }
    rec.flush();
    ProducerOutcome {
        recorder: rec,
        acked,
        errors,
    }
}

fn body(payload: &Bytes, stamp: bool, intended_ns: u64) -> Bytes {
    if !stamp {
        return payload.clone();
    }
    let mut b = BytesMut::from(&payload[..]);
    write_stamp(&mut b, intended_ns);
    b.freeze()
}

/// The producers of a run, started together.
pub struct ProducerSet {
    threads: Vec<std::thread::JoinHandle<ProducerOutcome>>,
}

impl ProducerSet {
    /// Opens `count` senders (before any producer starts, so connecting is not timed).
    pub fn open(
        target: &dyn Target,
        layout: &Layout,
        count: usize,
        inflight: usize,
    ) -> Result<Vec<Box<dyn Sender>>, BenchError> {
        (0..count)
            .map(|id| {
                target
                    .sender(layout, id, inflight)
                    .map_err(BenchError::from)
            })
            .collect()
    }

    /// Starts one producer thread per plan, each with its sender.
    pub fn start(
        senders: Vec<Box<dyn Sender>>,
        plans: Vec<ProducerPlan>,
        live: &Arc<Live>,
    ) -> Result<ProducerSet, BenchError> {
        let mut threads = Vec::with_capacity(plans.len());
        for (plan, mut sender) in plans.into_iter().zip(senders) {
            let live = Arc::clone(live);
            let t = std::thread::Builder::new()
                .name(format!("bench-producer-{}", plan.id))
                .spawn(move || run_producer(sender.as_mut(), &plan, live))
                .map_err(|e| BenchError::io("start a producer thread", e))?;
            threads.push(t);
        }
        Ok(ProducerSet { threads })
    }

    /// Waits for every producer; their outcomes (a producer that panicked counts nothing).
    pub fn join(self) -> Vec<ProducerOutcome> {
        self.threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

/// One plan per producer: `total_rate` messages/s shared (none: as fast as possible),
/// `count` measured messages shared (or a timed window), measured from `measure_start_ns`.
#[allow(clippy::too_many_arguments)]
pub fn plans(
    producers: usize,
    topics: usize,
    size: usize,
    batch: usize,
    inflight: usize,
    total_rate: Option<f64>,
    window: Window,
    start_ns: u64,
    stamp: bool,
) -> Vec<ProducerPlan> {
    (0..producers)
        .map(|id| ProducerPlan {
            id,
            topics,
            size,
            batch,
            inflight,
            pacer: Pacer::shared(
                start_ns,
                total_rate.map(|r| r / batch as f64),
                id,
                producers,
            ),
            window: Window {
                quota: window.quota.map(|q| super::pace::share(q, producers, id)),
                ..window
            },
            stamp,
        })
        .collect()
}
