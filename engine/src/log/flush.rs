//! Flushing a log: group commit (SYNC_FLUSH) or RocketMQ's interval rule (ASYNC_FLUSH).
//!
//! One fdatasync at a time per log. It covers the `written` offset snapshotted before it was
//! issued; when it completes, `flushed` moves there and `progress` is announced, and whoever
//! waits on that offset (SYNC_FLUSH puts) is acknowledged by its owner.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{FlushPolicy, Log};

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

/// The log's flusher task: runs until the log fails or stops.
pub async fn flusher(log: Rc<Log>) {
    match log.spec.flush {
        FlushPolicy::Group => loop {
            let generation = log.progress.generation();
            if log.stopped() {
                return;
            }
            if log.written() > log.flushed() {
                // Let the writes of everything appended so far land first, so one fdatasync
                // covers the whole group instead of only the first write of it.
                let goal = log.append_offset();
                log.wait_until(|log| log.written() >= goal).await;
                if log.flush_once().await.is_err() {
                    return;
                }
                continue;
            }
            log.progress.wait_past(generation).await;
        },
        FlushPolicy::Interval {
            interval,
            least_pages,
            thorough,
        } => {
            let mut last = Instant::now();
            loop {
                glommio::timer::sleep(interval).await;
                if log.stopped() {
                    return;
                }
                let pending = log.written() - log.flushed();
                if async_flush_due(pending, least_pages, last.elapsed(), thorough) {
                    if log.flush_once().await.is_err() {
                        return;
                    }
                    last = Instant::now();
                }
            }
        }
    }
}

/// Persists the flushed offset as the recovery starting point, when it moved.
pub async fn checkpointer(log: Rc<Log>) {
    let mut saved = log.flushed();
    loop {
        glommio::timer::sleep(log.spec.checkpoint_interval).await;
        if log.stopped() {
            return;
        }
        let flushed = log.flushed();
        if flushed != saved {
            if let Err(e) = log.write_checkpoint(flushed).await {
                tracing::warn!(shard = log.shard(), log = log.spec.name, error = %e, "cannot write checkpoint");
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
