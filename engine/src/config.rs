//! Store configuration: RocketMQ's knobs with RocketMQ's defaults, loadable from TOML.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::retention::{RetentionConfig, UsageProbe};

/// A disk-usage probe in a config (a test seam).
#[derive(Clone)]
pub struct ProbeHandle(pub Arc<dyn UsageProbe>);

impl std::fmt::Debug for ProbeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeHandle")
    }
}

use crate::error::ConfigError;
use crate::io::FaultPlan;
use crate::topics::{AutoCreate, QUEUES_MAX};

/// When a put is acknowledged relative to the device flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlushMode {
    /// Group commit: a put completes once an `fdatasync` covering it has completed.
    #[serde(rename = "SYNC_FLUSH", alias = "sync")]
    Sync,
    /// A put completes once written; the flusher syncs by RocketMQ's interval rule.
    #[serde(rename = "ASYNC_FLUSH", alias = "async")]
    Async,
}

/// ASYNC_FLUSH: when a put is acknowledged. Either way it is made visible to readers once
/// written, and durable only at the next flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AsyncAck {
    /// Once its O_DIRECT write completed: an acknowledged put survives a crash of the
    /// process (not a power cut before the flush).
    #[default]
    Written,
    /// Once its record is in the shard's write buffer, as RocketMQ acknowledges once a message
    /// is in the page cache: an acknowledged put is lost if the process dies before its write
    /// completes (or the write fails). While the buffer holds more than half of
    /// `write_buffer_max_bytes` not yet written, acknowledgements wait for the write as with
    /// `Written`, so a producer slows down before puts would be refused for a full buffer.
    Appended,
}

impl std::str::FromStr for FlushMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "sync" | "sync_flush" => Ok(FlushMode::Sync),
            "async" | "async_flush" => Ok(FlushMode::Async),
            _ => Err(ConfigError::Invalid(format!(
                "flush mode `{s}`: expected sync or async"
            ))),
        }
    }
}

