//! The one error type of the bench binary; `main` prints it and exits nonzero.

use std::io;

use crate::size::format_bytes;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Arguments that parse but cannot run together.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),

    #[error(
        "RLIMIT_MEMLOCK soft limit is {} ({limit} bytes); glommio needs at least {} of locked \
         I/O memory. Raise it: `ulimit -l {}` (KiB) in the shell, LimitMEMLOCK= in a systemd \
         unit, or --ulimit memlock=... for docker",
        format_bytes(*limit), format_bytes(*min), min / 1024
    )]
    MemlockTooLow { limit: u64, min: u64 },

    #[error(
        "io_uring is unavailable: {0}. glommio needs Linux 5.8+ with io_uring allowed \
             (sysctl kernel.io_uring_disabled=0, not blocked by seccomp or the container runtime)"
    )]
    IoUringUnavailable(String),

    #[error("engine: {0}")]
    Engine(String),
    #[error("could not run the glommio executor: {0}")]
    Runtime(String),

    #[error(transparent)]
    Driver(#[from] crate::drivers::DriverError),

    #[error("CPU time: {0}")]
    Cpu(#[from] crate::cpu::CpuError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("short write at offset {pos}: {written} of {expected} bytes")]
    ShortWrite {
        pos: u64,
        written: usize,
        expected: usize,
    },
}

impl BenchError {
    /// An I/O error with what was being done when it happened.
    pub fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        BenchError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}
