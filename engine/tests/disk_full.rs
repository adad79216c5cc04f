//! A disk with no space for a new segment: puts are refused with the disk-full status (the
//! status the ratio guard gives), the segment is retried until space returns, then puts go
//! on without a restart; nothing acknowledged is lost, and a shutdown while waiting is clean.
//! Driven through the fault plan (`fallocate` fails with an errno) and, when run as root, on
//! a real loop-mounted ext4 filesystem.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{body, config, get_request};
use shardmq_engine::log::segment::{create_segment, is_out_of_space};
use shardmq_engine::{
    FaultPlan, FixedProbe, FlushMode, MessageInput, ProbeHandle, PutError, PutResult, PutStatus,
    RetentionConfig, StatvfsProbe, Store, StoreConfig, UsageProbe,
};

const TOPIC: &str = "df";
const ENOSPC: i32 = 28;
const EIO: i32 = 5;
/// Body bytes of every message.
const LEN: usize = 4000;
/// How soon puts must be taken again once space is back.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

fn msg(seq: u64) -> MessageInput {
    MessageInput::new(TOPIC, 0, body(0, seq, LEN))
}

/// What a run of puts got: `seq` is the next message to put.
#[derive(Default)]
struct Run {
    seq: u64,
    /// Acknowledged (PUT_OK): must survive everything.
    acked: Vec<(u64, PutResult)>,
    /// FLUSH_DISK_TIMEOUT: stored but not yet confirmed; written once space is back.
    timed_out: Vec<(u64, PutResult)>,
}

impl Run {
    /// Puts messages one at a time until one is refused (returned), at most `limit`.
    fn until_refused(&mut self, store: &Store, limit: u64) -> Option<PutError> {
        for _ in 0..limit {
            if let Err(e) = self.put(store) {
                return Some(e);
            }
        }
        None
    }

    fn put(&mut self, store: &Store) -> Result<PutStatus, PutError> {
        let r = store.put_message_blocking(msg(self.seq))?;
        match r.status {
            PutStatus::PutOk => self.acked.push((self.seq, r)),
            PutStatus::FlushDiskTimeout => self.timed_out.push((self.seq, r)),
        }
        self.seq += 1;
        Ok(r.status)
    }

    /// Polls with puts until one is acknowledged; returns how long that took. Only the
    /// disk-full refusals are expected meanwhile.
    fn until_accepted(&mut self, store: &Store, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            match self.put(store) {
                Ok(PutStatus::PutOk) => return start.elapsed(),
                Ok(_) => {}
                Err(e) if is_disk_full(&e) && start.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("puts not taken again after {:?}: {e}", start.elapsed()),
            }
        }
    }

    fn stored(&self) -> Vec<(u64, PutResult)> {
        self.acked.iter().chain(&self.timed_out).copied().collect()
    }
}

/// The two refusals a full disk gives (both SERVICE_NOT_AVAILABLE on the wire).
fn is_disk_full(e: &PutError) -> bool {
    matches!(e, PutError::NoSpace { .. } | PutError::DiskFull { .. })
}

fn assert_no_space(e: &PutError) {
    match e {
        PutError::NoSpace { kind, log, .. } => {
            assert_eq!(*kind, std::io::ErrorKind::StorageFull, "{e}");
            assert_eq!(*log, "commitlog", "{e}");
            assert!(e.to_string().contains("once space is freed"), "{e}");
        }
        other => panic!("expected the no-space refusal, got {other:?}"),
    }
}

/// Every message is back, intact, by its CommitLog offset and (if it has one) through its
/// queue as a consumer reads it.
fn assert_intact(store: &Store, items: &[(u64, PutResult)]) {
    for (seq, r) in items {
        let m = store
            .read_message_blocking(r.shard, r.offset)
            .unwrap_or_else(|e| panic!("message {seq} at {}: {e}", r.offset));
        assert_eq!(m.body[..], body(0, *seq, LEN)[..], "message {seq}");
    }
    let mut queue = BTreeMap::new();
    let mut next = 0;
    loop {
        let req = get_request(TOPIC, 0, next, 64, "*");
        let got = futures_lite::future::block_on(store.get_message(req)).unwrap();
        if got.messages.is_empty() {
            break;
        }
        for m in got.messages {
            queue.insert(m.queue_offset, m.message.body);
        }
        next = got.next_begin_offset;
    }
    for (seq, r) in items {
        if let Some(q) = r.queue_offset {
            let found = queue.get(&q).map(|b| &b[..]);
            assert_eq!(found, Some(&body(0, *seq, LEN)[..]), "message {seq}");
        }
    }
}

/// No half-created segment is left behind: every file has the full segment size.
fn assert_whole_segments(store_dir: &Path, segment_bytes: u64) {
    let dir = store_dir.join("commitlog").join("0");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 20 {
            let len = entry.metadata().unwrap().len();
            assert_eq!(len, segment_bytes, "segment {name} is {len} bytes");
        }
    }
}

