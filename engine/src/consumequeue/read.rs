//! Reading queues back (RocketMQ's `getMessage`): entries from the owner's memory, bodies
//! from any shard's CommitLog segments with DMA reads, CRC-checked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{ConsumeQueues, QueueEntry};
use crate::error::ReadError;
use crate::filter::TagFilter;
use crate::io::SegmentFile;
use crate::log::{Log, LogShared};
use crate::record::{self, decode, DecodeError, Entry, StoredMessage};

/// Entries examined at most per read when a filter rejects them (RocketMQ's
/// `maxFilterMessageCount` of 16 000 bytes of 20-byte entries).
pub const FILTER_SCAN_ENTRIES_MAX: u64 = 800;
/// Body reads one `get` keeps in flight at once.
const READS_IN_FLIGHT_MAX: usize = 64;
/// Open read handles to other shards' segments kept per shard.
const READ_HANDLES_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    Found,
    /// The queue exists but holds no message yet.
    NoNewMsg,
    /// Messages were examined but none matched the filter; read on from `next_begin_offset`.
    NoMatchedMsg,
    OffsetTooSmall,
    /// The offset is the queue's max: nothing new yet (a pull parks here).
    OffsetOverflowOne,
    OffsetOverflowBadly,
    NoMatchedLogicQueue,
}

#[derive(Debug, Clone)]
pub struct GetRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub max_messages: u32,
    pub max_bytes: u32,
    pub filter: TagFilter,
}

#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub queue_offset: u64,
    pub msg_id: String,
    pub message: StoredMessage,
}

#[derive(Debug, Clone)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<QueueMessage>,
    pub next_begin_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// Reads CommitLog records of any shard from this shard's executor.
pub struct ClReader {
    pub own: Rc<Log>,
    pub store_path: PathBuf,
    pub segment_bytes: u64,
    pub record_max: u64,
    pub store_host: SocketAddr,
    pub shared: Arc<Vec<Arc<LogShared>>>,
    files: RefCell<HashMap<(usize, u64), Rc<SegmentFile>>>,
}

impl ClReader {
    pub fn new(
        own: Rc<Log>,
        store_path: PathBuf,
        segment_bytes: u64,
        record_max: u64,
        store_host: SocketAddr,
        shared: Arc<Vec<Arc<LogShared>>>,
    ) -> Self {
        ClReader {
            own,
            store_path,
            segment_bytes,
            record_max,
            store_host,
            shared,
            files: RefCell::default(),
        }
    }

    async fn file(&self, shard: usize, base: u64) -> std::io::Result<Rc<SegmentFile>> {
        if let Some(f) = self.files.borrow().get(&(shard, base)) {
            return Ok(f.clone());
        }
        let path = self
            .store_path
            .join("commitlog")
            .join(shard.to_string())
            .join(crate::log::segment::segment_name(base));
        let file = glommio::io::DmaFile::open(&path)
            .await
            .map_err(|e| std::io::Error::other(format!("open {}: {e}", path.display())))?;
        let file = Rc::new(SegmentFile::new(file, path, None));
        let mut files = self.files.borrow_mut();
        if files.len() >= READ_HANDLES_MAX {
            files.clear();
        }
        files.insert((shard, base), file.clone());
        Ok(file)
    }

    /// Closes the read handles (see `Log::close_files`).
    pub async fn close_files(&self) {
        let files = std::mem::take(&mut *self.files.borrow_mut());
        SegmentFile::close_all(files.into_values()).await;
    }

    /// The record at `(shard, offset)`, which must be below that shard's written offset.
    pub async fn read(
        &self,
        shard: usize,
        offset: u64,
        size: Option<u32>,
    ) -> Result<StoredMessage, ReadError> {
        let log = self
            .shared
            .get(shard)
            .ok_or(ReadError::NoSuchShard(shard))?;
        let min = log.min.load(Ordering::Acquire);
        if offset < min {
            return Err(ReadError::OffsetTooSmall { shard, offset, min });
        }
        let readable = log.written.load(Ordering::Acquire);
        if offset >= readable {
            return Err(ReadError::OffsetOutOfRange {
                shard,
                offset,
                readable,
            });
        }
        if let Some(bytes) = size.and_then(|s| self.shared[shard].tail.get(offset, s as u64)) {
            return match decode(&bytes, offset, bytes.len() as u64) {
                Ok(Entry::Message(m)) => Ok(m),
                Ok(Entry::Blank { .. }) => Err(ReadError::BadRecord {
                    shard,
                    offset,
                    reason: DecodeError::Malformed("blank marker"),
                }),
                Err(reason) => Err(ReadError::BadRecord {
                    shard,
                    offset,
                    reason,
                }),
            };
        }
        let left = self.segment_bytes - offset % self.segment_bytes;
        let io = |e: std::io::Error| ReadError::Io {
            shard,
            offset,
            reason: e.to_string(),
        };
        let bad = |reason| ReadError::BadRecord {
            shard,
            offset,
            reason,
        };
        let read = |len: u64| async move {
            if shard == self.own.shard() {
                self.own.read_bytes(offset, len as usize).await
            } else {
                let base = offset - offset % self.segment_bytes;
                self.file(shard, base)
                    .await?
                    .read_bytes(offset - base, len as usize)
                    .await
            }
        };
        let first = read(size.map_or(4096, |s| s as u64).min(left))
            .await
            .map_err(io)?;
        let total = record::peek_size(&first).ok_or(bad(DecodeError::Malformed("short read")))?;
        if total as u64 > left || total as u64 > self.record_max {
            return Err(bad(DecodeError::BadSize(total)));
        }
        let bytes = if total as usize <= first.len() {
            first.slice(..total as usize)
        } else {
            read(total as u64).await.map_err(io)?
        };
        match decode(&bytes, offset, left) {
            Ok(Entry::Message(m)) => Ok(m),
            Ok(Entry::Blank { .. }) => Err(bad(DecodeError::Malformed("blank marker"))),
            Err(e) => Err(bad(e)),
        }
    }
}

