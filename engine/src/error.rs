//! Error types, one per operation. Each carries the context needed to act on it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::record::{DecodeError, EncodeError};
use crate::topics::{Perm, TopicError, TopicsFileError};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid store config: {0}")]
    Invalid(String),
}

/// Why `Store::open` failed.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "store directory {0} is locked by another process (a broker or store already has it \
         open); stop it first or use another directory"
    )]
    Locked(PathBuf),
    #[error("store meta file {path}: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error(
        "store directory {dir} is on a filesystem without O_DIRECT to a device ({reason}); \
         tmpfs (/dev/shm, some /tmp) cannot hold a store: use a directory on ext4 or xfs"
    )]
    DirectIoUnsupported { dir: PathBuf, reason: String },
    #[error(
        "io_uring is not available ({source}): ShardMQ needs Linux >= 5.8 with io_uring \
         enabled (check `sysctl kernel.io_uring_disabled` is 0, and that seccomp/containers \
         allow io_uring_setup)"
    )]
    IoUringUnavailable { source: io::Error },
    #[error(
        "locked-memory limit too low: RLIMIT_MEMLOCK is {limit_bytes} bytes, a store with \
         {shards} shard(s) needs at least {needed_bytes} ({per_shard_bytes} per shard) for \
         io_uring buffers; raise it with `ulimit -l {needed_kib}` (or LimitMEMLOCK= in a \
         systemd unit, memlock in /etc/security/limits.conf), or open fewer shards"
    )]
    MemlockTooLow {
        limit_bytes: u64,
        shards: usize,
        needed_bytes: u64,
        per_shard_bytes: u64,
        needed_kib: u64,
    },
    #[error("cannot start shard {shard}: {reason}")]
    ShardStart { shard: usize, reason: String },
    #[error("recovery of shard {shard} failed: {source}")]
    Recovery { shard: usize, source: RecoveryError },
    #[error(transparent)]
    Topics(#[from] TopicsFileError),
    #[error(
        "topic {topic:?} was being deleted when the store last stopped, and finishing the \
         delete failed: {source}"
    )]
    InterruptedDelete {
        topic: String,
        source: Box<TopicAdminError>,
    },
}

/// A problem found while recovering a shard's CommitLog.
#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(
        "CORRUPTION in sealed segment {path} at offset {offset} (byte {position} of the \
         file): {reason}; later segments hold data, so this is not a torn tail. Restore the \
         segment from a replica or backup; ShardMQ will not skip it silently"
    )]
    Corruption {
        path: PathBuf,
        offset: u64,
        position: u64,
        reason: DecodeError,
    },
    #[error("segment file {path} has size {size}, expected {expected}")]
    SegmentSize {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("unexpected file {0} in a CommitLog directory")]
    StrayFile(PathBuf),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Why a put was not stored. A put that returns `Ok` may still carry a status other than
/// `PutStatus::Ok` (e.g. `FlushDiskTimeout`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PutError {
    #[error("message illegal: {0}")]
    MessageIllegal(#[from] EncodeError),
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("shard {shard} is busy: its write buffer is full; retry later")]
    Busy { shard: usize },
    #[error("shard {shard} stopped taking writes after an I/O error: {reason}")]
    ShardFailed { shard: usize, reason: String },
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("a blocking put was called on a shard thread, which would deadlock it")]
    BlockingOnShard,
    #[error(
        "shard {shard} refuses puts: the disk is {used_percent}% full (at or above the \
         retention.disk_refuse_ratio); reads keep working"
    )]
    DiskFull { shard: usize, used_percent: u32 },
    /// A log of the shard could not create its next segment for lack of space (ENOSPC, or
    /// EDQUOT: `kind`). Nothing written is lost; the shard retries on its own and takes puts
    /// again once space is freed. Same wire status as `DiskFull`.
    #[error(
        "shard {shard} refuses puts: no space for a new {log} segment ({reason}); it takes \
         puts again on its own once space is freed; reads keep working"
    )]
    NoSpace {
        shard: usize,
        log: &'static str,
        kind: io::ErrorKind,
        reason: String,
    },
    #[error("topic {topic:?} does not exist and auto-create is disabled")]
    TopicNotExist { topic: String },
    #[error("topic {topic:?} could not be auto-created: {reason}")]
    TopicNotCreated { topic: String, reason: String },
    #[error("topic {topic:?} is being deleted; retry once the delete finished")]
    TopicDeleting { topic: String },
    #[error(
        "queue id {queue_id} is out of range: topic {topic:?} has {write_queues} write queues"
    )]
    QueueIdOutOfRange {
        topic: String,
        queue_id: u32,
        write_queues: u32,
    },
    #[error("topic {topic:?} does not take writes (permission {perm})")]
    NoPermission { topic: String, perm: Perm },
    #[error("delayed message refused: {0}")]
    Delay(#[from] crate::schedule::plan::ScheduleError),
    #[error("delayed messages are off on this store (schedule.enabled = false)")]
    ScheduleDisabled,
}

/// Why a topic administration call (create, update, delete) failed. The table is unchanged
/// unless said otherwise.
#[derive(Debug, Error)]
pub enum TopicAdminError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The new table could not be saved; the change was not made.
    #[error(transparent)]
    File(#[from] TopicsFileError),
    #[error("topic {name:?} is being deleted")]
    Deleting { name: String },
    /// A shard could not take part in the delete (it failed or is stopping). The topic stays
    /// refused to producers; calling `delete_topic` again retries, and the next open finishes
    /// it if any shard recorded it.
    #[error("delete of topic {name:?} did not complete on shard {shard}: {reason}")]
    DeleteIncomplete {
        name: String,
        shard: usize,
        reason: String,
    },
}

/// Why reading a record back failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    #[error("no shard {0}")]
    NoSuchShard(usize),
    #[error("offset {offset} on shard {shard} was deleted by retention; the log starts at {min}")]
    OffsetTooSmall { shard: usize, offset: u64, min: u64 },
    #[error("offset {offset} is not readable on shard {shard} (readable up to {readable})")]
    OffsetOutOfRange {
        shard: usize,
        offset: u64,
        readable: u64,
    },
    #[error("offset {offset} on shard {shard} does not hold a valid record: {reason}")]
    BadRecord {
        shard: usize,
        offset: u64,
        reason: DecodeError,
    },
    #[error("I/O error reading shard {shard} at {offset}: {reason}")]
    Io {
        shard: usize,
        offset: u64,
        reason: String,
    },
    #[error("topic {topic} is not readable (permission {perm:?})")]
    NoPermission { topic: String, perm: Perm },
    #[error("queue {queue_id} of topic {topic} is not one of its {read_queues} read queues")]
    QueueIdOutOfRange {
        topic: String,
        queue_id: u32,
        read_queues: u32,
    },
    #[error("the store is shutting down")]
    ShuttingDown,
}

/// Why `shutdown` could not finish cleanly. The data is still recoverable as after a crash.
#[derive(Debug, Error)]
pub enum ShutdownError {
    #[error("shard {shard} did not shut down cleanly: {reason}")]
    Shard { shard: usize, reason: String },
}

/// An I/O error with what was being done and to which file.
pub(crate) fn io_context(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.into();
    move |source| OpenError::Io { what, path, source }
}