/// Knobs of a [`crate::Store`]. Field names carry their unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding the meta file, the lock and `commitlog/<shard>/`.
    pub store_path: PathBuf,
    /// Shard count on first open (default: the cores this process may use). Fixed afterwards by
    /// the meta file; a different value on a later open is refused.
    pub shards: Option<usize>,
    /// Size of one CommitLog segment file (RocketMQ: `mapedFileSizeCommitLog`, 1 GiB).
    pub segment_size_bytes: u64,
    /// SYNC_FLUSH or ASYNC_FLUSH (RocketMQ: `flushDiskType`).
    pub flush_mode: FlushMode,
    /// ASYNC_FLUSH: acknowledge a put once written (default) or once in the write buffer.
    pub async_ack: AsyncAck,
    /// ASYNC_FLUSH: how often the flusher wakes (`flushIntervalCommitLog`, 500 ms).
    pub flush_interval_ms: u64,
    /// ASYNC_FLUSH: flush only when at least this many 4 KiB pages are pending
    /// (`flushCommitLogLeastPages`, 4).
    pub flush_least_pages: u32,
    /// ASYNC_FLUSH: flush whatever is pending at least this often
    /// (`flushCommitLogThoroughInterval`, 10 s).
    pub flush_thorough_interval_ms: u64,
    /// SYNC_FLUSH: a put not covered by a flush after this long completes with
    /// FLUSH_DISK_TIMEOUT (`syncFlushTimeout`, 5 s).
    pub sync_flush_timeout_ms: u64,
    /// Largest record accepted (`maxMessageSize`, 4 MiB).
    pub message_size_max_bytes: usize,
    /// Bytes a shard may hold appended but not yet written; beyond it puts get `Busy`.
    pub write_buffer_max_bytes: usize,
    /// Size of one write-buffer chunk (a full chunk goes to the device as one write).
    pub write_chunk_bytes: usize,
    /// Most writes one shard keeps in flight at once.
    pub writes_in_flight_max: usize,
    /// Write zeroes over a CommitLog's reserved blocks a window (32–64 MiB) ahead of the
    /// append offset, so that group commit's fdatasyncs find written extents and need no
    /// journal commit (RocketMQ: `warmMapedFileEnable`). Costs a second write of every byte.
    /// Unset: on under SYNC_FLUSH (bound by flush latency), off under ASYNC_FLUSH (bound by
    /// bandwidth).
    pub zero_fill_ahead: Option<bool>,
    /// Recently written CommitLog bytes each shard keeps in memory for tailing readers
    /// (filled only while someone reads; 0 turns the cache off). Default 64 MiB.
    pub tail_cache_bytes: usize,
    /// How long after a read the tail cache keeps copying written chunks in (2 s): a store
    /// nobody reads from pays nothing for it.
    pub tail_cache_linger_ms: u64,
    /// CommitLog blocks (1 MiB) each shard keeps after reading them from the device for
    /// readers behind the tail cache; readers of different queues lagging by about as much
    /// share them. 0 turns it off (every record is read alone). Default 32 MiB.
    pub read_cache_bytes: usize,
    /// Queue entries each shard keeps in memory (32 bytes each); past it, the oldest full
    /// blocks of the longest queues move to the shard's cold file under `cqcold/` and are
    /// read back from there. 0 keeps every entry in memory. Default 2 097 152 (64 MiB).
    pub queue_entries_in_memory_max: usize,
    /// Locked memory for glommio's registered I/O buffers, per shard. Default: sized to fit
    /// `RLIMIT_MEMLOCK` (see `runtime`).
    pub io_memory_bytes: Option<usize>,
    /// The address stored in records as the store host and encoded in message ids.
    pub store_host: std::net::SocketAddr,
    /// Pin shard `i` to CPU `i` when the process may use it.
    pub pin_shards: bool,
    /// How long a shard runs tasks before it stops to submit and reap I/O (glommio's
    /// preemption timer; its default is 100 ms). glommio hands queued writes to the kernel
    /// only between task runs, so a long burst of appends would leave the device idle.
    pub io_poll_interval_us: u64,
    /// Size of one ConsumeQueue log segment (each shard has one log for all its queues).
    pub consume_queue_segment_bytes: u64,
    /// ASYNC_FLUSH: how often the ConsumeQueue log flushes (`flushIntervalConsumeQueue`, 1 s).
    pub consume_queue_flush_interval_ms: u64,
    /// ASYNC_FLUSH: least pages pending for a ConsumeQueue flush (`flushConsumeQueueLeastPages`, 2).
    pub consume_queue_flush_least_pages: u32,
    /// How often a shard persists its CommitLog checkpoint (the flushed offset).
    pub checkpoint_interval_ms: u64,
    /// Segment retention and disk guards (RocketMQ's `fileReservedTime`, `deleteWhen`,
    /// `diskMaxUsedSpaceRatio`, ...; see `retention`).
    pub retention: RetentionConfig,
    /// Delayed messages (`[schedule]`: levels, longest delay, progress persistence).
    pub schedule: crate::schedule::ScheduleConfig,
    /// Test seam: where disk use is read from (default: `statvfs` of the store directory).
    #[doc(hidden)]
    #[serde(skip)]
    pub usage_probe: Option<ProbeHandle>,
    /// Whether a put to a topic that does not exist creates it, with how many queues and which
    /// permission (RocketMQ's `autoCreateTopicEnable`, `defaultTopicQueueNums`): on, 8 queues,
    /// read and write. In TOML: an `[auto_create]` table with `enabled`, `queues`, `perm`.
    pub auto_create: AutoCreate,
    /// Test seam: fault injection and power-cut simulation. Never set in production.
    #[doc(hidden)]
    #[serde(skip)]
    pub fault_plan: Option<Arc<FaultPlan>>,
    /// Test seam: acknowledge SYNC_FLUSH puts after the write instead of after the flush, to
    /// show that the power-cut test catches it. Never set in production.
    #[doc(hidden)]
    #[serde(skip)]
    pub unsafe_ack_before_flush: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store_path: PathBuf::from("shardmq-data"),
            shards: None,
            segment_size_bytes: 1 << 30,
            flush_mode: FlushMode::Async,
            async_ack: AsyncAck::Written,
            flush_interval_ms: 500,
            flush_least_pages: 4,
            flush_thorough_interval_ms: 10_000,
            sync_flush_timeout_ms: 5_000,
            message_size_max_bytes: 4 << 20,
            write_buffer_max_bytes: 64 << 20,
            tail_cache_bytes: 64 << 20,
            tail_cache_linger_ms: 2_000,
            read_cache_bytes: 32 << 20,
            queue_entries_in_memory_max: 2 << 20,
            write_chunk_bytes: 512 << 10,
            writes_in_flight_max: 32,
            zero_fill_ahead: None,
            io_memory_bytes: None,
            store_host: std::net::SocketAddr::from(([127, 0, 0, 1], 10911)),
            pin_shards: true,
            io_poll_interval_us: 100_000,
            checkpoint_interval_ms: 1_000,
            consume_queue_segment_bytes: 64 << 20,
            consume_queue_flush_interval_ms: 1_000,
            consume_queue_flush_least_pages: 2,
            retention: RetentionConfig::default(),
            schedule: crate::schedule::ScheduleConfig::default(),
            usage_probe: None,
            auto_create: AutoCreate::default(),
            fault_plan: None,
            unsafe_ack_before_flush: false,
        }
    }
}

