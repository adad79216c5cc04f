//! Topic configurations: the table of topics a broker serves (RocketMQ's `TopicConfigManager`),
//! its validation rules and its file, `<store>/topics.toml`.
//!
//! Pure bookkeeping: no async, no threads. The only I/O is [`TopicTable::save`] and
//! [`TopicTable::load`], which read or atomically replace one small file.
//!
//! Every topic created gets a *generation* from a table-wide counter that only grows and is
//! persisted. A topic deleted and created again therefore has a new, larger generation, so the
//! engine can tell the new topic's queues from the old one's messages and consumer offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::ops::BitOr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::meta::write_atomic;

/// Longest topic name, in bytes (RocketMQ's limit; a record stores up to 255).
pub const TOPIC_NAME_MAX_BYTES: usize = 127;
/// Most read or write queues one topic may have. RocketMQ sets no hard cap; 65 536 admits the
/// engine benchmark's 10 000-queue topic with room to spare, while a topic's queues (created
/// only when used, one small map entry each) stay a bounded cost.
pub const QUEUES_MAX: u32 = 65_536;
/// Most topics one table holds. Auto-creation lets producers add topics, so the table needs a
/// bound like every other structure a client can grow.
pub const TOPICS_MAX: usize = 65_536;
/// Names with this prefix belong to the broker's own topics; users cannot create them.
pub const SYSTEM_TOPIC_PREFIX: &str = "rmq_sys_";
/// Bound of generations (handed out below it) and of the data version: TOML integers are
/// signed 64-bit.
pub const GENERATION_MAX: u64 = i64::MAX as u64;
/// The topics file inside the store directory.
pub const TOPICS_FILE: &str = "topics.toml";
/// Version of the topics file this build reads and writes.
pub const TOPICS_FORMAT_VERSION: u32 = 1;

/// A topic's permissions, RocketMQ's bits: `READ` = 4, `WRITE` = 2, `INHERIT` = 1 (the broker
/// may copy this topic's config to auto-created topics). Stored in files as the integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Perm(u8);

impl Perm {
    pub const NONE: Perm = Perm(0);
    pub const INHERIT: Perm = Perm(1);
    pub const WRITE: Perm = Perm(2);
    pub const READ: Perm = Perm(4);
    pub const READ_WRITE: Perm = Perm(4 | 2);
    const ALL_BITS: u8 = 4 | 2 | 1;

    /// The permission with these bits, or `None` if a bit outside `READ|WRITE|INHERIT` is set.
    pub const fn from_bits(bits: u8) -> Option<Perm> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Perm(bits))
        } else {
            None
        }
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Perm) -> bool {
        self.0 & other.0 == other.0
    }

    /// Consumers may pull from the topic's queues.
    pub const fn readable(self) -> bool {
        self.contains(Perm::READ)
    }

    /// Producers may send to the topic's queues.
    pub const fn writable(self) -> bool {
        self.contains(Perm::WRITE)
    }

    pub const fn inherited(self) -> bool {
        self.contains(Perm::INHERIT)
    }
}

impl BitOr for Perm {
    type Output = Perm;
    fn bitor(self, rhs: Perm) -> Perm {
        Perm(self.0 | rhs.0)
    }
}

/// `r`, `w`, `i` (inherit) or `-` in that order: `rw-` is read and write.
impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |set: bool, c: char| if set { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            flag(self.readable(), 'r'),
            flag(self.writable(), 'w'),
            flag(self.inherited(), 'i')
        )
    }
}

/// Permission bits outside `READ|WRITE|INHERIT`.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("permission bits {0:#x} are not a combination of READ (4), WRITE (2) and INHERIT (1)")]
pub struct InvalidPerm(pub u8);

impl TryFrom<u8> for Perm {
    type Error = InvalidPerm;
    fn try_from(bits: u8) -> Result<Perm, InvalidPerm> {
        Perm::from_bits(bits).ok_or(InvalidPerm(bits))
    }
}

impl From<Perm> for u8 {
    fn from(perm: Perm) -> u8 {
        perm.0
    }
}

/// One topic as the broker serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    /// Queues consumers are routed to (`0..read_queues`).
    pub read_queues: u32,
    /// Queues producers are routed to (`0..write_queues`).
    pub write_queues: u32,
    pub perm: Perm,
    /// Which incarnation of the name this is: unique in the table's history, larger for a
    /// topic created later. Never 0.
    pub generation: u64,
}

/// Which queue count an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Read,
    Write,
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Read => "read",
            QueueKind::Write => "write",
        })
    }
}

