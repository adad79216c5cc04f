//! Crash test: a real child process appends with SYNC_FLUSH from several tasks on 2 shards and
//! reports every acknowledgement; the parent SIGKILLs it (mostly mid-send, sometimes during
//! its own recovery), reopens the store and checks that every acknowledged record is there
//! with identical bytes.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{body, config};
use shardmq_engine::{FlushMode, MessageInput, PutStatus, Store, StoreConfig};

const CYCLES: u64 = 24;
const ENV_DIR: &str = "SHARDMQ_CRASH_DIR";
const ENV_CYCLE: &str = "SHARDMQ_CRASH_CYCLE";
const SHARD_WRITERS: u32 = 3;
const THREAD_WRITERS: u32 = 2;

fn store_config(dir: &Path) -> StoreConfig {
    config(dir, 2, FlushMode::Sync)
}

fn len_of(writer: u32, seq: u64) -> usize {
    16 + ((seq * 37 + writer as u64 * 101) % 3000) as usize
}

fn msg(writer: u32, seq: u64) -> MessageInput {
    MessageInput::new(
        format!("crash-{writer}"),
        writer,
        body(writer, seq, len_of(writer, seq)),
    )
    .with_keys(format!("{writer}:{seq}"))
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    writer: u32,
    seq: u64,
    shard: usize,
    offset: u64,
    queue_offset: u64,
}

fn report(writer: u32, seq: u64, r: &shardmq_engine::PutResult) {
    let qo = r
        .queue_offset
        .expect("a SYNC_FLUSH ack carries its queue offset");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ACK {writer} {seq} {} {} {qo}", r.shard, r.offset);
    let _ = out.flush();
}

/// The child: runs until killed. Not a test on its own (the parent starts it).
#[test]
#[ignore = "child process of crash_test_sigkill_loses_no_acknowledged_record"]
fn crash_child() {
    let (Ok(dir), Ok(cycle)) = (std::env::var(ENV_DIR), std::env::var(ENV_CYCLE)) else {
        return;
    };
    let cycle: u64 = cycle.parse().unwrap();
    let store = Store::open(store_config(Path::new(&dir))).unwrap();
    println!("READY");
    let first_seq = cycle << 32;
    for shard in 0..2 {
        for i in 0..SHARD_WRITERS {
            let writer = shard as u32 * SHARD_WRITERS + i;
            let s = store.clone();
            drop(store.spawn_on(shard, move || async move {
                for seq in first_seq.. {
                    match s.put_message(msg(writer, seq)).await {
                        Ok(r) if r.status == PutStatus::PutOk => report(writer, seq, &r),
                        other => panic!("writer {writer}: {other:?}"),
                    }
                }
            }));
        }
    }
    for t in 0..THREAD_WRITERS {
        let s = store.clone();
        let writer = 2 * SHARD_WRITERS + t;
        std::thread::spawn(move || {
            for seq in first_seq.. {
                let r = s.put_message_blocking(msg(writer, seq)).unwrap();
                assert_eq!(r.status, PutStatus::PutOk);
                report(writer, seq, &r);
            }
        });
    }
    loop {
        std::thread::park();
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn_child(dir: &Path, cycle: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_CYCLE, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's acknowledgements until `want` arrived (or it died); returns them and
/// whether it got past recovery.
fn collect(child: &mut Child, want: Option<usize>, acks: &mut Vec<Ack>) -> bool {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut ready = false;
    let mut seen = 0;
    let mut kill_now = want.is_none();
    loop {
        if kill_now {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            kill_now = false;
        }
        let Ok(line) = rx.recv() else { return ready };
        if line.ends_with("READY") {
            ready = true;
        } else if let Some(rest) = line.strip_prefix("ACK ") {
            let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acks.push(Ack {
                writer: f[0] as u32,
                seq: f[1],
                shard: f[2] as usize,
                offset: f[3],
                queue_offset: f[4],
            });
            seen += 1;
            if Some(seen) == want {
                kill_now = true;
            }
        }
    }
}

fn verify(dir: &Path, acks: &[Ack], check_density: bool) {
    let store = Store::open(store_config(dir)).unwrap();
    for a in acks {
        let m = store
            .read_message_blocking(a.shard, a.offset)
            .unwrap_or_else(|e| panic!("acknowledged {a:?} lost: {e}"));
        assert_eq!(
            &m.body[..],
            &body(a.writer, a.seq, len_of(a.writer, a.seq))[..],
            "{a:?}"
        );
        assert_eq!(m.topic, format!("crash-{}", a.writer));
        assert_eq!(m.keys(), Some(format!("{}:{}", a.writer, a.seq).as_str()));
        // Same queue offset as acknowledged, pointing at the same record.
        let req = shardmq_engine::GetRequest {
            group: "verify".into(),
            topic: format!("crash-{}", a.writer),
            queue_id: a.writer,
            offset: a.queue_offset,
            max_messages: 1,
            max_bytes: 1 << 20,
            filter: shardmq_engine::TagFilter::All,
        };
        let got = futures_lite::future::block_on(store.get_message(req)).unwrap();
        let q = got
            .messages
            .first()
            .unwrap_or_else(|| panic!("{a:?}: {:?}", got.status));
        assert_eq!(
            (q.queue_offset, q.message.physical_offset),
            (a.queue_offset, a.offset),
            "{a:?}"
        );
    }
    // Every queue is dense from 0 and holds one entry per surviving record of its writer.
    for writer in (0..2 * SHARD_WRITERS + THREAD_WRITERS).filter(|_| check_density) {
        let topic = format!("crash-{writer}");
        let Some((min, max)) = futures_lite::future::block_on(store.queue_offsets(&topic, writer))
        else {
            continue;
        };
        assert_eq!(min, 0);
        let mut offset = 0;
        while offset < max {
            let req = shardmq_engine::GetRequest {
                group: "verify".into(),
                topic: topic.clone(),
                queue_id: writer,
                offset,
                max_messages: 512,
                max_bytes: 64 << 20,
                filter: shardmq_engine::TagFilter::All,
            };
            let got = futures_lite::future::block_on(store.get_message(req)).unwrap();
            for m in &got.messages {
                assert_eq!(m.queue_offset, offset);
                offset += 1;
            }
        }
    }
    drop(store);
}

#[test]
fn crash_test_sigkill_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut all: Vec<Ack> = Vec::new();
    let mut killed_in_recovery = 0;
    for cycle in 1..=CYCLES {
        let mut child = spawn_child(dir, cycle);
        let mut acks = Vec::new();
        let ready = if cycle % 4 == 0 {
            // Kill at a random moment early on: often while the child is still recovering.
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            collect(&mut child, None, &mut acks)
        } else {
            collect(&mut child, Some(1 + rng.below(1500) as usize), &mut acks)
        };
        if !ready {
            killed_in_recovery += 1;
        }
        all.extend(acks.iter().copied());
        // Every cycle checks its own acknowledgements; every fourth, everything so far and
        // the density of every queue.
        let full = cycle % 4 == 3 || cycle == CYCLES;
        verify(dir, if full { &all } else { &acks }, full);
    }
    let per_writer: BTreeMap<u32, usize> = all.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.writer).or_default() += 1;
        m
    });
    eprintln!("{} acknowledged records over {CYCLES} cycles ({killed_in_recovery} kills before ready); per writer {per_writer:?}", all.len());
    assert!(all.len() > 1000, "the test must exercise real load");
    assert_eq!(
        per_writer.len() as u32,
        2 * SHARD_WRITERS + THREAD_WRITERS,
        "every writer acked"
    );
}
