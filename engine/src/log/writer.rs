//! The write planner: turns appended records into aligned O_DIRECT writes. Pure bookkeeping
//! (no I/O), generic over the buffer type so tests can drive it with `Vec<u8>`.
//!
//! Records are copied into *chunks*: block-aligned buffers of `chunk_bytes` that never span a
//! segment. A full chunk goes to the device as one write, handed over without a copy. When the
//! device would otherwise sit idle (no write in flight), the partly filled active chunk is
//! written too — a copy of its blocks from the first one not yet final up to the block holding
//! the last byte. That last block is the *tail block*: it is rewritten with more bytes later, so
//! at most one write touching it may be in flight (io_uring completes out of order, and an
//! older tail write landing after a newer one would erase acknowledged bytes).
//!
//! `written` is the contiguous prefix of the log whose writes have all completed.

use std::collections::{BTreeMap, VecDeque};

use crate::record::{encode_blank, BLANK_LEN_MIN};

/// A buffer a chunk can live in.
pub trait ChunkBuf {
    fn bytes_mut(&mut self) -> &mut [u8];
    fn trim(&mut self, len: usize);
}

impl ChunkBuf for Vec<u8> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn trim(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl ChunkBuf for glommio::io::DmaBuffer {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
    fn trim(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

struct Chunk<B> {
    id: u64,
    /// Global log offset of the chunk's first byte (block aligned).
    start: u64,
    buf: B,
    /// Length `buf` was allocated with.
    capacity: usize,
    /// Bytes of records (and blank marker) in the chunk.
    fill: usize,
    /// Blocks below this (chunk-relative, aligned) went out with their final content.
    final_upto: usize,
    /// `fill` when the last partial write was planned.
    planned_fill: usize,
    /// A write covering the tail block is in flight.
    tail_in_flight: bool,
    /// No more appends: the chunk is full or its segment is closed by a blank marker.
    sealed: bool,
    /// Log offset the chunk's data reaches once written (the segment end after a blank).
    logical_end: u64,
}

/// One write to submit: `buf` goes to `segment_base`'s file at `file_pos`.
#[derive(Debug)]
pub struct WriteOp<B> {
    pub id: u64,
    pub segment_base: u64,
    pub file_pos: u64,
    pub buf: B,
    /// Log offset the log is whole up to once this write (and all before it) completed.
    pub data_end: u64,
}

struct InFlight {
    start: u64,
    data_end: u64,
    tail_chunk: Option<u64>,
}

pub struct WritePlanner<B> {
    block: usize,
    segment_bytes: u64,
    chunk_bytes: usize,
    alloc: Box<dyn Fn(usize) -> B>,
    chunks: VecDeque<Chunk<B>>,
    next_chunk_id: u64,
    next_write_id: u64,
    append_offset: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Completed writes not yet joined to the prefix: start → data end.
    completed: BTreeMap<u64, u64>,
    written: u64,
    /// Segment of the last planned write: a write to the next one waits for all in flight.
    last_segment: Option<u64>,
    scratch: Vec<u8>,
}

impl<B: ChunkBuf> WritePlanner<B> {
    /// A planner whose log continues at `offset` (all bytes below it already on disk).
    /// `tail` holds the bytes of the block containing `offset` that precede it.
    pub fn new(
        offset: u64,
        tail: &[u8],
        block: usize,
        segment_bytes: u64,
        chunk_bytes: usize,
        alloc: Box<dyn Fn(usize) -> B>,
    ) -> Self {
        assert!(block.is_power_of_two() && chunk_bytes % block == 0);
        assert!(segment_bytes % block as u64 == 0);
        assert_eq!(
            tail.len() as u64,
            offset % block as u64,
            "tail must reach the offset"
        );
        let mut planner = WritePlanner {
            block,
            segment_bytes,
            chunk_bytes,
            alloc,
            chunks: VecDeque::new(),
            next_chunk_id: 0,
            next_write_id: 0,
            append_offset: offset,
            in_flight: BTreeMap::new(),
            completed: BTreeMap::new(),
            written: offset,
            last_segment: None,
            scratch: Vec::new(),
        };
        if !tail.is_empty() {
            let chunk = planner.open_chunk(offset - tail.len() as u64);
            chunk.buf.bytes_mut()[..tail.len()].copy_from_slice(tail);
            chunk.fill = tail.len();
            chunk.planned_fill = tail.len();
        }
        planner
    }

    pub fn append_offset(&self) -> u64 {
        self.append_offset
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Bytes appended but not yet written.
    pub fn pending_bytes(&self) -> u64 {
        self.append_offset - self.written
    }

    pub fn segment_base(&self, offset: u64) -> u64 {
        offset - offset % self.segment_bytes
    }

    /// Where a record of `len` bytes would go, closing the current segment first if it does
    /// not fit. The segment end is either filled exactly or leaves room for a blank marker.
    fn place(&mut self, len: u64) -> u64 {
        debug_assert!(len <= self.segment_bytes, "record larger than a segment");
        let seg_end = self.segment_base(self.append_offset) + self.segment_bytes;
        let left = seg_end - self.append_offset;
        debug_assert!(left == self.segment_bytes || left >= BLANK_LEN_MIN);
        if len == left || len + BLANK_LEN_MIN <= left {
            return self.append_offset;
        }
        let mut marker = [0u8; BLANK_LEN_MIN as usize];
        encode_blank(left as u32, &mut marker);
        self.copy_in(&marker);
        let chunk = self.chunks.back_mut().expect("copy_in opened a chunk");
        chunk.sealed = true;
        chunk.logical_end = seg_end;
        self.append_offset = seg_end;
        seg_end
    }

    /// Appends a record of `len` bytes; `encode` fills it given its offset. Returns the offset.
    pub fn append(&mut self, len: usize, encode: impl FnOnce(u64, &mut [u8])) -> u64 {
        let offset = self.place(len as u64);
        let room = self.active_room();
        if room >= len {
            let chunk = self.chunks.back_mut().expect("active_room opened a chunk");
            let at = chunk.fill;
            encode(offset, &mut chunk.buf.bytes_mut()[at..at + len]);
            self.advance_fill(len);
        } else {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.resize(len, 0);
            encode(offset, &mut scratch);
            self.copy_in(&scratch);
            self.scratch = scratch;
        }
        offset
    }

    /// Room left in the active chunk, opening one if needed.
    fn active_room(&mut self) -> usize {
        let needs_new = match self.chunks.back() {
            Some(c) => c.sealed,
            None => true,
        };
        if needs_new {
            let start = self.append_offset - self.append_offset % self.block as u64;
            debug_assert_eq!(start, self.append_offset, "a new chunk starts on a block");
            self.open_chunk(start);
        }
        let c = self.chunks.back().expect("opened above");
        c.capacity - c.fill
    }

    fn open_chunk(&mut self, start: u64) -> &mut Chunk<B> {
        let seg_end = self.segment_base(start) + self.segment_bytes;
        let cap = self.chunk_bytes.min((seg_end - start) as usize);
        let id = self.next_chunk_id;
        self.next_chunk_id += 1;
        self.chunks.push_back(Chunk {
            id,
            start,
            buf: (self.alloc)(cap),
            capacity: cap,
            fill: 0,
            final_upto: 0,
            planned_fill: 0,
            tail_in_flight: false,
            sealed: false,
            logical_end: start,
        });
        self.chunks.back_mut().expect("just pushed")
    }

    fn advance_fill(&mut self, n: usize) {
        let chunk = self.chunks.back_mut().expect("active chunk");
        chunk.fill += n;
        chunk.logical_end = chunk.start + chunk.fill as u64;
        if chunk.fill == chunk.capacity {
            chunk.sealed = true;
        }
        self.append_offset += n as u64;
    }

    fn copy_in(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.active_room();
            let n = room.min(bytes.len());
            let chunk = self.chunks.back_mut().expect("active chunk");
            let at = chunk.fill;
            chunk.buf.bytes_mut()[at..at + n].copy_from_slice(&bytes[..n]);
            // `advance_fill` moves `append_offset`; `place` resets it after a blank marker.
            self.advance_fill(n);
            bytes = &bytes[n..];
        }
    }

    /// The next write to submit, if one may go now (see the module docs for the rules).
    pub fn next_write(&mut self, in_flight_max: usize) -> Option<WriteOp<B>> {
        if self.in_flight.len() >= in_flight_max {
            return None;
        }
        let idle = self.in_flight.is_empty();
        let block = self.block;
        let segment_bytes = self.segment_bytes;
        let last_segment = self.last_segment;
        let chunk = self.chunks.front_mut()?;
        if chunk.tail_in_flight {
            return None;
        }
        let segment = chunk.start - chunk.start % segment_bytes;
        if last_segment.is_some_and(|s| s != segment) && !idle {
            // Segment roll: the old segment's writes all complete first (see `writer_loop`).
            return None;
        }
        let end = chunk.fill.next_multiple_of(block);
        let from = chunk.final_upto;
        let (buf, tail_chunk) = if chunk.sealed {
            let mut chunk = self.chunks.pop_front().expect("front exists");
            chunk.buf.bytes_mut()[chunk.fill..end].fill(0);
            let buf = if from == 0 {
                let mut buf = chunk.buf;
                buf.trim(end);
                buf
            } else {
                let mut buf = (self.alloc)(end - from);
                buf.bytes_mut()
                    .copy_from_slice(&chunk.buf.bytes_mut()[from..end]);
                buf
            };
            return Some(self.launch(chunk.start + from as u64, buf, chunk.logical_end, None));
        } else {
            if chunk.fill == chunk.planned_fill || !idle {
                return None;
            }
            chunk.buf.bytes_mut()[chunk.fill..end].fill(0);
            let mut buf = (self.alloc)(end - from);
            buf.bytes_mut()
                .copy_from_slice(&chunk.buf.bytes_mut()[from..end]);
            chunk.planned_fill = chunk.fill;
            chunk.final_upto = chunk.fill - chunk.fill % block;
            let partial = chunk.fill % block != 0;
            chunk.tail_in_flight = partial;
            (buf, partial.then_some(chunk.id))
        };
        let chunk = self.chunks.front().expect("front exists");
        let (start, data_end) = (chunk.start + from as u64, chunk.logical_end);
        Some(self.launch(start, buf, data_end, tail_chunk))
    }

    fn launch(&mut self, start: u64, buf: B, data_end: u64, tail_chunk: Option<u64>) -> WriteOp<B> {
        debug_assert_eq!(start % self.block as u64, 0);
        debug_assert!(data_end > start);
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.in_flight.insert(
            id,
            InFlight {
                start,
                data_end,
                tail_chunk,
            },
        );
        let segment_base = self.segment_base(start);
        self.last_segment = Some(segment_base);
        WriteOp {
            id,
            segment_base,
            file_pos: start - segment_base,
            buf,
            data_end,
        }
    }

    /// Records that write `id` completed; returns the new `written` offset.
    pub fn complete(&mut self, id: u64) -> u64 {
        let Some(w) = self.in_flight.remove(&id) else {
            debug_assert!(false, "unknown write {id}");
            return self.written;
        };
        if let Some(chunk_id) = w.tail_chunk {
            if let Some(c) = self.chunks.iter_mut().find(|c| c.id == chunk_id) {
                c.tail_in_flight = false;
            }
        }
        let e = self.completed.entry(w.start).or_insert(w.data_end);
        *e = (*e).max(w.data_end);
        while let Some((&start, &end)) = self.completed.first_key_value() {
            if start > self.written {
                break;
            }
            self.completed.pop_first();
            self.written = self.written.max(end);
        }
        debug_assert!(self.written <= self.append_offset);
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{decode, Entry};
    use bytes::Bytes;
    use proptest::prelude::*;

    const BLOCK: usize = 512;

    fn planner(offset: u64, tail: &[u8], seg: u64, chunk: usize) -> WritePlanner<Vec<u8>> {
        WritePlanner::new(offset, tail, BLOCK, seg, chunk, Box::new(|n| vec![0xEE; n]))
    }

    /// A disk model: applies writes in any order the test picks, like io_uring may.
    struct Disk {
        seg: u64,
        files: BTreeMap<u64, Vec<u8>>,
    }

    impl Disk {
        fn apply(&mut self, op: &WriteOp<Vec<u8>>) {
            let f = self
                .files
                .entry(op.segment_base)
                .or_insert_with(|| vec![0; self.seg as usize]);
            let at = op.file_pos as usize;
            f[at..at + op.buf.len()].copy_from_slice(&op.buf);
        }
        fn byte(&self, offset: u64) -> u8 {
            let base = offset - offset % self.seg;
            self.files
                .get(&base)
                .map_or(0, |f| f[(offset - base) as usize])
        }
    }

    fn record(_len: usize, tag: u8) -> impl FnOnce(u64, &mut [u8]) {
        move |offset, out| {
            out.fill(tag);
            out[..8].copy_from_slice(&offset.to_le_bytes());
        }
    }

    proptest! {
        /// Whatever the append sizes and completion order, `written` only covers bytes that
        /// are on the model disk exactly as appended, and a drained planner leaves the whole
        /// log there.
        #[test]
        fn written_prefix_is_always_on_disk(
            sizes in proptest::collection::vec(16usize..3000, 1..60),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..200),
            start_block in 0u64..3,
            start_pad in 0usize..BLOCK,
        ) {
            let seg = 8 * 1024;
            let start = start_block * BLOCK as u64 + start_pad as u64;
            let tail = vec![0x77u8; start_pad];
            let mut p = planner(start, &tail, seg, 2048);
            let mut disk = Disk { seg, files: BTreeMap::new() };
            for at in 0..start_pad {
                let off = start_block * BLOCK as u64 + at as u64;
                let f = disk.files.entry(0).or_insert_with(|| vec![0; seg as usize]);
                f[off as usize] = 0x77;
            }
            let mut expect: Vec<(u64, usize, u8)> = Vec::new();
            let mut pending: Vec<WriteOp<Vec<u8>>> = Vec::new();
            let mut picks = picks.into_iter();
            for (i, &len) in sizes.iter().enumerate() {
                let tag = (i % 250) as u8 + 1;
                let off = p.append(len, record(len, tag));
                expect.push((off, len, tag));
                while let Some(op) = p.next_write(4) { pending.push(op); }
                if let Some(pick) = picks.next() {
                    if !pending.is_empty() {
                        let op = pending.remove(pick.index(pending.len()));
                        disk.apply(&op);
                        let written = p.complete(op.id);
                        for &(o, l, t) in &expect {
                            if o + l as u64 <= written {
                                prop_assert_eq!(disk.byte(o + 8), t);
                                prop_assert_eq!(disk.byte(o + l as u64 - 1), t);
                            }
                        }
                    }
                }
            }
            // Drain in LIFO order (worst case for reordering).
            loop {
                while let Some(op) = p.next_write(4) { pending.push(op); }
                let Some(op) = pending.pop() else { break };
                disk.apply(&op);
                p.complete(op.id);
            }
            prop_assert_eq!(p.written(), p.append_offset());
            for &(o, l, t) in &expect {
                let mut got = Vec::new();
                for b in 0..8 { got.push(disk.byte(o + b)); }
                prop_assert_eq!(u64::from_le_bytes(got.try_into().unwrap()), o);
                prop_assert_eq!(disk.byte(o + l as u64 - 1), t);
            }
        }
    }

    #[test]
    fn no_two_writes_in_flight_touch_the_tail_block() {
        let mut p = planner(0, &[], 1 << 20, 4096);
        p.append(100, record(100, 1));
        let w1 = p.next_write(8).unwrap();
        p.append(100, record(100, 2));
        assert!(p.next_write(8).is_none(), "tail block still in flight");
        p.complete(w1.id);
        let w2 = p.next_write(8).unwrap();
        assert_eq!(
            w2.file_pos, 0,
            "the tail block is rewritten with both records"
        );
        assert_eq!(p.complete(w2.id), 200);
    }

    #[test]
    fn full_chunks_pipeline_and_go_without_copy() {
        let mut p = planner(0, &[], 1 << 20, 1024);
        for i in 0..8 {
            p.append(512, record(512, i));
        }
        let ops: Vec<_> = std::iter::from_fn(|| p.next_write(8)).collect();
        assert_eq!(ops.len(), 4, "four full chunks in flight at once");
        for op in ops.iter().rev() {
            p.complete(op.id);
        }
        assert_eq!(p.written(), 4096);
    }

    #[test]
    fn segment_roll_at_exact_boundary_and_with_blank() {
        let seg = 4096u64;
        let mut p = planner(0, &[], seg, 4096);
        // Exactly fills the segment: no blank marker.
        assert_eq!(p.append(4096, record(4096, 1)), 0);
        assert_eq!(p.append(100, record(100, 2)), 4096);
        // 4096 - 100 = 3996 left; 3990 would leave 6 < 8 bytes: must roll with a blank.
        assert_eq!(p.append(3990, record(3990, 3)), 8192);
        // 8192 + 3990 leaves 106 bytes: 98 leaves exactly a blank marker's 8 bytes, so fits.
        assert_eq!(p.append(98, record(98, 4)), 12182);
        // 8 bytes left: a record of exactly 8 fills the segment; 9 would not fit.
        assert_eq!(p.append(8, record(8, 5)), 12280);
        assert_eq!(p.append(9, record(9, 6)), 12288);
        let mut p2 = planner(0, &[], seg, 4096);
        p2.append(4088, record(4088, 1));
        assert_eq!(
            p2.append(9, record(9, 2)),
            4096,
            "a blank marker of exactly 8 bytes"
        );
    }

    #[test]
    fn new_segment_waits_for_old_writes() {
        let seg = 4096u64;
        let mut p = planner(0, &[], seg, 2048);
        p.append(2048, record(2048, 1));
        p.append(2048, record(2048, 2));
        p.append(100, record(100, 3));
        let a = p.next_write(8).unwrap();
        let b = p.next_write(8).unwrap();
        assert_eq!((a.segment_base, b.segment_base), (0, 0));
        assert!(
            p.next_write(8).is_none(),
            "segment 4096 waits for segment 0's writes"
        );
        p.complete(a.id);
        assert!(p.next_write(8).is_none());
        p.complete(b.id);
        let c = p.next_write(8).unwrap();
        assert_eq!((c.segment_base, c.file_pos), (4096, 0));
    }

    #[test]
    fn blank_marker_decodes_and_closes_segment() {
        let seg = 4096u64;
        let mut p = planner(0, &[], seg, 4096);
        p.append(1000, record(1000, 1));
        let next = p.append(3500, record(3500, 2));
        assert_eq!(next, 4096);
        let mut disk = Disk {
            seg,
            files: BTreeMap::new(),
        };
        while let Some(op) = p.next_write(8) {
            disk.apply(&op);
            p.complete(op.id);
        }
        let f = Bytes::from(disk.files[&0].clone());
        let entry = decode(&f.slice(1000..), 1000, seg - 1000).unwrap();
        assert_eq!(entry, Entry::Blank { len: 3096 });
    }
}
