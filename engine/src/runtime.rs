//! What the machine must provide before shards start: io_uring, locked memory for glommio's
//! registered buffers, and O_DIRECT on the store directory. Each check fails with an error
//! naming the cause and the fix, instead of a panic deep inside an executor.

use std::path::Path;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::error::OpenError;

/// Below this much locked memory per shard a store refuses to start (glommio itself needs
/// 512 KiB of `RLIMIT_MEMLOCK` to create a reactor).
pub const MEMLOCK_MIN_PER_SHARD_BYTES: u64 = 512 << 10;
/// Registered buffer memory per shard is capped here: enough for every write a shard keeps
/// in flight (32 × 512 KiB) to use registered buffers. Writes from unregistered buffers
/// make the kernel pin their pages on every write: at 4 MiB per shard against 32 MiB, the
/// async append benchmark spent 1.4–2.0 s of system CPU against ~1.0 s.
pub const IO_MEMORY_MAX_PER_SHARD_BYTES: u64 = 32 << 20;
/// glommio's own floor for `io_memory`.
const IO_MEMORY_MIN_BYTES: u64 = 64 << 10;

/// How much locked I/O memory each shard's executor gets, and where that came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMemoryPlan {
    pub per_shard_bytes: usize,
    pub limit_bytes: Option<u64>,
    pub raised: bool,
}

/// Pure sizing rule: a quarter of the limit per shard's share, capped; refuse below the
/// minimum. A quarter because glommio registers the buffer memory with each of its three
/// io_uring rings, and without CAP_IPC_LOCK each registration counts against the limit.
/// With CAP_IPC_LOCK (`ipc_lock`) the limit does not bound the size (the cap), but a limit
/// below the minimum is still refused, whoever runs the store: it is a misconfiguration
/// either way, and the error is the same on every machine.
pub fn plan_io_memory(
    limit_bytes: Option<u64>,
    shards: usize,
    raised: bool,
    ipc_lock: bool,
) -> Result<IoMemoryPlan, OpenError> {
    let shards = shards.max(1) as u64;
    let per_shard = match limit_bytes {
        None => IO_MEMORY_MAX_PER_SHARD_BYTES,
        Some(limit) => {
            if limit / shards < MEMLOCK_MIN_PER_SHARD_BYTES {
                let needed = MEMLOCK_MIN_PER_SHARD_BYTES * shards;
                return Err(OpenError::MemlockTooLow {
                    limit_bytes: limit,
                    shards: shards as usize,
                    needed_bytes: needed,
                    per_shard_bytes: MEMLOCK_MIN_PER_SHARD_BYTES,
                    needed_kib: needed / 1024,
                });
            }
            if ipc_lock {
                IO_MEMORY_MAX_PER_SHARD_BYTES
            } else {
                (limit / 4 / shards).min(IO_MEMORY_MAX_PER_SHARD_BYTES)
            }
        }
    };
    let per_shard = per_shard.max(IO_MEMORY_MIN_BYTES);
    Ok(IoMemoryPlan {
        per_shard_bytes: per_shard as usize,
        limit_bytes,
        raised,
    })
}

/// Raises the soft memlock limit to the hard one where that helps (always allowed), then
/// plans the per-shard I/O memory. `override_bytes` (config) wins if it fits.
pub fn size_io_memory(
    shards: usize,
    override_bytes: Option<usize>,
) -> Result<IoMemoryPlan, OpenError> {
    let Rlimit { current, maximum } = getrlimit(Resource::Memlock);
    let mut raised = false;
    let mut limit = current;
    if current != maximum {
        let want = Rlimit {
            current: maximum,
            maximum,
        };
        if setrlimit(Resource::Memlock, want).is_ok() {
            raised = true;
            limit = maximum;
        }
    }
    let mut plan = plan_io_memory(limit, shards, raised, has_ipc_lock())?;
    if let Some(bytes) = override_bytes {
        plan.per_shard_bytes = bytes.max(IO_MEMORY_MIN_BYTES as usize);
    }
    Ok(plan)
}

