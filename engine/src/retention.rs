//! Retention and the disk guard, as policy only: which CommitLog segments a cleaning pass
//! deletes, which ConsumeQueue-log segments may follow them, and when puts are refused.
//! The engine does the I/O (stat the disk, list and delete files) and passes the facts in;
//! time and the local hour are passed in too, so every rule is a pure function with tests.
//!
//! The rules, after RocketMQ's `CleanCommitLogService`:
//!
//! | disk use (used / total) | a pass deletes, oldest first                             | puts    |
//! |-------------------------|----------------------------------------------------------|---------|
//! | below `disk_warn_ratio` | at `delete_when_hour` only: expired segments, ≤ pace     | taken   |
//! | ≥ `disk_warn_ratio`     | at once: segments expired or not, ≤ pace                 | taken   |
//! | ≥ `disk_force_ratio`    | at once: segments expired or not, ≤ 2 × pace             | taken   |
//! | ≥ `disk_refuse_ratio`   | as at the force ratio                                    | refused |
//!
//! A threshold counts as reached *at* its ratio (`>=`), so exactly 75 % is already a warning.
//! A segment is expired when `now - modified >= file_reserved_hours`. RocketMQ, between its
//! warn and force levels, deletes only expired files (at once instead of at the hour); here the
//! warn level already deletes unexpired segments, so a disk that stays past the warn ratio is
//! brought back under it instead of drifting to the force level; the force level differs by
//! pace. Each pass is short (the pace bounds it) and the engine probes the disk again before
//! the next one, so deletion stops once use falls below the warn ratio.
//!
//! Deletion is always a prefix of the segments, oldest first, and never the newest (active)
//! segment, so a log's minimum offset only moves forward and appends never lose their file.
//! When the store shares its disk with other data, a full disk can delete every segment but
//! the active one; that is the guard doing its job (RocketMQ behaves the same).

use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use thiserror::Error;

const HOUR_MS: u64 = 3_600_000;
/// Most segments one pass may delete (`delete_pace`; the force level doubles it).
pub const DELETE_PACE_MAX: usize = 1_000;

/// Retention knobs with RocketMQ's defaults. Field names carry their unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep a segment this long after its last write (`fileReservedTime`, 72 h).
    pub file_reserved_hours: u64,
    /// Local hour (0..=23) at which expired segments are deleted when the disk is not under
    /// pressure (`deleteWhen`, "04"; one hour only).
    pub delete_when_hour: u8,
    /// From this disk use on, the oldest segments go at once, expired or not
    /// (`diskMaxUsedSpaceRatio`, 75 %).
    pub disk_warn_ratio: f64,
    /// From this disk use on, deletion runs at twice the pace (`diskSpaceCleanForciblyRatio`).
    pub disk_force_ratio: f64,
    /// From this disk use on, puts are refused; reads keep working
    /// (`diskSpaceWarningLevelRatio`).
    pub disk_refuse_ratio: f64,
    /// Most segments deleted per pass, per log (1..=`DELETE_PACE_MAX`).
    pub delete_pace: usize,
    /// How often the engine runs a cleaning pass (`cleanResourceInterval`, 10 s).
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            file_reserved_hours: 72,
            delete_when_hour: 4,
            disk_warn_ratio: 0.75,
            disk_force_ratio: 0.85,
            disk_refuse_ratio: 0.90,
            delete_pace: 10,
            interval_ms: 10_000,
        }
    }
}

