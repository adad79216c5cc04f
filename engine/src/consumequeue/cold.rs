//! The cold tier of queue entries: full blocks of a queue's oldest entries, moved out of
//! memory into one file per shard, so memory holds a bounded number of entries per shard
//! while the retained log may hold billions.
//!
//! A block is 4 KiB: up to [`BLOCK_ENTRIES`] fixed 32-byte entries of one queue, then a
//! 32-byte trailer (magic, first queue offset, entry count, CRC-32 of everything before it).
//! The file (`<store>/cqcold/<shard>/entries`) is derived data: it is rebuilt from the
//! ConsumeQueue log at every open, written with O_DIRECT, and blocks that retention or a
//! topic delete released are punched out (`fallocate` hole), so its disk use follows the
//! live blocks while its logical size only grows. The codec is pure; `ColdFile` does the I/O.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::QueueEntry;

pub const BLOCK_BYTES: usize = 4096;
pub const ENTRY_LEN: usize = 32;
pub const TRAILER_LEN: usize = 32;
/// Entries per block: (4096 - 32) / 32.
pub const BLOCK_ENTRIES: usize = (BLOCK_BYTES - TRAILER_LEN) / ENTRY_LEN;
const BLOCK_MAGIC: u32 = 0x434F_4C44; // "COLD"

/// A block as its queue remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdBlock {
    /// Queue offset of its first entry; it holds `BLOCK_ENTRIES` entries.
    pub first: u64,
    /// Position in the cold file.
    pub pos: u64,
    /// Store time of its first entry (for lookups by time).
    pub first_time_ms: i64,
    /// Per source shard, the highest CommitLog offset among its entries (0: none), so
    /// retention can tell when every record it points at is gone.
    pub max_cl: Box<[u64]>,
}

impl ColdBlock {
    /// Describes `entries` (exactly one block's worth) to be written at `pos`.
    pub fn describe(first: u64, pos: u64, entries: &[QueueEntry], sources: usize) -> Self {
        debug_assert_eq!(entries.len(), BLOCK_ENTRIES);
        let mut max_cl = vec![0u64; sources].into_boxed_slice();
        for e in entries.iter().filter(|e| !e.is_skip()) {
            if let Some(m) = max_cl.get_mut(e.source as usize) {
                *m = (*m).max(e.cl_offset + 1);
            }
        }
        ColdBlock {
            first,
            pos,
            first_time_ms: entries.first().map_or(0, |e| e.time_ms),
            max_cl,
        }
    }

    /// Whether every record the block points at lies below its source's log minimum.
    pub fn gone(&self, mins: impl Fn(usize) -> u64) -> bool {
        self.max_cl
            .iter()
            .enumerate()
            .all(|(source, &end)| end == 0 || end <= mins(source))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("cold block is not a block (bad magic)")]
    Magic,
    #[error("cold block checksum mismatch")]
    Crc,
    #[error("cold block holds offsets from {found}, expected {expected}")]
    Offset { expected: u64, found: u64 },
    #[error("cold block holds {0} entries")]
    Count(usize),
}