/// Whether this process holds CAP_IPC_LOCK (bit 14 of `CapEff` in `/proc/self/status`), so
/// locked memory is not counted against `RLIMIT_MEMLOCK`.
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Sets up and tears down a tiny io_uring to learn whether the kernel lets us use one.
pub fn probe_io_uring() -> Result<(), OpenError> {
    let mut params = rustix::io_uring::io_uring_params::default();
    match rustix::io_uring::io_uring_setup(2, &mut params) {
        Ok(fd) => {
            drop(fd);
            Ok(())
        }
        Err(e) => Err(OpenError::IoUringUnavailable {
            source: std::io::Error::from_raw_os_error(e.raw_os_error()),
        }),
    }
}

/// Memory-backed filesystems: Linux >= 6.6 accepts O_DIRECT on tmpfs, but nothing there
/// reaches a device or survives a power cut, so a store must not live there.
const MEMORY_FILESYSTEMS: [(i64, &str); 2] = [(0x0102_1994, "tmpfs"), (0x8584_58f6, "ramfs")];

/// Refuses memory-backed filesystems, then opens a scratch file in `dir` with O_DIRECT (some
/// FUSE and network filesystems refuse it).
pub fn probe_direct_io(dir: &Path) -> Result<(), OpenError> {
    use rustix::fs::{Mode, OFlags};
    let unsupported = |reason: String| OpenError::DirectIoUnsupported {
        dir: dir.to_owned(),
        reason,
    };
    if let Ok(fs) = rustix::fs::statfs(dir) {
        if let Some((_, name)) = MEMORY_FILESYSTEMS.iter().find(|(m, _)| *m == fs.f_type) {
            return Err(unsupported(format!(
                "it is {name}: memory-backed, nothing is durable"
            )));
        }
    }
    let path = dir.join(".direct-io-probe");
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::DIRECT | OFlags::CLOEXEC;
    let result = rustix::fs::open(&path, flags, Mode::from_raw_mode(0o600));
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(_fd) => Ok(()),
        Err(e) => Err(unsupported(format!("opening with O_DIRECT failed: {e}"))),
    }
}

/// glommio decides once per thread and device whether reads may use io_uring's polled ring,
/// by reading the first block of the first file it opens there. On a freshly preallocated
/// segment that read never reaches the device and wrongly "succeeds", after which every real
/// read fails with EOPNOTSUPP on devices without polling (virtio, most SATA). Opening a file
/// whose first block is really on the device (the store's fsynced meta file) first makes the
/// probe tell the truth.
pub async fn settle_iopoll_probe(file_on_device: &Path) -> std::io::Result<()> {
    let file = glommio::io::DmaFile::open(file_on_device)
        .await
        .map_err(|e| std::io::Error::other(format!("open {}: {e}", file_on_device.display())))?;
    let _ = file.close().await;
    Ok(())
}

/// CPUs this process may run on (its affinity mask), for the default shard count and pinning.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::process::sched_getaffinity(None) {
        Ok(set) => (0..rustix::process::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_the_limit() {
        let p = plan_io_memory(Some(8 << 20), 2, false, false).unwrap();
        assert_eq!(p.per_shard_bytes, 1 << 20);
        let p = plan_io_memory(None, 4, false, false).unwrap();
        assert_eq!(p.per_shard_bytes as u64, IO_MEMORY_MAX_PER_SHARD_BYTES);
    }

    #[test]
    fn with_cap_ipc_lock_the_limit_does_not_apply() {
        let p = plan_io_memory(Some(8 << 20), 2, false, true).unwrap();
        assert_eq!(p.per_shard_bytes as u64, IO_MEMORY_MAX_PER_SHARD_BYTES);
        assert!(plan_io_memory(Some(600 << 10), 2, false, true).is_err());
    }

    #[test]
    fn plan_refuses_below_minimum_and_names_the_fix() {
        let err = plan_io_memory(Some(600 << 10), 2, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RLIMIT_MEMLOCK"), "{err}");
        assert!(err.contains("ulimit -l 1024"), "{err}");
    }
}