fn shutdown(store: Store) {
    futures_lite::future::block_on(store.shutdown()).expect("a clean shutdown");
}

/// Reopens without faults and checks `items` again.
fn reopen_and_check(cfg: &StoreConfig, items: &[(u64, PutResult)]) {
    let store = Store::open(StoreConfig {
        fault_plan: None,
        ..cfg.clone()
    })
    .unwrap();
    assert_intact(&store, items);
    store.put_message_blocking(msg(u64::MAX)).unwrap();
    shutdown(store);
}

fn faulty(dir: &Path, flush: FlushMode) -> (StoreConfig, Arc<FaultPlan>) {
    let plan = Arc::new(FaultPlan::default());
    let cfg = StoreConfig {
        fault_plan: Some(plan.clone()),
        sync_flush_timeout_ms: 300,
        ..config(dir, 1, flush)
    };
    (cfg, plan)
}

#[test]
fn no_space_for_a_segment_refuses_puts_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, plan) = faulty(dir.path(), FlushMode::Sync);
    let store = Store::open(cfg.clone()).unwrap();
    let mut run = Run::default();
    assert!(run.until_refused(&store, 5).is_none());

    plan.fallocate_errno.store(ENOSPC, Ordering::SeqCst);
    let refusal = run
        .until_refused(&store, 10_000)
        .expect("a full disk refuses puts");
    assert_no_space(&refusal);
    // It stays so while the disk is full (retries included), with no half-made file left.
    std::thread::sleep(Duration::from_millis(600));
    assert_no_space(&run.put(&store).unwrap_err());
    assert_whole_segments(dir.path(), cfg.segment_size_bytes);

    plan.fallocate_errno.store(0, Ordering::SeqCst);
    let took = run.until_accepted(&store, RESUME_WITHIN);
    eprintln!(
        "acked {}, timed out {}, puts taken again after {took:?}",
        run.acked.len(),
        run.timed_out.len()
    );
    // And a segment's worth more, through the next roll.
    assert!(run.until_refused(&store, 80).is_none());
    assert_intact(&store, &run.stored());
    shutdown(store);
    reopen_and_check(&cfg, &run.stored());
}

#[test]
fn a_shutdown_while_waiting_for_space_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, plan) = faulty(dir.path(), FlushMode::Async);
    let store = Store::open(cfg.clone()).unwrap();
    let mut run = Run::default();
    assert!(run.until_refused(&store, 5).is_none());
    plan.fallocate_errno.store(ENOSPC, Ordering::SeqCst);
    // Under ASYNC_FLUSH the put whose record waits for the new segment waits with it: put
    // from another thread until one does not come back.
    let (tx, rx) = mpsc::channel();
    let filler = {
        let store = store.clone();
        let first = run.seq;
        std::thread::spawn(move || {
            for seq in first.. {
                let r = store.put_message_blocking(msg(seq));
                let refused = r.is_err();
                tx.send((seq, r)).unwrap();
                if refused {
                    return;
                }
            }
        })
    };
    let mut waiting = run.seq;
    loop {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok((seq, Ok(r))) => {
                run.acked.push((seq, r));
                waiting = seq + 1;
            }
            Ok((seq, Err(e))) => panic!("put {seq} refused before any waited: {e}"),
            Err(_) => break,
        }
    }
    assert_no_space(&store.put_message_blocking(msg(u64::MAX)).unwrap_err());

    shutdown(store);
    // The waiting put is refused, not lost silently nor acknowledged.
    let (seq, outcome) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seq, waiting);
    assert_no_space(&outcome.unwrap_err());
    filler.join().unwrap();
    assert_whole_segments(dir.path(), cfg.segment_size_bytes);
    reopen_and_check(&cfg, &run.acked);
}

#[test]
fn other_errors_creating_a_segment_still_stop_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, plan) = faulty(dir.path(), FlushMode::Sync);
    let store = Store::open(cfg.clone()).unwrap();
    let mut run = Run::default();
    plan.fallocate_errno.store(EIO, Ordering::SeqCst);
    match run.until_refused(&store, 10_000) {
        Some(PutError::ShardFailed { reason, .. }) => {
            assert!(reason.contains("cannot create segment"), "{reason}");
        }
        other => panic!("an I/O error creating a segment is fail-stop: {other:?}"),
    }
    // The shard did not shut down cleanly; what was acknowledged is there after a reopen.
    let _ = futures_lite::future::block_on(store.shutdown());
    reopen_and_check(&cfg, &run.acked);
}

#[test]
fn a_failed_disk_reading_does_not_count_as_not_full() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(FixedProbe::with_ratio(0.95));
    let store = Store::open(StoreConfig {
        usage_probe: Some(ProbeHandle(probe.clone())),
        ..config(dir.path(), 1, FlushMode::Async)
    })
    .unwrap();
    let clean = || futures_lite::future::block_on(store.clean_now());
    let put = || store.put_message_blocking(msg(0));
    clean();
    assert!(matches!(put(), Err(PutError::DiskFull { .. })));
    // The disk use cannot be read: the guard stays as it was.
    probe.fail(std::io::ErrorKind::Other);
    clean();
    assert!(matches!(put(), Err(PutError::DiskFull { .. })));
    probe.set_ratio(0.5);
    clean();
    put().unwrap();
    // And an open guard stays open.
    probe.fail(std::io::ErrorKind::Other);
    clean();
    put().unwrap();
    shutdown(store);
}

