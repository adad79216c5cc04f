//! The store's topic catalog: the one writer of the topic table and its file, and the
//! read-only snapshots shards check puts against.
//!
//! Shared metadata with one writer and read-only copies elsewhere (the lesson from Apache
//! Iggy in the design page): every change — an admin call from any thread, or an auto-create
//! from a put on any shard — takes the catalog's lock, changes a copy of the table, saves it
//! (`topics.toml`, atomically) and only then adopts it and publishes a new immutable
//! [`TopicSnapshot`]. A change that cannot be saved is not made. Shards keep the snapshot they
//! last saw ([`TopicView`]) and compare one atomic version counter per put; only when it moved
//! do they take the read lock to pick up the new snapshot.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::error::{PutError, TopicAdminError};
use crate::meta::FnvBuild;
use crate::topics::{AutoCreate, Perm, TopicConfig, TopicTable, TopicUpdate, TopicsFileError};

/// What a put needs to know about its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub write_queues: u32,
    pub read_queues: u32,
    pub perm: Perm,
    /// A delete of the topic is under way (or stalled): puts are refused.
    pub deleting: bool,
}

impl Route {
    fn of(config: &TopicConfig, deleting: bool) -> Route {
        Route {
            write_queues: config.write_queues,
            read_queues: config.read_queues,
            perm: config.perm,
            deleting,
        }
    }

    /// Whether a producer may append to `queue_id` of this topic.
    pub fn admit(&self, topic: &str, queue_id: u32) -> Result<(), PutError> {
        if self.deleting {
            return Err(PutError::TopicDeleting {
                topic: topic.to_owned(),
            });
        }
        if !self.perm.writable() {
            return Err(PutError::NoPermission {
                topic: topic.to_owned(),
                perm: self.perm,
            });
        }
        if queue_id >= self.write_queues {
            return Err(PutError::QueueIdOutOfRange {
                topic: topic.to_owned(),
                queue_id,
                write_queues: self.write_queues,
            });
        }
        Ok(())
    }
}

/// The table as shards see it: immutable, replaced whole on every change.
#[derive(Debug, Default)]
pub(crate) struct TopicSnapshot {
    version: u64,
    routes: HashMap<String, Route, FnvBuild>,
}

/// How far a topic's delete got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deleting {
    /// A `delete_topic` call is running its barrier.
    Running,
    /// A `delete_topic` call failed part way; the topic stays refused until a retry finishes.
    Stalled,
}

#[derive(Debug)]
struct State {
    table: TopicTable,
    /// Topics whose delete began and has not finished. They stay in the table (and file) until
    /// it finishes, but are hidden from listings and refuse puts, creates and updates.
    deleting: BTreeMap<String, Deleting>,
}

#[derive(Debug)]
pub(crate) struct Catalog {
    /// The store directory, which holds `topics.toml`.
    dir: PathBuf,
    policy: AutoCreate,
    state: Mutex<State>,
    published: RwLock<Arc<TopicSnapshot>>,
    /// The published snapshot's version: shards compare it per put (one atomic load).
    version: AtomicU64,
}

impl Catalog {
    /// A catalog over `table` (as loaded from `dir`), auto-creating topics by `policy`.
    pub fn new(dir: PathBuf, policy: AutoCreate, table: TopicTable) -> Catalog {
        let catalog = Catalog {
            dir,
            policy,
            state: Mutex::new(State {
                table,
                deleting: BTreeMap::new(),
            }),
            published: RwLock::default(),
            version: AtomicU64::new(0),
        };
        catalog.publish(&catalog.state());
        catalog
    }

    /// The writer's lock. Poisoning is ignored: the state is only replaced whole, after a
    /// successful save, so a panic elsewhere cannot leave it half changed.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the state as a new snapshot (called with the writer's lock held, so versions
    /// are published in order).
    fn publish(&self, state: &State) {
        let version = self.version.load(Ordering::Relaxed) + 1;
        let routes = state
            .table
            .list()
            .map(|c| {
                let deleting = state.deleting.contains_key(&c.name);
                (c.name.clone(), Route::of(c, deleting))
            })
            .collect();
        let snapshot = Arc::new(TopicSnapshot { version, routes });
        *self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
        self.version.store(version, Ordering::Release);
    }

    /// Saves `table`, then adopts and publishes it. On a save error nothing changes.
    fn commit(&self, state: &mut State, table: TopicTable) -> Result<(), TopicsFileError> {
        table.save(&self.dir)?;
        state.table = table;
        self.publish(state);
        Ok(())
    }

    fn refuse_deleting(state: &State, name: &str) -> Result<(), TopicAdminError> {
        match state.deleting.contains_key(name) {
            true => Err(TopicAdminError::Deleting {
                name: name.to_owned(),
            }),
            false => Ok(()),
        }
    }

