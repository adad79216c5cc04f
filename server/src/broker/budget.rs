//! How many bytes of answers a connection, and all connections of one shard, may hold at
//! once: answers waiting to be written, and room reserved for a pull's answer before it is
//! built. Single-threaded (one shard's tasks), so plain cells; waiting is on a
//! [`LocalEvent`].
//!
//! The rule ([`Budget::fits`]): more fits while the total stays within the limit, and
//! anything fits while nothing is held, so an answer larger than the whole budget still goes
//! out, alone.

use std::cell::Cell;
use std::rc::Rc;

use shardmq_engine::waiters::LocalEvent;

/// Bytes held against a limit.
pub struct Budget {
    limit: usize,
    used: Cell<usize>,
    freed: LocalEvent,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: Cell::new(0),
            freed: LocalEvent::default(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Whether `need` more bytes may be taken now.
    pub fn fits(&self, need: usize) -> bool {
        let used = self.used.get();
        used == 0 || used.saturating_add(need) <= self.limit
    }

    /// Whether the budget is over its limit (what was taken without asking: small answers).
    pub fn over(&self) -> bool {
        self.used.get() > self.limit
    }

    pub fn take(&self, n: usize) {
        self.used.set(self.used.get() + n);
    }

    pub fn give(&self, n: usize) {
        debug_assert!(
            n <= self.used.get(),
            "giving back {n} of {}",
            self.used.get()
        );
        self.used.set(self.used.get().saturating_sub(n));
        if n > 0 {
            self.freed.notify();
        }
    }

    /// Waits until `ready(self)` holds, re-checked whenever bytes are given back.
    async fn wait_until(&self, ready: impl Fn(&Self) -> bool) {
        loop {
            let generation = self.freed.generation();
            if ready(self) {
                return;
            }
            self.freed.wait_past(generation).await;
        }
    }

    /// Waits until `need` fits (not taking it).
    pub async fn wait_fits(&self, need: usize) {
        self.wait_until(|b| b.fits(need)).await;
    }

    /// Waits until nothing is held.
    pub async fn wait_empty(&self) {
        self.wait_until(|b| b.used() == 0).await;
    }

    /// Waits until the budget is back within its limit.
    pub async fn wait_within(&self) {
        self.wait_until(|b| !b.over()).await;
    }
}

/// A connection's answers, counted against its own budget and its shard's.
#[derive(Clone)]
pub struct Answers {
    pub conn: Rc<Budget>,
    pub shard: Rc<Budget>,
}

/// Room for one answer, taken from both budgets; given back when dropped (once the answer was
/// counted as queued, or when the request ends without one).
pub struct Grant {
    answers: Answers,
    bytes: usize,
}

/// The shard's answers budget is full: the request is refused, not parked (a client that does
/// not read its answers must not hold up other connections' pulls).
#[derive(Debug, PartialEq, Eq)]
pub struct ShardBusy;

impl Answers {
    /// Reserves `need` bytes for an answer about to be built: waits while this connection's
    /// budget cannot hold it (its client has not taken earlier answers), and refuses at once
    /// when the shard's cannot.
    pub async fn reserve(&self, need: usize) -> Result<Grant, ShardBusy> {
        self.conn.wait_fits(need).await;
        if !self.shard.fits(need) {
            return Err(ShardBusy);
        }
        self.take(need);
        Ok(Grant {
            answers: self.clone(),
            bytes: need,
        })
    }

    /// Counts `n` bytes of an answer queued for writing.
    pub fn take(&self, n: usize) {
        self.conn.take(n);
        self.shard.take(n);
    }

    /// `n` bytes of answers were written (or dropped with the connection).
    pub fn give(&self, n: usize) {
        self.conn.give(n);
        self.shard.give(n);
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.answers.give(self.bytes);
    }
}

/// Bytes reserved for a pull's answer before it is built: the byte budget it asked for (as
/// capped), each message's fields beyond its stored record, and the frame around them. The
/// engine returns at least one message however large, so an answer may exceed this by one
/// message; that excess is counted when the answer is queued.
pub fn pull_reserve(max_bytes: u32, max_msgs: u32) -> usize {
    /// Generous: message id, hosts and repeated tags/keys of a wire message, ~150 B.
    const PER_MESSAGE_BYTES: usize = 256;
    const FRAME_BYTES: usize = 1024;
    max_bytes as usize + max_msgs as usize * PER_MESSAGE_BYTES + FRAME_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(conn: usize, shard: usize) -> Answers {
        Answers {
            conn: Rc::new(Budget::new(conn)),
            shard: Rc::new(Budget::new(shard)),
        }
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        futures_lite::future::block_on(futures_lite::future::or(async { Some(f.await) }, async {
            futures_lite::future::yield_now().await;
            None
        }))
    }

    #[test]
    fn anything_fits_an_empty_budget_and_more_only_within_the_limit() {
        let b = Budget::new(100);
        assert!(b.fits(1000), "alone, larger than the limit");
        b.take(60);
        assert!(b.fits(40));
        assert!(!b.fits(41));
        b.take(50);
        assert!(b.over());
        b.give(110);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_reservation_waits_for_the_connection_and_is_refused_by_a_full_shard() {
        let a = answers(100, 1000);
        let first = now(a.reserve(80))
            .expect("fits at once")
            .expect("shard has room");
        assert!(now(a.reserve(30)).is_none(), "waits: 80 + 30 > 100");
        drop(first);
        assert_eq!(a.conn.used(), 0);
        let g = now(a.reserve(30)).unwrap().unwrap();
        assert_eq!((a.conn.used(), a.shard.used()), (30, 30));
        drop(g);

        let other = answers(100, 1000);
        let shard = Answers {
            conn: other.conn.clone(),
            shard: a.shard.clone(),
        };
        a.take(990);
        assert_eq!(now(shard.reserve(20)).unwrap().err(), Some(ShardBusy));
        assert_eq!(other.conn.used(), 0, "a refusal holds nothing");
    }

    #[test]
    fn a_waiting_reservation_goes_once_answers_are_written() {
        let a = answers(100, 1000);
        a.take(100);
        let waiting = a.clone();
        let result = futures_lite::future::block_on(async {
            futures_lite::future::zip(waiting.reserve(50), async {
                futures_lite::future::yield_now().await;
                a.give(100);
            })
            .await
            .0
        });
        assert!(result.is_ok());
    }

    #[test]
    fn a_pull_reserves_its_byte_budget_and_per_message_overhead() {
        assert_eq!(pull_reserve(4 << 20, 32), (4 << 20) + 32 * 256 + 1024);
        assert!(pull_reserve(1, 1) < 2048);
    }
}
