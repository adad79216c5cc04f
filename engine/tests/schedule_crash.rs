//! A child process puts delayed messages (SYNC_FLUSH), its schedule service starts delivering
//! them, and the parent SIGKILLs it mid-delivery. The parent reads the progress persisted on
//! disk, restarts the store, and checks that every delayed message is delivered and that
//! every message delivered twice was past that persisted progress.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::config;
use shardmq_engine::schedule::plan::{Plan, PROP_DELAY_LEVEL, PROP_DELIVER_AT, SLOT_MS};
use shardmq_engine::schedule::progress::Progress;
use shardmq_engine::schedule::ScheduleConfig;
use shardmq_engine::{FlushMode, MessageInput, Perm, PutStatus, Store, StoreConfig};

const ENV_DIR: &str = "SHARDMQ_SCHEDULE_CRASH_DIR";
const MESSAGES: u64 = 4_000;
const LEVELS: &str = "300ms 800ms";

fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        schedule: ScheduleConfig {
            enabled: true,
            levels: LEVELS.into(),
            max_delay_ms: 3_600_000,
            persist_interval_ms: 100,
        },
        segment_size_bytes: 16 << 20,
        ..config(dir, 2, FlushMode::Sync)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Reads every message of the real topic: body → how many times it arrived.
fn delivered(store: &Store) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for q in 0..2 {
        for body in common::queue_bodies(store, "real", q) {
            *out.entry(body).or_insert(0) += 1;
        }
    }
    out
}

/// The child: puts the delayed messages, reports where each waits, then lets the service
/// deliver and reports progress until killed.
#[test]
#[ignore = "child process of a_sigkill_during_delivery_loses_nothing_and_repeats_only_unpersisted"]
fn schedule_crash_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let store = Store::open(cfg(Path::new(&dir))).unwrap();
    store.create_topic("real", 2, 2, Perm::READ_WRITE).unwrap();
    let base = now_ms() + 1_500;
    let mut out = std::io::stdout().lock();
    for i in 0..MESSAGES {
        let mut m = MessageInput::new("real", (i % 2) as u32, format!("m{i}"));
        // Half by level, half at distinct exact times.
        let (queue_hint, due) = if i % 2 == 0 {
            let level = 1 + (i / 2) % 2;
            m.properties
                .push((PROP_DELAY_LEVEL.into(), level.to_string()));
            (format!("L{}", level - 1), 0)
        } else {
            let at = base + i as i64;
            m.properties.push((PROP_DELIVER_AT.into(), at.to_string()));
            ("W".to_owned(), at)
        };
        let r = store.put_message_blocking(m).unwrap();
        assert_eq!(r.status, PutStatus::PutOk);
        let _ = writeln!(
            out,
            "PUT m{i} {queue_hint} {} {due}",
            r.queue_offset.unwrap()
        );
    }
    let _ = writeln!(out, "PUT_DONE");
    let _ = out.flush();
    drop(out);
    loop {
        let n = delivered(&store).len();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "DELIVERED {n}");
        let _ = out.flush();
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Put {
    queue: String,
    offset: u64,
    due: i64,
}

#[test]
fn a_sigkill_during_delivery_loses_nothing_and_repeats_only_unpersisted() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "schedule_crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut puts: HashMap<String, Put> = HashMap::new();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.map_while(Result::ok) {
        // The test harness may print its own "test ... " prefix on the first line.
        let line = match line.find("PUT ") {
            Some(i) => line[i..].to_owned(),
            None => line,
        };
        if let Some(rest) = line.strip_prefix("PUT ") {
            let f: Vec<&str> = rest.split(' ').collect();
            puts.insert(
                f[0].to_owned(),
                Put {
                    queue: f[1].to_owned(),
                    offset: f[2].parse().unwrap(),
                    due: f[3].parse().unwrap(),
                },
            );
        } else if let Some(n) = line.strip_prefix("DELIVERED ") {
            // Kill once a third has been delivered: mid-delivery.
            if n.parse::<u64>().unwrap() >= MESSAGES / 3 {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        puts.len() as u64,
        MESSAGES,
        "the child put everything before delivering"
    );
    // What the disk says was delivered, read before the restart.
    let progress = Progress::load(dir.path()).unwrap();
    let plan = Plan::new(
        shardmq_engine::schedule::plan::parse_levels(LEVELS).unwrap(),
        3_600_000,
    );
    let covered = |p: &Put| -> bool {
        match p.queue.strip_prefix('L') {
            Some(l) => p.offset < progress.level(l.parse().unwrap()),
            None => progress.slot_done(plan.slot_queue(p.due.div_euclid(SLOT_MS)), p.offset),
        }
    };

    let store = Store::open(cfg(dir.path())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = delivered(&store);
        if got.len() as u64 == MESSAGES {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MESSAGES} delivered after the restart",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut duplicates = 0;
    for (body, n) in &got {
        let p = &puts[body];
        if *n > 1 {
            duplicates += 1;
            assert!(
                !covered(p),
                "{body} ({} offset {} due {}) was delivered {n} times though the persisted \
                 progress covered it: {progress:?}",
                p.queue,
                p.offset,
                p.due
            );
        }
    }
    eprintln!("{duplicates} duplicates, all past the persisted progress");
    futures_lite::future::block_on(store.shutdown()).unwrap();
}