/// A retention config that cannot work as written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RetentionConfigError {
    #[error("retention: {field} = {value} is outside (0, 1]")]
    Ratio { field: &'static str, value: f64 },
    #[error(
        "retention: the disk ratios must grow: disk_warn_ratio ({warn}) <= disk_force_ratio \
         ({force}) <= disk_refuse_ratio ({refuse})"
    )]
    RatioOrder { warn: f64, force: f64, refuse: f64 },
    #[error("retention: delete_when_hour = {0} is not an hour of the day (0..=23)")]
    Hour(u8),
    #[error("retention: delete_pace = {0} is outside 1..={DELETE_PACE_MAX}")]
    Pace(usize),
    #[error("retention: interval_ms = 0; a cleaning pass needs an interval of at least 1 ms")]
    IntervalZero,
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), RetentionConfigError> {
        let ratios = [
            ("disk_warn_ratio", self.disk_warn_ratio),
            ("disk_force_ratio", self.disk_force_ratio),
            ("disk_refuse_ratio", self.disk_refuse_ratio),
        ];
        for (field, value) in ratios {
            // Written so that NaN fails too.
            if !(value > 0.0 && value <= 1.0) {
                return Err(RetentionConfigError::Ratio { field, value });
            }
        }
        let (warn, force, refuse) = (
            self.disk_warn_ratio,
            self.disk_force_ratio,
            self.disk_refuse_ratio,
        );
        if !(warn <= force && force <= refuse) {
            return Err(RetentionConfigError::RatioOrder {
                warn,
                force,
                refuse,
            });
        }
        if self.delete_when_hour > 23 {
            return Err(RetentionConfigError::Hour(self.delete_when_hour));
        }
        if !(1..=DELETE_PACE_MAX).contains(&self.delete_pace) {
            return Err(RetentionConfigError::Pace(self.delete_pace));
        }
        if self.interval_ms == 0 {
            return Err(RetentionConfigError::IntervalZero);
        }
        Ok(())
    }

    /// Which threshold a disk use reaches. An unknown use (NaN) is `Normal`: a failed probe
    /// deletes no data (the engine logs it; the put guard keeps its state, see
    /// [`guard_after`]).
    pub fn disk_level(&self, usage_ratio: f64) -> DiskLevel {
        if usage_ratio >= self.disk_refuse_ratio {
            DiskLevel::Refuse
        } else if usage_ratio >= self.disk_force_ratio {
            DiskLevel::Force
        } else if usage_ratio >= self.disk_warn_ratio {
            DiskLevel::Warn
        } else {
            DiskLevel::Normal
        }
    }
}

/// The highest disk threshold reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskLevel {
    Normal,
    Warn,
    Force,
    Refuse,
}

/// A filesystem's size and the space an unprivileged writer may still use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Used fraction, `1 - available / total`. Space reserved for root counts as used, since
    /// the broker cannot write it. A filesystem reporting no size counts as full.
    pub fn ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            return 1.0;
        }
        let used = self.total_bytes.saturating_sub(self.available_bytes);
        used as f64 / self.total_bytes as f64
    }
}

/// Tells how full the filesystem holding `path` is.
pub trait UsageProbe: Send + Sync {
    fn usage(&self, path: &Path) -> io::Result<DiskUsage>;
}

/// The real probe: `statvfs(2)`, read as `df` does: used = blocks − free, available =
/// `f_bavail`, total = used + available (blocks reserved for root, or otherwise withheld from
/// writers, count neither way; on this project's VM they are two thirds of the device, and
/// `1 − f_bavail / f_blocks` would call a 37 %-full disk 77 % full). A cheap blocking call.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatvfsProbe;

impl UsageProbe for StatvfsProbe {
    fn usage(&self, path: &Path) -> io::Result<DiskUsage> {
        let st = rustix::fs::statvfs(path)
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        let used = st.f_blocks.saturating_sub(st.f_bfree);
        let available = st.f_bavail;
        Ok(DiskUsage {
            total_bytes: used.saturating_add(available).saturating_mul(st.f_frsize),
            available_bytes: available.saturating_mul(st.f_frsize),
        })
    }
}

/// A probe for tests: answers whatever was last set, from any thread.
#[derive(Debug)]
pub struct FixedProbe {
    state: Mutex<Result<DiskUsage, io::ErrorKind>>,
}

