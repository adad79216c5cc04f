//! The schedule service's progress: what it has delivered, persisted so that a restart
//! delivers nothing twice that was delivered before the last persist.
//!
//! File `<store>/schedule/progress.json`, written atomically (temporary file, fsync, rename,
//! directory fsync): `{"levels": [next offset per level], "slots": {queue: next offset},
//! "minute": m, "due_upto": t, "at_due": n}` — for the wheel, every entry of a slot below its
//! offset was delivered, and in minute `m`'s slot every entry due before `t` and the first `n`
//! due at `t` (in queue order) were too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub levels: Vec<u64>,
    pub slots: BTreeMap<u32, u64>,
    pub minute: i64,
    pub due_upto: i64,
    pub at_due: u64,
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
        p.minute = 9;
        p.due_upto = 1234;
        p.at_due = 2;
        p.save(dir.path()).unwrap();
        assert_eq!(Progress::load(dir.path()).unwrap(), p);
        assert_eq!(p.level(0), 0);
        assert_eq!(p.level(3), 17);
    }
}
