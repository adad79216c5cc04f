//! CommitLog recovery: scan forward from the checkpoint, check every record (CRC and stored
//! physical offset), cut the newest segment after the last whole record, and refuse to go on
//! past a bad record in a sealed segment.
//!
//! The decision for one position ([`step`]) is pure; the async part reads windows of the
//! segment through the I/O seam and applies the cut.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::BLOCK_BYTES;
use crate::error::RecoveryError;
use crate::io::{FaultPlan, SegmentFile};
use crate::log::segment::{self, create_segment, list_segments, open_segment};
use crate::record::{DecodeError, BLANK_LEN_MIN};

/// Bytes read at once while scanning.
const SCAN_WINDOW_BYTES: u64 = 1 << 20;

/// What recovery found and did on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub shard: usize,
    /// Offset the CRC scan started from: the start of the segment holding the checkpoint (or
    /// of the first segment).
    pub scan_start: u64,
    /// First offset after the last whole record: where appends continue.
    pub end_offset: u64,
    pub records_scanned: u64,
    pub segments: usize,
    /// Set when the log ended in something other than clean zeroes.
    pub cut: Option<CutReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutReport {
    pub segment: PathBuf,
    pub offset: u64,
    pub reason: String,
    /// Empty segments after the cut that were removed.
    pub removed_segments: Vec<PathBuf>,
}

/// What lies at one position while scanning.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole valid record of this many bytes.
    Record(u32),
    /// The segment is closed (blank marker or exactly full).
    SegmentFull,
    /// The log ends here: `None` for clean zeroes, else why the bytes are not a record.
    Stop(Option<DecodeError>),
    /// Need this many bytes from the position to decide.
    Need(u64),
}

/// Decides what a log's bytes at one position hold: `(avail, offset, seg_left, record_max)`
/// where `avail` are the bytes from log `offset` on and `seg_left` the bytes to the segment
/// end. Each log format supplies one; none may panic on any input.
pub type StepFn = std::rc::Rc<dyn Fn(&Bytes, u64, u64, u64) -> Step>;

/// The checks every framed format shares (size, magic, then the rest): the end of a segment,
/// a header not yet read, clean zeroes, a claimed size over the limit, and a whole record not
/// yet read. `None` means the record is whole in `avail` and the format decodes it.
pub fn frame_step(avail: &Bytes, seg_left: u64, magic: u32, record_max: u64) -> Option<Step> {
    if seg_left == 0 {
        return Some(Step::SegmentFull);
    }
    let header = BLANK_LEN_MIN.min(seg_left);
    if (avail.len() as u64) < header {
        return Some(Step::Need(header));
    }
    if seg_left < BLANK_LEN_MIN {
        return None;
    }
    let size = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]);
    let found = u32::from_le_bytes([avail[4], avail[5], avail[6], avail[7]]);
    if size == 0 && found == 0 {
        return Some(Step::Stop(None));
    }
    if found == magic {
        if size as u64 > record_max {
            return Some(Step::Stop(Some(DecodeError::BadSize(size))));
        }
        if size as u64 <= seg_left && size as usize > avail.len() {
            return Some(Step::Need(size as u64));
        }
    }
    None
}

/// What to do with a bad entry in a segment that later segments follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedPolicy {
    /// Refuse to open: it is corruption (the CommitLog, whose writes are ordered across
    /// segments by the roll barrier).
    Refuse,
    /// Cut there and drop the later segments, loudly (a derived log that recovery rebuilds).
    Cut,
}

enum ScanEnd {
    Full,
    Stop {
        pos: u64,
        reason: Option<DecodeError>,
    },
}

struct Scanner<'a> {
    step: &'a dyn Fn(&Bytes, u64, u64, u64) -> Step,
    file: &'a SegmentFile,
    base: u64,
    size: u64,
    record_max: u64,
    records: u64,
}