impl FixedProbe {
    /// Size of the pretend disk of [`with_ratio`](Self::with_ratio): 10^12 bytes, so ratios
    /// with up to 12 decimals (0.75, 0.85, 0.9) come back from [`DiskUsage::ratio`] exactly.
    pub const TOTAL_BYTES: u64 = 1_000_000_000_000;

    pub fn new(usage: DiskUsage) -> Self {
        FixedProbe {
            state: Mutex::new(Ok(usage)),
        }
    }

    /// A probe reporting `ratio` (clamped to 0..=1) of a `TOTAL_BYTES` disk as used.
    pub fn with_ratio(ratio: f64) -> Self {
        FixedProbe::new(Self::usage_at(ratio))
    }

    pub fn set(&self, usage: DiskUsage) {
        *self.lock() = Ok(usage);
    }

    pub fn set_ratio(&self, ratio: f64) {
        self.set(Self::usage_at(ratio));
    }

    /// Makes every later probe fail with `kind`, until the next `set`.
    pub fn fail(&self, kind: io::ErrorKind) {
        *self.lock() = Err(kind);
    }

    fn usage_at(ratio: f64) -> DiskUsage {
        let used = (ratio.clamp(0.0, 1.0) * Self::TOTAL_BYTES as f64).round() as u64;
        DiskUsage {
            total_bytes: Self::TOTAL_BYTES,
            available_bytes: Self::TOTAL_BYTES - used.min(Self::TOTAL_BYTES),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Result<DiskUsage, io::ErrorKind>> {
        // The state is a plain value; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl UsageProbe for FixedProbe {
    fn usage(&self, _path: &Path) -> io::Result<DiskUsage> {
        (*self.lock()).map_err(io::Error::from)
    }
}

/// The disk guard after a pass: `Some(disk use)` while puts are refused. `reading` is the
/// disk use this pass read, `None` if the probe failed: an unknown use keeps the guard as it
/// was (`previous`), since counting it as "not full" would let puts in on a full disk.
pub fn guard_after(
    previous: Option<f64>,
    reading: Option<f64>,
    cfg: &RetentionConfig,
) -> Option<f64> {
    match reading {
        None => previous,
        Some(ratio) => (cfg.disk_level(ratio) == DiskLevel::Refuse).then_some(ratio),
    }
}

/// What the engine knows about one segment of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    /// Last modification time (ms since the Unix epoch), i.e. when it was last appended to.
    pub modified_ms: i64,
    pub bytes: u64,
    /// The segment appends go to. Only ever the newest; never deleted either way.
    pub is_active: bool,
}

/// Why a pass deletes segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The delete hour, and these segments are past `file_reserved_hours`.
    Expired,
    /// Disk use at or above `disk_warn_ratio`.
    DiskWarn,
    /// Disk use at or above `disk_force_ratio` (or the refuse ratio).
    DiskForce,
}

/// The decision of one cleaning pass over one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Base offsets of the segments to delete: a prefix of the log, oldest first, never
    /// the active or newest segment.
    pub delete: Vec<u64>,
    /// Why; `None` exactly when `delete` is empty.
    pub reason: Option<Reason>,
    /// Bytes the deletion frees (the segments' sizes), for logging.
    pub freed_bytes: u64,
    /// Disk use is at or above `disk_refuse_ratio`: refuse puts until it falls back.
    pub refuse_puts: bool,
}