/// Encodes one block of `entries` (at most `BLOCK_ENTRIES`) starting at queue offset
/// `first` into `out` (`BLOCK_BYTES` long).
pub fn encode_block(first: u64, entries: &[QueueEntry], out: &mut [u8]) {
    assert!(entries.len() <= BLOCK_ENTRIES && out.len() == BLOCK_BYTES);
    out.fill(0);
    for (e, slot) in entries.iter().zip(out.chunks_exact_mut(ENTRY_LEN)) {
        slot[0..8].copy_from_slice(&e.cl_offset.to_le_bytes());
        slot[8..16].copy_from_slice(&e.tag_hash.to_le_bytes());
        slot[16..24].copy_from_slice(&e.time_ms.to_le_bytes());
        slot[24..28].copy_from_slice(&e.size.to_le_bytes());
        slot[28..30].copy_from_slice(&e.source.to_le_bytes());
    }
    let t = BLOCK_BYTES - TRAILER_LEN;
    out[t..t + 4].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
    out[t + 8..t + 16].copy_from_slice(&first.to_le_bytes());
    out[t + 16..t + 18].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    let crc = crc32fast::hash(&out[..t + 24]);
    out[t + 24..t + 28].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a block that must start at queue offset `first`.
pub fn decode_block(first: u64, bytes: &[u8]) -> Result<Vec<QueueEntry>, BlockError> {
    if bytes.len() < BLOCK_BYTES {
        return Err(BlockError::Magic);
    }
    let t = BLOCK_BYTES - TRAILER_LEN;
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or([0; 4]));
    if u32_at(t) != BLOCK_MAGIC {
        return Err(BlockError::Magic);
    }
    if crc32fast::hash(&bytes[..t + 24]) != u32_at(t + 24) {
        return Err(BlockError::Crc);
    }
    let found = u64_at(t + 8);
    if found != first {
        return Err(BlockError::Offset {
            expected: first,
            found,
        });
    }
    let count = u16::from_le_bytes([bytes[t + 16], bytes[t + 17]]) as usize;
    if count > BLOCK_ENTRIES {
        return Err(BlockError::Count(count));
    }
    Ok(bytes[..count * ENTRY_LEN]
        .chunks_exact(ENTRY_LEN)
        .map(|s| QueueEntry {
            cl_offset: u64::from_le_bytes(s[0..8].try_into().unwrap_or([0; 8])),
            tag_hash: u64::from_le_bytes(s[8..16].try_into().unwrap_or([0; 8])),
            time_ms: i64::from_le_bytes(s[16..24].try_into().unwrap_or([0; 8])),
            size: u32::from_le_bytes(s[24..28].try_into().unwrap_or([0; 4])),
            source: u16::from_le_bytes([s[28], s[29]]),
        })
        .collect())
}

/// The shard's cold file.
pub struct ColdFile {
    /// Taken out by `close` (what is in flight holds its own reference meanwhile).
    file: std::cell::RefCell<Option<Rc<DmaFile>>>,
    path: PathBuf,
    /// Where the next blocks go.
    end: std::cell::Cell<u64>,
}

