//! Real `shardmq` processes for the integration tests: each on free ports (port 0, read back
//! from the start-up line), in its own temporary directory, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardmq_protocol::message::{TopicConfigData, PULL_TYPED};
use shardmq_protocol::{decode_reply, Reply, Request, Status, Wire};
use shardmq_server::rpc::Conn;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Proc {
    pub child: Child,
    pub ready: serde_json::Value,
    pub log: PathBuf,
}

impl Proc {
    pub fn get(&self, key: &str) -> String {
        self.ready[key].as_str().unwrap_or_default().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for the broker")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `shardmq ARGS` and waits for its start-up line (the process's log goes to
/// `log_dir/<name>.log`).
pub fn spawn(args: &[&str], log_dir: &Path, name: &str) -> Proc {
    let log = log_dir.join(format!("{name}.log"));
    let err = std::fs::File::create(&log).expect("create the log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(args)
        .env("SHARDMQ_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("start shardmq");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "shardmq {args:?} did not start: {line:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    Proc { child, ready, log }
}

/// Store budgets small enough for a memory test to meet them (MiB per shard: I/O memory 4,
/// write buffer 8, tail cache 8, read cache 8).
pub const SMALL_STORE_TOML: &str = "[store]\n\
     write_buffer_max_bytes = 8388608\n\
     tail_cache_bytes = 8388608\n\
     read_cache_bytes = 8388608\n\
     io_memory_bytes = 4194304\n";

/// `standalone` with `broker_toml` (lines of the `[broker]` table) and the store budgets of
/// [`SMALL_STORE_TOML`], from a config file in `dir`.
pub fn standalone_small(dir: &Path, broker_toml: &str) -> Proc {
    let config = dir.join("small.toml");
    std::fs::write(
        &config,
        format!("[broker]\n{broker_toml}{SMALL_STORE_TOML}"),
    )
    .expect("write the config file");
    standalone(dir, &["--config", config.to_str().expect("utf-8 path")])
}

/// `shardmq standalone` on free ports with its data in `dir/data`.
pub fn standalone(dir: &Path, extra: &[&str]) -> Proc {
    let data = dir.join("data");
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec![
        "standalone",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--namesrv-listen",
        "127.0.0.1:0",
        "--shards",
        "2",
    ];
    args.extend_from_slice(extra);
    spawn(&args, dir, "standalone")
}

pub fn connect(addr: &str) -> Conn {
    Conn::connect(addr, TIMEOUT).expect("connect")
}

/// A call that must succeed with typed fields `T` (or one of `typed`'s statuses).
pub fn call<T: Wire + std::fmt::Debug>(
    conn: &mut Conn,
    req: &Request,
    typed: &[Status],
) -> (Status, T) {
    let frame = conn.call(req).expect("call");
    match decode_reply::<T>(&frame, typed).expect("decodable reply") {
        Reply::Typed(s, v) => (s, v),
        Reply::Error(s, remark) => panic!("{} failed: {s}: {remark}", req.opcode()),
    }
}

/// A call expected to fail: its status and remark.
pub fn call_err(conn: &mut Conn, req: &Request) -> (Status, String) {
    let frame = conn.call(req).expect("call");
    match decode_reply::<shardmq_protocol::message::Empty>(&frame, &[]) {
        Ok(Reply::Error(s, remark)) => (s, remark),
        other => panic!("{} should have failed, got {other:?}", req.opcode()),
    }
}

pub fn create_topic(conn: &mut Conn, topic: &str, queues: u32) {
    let _: (Status, shardmq_protocol::message::Empty) = call(
        conn,
        &Request::CreateTopic(TopicConfigData {
            topic: topic.into(),
            read_queues: queues,
            write_queues: queues,
            perm: 6,
            order: false,
        }),
        &[],
    );
}

pub const PULL: &[Status] = PULL_TYPED;

/// `shardmq admin --namesrv NS ARGS`: (success, stdout, stderr).
pub fn admin(namesrv: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("admin")
        .arg("--namesrv")
        .arg(namesrv)
        .args(args)
        .output()
        .expect("run shardmq admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A started client producer on `namesrv`.
pub fn producer(namesrv: &str) -> shardmq_client::Producer {
    let p = shardmq_client::Producer::builder()
        .namesrv_addr(namesrv)
        .group("p")
        .build()
        .expect("a producer");
    p.start().expect("start the producer");
    p
}

/// `shardmq admin --namesrv NS ARGS | head -1`: reads the first line of the command's stdout,
/// closes the pipe, and waits (at most a minute) for the command to end: (its exit status,
/// the first line, its stderr).
pub fn admin_head_1(namesrv: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("admin")
        .arg("--namesrv")
        .arg(namesrv)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shardmq admin");
    let mut first = String::new();
    {
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the first line");
        // The reader, and with it the pipe's read end, is dropped here.
    }
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for shardmq admin") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardmq admin {args:?} still runs a minute after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, first, err.join().unwrap_or_default())
}

/// A line of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`), as bytes.
fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Peak resident memory of a process.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

/// Resident memory of a process now.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}