/// Plans one cleaning pass over a log's `segments` (oldest first) at `now_ms`, in local hour
/// `local_hour` (0..=23), with the disk `usage_ratio` full. See the module docs for the rules.
pub fn plan(
    now_ms: i64,
    local_hour: u8,
    usage_ratio: f64,
    segments: &[SegmentInfo],
    cfg: &RetentionConfig,
) -> RetentionPlan {
    debug_assert!(segments
        .windows(2)
        .all(|w| w[0].base_offset < w[1].base_offset));
    let level = cfg.disk_level(usage_ratio);
    let deletable = &segments[..deletable_len(segments)];
    let (reason, count) = match level {
        DiskLevel::Force | DiskLevel::Refuse => (
            Reason::DiskForce,
            deletable.len().min(cfg.delete_pace.saturating_mul(2)),
        ),
        DiskLevel::Warn => (Reason::DiskWarn, deletable.len().min(cfg.delete_pace)),
        DiskLevel::Normal if local_hour == cfg.delete_when_hour => {
            let reserved_ms = cfg.file_reserved_hours.saturating_mul(HOUR_MS);
            let expired = deletable
                .iter()
                .take_while(|s| is_expired(s, now_ms, reserved_ms))
                .count();
            (Reason::Expired, expired.min(cfg.delete_pace))
        }
        DiskLevel::Normal => (Reason::Expired, 0),
    };
    let chosen = &deletable[..count];
    RetentionPlan {
        delete: chosen.iter().map(|s| s.base_offset).collect(),
        reason: (count > 0).then_some(reason),
        freed_bytes: chosen.iter().fold(0, |sum, s| sum.saturating_add(s.bytes)),
        refuse_puts: level == DiskLevel::Refuse,
    }
}

/// How many of the oldest segments may be deleted at all: all but the newest, and none
/// from the first active one on (there should be none but the newest; if the engine ever
/// says otherwise, stopping there keeps deletion a prefix).
fn deletable_len(segments: &[SegmentInfo]) -> usize {
    let all_but_newest = segments.len().saturating_sub(1);
    segments[..all_but_newest]
        .iter()
        .position(|s| s.is_active)
        .unwrap_or(all_but_newest)
}

/// Whether `now - modified >= reserved`. A segment modified in the future (clock stepped
/// back) is not expired.
fn is_expired(segment: &SegmentInfo, now_ms: i64, reserved_ms: u64) -> bool {
    let age_ms = now_ms.saturating_sub(segment.modified_ms);
    age_ms >= 0 && age_ms as u64 >= reserved_ms
}

/// What the engine knows about one segment of a shard's ConsumeQueue log: for each source
/// shard with entries in it, the highest CommitLog end (`offset + size`) they point to.
/// Watermarks are not entries and do not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqSegmentSummary {
    pub base_offset: u64,
    /// `(source shard, highest end)`, one pair per source present.
    pub max_cl_end: Vec<(u16, u64)>,
}

