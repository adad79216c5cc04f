//! The producer side of a load. Each producer has its own connection ([`Sender`]) and keeps
//! up to `inflight` sends out, paced by a [`Pacer`] when the load has a rate. Producers are
//! spread over a few threads (`--threads`, by default one per core): a thread runs the
//! loop of all its producers, whose senders post completions to the thread's one channel,
//! so the load generator's own cost does not grow with the number of producers.
//!
//! A thread's loop: submit every send that is due and has room in its producer's window;
//! then wait for completions, but only until the next send is due (so a slow answer never
//! delays a send in a fixed-rate run: that would be coordinated omission). Each completion
//! records the latency from its send's intended time (see `pace.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::pace::{latency_ns, write_stamp, Pacer, Window};
use super::stats::{now_ns, Live, Recorder};
use crate::drivers::{DriverError, Event, Layout, Notify, Sender, Target};
use crate::error::BenchError;

/// A thread gives up on its producers' sends when none completed for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

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

/// One producer's state on its thread.
struct Producer {
    plan: ProducerPlan,
    sender: Box<dyn Sender>,
    payload: Bytes,
    out: HashMap<u64, InFlight>,
    k: u64,
    measured_sent: u64,
    sending: bool,
    rec: Recorder,
    acked: u64,
    errors: u64,
}

impl Producer {
    fn new(plan: ProducerPlan, sender: Box<dyn Sender>, live: &Arc<Live>) -> Self {
        Producer {
            payload: Bytes::from(vec![b'x'; plan.size]),
            plan,
            sender,
            out: HashMap::new(),
            k: 0,
            measured_sent: 0,
            sending: true,
            rec: Recorder::new(Arc::clone(live)),
            acked: 0,
            errors: 0,
        }
    }

    /// Submits every send due by `now` that fits the window; the due time of the next one
    /// (if it waits for time, not for room). An unpaced send is due when it is submitted
    /// (the clock is read for each, so the sends before it on this thread do not count).
    fn submit_due(&mut self, now: u64, live: &Live) -> Option<u64> {
        while self.sending && self.out.len() < self.plan.inflight {
            let paced = self.plan.pacer.due(self.k);
            let due = paced.unwrap_or_else(now_ns);
            if !self.plan.window.may_send(due, self.measured_sent) {
                self.sending = false;
                break;
            }
            if paced.is_some() && due > now {
                return Some(due);
            }
            self.submit(due, live);
        }
        None
    }

    fn submit(&mut self, due: u64, live: &Live) {
        let measured = self.plan.window.is_measured(due);
        let n = match (self.plan.window.quota, measured) {
            (Some(q), true) => (self.plan.batch as u64).min(q - self.measured_sent),
            _ => self.plan.batch as u64,
        };
        let bodies = (0..n)
            .map(|_| body(&self.payload, self.plan.stamp, due))
            .collect();
        let topic = (self.plan.id + self.k as usize) % self.plan.topics.max(1);
        match self.sender.submit(self.k, topic, bodies) {
            Ok(()) => {
                let sent = InFlight {
                    intended_ns: due,
                    messages: n,
                };
                self.out.insert(self.k, sent);
            }
            Err(e) => self.failed(n, &e, live),
        }
        self.measured_sent += if measured { n } else { 0 };
        self.k += 1;
    }

    fn complete(&mut self, token: u64, result: Result<(), DriverError>, live: &Live) {
        let done = now_ns();
        let Some(sent) = self.out.remove(&token) else {
            return;
        };
        match result {
            Ok(()) => {
                self.acked += sent.messages;
                let measured = self.plan.window.is_measured(sent.intended_ns);
                let lat = latency_ns(sent.intended_ns, done);
                let bytes = sent.messages * self.plan.size as u64;
                self.rec
                    .done(sent.messages, bytes, done, measured, Some(lat));
            }
            Err(e) => self.failed(sent.messages, &e, live),
        }
    }

    fn failed(&mut self, messages: u64, e: &DriverError, live: &Live) {
        tracing::debug!("send failed: {e}");
        self.errors += messages;
        live.add_error();
    }

    fn finished(&self) -> bool {
        !self.sending && self.out.is_empty()
    }
}

