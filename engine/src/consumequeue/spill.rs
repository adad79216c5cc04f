//! Keeping a shard's queue entries in memory bounded: once more than
//! `StoreConfig::queue_entries_in_memory_max` are in memory, the oldest full blocks of the
//! queues holding the most move to the cold file (`cold.rs`), and reads of them come back
//! from it, one 4 KiB block per 127 entries.

use std::cell::Cell;
use std::rc::Rc;

use super::cold::{self, ColdBlock, ColdFile, BLOCK_BYTES, BLOCK_ENTRIES};
use super::{ConsumeQueues, QueueEntry};
use crate::waiters::LocalEvent;

/// Entries a queue keeps in memory whatever the budget: where tailing readers read.
pub const KEEP_HOT: usize = BLOCK_ENTRIES;
/// Blocks one spill writes at most (one write of 256 KiB).
const SPILL_BLOCKS_MAX: usize = 64;

/// How many entries the shard holds in memory, against its budget.
#[derive(Default)]
pub struct HotCount {
    total: Cell<usize>,
    /// 0: no budget (everything stays in memory).
    max: usize,
    /// The spiller is woken when `total` passes this: the budget, or more after a round
    /// that could move nothing (every queue down to `KEEP_HOT`), so that it does not scan
    /// every queue again for each new entry.
    next_check: Cell<usize>,
    pub wake: LocalEvent,
}

impl HotCount {
    pub fn new(max: usize) -> Self {
        HotCount {
            max,
            next_check: Cell::new(max),
            ..HotCount::default()
        }
    }

    pub fn count(&self, n: usize) {
        self.total.set(self.total.get() + n);
        if self.max > 0 && self.total.get() > self.next_check.get() {
            self.wake.notify();
        }
    }

    /// After a spill: check again at the budget, or (if still over it) once `slack` more
    /// entries came in.
    fn rearm(&self) {
        let slack = if self.over() { self.max / 8 + 1 } else { 0 };
        self.next_check.set(self.max.max(self.total.get() + slack));
    }

    pub fn uncount(&self, n: usize) {
        debug_assert!(n <= self.total.get());
        self.total.set(self.total.get().saturating_sub(n));
    }

    pub fn total(&self) -> usize {
        self.total.get()
    }

    pub fn over(&self) -> bool {
        self.max > 0 && self.total.get() > self.max
    }

    /// Entries to move out to get back to three quarters of the budget.
    fn excess(&self) -> usize {
        self.total.get().saturating_sub(self.max / 4 * 3)
    }
}

/// One block chosen to move out: its queue and first offset, and its entries as encoded.
struct Move {
    topic: String,
    queue_id: u32,
    entries: Vec<QueueEntry>,
    block: ColdBlock,
}

impl ConsumeQueues {
    /// Moves blocks out until the shard is under three quarters of its budget (or nothing
    /// more can move); returns how many entries left memory.
    pub async fn spill(&self) -> std::io::Result<usize> {
        let Some(file) = self.cold.clone() else {
            return Ok(0);
        };
        let mut moved = 0;
        while self.hot.over() || (moved > 0 && self.hot.excess() > 0) {
            let n = self.spill_once(&file).await?;
            if n == 0 {
                break;
            }
            moved += n;
        }
        Ok(moved)
    }

    /// One write's worth of blocks from the queues holding the most entries in memory.
    async fn spill_once(&self, file: &Rc<ColdFile>) -> std::io::Result<usize> {
        let want_blocks = self
            .hot
            .excess()
            .div_ceil(BLOCK_ENTRIES)
            .min(SPILL_BLOCKS_MAX);
        let mut picks: Vec<(usize, String, u32)> = {
            let queues = self.queues.borrow();
            queues
                .iter()
                .flat_map(|(topic, qs)| qs.iter().map(move |(&id, q)| (topic, id, q)))
                .map(|(topic, id, q)| {
                    let blocks = q.entries.len().saturating_sub(KEEP_HOT) / BLOCK_ENTRIES;
                    (blocks, topic.clone(), id)
                })
                .filter(|(blocks, _, _)| *blocks > 0)
                .collect()
        };
        picks.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
        let mut moves = Vec::new();
        let sources = self.marks.borrow().len();
        {
            let queues = self.queues.borrow();
            for (blocks, topic, queue_id) in picks {
                let Some(q) = queues.get(&topic).and_then(|t| t.get(&queue_id)) else {
                    continue;
                };
                for b in 0..blocks.min(want_blocks - moves.len()) {
                    let at = b * BLOCK_ENTRIES;
                    let entries: Vec<QueueEntry> =
                        q.entries.range(at..at + BLOCK_ENTRIES).copied().collect();
                    let first = q.hot_start + at as u64;
                    moves.push(Move {
                        topic: topic.clone(),
                        queue_id,
                        block: ColdBlock::describe(first, 0, &entries, sources),
                        entries,
                    });
                }
                if moves.len() >= want_blocks {
                    break;
                }
            }
        }
        if moves.is_empty() {
            return Ok(0);
        }
        let pos = file.reserve(moves.len());
        let mut buf = vec![0u8; moves.len() * BLOCK_BYTES];
        for (i, (m, out)) in moves
            .iter_mut()
            .zip(buf.chunks_exact_mut(BLOCK_BYTES))
            .enumerate()
        {
            m.block.pos = pos + (i * BLOCK_BYTES) as u64;
            cold::encode_block(m.block.first, &m.entries, out);
        }
        file.write(pos, &buf).await?;
        // Meanwhile the queues went on: a block moves only if its entries are still the
        // oldest in memory (retention may have trimmed them, a delete dropped the queue).
        let mut moved = 0;
        let mut stale = Vec::new();
        {
            let mut queues = self.queues.borrow_mut();
            for m in moves {
                let q = queues
                    .get_mut(&m.topic)
                    .and_then(|t| t.get_mut(&m.queue_id));
                let fits = q.as_ref().is_some_and(|q| {
                    q.hot_start == m.block.first
                        && q.entries.len() >= BLOCK_ENTRIES
                        && q.entries.range(..BLOCK_ENTRIES).eq(m.entries.iter())
                });
                match q {
                    Some(q) if fits => {
                        q.entries.drain(..BLOCK_ENTRIES);
                        q.hot_start += BLOCK_ENTRIES as u64;
                        q.cold.push_back(m.block);
                        moved += BLOCK_ENTRIES;
                        // A queue that grew long keeps its capacity after draining: give
                        // the memory back once it is mostly unused.
                        let len = q.entries.len().max(BLOCK_ENTRIES);
                        if q.entries.capacity() > 4 * len {
                            q.entries.shrink_to(2 * len);
                        }
                    }
                    _ => stale.push(m.block.pos),
                }
            }
        }
        self.hot.uncount(moved);
        self.release_cold(stale);
        Ok(moved)
    }

