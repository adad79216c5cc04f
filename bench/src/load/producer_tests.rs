//! The producer loop against a fake sender that answers at once (or fails every n-th send).

use super::*;
use crate::load::pace::read_stamp;

/// Completes each send as soon as it is submitted; every `fail_every`-th one fails.
struct Fake {
    notify: Notify,
    sent: u64,
    fail_every: Option<u64>,
    bodies: Arc<std::sync::Mutex<Vec<Bytes>>>,
}

impl Sender for Fake {
    fn submit(&mut self, token: u64, _topic: usize, bodies: Vec<Bytes>) -> Result<(), DriverError> {
        self.sent += 1;
        let fail = self.fail_every.is_some_and(|n| self.sent % n == 0);
        self.bodies.lock().expect("lock").extend(bodies);
        let result = match fail {
            true => Err(DriverError::Admin("refused".into())),
            false => Ok(()),
        };
        self.notify.post(Event::Done(token, result));
        Ok(())
    }
}

fn run(plans: &[ProducerPlan], fail_every: Option<u64>) -> (Vec<ProducerOutcome>, Vec<Bytes>) {
    let live = Arc::new(Live::default());
    let (tx, rx) = flume::unbounded();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let producers = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let fake = Fake {
                notify: Notify::new(i, tx.clone()),
                sent: 0,
                fail_every,
                bodies: Arc::clone(&bodies),
            };
            Producer::new(plan.clone(), Box::new(fake), &live)
        })
        .collect();
    let outcomes = run_thread(producers, &rx, &live);
    let bodies = bodies.lock().expect("lock").clone();
    (outcomes, bodies)
}

fn counted(quota: u64, batch: usize, rate: Option<f64>, stamp: bool) -> Vec<ProducerPlan> {
    let window = Window {
        measure_start_ns: 0,
        quota: Some(quota),
        end_ns: None,
    };
    plans(3, 2, 64, batch, 4, rate, window, now_ns(), stamp)
}

#[test]
fn a_counted_run_sends_exactly_its_quota() {
    let (outcomes, bodies) = run(&counted(11, 2, None, false), None);
    let acked: Vec<u64> = outcomes.iter().map(|o| o.acked).collect();
    // 11 over 3 producers: 4, 4, 3; the last batch of each is cut to the share.
    assert_eq!(acked, vec![4, 4, 3]);
    assert_eq!(bodies.len(), 11);
    assert!(bodies.iter().all(|b| b.len() == 64));
    let measured: u64 = outcomes.iter().map(|o| o.recorder.measured_messages).sum();
    let recorded: u64 = outcomes.iter().map(|o| o.recorder.total.len()).sum();
    assert_eq!((measured, recorded), (11, 11));
    assert!(outcomes.iter().all(|o| o.errors == 0));
}

#[test]
fn failed_sends_are_errors_not_messages() {
    let (outcomes, _) = run(&counted(30, 1, None, false), Some(3));
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    // 10 sends per producer, the 3rd, 6th and 9th of each refused.
    assert_eq!((acked, errors), (21, 9));
    let measured: u64 = outcomes.iter().map(|o| o.recorder.measured_messages).sum();
    assert_eq!(measured, 21);
}

#[test]
fn a_paced_run_keeps_its_schedule_and_stamps_it() {
    // 30 messages at 3 000/s in all: about 10 ms, each body stamped with its due time.
    let start = now_ns();
    let (outcomes, bodies) = run(&counted(30, 1, Some(3000.0), true), None);
    let took = now_ns() - start;
    assert!(
        took >= 9_000_000,
        "finished in {took} ns, before the schedule"
    );
    assert_eq!(outcomes.iter().map(|o| o.acked).sum::<u64>(), 30);
    let mut stamps: Vec<u64> = bodies.iter().filter_map(|b| read_stamp(b)).collect();
    stamps.sort_unstable();
    assert_eq!(stamps.len(), 30);
    // Consecutive due times across the 3 producers are 1/3000 s apart.
    let gaps: Vec<u64> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| (333_000..=334_000).contains(&g)),
        "{gaps:?}"
    );
}

#[test]
fn warm_up_sends_are_not_measured() {
    let window = Window {
        measure_start_ns: u64::MAX,
        quota: None,
        end_ns: Some(now_ns() + 5_000_000),
    };
    let plans = plans(1, 1, 8, 1, 2, Some(2000.0), window, now_ns(), false);
    let (outcomes, bodies) = run(&plans, None);
    assert!(!bodies.is_empty());
    assert_eq!(outcomes[0].acked, bodies.len() as u64);
    assert_eq!(outcomes[0].recorder.measured_messages, 0);
}
