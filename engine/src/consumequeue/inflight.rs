//! CommitLog block reads in flight on one shard, shared by the gets that want them.
//!
//! Queues interleave in a shard's log, so consumers of different queues that lag by about as
//! much want the same read-cache blocks at about the same time. Without this, each get that
//! missed the cache read the block itself: reading back 1 GB with 8 consumers read 3.6 GB
//! from the device. A get now claims each block it misses; one that finds the block claimed
//! waits for that read and takes the block from the cache.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::waiters::LocalEvent;

/// (shard, block start)
type Key = (usize, u64);

#[derive(Default)]
pub struct ReadsInFlight {
    reads: RefCell<HashMap<Key, Rc<Done>>>,
}

/// Announced once when the read it belongs to ended (done, failed or cancelled).
#[derive(Default)]
pub struct Done {
    ended: Cell<bool>,
    event: LocalEvent,
}

impl Done {
    pub async fn wait(&self) {
        loop {
            let generation = self.event.generation();
            if self.ended.get() {
                return;
            }
            self.event.wait_past(generation).await;
        }
    }
}

impl ReadsInFlight {
    /// The caller reads `key` (`Ok`, until the claim drops), or someone already does (`Err`:
    /// wait for it, then look in the cache).
    pub fn claim(&self, key: Key) -> Result<Claim<'_>, Rc<Done>> {
        let mut reads = self.reads.borrow_mut();
        if let Some(done) = reads.get(&key) {
            return Err(done.clone());
        }
        let done = Rc::new(Done::default());
        reads.insert(key, done.clone());
        Ok(Claim {
            owner: self,
            key,
            done,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.reads.borrow().len()
    }
}

/// A claimed read; dropping it (after the block went into the cache, or when the get is
/// cancelled mid-read) releases the block and wakes those waiting for it.
pub struct Claim<'a> {
    owner: &'a ReadsInFlight,
    key: Key,
    done: Rc<Done>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.owner.reads.borrow_mut().remove(&self.key);
        self.done.ended.set(true);
        self.done.event.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn a_second_claim_waits_for_the_first_and_a_dropped_claim_releases_its_block() {
        let reads = ReadsInFlight::default();
        let first = reads.claim((0, 0)).ok().expect("free");
        let waiter = reads.claim((0, 0)).err().expect("claimed");
        assert!(reads.claim((1, 0)).is_ok(), "other shard, other block");
        let mut cx = Context::from_waker(Waker::noop());
        let mut wait = pin!(waiter.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drop(first);
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(reads.len(), 0);
        assert!(reads.claim((0, 0)).is_ok(), "free again");
    }
}
