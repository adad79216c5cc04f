//! The schedule service's progress: what it has delivered, persisted so that a restart
//! delivers nothing twice that was delivered before the last persist.
//!
//! File `<store>/schedule/progress.json`, written atomically (temporary file, fsync, rename,
//! directory fsync): `{"levels": [next offset per level], "slots": {queue: low offset},
//! "done": {queue: [[from, to], ...]}, "minute": m}` — for a level, every entry below its
//! offset was delivered; for a wheel slot, every entry below its low offset and every entry in
//! its `done` ranges (half-open, above the low offset: exact times are delivered in due order,
//! not queue order). `minute` is the oldest minute some shard's wheel had not retired (each
//! shard's wheel retires the minutes whose slots it owns).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub levels: Vec<u64>,
    pub slots: BTreeMap<u32, u64>,
    pub done: BTreeMap<u32, Vec<(u64, u64)>>,
    pub minute: i64,
}

impl Progress {
    pub fn path(store: &Path) -> PathBuf {
        store.join("schedule").join("progress.json")
    }

    /// The persisted progress (none yet: nothing delivered).
    pub fn load(store: &Path) -> std::io::Result<Progress> {
        match std::fs::read(Self::path(store)) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, store: &Path) -> std::io::Result<()> {
        let path = Self::path(store);
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir)?;
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::meta::write_atomic(&path, &bytes)
    }

    pub fn level(&self, l: usize) -> u64 {
        self.levels.get(l).copied().unwrap_or(0)
    }

    /// Whether the wheel entry at `offset` of `queue` was delivered.
    pub fn slot_done(&self, queue: u32, offset: u64) -> bool {
        offset < self.slots.get(&queue).copied().unwrap_or(0)
            || self
                .done
                .get(&queue)
                .is_some_and(|r| r.iter().any(|&(a, b)| a <= offset && offset < b))
    }

    /// Records the wheel entry at `offset` of `queue` as delivered.
    pub fn mark_slot(&mut self, queue: u32, offset: u64) {
        let low = self.slots.entry(queue).or_insert(0);
        if offset < *low {
            return;
        }
        let ranges = self.done.entry(queue).or_default();
        // Insert [offset, offset + 1) and merge neighbours (the list stays sorted, disjoint).
        let at = ranges.partition_point(|&(_, b)| b < offset);
        if at < ranges.len() && ranges[at].0 <= offset + 1 && offset <= ranges[at].1 {
            let r = &mut ranges[at];
            r.0 = r.0.min(offset);
            r.1 = r.1.max(offset + 1);
            if at + 1 < ranges.len() && ranges[at + 1].0 <= ranges[at].1 {
                let next = ranges.remove(at + 1);
                ranges[at].1 = ranges[at].1.max(next.1);
            }
        } else {
            ranges.insert(at, (offset, offset + 1));
        }
        // The low offset swallows a range that starts at it.
        if ranges.first().is_some_and(|&(a, _)| a <= *low) {
            let (_, b) = ranges.remove(0);
            *low = (*low).max(b);
        }
        if ranges.is_empty() {
            self.done.remove(&queue);
        }
    }

    /// A retired slot: everything below `to` delivered, nothing recorded above.
    pub fn retire_slot(&mut self, queue: u32, to: u64) {
        self.slots.insert(queue, to);
        self.done.remove(&queue);
    }

    pub fn set_level(&mut self, l: usize, next: u64) {
        if self.levels.len() <= l {
            self.levels.resize(l + 1, 0);
        }
        self.levels[l] = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Progress::load(dir.path()).unwrap(), Progress::default());
        let mut p = Progress::default();
        p.set_level(3, 17);
        p.slots.insert(20, 5);
        p.mark_slot(20, 7);
        p.minute = 9;
        p.save(dir.path()).unwrap();
        assert_eq!(Progress::load(dir.path()).unwrap(), p);
        assert_eq!(p.level(0), 0);
        assert_eq!(p.level(3), 17);
    }

    #[test]
    fn slot_marks_merge_into_ranges_and_the_low_offset() {
        let mut p = Progress::default();
        for o in [5, 3, 4, 9, 0, 1, 2, 8] {
            p.mark_slot(7, o);
        }
        assert_eq!(p.slots[&7], 6, "0..=5 delivered");
        assert_eq!(p.done[&7], vec![(8, 10)]);
        assert!(
            p.slot_done(7, 2) && p.slot_done(7, 9) && !p.slot_done(7, 6) && !p.slot_done(7, 10)
        );
        p.mark_slot(7, 6);
        p.mark_slot(7, 7);
        assert_eq!(p.slots[&7], 10);
        assert!(!p.done.contains_key(&7));
        p.retire_slot(7, 12);
        assert!(p.slot_done(7, 11));
    }
}
