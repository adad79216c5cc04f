//! The tail cache: the most recently written chunks of a shard's CommitLog, kept as
//! immutable, reference-counted buffers that any shard's readers may share, so that tailing
//! consumers are served from memory instead of a DMA read per message.
//!
//! Filled by the writer on each completed write, but only while readers have asked for data
//! recently: a store nobody reads from pays nothing (not even the copy). Bytes below a shard's
//! `written` never change, so a cached range, once written, is final; a partial tail chunk is
//! cached only up to the data it held when written, and replaced when rewritten with more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;

#[derive(Debug, Default)]
pub struct TailCache {
    cap_bytes: usize,
    /// How long after a read the cache keeps filling.
    linger_ms: u64,
    inner: Mutex<Chunks>,
    /// Monotonic ms until which writes are copied in (a reader asked recently).
    wanted_until_ms: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Chunks {
    /// `(log offset of the first byte, bytes)`, in offset order, disjoint.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl TailCache {
    /// A cache of at most `cap_bytes` (0: never caches) that fills for `linger_ms` after
    /// each read.
    pub fn new(cap_bytes: usize, linger_ms: u64) -> Self {
        TailCache {
            cap_bytes,
            linger_ms,
            ..TailCache::default()
        }
    }

    /// Whether a completed write should be offered.
    pub fn wanted(&self) -> bool {
        self.cap_bytes > 0 && now_ms() < self.wanted_until_ms.load(Ordering::Relaxed)
    }

    /// Keeps a copy of `data`, written at log offset `start` (call only when `wanted`).
    pub fn publish(&self, start: u64, data: &[u8]) {
        if data.is_empty() || data.len() > self.cap_bytes {
            return;
        }
        let copy = Bytes::copy_from_slice(data);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        // Kept in offset order (writes may complete out of order, mostly near the end); a
        // rewrite of the partial tail chunk supersedes the shorter copy.
        let at = inner.chunks.partition_point(|(s, _)| *s < start);
        inner.bytes += copy.len();
        match inner.chunks.get_mut(at) {
            Some((s, old)) if *s == start => {
                let old = std::mem::replace(old, copy);
                inner.bytes -= old.len();
            }
            _ => inner.chunks.insert(at, (start, copy)),
        }
        while inner.bytes > self.cap_bytes {
            let Some((_, old)) = inner.chunks.pop_front() else {
                break;
            };
            inner.bytes -= old.len();
        }
    }

    /// The `len` bytes at log offset `offset`, if cached; every call keeps the cache filling
    /// for a while.
    pub fn get(&self, offset: u64, len: u64) -> Option<Bytes> {
        if self.cap_bytes == 0 {
            return None;
        }
        self.wanted_until_ms
            .store(now_ms().saturating_add(self.linger_ms), Ordering::Relaxed);
        let end = offset.checked_add(len)?;
        let inner = self.inner.lock().ok()?;
        // The chunk starting at or before `offset` (chunks are in offset order and disjoint).
        let at = inner.chunks.partition_point(|(s, _)| *s <= offset);
        let found = at
            .checked_sub(1)
            .and_then(|i| inner.chunks.get(i))
            .and_then(|(start, data)| {
                let stop = start + data.len() as u64;
                (end <= stop).then(|| data.slice((offset - start) as usize..(end - start) as usize))
            });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Reads served from the cache, and reads that had to go to the device.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_cached_until_a_reader_asks() {
        let cache = TailCache::new(1 << 20, 60_000);
        assert!(!cache.wanted());
        assert_eq!(cache.get(0, 4), None);
        assert!(cache.wanted());
        cache.publish(0, b"abcdefgh");
        assert_eq!(cache.get(2, 4).as_deref(), Some(&b"cdef"[..]));
        assert_eq!(cache.get(6, 4), None, "runs past the cached bytes");
    }

    #[test]
    fn a_rewritten_tail_replaces_the_shorter_copy_and_old_chunks_leave() {
        let cache = TailCache::new(16, 60_000);
        let _ = cache.get(0, 1);
        cache.publish(0, b"0123");
        cache.publish(0, b"01234567");
        assert_eq!(cache.get(4, 4).as_deref(), Some(&b"4567"[..]));
        cache.publish(8, b"89abcdef");
        cache.publish(16, b"ghij");
        assert_eq!(cache.get(0, 2), None, "evicted past the cap");
        assert_eq!(cache.get(16, 4).as_deref(), Some(&b"ghij"[..]));
    }

    #[test]
    fn a_disabled_cache_never_keeps_anything() {
        let cache = TailCache::new(0, 60_000);
        assert_eq!(cache.get(0, 1), None);
        assert!(!cache.wanted());
    }

    #[test]
    fn writes_completing_out_of_order_are_found() {
        let cache = TailCache::new(1 << 20, 60_000);
        let _ = cache.get(0, 1);
        cache.publish(8, b"89abcdef");
        cache.publish(0, b"01234567");
        cache.publish(24, b"opqr");
        cache.publish(16, b"ghijklmn");
        assert_eq!(cache.get(0, 8).as_deref(), Some(&b"01234567"[..]));
        assert_eq!(cache.get(10, 4).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(cache.get(20, 4).as_deref(), Some(&b"klmn"[..]));
        assert_eq!(cache.get(24, 4).as_deref(), Some(&b"opqr"[..]));
        assert_eq!(cache.get(6, 4), None, "spans two chunks");
        assert_eq!(cache.get(28, 1), None, "past the end");
    }
}