impl Scanner<'_> {
    async fn scan(&mut self, from: u64) -> std::io::Result<ScanEnd> {
        let mut pos = from;
        let mut win = Bytes::new();
        let mut win_pos = 0u64;
        let mut refilled_at = None;
        loop {
            let avail = if pos >= win_pos && pos <= win_pos + win.len() as u64 {
                win.slice((pos - win_pos) as usize..)
            } else {
                Bytes::new()
            };
            match (self.step)(&avail, self.base + pos, self.size - pos, self.record_max) {
                Step::Record(n) => {
                    pos += n as u64;
                    self.records += 1;
                }
                Step::SegmentFull => return Ok(ScanEnd::Full),
                Step::Stop(reason) => return Ok(ScanEnd::Stop { pos, reason }),
                Step::Need(n) if refilled_at == Some(pos) => {
                    // The file itself is shorter than the record claims.
                    let reason = DecodeError::Truncated {
                        needed: n,
                        available: avail.len() as u64,
                    };
                    return Ok(ScanEnd::Stop {
                        pos,
                        reason: Some(reason),
                    });
                }
                Step::Need(n) => {
                    let at = pos - pos % BLOCK_BYTES;
                    let len = (pos - at + n)
                        .next_multiple_of(BLOCK_BYTES)
                        .max(SCAN_WINDOW_BYTES);
                    let len = len.min(self.size - at);
                    let read = self.file.read_at_aligned(at, len as usize).await?;
                    win = Bytes::copy_from_slice(&read);
                    win_pos = at;
                    refilled_at = Some(pos);
                }
            }
        }
    }
}

/// The recovered state a shard starts its writer from.
pub struct RecoveredLog {
    pub segments: BTreeMap<u64, Rc<SegmentFile>>,
    pub end: u64,
    /// Bytes of the block holding `end` that lie before it.
    pub tail: Vec<u8>,
    pub report: RecoveryReport,
}

pub struct RecoverParams<'a> {
    pub step: StepFn,
    pub sealed: SealedPolicy,
    pub shard: usize,
    pub dir: &'a Path,
    pub segment_bytes: u64,
    pub record_max: u64,
    pub plan: Option<Arc<FaultPlan>>,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RecoveryError {
    let path = path.to_owned();
    move |source| RecoveryError::Io { what, path, source }
}

/// Recovers one shard's CommitLog directory (creating the first segment of a new log).
pub async fn recover(p: RecoverParams<'_>) -> Result<RecoveredLog, RecoveryError> {
    std::fs::create_dir_all(p.dir).map_err(io_err("cannot create", p.dir))?;
    let listed = list_segments(p.dir)?;
    let mut segments = BTreeMap::new();
    for (base, path) in &listed {
        if base % p.segment_bytes != 0 {
            return Err(RecoveryError::SegmentSize {
                path: path.clone(),
                size: *base,
                expected: p.segment_bytes,
            });
        }
        let file = open_segment(path, p.plan.clone())
            .await
            .map_err(io_err("cannot open", path))?;
        let size = std::fs::metadata(path)
            .map_err(io_err("cannot stat", path))?
            .len();
        if size > p.segment_bytes {
            return Err(RecoveryError::SegmentSize {
                path: path.clone(),
                size,
                expected: p.segment_bytes,
            });
        }
        if size < p.segment_bytes {
            // A crash between create and fallocate: finish the reservation.
            file.pre_allocate(p.segment_bytes)
                .await
                .map_err(io_err("cannot fallocate", path))?;
        }
        segments.insert(*base, Rc::new(file));
    }
    if segments.is_empty() {
        let file = create_segment(p.dir, 0, p.segment_bytes, p.plan.clone())
            .await
            .map_err(io_err("cannot create segment in", p.dir))?;
        crate::meta::sync_dir(p.dir).map_err(io_err("cannot sync", p.dir))?;
        segments.insert(0, Rc::new(file));
    }
    let checkpoint = segment::read_checkpoint(p.dir)?;
    let first = *segments.keys().next().expect("at least one segment");
    // The checkpoint is a flushed byte offset, which may fall inside a record that spans two
    // write chunks; the segment holding it starts on a record boundary, so scan from there.
    let scan_start = match checkpoint {
        Some(c) => match segments.range(..=c).next_back() {
            Some((&base, _)) if c < base + p.segment_bytes => base,
            Some((&base, _)) if c == base + p.segment_bytes => base,
            _ => {
                tracing::warn!(
                    shard = p.shard,
                    checkpoint = c,
                    "checkpoint outside the segments; scanning all"
                );
                first
            }
        },
        None => first,
    };
    scan_and_cut(p, segments, scan_start).await
}

