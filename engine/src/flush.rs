//! Flushing a shard's CommitLog: SYNC_FLUSH group commit and ASYNC_FLUSH by RocketMQ's rule.
//!
//! One fdatasync at a time per shard. It covers the `written` offset snapshotted before it was
//! issued; when it completes, `flushed` moves there and the puts ending at or below it are
//! acknowledged (SYNC_FLUSH). Under ASYNC_FLUSH puts were acknowledged at write time and the
//! flusher only bounds the loss window.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::FlushMode;
use crate::shard::Shard;

/// Bytes of a "page" in RocketMQ's least-pages rule.
pub const PAGE_BYTES: u64 = 4096;

/// RocketMQ's ASYNC_FLUSH rule: flush when at least `least_pages` pages are pending, and
/// anything pending once `thorough` has passed since the last flush.
pub fn async_flush_due(
    pending_bytes: u64,
    least_pages: u32,
    since_last: Duration,
    thorough: Duration,
) -> bool {
    if pending_bytes == 0 {
        return false;
    }
    since_last >= thorough || pending_bytes >= least_pages as u64 * PAGE_BYTES
}

/// The shard's flusher task: runs until the shard fails or stops.
pub async fn flusher(shard: Rc<Shard>) {
    let cfg = shard.config();
    match cfg.flush_mode {
        FlushMode::Sync => loop {
            let generation = shard.flush_wake.generation();
            if shard.stopped() {
                return;
            }
            if shard.written() > shard.flushed() {
                // Let the writes of everything appended so far land first, so one fdatasync
                // covers the whole group instead of only the first write of it.
                let goal = shard.planner.borrow().append_offset();
                while shard.written() < goal && !shard.stopped() {
                    let generation = shard.flush_wake.generation();
                    shard.flush_wake.wait_past(generation).await;
                }
                if shard.flush_once().await.is_err() {
                    return;
                }
                continue;
            }
            shard.flush_wake.wait_past(generation).await;
        },
        FlushMode::Async => {
            let interval = Duration::from_millis(cfg.flush_interval_ms);
            let thorough = Duration::from_millis(cfg.flush_thorough_interval_ms);
            let mut last = Instant::now();
            loop {
                glommio::timer::sleep(interval).await;
                if shard.stopped() {
                    return;
                }
                let pending = shard.written() - shard.flushed();
                if async_flush_due(pending, cfg.flush_least_pages, last.elapsed(), thorough) {
                    if shard.flush_once().await.is_err() {
                        return;
                    }
                    last = Instant::now();
                }
            }
        }
    }
}

/// SYNC_FLUSH: completes puts still not covered by a flush after the timeout with
/// FLUSH_DISK_TIMEOUT (their bytes stay in the log and may become durable later).
pub async fn flush_timeouts(shard: Rc<Shard>) {
    let tick = (shard.config().sync_flush_timeout() / 20)
        .clamp(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        glommio::timer::sleep(tick).await;
        if shard.stopped() {
            return;
        }
        shard.expire_flush_waiters(Instant::now());
    }
}

/// Persists the flushed offset as the recovery starting point, when it moved.
pub async fn checkpointer(shard: Rc<Shard>) {
    let interval = Duration::from_millis(shard.config().checkpoint_interval_ms);
    let mut saved = shard.flushed();
    loop {
        glommio::timer::sleep(interval).await;
        if shard.stopped() {
            return;
        }
        let flushed = shard.flushed();
        if flushed != saved {
            if let Err(e) = shard.write_checkpoint(flushed).await {
                tracing::warn!(shard = shard.id(), error = %e, "cannot write checkpoint");
            }
            saved = flushed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocketmq_rule() {
        let s = Duration::from_millis;
        let thorough = s(10_000);
        assert!(
            !async_flush_due(0, 4, s(60_000), thorough),
            "nothing pending, nothing to do"
        );
        assert!(
            !async_flush_due(3 * 4096, 4, s(500), thorough),
            "below least pages"
        );
        assert!(async_flush_due(4 * 4096, 4, s(500), thorough));
        assert!(
            async_flush_due(1, 4, s(10_000), thorough),
            "thorough flush takes a trickle"
        );
        assert!(
            async_flush_due(1, 0, s(0), thorough),
            "least pages 0 flushes anything"
        );
    }
}
