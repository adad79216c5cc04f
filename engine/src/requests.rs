//! What other threads ask a shard (the request loop in `startup.rs` serves them), and which
//! shard the calling thread runs: below both the loop and the `Store` facade that sends them.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::consumequeue::read::{GetRequest, GetResult};
use crate::dispatch::{DropTopic, Sink};
use crate::error::ReadError;
use crate::record::StoredMessage;
use crate::shard::{Puts, Shard};

/// Work run on a shard's thread (`Store::spawn_on`).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// What other threads ask a shard.
pub(crate) enum Request {
    Put(Puts, Sink),
    Read(usize, u64, flume::Sender<Result<StoredMessage, ReadError>>),
    Get(GetRequest, flume::Sender<Result<GetResult, ReadError>>),
    Offsets(String, u32, flume::Sender<Option<(u64, u64)>>),
    OffsetForTime(String, u32, i64, flume::Sender<Option<u64>>),
    Times(
        String,
        u32,
        u64,
        usize,
        flume::Sender<(Vec<(u64, i64)>, u64)>,
    ),
    Wait(String, u32, u64, Duration, flume::Sender<bool>),
    Run(Job),
    /// A delete's first step: answered with the shard's CommitLog end once everything
    /// appended before is flushed and dispatched.
    DispatchAccepted(flume::Sender<Result<u64, String>>),
    /// A delete's second step, for the shard as an owner.
    DropTopic(DropTopic),
    /// The `(topic, generation)` of every delete recorded in the shard's ConsumeQueue log.
    DeletedTopics(flume::Sender<Vec<(String, u64)>>),
    ShutdownSources(flume::Sender<Result<(), String>>),
    ShutdownOwner(flume::Sender<Result<(), String>>),
}

thread_local! {
    /// The shard this thread runs, if it is a shard thread: (store id, shard).
    static LOCAL_SHARD: RefCell<Option<(u64, Rc<Shard>)>> = const { RefCell::new(None) };
}

pub(crate) fn set_local_shard(shard: Option<(u64, Rc<Shard>)>) {
    LOCAL_SHARD.with(|l| *l.borrow_mut() = shard);
}

pub(crate) fn local_shard(store: u64) -> Option<Rc<Shard>> {
    LOCAL_SHARD.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(id, _)| *id == store)
            .map(|(_, s)| s.clone())
    })
}