impl ConsumeQueues {
    /// RocketMQ's getMessage on a queue this shard owns.
    pub async fn get(&self, reader: &ClReader, req: &GetRequest) -> Result<GetResult, ReadError> {
        // Entries whose CommitLog segment retention deleted go first: the answer is then
        // OFFSET_TOO_SMALL with the new minimum, not a failed read.
        self.trim_queue(&req.topic, req.queue_id, &reader.shared);
        let (min, max, candidates, examined) = {
            let queues = self.queues.borrow();
            let Some(q) = queues
                .get(req.topic.as_str())
                .and_then(|t| t.get(&req.queue_id))
            else {
                return Ok(empty(GetStatus::NoMatchedLogicQueue, 0, 0, 0));
            };
            let (min, max) = (q.min, q.visible());
            if max == min && min == 0 {
                return Ok(empty(GetStatus::NoNewMsg, 0, min, max));
            }
            if req.offset < min {
                return Ok(empty(GetStatus::OffsetTooSmall, min, min, max));
            }
            if req.offset == max {
                return Ok(empty(GetStatus::OffsetOverflowOne, req.offset, min, max));
            }
            if req.offset > max {
                return Ok(empty(GetStatus::OffsetOverflowBadly, max, min, max));
            }
            let want = req.max_messages.max(1) as usize;
            let mut candidates: Vec<(u64, QueueEntry)> = Vec::new();
            let mut at = req.offset;
            while at < max
                && candidates.len() < want
                && at - req.offset < FILTER_SCAN_ENTRIES_MAX.max(want as u64)
            {
                let found = q.entry(at);
                if let Some(e) =
                    found.filter(|e| !e.is_skip() && req.filter.matches_hash(e.tag_hash))
                {
                    candidates.push((at, *e));
                }
                at += 1;
            }
            (min, max, candidates, at)
        };
        // Entries within the byte budget (at least one), their bodies read concurrently.
        let mut take = Vec::new();
        let mut bytes = 0u64;
        let mut next = examined;
        for (queue_offset, e) in candidates {
            if !take.is_empty() && bytes + e.size as u64 > req.max_bytes as u64 {
                next = queue_offset;
                break;
            }
            bytes += e.size as u64;
            take.push((queue_offset, e));
        }
        let mut messages = Vec::with_capacity(take.len());
        for group in take.chunks(READS_IN_FLIGHT_MAX) {
            let reads = group
                .iter()
                .map(|(_, e)| Box::pin(reader.read(e.source as usize, e.cl_offset, Some(e.size))))
                .collect();
            for ((queue_offset, e), read) in group.iter().zip(JoinAll::new(reads).await) {
                let message = read?;
                if !req.filter.matches_tags(message.tags()) {
                    continue;
                }
                let msg_id =
                    crate::msgid::encode(reader.store_host, e.source as usize, e.cl_offset);
                messages.push(QueueMessage {
                    queue_offset: *queue_offset,
                    msg_id,
                    message,
                });
            }
        }
        let status = if messages.is_empty() {
            GetStatus::NoMatchedMsg
        } else {
            GetStatus::Found
        };
        Ok(GetResult {
            status,
            messages,
            next_begin_offset: next,
            min_offset: min,
            max_offset: max,
        })
    }

    /// (min, max visible) offsets of a queue, if it exists.
    pub fn offsets(&self, topic: &str, queue_id: u32) -> Option<(u64, u64)> {
        self.queues
            .borrow()
            .get(topic)
            .and_then(|t| t.get(&queue_id))
            .map(|q| (q.min, q.visible()))
    }

    /// The first offset whose store time is at or after `timestamp_ms` (the max offset if none).
    pub fn offset_for_time(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Option<u64> {
        let queues = self.queues.borrow();
        let q = queues.get(topic).and_then(|t| t.get(&queue_id))?;
        // Store times grow along a queue up to the interleaving of different source shards
        // (milliseconds): a binary search, like RocketMQ's lookup by time.
        let visible = (q.visible() - q.min) as usize;
        let idx = q
            .entries
            .partition_point(|e| e.time_ms < timestamp_ms)
            .min(visible);
        Some(q.min + idx as u64)
    }
}

fn empty(status: GetStatus, next: u64, min: u64, max: u64) -> GetResult {
    GetResult {
        status,
        messages: Vec::new(),
        next_begin_offset: next,
        min_offset: min,
        max_offset: max,
    }
}

/// Polls futures of one type together and yields their outputs in order.
struct JoinAll<F: Future> {
    pending: Vec<Option<Pin<Box<F>>>>,
    done: Vec<Option<F::Output>>,
}

impl<F: Future> JoinAll<F> {
    fn new(futures: Vec<Pin<Box<F>>>) -> Self {
        let done = futures.iter().map(|_| None).collect();
        JoinAll {
            pending: futures.into_iter().map(Some).collect(),
            done,
        }
    }
}

impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut all = true;
        for (slot, out) in this.pending.iter_mut().zip(this.done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => all = false,
                }
            }
        }
        if !all {
            return Poll::Pending;
        }
        Poll::Ready(this.done.iter_mut().filter_map(Option::take).collect())
    }
}
