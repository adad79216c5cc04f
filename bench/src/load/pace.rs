//! Pacing and latency arithmetic of the load generator, pure (no clock is read here).
//!
//! Times are nanoseconds on the run clock ([`crate::load::clock`]). A fixed-rate (open
//! loop) producer has an *intended* send time for each send, `due(k)`; its latency is
//! measured from that time, not from when the send actually went out. A stall of the broker
//! then shows in every send it held back (each one was due earlier than it left), instead of
//! in the one send that was stuck: this is the coordinated-omission correction. Without a
//! rate the intended time of a send is the moment it is submitted.

/// When each send of one producer is due. Sends are spaced `interval_ns` apart, starting at
/// `start_ns`; without a rate every send is due at once (`None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    start_ns: u64,
    interval_ns: Option<f64>,
}

impl Pacer {
    /// A producer sending `sends_per_s` (None: as fast as its window allows) from `start_ns`.
    pub fn new(start_ns: u64, sends_per_s: Option<f64>) -> Self {
        Pacer {
            start_ns,
            interval_ns: sends_per_s.map(|r| 1e9 / r),
        }
    }

    /// The pacer of producer `id` of `producers` sharing `total_sends_per_s`: each sends
    /// `total / producers` per second, their schedules offset by `1 / total` so that the
    /// sends of all producers interleave evenly instead of leaving in bursts.
    pub fn shared(
        start_ns: u64,
        total_sends_per_s: Option<f64>,
        id: usize,
        producers: usize,
    ) -> Self {
        match total_sends_per_s {
            None => Pacer::new(start_ns, None),
            Some(total) => {
                let n = producers.max(1) as f64;
                let phase = (id as f64 * 1e9 / total) as u64;
                Pacer::new(start_ns + phase, Some(total / n))
            }
        }
    }

    /// The intended send time of send `k` (0-based); `None` when not paced (send at once).
    /// Computed from `k` each time, so rounding never accumulates into drift.
    pub fn due(&self, k: u64) -> Option<u64> {
        self.interval_ns
            .map(|i| self.start_ns + (k as f64 * i).round() as u64)
    }
}

/// The latency recorded for one send: from its intended send time to its completion
/// (zero if the completion is somehow earlier, e.g. a clock read before the due time).
pub fn latency_ns(intended_ns: u64, completed_ns: u64) -> u64 {
    completed_ns.saturating_sub(intended_ns)
}

/// Which part of a run is measured: sends intended before `measure_start_ns` are warm-up
/// (sent, not counted); the run stops sending once `quota` measured messages were sent or
/// the intended time passes `end_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub measure_start_ns: u64,
    /// Measured messages to send (`--count`), if the run is counted.
    pub quota: Option<u64>,
    /// No send intended at or after this (`--duration`), if the run is timed.
    pub end_ns: Option<u64>,
}

impl Window {
    pub fn is_measured(&self, intended_ns: u64) -> bool {
        intended_ns >= self.measure_start_ns
    }

    /// Whether a send intended at `intended_ns` may still go, `measured_sent` measured
    /// messages having gone already.
    pub fn may_send(&self, intended_ns: u64, measured_sent: u64) -> bool {
        let under_quota = self.quota.is_none_or(|q| measured_sent < q);
        let in_time = self.end_ns.is_none_or(|end| intended_ns < end);
        under_quota && in_time
    }
}

/// Splits `total` into `parts` shares that differ by at most one (the first ones larger).
pub fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts.max(1) as u64;
    total / parts + u64::from((index as u64) < total % parts)
}

/// Bytes of the send timestamp at the front of a stamped message body.
pub const STAMP_BYTES: usize = 8;

/// Writes `ns` (the intended send time on the run clock) at the front of `body`.
pub fn write_stamp(body: &mut [u8], ns: u64) {
    if let Some(front) = body.get_mut(..STAMP_BYTES) {
        front.copy_from_slice(&ns.to_le_bytes());
    }
}

