//! Consumer offsets the broker keeps for clustering consumers: set by commits (their own
//! requests or piggybacked on pulls), persisted atomically on an interval and at shutdown.
//!
//! File: `<store>/config/consumer_offsets.json`, a JSON list of `{group, topic, queue_id,
//! offset}`. Written to a temporary file, fsynced, renamed over the old one, and the
//! directory fsynced: a crash leaves the old file or the new one, never a torn one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    group: String,
    topic: String,
    queue_id: u32,
    offset: u64,
}

/// One shard's part: group → topic → queue → offset, for the queues the shard owns.
#[derive(Default)]
struct Part {
    groups: HashMap<String, HashMap<String, HashMap<u32, u64>>>,
    /// Changed since the last persist.
    dirty: bool,
}

/// Consumer offsets, split by the shard that owns each queue: a commit or a lookup locks
/// only its queue's part, which on the shard-aware path only that shard's requests touch
/// (no lock or cache line shared between cores per message), and looks it up by `&str`
/// without building a key. The persister merges the parts into one file.
pub struct ConsumerOffsets {
    path: PathBuf,
    parts: Vec<Mutex<Part>>,
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
    /// Loads `<store_path>/config/consumer_offsets.json` (none yet: empty) for a store of
    /// `shards` shards.
    pub fn open(store_path: &Path, shards: usize) -> Result<ConsumerOffsets, OffsetsError> {
        let path = store_path.join("config").join("consumer_offsets.json");
        let offsets = ConsumerOffsets {
            parts: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            path,
            persisting: Mutex::new(()),
        };
        match std::fs::read(&offsets.path) {
            Ok(bytes) => {
                let entries: Vec<Entry> =
                    serde_json::from_slice(&bytes).map_err(|source| OffsetsError::Parse {
                        path: offsets.path.clone(),
                        source,
                    })?;
                for e in entries {
                    offsets.commit(&e.group, &e.topic, e.queue_id, e.offset);
                }
                for i in 0..offsets.parts.len() {
                    offsets.part(i).dirty = false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OffsetsError::Io {
                    path: offsets.path,
                    source,
                })
            }
        }
        Ok(offsets)
    }

    fn part(&self, i: usize) -> MutexGuard<'_, Part> {
        self.parts[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The part holding `(topic, queue_id)`: its owner shard's.
    fn part_of(&self, topic: &str, queue_id: u32) -> MutexGuard<'_, Part> {
        self.part(shardmq_protocol::shards::queue_shard(
            topic,
            queue_id,
            self.parts.len(),
        ))
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        let mut part = self.part_of(topic, queue_id);
        part.dirty = true;
        let topics = match part.groups.get_mut(group) {
            Some(t) => t,
            None => part.groups.entry(group.to_owned()).or_default(),
        };
        let queues = match topics.get_mut(topic) {
            Some(q) => q,
            None => topics.entry(topic.to_owned()).or_default(),
        };
        queues.insert(queue_id, offset);
    }

    pub fn get(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.part_of(topic, queue_id)
            .groups
            .get(group)?
            .get(topic)?
            .get(&queue_id)
            .copied()
    }

    /// Every committed offset, sorted: (group, topic, queue, offset).
    pub fn all(&self) -> Vec<(String, String, u32, u64)> {
        let mut out = Vec::new();
        for i in 0..self.parts.len() {
            let part = self.part(i);
            for (g, topics) in &part.groups {
                for (t, queues) in topics {
                    out.extend(queues.iter().map(|(q, o)| (g.clone(), t.clone(), *q, *o)));
                }
            }
        }
        out.sort();
        out
    }

    /// Forgets a deleted topic's offsets.
    pub fn drop_topic(&self, topic: &str) {
        for i in 0..self.parts.len() {
            let mut part = self.part(i);
            for topics in part.groups.values_mut() {
                topics.remove(topic);
            }
            part.groups.retain(|_, topics| !topics.is_empty());
            part.dirty = true;
        }
    }

    /// Writes the file if anything changed since the last time.
    pub fn persist(&self) -> Result<(), OffsetsError> {
        let _one = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for i in 0..self.parts.len() {
            changed |= std::mem::take(&mut self.part(i).dirty);
        }
        if !changed {
            return Ok(());
        }
        let entries: Vec<Entry> = self
            .all()
            .into_iter()
            .map(|(group, topic, queue_id, offset)| Entry {
                group,
                topic,
                queue_id,
                offset,
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other);
        let result = bytes.and_then(|b| write_atomically(&self.path, &b));
        if result.is_err() {
            // Written again next time.
            self.part(0).dirty = true;
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
        let o = ConsumerOffsets::open(dir.path(), 2).unwrap();
        o.commit("g", "T", 3, 42);
        o.commit("g", "U", 0, 7);
        o.persist().unwrap();
        let again = ConsumerOffsets::open(dir.path(), 2).unwrap();
        assert_eq!(again.get("g", "T", 3), Some(42));
        again.drop_topic("T");
        again.persist().unwrap();
        let third = ConsumerOffsets::open(dir.path(), 2).unwrap();
        assert_eq!(third.get("g", "T", 3), None);
        assert_eq!(third.get("g", "U", 0), Some(7));
    }

    #[test]
    fn a_file_written_before_the_split_is_read() {
        // As the single-map broker wrote it (commit e7f078d).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config").join("consumer_offsets.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            r#"[{"group":"g","topic":"T","queue_id":3,"offset":42},
                {"group":"h","topic":"%RETRY%h","queue_id":0,"offset":7}]"#,
        )
        .unwrap();
        let o = ConsumerOffsets::open(dir.path(), 2).unwrap();
        assert_eq!(o.get("g", "T", 3), Some(42));
        assert_eq!(o.get("h", "%RETRY%h", 0), Some(7));
        assert_eq!(o.get("g", "T", 4), None);
    }

    #[test]
    fn a_file_written_with_one_shard_count_is_read_with_another() {
        let dir = tempfile::tempdir().unwrap();
        let one = ConsumerOffsets::open(dir.path(), 1).unwrap();
        for q in 0..16 {
            one.commit("g", "T", q, 100 + q as u64);
        }
        one.persist().unwrap();
        let four = ConsumerOffsets::open(dir.path(), 4).unwrap();
        for q in 0..16 {
            assert_eq!(four.get("g", "T", q), Some(100 + q as u64));
        }
        assert_eq!(four.all().len(), 16);
        four.persist().unwrap(); // nothing changed: no write needed, none fails
    }
}
