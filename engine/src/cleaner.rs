//! The retention task of one shard: every `retention.interval_ms` it reads the disk use,
//! plans with [`retention::plan`](crate::retention::plan) (pure) which of its CommitLog's
//! oldest segments go, deletes them in the background (appends never wait for it), raises
//! the published log minimum, drops the queue entries that pointed into them, deletes the
//! ConsumeQueue log segments nothing needs any more, and refuses puts while the disk is
//! above the refuse ratio (reads keep working).

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::retention::{self, SegmentInfo, StatvfsProbe, UsageProbe};
use crate::shard::Shard;

pub async fn cleaner(shard: Rc<Shard>) {
    let every = Duration::from_millis(shard.config.retention.interval_ms.max(1));
    loop {
        glommio::timer::sleep(every).await;
        if shard.stopped() {
            return;
        }
        pass(&shard).await;
    }
}

/// One cleaning pass.
pub async fn pass(shard: &Rc<Shard>) {
    let cfg = &shard.config.retention;
    let dir = &shard.config.store_path;
    let usage = match &shard.config.usage_probe {
        Some(p) => p.0.usage(dir),
        None => StatvfsProbe.usage(dir),
    };
    // An unknown disk use deletes nothing (NaN plans as Normal) and leaves the guard as it
    // was: it must not count as "not full".
    let reading = match usage {
        Ok(u) => Some(u.ratio()),
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e,
                "disk guard: cannot read the disk use; keeping the guard as it was");
            None
        }
    };
    let ratio = reading.unwrap_or(f64::NAN);
    let segments = match shard.cl.segment_times() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "retention: cannot stat segments");
            return;
        }
    };
    let active = shard.cl.active_segment();
    let infos: Vec<SegmentInfo> = segments
        .iter()
        .map(|&(base_offset, modified_ms, bytes)| SegmentInfo {
            base_offset,
            modified_ms,
            bytes,
            is_active: base_offset >= active,
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // The delete hour is read in UTC (the engine has no time-zone database).
    let hour = ((now.as_secs() / 3600) % 24) as u8;
    let plan = retention::plan(now.as_millis() as i64, hour, ratio, &infos, cfg);
    let refuse = retention::guard_after(shard.disk_full(), reading, cfg);
    shard.set_disk_full(refuse, ratio);
    if !plan.delete.is_empty() {
        tracing::info!(
            shard = shard.id, segments = plan.delete.len(), bytes = plan.freed_bytes,
            reason = ?plan.reason, disk_used = ratio, "retention: deleting CommitLog segments"
        );
        if let Err(e) = shard.cl.retire(&plan.delete).await {
            tracing::error!(shard = shard.id, error = %e, "retention: cannot delete a segment");
        }
    }
    shard.cqs.trim_below(&shard.reader.shared);
    // ConsumeQueue log segments whose every entry pointed into what retention deleted.
    if let Err(e) = shard.cqs.retire_segments(&shard.reader.shared).await {
        tracing::error!(shard = shard.id, error = %e, "retention: cannot delete ConsumeQueue log segments");
    }
}
