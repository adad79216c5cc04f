//! Starting a glommio executor that fits this machine's RLIMIT_MEMLOCK.
//!
//! glommio reserves `io_memory` per executor (default 10 MiB) and registers it with each of
//! its three io_uring rings (main, latency, poll). Without CAP_IPC_LOCK each registration is
//! charged to the user's RLIMIT_MEMLOCK, so one executor costs about 3 × `io_memory` of the
//! limit; when it does not fit glommio only logs a warning and falls back to slower
//! unregistered I/O. We therefore size `io_memory` to a quarter of the soft limit per
//! executor (3 rings plus headroom for other processes of the same user), capped at 4 MiB.

use std::future::Future;

use glommio::{GlommioError, LocalExecutorBuilder, Placement, ReactorErrorKind};
use rustix::process::{getrlimit, Resource};

use crate::error::BenchError;

/// Below this soft limit glommio refuses to start (its own check, `MIN_MEMLOCK_LIMIT`).
pub const MIN_MEMLOCK: u64 = 512 * 1024;
/// Upper bound for `io_memory` per executor.
pub const MAX_IO_MEMORY: u64 = 4 << 20;
/// glommio rounds smaller values up to this.
const GLOMMIO_MIN_IO_MEMORY: u64 = 64 * 1024;

/// The io_memory chosen for each executor and the limit it was derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMemory {
    pub per_executor: usize,
    /// RLIMIT_MEMLOCK soft limit in bytes; `None` = unlimited.
    pub memlock_soft_limit: Option<u64>,
}

/// `io_memory` for each of `executors` executors under a soft limit (`None` = unlimited).
pub fn io_memory_for_limit(soft_limit: Option<u64>, executors: usize) -> Result<usize, BenchError> {
    let Some(limit) = soft_limit else {
        return Ok(MAX_IO_MEMORY as usize);
    };
    if limit < MIN_MEMLOCK {
        return Err(BenchError::MemlockTooLow {
            limit,
            min: MIN_MEMLOCK,
        });
    }
    let share = limit / 4 / executors.max(1) as u64;
    let bytes = (share & !4095).clamp(GLOMMIO_MIN_IO_MEMORY, MAX_IO_MEMORY);
    Ok(bytes as usize)
}

/// Reads RLIMIT_MEMLOCK and sizes `io_memory` for `executors` executors.
pub fn io_memory_budget(executors: usize) -> Result<IoMemory, BenchError> {
    let soft = getrlimit(Resource::Memlock).current;
    Ok(IoMemory {
        per_executor: io_memory_for_limit(soft, executors)?,
        memlock_soft_limit: soft,
    })
}

/// Runs `fut_gen()` on a new single-threaded glommio executor named `name` and waits for it.
/// Start-up failures (io_uring missing, memlock) become clear [`BenchError`]s.
pub fn run_on_executor<G, F, T>(name: &str, io: IoMemory, fut_gen: G) -> Result<T, BenchError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T, BenchError>> + 'static,
    T: Send + 'static,
{
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(io.per_executor)
        .spawn(fut_gen)
        .map_err(startup_error)?;
    handle.join().map_err(startup_error)?
}

fn startup_error<T>(err: GlommioError<T>) -> BenchError {
    use rustix::io::Errno;
    use std::io::ErrorKind;
    match err {
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(limit, min)) => {
            BenchError::MemlockTooLow { limit, min }
        }
        GlommioError::IoError(e)
            if e.raw_os_error() == Some(Errno::NOSYS.raw_os_error())
                || e.kind() == ErrorKind::PermissionDenied =>
        {
            BenchError::IoUringUnavailable(e.to_string())
        }
        other => BenchError::Runtime(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_limit() {
        // ulimit -l 8192 (KiB): 2 MiB per executor, three rings = 6 MiB < 8 MiB.
        assert_eq!(io_memory_for_limit(Some(8 << 20), 1).unwrap(), 2 << 20);
        assert_eq!(io_memory_for_limit(Some(8 << 20), 2).unwrap(), 1 << 20);
        assert_eq!(io_memory_for_limit(Some(1 << 30), 1).unwrap(), 4 << 20);
        assert_eq!(io_memory_for_limit(None, 1).unwrap(), 4 << 20);
        assert_eq!(io_memory_for_limit(Some(512 << 10), 8).unwrap(), 64 << 10);
    }

    #[test]
    fn refuses_tiny_limit() {
        let err = io_memory_for_limit(Some(64 << 10), 1).unwrap_err();
        assert!(matches!(err, BenchError::MemlockTooLow { .. }));
        assert!(err.to_string().contains("ulimit -l"));
    }
}