/// Block size every on-disk offset is aligned to for O_DIRECT. Checked against each file's
/// own alignment when it is opened.
pub const BLOCK_BYTES: u64 = 4096;
/// Smallest segment accepted (tests use small segments to exercise rolls).
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 64 << 10;

impl StoreConfig {
    /// A default config for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            store_path: path.into(),
            ..Default::default()
        }
    }

    /// Reads a TOML file; unknown keys are an error (a typo must not silently take a default).
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: StoreConfig =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the knobs against each other. Called by `Store::open`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Err(e) = self.retention.validate() {
            return bad(format!("retention: {e}"));
        }
        if let Err(e) = self.schedule.plan() {
            return bad(format!("schedule: {e}"));
        }
        if self.schedule.persist_interval_ms == 0 {
            return bad("schedule.persist_interval_ms must be > 0".into());
        }
        check_segment("segment_size_bytes", self.segment_size_bytes)?;
        check_segment(
            "consume_queue_segment_bytes",
            self.consume_queue_segment_bytes,
        )?;
        if self.message_size_max_bytes as u64 + crate::record::BLANK_LEN_MIN
            > self.segment_size_bytes
        {
            return bad(format!(
                "message_size_max_bytes = {} does not fit a segment of {} bytes",
                self.message_size_max_bytes, self.segment_size_bytes
            ));
        }
        if self.write_chunk_bytes < BLOCK_BYTES as usize
            || self.write_chunk_bytes % BLOCK_BYTES as usize != 0
        {
            return bad(format!(
                "write_chunk_bytes = {} must be a positive multiple of {BLOCK_BYTES}",
                self.write_chunk_bytes
            ));
        }
        if self.write_buffer_max_bytes < self.message_size_max_bytes + self.write_chunk_bytes {
            return bad(format!(
                "write_buffer_max_bytes = {} must hold at least one largest message plus one \
                 chunk ({} bytes)",
                self.write_buffer_max_bytes,
                self.message_size_max_bytes + self.write_chunk_bytes
            ));
        }
        if self.writes_in_flight_max == 0 {
            return bad("writes_in_flight_max must be at least 1".into());
        }
        if self.shards == Some(0) || self.shards.is_some_and(|s| s > u16::MAX as usize) {
            return bad(format!("shards = {:?} must be 1..=65535", self.shards));
        }
        if self.flush_interval_ms == 0 || self.checkpoint_interval_ms == 0 {
            return bad("flush_interval_ms and checkpoint_interval_ms must be positive".into());
        }
        if !(1..=QUEUES_MAX).contains(&self.auto_create.queues) {
            return bad(format!(
                "auto_create.queues = {} must be 1..={QUEUES_MAX}",
                self.auto_create.queues
            ));
        }
        Ok(())
    }

    pub(crate) fn sync_flush_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_flush_timeout_ms)
    }
}

