//! What source shards and queue owners say to each other, over one flume channel per owner
//! (FIFO per source):
//!
//! - [`Reserve`] (on a channel of its own): before appending, a source asks the owner of each `(topic, queue)`
//!   for the next offsets of that queue. The offset goes into the CommitLog record, so the
//!   flush that makes the record durable makes its queue offset durable too (one fdatasync
//!   per acknowledgement, and recovery rebuilds every queue from the CommitLog alone).
//! - [`Intake::Dispatch`]: once records are written (ASYNC_FLUSH) or flushed (SYNC_FLUSH) the
//!   source sends their [`DispatchRecord`]s; the owner fills the reserved slots and appends
//!   ConsumeQueue entries as each queue's reserved prefix fills in. A batch also carries a
//!   watermark: every record of the source below `upto` owned by the owner was in this or an
//!   earlier batch.
//! - [`Intake::Abandon`]: reserved offsets whose records will never be dispatched (the source
//!   failed); the owner turns them into skip entries so the queue does not stall.
//! - [`Intake::DropTopic`]: a topic's delete, queued behind every batch the sources sent
//!   before it (see `Store::delete_topic`).
//!
//! Puts are answered by their source, not by the owner: see [`Reply`].

use std::sync::Arc;
use std::time::Instant;

use crate::error::PutError;
use crate::oneshot;
use crate::put::{PutResult, PutStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRecord {
    /// Shared with every other record of the topic from this source (no allocation per record).
    pub topic: Arc<str>,
    pub queue_id: u32,
    /// Reserved before the append; stored in the record.
    pub queue_offset: u64,
    pub source: u16,
    pub cl_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub store_timestamp_ms: i64,
}

#[derive(Debug)]
pub struct DispatchBatch {
    pub source: u16,
    pub upto: u64,
    pub records: Vec<DispatchRecord>,
}

/// `count` consecutive offsets of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub topic: String,
    pub queue_id: u32,
    pub count: u32,
}

/// A reserved offset given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
}

#[derive(Debug)]
pub enum Intake {
    Dispatch(DispatchBatch),
    Abandon(Vec<Slot>),
    DropTopic(DropTopic),
}

/// The owner's part of a topic's delete. Sent once every source has dispatched everything it
/// appended before the delete began, on the same channel as their batches, so the owner
/// handles it after all of them.
#[derive(Debug)]
pub struct DropTopic {
    pub topic: String,
    /// The incarnation being deleted (recorded in the ConsumeQueue log).
    pub generation: u64,
    /// Per source: its CommitLog end when it finished dispatching for the delete (and flushed
    /// up to). The topic's records below it are the deleted incarnation's; the topic's later
    /// records (a new incarnation) lie above it.
    pub upto: Vec<u64>,
    /// Answered once the "topic deleted" records are flushed.
    pub reply: flume::Sender<Result<(), String>>,
}

/// A reservation, answered with the first offset of each run, in order. Reservations travel
/// on their own channel, answered by their own task: a source waits for the answer before it
/// can append, so it must not queue behind dispatch batches.
#[derive(Debug)]
pub struct Reserve {
    pub runs: Vec<Run>,
    pub reply: oneshot::Sender<Vec<u64>>,
}

/// What an owner receives on.
#[derive(Debug, Clone)]
pub struct OwnerInbox {
    pub intake: flume::Receiver<Intake>,
    pub reserve: flume::Receiver<Reserve>,
}

/// How a source reaches one owner.
#[derive(Debug, Clone)]
pub struct OwnerLink {
    pub intake: flume::Sender<Intake>,
    pub reserve: flume::Sender<Reserve>,
}

/// Appends consecutive messages of one queue to a run list (a batch to one queue costs one run).
pub fn push_run(runs: &mut Vec<Run>, topic: &str, queue_id: u32) -> (usize, u32) {
    let n = runs.len();
    if let Some(last) = runs.last_mut() {
        if last.queue_id == queue_id && last.topic == topic {
            last.count += 1;
            return (n - 1, last.count - 1);
        }
    }
    runs.push(Run {
        topic: topic.to_owned(),
        queue_id,
        count: 1,
    });
    (runs.len() - 1, 0)
}

/// Where a put's answer goes.
#[derive(Debug)]
pub enum Sink {
    One(oneshot::Sender<Result<PutResult, PutError>>),
    Batch(oneshot::Sender<Result<Vec<PutResult>, PutError>>),
}

impl Sink {
    pub fn fail(self, e: PutError) {
        // A caller that stopped waiting dropped its receiver; nothing to tell it.
        match self {
            Sink::One(tx) => tx.send(Err(e)),
            Sink::Batch(tx) => tx.send(Err(e)),
        }
    }
}

/// A put's answer, held by its source with the put's last record: a put's records are
/// contiguous in the CommitLog, so the flush (or write) that covers the last covers them all.
#[derive(Debug)]
pub enum Reply {
    One {
        result: PutResult,
        tx: oneshot::Sender<Result<PutResult, PutError>>,
        /// SYNC_FLUSH: when the put stops waiting and answers FLUSH_DISK_TIMEOUT.
        deadline: Option<Instant>,
    },
    Many {
        results: Vec<PutResult>,
        tx: oneshot::Sender<Result<Vec<PutResult>, PutError>>,
        deadline: Option<Instant>,
    },
}

impl Reply {
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Reply::One { deadline, .. } | Reply::Many { deadline, .. } => *deadline,
        }
    }

    pub fn complete(self, status: PutStatus) {
        match self {
            Reply::One { mut result, tx, .. } => {
                result.status = status;
                tx.send(Ok(result));
            }
            Reply::Many {
                mut results, tx, ..
            } => {
                for r in &mut results {
                    r.status = status;
                }
                tx.send(Ok(results));
            }
        }
    }

    pub fn fail(self, e: PutError) {
        match self {
            Reply::One { tx, .. } => tx.send(Err(e)),
            Reply::Many { tx, .. } => tx.send(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_messages_of_a_queue_share_a_run() {
        let mut runs = Vec::new();
        assert_eq!(push_run(&mut runs, "a", 1), (0, 0));
        assert_eq!(push_run(&mut runs, "a", 1), (0, 1));
        assert_eq!(push_run(&mut runs, "a", 2), (1, 0));
        assert_eq!(push_run(&mut runs, "b", 2), (2, 0));
        assert_eq!(push_run(&mut runs, "a", 1), (3, 0));
        let counts: Vec<u32> = runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![2, 1, 1, 1]);
    }

    #[test]
    fn reply_sets_the_status_of_every_result() {
        let result = |offset| PutResult {
            status: PutStatus::PutOk,
            shard: 0,
            offset,
            size: 10,
            store_timestamp_ms: 0,
            queue_offset: Some(offset),
        };
        let (tx, rx) = oneshot::channel();
        Reply::Many {
            results: vec![result(0), result(10)],
            tx,
            deadline: None,
        }
        .complete(PutStatus::FlushDiskTimeout);
        let got = futures_lite::future::block_on(rx).unwrap().unwrap();
        assert!(got.iter().all(|r| r.status == PutStatus::FlushDiskTimeout));
        assert_eq!(got[1].queue_offset, Some(10));
    }
}