impl ColdFile {
    /// Creates `<dir>/entries` afresh (what an earlier run left is rebuilt, not reused).
    pub async fn create(dir: &Path) -> std::io::Result<ColdFile> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join("entries");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .map_err(|e| std::io::Error::other(format!("create {}: {e}", path.display())))?;
        Ok(ColdFile {
            file: std::cell::RefCell::new(Some(Rc::new(file))),
            path,
            end: std::cell::Cell::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn handle(&self) -> std::io::Result<Rc<DmaFile>> {
        self.file
            .borrow()
            .clone()
            .ok_or_else(|| std::io::Error::other(format!("{} is closed", self.path.display())))
    }

    /// Where the next `blocks` blocks will be written; reserves them.
    pub fn reserve(&self, blocks: usize) -> u64 {
        let pos = self.end.get();
        self.end.set(pos + (blocks * BLOCK_BYTES) as u64);
        pos
    }

    /// Writes `blocks` (whole encoded blocks) at `pos`.
    pub async fn write(&self, pos: u64, blocks: &[u8]) -> std::io::Result<()> {
        debug_assert_eq!(blocks.len() % BLOCK_BYTES, 0);
        debug_assert_eq!(pos % BLOCK_BYTES as u64, 0);
        let file = self.handle()?;
        let mut buf = file.alloc_dma_buffer(blocks.len());
        buf.as_bytes_mut().copy_from_slice(blocks);
        let n = file
            .write_at(buf, pos)
            .await
            .map_err(|e| std::io::Error::other(format!("write {}: {e}", self.path.display())))?;
        if n != blocks.len() {
            return Err(std::io::Error::other(format!(
                "short write of {n} bytes to {}",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The block at `pos`.
    pub async fn read(&self, pos: u64) -> std::io::Result<Vec<u8>> {
        let r = self
            .handle()?
            .read_at_aligned(pos, BLOCK_BYTES)
            .await
            .map_err(|e| std::io::Error::other(format!("read {}: {e}", self.path.display())))?;
        Ok(r.to_vec())
    }

    /// The entries of `block`, checked (a released block reads as a hole and is refused).
    pub async fn read_block(&self, block: &ColdBlock) -> std::io::Result<Vec<QueueEntry>> {
        let bytes = self.read(block.pos).await?;
        decode_block(block.first, &bytes).map_err(|e| {
            std::io::Error::other(format!(
                "cold block at {} of {}: {e}",
                block.pos,
                self.path.display()
            ))
        })
    }

    /// Gives a released block's space back to the filesystem.
    pub async fn release(&self, pos: u64) {
        let Ok(file) = self.handle() else { return };
        if let Err(e) = file.deallocate(pos, BLOCK_BYTES as u64).await {
            tracing::warn!(path = %self.path.display(), pos, error = %e, "cannot punch a released cold block");
        }
    }

    pub async fn close(&self) {
        let file = self.file.borrow_mut().take();
        if let Some(file) = file {
            let _ = file.close_rc().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(i: u64) -> QueueEntry {
        QueueEntry {
            source: (i % 3) as u16,
            cl_offset: i * 1140,
            size: if i % 7 == 0 { 0 } else { 1140 },
            tag_hash: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            time_ms: 1_700_000_000_000 + i as i64,
        }
    }

    #[test]
    fn a_full_block_fits_in_four_kib() {
        assert_eq!(BLOCK_ENTRIES, 127);
        let entries: Vec<_> = (0..BLOCK_ENTRIES as u64).map(entry).collect();
        let mut out = vec![0u8; BLOCK_BYTES];
        encode_block(500, &entries, &mut out);
        assert_eq!(decode_block(500, &out).unwrap(), entries);
    }

    #[test]
    fn damage_and_wrong_blocks_are_refused() {
        let entries: Vec<_> = (0..10).map(entry).collect();
        let mut out = vec![0u8; BLOCK_BYTES];
        encode_block(7, &entries, &mut out);
        assert_eq!(
            decode_block(8, &out),
            Err(BlockError::Offset {
                expected: 8,
                found: 7
            })
        );
        out[40] ^= 1;
        assert_eq!(decode_block(7, &out), Err(BlockError::Crc));
        assert_eq!(
            decode_block(7, &vec![0u8; BLOCK_BYTES]),
            Err(BlockError::Magic),
            "a punched hole reads as zeros"
        );
    }

    #[test]
    fn a_block_is_gone_once_every_source_is_trimmed_past_it() {
        let entries: Vec<_> = (0..BLOCK_ENTRIES as u64).map(entry).collect();
        let b = ColdBlock::describe(0, 0, &entries, 4);
        let top = |s: u64| {
            entries
                .iter()
                .filter(|e| !e.is_skip() && e.source as u64 == s)
                .map(|e| e.cl_offset + 1)
                .max()
                .unwrap()
        };
        assert_eq!(b.max_cl[3], 0, "source 3 has no entry");
        let mins = [top(0), top(1), top(2), 0];
        assert!(b.gone(|s| mins[s]));
        let short = [top(0), top(1) - 1, top(2), 0];
        assert!(!b.gone(|s| short[s]));
    }

    proptest! {
        #[test]
        fn blocks_round_trip(first in any::<u64>(), raw in proptest::collection::vec(
            (any::<u16>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<i64>()), 0..=BLOCK_ENTRIES)) {
            let entries: Vec<QueueEntry> = raw.into_iter().map(|(source, cl_offset, size, tag_hash, time_ms)|
                QueueEntry { source, cl_offset, size, tag_hash, time_ms }).collect();
            let mut out = vec![0u8; BLOCK_BYTES];
            encode_block(first, &entries, &mut out);
            prop_assert_eq!(decode_block(first, &out).unwrap(), entries);
        }

        #[test]
        fn arbitrary_bytes_never_panic(first in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = decode_block(first, &bytes);
        }
    }
}