    /// Punches out blocks nothing refers to any more.
    pub fn release_cold(&self, positions: Vec<u64>) {
        if positions.is_empty() {
            return;
        }
        if let Some(file) = self.cold.clone() {
            glommio::spawn_local(async move {
                for pos in positions {
                    file.release(pos).await;
                }
            })
            .detach();
        }
    }

    /// The entries of `(topic, queue)` from `offset` that are in the cold file, up to `max`
    /// of them (whole blocks), or `None` if `offset` is not in a cold block.
    pub async fn cold_entries(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
    ) -> Option<std::io::Result<Vec<(u64, QueueEntry)>>> {
        let blocks: Vec<ColdBlock> = {
            let queues = self.queues.borrow();
            let q = queues.get(topic).and_then(|t| t.get(&queue_id))?;
            if offset >= q.hot_start || offset < q.min {
                return None;
            }
            let first = q
                .cold
                .partition_point(|b| b.first <= offset)
                .checked_sub(1)?;
            q.cold
                .range(first..)
                .take(max.div_ceil(BLOCK_ENTRIES) + 1)
                .cloned()
                .collect()
        };
        let file = self.cold.clone()?;
        let mut out = Vec::new();
        // One block after another: a get needs one or two, unless a filter scans on.
        for b in blocks {
            // A block released meanwhile (retention) is refused: the caller trims and
            // answers from the new minimum.
            let entries = match file.read_block(&b).await {
                Ok(entries) => entries,
                Err(e) => return Some(Err(e)),
            };
            for (i, e) in entries.into_iter().enumerate() {
                let at = b.first + i as u64;
                if at >= offset {
                    out.push((at, e));
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Some(Ok(out))
    }

    /// The first cold offset whose store time is at or after `timestamp_ms`, if it is in
    /// the cold file (`None`: look in memory).
    pub async fn cold_offset_for_time(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> Option<u64> {
        let (block, next) = {
            let queues = self.queues.borrow();
            let q = queues.get(topic).and_then(|t| t.get(&queue_id))?;
            if q.cold.is_empty() || q.entries.front().is_some_and(|e| e.time_ms < timestamp_ms) {
                return None;
            }
            // The last block starting before the time holds the answer, or the next
            // block's (or memory's) first offset does.
            let i = q.cold.partition_point(|b| b.first_time_ms < timestamp_ms);
            match i.checked_sub(1) {
                None => return Some(q.min),
                Some(i) => (
                    q.cold[i].clone(),
                    q.cold.get(i + 1).map_or(q.hot_start, |b| b.first),
                ),
            }
        };
        let file = self.cold.clone()?;
        let entries = file.read_block(&block).await.ok()?;
        let idx = entries.partition_point(|e| e.time_ms < timestamp_ms);
        Some(if idx < entries.len() {
            block.first + idx as u64
        } else {
            next
        })
    }
}

/// Moves entries out whenever the shard goes over its budget.
pub async fn spiller(cqs: Rc<ConsumeQueues>) {
    loop {
        let generation = cqs.hot.wake.generation();
        if cqs.cq.stopped() {
            return;
        }
        if cqs.hot.over() {
            let result = cqs.spill().await;
            cqs.hot.rearm();
            if let Err(e) = result {
                // The entries stay in memory: nothing is lost, the budget is exceeded.
                tracing::error!(shard = cqs.shard, error = %e, "cannot move queue entries to the cold file; they stay in memory");
                glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        cqs.hot.wake.wait_past(generation).await;
    }
}
