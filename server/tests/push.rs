//! Push consumer groups against a real broker: rebalance on membership changes, take-over
//! after a SIGKILL (duplicates only above the committed offset), a graceful leave without
//! duplicates, and `admin group progress` lag. Members are `shardmq admin subscribe`
//! processes printing one JSON line per message and per assignment change.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{admin, connect, producer, standalone};
use shardmq_client::Message;
use shardmq_protocol::message::{ConsumerOffsetRequest, OffsetResponse};
use shardmq_protocol::{decode_reply, Reply, Request};

const WAIT: Duration = Duration::from_secs(60);

/// One `admin subscribe` member; its lines go to the shared channel tagged with `id`.
struct Member {
    child: Child,
    reader: Option<JoinHandle<()>>,
}

impl Member {
    fn spawn(
        ns: &str,
        group: &str,
        id: usize,
        tx: &mpsc::Sender<(usize, serde_json::Value)>,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args([
                "admin",
                "--namesrv",
                ns,
                "subscribe",
                "--group",
                group,
                "--topic",
                "Work",
                "--from-beginning",
                "--commit-ms",
                "100",
                "--rebalance-ms",
                "1000",
            ])
            .env("SHARDMQ_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a subscriber");
        let out = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send((id, v));
                }
            }
        });
        Member {
            child,
            reader: Some(reader),
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit and for its last line to be read.
    fn wait(&mut self) -> std::process::ExitStatus {
        let st = self.child.wait().expect("wait");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        st
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the members printed so far.
#[derive(Default)]
struct Seen {
    assigned: HashMap<usize, Vec<String>>,
    /// body → (member, queue, offset) per delivery.
    deliveries: BTreeMap<String, Vec<(usize, u32, u64)>>,
    stopped: BTreeSet<usize>,
}

impl Seen {
    fn take(&mut self, (id, v): (usize, serde_json::Value)) {
        match v["event"].as_str() {
            Some("assigned") => {
                let qs = v["queues"].as_array().cloned().unwrap_or_default();
                let work = qs
                    .iter()
                    .filter_map(|q| q.as_str())
                    .filter(|q| q.starts_with("Work@"))
                    .map(str::to_owned)
                    .collect();
                self.assigned.insert(id, work);
            }
            Some("message") => {
                let body = v["body"].as_str().unwrap_or_default().to_owned();
                let q = v["queue"].as_u64().unwrap_or(u64::MAX) as u32;
                let o = v["offset"].as_u64().unwrap_or(u64::MAX);
                self.deliveries.entry(body).or_default().push((id, q, o));
            }
            Some("stopped") => {
                self.stopped.insert(id);
            }
            _ => {}
        }
    }

    /// Reads lines until `done` holds (panics after `WAIT`).
    fn until(
        &mut self,
        rx: &mpsc::Receiver<(usize, serde_json::Value)>,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => self.take(line),
                Err(_) => panic!("timed out waiting for {what}; assigned {:?}", self.assigned),
            }
        }
    }

    /// Sizes of the live members' Work queue sets, sorted, if they cover the 8 queues once.
    fn split(&self, live: &[usize]) -> Option<Vec<usize>> {
        let mut all = BTreeSet::new();
        let mut sizes = Vec::new();
        for id in live {
            let qs = self.assigned.get(id)?;
            sizes.push(qs.len());
            all.extend(qs.iter().cloned());
        }
        sizes.sort_unstable();
        (all.len() == 8 && sizes.iter().sum::<usize>() == 8).then_some(sizes)
    }
}

/// Sends `bodies` from a thread, a little at a time so consumption runs alongside.
fn send_in_background(ns: String, bodies: Vec<String>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let p = producer(&ns);
        for (i, b) in bodies.into_iter().enumerate() {
            p.send(Message::new("Work", b)).expect("send");
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        p.shutdown();
    })
}

fn committed(broker_addr: &str, group: &str, queue_id: u32) -> u64 {
    let mut conn = connect(broker_addr);
    let frame = conn
        .call(&Request::QueryConsumerOffset(ConsumerOffsetRequest {
            consumer_group: group.into(),
            topic: "Work".into(),
            queue_id,
        }))
        .expect("query offset");
    match decode_reply::<OffsetResponse>(&frame, &[]).expect("reply") {
        Reply::Typed(_, o) => o.offset,
        Reply::Error(..) => 0,
    }
}

fn setup(dir: &std::path::Path) -> (common::Proc, String) {
    let broker = standalone(dir, &[]);
    let ns = broker.get("namesrv");
    let (ok, _, err) = admin(
        &ns,
        &["topic", "create", "--topic", "Work", "--queues", "8"],
    );
    assert!(ok, "{err}");
    (broker, ns)
}

