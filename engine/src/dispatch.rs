//! Dispatch records: what a source shard tells the owner of a `(topic, queue)` about a record
//! it appended, so that the owner assigns its queue offset and appends its ConsumeQueue entry.
//! They travel over one flume channel per destination (FIFO per source), in batches that also
//! carry a watermark: every record of the source below `upto` owned by the destination was in
//! this or an earlier batch.
//!
//! A put's reply travels with its records: the owner finishes it once the entry is
//! acknowledged (durable under SYNC_FLUSH). A batch put whose records go to several owners is
//! collected in a [`Collector`] and answered when its last part is done.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::PutError;
use crate::oneshot;
use crate::store::{PutResult, PutStatus};

#[derive(Debug)]
pub struct DispatchRecord {
    pub topic: String,
    pub queue_id: u32,
    pub source: u16,
    pub cl_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub store_timestamp_ms: i64,
    /// When a SYNC_FLUSH put stops waiting and answers FLUSH_DISK_TIMEOUT.
    pub deadline: Option<Instant>,
    /// `None` for records re-dispatched by recovery, or whose put was already answered.
    pub reply: Option<ReplyPart>,
}

#[derive(Debug)]
pub struct DispatchBatch {
    pub source: u16,
    pub upto: u64,
    pub records: Vec<DispatchRecord>,
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

#[derive(Debug)]
struct State {
    results: Vec<PutResult>,
    remaining: usize,
    error: Option<PutError>,
    sink: Option<Sink>,
}

/// Gathers the parts of one put call.
#[derive(Debug)]
pub struct Collector {
    state: Mutex<State>,
}

/// One record's share of a put's answer: the whole answer for a single-message put (no
/// collector needed), else a part of a collector.
#[derive(Debug)]
pub enum ReplyPart {
    Single(PutResult, oneshot::Sender<Result<PutResult, PutError>>),
    Part {
        collector: Arc<Collector>,
        index: usize,
    },
}

impl Collector {
    /// Splits the answer to a put of `results.len()` records into one part per record.
    pub fn split(results: Vec<PutResult>, sink: Sink) -> Vec<ReplyPart> {
        let n = results.len();
        let collector = Arc::new(Collector {
            state: Mutex::new(State {
                results,
                remaining: n,
                error: None,
                sink: Some(sink),
            }),
        });
        (0..n)
            .map(|index| ReplyPart::Part {
                collector: collector.clone(),
                index,
            })
            .collect()
    }
}

impl ReplyPart {
    /// This record is done: stored with `status` (and its queue offset, when assigned), or
    /// failed. The put is answered when all its records are done; any failure fails it.
    pub fn complete(self, outcome: Result<(PutStatus, Option<u64>), PutError>) {
        let (collector, index) = match self {
            ReplyPart::Single(mut r, tx) => {
                return tx.send(outcome.map(|(status, queue_offset)| {
                    r.status = status;
                    r.queue_offset = queue_offset;
                    r
                }));
            }
            ReplyPart::Part { collector, index } => (collector, index),
        };
        let Ok(mut state) = collector.state.lock() else {
            return;
        };
        match outcome {
            Ok((status, queue_offset)) => {
                let r = &mut state.results[index];
                r.status = status;
                r.queue_offset = queue_offset;
            }
            Err(e) => {
                state.error.get_or_insert(e);
            }
        }
        state.remaining -= 1;
        if state.remaining > 0 {
            return;
        }
        let Some(sink) = state.sink.take() else {
            return;
        };
        let results = std::mem::take(&mut state.results);
        match (state.error.take(), sink) {
            (Some(e), sink) => sink.fail(e),
            (None, Sink::One(tx)) => {
                tx.send(results.into_iter().next().ok_or(PutError::ShuttingDown))
            }
            (None, Sink::Batch(tx)) => tx.send(Ok(results)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(offset: u64) -> PutResult {
        PutResult {
            status: PutStatus::PutOk,
            shard: 0,
            offset,
            size: 10,
            store_timestamp_ms: 0,
            queue_offset: None,
        }
    }

    #[test]
    fn batch_answers_after_last_part_in_order() {
        let (tx, rx) = oneshot::channel();
        let parts = Collector::split(vec![result(0), result(10), result(20)], Sink::Batch(tx));
        let mut parts = parts.into_iter().rev();
        parts
            .next()
            .unwrap()
            .complete(Ok((PutStatus::PutOk, Some(7))));
        parts
            .next()
            .unwrap()
            .complete(Ok((PutStatus::FlushDiskTimeout, None)));
        let mut rx = Box::pin(rx);
        let early = futures_lite::future::block_on(futures_lite::future::poll_once(rx.as_mut()));
        assert!(early.is_none(), "not before the last part");
        parts
            .next()
            .unwrap()
            .complete(Ok((PutStatus::PutOk, Some(3))));
        let got = futures_lite::future::block_on(rx).unwrap().unwrap();
        assert_eq!(
            got.iter().map(|r| r.queue_offset).collect::<Vec<_>>(),
            vec![Some(3), None, Some(7)]
        );
        assert_eq!(got[1].status, PutStatus::FlushDiskTimeout);
    }

    #[test]
    fn any_failure_fails_the_put() {
        let (tx, rx) = oneshot::channel();
        let mut parts = Collector::split(vec![result(0), result(10)], Sink::Batch(tx)).into_iter();
        parts.next().unwrap().complete(Err(PutError::ShuttingDown));
        parts
            .next()
            .unwrap()
            .complete(Ok((PutStatus::PutOk, Some(1))));
        assert_eq!(
            futures_lite::future::block_on(rx),
            Some(Err(PutError::ShuttingDown))
        );
    }
}
