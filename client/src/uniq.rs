//! Client-generated unique message ids (RocketMQ's UNIQ_KEY role), 32 hex characters:
//!
//! ```text
//! chars  bytes  field
//!  0..8      4  process id
//!  8..20     6  process start time, ms since the Unix epoch
//! 20..32     6  counter, starting at a value drawn from the start time's nanoseconds
//! ```
//!
//! Within a process ids never repeat (the 48-bit counter would take years to wrap at
//! millions a second); two processes collide only with the same pid, the same start
//! millisecond and overlapping counter ranges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const MASK_48: u64 = (1 << 48) - 1;

/// Makes unique ids for one process.
#[derive(Debug)]
pub struct UniqueIdGen {
    /// pid and start time, already in hex.
    prefix: String,
    counter: AtomicU64,
}

impl UniqueIdGen {
    /// A generator for process `pid` started at `start_ms`, its counter starting at `seed`'s
    /// low 48 bits.
    pub fn new(pid: u32, start_ms: u64, seed: u64) -> Self {
        UniqueIdGen {
            prefix: format!("{pid:08X}{:012X}", start_ms & MASK_48),
            counter: AtomicU64::new(seed & MASK_48),
        }
    }

    /// The process-wide generator.
    pub fn global() -> &'static UniqueIdGen {
        static GEN: OnceLock<UniqueIdGen> = OnceLock::new();
        GEN.get_or_init(|| {
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let start_ms = since.as_millis() as u64;
            let mut seed = (u64::from(since.subsec_nanos()) << 20) ^ u64::from(std::process::id());
            // xorshift64: spread the nanoseconds over the counter's range.
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
            }
            UniqueIdGen::new(std::process::id(), start_ms, seed)
        })
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & MASK_48;
        format!("{}{n:012X}", self.prefix)
    }
}

/// The next process-wide unique id.
pub fn next_unique_id() -> String {
    UniqueIdGen::global().next_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_have_their_layout_and_do_not_repeat() {
        let g = UniqueIdGen::new(0x1234, 0x0000_0102_0304_0506, 0xFFFF_FFFF_FFFE);
        let a = g.next_id();
        let b = g.next_id();
        let c = g.next_id();
        assert_eq!(a, "00001234010203040506FFFFFFFFFFFE");
        assert_eq!(b, "00001234010203040506FFFFFFFFFFFF");
        assert_eq!(
            c, "00001234010203040506000000000000",
            "the counter wraps in 48 bits"
        );
    }

    #[test]
    fn the_global_generator_is_unique_across_threads() {
        let ids: Vec<Vec<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).map(|_| next_unique_id()).collect()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: HashSet<&String> = ids.iter().flatten().collect();
        assert_eq!(all.len(), 4000);
        for id in all {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(id.starts_with(&format!("{:08X}", std::process::id())));
        }
    }
}