/// Why a topic operation was refused. The table is unchanged after any of them.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic name is empty")]
    EmptyName,
    #[error("topic name {name:?} is {len} bytes; the limit is {TOPIC_NAME_MAX_BYTES}")]
    NameTooLong {
        /// The name's first bytes only: the name itself may be arbitrarily long.
        name: String,
        len: usize,
    },
    #[error("topic name {name:?} has {ch:?} at byte {at}; allowed are A-Z a-z 0-9 and _ % | -")]
    NameChar { name: String, ch: char, at: usize },
    #[error(
        "topic name {name:?} starts with {SYSTEM_TOPIC_PREFIX:?}, which is reserved for the \
         broker's own topics"
    )]
    Reserved { name: String },
    #[error("topic {name:?}: {kind} queue count {value} is outside 1..={QUEUES_MAX}")]
    QueueCount {
        name: String,
        kind: QueueKind,
        value: u32,
    },
    #[error("topic {name:?} already exists (generation {generation})")]
    Exists { name: String, generation: u64 },
    #[error("topic {name:?} does not exist")]
    NotFound { name: String },
    #[error("cannot create topic {name:?}: the table already holds {TOPICS_MAX} topics")]
    TableFull { name: String },
    #[error("cannot create topic {name:?}: every topic generation below {GENERATION_MAX} is used")]
    GenerationsExhausted { name: String },
}