    pub fn create(
        &self,
        name: &str,
        read_queues: u32,
        write_queues: u32,
        perm: Perm,
    ) -> Result<TopicConfig, TopicAdminError> {
        let mut state = self.state();
        Self::refuse_deleting(&state, name)?;
        let mut table = state.table.clone();
        let created = table.create(name, read_queues, write_queues, perm)?.clone();
        self.commit(&mut state, table)?;
        Ok(created)
    }

    pub fn update(&self, name: &str, update: TopicUpdate) -> Result<TopicConfig, TopicAdminError> {
        let mut state = self.state();
        Self::refuse_deleting(&state, name)?;
        let mut table = state.table.clone();
        let updated = table.update(name, update)?.clone();
        if table.data_version() != state.table.data_version() {
            self.commit(&mut state, table)?;
        }
        Ok(updated)
    }

    /// A topic, unless it does not exist or is being deleted.
    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        let state = self.state();
        if state.deleting.contains_key(name) {
            return None;
        }
        state.table.get(name).cloned()
    }

    /// Every topic not being deleted, sorted by name.
    pub fn list(&self) -> Vec<TopicConfig> {
        let state = self.state();
        state
            .table
            .list()
            .filter(|c| !state.deleting.contains_key(&c.name))
            .cloned()
            .collect()
    }

    /// Every topic in the table, those being deleted included (for open's check of
    /// interrupted deletes).
    pub fn all(&self) -> Vec<TopicConfig> {
        self.state().table.list().cloned().collect()
    }

    /// Starts deleting a topic: from now on puts to it are refused and it is hidden. Returns
    /// its config. A delete that stalled earlier may be started again.
    pub fn begin_delete(&self, name: &str) -> Result<TopicConfig, TopicAdminError> {
        let mut state = self.state();
        if state.deleting.get(name) == Some(&Deleting::Running) {
            return Err(TopicAdminError::Deleting {
                name: name.to_owned(),
            });
        }
        let config =
            state
                .table
                .get(name)
                .cloned()
                .ok_or_else(|| crate::topics::TopicError::NotFound {
                    name: name.to_owned(),
                })?;
        state.deleting.insert(name.to_owned(), Deleting::Running);
        self.publish(&state);
        Ok(config)
    }

    /// The barrier failed part way: the topic stays refused until a retry finishes.
    pub fn stall_delete(&self, name: &str) {
        let mut state = self.state();
        state.deleting.insert(name.to_owned(), Deleting::Stalled);
        self.publish(&state);
    }

    /// Every shard dropped the topic: removes it from the table and the file. If the file
    /// cannot be written the delete stalls (the topic stays refused; a retry saves it).
    pub fn finish_delete(&self, name: &str) -> Result<TopicConfig, TopicAdminError> {
        let mut state = self.state();
        let mut table = state.table.clone();
        let removed = match table.delete(name) {
            Ok(removed) => removed,
            Err(e) => {
                state.deleting.remove(name);
                self.publish(&state);
                return Err(e.into());
            }
        };
        if let Err(e) = table.save(&self.dir) {
            state.deleting.insert(name.to_owned(), Deleting::Stalled);
            self.publish(&state);
            return Err(e.into());
        }
        state.table = table;
        state.deleting.remove(name);
        self.publish(&state);
        Ok(removed)
    }

    /// The route of a topic a producer sends to, creating the topic by the auto-create policy
    /// if it does not exist. Creating saves the table: a put that creates a topic blocks its
    /// shard for one small-file fsync, once per topic (RocketMQ also persists the new topic
    /// before the send goes on).
    pub fn auto_create(&self, name: &str) -> Result<Route, PutError> {
        let mut state = self.state();
        if let Some(config) = state.table.get(name) {
            return Ok(Route::of(config, state.deleting.contains_key(name)));
        }
        if !self.policy.enabled {
            return Err(PutError::TopicNotExist {
                topic: name.to_owned(),
            });
        }
        let refused = |reason: String| PutError::TopicNotCreated {
            topic: name.to_owned(),
            reason,
        };
        let mut table = state.table.clone();
        let route = match table.auto_create(name, &self.policy) {
            Ok(Some(config)) => Route::of(config, false),
            Ok(None) => return Err(refused("auto-create is disabled".into())),
            Err(e) => return Err(refused(e.to_string())),
        };
        self.commit(&mut state, table)
            .map_err(|e| refused(e.to_string()))?;
        tracing::info!(
            topic = name,
            queues = route.write_queues,
            "auto-created topic"
        );
        Ok(route)
    }

    fn snapshot(&self) -> Arc<TopicSnapshot> {
        self.published
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A shard's view of the catalog: the snapshot it last saw, refreshed when the version moves.
#[derive(Debug)]
pub(crate) struct TopicView {
    catalog: Arc<Catalog>,
    seen: RefCell<Arc<TopicSnapshot>>,
}

impl TopicView {
    pub fn new(catalog: Arc<Catalog>) -> TopicView {
        let seen = RefCell::new(catalog.snapshot());
        TopicView { catalog, seen }
    }

    /// Picks up the published snapshot if it changed: one atomic load when it did not.
    fn refresh(&self) {
        let version = self.catalog.version.load(Ordering::Acquire);
        if self.seen.borrow().version != version {
            *self.seen.borrow_mut() = self.catalog.snapshot();
        }
    }

    /// Checks that a producer may append to `(topic, queue_id)`, auto-creating the topic by
    /// the store's policy if it does not exist.
    pub fn admit(&self, topic: &str, queue_id: u32) -> Result<(), PutError> {
        self.refresh();
        let known = self.seen.borrow().routes.get(topic).copied();
        let route = match known {
            Some(route) => route,
            None => self.catalog.auto_create(topic)?,
        };
        route.admit(topic, queue_id)
    }

    /// Whether `topic` exists (and is not being deleted), from the snapshot: no lock.
    pub fn exists(&self, topic: &str) -> bool {
        self.refresh();
        self.seen
            .borrow()
            .routes
            .get(topic)
            .is_some_and(|r| !r.deleting)
    }

    /// Checks that a consumer may read `(topic, queue_id)`: the topic is readable and the
    /// queue within its read queues. A topic the table does not know is not checked here
    /// (its queues do not exist, and the read says so).
    pub fn admit_read(&self, topic: &str, queue_id: u32) -> Result<(), ReadRefused> {
        self.refresh();
        let Some(route) = self.seen.borrow().routes.get(topic).copied() else {
            return Ok(());
        };
        if !route.perm.readable() {
            return Err(ReadRefused::NoPermission(route.perm));
        }
        if queue_id >= route.read_queues {
            return Err(ReadRefused::QueueIdOutOfRange(route.read_queues));
        }
        Ok(())
    }
}

/// Why a read of a topic is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadRefused {
    NoPermission(Perm),
    QueueIdOutOfRange(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(dir: &std::path::Path, policy: AutoCreate) -> Arc<Catalog> {
        Arc::new(Catalog::new(dir.to_owned(), policy, TopicTable::new()))
    }

    #[test]
    fn views_see_changes_and_auto_create_saves() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(dir.path(), AutoCreate::default());
        let view = TopicView::new(c.clone());
        view.admit("auto", 7).unwrap();
        assert_eq!(
            view.admit("auto", 8),
            Err(PutError::QueueIdOutOfRange {
                topic: "auto".into(),
                queue_id: 8,
                write_queues: 8
            })
        );
        assert_eq!(TopicTable::load(dir.path()).unwrap().len(), 1);
        c.update(
            "auto",
            TopicUpdate {
                perm: Some(Perm::READ),
                ..TopicUpdate::default()
            },
        )
        .unwrap();
        assert!(matches!(
            view.admit("auto", 0),
            Err(PutError::NoPermission { .. })
        ));
        assert!(matches!(
            view.admit("bad name", 0),
            Err(PutError::TopicNotCreated { .. })
        ));
    }

    #[test]
    fn a_topic_being_deleted_refuses_puts_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let off = AutoCreate {
            enabled: false,
            ..AutoCreate::default()
        };
        let c = catalog(dir.path(), off);
        let view = TopicView::new(c.clone());
        assert!(matches!(
            view.admit("t", 0),
            Err(PutError::TopicNotExist { .. })
        ));
        let created = c.create("t", 2, 2, Perm::READ_WRITE).unwrap();
        view.admit("t", 1).unwrap();
        assert_eq!(c.begin_delete("t").unwrap(), created);
        assert!(matches!(
            c.begin_delete("t"),
            Err(TopicAdminError::Deleting { .. })
        ));
        assert!(matches!(
            view.admit("t", 0),
            Err(PutError::TopicDeleting { .. })
        ));
        assert!(matches!(
            c.create("t", 1, 1, Perm::READ_WRITE),
            Err(TopicAdminError::Deleting { .. })
        ));
        assert_eq!(c.get("t"), None);
        assert!(c.list().is_empty());
        assert_eq!(c.all().len(), 1);
        c.stall_delete("t");
        c.begin_delete("t").unwrap();
        c.finish_delete("t").unwrap();
        assert!(TopicTable::load(dir.path()).unwrap().is_empty());
        let again = c.create("t", 1, 1, Perm::READ_WRITE).unwrap();
        assert!(again.generation > created.generation);
        view.admit("t", 0).unwrap();
    }
}