/// Runs a thread's producers to the end of their windows and their last completions.
fn run_thread(
    mut producers: Vec<Producer>,
    events: &flume::Receiver<(usize, Event)>,
    live: &Live,
) -> Vec<ProducerOutcome> {
    let mut last_event = Instant::now();
    loop {
        let now = now_ns();
        // The ShardMQ client writes the sends of one pass together (one `send` per
        // connection per pass, as a pipelining client does); other drivers are unaffected.
        let next_due = shardmq_client::conn::corked(|| {
            producers
                .iter_mut()
                .filter_map(|p| p.submit_due(now, live))
                .min()
        });
        if producers.iter().all(Producer::finished) {
            break;
        }
        let deadline = match next_due {
            Some(due) => Instant::now() + Duration::from_nanos(due.saturating_sub(now_ns())),
            None => last_event + STALL_TIMEOUT,
        };
        match events.recv_deadline(deadline) {
            Ok(first) => {
                last_event = Instant::now();
                for (i, event) in std::iter::once(first).chain(events.try_iter()) {
                    let Some(p) = producers.get_mut(i) else {
                        continue;
                    };
                    if let Some((token, result)) = p.sender.on_event(event) {
                        p.complete(token, result, live);
                    }
                }
            }
            Err(_) if last_event.elapsed() >= STALL_TIMEOUT => {
                // Nothing completed for a long time: count what is still out as failed.
                for p in &mut producers {
                    let stuck: u64 = p.out.drain().map(|(_, f)| f.messages).sum();
                    p.errors += stuck;
                    p.sending = false;
                }
            }
            Err(_) => {}
        }
    }
    producers
        .into_iter()
        .map(|mut p| {
            p.rec.flush();
            ProducerOutcome {
                recorder: p.rec,
                acked: p.acked,
                errors: p.errors,
            }
        })
        .collect()
}

fn body(payload: &Bytes, stamp: bool, intended_ns: u64) -> Bytes {
    if !stamp {
        return payload.clone();
    }
    let mut b = BytesMut::from(&payload[..]);
    write_stamp(&mut b, intended_ns);
    b.freeze()
}

/// The senders of one producer thread and the channel they post to.
pub struct SenderGroup {
    /// Producer ids, in the order of `senders`.
    ids: Vec<usize>,
    senders: Vec<Box<dyn Sender>>,
    events: flume::Receiver<(usize, Event)>,
}

/// The producers of a run.
pub struct ProducerSet {
    threads: Vec<std::thread::JoinHandle<Vec<ProducerOutcome>>>,
}

impl ProducerSet {
    /// Opens `count` senders on `threads` threads (before any producer starts, so that
    /// connecting is not timed); producer `i` runs on thread `i % threads`.
    pub fn open(
        target: &dyn Target,
        layout: &Layout,
        count: usize,
        threads: usize,
        inflight: usize,
    ) -> Result<Vec<SenderGroup>, BenchError> {
        let threads = threads.clamp(1, count.max(1));
        let mut groups = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, events) = flume::unbounded();
            let ids: Vec<usize> = (t..count).step_by(threads).collect();
            let mut senders = Vec::with_capacity(ids.len());
            for (index, &id) in ids.iter().enumerate() {
                let notify = Notify::new(index, tx.clone());
                senders.push(target.sender(layout, id, inflight, notify)?);
            }
            groups.push(SenderGroup {
                ids,
                senders,
                events,
            });
        }
        Ok(groups)
    }

    /// Starts each group's thread with the plans of its producers (`plans[id]`).
    pub fn start(
        groups: Vec<SenderGroup>,
        plans: &[ProducerPlan],
        live: &Arc<Live>,
    ) -> Result<ProducerSet, BenchError> {
        let mut threads = Vec::with_capacity(groups.len());
        for (t, g) in groups.into_iter().enumerate() {
            let producers: Vec<Producer> = g
                .ids
                .iter()
                .zip(g.senders)
                .map(|(&id, sender)| Producer::new(plans[id].clone(), sender, live))
                .collect();
            let (live, events) = (Arc::clone(live), g.events);
            let handle = std::thread::Builder::new()
                .name(format!("bench-producers-{t}"))
                .spawn(move || run_thread(producers, &events, &live))
                .map_err(|e| BenchError::io("start a producer thread", e))?;
            threads.push(handle);
        }
        Ok(ProducerSet { threads })
    }

    /// Waits for every producer; their outcomes (a thread that panicked counts nothing).
    pub fn join(self) -> Vec<ProducerOutcome> {
        self.threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .flatten()
            .collect()
    }
}

/// One plan per producer (index = id): `total_rate` messages/s shared (none: as fast as
/// possible), `count` measured messages shared (or a timed window), from `start_ns`.
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

#[cfg(test)]
#[path = "producer_tests.rs"]
mod tests;
