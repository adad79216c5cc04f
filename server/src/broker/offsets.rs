//! Consumer offsets the broker keeps for clustering consumers: set by commits (their own
//! requests or piggybacked on pulls), persisted atomically on an interval and at shutdown.
//!
//! File: `<store>/config/consumer_offsets.json`, a JSON list of `{group, topic, queue_id,
//! offset}`. Written to a temporary file, fsynced, renamed over the old one, and the
//! directory fsynced: a crash leaves the old file or the new one, never a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

type Key = (String, String, u32);

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    group: String,
    topic: String,
    queue_id: u32,
    offset: u64,
}

pub struct ConsumerOffsets {
    path: PathBuf,
    map: Mutex<BTreeMap<Key, u64>>,
    dirty: AtomicBool,
    /// One persist at a time (the interval thread and shutdown may meet).
    persisting: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("consumer offsets file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("consumer offsets file {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl ConsumerOffsets {
    /// Loads `<store_path>/config/consumer_offsets.json` (none yet: empty).
    pub fn open(store_path: &Path) -> Result<ConsumerOffsets, OffsetsError> {
        let path = store_path.join("config").join("consumer_offsets.json");
        let io = |source| OffsetsError::Io {
            path: path.clone(),
            source,
        };
        let mut map = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entries: Vec<Entry> =
                    serde_json::from_slice(&bytes).map_err(|source| OffsetsError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                for e in entries {
                    map.insert((e.group, e.topic, e.queue_id), e.offset);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok(ConsumerOffsets {
            path,
            map: Mutex::new(map),
            dirty: AtomicBool::new(false),
            persisting: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, u64>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        self.lock()
            .insert((group.to_owned(), topic.to_owned(), queue_id), offset);
        self.dirty.store(true, Ordering::Release);
    }

    pub fn get(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.lock()
            .get(&(group.to_owned(), topic.to_owned(), queue_id))
            .copied()
    }

    /// Every committed offset: (group, topic, queue, offset).
    pub fn all(&self) -> Vec<(String, String, u32, u64)> {
        self.lock()
            .iter()
            .map(|((g, t, q), o)| (g.clone(), t.clone(), *q, *o))
            .collect()
    }

    /// Forgets a deleted topic's offsets.
    pub fn drop_topic(&self, topic: &str) {
        self.lock().retain(|(_, t, _), _| t != topic);
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the file if anything changed since the last time.
    pub fn persist(&self) -> Result<(), OffsetsError> {
        let _one = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let entries: Vec<Entry> = self
            .lock()
            .iter()
            .map(|((g, t, q), o)| Entry {
                group: g.clone(),
                topic: t.clone(),
                queue_id: *q,
                offset: *o,
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other);
        let result = bytes.and_then(|b| write_atomically(&self.path, &b));
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result.map_err(|source| OffsetsError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_a_reopen_and_deleted_topics_forget_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let o = ConsumerOffsets::open(dir.path()).unwrap();
        o.commit("g", "T", 3, 42);
        o.commit("g", "U", 0, 7);
        o.persist().unwrap();
        let again = ConsumerOffsets::open(dir.path()).unwrap();
        assert_eq!(again.get("g", "T", 3), Some(42));
        again.drop_topic("T");
        again.persist().unwrap();
        let third = ConsumerOffsets::open(dir.path()).unwrap();
        assert_eq!(third.get("g", "T", 3), None);
        assert_eq!(third.get("g", "U", 0), Some(7));
    }
}