#[test]
fn three_members_split_eight_queues_and_a_killed_one_is_taken_over_from_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ns) = setup(dir.path());
    let (tx, rx) = mpsc::channel();
    let mut members: Vec<Member> = (0..3).map(|i| Member::spawn(&ns, "G", i, &tx)).collect();
    let mut seen = Seen::default();
    seen.until(&rx, "a 3/3/2 split", |s| {
        s.split(&[0, 1, 2]) == Some(vec![2, 3, 3])
    });

    let bodies: Vec<String> = (0..4000).map(|i| format!("m-{i}")).collect();
    let sender = send_in_background(ns.clone(), bodies.clone());
    seen.until(&rx, "a first thousand messages", |s| {
        s.deliveries.len() >= 1000
    });

    // Freeze the survivors so nobody can take the victim's queues before its committed
    // offsets are read; then kill the victim and read them.
    let victim = 2;
    members[0].signal("-STOP");
    members[1].signal("-STOP");
    members[victim].signal("-KILL");
    members[victim].wait();
    while let Ok(line) = rx.try_recv() {
        seen.take(line);
    }
    let victim_queues = seen.assigned[&victim].clone();
    let at_kill: HashMap<u32, u64> = (0..8)
        .map(|q| (q, committed(&broker.get("broker"), "G", q)))
        .collect();
    members[0].signal("-CONT");
    members[1].signal("-CONT");

    sender.join().unwrap();
    seen.until(&rx, "every message and a 4/4 split", |s| {
        bodies.iter().all(|b| s.deliveries.contains_key(b)) && s.split(&[0, 1]) == Some(vec![4, 4])
    });
    let mut duplicates = 0;
    for (body, d) in &seen.deliveries {
        if d.len() > 1 {
            duplicates += d.len() - 1;
            for &(_, q, o) in d {
                let name = format!("Work@broker-a#{q}");
                assert!(
                    victim_queues.contains(&name),
                    "{body} repeated on {name}, not the victim's"
                );
                assert!(
                    o >= at_kill[&q],
                    "{body} at {q}:{o} repeated below the commit {}",
                    at_kill[&q]
                );
            }
        }
    }
    eprintln!("duplicates after the kill: {duplicates}");
}

#[test]
fn a_graceful_leave_hands_its_queues_over_without_duplicates_and_lag_drops_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, ns) = setup(dir.path());
    // Lag before anyone consumes: everything sent.
    let p = producer(&ns);
    for i in 0..400 {
        p.send(Message::new("Work", format!("early-{i}"))).unwrap();
    }
    p.shutdown();
    let (ok, out, err) = admin(
        &ns,
        &["group", "progress", "--group", "G2", "--topic", "Work"],
    );
    assert!(ok, "{err}");
    let lag = |out: &str| -> u64 {
        out.lines()
            .skip(1)
            .filter_map(|l| l.split('\t').nth(4)?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(lag(&out), 400, "{out}");

    let (tx, rx) = mpsc::channel();
    let mut members: Vec<Member> = (0..3).map(|i| Member::spawn(&ns, "G2", i, &tx)).collect();
    let mut seen = Seen::default();
    seen.until(&rx, "the early messages and a 3/3/2 split", |s| {
        s.deliveries.len() >= 400 && s.split(&[0, 1, 2]) == Some(vec![2, 3, 3])
    });
    let mut bodies: Vec<String> = (0..400).map(|i| format!("early-{i}")).collect();
    let late: Vec<String> = (0..3000).map(|i| format!("late-{i}")).collect();
    bodies.extend(late.iter().cloned());
    let sender = send_in_background(ns.clone(), late);
    seen.until(&rx, "some late messages", |s| s.deliveries.len() >= 1200);

    members[1].signal("-TERM");
    let status = members[1].wait();
    assert!(status.success(), "a graceful leave exits 0: {status}");
    while let Ok(line) = rx.try_recv() {
        seen.take(line);
    }
    assert!(seen.stopped.contains(&1), "the leaver says it stopped");

    sender.join().unwrap();
    seen.until(&rx, "every message and a 4/4 split", |s| {
        bodies.iter().all(|b| s.deliveries.contains_key(b)) && s.split(&[0, 2]) == Some(vec![4, 4])
    });
    let repeated: Vec<_> = seen
        .deliveries
        .iter()
        .filter(|(_, d)| d.len() > 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "delivered twice: {:?}",
        &repeated[..repeated.len().min(5)]
    );

    // The members commit every 100 ms: the lag reaches 0.
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = admin(
            &ns,
            &["group", "progress", "--group", "G2", "--topic", "Work"],
        );
        assert!(ok, "{err}");
        if lag(&out) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "lag stays above 0: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, _) = admin(&ns, &["group", "list"]);
    assert!(ok && out.lines().any(|l| l == "G2"), "{out}");
}
