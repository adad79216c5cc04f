//! `--spawn`: a fresh `shardmq standalone` for one run.
//!
//! The broker binary is `--broker-bin`, else `shardmq` next to the running executable (or
//! one directory up, where test executables live in `target/<profile>/deps/`). It runs in a
//! new temporary directory (under `--data-dir` if given, else the system's), with its store
//! in `data/` and its log in `broker.log`, on free loopback ports (port 0; the addresses are
//! read back from the JSON `ready` line it prints on stdout). Dropping [`SpawnedBroker`]
//! stops it (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and removes the directory, so an
//! error anywhere in a run still cleans up; so does SIGINT or SIGTERM to the bench
//! ([`clean_up_on_signal`]), which exits without running destructors otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::DriverError;

/// How long a broker may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker may take to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The brokers running now (pid, temporary directory), for the signal handler.
static RUNNING: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<(u32, PathBuf)>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

fn signal(pid: u32, sig: rustix::process::Signal) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// Whether child `pid` has exited (reaps it; the process is about to exit anyway).
fn exited(pid: u32) -> bool {
    use rustix::process::{waitpid, Pid, WaitOptions};
    match Pid::from_raw(pid as i32) {
        Some(p) => !matches!(waitpid(Some(p), WaitOptions::NOHANG), Ok(None)),
        None => true,
    }
}

/// On SIGINT or SIGTERM: stops the brokers this process started, removes their
/// directories, and exits with 130. Call once, early.
pub fn clean_up_on_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return;
            }
            let brokers = std::mem::take(&mut *running());
            for (pid, _) in &brokers {
                signal(*pid, rustix::process::Signal::Term);
            }
            let deadline = Instant::now() + STOP_GRACE;
            for (pid, dir) in &brokers {
                while Instant::now() < deadline && !exited(*pid) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                signal(*pid, rustix::process::Signal::Kill);
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!("shardmq-bench: interrupted");
            std::process::exit(130);
        });
}

/// How to start the broker.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// The `shardmq` binary; found next to this executable when `None`.
    pub binary: Option<PathBuf>,
    /// Where to create the temporary directory; the system's temp dir when `None`.
    pub parent_dir: Option<PathBuf>,
    /// `sync` or `async`.
    pub flush: String,
    /// `--shards`, when set.
    pub shards: Option<usize>,
    /// Extra `--set KEY=VALUE` configuration keys.
    pub sets: Vec<String>,
}

/// A running standalone broker (NameServer and broker in one process).
#[derive(Debug)]
pub struct SpawnedBroker {
    child: Child,
    pub namesrv: String,
    pub broker: String,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
    log: PathBuf,
    // Declared last: dropped after the broker stopped.
    _dir: tempfile::TempDir,
}

/// The `shardmq` binary: `explicit`, else next to `exe` or one directory above it.
pub fn find_broker_binary(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf, DriverError> {
    if let Some(p) = explicit {
        return match p.is_file() {
            true => Ok(p.to_path_buf()),
            false => Err(DriverError::Spawn(format!(
                "--broker-bin {} is not a file",
                p.display()
            ))),
        };
    }
    let dir = exe.parent();
    let candidates = [
        dir.map(|d| d.join("shardmq")),
        dir.and_then(Path::parent).map(|d| d.join("shardmq")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            DriverError::Spawn(format!(
                "no shardmq binary next to {} (build it: cargo build --release -p shardmq-server, \
                 or pass --broker-bin PATH)",
                exe.display()
            ))
        })
}

impl SpawnedBroker {
    pub fn start(opts: &SpawnOptions) -> Result<SpawnedBroker, DriverError> {
        let exe = std::env::current_exe()
            .map_err(|e| DriverError::io("locate the running executable", e))?;
        let binary = find_broker_binary(opts.binary.as_deref(), &exe)?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("shardmq-bench-broker-");
        let dir = match &opts.parent_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent)
                    .map_err(|e| DriverError::io(format!("create {}", parent.display()), e))?;
                builder.tempdir_in(parent)
            }
            None => builder.tempdir(),
        }
        .map_err(|e| DriverError::io("create the broker's temporary directory", e))?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("broker.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| DriverError::io(format!("create {}", log.display()), e))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("standalone")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--namesrv-listen", "127.0.0.1:0"])
            .args(["--flush", &opts.flush]);
        if let Some(s) = opts.shards {
            cmd.args(["--shards", &s.to_string()]);
        }
        for set in &opts.sets {
            cmd.args(["--set", set]);
        }
        let child = cmd
            .env("SHARDMQ_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| DriverError::io(format!("start {}", binary.display()), e))?;
        running().push((child.id(), dir.path().to_path_buf()));
        let mut broker = SpawnedBroker {
            child,
            namesrv: String::new(),
            broker: String::new(),
            data_dir,
            binary,
            log,
            _dir: dir,
        };
        let ready = broker.read_ready()?;
        let field = |k: &str| ready[k].as_str().unwrap_or_default().to_string();
        (broker.namesrv, broker.broker) = (field("namesrv"), field("broker"));
        if broker.namesrv.is_empty() || broker.broker.is_empty() {
            return Err(broker.failed(&format!("a ready line without addresses: {ready}")));
        }
        Ok(broker)
    }

    /// Waits for the JSON ready line on the broker's stdout.
    fn read_ready(&mut self) -> Result<serde_json::Value, DriverError> {
        let Some(stdout) = self.child.stdout.take() else {
            return Err(self.failed("its stdout is not piped"));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => return Err(self.failed("no ready line within 60 s")),
        };
        serde_json::from_str(&line).map_err(|_| self.failed(&format!("it printed {line:?}")))
    }

    /// An error naming what went wrong and the end of the broker's log.
    fn failed(&self, what: &str) -> DriverError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        DriverError::Spawn(format!(
            "{} standalone: {what}; its log ends:\n{}",
            self.binary.display(),
            tail.join("\n")
        ))
    }

    /// The broker's process id (NameServer and broker run in this one process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the broker: SIGTERM (it flushes and closes its store), SIGKILL after the grace.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        signal(self.child.id(), rustix::process::Signal::Term);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        self.stop();
        let pid = self.child.id();
        running().retain(|(p, _)| *p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_binary_next_to_the_executable_or_above() {
        let dir = tempfile::tempdir().expect("temp dir");
        let deps = dir.path().join("deps");
        std::fs::create_dir_all(&deps).expect("mkdir");
        let exe = deps.join("bench-test");
        assert!(find_broker_binary(None, &exe).is_err());
        std::fs::write(dir.path().join("shardmq"), b"").expect("write");
        assert_eq!(
            find_broker_binary(None, &exe).expect("found above"),
            dir.path().join("shardmq")
        );
        std::fs::write(deps.join("shardmq"), b"").expect("write");
        assert_eq!(
            find_broker_binary(None, &exe).expect("found beside"),
            deps.join("shardmq")
        );
        let missing = dir.path().join("nope");
        assert!(find_broker_binary(Some(&missing), &exe).is_err());
    }
}