fn check_segment(name: &str, bytes: u64) -> Result<(), ConfigError> {
    if bytes < SEGMENT_SIZE_MIN_BYTES || bytes % BLOCK_BYTES != 0 {
        return Err(ConfigError::Invalid(format!(
            "{name} = {bytes} must be a multiple of {BLOCK_BYTES} and at least {SEGMENT_SIZE_MIN_BYTES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_rocketmqs() {
        let c = StoreConfig::default();
        assert_eq!(c.segment_size_bytes, 1 << 30);
        assert_eq!(c.flush_interval_ms, 500);
        assert_eq!(c.flush_least_pages, 4);
        assert_eq!(c.flush_thorough_interval_ms, 10_000);
        assert_eq!(c.sync_flush_timeout_ms, 5_000);
        assert_eq!(c.message_size_max_bytes, 4 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let c = StoreConfig::from_toml_str(
            "store_path = \"/data/x\"\nflush_mode = \"SYNC_FLUSH\"\nshards = 2\n",
        )
        .unwrap();
        assert_eq!(c.flush_mode, FlushMode::Sync);
        assert_eq!(c.shards, Some(2));
        let c = StoreConfig::from_toml_str("flush_mode = \"async\"").unwrap();
        assert_eq!(c.flush_mode, FlushMode::Async);
        let err = StoreConfig::from_toml_str("flush_intervall_ms = 3").unwrap_err();
        assert!(err.to_string().contains("flush_intervall_ms"), "{err}");
    }

    #[test]
    fn auto_create_policy_from_toml() {
        let c = StoreConfig::default();
        assert_eq!(c.auto_create, AutoCreate::default());
        assert!(c.auto_create.enabled);
        assert_eq!(c.auto_create.queues, 8);
        let c = StoreConfig::from_toml_str("[auto_create]\nenabled = false\n").unwrap();
        assert!(!c.auto_create.enabled);
        assert_eq!(c.auto_create.queues, 8);
        let c = StoreConfig::from_toml_str("[auto_create]\nqueues = 4\nperm = 4\n").unwrap();
        assert_eq!((c.auto_create.queues, c.auto_create.perm.bits()), (4, 4));
        let err = StoreConfig::from_toml_str("[auto_create]\nqueues = 0\n").unwrap_err();
        assert!(err.to_string().contains("auto_create.queues"), "{err}");
        assert!(StoreConfig::from_toml_str("[auto_create]\nperm = 8\n").is_err());
    }

    #[test]
    fn the_readmes_example_config_loads() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\nstore_path")
            .expect("README has the example config");
        let body = &readme[start + "```toml\n".len()..];
        let toml = &body[..body.find("```").expect("the block ends")];
        let c = StoreConfig::from_toml_str(toml).unwrap();
        assert_eq!(c.flush_mode, FlushMode::Sync);
        assert_eq!(c.retention.disk_refuse_ratio, 0.90);
        assert_eq!(c.tail_cache_bytes, 64 << 20);
        assert_eq!(c.read_cache_bytes, 32 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn inconsistent_sizes_are_refused() {
        let c = StoreConfig {
            segment_size_bytes: 100_000,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = StoreConfig {
            segment_size_bytes: 1 << 20,
            message_size_max_bytes: 1 << 20,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
