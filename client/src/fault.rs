//! `LatencyFaultTolerance`: which brokers to avoid for a while after slow or failed sends.
//!
//! After a send to broker `B` took latency `L`, `B` is avoided for a time looked up in a step
//! table: the largest step at or below `L` gives the avoidance. A failed send (connect, write
//! or read error, timeout) counts as [`FAILURE_LATENCY`] and so isolates the broker for the
//! longest time. The table follows RocketMQ's `MQFaultStrategy`:
//!
//! | latency at least | 0 | 50 ms | 100 ms | 550 ms | 1 s  | 2 s   | 3 s   | 15 s  |
//! |------------------|---|-------|--------|--------|------|-------|-------|-------|
//! | avoided for      | 0 | 0     | 0      | 30 s   | 60 s | 120 s | 180 s | 600 s |
//!
//! The type is pure: time is passed in, so it has no clock and no locking of its own (the
//! producer keeps one behind a mutex).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The latency a failed send counts as.
pub const FAILURE_LATENCY: Duration = Duration::from_secs(30);

/// (latency at least, avoid for), in increasing latency.
const STEPS: [(Duration, Duration); 7] = [
    (Duration::from_millis(50), Duration::ZERO),
    (Duration::from_millis(100), Duration::ZERO),
    (Duration::from_millis(550), Duration::from_secs(30)),
    (Duration::from_millis(1000), Duration::from_secs(60)),
    (Duration::from_millis(2000), Duration::from_secs(120)),
    (Duration::from_millis(3000), Duration::from_secs(180)),
    (Duration::from_millis(15000), Duration::from_secs(600)),
];

/// How long a broker whose send took `latency` is avoided.
pub fn avoidance_for(latency: Duration) -> Duration {
    STEPS
        .iter()
        .rev()
        .find(|(at_least, _)| latency >= *at_least)
        .map_or(Duration::ZERO, |(_, avoid)| *avoid)
}

/// What is known of one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// The latency of the last send (or [`FAILURE_LATENCY`] after a failure).
    pub latency: Duration,
    /// When the broker may be chosen again.
    pub available_from: Instant,
}

/// Brokers (by name) recently slow or failing.
#[derive(Debug, Default, Clone)]
pub struct LatencyFaultTolerance {
    records: HashMap<String, FaultRecord>,
}

impl LatencyFaultTolerance {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a send to `broker`, finished at `now`, took `latency`.
    pub fn update(&mut self, broker: &str, latency: Duration, now: Instant) {
        let record = FaultRecord {
            latency,
            available_from: now + avoidance_for(latency),
        };
        match self.records.get_mut(broker) {
            Some(r) => *r = record,
            None => {
                self.records.insert(broker.to_string(), record);
            }
        }
    }

    /// Records that a send to `broker` failed at `now` (isolates it).
    pub fn record_failure(&mut self, broker: &str, now: Instant) {
        self.update(broker, FAILURE_LATENCY, now);
    }

    /// Whether `broker` may be chosen at `now` (a broker never recorded may).
    pub fn is_available(&self, broker: &str, now: Instant) -> bool {
        self.records
            .get(broker)
            .is_none_or(|r| now >= r.available_from)
    }

    /// What is recorded about `broker`.
    pub fn record(&self, broker: &str) -> Option<FaultRecord> {
        self.records.get(broker).copied()
    }

    /// Forgets `broker` (it left the route, or a send to it succeeded quickly).
    pub fn remove(&mut self, broker: &str) {
        self.records.remove(broker);
    }

    /// The best of `candidates` when none is to be trusted: an available one first (the one
    /// with the lowest recorded latency, a never-recorded one counting as zero), else the one
    /// available soonest, then the lowest latency; ties go to the earlier candidate. `None`
    /// only when there are no candidates.
    pub fn pick_least_bad<'a, I>(&self, candidates: I, now: Instant) -> Option<&'a str>
    where
        I: IntoIterator<Item = &'a str>,
    {
        candidates
            .into_iter()
            .min_by_key(|b| match self.records.get(*b) {
                None => (Duration::ZERO, Duration::ZERO),
                Some(r) => (r.available_from.saturating_duration_since(now), r.latency),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_step_table_at_and_around_each_boundary() {
        let cases = [
            (0, 0),
            (49, 0),
            (50, 0),
            (99, 0),
            (100, 0),
            (549, 0),
            (550, 30),
            (999, 30),
            (1000, 60),
            (1999, 60),
            (2000, 120),
            (2999, 120),
            (3000, 180),
            (14_999, 180),
            (15_000, 600),
            (30_000, 600),
            (u64::MAX / 2, 600),
        ];
        for (latency, secs) in cases {
            assert_eq!(
                avoidance_for(ms(latency)),
                Duration::from_secs(secs),
                "latency {latency} ms"
            );
        }
    }

    #[test]
    fn a_slow_broker_is_avoided_for_its_step_then_comes_back() {
        let t0 = Instant::now();
        let mut f = LatencyFaultTolerance::new();
        assert!(f.is_available("a", t0), "unknown brokers are available");
        f.update("a", ms(1200), t0);
        assert!(!f.is_available("a", t0));
        assert!(!f.is_available("a", t0 + Duration::from_secs(59)));
        assert!(f.is_available("a", t0 + Duration::from_secs(60)));
        assert!(f.is_available("b", t0), "others are untouched");
    }

    #[test]
    fn a_fast_send_clears_an_earlier_penalty() {
        let t0 = Instant::now();
        let mut f = LatencyFaultTolerance::new();
        f.update("a", ms(3500), t0);
        assert!(!f.is_available("a", t0 + Duration::from_secs(1)));
        f.update("a", ms(20), t0 + Duration::from_secs(1));
        assert!(f.is_available("a", t0 + Duration::from_secs(1)));
        assert_eq!(f.record("a").map(|r| r.latency), Some(ms(20)));
    }

    #[test]
    fn a_failure_isolates_for_the_longest_step() {
        let t0 = Instant::now();
        let mut f = LatencyFaultTolerance::new();
        f.record_failure("a", t0);
        assert!(!f.is_available("a", t0 + Duration::from_secs(599)));
        assert!(f.is_available("a", t0 + Duration::from_secs(600)));
        f.remove("a");
        assert!(f.is_available("a", t0));
        assert_eq!(f.record("a"), None);
    }

    #[test]
    fn least_bad_prefers_available_then_soonest_then_fastest() {
        let t0 = Instant::now();
        let mut f = LatencyFaultTolerance::new();
        f.update("slow", ms(2500), t0); // back at t0 + 120 s
        f.record_failure("dead", t0); // back at t0 + 600 s
        f.update("late", ms(600), t0 - Duration::from_secs(10)); // back at t0 + 20 s
        assert_eq!(f.pick_least_bad(["dead", "slow", "late"], t0), Some("late"));
        assert_eq!(f.pick_least_bad(["dead", "slow"], t0), Some("slow"));
        assert_eq!(f.pick_least_bad(["dead", "new"], t0), Some("new"));
        // Once every one is available again the lowest latency wins.
        let later = t0 + Duration::from_secs(601);
        assert_eq!(f.pick_least_bad(["dead", "slow"], later), Some("slow"));
        assert_eq!(f.pick_least_bad([], t0), None);
    }

    #[test]
    fn ties_go_to_the_earlier_candidate() {
        let t0 = Instant::now();
        let f = LatencyFaultTolerance::new();
        assert_eq!(f.pick_least_bad(["x", "y"], t0), Some("x"));
        assert_eq!(f.pick_least_bad(["y", "x"], t0), Some("y"));
    }
}