/// A loop-mounted ext4 filesystem on a temporary directory; unmounted and removed on drop,
/// also when the test fails.
struct SmallDisk {
    mnt: PathBuf,
    mounted: bool,
    /// Holds the image and the mount point; dropped after `drop` unmounted.
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    /// `Err(why)` when this machine cannot run the test (not root, tools missing).
    fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let uid = rustix::process::geteuid();
        if !uid.is_root() {
            return Err(format!("loop-mounting needs root (euid {})", uid.as_raw()));
        }
        for tool in ["mkfs.ext4", "mount", "umount"] {
            if !tool_exists(tool) {
                return Err(format!("{tool} not found"));
            }
        }
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = tmp.path().join("disk.img");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| e.to_string())?;
        // No blocks reserved for root: the test runs as root and must see the disk full.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt))?;
        Ok(SmallDisk {
            mnt,
            mounted: true,
            _tmp: tmp,
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // A store dropped by a failing test may hold files open a moment longer.
        for _ in 0..30 {
            if run(Command::new("umount").arg(&self.mnt)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = run(Command::new("umount").arg("-l").arg(&self.mnt)) {
            eprintln!("cannot unmount {}: {e}", self.mnt.display());
        }
    }
}

fn tool_exists(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn available(path: &Path) -> u64 {
    StatvfsProbe.usage(path).unwrap().available_bytes
}

/// Writes `bytes` (rounded down to 4 KiB) of ballast to `path`.
fn ballast(path: &Path, bytes: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut left = bytes - bytes % 4096;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// `create_segment` straight on a disk without room for it: `fallocate` fails with ENOSPC,
/// kept as `StorageFull`, and the half-made file is gone with the space it took.
fn creation_fails_cleanly(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    let before = available(dir);
    let bytes = (before + (1 << 20)).next_multiple_of(4096);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .unwrap();
    let created = executor.run(async { create_segment(dir, 0, bytes, None).await.map(|_| ()) });
    let err = created.expect_err("no room for the segment");
    assert!(is_out_of_space(&err), "{err}");
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "the file is gone"
    );
    assert_eq!(available(dir), before, "and so is the space it took");
}

#[test]
fn a_real_full_disk_refuses_puts_and_takes_them_again_once_space_is_freed() {
    let disk = match SmallDisk::mount(64 << 20) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: the loop-mounted full-disk test needs root and mkfs.ext4: {why}");
            return;
        }
    };
    const SEGMENT: u64 = 1 << 20;
    let retention = RetentionConfig {
        interval_ms: 500,
        disk_warn_ratio: 1.0,
        disk_force_ratio: 1.0,
        disk_refuse_ratio: 1.0,
        ..RetentionConfig::default()
    };
    let cfg = StoreConfig {
        segment_size_bytes: SEGMENT,
        consume_queue_segment_bytes: 64 << 10,
        sync_flush_timeout_ms: 500,
        retention: retention.clone(),
        ..config(&disk.mnt.join("store"), 1, FlushMode::Sync)
    };
    // Room for the store's first segments and small files, not for a second CommitLog
    // segment: its first roll meets a full disk. (With only the active segment on disk, the
    // ratio guard has nothing to delete should it see the disk 100 % full.)
    let ballast_path = disk.mnt.join("ballast");
    ballast(&ballast_path, available(&disk.mnt) - SEGMENT * 3 / 2);
    creation_fails_cleanly(&disk.mnt.join("probe"));
    let store = Store::open(cfg.clone()).unwrap();
    let mut run = Run::default();
    let refusal = run
        .until_refused(&store, 3 * SEGMENT / LEN as u64)
        .expect("the disk fills up");
    assert!(is_disk_full(&refusal), "{refusal}");
    assert!(!run.acked.is_empty());
    eprintln!(
        "disk full after {} acked puts ({} bytes free): {refusal}",
        run.acked.len(),
        available(&disk.mnt)
    );
    assert_whole_segments(&cfg.store_path, SEGMENT);

    std::fs::remove_file(&ballast_path).unwrap();
    let within = RESUME_WITHIN + Duration::from_millis(retention.interval_ms);
    let took = run.until_accepted(&store, within);
    eprintln!("puts taken again {took:?} after the ballast was deleted");
    // A segment's worth more, through the next roll.
    assert!(run.until_refused(&store, SEGMENT / LEN as u64).is_none());
    assert_intact(&store, &run.stored());
    shutdown(store);
    reopen_and_check(&cfg, &run.stored());
    drop(disk);
}