/// The send time stamped at the front of `body`, if it is long enough to hold one.
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let front: [u8; STAMP_BYTES] = body.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(front))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latencies recorded for sends intended at `intended_ns[i]` and completed at
    /// `completed_ns[i]` (see [`latency_ns`]).
    fn corrected_latencies(intended_ns: &[u64], completed_ns: &[u64]) -> Vec<u64> {
        intended_ns
            .iter()
            .zip(completed_ns)
            .map(|(&i, &c)| latency_ns(i, c))
            .collect()
    }

    /// One producer, one send in flight, a fixed service time per send except where
    /// `service_ns` says otherwise: returns (corrected, naive) latencies, naive being
    /// completion minus the actual send time.
    fn simulate(rate: f64, service_ns: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let pacer = Pacer::new(0, Some(rate));
        let (mut intended, mut sent, mut done) = (vec![], vec![], vec![]);
        let mut free_at = 0u64;
        for (k, &svc) in service_ns.iter().enumerate() {
            let due = pacer.due(k as u64).expect("paced");
            let go = due.max(free_at);
            free_at = go + svc;
            intended.push(due);
            sent.push(go);
            done.push(free_at);
        }
        (
            corrected_latencies(&intended, &done),
            corrected_latencies(&sent, &done),
        )
    }

    #[test]
    fn due_times_are_evenly_spaced_without_drift() {
        let p = Pacer::new(1_000, Some(3.0));
        assert_eq!(p.due(0), Some(1_000));
        assert_eq!(p.due(1), Some(1_000 + 333_333_333));
        assert_eq!(p.due(3), Some(1_000 + 1_000_000_000));
        assert_eq!(p.due(3_000_000), Some(1_000 + 1_000_000 * 1_000_000_000));
        assert_eq!(Pacer::new(5, None).due(7), None);
    }

    #[test]
    fn shared_pacers_interleave() {
        // 4 producers at 4000/s in all: each 1000/s, offset by 250 us.
        let dues: Vec<u64> = (0..4)
            .map(|id| Pacer::shared(0, Some(4000.0), id, 4).due(0).expect("paced"))
            .collect();
        assert_eq!(dues, vec![0, 250_000, 500_000, 750_000]);
        assert_eq!(Pacer::shared(0, Some(4000.0), 1, 4).due(1), Some(1_250_000));
    }

    #[test]
    fn latency_counts_from_the_intended_time() {
        assert_eq!(
            corrected_latencies(&[10, 20, 30], &[15, 40, 30]),
            vec![5, 20, 0]
        );
        assert_eq!(latency_ns(100, 50), 0);
    }

    #[test]
    fn a_stall_shows_in_every_send_it_held_back() {
        // 1000 sends/s (1 ms apart), 100 us each, but send 10 takes 50 ms.
        let mut svc = vec![100_000u64; 100];
        svc[10] = 50_000_000;
        let (corrected, naive) = simulate(1000.0, &svc);
        // The stuck send itself: 50 ms either way.
        assert_eq!(corrected[10], 50_000_000);
        assert_eq!(naive[10], 50_000_000);
        // The next send was due at 11 ms, left at 60 ms: 49.1 ms late in truth, while the
        // naive figure sees only its 100 us of service.
        assert_eq!(corrected[11], 49_100_000);
        assert_eq!(naive[11], 100_000);
        // Send k >= 11 leaves at 60 + 0.1 (k - 11) ms, done 0.1 ms later: 59 - 0.9 k ms late,
        // over 1 ms for k up to 64. The naive figures hide all but the stuck one.
        let held = corrected.iter().filter(|&&l| l > 1_000_000).count();
        assert_eq!(held, 55);
        assert_eq!(naive.iter().filter(|&&l| l > 1_000_000).count(), 1);
        // Once the backlog drains the figures agree again.
        assert_eq!(corrected[99], naive[99]);
    }

    #[test]
    fn window_rules() {
        let w = Window {
            measure_start_ns: 100,
            quota: Some(2),
            end_ns: None,
        };
        assert!(!w.is_measured(99) && w.is_measured(100));
        assert!(w.may_send(50, 0) && w.may_send(150, 1) && !w.may_send(150, 2));
        let t = Window {
            measure_start_ns: 0,
            quota: None,
            end_ns: Some(1_000),
        };
        assert!(t.may_send(999, u64::MAX) && !t.may_send(1_000, 0));
    }

    #[test]
    fn shares_add_up() {
        assert_eq!(
            (0..3).map(|i| share(10, 3, i)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        assert_eq!((0..4).map(|i| share(2, 4, i)).sum::<u64>(), 2);
        assert_eq!(share(5, 0, 0), 5);
    }

    #[test]
    fn stamps_round_trip() {
        let mut body = vec![0u8; 16];
        write_stamp(&mut body, 0x0102_0304_0506_0708);
        assert_eq!(read_stamp(&body), Some(0x0102_0304_0506_0708));
        assert_eq!(read_stamp(&body[..7]), None);
        let mut short = [9u8; 4];
        write_stamp(&mut short, 1);
        assert_eq!(short, [9; 4]);
    }
}
