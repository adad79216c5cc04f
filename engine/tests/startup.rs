//! What the machine must provide: clear errors instead of panics when it does not.

mod common;

use std::path::Path;
use std::process::Command;

use common::config;
use rustix::process::{setrlimit, Resource, Rlimit};
use shardmq_engine::{FlushMode, OpenError, Store};

const ENV_MEMLOCK_DIR: &str = "SHARDMQ_MEMLOCK_CHILD_DIR";

/// Child: lowers RLIMIT_MEMLOCK (soft and hard, so it cannot be raised back), then opens.
#[test]
#[ignore = "child process of memlock_below_minimum_gives_a_clear_error"]
fn memlock_child() {
    let Ok(dir) = std::env::var(ENV_MEMLOCK_DIR) else {
        return;
    };
    let limit = Rlimit {
        current: Some(256 << 10),
        maximum: Some(256 << 10),
    };
    setrlimit(Resource::Memlock, limit).unwrap();
    let cfg = shardmq_engine::StoreConfig {
        io_memory_bytes: None,
        ..config(Path::new(&dir), 2, FlushMode::Sync)
    };
    match Store::open(cfg) {
        Ok(_) => println!("OPENED"),
        Err(e) => println!("ERROR: {e}"),
    }
}

#[test]
fn memlock_below_minimum_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memlock_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_MEMLOCK_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child must not panic: {stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("ERROR:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("RLIMIT_MEMLOCK is 262144 bytes"), "{line}");
    assert!(line.contains("ulimit -l 1024"), "names the fix: {line}");
}

#[test]
fn directory_without_o_direct_is_named_in_the_error() {
    let shm = Path::new("/dev/shm");
    let is_tmpfs = rustix::fs::statfs(shm).is_ok_and(|s| s.f_type == 0x0102_1994);
    if !is_tmpfs {
        eprintln!("skipped: /dev/shm is not tmpfs here");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let err = Store::open(config(dir.path(), 1, FlushMode::Async))
        .err()
        .expect("refused");
    assert!(
        matches!(err, OpenError::DirectIoUnsupported { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&dir.path().display().to_string()) && text.contains("O_DIRECT"),
        "{text}"
    );
}
