//! Single-threaded wake-ups for a shard's tasks, and the FIFO of puts waiting for their bytes
//! to be written or flushed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::PutError;
use crate::store::{PutResult, PutStatus};

/// An edge-triggered event for tasks of one executor. Read the generation, check the
/// condition, then wait past that generation: a notify in between is not lost.
#[derive(Default)]
pub struct LocalEvent {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub fn wait_past(&self, generation: u64) -> WaitPast<'_> {
        WaitPast {
            event: self,
            generation,
        }
    }
}

pub struct WaitPast<'a> {
    event: &'a LocalEvent,
    generation: u64,
}

impl Future for WaitPast<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut wakers = self.event.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Where a put's outcome goes.
pub enum Reply {
    One(PutResult, flume::Sender<Result<PutResult, PutError>>),
    Batch(
        Vec<PutResult>,
        flume::Sender<Result<Vec<PutResult>, PutError>>,
    ),
}

impl Reply {
    pub fn finish(self, outcome: Result<PutStatus, PutError>) {
        // A caller that stopped waiting dropped its receiver; nothing to tell it.
        match self {
            Reply::One(mut r, tx) => {
                let _ = tx.send(outcome.map(|status| {
                    r.status = status;
                    r
                }));
            }
            Reply::Batch(mut rs, tx) => {
                let _ = tx.send(outcome.map(|status| {
                    rs.iter_mut().for_each(|r| r.status = status);
                    rs
                }));
            }
        }
    }
}

struct Ack {
    end: u64,
    deadline: Option<Instant>,
    reply: Reply,
}

/// Puts waiting for the log to reach their end offset, in append (= offset) order.
#[derive(Default)]
pub struct AckQueue {
    queue: VecDeque<Ack>,
}

impl AckQueue {
    pub fn push(&mut self, end: u64, deadline: Option<Instant>, reply: Reply) {
        debug_assert!(
            self.queue.back().is_none_or(|a| a.end <= end),
            "acks out of order"
        );
        self.queue.push_back(Ack {
            end,
            deadline,
            reply,
        });
    }

    /// Takes every put whose bytes end at or below `offset`.
    pub fn take_upto(&mut self, offset: u64) -> Vec<Reply> {
        let n = self.queue.iter().take_while(|a| a.end <= offset).count();
        self.queue.drain(..n).map(|a| a.reply).collect()
    }

    /// Takes every put whose deadline has passed. Deadlines grow with append order, so only
    /// the front needs looking at.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Reply> {
        let n = self
            .queue
            .iter()
            .take_while(|a| a.deadline.is_some_and(|d| d <= now))
            .count();
        self.queue.drain(..n).map(|a| a.reply).collect()
    }

    pub fn take_all(&mut self) -> Vec<Reply> {
        self.queue.drain(..).map(|a| a.reply).collect()
    }
}
