//! A push consumer's view of one queue it consumes: the messages pulled and not yet
//! consumed, what may be committed, and when to pause pulling. Pure.
//!
//! Messages are consumed concurrently and finish in any order, so the offset that may be
//! committed is the smallest one still in flight (everything below it is done); with nothing
//! in flight, one past the largest pulled. Committing it and crashing re-delivers only
//! messages at or above it: at least once, never a gap.

use std::collections::BTreeMap;

/// Pull pauses past either cap (RocketMQ's defaults: 1 000 messages, 100 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    pub messages: usize,
    pub bytes: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            messages: 1_000,
            bytes: 100 << 20,
        }
    }
}

#[derive(Debug, Default)]
pub struct ProcessQueue {
    /// Offset → body size of each message pulled and not yet consumed.
    in_flight: BTreeMap<u64, usize>,
    bytes: usize,
    /// One past the largest offset ever pulled into this queue.
    next: Option<u64>,
    /// The queue was taken away by a rebalance: nothing more is pulled or committed for it.
    dropped: bool,
}

impl ProcessQueue {
    pub fn new() -> Self {
        ProcessQueue::default()
    }

    /// Takes in pulled messages (offset, body size); repeats are ignored.
    pub fn put(&mut self, msgs: impl IntoIterator<Item = (u64, usize)>) {
        for (offset, size) in msgs {
            if self.in_flight.insert(offset, size).is_none() {
                self.bytes += size;
            }
            self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        }
    }

    /// Nothing below `offset` is left to pull (a pull's next offset moved past messages the
    /// filter skipped, or the queue starts there): with nothing in flight, the commit offset
    /// moves up to it.
    pub fn advance_to(&mut self, offset: u64) {
        self.next = Some(self.next.map_or(offset, |n| n.max(offset)));
    }

    /// Marks messages consumed (or handed to the retry topic); returns the offset that may now
    /// be committed, if any message was ever pulled.
    pub fn remove(&mut self, offsets: impl IntoIterator<Item = u64>) -> Option<u64> {
        for o in offsets {
            if let Some(size) = self.in_flight.remove(&o) {
                self.bytes -= size;
            }
        }
        self.commit_offset()
    }

    /// The offset that may be committed: the smallest in flight, or one past the largest
    /// pulled when nothing is in flight; `None` before anything was pulled.
    pub fn commit_offset(&self) -> Option<u64> {
        self.in_flight.keys().next().copied().or(self.next)
    }

    /// Whether pulling should pause until consumption catches up.
    pub fn should_pause(&self, limits: FlowLimits) -> bool {
        self.in_flight.len() >= limits.messages || self.bytes >= limits.bytes
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn drop_queue(&mut self) {
        self.dropped = true;
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    #[test]
    fn the_commit_offset_is_the_smallest_in_flight() {
        let mut pq = ProcessQueue::new();
        assert_eq!(pq.commit_offset(), None);
        pq.put([(10, 100), (11, 100), (12, 100)]);
        assert_eq!(pq.remove([11]), Some(10), "10 is still in flight");
        assert_eq!(pq.remove([10]), Some(12));
        assert_eq!(pq.remove([12]), Some(13), "all done: one past the largest");
        assert!(pq.is_empty());
    }

    #[test]
    fn pulling_pauses_past_either_cap() {
        let mut pq = ProcessQueue::new();
        let limits = FlowLimits {
            messages: 3,
            bytes: 1_000,
        };
        pq.put([(0, 10), (1, 10)]);
        assert!(!pq.should_pause(limits));
        pq.put([(2, 10)]);
        assert!(pq.should_pause(limits), "message cap");
        pq.remove([0, 1, 2]);
        pq.put([(3, 1_000)]);
        assert!(pq.should_pause(limits), "byte cap");
        pq.remove([3]);
        assert_eq!(pq.bytes(), 0);
        pq.put([(4, 1), (4, 1)]);
        assert_eq!((pq.len(), pq.bytes()), (1, 1), "a repeat counts once");
    }

    #[test]
    fn skipped_offsets_move_the_commit_offset_only_past_finished_messages() {
        let mut pq = ProcessQueue::new();
        pq.advance_to(5);
        assert_eq!(pq.commit_offset(), Some(5));
        pq.put([(7, 1)]);
        pq.advance_to(20);
        assert_eq!(pq.commit_offset(), Some(7), "7 is still in flight");
        assert_eq!(pq.remove([7]), Some(20));
        pq.advance_to(3);
        assert_eq!(pq.commit_offset(), Some(20), "never goes back");
    }

    proptest! {
        /// Whatever order consumption finishes in, the commit offset never passes a message
        /// still in flight and never goes back.
        #[test]
        fn commit_never_passes_an_unfinished_message(
            n in 1u64..100, order in proptest::collection::vec(0usize..100, 1..100),
        ) {
            let mut pq = ProcessQueue::new();
            pq.put((0..n).map(|o| (o, 1)));
            let mut left: Vec<u64> = (0..n).collect();
            let mut last = 0;
            for i in order {
                if left.is_empty() {
                    break;
                }
                let o = left.remove(i % left.len());
                let c = pq.remove([o]).unwrap();
                prop_assert!(c >= last);
                prop_assert!(left.iter().all(|&l| l >= c));
                last = c;
            }
            if left.is_empty() {
                prop_assert_eq!(pq.commit_offset(), Some(n));
            }
        }
    }
}
