//! Rebalance allocation: which of a topic's queues a member of a consumer group takes, given
//! every member and every queue. Pure: every member computes the same answer from the same
//! sorted inputs, so no coordinator is needed and the allocations cover each queue exactly
//! once (CLUSTERING).
//!
//! Strategies (RocketMQ's names):
//! - [`Strategy::Averagely`] (default): contiguous blocks, the first `queues mod members`
//!   members one larger.
//! - [`Strategy::AveragelyByCircle`]: queue `i` to member `i mod members`.
//! - [`Strategy::ConsistentHash`]: each member owns `virtual_nodes` points on a hash ring; a
//!   queue goes to the first point at or after its own hash. A member joining or leaving
//!   moves only the queues next to its points.

use std::collections::BTreeMap;

use crate::route::{fnv1a, MessageQueue};

/// How a group shares a topic's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    Averagely,
    AveragelyByCircle,
    ConsistentHash {
        virtual_nodes: u32,
    },
}

/// The queues `me` takes. `members` and `queues` may come in any order and with repeats;
/// they are sorted and deduplicated first, as every member does. A member not in `members`
/// (it has not been seen by the broker yet) takes nothing.
pub fn allocate(
    strategy: Strategy,
    me: &str,
    members: &[String],
    queues: &[MessageQueue],
) -> Vec<MessageQueue> {
    let mut members: Vec<&str> = members.iter().map(String::as_str).collect();
    members.sort_unstable();
    members.dedup();
    let mut queues: Vec<&MessageQueue> = queues.iter().collect();
    queues.sort_by(|a, b| {
        (&a.broker_name, a.queue_id, &a.topic).cmp(&(&b.broker_name, b.queue_id, &b.topic))
    });
    queues.dedup();
    let Some(index) = members.iter().position(|m| *m == me) else {
        return Vec::new();
    };
    let n = members.len();
    let picked: Vec<&MessageQueue> = match strategy {
        Strategy::Averagely => {
            let (q, m) = (queues.len(), n);
            let base = q / m;
            let extra = q % m;
            let size = base + usize::from(index < extra);
            let start = index * base + index.min(extra);
            queues.iter().skip(start).take(size).copied().collect()
        }
        Strategy::AveragelyByCircle => queues
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n == index)
            .map(|(_, q)| *q)
            .collect(),
        Strategy::ConsistentHash { virtual_nodes } => {
            let mut ring: BTreeMap<u64, &str> = BTreeMap::new();
            for m in &members {
                for v in 0..virtual_nodes.max(1) {
                    ring.insert(fnv1a(format!("{m}#{v}").as_bytes()), m);
                }
            }
            queues
                .iter()
                .filter(|q| {
                    let h =
                        fnv1a(format!("{}@{}#{}", q.topic, q.broker_name, q.queue_id).as_bytes());
                    let owner = ring
                        .range(h..)
                        .next()
                        .or_else(|| ring.iter().next())
                        .map(|(_, m)| *m);
                    owner == Some(me)
                })
                .copied()
                .collect()
        }
    };
    picked.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    fn queues(n: u32) -> Vec<MessageQueue> {
        (0..n)
            .map(|i| MessageQueue {
                topic: "T".into(),
                broker_name: format!("b{}", i / 4),
                queue_id: i % 4,
            })
            .collect()
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    const ALL: [Strategy; 3] = [
        Strategy::Averagely,
        Strategy::AveragelyByCircle,
        Strategy::ConsistentHash { virtual_nodes: 10 },
    ];

    #[test]
    fn three_members_on_eight_queues_split_three_three_two() {
        let q = queues(8);
        let m = members(3);
        let sizes: Vec<usize> = m
            .iter()
            .map(|me| allocate(Strategy::Averagely, me, &m, &q).len())
            .collect();
        assert_eq!(sizes, vec![3, 3, 2]);
        let circle: Vec<usize> = m
            .iter()
            .map(|me| allocate(Strategy::AveragelyByCircle, me, &m, &q).len())
            .collect();
        assert_eq!(circle, vec![3, 3, 2]);
        // Averagely gives contiguous blocks.
        assert_eq!(
            allocate(Strategy::Averagely, "c2", &m, &q),
            q[6..8].to_vec()
        );
    }

    #[test]
    fn a_member_the_broker_does_not_list_takes_nothing() {
        assert!(allocate(Strategy::Averagely, "ghost", &members(2), &queues(4)).is_empty());
        assert!(allocate(Strategy::Averagely, "c0", &members(1), &[]).is_empty());
    }

    #[test]
    fn consistent_hash_moves_few_queues_when_a_member_leaves() {
        let q = queues(64);
        let four = members(4);
        let three = members(3);
        let s = Strategy::ConsistentHash { virtual_nodes: 32 };
        let moved = three
            .iter()
            .map(|me| {
                let before = allocate(s, me, &four, &q);
                allocate(s, me, &three, &q)
                    .into_iter()
                    .filter(|x| !before.contains(x))
                    .count()
            })
            .sum::<usize>();
        let leaver = allocate(s, "c3", &four, &q).len();
        assert_eq!(moved, leaver, "only the leaver's queues move");
    }

    proptest! {
        /// Whatever the order members see the inputs in, the allocations cover every queue
        /// exactly once.
        #[test]
        fn every_queue_goes_to_exactly_one_member(
            nq in 0u32..200, nm in 1usize..20, which in 0usize..3, seed: u64,
        ) {
            let q = queues(nq);
            let m = members(nm);
            let mut shuffled = m.clone();
            let k = (seed as usize) % nm.max(1);
            shuffled.rotate_left(k);
            let mut seen: Vec<MessageQueue> = Vec::new();
            for me in &m {
                let mut mine_q = q.clone();
                mine_q.reverse();
                seen.extend(allocate(ALL[which], me, &shuffled, &mine_q));
            }
            seen.sort_by(|a, b| (&a.broker_name, a.queue_id).cmp(&(&b.broker_name, b.queue_id)));
            let mut want = q.clone();
            want.sort_by(|a, b| (&a.broker_name, a.queue_id).cmp(&(&b.broker_name, b.queue_id)));
            prop_assert_eq!(seen, want);
        }

        /// The averaging strategies never differ by more than one queue between members.
        #[test]
        fn averaging_is_even(nq in 0u32..200, nm in 1usize..20, circle: bool) {
            let q = queues(nq);
            let m = members(nm);
            let s = if circle { Strategy::AveragelyByCircle } else { Strategy::Averagely };
            let sizes: Vec<usize> = m.iter().map(|me| allocate(s, me, &m, &q).len()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }
    }
}
