//! The retry worker: one thread per running producer that makes the tries after the first,
//! each at its time (SystemBusy backoff), off the client's shared I/O thread, where answers
//! arrive and where nothing may block.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Instant;

use super::engine::{attempt, SendJob};
use super::Core;
use crate::error::ClientError;

struct Delayed {
    at: Instant,
    seq: u64,
    job: Box<SendJob>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A running retry worker.
pub(crate) struct RetryWorker {
    tx: flume::Sender<(Instant, Box<SendJob>)>,
    handle: JoinHandle<()>,
}

impl RetryWorker {
    pub(crate) fn spawn(core: Weak<Core>) -> std::io::Result<RetryWorker> {
        let (tx, rx) = flume::unbounded();
        let handle = std::thread::Builder::new()
            .name("shardmq-producer-retry".into())
            .spawn(move || run(&core, &rx))?;
        Ok(RetryWorker { tx, handle })
    }

    /// Queues `job` for a try at `at`; hands it back if the worker has stopped.
    pub(crate) fn submit(&self, at: Instant, job: Box<SendJob>) -> Result<(), Box<SendJob>> {
        self.tx.send((at, job)).map_err(|e| e.into_inner().1)
    }

    /// Stops the worker: jobs waiting for their try fail with their last error. Joins the
    /// thread unless called on it.
    pub(crate) fn stop(self) {
        drop(self.tx);
        if self.handle.thread().id() != std::thread::current().id() {
            let _ = self.handle.join();
        }
    }
}

fn run(core: &Weak<Core>, rx: &flume::Receiver<(Instant, Box<SendJob>)>) {
    let mut waiting = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = match waiting.peek() {
            Some(Delayed { at, .. }) => rx.recv_deadline(*at),
            None => rx.recv().map_err(|_| flume::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, job)) => {
                seq += 1;
                waiting.push(Delayed { at, seq, job });
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        while waiting.peek().is_some_and(|d| d.at <= now) {
            let Some(Delayed { job, .. }) = waiting.pop() else {
                break;
            };
            match core.upgrade() {
                Some(core) => attempt(&core, *job),
                None => stopped(*job),
            }
        }
    }
    for d in waiting {
        stopped(*d.job);
    }
}

fn stopped(mut job: SendJob) {
    let last = job.last_err.take().unwrap_or(ClientError::NotRunning);
    let topic = job.topic.clone();
    let tries = job.tries;
    job.finish(Err(ClientError::AllBrokersFailed {
        topic,
        tries,
        last: Box::new(last),
    }));
}