async fn scan_and_cut(
    p: RecoverParams<'_>,
    mut segments: BTreeMap<u64, Rc<SegmentFile>>,
    scan_start: u64,
) -> Result<RecoveredLog, RecoveryError> {
    let bases: Vec<u64> = segments
        .keys()
        .copied()
        .filter(|&b| b + p.segment_bytes > scan_start)
        .collect();
    let mut records = 0;
    let mut from = scan_start;
    for (i, &base) in bases.iter().enumerate() {
        let file = segments[&base].clone();
        let mut scanner = Scanner {
            step: &*p.step,
            file: &file,
            base,
            size: p.segment_bytes,
            record_max: p.record_max,
            records: 0,
        };
        let end = scanner
            .scan(from - base)
            .await
            .map_err(io_err("cannot read", file.path()))?;
        records += scanner.records;
        from = base + p.segment_bytes;
        let ScanEnd::Stop { pos, reason } = end else {
            // A closed segment whose last writes a crash may have left in the device cache.
            file.fdatasync()
                .await
                .map_err(io_err("cannot sync", file.path()))?;
            continue;
        };
        let later = &bases[i + 1..];
        for &later_base in later.iter().filter(|_| p.sealed == SealedPolicy::Refuse) {
            if segment_has_data(
                &*p.step,
                &segments[&later_base],
                later_base,
                p.segment_bytes,
                p.record_max,
            )
            .await
            .map_err(io_err("cannot read", segments[&later_base].path()))?
            {
                let reason = reason.unwrap_or(DecodeError::Malformed("zeroes inside the log"));
                return Err(RecoveryError::Corruption {
                    path: file.path().to_owned(),
                    offset: base + pos,
                    position: pos,
                    reason,
                });
            }
        }
        let mut removed = Vec::new();
        for later_base in later {
            if let Some(f) = segments.remove(later_base) {
                std::fs::remove_file(f.path()).map_err(io_err("cannot remove", f.path()))?;
                removed.push(f.path().to_owned());
            }
        }
        if !removed.is_empty() {
            crate::meta::sync_dir(p.dir).map_err(io_err("cannot sync", p.dir))?;
        }
        let tail = cut_segment(&file, pos, p.segment_bytes)
            .await
            .map_err(io_err("cannot cut", file.path()))?;
        let end_offset = base + pos;
        if !removed.is_empty() && p.sealed == SealedPolicy::Cut {
            tracing::warn!(shard = p.shard, dir = %p.dir.display(), removed = ?removed,
                "recovery dropped later segments of a derived log after a bad entry");
        }
        let cut = reason.map(|r| CutReport {
            segment: file.path().to_owned(),
            offset: end_offset,
            reason: r.to_string(),
            removed_segments: removed,
        });
        if let Some(cut) = &cut {
            tracing::warn!(shard = p.shard, offset = cut.offset, segment = %cut.segment.display(),
                reason = %cut.reason, "recovery cut a torn tail from the CommitLog");
        }
        let report = RecoveryReport {
            shard: p.shard,
            scan_start,
            end_offset,
            records_scanned: records,
            segments: segments.len(),
            cut,
        };
        return Ok(RecoveredLog {
            segments,
            end: end_offset,
            tail,
            report,
        });
    }
    // Every segment is closed: appends continue in a new one.
    let report = RecoveryReport {
        shard: p.shard,
        scan_start,
        end_offset: from,
        records_scanned: records,
        segments: segments.len(),
        cut: None,
    };
    Ok(RecoveredLog {
        segments,
        end: from,
        tail: Vec::new(),
        report,
    })
}

