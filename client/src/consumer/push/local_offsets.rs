//! BROADCASTING offsets: every member consumes every queue, so each keeps its own offsets in
//! a local file, `<dir>/<client id>/<group>/offsets` (the client id should then be stable
//! across restarts of the same member: set it with `PushConsumerBuilder::client_id`).
//!
//! Format: one line per queue, `topic<TAB>broker name<TAB>queue id<TAB>next offset`. Topic
//! and broker names cannot hold tabs or newlines. The file is replaced atomically (written
//! to a temporary file, synced, renamed, directory synced), so a crash leaves the old or the
//! new offsets, never a torn file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ClientError;
use crate::route::MessageQueue;

pub type Offsets = BTreeMap<MessageQueue, u64>;

/// Parses the file's text; a malformed line is an error naming it.
pub fn parse(text: &str) -> Result<Offsets, String> {
    let mut out = Offsets::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || {
            format!(
                "line {}: {line:?} is not topic, broker, queue, offset",
                i + 1
            )
        };
        let [topic, broker, queue, offset] = f[..] else {
            return Err(bad());
        };
        let queue_id = queue.parse().map_err(|_| bad())?;
        let offset = offset.parse().map_err(|_| bad())?;
        out.insert(
            MessageQueue {
                topic: topic.into(),
                broker_name: broker.into(),
                queue_id,
            },
            offset,
        );
    }
    Ok(out)
}

pub fn format(offsets: &Offsets) -> String {
    offsets
        .iter()
        .map(|(q, o)| format!("{}\t{}\t{}\t{o}\n", q.topic, q.broker_name, q.queue_id))
        .collect()
}

/// One member's offsets file.
#[derive(Debug)]
pub struct LocalOffsetStore {
    path: PathBuf,
}

impl LocalOffsetStore {
    pub fn new(dir: &Path, client_id: &str, group: &str) -> Self {
        let safe = |s: &str| s.replace(['/', '\\'], "_");
        LocalOffsetStore {
            path: dir.join(safe(client_id)).join(safe(group)).join("offsets"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored offsets (none when the file does not exist yet).
    pub fn load(&self) -> Result<Offsets, ClientError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&text).map_err(|why| {
                ClientError::Config(format!("offsets file {}: {why}", self.path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Offsets::new()),
            Err(e) => Err(self.io(e)),
        }
    }

    pub fn save(&self, offsets: &Offsets) -> Result<(), ClientError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(format(offsets).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            addr: self.path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn offsets_round_trip(
            entries in proptest::collection::vec(("[A-Za-z0-9%_-]{1,12}", "[a-z0-9-]{1,8}", 0u32..64, any::<u64>()), 0..20)
        ) {
            let offsets: Offsets = entries
                .into_iter()
                .map(|(t, b, q, o)| (MessageQueue { topic: t, broker_name: b, queue_id: q }, o))
                .collect();
            prop_assert_eq!(parse(&format(&offsets)).unwrap(), offsets);
        }
    }

    #[test]
    fn a_malformed_line_is_named() {
        assert!(parse("T\tb\t0\t5\nT\tb\tx\t1\n")
            .unwrap_err()
            .starts_with("line 2"));
    }

    #[test]
    fn saved_offsets_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalOffsetStore::new(dir.path(), "host@1@1", "G");
        assert!(store.load().unwrap().is_empty());
        let mut o = Offsets::new();
        o.insert(
            MessageQueue {
                topic: "T".into(),
                broker_name: "b".into(),
                queue_id: 3,
            },
            42,
        );
        store.save(&o).unwrap();
        assert_eq!(store.load().unwrap(), o);
    }
}