/// How many of the oldest ConsumeQueue-log segments may be deleted: the longest prefix,
/// never the newest segment, in which every entry points wholly below its source shard's
/// CommitLog minimum (`cl_min_per_shard[source]`), i.e. at messages already deleted. A
/// source beyond `cl_min_per_shard` keeps its segment. Apply `delete_pace` to the result.
///
/// Recovery stays correct without those segments (their entries point below every
/// CommitLog minimum, so nothing they cover is re-dispatched), but the engine must keep
/// each queue's min and next offset elsewhere first: a queue whose entries all lie in the
/// deleted prefix would otherwise restart at 0 and reuse acknowledged offsets.
pub fn cq_prefix_to_delete(cl_min_per_shard: &[u64], cq_segments: &[CqSegmentSummary]) -> usize {
    let all_but_newest = cq_segments.len().saturating_sub(1);
    let below_min = |&(source, end): &(u16, u64)| {
        cl_min_per_shard
            .get(usize::from(source))
            .is_some_and(|&min| end <= min)
    };
    cq_segments[..all_but_newest]
        .iter()
        .take_while(|seg| seg.max_cl_end.iter().all(below_min))
        .count()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;
    const DAY_MS: i64 = 24 * 3_600_000;
    /// Not the delete hour of the default config.
    const OFF_HOUR: u8 = 13;
    const DELETE_HOUR: u8 = 4;

    /// `n` segments of 1 GiB, one a day, the last one active and written just now: with the
    /// default 72 h, segments `0..n-3` are expired.
    fn daily(n: usize) -> Vec<SegmentInfo> {
        (0..n)
            .map(|i| SegmentInfo {
                base_offset: (i as u64) << 30,
                modified_ms: NOW_MS - (n - 1 - i) as i64 * DAY_MS,
                bytes: 1 << 30,
                is_active: i == n - 1,
            })
            .collect()
    }

    fn bases(segments: &[SegmentInfo]) -> Vec<u64> {
        segments.iter().map(|s| s.base_offset).collect()
    }

    fn cfg() -> RetentionConfig {
        RetentionConfig::default()
    }

    #[test]
    fn defaults_are_rocketmqs_and_valid() {
        let c = cfg();
        assert_eq!(c.file_reserved_hours, 72);
        assert_eq!(c.delete_when_hour, 4);
        assert_eq!(
            (c.disk_warn_ratio, c.disk_force_ratio, c.disk_refuse_ratio),
            (0.75, 0.85, 0.90)
        );
        assert_eq!((c.delete_pace, c.interval_ms), (10, 10_000));
        assert_eq!(c.validate(), Ok(()));
        let parsed: RetentionConfig = toml::from_str("file_reserved_hours = 48").unwrap();
        assert_eq!(
            parsed,
            RetentionConfig {
                file_reserved_hours: 48,
                ..cfg()
            }
        );
        assert!(toml::from_str::<RetentionConfig>("reserved_hours = 48").is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let with = |f: fn(&mut RetentionConfig)| {
            let mut c = cfg();
            f(&mut c);
            c.validate()
        };
        assert_eq!(
            with(|c| c.disk_warn_ratio = 0.0),
            Err(RetentionConfigError::Ratio {
                field: "disk_warn_ratio",
                value: 0.0
            })
        );
        let err = with(|c| c.disk_refuse_ratio = 1.5).unwrap_err().to_string();
        assert_eq!(err, "retention: disk_refuse_ratio = 1.5 is outside (0, 1]");
        assert!(matches!(
            with(|c| c.disk_force_ratio = f64::NAN),
            Err(RetentionConfigError::Ratio {
                field: "disk_force_ratio",
                ..
            })
        ));
        assert!(matches!(
            with(|c| c.disk_force_ratio = 0.95),
            Err(RetentionConfigError::RatioOrder { .. })
        ));
        assert!(matches!(
            with(|c| c.disk_warn_ratio = 0.86),
            Err(RetentionConfigError::RatioOrder { .. })
        ));
        // Equal ratios and 1.0 are allowed.
        assert_eq!(
            with(|c| {
                c.disk_warn_ratio = 1.0;
                c.disk_force_ratio = 1.0;
                c.disk_refuse_ratio = 1.0;
            }),
            Ok(())
        );
        assert_eq!(
            with(|c| c.delete_when_hour = 24),
            Err(RetentionConfigError::Hour(24))
        );
        assert_eq!(with(|c| c.delete_when_hour = 23), Ok(()));
        assert_eq!(
            with(|c| c.delete_pace = 0),
            Err(RetentionConfigError::Pace(0))
        );
        assert_eq!(
            with(|c| c.delete_pace = DELETE_PACE_MAX + 1),
            Err(RetentionConfigError::Pace(DELETE_PACE_MAX + 1))
        );
        assert_eq!(
            with(|c| c.interval_ms = 0),
            Err(RetentionConfigError::IntervalZero)
        );
    }

    #[test]
    fn disk_levels_start_exactly_at_their_ratio() {
        let c = cfg();
        let level = |ratio: f64| {
            c.disk_level(
                FixedProbe::with_ratio(ratio)
                    .usage(Path::new("/"))
                    .unwrap()
                    .ratio(),
            )
        };
        assert_eq!(level(0.0), DiskLevel::Normal);
        assert_eq!(level(0.749_999), DiskLevel::Normal);
        assert_eq!(level(0.75), DiskLevel::Warn);
        assert_eq!(level(0.849_999), DiskLevel::Warn);
        assert_eq!(level(0.85), DiskLevel::Force);
        assert_eq!(level(0.899_999), DiskLevel::Force);
        assert_eq!(level(0.90), DiskLevel::Refuse);
        assert_eq!(level(1.0), DiskLevel::Refuse);
        assert_eq!(c.disk_level(f64::NAN), DiskLevel::Normal);
    }

    #[test]
    fn expired_segments_go_only_at_the_delete_hour() {
        let segs = daily(6); // ages 5, 4, 3, 2, 1, 0 days: the first three are expired
        let off = plan(NOW_MS, OFF_HOUR, 0.5, &segs, &cfg());
        assert_eq!(off.delete, Vec::<u64>::new());
        assert_eq!(off.reason, None);
        let at = plan(NOW_MS, DELETE_HOUR, 0.5, &segs, &cfg());
        assert_eq!(at.delete, bases(&segs[..3]));
        assert_eq!(at.reason, Some(Reason::Expired));
        assert_eq!(at.freed_bytes, 3 << 30);
        assert!(!at.refuse_puts);
    }

    #[test]
    fn expiry_starts_exactly_at_the_reserved_time() {
        let mut segs = daily(3);
        let reserved_ms = 72 * 3_600_000;
        segs[0].modified_ms = NOW_MS - reserved_ms;
        segs[1].modified_ms = NOW_MS - reserved_ms + 1;
        let p = plan(NOW_MS, DELETE_HOUR, 0.0, &segs, &cfg());
        assert_eq!(p.delete, vec![segs[0].base_offset]);
        // A segment from the future (clock stepped back) is kept.
        segs[0].modified_ms = NOW_MS + DAY_MS;
        assert!(plan(NOW_MS, DELETE_HOUR, 0.0, &segs, &cfg())
            .delete
            .is_empty());
    }

    #[test]
    fn expiry_stops_at_the_first_unexpired_segment() {
        let mut segs = daily(6);
        segs[1].modified_ms = NOW_MS; // rewritten oddly: newer than its successors
        let p = plan(NOW_MS, DELETE_HOUR, 0.0, &segs, &cfg());
        assert_eq!(
            p.delete,
            vec![segs[0].base_offset],
            "deletion stays a prefix"
        );
    }

    #[test]
    fn warn_deletes_unexpired_oldest_at_once() {
        let segs = daily(5); // only segment 0 and 1 expired
        let p = plan(NOW_MS, OFF_HOUR, 0.75, &segs, &cfg());
        assert_eq!(p.delete, bases(&segs[..4]));
        assert_eq!(p.reason, Some(Reason::DiskWarn));
        assert!(!p.refuse_puts);
        let below = plan(NOW_MS, OFF_HOUR, 0.749_999, &segs, &cfg());
        assert!(below.delete.is_empty());
    }

    #[test]
    fn pace_bounds_a_pass_and_force_doubles_it() {
        let segs = daily(50);
        let c = RetentionConfig {
            delete_pace: 3,
            ..cfg()
        };
        let expired = plan(NOW_MS, DELETE_HOUR, 0.1, &segs, &c);
        assert_eq!(expired.delete, bases(&segs[..3]));
        let warn = plan(NOW_MS, OFF_HOUR, 0.8, &segs, &c);
        assert_eq!(
            (warn.delete.len(), warn.reason),
            (3, Some(Reason::DiskWarn))
        );
        let force = plan(NOW_MS, OFF_HOUR, 0.85, &segs, &c);
        assert_eq!(force.delete, bases(&segs[..6]));
        assert_eq!(force.reason, Some(Reason::DiskForce));
        assert!(!force.refuse_puts);
    }

    #[test]
    fn refuse_level_refuses_puts_and_keeps_deleting() {
        let segs = daily(4);
        let p = plan(NOW_MS, OFF_HOUR, 0.90, &segs, &cfg());
        assert!(p.refuse_puts);
        assert_eq!(p.reason, Some(Reason::DiskForce));
        assert_eq!(p.delete, bases(&segs[..3]));
        let just_below = plan(NOW_MS, OFF_HOUR, 0.899_999, &segs, &cfg());
        assert!(!just_below.refuse_puts);
        // Nothing left to delete: puts are still refused, and nothing is planned.
        let one = plan(NOW_MS, OFF_HOUR, 0.99, &segs[3..], &cfg());
        assert_eq!(
            (one.delete.len(), one.reason, one.refuse_puts),
            (0, None, true)
        );
    }

    #[test]
    fn a_failed_disk_reading_keeps_the_guard_as_it_was() {
        let c = cfg();
        assert_eq!(guard_after(None, Some(0.95), &c), Some(0.95));
        assert_eq!(guard_after(Some(0.95), Some(0.5), &c), None);
        // The probe failed: a refusing guard goes on refusing, an open one stays open.
        assert_eq!(guard_after(Some(0.95), None, &c), Some(0.95));
        assert_eq!(guard_after(None, None, &c), None);
        // With every ratio at 1.0, only a full disk refuses.
        let full = RetentionConfig {
            disk_warn_ratio: 1.0,
            disk_force_ratio: 1.0,
            disk_refuse_ratio: 1.0,
            ..cfg()
        };
        assert_eq!(guard_after(None, Some(0.999), &full), None);
        assert_eq!(guard_after(None, Some(1.0), &full), Some(1.0));
        assert_eq!(guard_after(Some(1.0), None, &full), Some(1.0));
    }

    #[test]
    fn the_active_and_newest_segments_are_never_deleted() {
        assert!(plan(NOW_MS, DELETE_HOUR, 1.0, &[], &cfg())
            .delete
            .is_empty());
        let mut segs = daily(4);
        for s in &mut segs {
            s.modified_ms = 0; // everything long expired
        }
        // The newest is kept even when the engine does not mark it active.
        segs[3].is_active = false;
        let p = plan(NOW_MS, OFF_HOUR, 1.0, &segs, &cfg());
        assert_eq!(p.delete, bases(&segs[..3]));
        // An active segment in the middle stops the prefix before it.
        segs[1].is_active = true;
        let p = plan(NOW_MS, DELETE_HOUR, 1.0, &segs, &cfg());
        assert_eq!(p.delete, vec![segs[0].base_offset]);
    }

    #[test]
    fn probes_report_usage() {
        let probe = FixedProbe::with_ratio(0.5);
        assert_eq!(probe.usage(Path::new("x")).unwrap().ratio(), 0.5);
        probe.set_ratio(0.9);
        assert_eq!(probe.usage(Path::new("x")).unwrap().ratio(), 0.9);
        probe.fail(io::ErrorKind::PermissionDenied);
        let err = probe.usage(Path::new("x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        probe.set(DiskUsage {
            total_bytes: 0,
            available_bytes: 0,
        });
        assert_eq!(probe.usage(Path::new("x")).unwrap().ratio(), 1.0);

        let dir = tempfile::tempdir().unwrap();
        let real = StatvfsProbe.usage(dir.path()).unwrap();
        assert!(real.total_bytes > 0 && real.available_bytes <= real.total_bytes);
        assert!((0.0..=1.0).contains(&real.ratio()));
        let err = StatvfsProbe.usage(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    fn cq(base: u64, ends: &[(u16, u64)]) -> CqSegmentSummary {
        CqSegmentSummary {
            base_offset: base,
            max_cl_end: ends.to_vec(),
        }
    }

    #[test]
    fn cq_segments_go_once_every_source_is_below_its_minimum() {
        let mins = [1000, 500];
        let segs = [
            cq(0, &[(0, 400), (1, 500)]),    // both at or below: deletable
            cq(64, &[]),                     // only watermarks: deletable
            cq(128, &[(0, 1000), (1, 501)]), // source 1 still has data: kept
            cq(192, &[(0, 10)]),             // deletable on its own, but after a kept one
            cq(256, &[(0, 10)]),             // newest: never
        ];
        assert_eq!(cq_prefix_to_delete(&mins, &segs), 2);
        assert_eq!(cq_prefix_to_delete(&[1000, 501], &segs), 4);
        assert_eq!(cq_prefix_to_delete(&mins, &segs[4..]), 0);
        assert_eq!(cq_prefix_to_delete(&mins, &[]), 0);
        // A source the caller knows nothing about keeps its segment.
        assert_eq!(
            cq_prefix_to_delete(&mins, &[cq(0, &[(7, 1)]), cq(64, &[])]),
            0
        );
    }

    fn segments() -> impl Strategy<Value = Vec<SegmentInfo>> {
        let raw = (0i64..10 * DAY_MS, 0u64..1 << 30, any::<bool>());
        (proptest::collection::vec(raw, 0..40), any::<bool>()).prop_map(|(raw, newest_active)| {
            let n = raw.len();
            raw.into_iter()
                .enumerate()
                .map(|(i, (age_ms, bytes, active))| SegmentInfo {
                    base_offset: (i as u64) << 30,
                    modified_ms: NOW_MS - age_ms,
                    bytes,
                    // Usually only the newest is active; sometimes none, or a middle one too.
                    is_active: (i + 1 == n && newest_active) || (active && i % 7 == 3),
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the segments, disk use and hour: the plan deletes a prefix of the oldest
        /// segments, never the newest or an active one, within the pace, only expired ones
        /// below the warn ratio, and refuses puts exactly from the refuse ratio on.
        #[test]
        fn plan_is_a_bounded_prefix(
            segs in segments(),
            ratio in prop_oneof![0.0f64..=1.0, Just(0.75), Just(0.85), Just(0.9)],
            hour in prop_oneof![Just(DELETE_HOUR), 0u8..24],
            pace in 1usize..8,
        ) {
            let c = RetentionConfig { delete_pace: pace, ..cfg() };
            let p = plan(NOW_MS, hour, ratio, &segs, &c);
            prop_assert_eq!(&p.delete[..], &bases(&segs)[..p.delete.len()]);
            prop_assert!(p.delete.len() < segs.len().max(1));
            let chosen = &segs[..p.delete.len()];
            prop_assert!(chosen.iter().all(|s| !s.is_active));
            prop_assert!(p.delete.len() <= 2 * pace);
            prop_assert_eq!(p.reason.is_none(), p.delete.is_empty());
            prop_assert_eq!(p.refuse_puts, ratio >= 0.9);
            prop_assert_eq!(p.freed_bytes, chosen.iter().map(|s| s.bytes).sum::<u64>());
            if ratio < 0.85 {
                prop_assert!(p.delete.len() <= pace);
            }
            if ratio < 0.75 {
                let reserved_ms = 72 * 3_600_000;
                prop_assert!(hour == 4 || p.delete.is_empty());
                prop_assert!(chosen.iter().all(|s| NOW_MS - s.modified_ms >= reserved_ms));
            }
        }

        /// The ConsumeQueue prefix never includes the newest segment and stops exactly at
        /// the first segment that still points at a live message.
        #[test]
        fn cq_prefix_is_exact(
            mins in proptest::collection::vec(0u64..100, 1..4),
            raw in proptest::collection::vec(
                proptest::collection::vec((0u16..5, 0u64..120), 0..4), 0..12),
        ) {
            let segs: Vec<_> = raw.iter().enumerate()
                .map(|(i, ends)| cq(i as u64 * 64, ends))
                .collect();
            let n = cq_prefix_to_delete(&mins, &segs);
            prop_assert!(n < segs.len().max(1));
            let dead = |s: &CqSegmentSummary| s.max_cl_end.iter()
                .all(|&(src, end)| (src as usize) < mins.len() && end <= mins[src as usize]);
            prop_assert!(segs[..n].iter().all(dead));
            if n + 1 < segs.len() {
                prop_assert!(!dead(&segs[n]));
            }
        }
    }
}