async fn segment_has_data(
    step: &dyn Fn(&Bytes, u64, u64, u64) -> Step,
    file: &SegmentFile,
    base: u64,
    size: u64,
    record_max: u64,
) -> std::io::Result<bool> {
    let read = file.read_at_aligned(0, BLOCK_BYTES as usize).await?;
    let head = Bytes::copy_from_slice(&read);
    // Anything but clean zeroes at the start means writes reached this segment.
    Ok(!matches!(
        step(&head, base, size, record_max),
        Step::Stop(None)
    ))
}

/// Zeroes everything from `pos` (segment-relative) to the segment end and makes it durable:
/// the partial block is rewritten, whole blocks are punched out and reserved again. Returns the
/// bytes of `pos`'s block that precede it.
async fn cut_segment(file: &SegmentFile, pos: u64, size: u64) -> std::io::Result<Vec<u8>> {
    let block = BLOCK_BYTES;
    debug_assert_eq!(
        block % file.alignment(),
        0,
        "device alignment must divide the block"
    );
    let at = pos - pos % block;
    let mut tail = Vec::new();
    if pos > at {
        let read = file.read_at_aligned(at, block as usize).await?;
        tail = read
            .get(..(pos - at) as usize)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        tail.resize((pos - at) as usize, 0);
        let mut buf = file.alloc_dma_buffer(block as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..tail.len()].copy_from_slice(&tail);
        file.write_at(std::rc::Rc::new(buf), at).await?;
    }
    let hole = pos.next_multiple_of(block);
    if hole < size {
        file.deallocate(hole, size - hole).await?;
        file.pre_allocate(size).await?;
    }
    file.fdatasync().await?;
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::scan_step as step;
    use crate::record::{encode, encode_blank, encoded_len, MessageInput, StoreStamp};

    fn rec(offset: u64) -> Bytes {
        let m = MessageInput::new("topic", 3, vec![7u8; 300]);
        let mut out = vec![0u8; encoded_len(&m).unwrap()];
        let stamp = StoreStamp {
            physical_offset: offset,
            queue_offset: 0,
            store_timestamp_ms: 1,
            store_host: "127.0.0.1:1".parse().unwrap(),
        };
        encode(&m, &stamp, &mut out);
        Bytes::from(out)
    }

    #[test]
    fn step_classifies() {
        let r = rec(100);
        assert_eq!(
            step(&r, 100, 1 << 20, 1 << 20),
            Step::Record(r.len() as u32)
        );
        assert_eq!(
            step(&r.slice(..50), 100, 1 << 20, 1 << 20),
            Step::Need(r.len() as u64)
        );
        assert_eq!(
            step(&Bytes::from(vec![0; 64]), 0, 1 << 20, 1 << 20),
            Step::Stop(None)
        );
        assert!(matches!(
            step(&r, 200, 1 << 20, 1 << 20),
            Step::Stop(Some(_))
        ));
        let mut blank = [0u8; 8];
        encode_blank(64, &mut blank);
        assert_eq!(
            step(&Bytes::copy_from_slice(&blank), 0, 64, 1 << 20),
            Step::SegmentFull
        );
        assert_eq!(step(&Bytes::new(), 0, 0, 1 << 20), Step::SegmentFull);
        assert_eq!(step(&Bytes::new(), 0, 64, 1 << 20), Step::Need(8));
    }

    #[test]
    fn step_bounds_claimed_size() {
        let mut r = rec(0).to_vec();
        r[0..4].copy_from_slice(&(100u32 << 20).to_le_bytes());
        let s = step(&Bytes::from(r), 0, 1 << 30, 4 << 20);
        assert!(
            matches!(s, Step::Stop(Some(DecodeError::BadSize(_)))),
            "{s:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn step_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                             left in 0u64..1000) {
            let _ = step(&Bytes::from(bytes), 0, left, 1 << 20);
        }
    }
}
