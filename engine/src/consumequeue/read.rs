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

use bytes::Bytes;

use super::inflight::ReadsInFlight;
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
/// Largest block the read cache reads at once (smaller if segments are not a multiple).
const READ_BLOCK_BYTES_MAX: u64 = 1 << 20;
/// Open read handles to other shards' segments kept per shard.
const READ_HANDLES_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    Found,
    /// The queue exists but holds no message yet.
    NoNewMsg,
    /// Messages were examined but none matched the filter; read on from `next_begin_offset`.
    NoMatchedMsg,
    /// The offset is below the queue's minimum, or the records from it on were deleted by
    /// retention: read on from `next_begin_offset` (the minimum, or the first live entry).
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
    blocks: RefCell<BlockCache>,
    /// Blocks being read for the cache: a get never reads one another get is reading.
    reading: ReadsInFlight,
}

impl ClReader {
    pub fn new(
        own: Rc<Log>,
        store_path: PathBuf,
        segment_bytes: u64,
        record_max: u64,
        store_host: SocketAddr,
        shared: Arc<Vec<Arc<LogShared>>>,
        read_cache_bytes: usize,
    ) -> Self {
        ClReader {
            own,
            store_path,
            segment_bytes,
            record_max,
            store_host,
            shared,
            files: RefCell::default(),
            blocks: RefCell::new(BlockCache::new(
                read_block_bytes(segment_bytes),
                read_cache_bytes,
            )),
            reading: ReadsInFlight::default(),
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

    /// `len` bytes of shard `shard`'s CommitLog from `offset`, within one segment.
    async fn read_range(&self, shard: usize, offset: u64, len: usize) -> std::io::Result<Bytes> {
        if shard == self.own.shard() {
            self.own.read_bytes(offset, len).await
        } else {
            let base = offset - offset % self.segment_bytes;
            self.file(shard, base)
                .await?
                .read_bytes(offset - base, len)
                .await
        }
    }

    /// The records at `(shard, offset, size)`, in the order asked. Records not in the tail
    /// cache come from the read cache: aligned CommitLog blocks read whole, shared by every
    /// reader on this shard. Queues interleave in the log, so one block holds records of
    /// many queues, and readers of those queues lagging by about as much read it once.
    pub async fn read_many(
        &self,
        wants: &[(usize, u64, u32)],
    ) -> Vec<Result<StoredMessage, ReadError>> {
        let block = self.blocks.borrow().block_bytes;
        let mut out: Vec<Option<Result<StoredMessage, ReadError>>> = Vec::new();
        // Per record: the tail cache was asked (and missed).
        let mut tail_missed = vec![false; wants.len()];
        // Records to take from blocks, and the blocks missing from the cache.
        let mut from_blocks = Vec::new();
        let mut missing: Vec<(usize, u64, u64)> = Vec::new();
        for &(shard, offset, size) in wants {
            // Out of range (or unknown shard): `read` gives the precise error below.
            let Some(log) = self.shared.get(shard).filter(|log| {
                offset >= log.min.load(Ordering::Acquire)
                    && offset < log.written.load(Ordering::Acquire)
                    && size > 0
            }) else {
                out.push(None);
                continue;
            };
            if let Some(bytes) = log.tail.get(offset, size as u64) {
                out.push(Some(self.decode_at(shard, offset, &bytes)));
                continue;
            }
            tail_missed[out.len()] = true;
            out.push(None);
            // With the read cache off, or for a record across a block boundary (rare:
            // records are small against a block), the record is read alone.
            if block == 0 {
                continue;
            }
            let start = offset - offset % block;
            let end = offset + size as u64;
            if end > start + block {
                continue;
            }
            from_blocks.push(out.len() - 1);
            let cached = self.blocks.borrow_mut().get(shard, start, end).is_some();
            if !cached && !missing.iter().any(|&(s, b, _)| s == shard && b == start) {
                let written = log.written.load(Ordering::Acquire);
                missing.push((shard, start, (start + block).min(written)));
            }
        }
        // Blocks another get is reading already are waited for, not read again.
        let mut mine = Vec::with_capacity(missing.len());
        let mut others = Vec::new();
        for (shard, start, end) in missing {
            match self.reading.claim((shard, start)) {
                Ok(claim) => mine.push((shard, start, end, claim)),
                Err(done) => others.push(done),
            }
        }
        while !mine.is_empty() {
            let group: Vec<_> = mine.drain(..mine.len().min(READS_IN_FLIGHT_MAX)).collect();
            let reads = group
                .iter()
                .map(|&(shard, start, end, _)| {
                    Box::pin(self.read_range(shard, start, (end - start) as usize))
                })
                .collect();
            for ((shard, start, _, claim), read) in group.into_iter().zip(JoinAll::new(reads).await)
            {
                if let Ok(bytes) = read {
                    self.blocks.borrow_mut().insert(shard, start, bytes);
                }
                // Those waiting for the block find it in the cache (or, if the read failed,
                // read their records alone below).
                drop(claim);
            }
        }
        for done in others {
            done.wait().await;
        }
        for i in from_blocks {
            let (shard, offset, size) = wants[i];
            let start = offset - offset % block;
            let bytes = self
                .blocks
                .borrow_mut()
                .get(shard, start, offset + size as u64);
            if let Some(bytes) = bytes {
                let from = (offset - start) as usize;
                let record = bytes.slice(from..from + size as usize);
                if let Ok(m) = self.decode_at(shard, offset, &record) {
                    out[i] = Some(Ok(m));
                }
            }
        }
        // What the caches could not give (a failed read, a record that did not decode, a
        // segment deleted meanwhile) is read alone, for its own precise error.
        let mut results = Vec::with_capacity(out.len());
        for (i, slot) in out.into_iter().enumerate() {
            let (shard, offset, size) = wants[i];
            results.push(match slot {
                Some(r) => r,
                None => {
                    self.read_with(shard, offset, Some(size), !tail_missed[i])
                        .await
                }
            });
        }
        results
    }

    /// Decodes a record held in memory (`bytes` starts at `offset`).
    fn decode_at(
        &self,
        shard: usize,
        offset: u64,
        bytes: &Bytes,
    ) -> Result<StoredMessage, ReadError> {
        let bad = |reason| ReadError::BadRecord {
            shard,
            offset,
            reason,
        };
        match decode(bytes, offset, bytes.len() as u64) {
            Ok(Entry::Message(m)) => Ok(m),
            Ok(Entry::Blank { .. }) => Err(bad(DecodeError::Malformed("blank marker"))),
            Err(reason) => Err(bad(reason)),
        }
    }

    /// The record at `(shard, offset)`, which must be below that shard's written offset.
    pub async fn read(
        &self,
        shard: usize,
        offset: u64,
        size: Option<u32>,
    ) -> Result<StoredMessage, ReadError> {
        self.read_with(shard, offset, size, true).await
    }

    /// `read`, trying the tail cache first only if `tail` (a caller that already missed it
    /// does not look, or count a miss, twice).
    async fn read_with(
        &self,
        shard: usize,
        offset: u64,
        size: Option<u32>,
        tail: bool,
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
        let cached = size
            .filter(|_| tail)
            .and_then(|s| self.shared[shard].tail.get(offset, s as u64));
        if let Some(bytes) = cached {
            return self.decode_at(shard, offset, &bytes);
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
        let read = |len: u64| self.read_range(shard, offset, len as usize);
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
        let want = req.max_messages.max(1) as usize;
        let scan = FILTER_SCAN_ENTRIES_MAX.max(want as u64) as usize;
        // Entries moved out of memory come back from the cold file, a block at a time: as
        // many as the get can return, or (through a tag filter) as it may examine.
        let cold_max = match req.filter {
            TagFilter::All => want,
            TagFilter::Tags(_) => scan,
        };
        let cold = self
            .cold_entries(&req.topic, req.queue_id, req.offset, cold_max)
            .await;
        let cold = match cold {
            None => None,
            Some(Ok(entries)) => Some(entries),
            Some(Err(e)) => {
                // Retention may have released the block meanwhile: then the offset is
                // below the new minimum.
                self.trim_queue(&req.topic, req.queue_id, &reader.shared);
                match self.offsets(&req.topic, req.queue_id) {
                    Some((min, max)) if req.offset < min => {
                        return Ok(empty(GetStatus::OffsetTooSmall, min, min, max));
                    }
                    _ => {
                        return Err(ReadError::Io {
                            shard: self.shard,
                            offset: req.offset,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        };
        // Retention drops cold blocks whole; entries at the front of the first one whose
        // records it deleted are found here, and the queue's minimum moves past them.
        let min_of = |s: u16| {
            reader
                .shared
                .get(s as usize)
                .map_or(0, |l| l.min.load(Ordering::Acquire))
        };
        let gone = |e: &QueueEntry| !e.is_skip() && e.cl_offset < min_of(e.source);
        if let Some(entries) = &cold {
            if entries.first().is_some_and(|(_, e)| gone(e)) {
                let lead = entries
                    .iter()
                    .take_while(|(_, e)| e.is_skip() || gone(e))
                    .count();
                let new_min = entries
                    .get(lead)
                    .map_or_else(|| entries[lead - 1].0 + 1, |(o, _)| *o);
                let mut queues = self.queues.borrow_mut();
                if let Some(q) = queues
                    .get_mut(req.topic.as_str())
                    .and_then(|t| t.get_mut(&req.queue_id))
                {
                    if q.min < new_min && new_min <= q.hot_start {
                        q.min = new_min;
                    }
                    if req.offset < q.min {
                        return Ok(empty(GetStatus::OffsetTooSmall, q.min, q.min, q.visible()));
                    }
                }
            }
        }
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
            let mut candidates: Vec<(u64, QueueEntry)> = Vec::new();
            let mut at = req.offset;
            let mut cold = cold.into_iter().flatten().peekable();
            // A queue holds records of every source shard, and retention deletes each
            // shard's oldest segments on its own: an entry past the queue's minimum may
            // point at a record that is gone (the minimum stops at the first live entry).
            // Gone entries at the start are stepped over and answered OFFSET_TOO_SMALL with
            // the first live offset after them; one after live entries ends the answer.
            let mut stepped_over_gone = false;
            while at < max && candidates.len() < want && at - req.offset < scan as u64 {
                // Not in memory nor in what was read from the cold file: the next get goes on
                // from here.
                let Some(found) = entry_at(q, &mut cold, at) else {
                    break;
                };
                if let Some(e) = found.filter(|e| !e.is_skip()) {
                    if gone(&e) {
                        if !candidates.is_empty() {
                            break;
                        }
                        stepped_over_gone = true;
                    } else if stepped_over_gone {
                        break;
                    } else if req.filter.matches_hash(e.tag_hash) {
                        candidates.push((at, e));
                    }
                }
                at += 1;
            }
            if stepped_over_gone {
                return Ok(empty(GetStatus::OffsetTooSmall, at, min, max));
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
        let wants: Vec<_> = take
            .iter()
            .map(|(_, e)| (e.source as usize, e.cl_offset, e.size))
            .collect();
        let reads = reader.read_many(&wants).await;
        for ((queue_offset, e), read) in take.iter().zip(reads) {
            let message = match read {
                Ok(m) => m,
                // Retention deleted the record since its entry was looked at: answer what
                // came before it; a get at it steps over it (see above).
                Err(ReadError::OffsetTooSmall { .. }) => {
                    if messages.is_empty() {
                        return Ok(empty(GetStatus::OffsetTooSmall, *queue_offset, min, max));
                    }
                    next = *queue_offset;
                    break;
                }
                Err(e) => return Err(e),
            };
            if !req.filter.matches_tags(message.tags()) {
                continue;
            }
            let msg_id = crate::msgid::encode(reader.store_host, e.source as usize, e.cl_offset);
            messages.push(QueueMessage {
                queue_offset: *queue_offset,
                msg_id,
                message,
            });
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

    /// The first offset in memory whose store time is at or after `timestamp_ms` (the max
    /// offset if none); `cold_offset_for_time` looks in the cold file first.
    /// The times of up to `max` entries of a queue from `from` (skips left out), with the
    /// queue's visible end: what the schedule service waits on, without reading a body.
    pub async fn entry_times(
        &self,
        topic: &str,
        queue_id: u32,
        from: u64,
        max: usize,
    ) -> (Vec<(u64, i64)>, u64) {
        let cold = match self.cold_entries(topic, queue_id, from, max).await {
            Some(Ok(entries)) => entries,
            _ => Vec::new(),
        };
        let queues = self.queues.borrow();
        let Some(q) = queues.get(topic).and_then(|t| t.get(&queue_id)) else {
            return (Vec::new(), 0);
        };
        let end = q.visible();
        let mut out = Vec::new();
        let mut cold = cold.into_iter().peekable();
        let mut at = from.max(q.min);
        while at < end && out.len() < max {
            let Some(found) = entry_at(q, &mut cold, at) else {
                break;
            };
            if let Some(e) = found.filter(|e| !e.is_skip()) {
                out.push((at, e.time_ms));
            }
            at += 1;
        }
        (out, end)
    }

    pub fn offset_for_time(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Option<u64> {
        let queues = self.queues.borrow();
        let q = queues.get(topic).and_then(|t| t.get(&queue_id))?;
        // Store times grow along a queue up to the interleaving of different source shards
        // (milliseconds): a binary search, like RocketMQ's lookup by time.
        let idx = q.entries.partition_point(|e| e.time_ms < timestamp_ms);
        Some(q.hot_start + idx as u64)
    }
}

/// The read cache's block: the largest power of two up to `READ_BLOCK_BYTES_MAX` that divides
/// the segment size (so no block spans two segments).
/// The entry at `at` of queue `q`: from the cold entries read for this walk (taken in order)
/// or from memory. `None` when it is in neither — a cold entry past the blocks that were
/// read — and the walk stops there.
fn entry_at(
    q: &super::Queue,
    cold: &mut std::iter::Peekable<impl Iterator<Item = (u64, QueueEntry)>>,
    at: u64,
) -> Option<Option<QueueEntry>> {
    let found = match cold.peek() {
        Some(&(o, e)) if o == at => {
            cold.next();
            Some(e)
        }
        _ => q.entry(at).copied(),
    };
    if found.is_none() && at < q.hot_start {
        return None;
    }
    Some(found)
}

fn read_block_bytes(segment_bytes: u64) -> u64 {
    let mut block = READ_BLOCK_BYTES_MAX;
    while block > 1 && segment_bytes % block != 0 {
        block >>= 1;
    }
    block
}

/// CommitLog blocks read from the device, least recently used evicted first. A cached block
/// may be shorter than `block_bytes` (it was read up to the written end); it serves the
/// records it holds whole.
struct BlockCache {
    block_bytes: u64,
    capacity: usize,
    bytes: usize,
    tick: u64,
    blocks: HashMap<(usize, u64), (Bytes, u64)>,
}

impl BlockCache {
    fn new(block_bytes: u64, capacity: usize) -> Self {
        BlockCache {
            block_bytes: if capacity == 0 { 0 } else { block_bytes },
            capacity,
            bytes: 0,
            tick: 0,
            blocks: HashMap::new(),
        }
    }

    /// The block at `start` if it holds everything up to `end`.
    fn get(&mut self, shard: usize, start: u64, end: u64) -> Option<Bytes> {
        self.tick += 1;
        let (bytes, used) = self.blocks.get_mut(&(shard, start))?;
        if start + (bytes.len() as u64) < end {
            return None;
        }
        *used = self.tick;
        Some(bytes.clone())
    }

    fn insert(&mut self, shard: usize, start: u64, bytes: Bytes) {
        if bytes.len() > self.capacity {
            return;
        }
        self.tick += 1;
        self.bytes += bytes.len();
        if let Some((old, _)) = self.blocks.insert((shard, start), (bytes, self.tick)) {
            self.bytes -= old.len();
        }
        while self.bytes > self.capacity {
            let Some(oldest) = self
                .blocks
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((gone, _)) = self.blocks.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_blocks_never_span_two_segments() {
        assert_eq!(read_block_bytes(1 << 30), 1 << 20);
        assert_eq!(read_block_bytes(3 << 20), 1 << 20);
        assert_eq!(read_block_bytes(64 << 10), 64 << 10);
        assert_eq!(read_block_bytes(12 << 10), 4 << 10);
    }

    #[test]
    fn the_block_cache_serves_whole_records_and_evicts_the_least_recently_used() {
        let mut cache = BlockCache::new(4, 8);
        cache.insert(0, 0, Bytes::from_static(b"abcd"));
        cache.insert(1, 0, Bytes::from_static(b"ef"));
        assert_eq!(cache.get(0, 0, 4).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(
            cache.get(1, 0, 3),
            None,
            "a short block cannot serve past its end"
        );
        // Shard 1's block is now the least recently used: it goes first.
        cache.insert(0, 4, Bytes::from_static(b"ghij"));
        assert_eq!(cache.get(1, 0, 2), None);
        assert!(cache.get(0, 0, 4).is_some() && cache.get(0, 4, 8).is_some());
        assert!(cache.bytes <= cache.capacity);
    }

    #[test]
    fn a_disabled_block_cache_keeps_nothing() {
        let mut cache = BlockCache::new(1 << 20, 0);
        assert_eq!(cache.block_bytes, 0);
        cache.insert(0, 0, Bytes::from_static(b"abcd"));
        assert_eq!(cache.get(0, 0, 1), None);
    }
}
