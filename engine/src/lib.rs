//! # shardmq-engine
//!
//! ShardMQ's embeddable storage engine: a RocketMQ-style CommitLog split into per-core shards,
//! each owned by one glommio executor thread and appended with O_DIRECT writes through
//! io_uring. Puts are acknowledged after the write (ASYNC_FLUSH) or after a group-commit
//! fdatasync that covers them (SYNC_FLUSH); on open every shard recovers its log from its
//! checkpoint, cutting a torn tail.
//!
//! ```no_run
//! use shardmq_engine::{MessageInput, Store, StoreConfig};
//!
//! let store = Store::open(StoreConfig::new("/var/lib/shardmq"))?;
//! let put = store.put_message_blocking(MessageInput::new("orders", 0, "hello"))?;
//! let back = store.read_message_blocking(put.shard, put.offset)?;
//! assert_eq!(&back.body[..], b"hello");
//! futures_lite::future::block_on(store.shutdown())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `ARCHITECTURE.md` for the map and `docs/format.md` for the on-disk layouts.

mod catalog;
mod cleaner;
pub mod config;
pub mod consumequeue;
mod dispatch;
pub mod error;
pub mod filter;
pub mod io;
pub mod log;
pub mod meta;
pub mod msgid;
mod oneshot;
mod put;
pub mod record;
mod requests;
pub mod retention;
pub mod runtime;
pub mod schedule;
mod shard;
mod startup;
mod store;
pub mod topics;
pub mod waiters;

pub use config::{AsyncAck, FlushMode, ProbeHandle, StoreConfig};
pub use consumequeue::read::{GetRequest, GetResult, GetStatus, QueueMessage};
pub use error::{
    ConfigError, OpenError, PutError, ReadError, RecoveryError, ShutdownError, TopicAdminError,
};
pub use filter::TagFilter;
pub use io::FaultPlan;
pub use log::recovery::{CutReport, RecoveryReport};
pub use record::{MessageInput, StoredMessage};
pub use retention::{
    DiskUsage, FixedProbe, RetentionConfig, RetentionPlan, StatvfsProbe, UsageProbe,
};
pub use store::{PutFuture, PutResult, PutStatus, QueueMemory, Store, SHARD_REQUESTS_MAX};
pub use topics::{
    AutoCreate, Perm, TopicConfig, TopicError, TopicTable, TopicUpdate, TopicsFileError,
};