/// Checks a topic name: 1..=127 bytes of `[A-Za-z0-9_%|-]`, and not the reserved prefix
/// unless `allow_system` (the broker creating its own topics, or a file being loaded).
pub fn validate_name(name: &str, allow_system: bool) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::EmptyName);
    }
    if name.len() > TOPIC_NAME_MAX_BYTES {
        return Err(TopicError::NameTooLong {
            name: shown_prefix(name),
            len: name.len(),
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '%' | '|' | '-');
    if let Some((at, ch)) = name.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(TopicError::NameChar {
            name: name.to_owned(),
            ch,
            at,
        });
    }
    if !allow_system && name.starts_with(SYSTEM_TOPIC_PREFIX) {
        return Err(TopicError::Reserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks both queue counts are in `1..=QUEUES_MAX`.
pub fn validate_queues(name: &str, read_queues: u32, write_queues: u32) -> Result<(), TopicError> {
    for (kind, value) in [
        (QueueKind::Read, read_queues),
        (QueueKind::Write, write_queues),
    ] {
        if !(1..=QUEUES_MAX).contains(&value) {
            return Err(TopicError::QueueCount {
                name: name.to_owned(),
                kind,
                value,
            });
        }
    }
    Ok(())
}

/// At most `TOPIC_NAME_MAX_BYTES` of `name`, cut at a char boundary, for error messages.
fn shown_prefix(name: &str) -> String {
    let mut end = TOPIC_NAME_MAX_BYTES.min(name.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// Changes to a topic; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicUpdate {
    pub read_queues: Option<u32>,
    pub write_queues: Option<u32>,
    pub perm: Option<Perm>,
}

/// Whether and how a topic a producer sends to is created when missing (RocketMQ's
/// `autoCreateTopicEnable` and `defaultTopicQueueNums`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoCreate {
    pub enabled: bool,
    /// Read and write queue count of an auto-created topic.
    pub queues: u32,
    pub perm: Perm,
}

impl Default for AutoCreate {
    fn default() -> Self {
        AutoCreate {
            enabled: true,
            queues: 8,
            perm: Perm::READ_WRITE,
        }
    }
}

/// The broker's topics, keyed and listed by name, with the counters that outlive them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTable {
    topics: BTreeMap<String, TopicConfig>,
    /// The generation the next created topic gets. Only grows, also across deletes.
    next_generation: u64,
    /// Bumped on every change, so route caches can tell whether they are stale.
    data_version: u64,
}

impl Default for TopicTable {
    fn default() -> Self {
        TopicTable::new()
    }
}

impl TopicTable {
    /// An empty table; its first topic gets generation 1.
    pub fn new() -> Self {
        TopicTable {
            topics: BTreeMap::new(),
            next_generation: 1,
            data_version: 0,
        }
    }

    /// Creates a user topic. Names with the reserved prefix are refused.
    pub fn create(
        &mut self,
        name: &str,
        read_queues: u32,
        write_queues: u32,
        perm: Perm,
    ) -> Result<&TopicConfig, TopicError> {
        self.insert(name, read_queues, write_queues, perm, false)
    }

    /// Creates one of the broker's own topics: like [`create`](Self::create), but names with
    /// the reserved prefix are allowed.
    pub fn create_system(
        &mut self,
        name: &str,
        read_queues: u32,
        write_queues: u32,
        perm: Perm,
    ) -> Result<&TopicConfig, TopicError> {
        self.insert(name, read_queues, write_queues, perm, true)
    }

    fn insert(
        &mut self,
        name: &str,
        read_queues: u32,
        write_queues: u32,
        perm: Perm,
        allow_system: bool,
    ) -> Result<&TopicConfig, TopicError> {
        validate_name(name, allow_system)?;
        validate_queues(name, read_queues, write_queues)?;
        if let Some(existing) = self.topics.get(name) {
            return Err(TopicError::Exists {
                name: name.to_owned(),
                generation: existing.generation,
            });
        }
        if self.topics.len() >= TOPICS_MAX {
            return Err(TopicError::TableFull {
                name: name.to_owned(),
            });
        }
        let generation = self.next_generation;
        // `next_generation` stays <= GENERATION_MAX so the file can always store it.
        if generation >= GENERATION_MAX {
            return Err(TopicError::GenerationsExhausted {
                name: name.to_owned(),
            });
        }
        self.next_generation = generation + 1;
        self.bump_version();
        let config = TopicConfig {
            name: name.to_owned(),
            read_queues,
            write_queues,
            perm,
            generation,
        };
        Ok(self.topics.entry(name.to_owned()).or_insert(config))
    }

    /// Changes a topic's queue counts or permission; its generation stays. The data version
    /// moves only if something actually changed.
    pub fn update(&mut self, name: &str, update: TopicUpdate) -> Result<&TopicConfig, TopicError> {
        let topic = self
            .topics
            .get_mut(name)
            .ok_or_else(|| TopicError::NotFound {
                name: name.to_owned(),
            })?;
        let read_queues = update.read_queues.unwrap_or(topic.read_queues);
        let write_queues = update.write_queues.unwrap_or(topic.write_queues);
        validate_queues(name, read_queues, write_queues)?;
        let perm = update.perm.unwrap_or(topic.perm);
        let changed = (read_queues, write_queues, perm)
            != (topic.read_queues, topic.write_queues, topic.perm);
        topic.read_queues = read_queues;
        topic.write_queues = write_queues;
        topic.perm = perm;
        if changed {
            self.data_version = self.data_version.saturating_add(1).min(GENERATION_MAX);
        }
        Ok(topic)
    }

    /// Removes a topic and returns its last config. Its generation is never handed out again.
    pub fn delete(&mut self, name: &str) -> Result<TopicConfig, TopicError> {
        let removed = self
            .topics
            .remove(name)
            .ok_or_else(|| TopicError::NotFound {
                name: name.to_owned(),
            })?;
        self.bump_version();
        Ok(removed)
    }

    /// The topic a producer sends to: the existing one; else, if `policy` enables it, a new
    /// user topic with the policy's queues and permission; else `None`.
    pub fn auto_create(
        &mut self,
        name: &str,
        policy: &AutoCreate,
    ) -> Result<Option<&TopicConfig>, TopicError> {
        if self.topics.contains_key(name) {
            return Ok(self.topics.get(name));
        }
        if !policy.enabled {
            return Ok(None);
        }
        self.create(name, policy.queues, policy.queues, policy.perm)
            .map(Some)
    }

    pub fn get(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.get(name)
    }

    /// Every topic, sorted by name (byte order).
    pub fn list(&self) -> impl ExactSizeIterator<Item = &TopicConfig> + '_ {
        self.topics.values()
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The generation the next created topic will get.
    pub fn next_generation(&self) -> u64 {
        self.next_generation
    }

    /// A counter bumped by every change to the table.
    pub fn data_version(&self) -> u64 {
        self.data_version
    }

    fn bump_version(&mut self) {
        // Saturates far beyond any real count of changes; stays storable in TOML.
        self.data_version = self.data_version.saturating_add(1).min(GENERATION_MAX);
    }
}

/// The topics file's layout (see `docs/format.md`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    format_version: u32,
    next_generation: u64,
    data_version: u64,
    topics: Vec<TopicConfig>,
}

/// Why a topics file's text is not a valid table.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopicsDecodeError {
    #[error("not a topics table: {0}")]
    Syntax(String),
    #[error(
        "format version {found} is not supported by this build (it reads version \
         {TOPICS_FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("next_generation {0} is outside 1..={GENERATION_MAX}")]
    NextGeneration(u64),
    #[error("{0}")]
    Topic(#[from] TopicError),
    #[error("topic {0:?} appears more than once")]
    DuplicateName(String),
    #[error("topic {name:?} has generation {generation}, outside 1..{next_generation}")]
    BadGeneration {
        name: String,
        generation: u64,
        next_generation: u64,
    },
    #[error("generation {generation} appears more than once (topic {name:?})")]
    DuplicateGeneration { name: String, generation: u64 },
    #[error("{0} topics exceed the limit of {TOPICS_MAX}")]
    TooMany(usize),
}

/// Why the topics file could not be read or written.
#[derive(Debug, Error)]
pub enum TopicsFileError {
    #[error("cannot read topics file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "topics file {path} is corrupt: {source}; fix or restore it (ShardMQ does not start \
         with an empty topic table in its place)"
    )]
    Corrupt {
        path: PathBuf,
        source: TopicsDecodeError,
    },
    #[error("cannot encode the topics table: {reason}")]
    Encode { reason: String },
    #[error("cannot write topics file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl TopicTable {
    /// The whole table as the topics file's text.
    pub fn to_toml(&self) -> Result<String, TopicsFileError> {
        let file = TopicsFile {
            format_version: TOPICS_FORMAT_VERSION,
            next_generation: self.next_generation,
            data_version: self.data_version,
            topics: self.topics.values().cloned().collect(),
        };
        toml::to_string(&file).map_err(|e| TopicsFileError::Encode {
            reason: e.to_string(),
        })
    }

    /// Parses and checks a topics file's text: the version, every name and queue count, no
    /// duplicate name or generation, every generation below `next_generation`.
    pub fn from_toml(text: &str) -> Result<TopicTable, TopicsDecodeError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let syntax = |e: toml::de::Error| TopicsDecodeError::Syntax(e.to_string());
        // The version first: a newer file may have fields this build would call unknown.
        let version: Version = toml::from_str(text).map_err(syntax)?;
        if version.format_version != TOPICS_FORMAT_VERSION {
            return Err(TopicsDecodeError::Version {
                found: version.format_version,
            });
        }
        let file: TopicsFile = toml::from_str(text).map_err(syntax)?;
        if !(1..=GENERATION_MAX).contains(&file.next_generation) {
            return Err(TopicsDecodeError::NextGeneration(file.next_generation));
        }
        if file.topics.len() > TOPICS_MAX {
            return Err(TopicsDecodeError::TooMany(file.topics.len()));
        }
        let mut topics = BTreeMap::new();
        let mut generations = BTreeSet::new();
        for topic in file.topics {
            validate_name(&topic.name, true)?;
            validate_queues(&topic.name, topic.read_queues, topic.write_queues)?;
            if !(1..file.next_generation).contains(&topic.generation) {
                return Err(TopicsDecodeError::BadGeneration {
                    name: topic.name,
                    generation: topic.generation,
                    next_generation: file.next_generation,
                });
            }
            if !generations.insert(topic.generation) {
                return Err(TopicsDecodeError::DuplicateGeneration {
                    name: topic.name,
                    generation: topic.generation,
                });
            }
            if topics.contains_key(&topic.name) {
                return Err(TopicsDecodeError::DuplicateName(topic.name));
            }
            topics.insert(topic.name.clone(), topic);
        }
        Ok(TopicTable {
            topics,
            next_generation: file.next_generation,
            data_version: file.data_version,
        })
    }

    /// Durably replaces `<dir>/topics.toml` with this table (temp file, fsync, rename, fsync
    /// of `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), TopicsFileError> {
        let path = dir.join(TOPICS_FILE);
        let text = self.to_toml()?;
        write_atomic(&path, text.as_bytes())
            .map_err(|source| TopicsFileError::Write { path, source })
    }

    /// Reads `<dir>/topics.toml`. A missing file is an empty table (a new store); a file that
    /// does not decode is an error, never an empty table.
    pub fn load(dir: &Path) -> Result<TopicTable, TopicsFileError> {
        let path = dir.join(TOPICS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TopicTable::new()),
            Err(source) => return Err(TopicsFileError::Read { path, source }),
        };
        let decoded = match std::str::from_utf8(&bytes) {
            Ok(text) => TopicTable::from_toml(text),
            Err(e) => Err(TopicsDecodeError::Syntax(format!("not UTF-8: {e}"))),
        };
        decoded.map_err(|source| TopicsFileError::Corrupt { path, source })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn table_with(names: &[&str]) -> TopicTable {
        let mut t = TopicTable::new();
        for name in names {
            t.create(name, 4, 4, Perm::READ_WRITE).unwrap();
        }
        t
    }

    #[test]
    fn perm_bits_and_display() {
        assert_eq!(Perm::READ_WRITE, Perm::READ | Perm::WRITE);
        assert!(Perm::READ_WRITE.readable() && Perm::READ_WRITE.writable());
        assert!(!Perm::READ.writable() && !Perm::WRITE.readable());
        assert_eq!(Perm::READ_WRITE.to_string(), "rw-");
        assert_eq!(Perm::READ.to_string(), "r--");
        assert_eq!((Perm::WRITE | Perm::INHERIT).to_string(), "-wi");
        assert_eq!(Perm::NONE.to_string(), "---");
        assert_eq!(Perm::from_bits(7).map(Perm::bits), Some(7));
        assert_eq!(Perm::from_bits(8), None);
        assert_eq!(Perm::try_from(0x16), Err(InvalidPerm(0x16)));
    }

    #[test]
    fn create_get_list_delete() {
        let mut t = TopicTable::new();
        let created = t.create("orders", 8, 4, Perm::READ_WRITE).unwrap().clone();
        assert_eq!(created.generation, 1);
        assert_eq!((created.read_queues, created.write_queues), (8, 4));
        t.create("audit", 1, 1, Perm::READ).unwrap();
        t.create("Zeta", 2, 2, Perm::WRITE).unwrap();
        assert_eq!(t.get("orders"), Some(&created));
        assert_eq!(t.get("missing"), None);
        let names: Vec<_> = t.list().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Zeta", "audit", "orders"]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.data_version(), 3);

        assert_eq!(t.delete("orders").unwrap(), created);
        assert_eq!(t.get("orders"), None);
        assert_eq!(t.data_version(), 4);
        let err = t.delete("orders").unwrap_err();
        assert_eq!(err.to_string(), "topic \"orders\" does not exist");
    }

    #[test]
    fn create_twice_is_refused() {
        let mut t = table_with(&["orders"]);
        let before = t.clone();
        let err = t.create("orders", 1, 1, Perm::READ).unwrap_err();
        assert_eq!(
            err,
            TopicError::Exists {
                name: "orders".into(),
                generation: 1
            }
        );
        assert_eq!(t, before);
    }

    #[test]
    fn update_changes_counts_and_perm_but_not_generation() {
        let mut t = table_with(&["orders"]);
        let version = t.data_version();
        let update = TopicUpdate {
            write_queues: Some(16),
            perm: Some(Perm::READ),
            ..TopicUpdate::default()
        };
        let updated = t.update("orders", update).unwrap().clone();
        assert_eq!((updated.read_queues, updated.write_queues), (4, 16));
        assert_eq!(updated.perm, Perm::READ);
        assert_eq!(updated.generation, 1);
        assert_eq!(t.data_version(), version + 1);

        // Nothing changed: the route version stays.
        t.update("orders", update).unwrap();
        t.update("orders", TopicUpdate::default()).unwrap();
        assert_eq!(t.data_version(), version + 1);

        let before = t.clone();
        let bad = TopicUpdate {
            read_queues: Some(2),
            write_queues: Some(0),
            perm: None,
        };
        let err = t.update("orders", bad).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("topic \"orders\": write queue count 0 is outside 1..={QUEUES_MAX}")
        );
        assert_eq!(t, before, "a refused update changes nothing");
        assert!(matches!(
            t.update("nope", update),
            Err(TopicError::NotFound { .. })
        ));
    }

    #[test]
    fn names_are_validated() {
        let long = "x".repeat(TOPIC_NAME_MAX_BYTES);
        assert_eq!(validate_name(&long, false), Ok(()));
        assert_eq!(validate_name("a-Z_0%9|b", false), Ok(()));
        assert_eq!(validate_name("", false), Err(TopicError::EmptyName));
        let too_long = format!("{long}y");
        let err = validate_name(&too_long, false).unwrap_err();
        assert!(
            matches!(err, TopicError::NameTooLong { len: 128, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("is 128 bytes; the limit is 127"),
            "{err}"
        );
        // A long multi-byte name is cut at a char boundary in the message, without panicking.
        let wide = "é".repeat(100);
        assert!(matches!(
            validate_name(&wide, false),
            Err(TopicError::NameTooLong { len: 200, .. })
        ));
        let err = validate_name("my.topic", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic name \"my.topic\" has '.' at byte 2; allowed are A-Z a-z 0-9 and _ % | -"
        );
        assert!(matches!(
            validate_name("tö", false),
            Err(TopicError::NameChar {
                ch: 'ö', at: 1, ..
            })
        ));
        assert!(validate_name("a b", false).is_err());
        let err = validate_name("rmq_sys_trace", false).unwrap_err();
        assert!(matches!(err, TopicError::Reserved { .. }));
        assert!(err.to_string().contains("\"rmq_sys_trace\""), "{err}");
        assert_eq!(validate_name("rmq_sys_trace", true), Ok(()));
        assert_eq!(validate_name("rmq_sys", false), Ok(()));
    }

    #[test]
    fn queue_counts_are_validated() {
        let mut t = TopicTable::new();
        t.create("max", QUEUES_MAX, QUEUES_MAX, Perm::READ_WRITE)
            .unwrap();
        let err = t.create("t", 0, 4, Perm::READ_WRITE).unwrap_err();
        assert_eq!(
            err,
            TopicError::QueueCount {
                name: "t".into(),
                kind: QueueKind::Read,
                value: 0
            }
        );
        let err = t
            .create("t", 4, QUEUES_MAX + 1, Perm::READ_WRITE)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "topic \"t\": write queue count {} is outside 1..={QUEUES_MAX}",
                QUEUES_MAX + 1
            )
        );
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.next_generation(),
            2,
            "a refused create uses no generation"
        );
    }

    #[test]
    fn system_topics_need_the_system_call() {
        let mut t = TopicTable::new();
        assert!(matches!(
            t.create("rmq_sys_trace", 1, 1, Perm::READ_WRITE),
            Err(TopicError::Reserved { .. })
        ));
        t.create_system("rmq_sys_trace", 1, 1, Perm::READ_WRITE)
            .unwrap();
        assert!(t.get("rmq_sys_trace").is_some());
    }

    #[test]
    fn generation_grows_across_delete_and_create() {
        let mut t = table_with(&["a", "b"]);
        let first = t.get("a").unwrap().generation;
        t.delete("a").unwrap();
        t.delete("b").unwrap();
        let again = t.create("a", 4, 4, Perm::READ_WRITE).unwrap().generation;
        assert!(again > first, "{again} > {first}");
        assert_eq!(again, 3);
        // It also survives a save and load: a fresh table would hand out 1 again.
        let dir = tempfile::tempdir().unwrap();
        t.delete("a").unwrap();
        t.save(dir.path()).unwrap();
        let mut loaded = TopicTable::load(dir.path()).unwrap();
        assert_eq!(
            loaded
                .create("a", 4, 4, Perm::READ_WRITE)
                .unwrap()
                .generation,
            4
        );
    }

    #[test]
    fn generations_run_out_cleanly() {
        let text = format!(
            "format_version = 1\nnext_generation = {GENERATION_MAX}\ndata_version = 0\ntopics = []\n"
        );
        let mut t = TopicTable::from_toml(&text).unwrap();
        assert!(matches!(
            t.create("a", 1, 1, Perm::READ),
            Err(TopicError::GenerationsExhausted { .. })
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let mut t = TopicTable::new();
        for i in 0..TOPICS_MAX {
            t.create(&format!("t{i}"), 1, 1, Perm::READ).unwrap();
        }
        let err = t.create("one-more", 1, 1, Perm::READ).unwrap_err();
        assert!(matches!(err, TopicError::TableFull { .. }), "{err}");
        let auto = t.auto_create("one-more", &AutoCreate::default());
        assert!(matches!(auto, Err(TopicError::TableFull { .. })));
    }

    #[test]
    fn auto_create_follows_the_policy() {
        let mut t = table_with(&["existing"]);
        let on = AutoCreate::default();
        let off = AutoCreate {
            enabled: false,
            ..on
        };
        let created = t.auto_create("new", &on).unwrap().unwrap().clone();
        assert_eq!((created.read_queues, created.write_queues), (8, 8));
        assert_eq!(created.perm, Perm::READ_WRITE);
        // An existing topic is returned as is, whatever the policy, without a new version.
        let version = t.data_version();
        assert_eq!(t.auto_create("new", &off).unwrap(), Some(&created));
        assert_eq!(
            t.auto_create("existing", &on)
                .unwrap()
                .map(|c| c.generation),
            Some(1)
        );
        assert_eq!(t.data_version(), version);
        assert_eq!(t.auto_create("missing", &off).unwrap(), None);
        assert!(t.get("missing").is_none());
        assert!(matches!(
            t.auto_create("bad name", &on),
            Err(TopicError::NameChar { .. })
        ));
        assert!(matches!(
            t.auto_create("rmq_sys_x", &on),
            Err(TopicError::Reserved { .. })
        ));
        let zero = AutoCreate { queues: 0, ..on };
        assert!(matches!(
            t.auto_create("other", &zero),
            Err(TopicError::QueueCount { value: 0, .. })
        ));
    }

    #[test]
    fn auto_create_policy_reads_from_toml_with_defaults() {
        let policy: AutoCreate = toml::from_str("queues = 4").unwrap();
        assert_eq!(
            policy,
            AutoCreate {
                queues: 4,
                ..AutoCreate::default()
            }
        );
        assert!(toml::from_str::<AutoCreate>("perm = 9").is_err());
        assert!(toml::from_str::<AutoCreate>("queue = 4").is_err());
    }

    #[test]
    fn toml_round_trip() {
        let mut t = table_with(&["orders", "audit"]);
        t.create_system("rmq_sys_trace", 1, 1, Perm::READ_WRITE | Perm::INHERIT)
            .unwrap();
        t.delete("audit").unwrap();
        let text = t.to_toml().unwrap();
        assert!(text.starts_with("format_version = 1\nnext_generation = 4\ndata_version = 4\n"));
        assert!(text.contains("[[topics]]\nname = \"orders\"\n"), "{text}");
        assert!(text.contains("perm = 7\n"), "{text}");
        assert_eq!(TopicTable::from_toml(&text).unwrap(), t);

        let empty = TopicTable::new();
        assert_eq!(
            TopicTable::from_toml(&empty.to_toml().unwrap()).unwrap(),
            empty
        );
    }

    fn decode_err(text: &str) -> String {
        TopicTable::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let head = "format_version = 1\nnext_generation = 5\ndata_version = 9\n";
        let topic = |name: &str, generation: u64, perm: u8| {
            format!(
                "[[topics]]\nname = \"{name}\"\nread_queues = 2\nwrite_queues = 2\nperm = \
                 {perm}\ngeneration = {generation}\n"
            )
        };
        let ok = format!("{head}{}{}", topic("a", 1, 6), topic("b", 4, 6));
        assert_eq!(TopicTable::from_toml(&ok).unwrap().len(), 2);

        let err = decode_err("format_version = 2\nwhatever = true\n");
        assert!(err.contains("format version 2 is not supported"), "{err}");
        let err = decode_err(&format!("{head}extra = 1\ntopics = []\n"));
        assert!(err.contains("unknown field `extra`"), "{err}");
        let err = decode_err(&format!(
            "{head}{}",
            topic("a", 1, 6).replace("perm", "color")
        ));
        assert!(err.contains("unknown field `color`"), "{err}");
        let err = decode_err(&format!("{head}{}{}", topic("a", 1, 6), topic("a", 2, 6)));
        assert_eq!(err, "topic \"a\" appears more than once");
        let err = decode_err(&format!("{head}{}{}", topic("a", 2, 6), topic("b", 2, 6)));
        assert_eq!(err, "generation 2 appears more than once (topic \"b\")");
        let err = decode_err(&format!("{head}{}", topic("a", 5, 6)));
        assert_eq!(err, "topic \"a\" has generation 5, outside 1..5");
        let err = decode_err(&format!("{head}{}", topic("a", 0, 6)));
        assert!(err.contains("generation 0, outside"), "{err}");
        let err = decode_err(&format!("{head}{}", topic("a", 1, 8)));
        assert!(err.contains("permission bits 0x8"), "{err}");
        let err = decode_err(&format!("{head}{}", topic("a.b", 1, 6)));
        assert!(err.contains("has '.' at byte 1"), "{err}");
        let err =
            decode_err("format_version = 1\nnext_generation = 0\ndata_version = 0\ntopics = []");
        assert!(err.contains("next_generation 0 is outside"), "{err}");
        let err = decode_err("format_version = 1\ntopics = [");
        assert!(err.starts_with("not a topics table"), "{err}");
    }

    #[test]
    fn load_missing_is_empty_but_corrupt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TopicTable::load(dir.path()).unwrap(), TopicTable::new());
        assert_eq!(
            TopicTable::load(&dir.path().join("no-such-dir")).unwrap(),
            TopicTable::new()
        );

        let path = dir.path().join(TOPICS_FILE);
        std::fs::write(&path, "format_version = 1\nnext_generation = ").unwrap();
        let err = TopicTable::load(dir.path()).unwrap_err();
        assert!(matches!(err, TopicsFileError::Corrupt { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("is corrupt"), "{msg}");

        std::fs::write(&path, b"format_version = 1\xff\n").unwrap();
        let err = TopicTable::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");

        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            TopicTable::load(dir.path()),
            Err(TopicsFileError::Corrupt { .. })
        ));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table_with(&["orders", "%RETRY%group"]);
        t.save(dir.path()).unwrap();
        assert_eq!(TopicTable::load(dir.path()).unwrap(), t);
        t.delete("orders").unwrap();
        t.save(dir.path()).unwrap();
        assert_eq!(TopicTable::load(dir.path()).unwrap(), t);
        assert!(!dir.path().join("topics.toml.tmp").exists());

        let err = t.save(&dir.path().join("no-such-dir")).unwrap_err();
        assert!(matches!(err, TopicsFileError::Write { .. }), "{err}");
    }

    /// One operation of the property test, on a small pool of names (some invalid, one
    /// reserved) so that collisions and refusals are common.
    #[derive(Debug, Clone)]
    enum Op {
        Create(usize, u32, u32, u8),
        Update(usize, Option<u32>, Option<u32>, Option<u8>),
        Delete(usize),
        Auto(usize, bool),
    }

    const NAMES: [&str; 6] = ["a", "b", "orders", "%RETRY%g", "rmq_sys_x", "bad name"];

    fn queues() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), 1u32..=4, Just(QUEUES_MAX), Just(QUEUES_MAX + 1)]
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = 0..NAMES.len();
        prop_oneof![
            (name.clone(), queues(), queues(), 0u8..8)
                .prop_map(|(n, r, w, p)| Op::Create(n, r, w, p)),
            (
                name.clone(),
                proptest::option::of(queues()),
                proptest::option::of(queues()),
                proptest::option::of(0u8..8)
            )
                .prop_map(|(n, r, w, p)| Op::Update(n, r, w, p)),
            name.clone().prop_map(Op::Delete),
            (name, any::<bool>()).prop_map(|(n, on)| Op::Auto(n, on)),
        ]
    }

    fn apply(t: &mut TopicTable, op: &Op) -> Result<Option<u64>, TopicError> {
        let perm = |bits: u8| Perm::from_bits(bits).unwrap();
        match *op {
            Op::Create(n, r, w, p) => t
                .create(NAMES[n], r, w, perm(p))
                .map(|c| Some(c.generation)),
            Op::Update(n, r, w, p) => {
                let update = TopicUpdate {
                    read_queues: r,
                    write_queues: w,
                    perm: p.map(perm),
                };
                t.update(NAMES[n], update).map(|_| None)
            }
            Op::Delete(n) => t.delete(NAMES[n]).map(|_| None),
            Op::Auto(n, enabled) => {
                let policy = AutoCreate {
                    enabled,
                    ..AutoCreate::default()
                };
                let existed = t.get(NAMES[n]).is_some();
                let got = t.auto_create(NAMES[n], &policy)?;
                Ok(got.filter(|_| !existed).map(|c| c.generation))
            }
        }
    }

    proptest! {
        /// Any sequence of operations keeps names unique and sorted, hands out each generation
        /// once and in increasing order, leaves the table untouched when refused, and the
        /// final table survives a save and load unchanged.
        #[test]
        fn operations_keep_the_table_consistent(ops in proptest::collection::vec(op(), 0..40)) {
            let mut t = TopicTable::new();
            let mut issued: Vec<u64> = Vec::new();
            for op in &ops {
                let before = t.clone();
                match apply(&mut t, op) {
                    Err(_) => prop_assert_eq!(&t, &before),
                    Ok(Some(generation)) => {
                        prop_assert_eq!(generation, before.next_generation());
                        prop_assert_eq!(t.next_generation(), generation + 1);
                        prop_assert!(issued.last().is_none_or(|&last| generation > last));
                        issued.push(generation);
                        prop_assert!(t.data_version() > before.data_version());
                    }
                    Ok(None) => {
                        prop_assert_eq!(t.next_generation(), before.next_generation());
                        let changed = !t.list().eq(before.list());
                        let version = before.data_version() + u64::from(changed);
                        prop_assert_eq!(t.data_version(), version);
                    }
                }
                let names: Vec<_> = t.list().map(|c| c.name.clone()).collect();
                prop_assert!(names.windows(2).all(|w| w[0] < w[1]), "{:?}", names);
                let generations: BTreeSet<_> = t.list().map(|c| c.generation).collect();
                prop_assert_eq!(generations.len(), t.len());
                prop_assert!(t.list().all(|c| c.generation < t.next_generation()));
            }
            prop_assert_eq!(&TopicTable::from_toml(&t.to_toml().unwrap()).unwrap(), &t);
            let dir = tempfile::tempdir().unwrap();
            t.save(dir.path()).unwrap();
            prop_assert_eq!(&TopicTable::load(dir.path()).unwrap(), &t);
        }
    }
}
