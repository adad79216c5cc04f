//! ConsumeQueue log records, pure. One log per owner shard holds the entries of every queue
//! that shard owns, interleaved in the order the owner assigned their queue offsets, plus
//! watermarks saying how far each source shard's CommitLog has been dispatched, and "topic
//! deleted" records that end a topic's queues (see `ConsumeQueues::drop_topic`). Framed like
//! CommitLog records (size, magic, CRC, own position) so that the same recovery applies.
//! Layout: `docs/format.md`, "ConsumeQueue log".

use bytes::Bytes;

use crate::log::recovery::{frame_step, Step};
use crate::record::{DecodeError, BLANK_LEN_MIN, BLANK_MAGIC, TOPIC_LEN_MAX};

pub const CQ_MAGIC: u32 = 0x534D_5143;
pub const CQ_HEADER_LEN: usize = 64;
pub const CQ_RECORD_MAX: usize = CQ_HEADER_LEN + TOPIC_LEN_MAX;
const KIND_ENTRY: u8 = 1;
const KIND_WATERMARK: u8 = 2;
const KIND_TOPIC_DELETED: u8 = 3;
const KIND_QUEUE_POSITION: u8 = 4;

/// One queue entry: where the message lies and what a reader filters on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqEntry {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub source: u16,
    pub cl_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    /// Store time (ms); for delayed messages, the due time.
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqRecord {
    Entry(CqEntry),
    /// Every CommitLog record of `source` below `upto` that this shard owns was dispatched
    /// before this point of the log.
    Watermark {
        source: u16,
        upto: u64,
    },
    /// The topic's incarnation `generation` was deleted: every entry of the topic before this
    /// point of the log is void, and every CommitLog record of the topic from `source` below
    /// `upto` belongs to a deleted incarnation (recovery must not re-dispatch it). Written once
    /// per source shard.
    TopicDeleted {
        topic: String,
        generation: u64,
        source: u16,
        upto: u64,
    },
    /// The queue's next offset when older segments of this log were deleted, so that a queue
    /// whose entries all went with them does not start again at 0 (written for every queue
    /// before a deletion).
    QueuePosition {
        topic: String,
        queue_id: u32,
        next: u64,
    },
}

pub fn entry_len(topic: &str) -> usize {
    CQ_HEADER_LEN + topic.len()
}

pub const WATERMARK_LEN: usize = CQ_HEADER_LEN;

/// Length of a "topic deleted" record (the same as an entry of the topic).
pub fn topic_deleted_len(topic: &str) -> usize {
    CQ_HEADER_LEN + topic.len()
}

/// Length of any record.
pub fn record_len(record: &CqRecord) -> usize {
    match record {
        CqRecord::Entry(e) => entry_len(&e.topic),
        CqRecord::Watermark { .. } => WATERMARK_LEN,
        CqRecord::TopicDeleted { topic, .. } => topic_deleted_len(topic),
        CqRecord::QueuePosition { topic, .. } => queue_position_len(topic),
    }
}

/// Length of a queue position record.
pub fn queue_position_len(topic: &str) -> usize {
    CQ_HEADER_LEN + topic.len()
}

/// The fields of an entry, borrowed (the owner encodes entries without building a
/// [`CqEntry`]).
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub source: u16,
    pub cl_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub time_ms: i64,
}

impl CqEntry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            topic: &self.topic,
            queue_id: self.queue_id,
            queue_offset: self.queue_offset,
            source: self.source,
            cl_offset: self.cl_offset,
            size: self.size,
            tag_hash: self.tag_hash,
            time_ms: self.time_ms,
        }
    }
}

/// Encodes `record` at log `position` into `out` (exactly its length).
pub fn encode(record: &CqRecord, position: u64, out: &mut [u8]) {
    match record {
        CqRecord::Entry(e) => encode_entry(e.as_ref(), position, out),
        CqRecord::Watermark { source, upto } => encode_watermark(*source, *upto, position, out),
        CqRecord::TopicDeleted {
            topic,
            generation,
            source,
            upto,
        } => encode_topic_deleted(topic, *generation, *source, *upto, position, out),
        CqRecord::QueuePosition {
            topic,
            queue_id,
            next,
        } => encode_queue_position(topic, *queue_id, *next, position, out),
    }
}

/// A queue position record: `next` in the queue offset's place, the queue id in its.
pub fn encode_queue_position(topic: &str, queue_id: u32, next: u64, position: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), queue_position_len(topic));
    frame(out, position);
    out[12] = KIND_QUEUE_POSITION;
    out[13] = topic.len() as u8;
    out[24..32].copy_from_slice(&next.to_le_bytes());
    out[44..48].copy_from_slice(&queue_id.to_le_bytes());
    out[64..].copy_from_slice(topic.as_bytes());
    seal(out);
}

fn frame(out: &mut [u8], position: u64) {
    out.fill(0);
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&CQ_MAGIC.to_le_bytes());
    out[16..24].copy_from_slice(&position.to_le_bytes());
}

fn seal(out: &mut [u8]) {
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes an entry at log `position` into `out` (exactly `entry_len(e.topic)`).
pub fn encode_entry(e: EntryRef<'_>, position: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), entry_len(e.topic));
    frame(out, position);
    out[12] = KIND_ENTRY;
    out[13] = e.topic.len() as u8;
    out[14..16].copy_from_slice(&e.source.to_le_bytes());
    out[24..32].copy_from_slice(&e.queue_offset.to_le_bytes());
    out[32..40].copy_from_slice(&e.cl_offset.to_le_bytes());
    out[40..44].copy_from_slice(&e.size.to_le_bytes());
    out[44..48].copy_from_slice(&e.queue_id.to_le_bytes());
    out[48..56].copy_from_slice(&e.tag_hash.to_le_bytes());
    out[56..64].copy_from_slice(&e.time_ms.to_le_bytes());
    out[64..].copy_from_slice(e.topic.as_bytes());
    seal(out);
}

/// Encodes a watermark at log `position` into `out` (exactly `WATERMARK_LEN`).
pub fn encode_watermark(source: u16, upto: u64, position: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), WATERMARK_LEN);
    frame(out, position);
    out[12] = KIND_WATERMARK;
    out[14..16].copy_from_slice(&source.to_le_bytes());
    out[32..40].copy_from_slice(&upto.to_le_bytes());
    seal(out);
}

/// Encodes a "topic deleted" record at log `position` into `out` (exactly
/// `topic_deleted_len(topic)`): the topic where an entry has it, the generation in the queue
/// offset's place, `upto` in the CommitLog offset's.
pub fn encode_topic_deleted(
    topic: &str,
    generation: u64,
    source: u16,
    upto: u64,
    position: u64,
    out: &mut [u8],
) {
    debug_assert_eq!(out.len(), topic_deleted_len(topic));
    frame(out, position);
    out[12] = KIND_TOPIC_DELETED;
    out[13] = topic.len() as u8;
    out[14..16].copy_from_slice(&source.to_le_bytes());
    out[24..32].copy_from_slice(&generation.to_le_bytes());
    out[32..40].copy_from_slice(&upto.to_le_bytes());
    out[64..].copy_from_slice(topic.as_bytes());
    seal(out);
}

/// The topic of an entry or "topic deleted" record, checked against the record's size.
fn topic_of(rec: &[u8]) -> Result<String, DecodeError> {
    let topic_len = rec[13] as usize;
    if CQ_HEADER_LEN + topic_len != rec.len() {
        return Err(DecodeError::Malformed(
            "record size disagrees with its topic",
        ));
    }
    std::str::from_utf8(&rec[64..])
        .map(str::to_owned)
        .map_err(|_| DecodeError::Malformed("topic is not UTF-8"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes the record at the start of `buf` (at log `position`). `None` for a blank marker.
pub fn decode(buf: &[u8], position: u64, seg_left: u64) -> Result<Option<CqRecord>, DecodeError> {
    let truncated = |needed: u64| DecodeError::Truncated {
        needed,
        available: buf.len() as u64,
    };
    if buf.len() < BLANK_LEN_MIN as usize {
        return Err(truncated(BLANK_LEN_MIN));
    }
    let size = u32_at(buf, 0);
    let magic = u32_at(buf, 4);
    if magic == BLANK_MAGIC {
        return if size as u64 == seg_left {
            Ok(None)
        } else {
            Err(DecodeError::BadSize(size))
        };
    }
    if magic != CQ_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if (size as usize) < CQ_HEADER_LEN || size as usize > CQ_RECORD_MAX || size as u64 > seg_left {
        return Err(DecodeError::BadSize(size));
    }
    if buf.len() < size as usize {
        return Err(truncated(size as u64));
    }
    let rec = &buf[..size as usize];
    let (stored, computed) = (u32_at(rec, 8), crc32fast::hash(&rec[12..]));
    if stored != computed {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    let at = u64_at(rec, 16);
    if at != position {
        return Err(DecodeError::OffsetMismatch {
            stored: at,
            actual: position,
        });
    }
    let source = u16::from_le_bytes([rec[14], rec[15]]);
    match rec[12] {
        KIND_ENTRY => {
            let topic = topic_of(rec)?;
            Ok(Some(CqRecord::Entry(CqEntry {
                topic,
                queue_id: u32_at(rec, 44),
                queue_offset: u64_at(rec, 24),
                source,
                cl_offset: u64_at(rec, 32),
                size: u32_at(rec, 40),
                tag_hash: u64_at(rec, 48),
                time_ms: u64_at(rec, 56) as i64,
            })))
        }
        KIND_WATERMARK if size as usize == WATERMARK_LEN => Ok(Some(CqRecord::Watermark {
            source,
            upto: u64_at(rec, 32),
        })),
        KIND_TOPIC_DELETED => {
            let topic = topic_of(rec)?;
            if topic.is_empty() {
                return Err(DecodeError::Malformed(
                    "topic deleted record without a topic",
                ));
            }
            Ok(Some(CqRecord::TopicDeleted {
                topic,
                generation: u64_at(rec, 24),
                source,
                upto: u64_at(rec, 32),
            }))
        }
        KIND_QUEUE_POSITION => {
            let topic = topic_of(rec)?;
            if topic.is_empty() {
                return Err(DecodeError::Malformed(
                    "queue position record without a topic",
                ));
            }
            Ok(Some(CqRecord::QueuePosition {
                topic,
                queue_id: u32_at(rec, 44),
                next: u64_at(rec, 24),
            }))
        }
        _ => Err(DecodeError::Malformed("unknown ConsumeQueue record kind")),
    }
}

/// Recovery's step for the ConsumeQueue log. Entries must also point inside the CommitLog
/// that survived (`cl_ends[source]`), and so must a "topic deleted" record's `upto` (the
/// delete flushed the CommitLogs up to it first); the first that does not ends the log.
pub fn scan_step(avail: &Bytes, offset: u64, seg_left: u64, cl_ends: &[u64]) -> Step {
    if let Some(step) = frame_step(avail, seg_left, CQ_MAGIC, CQ_RECORD_MAX as u64) {
        return step;
    }
    match decode(avail, offset, seg_left) {
        Ok(None) => Step::SegmentFull,
        Ok(Some(CqRecord::Entry(e))) => {
            let end = e.cl_offset.checked_add(e.size as u64);
            match cl_ends.get(e.source as usize) {
                Some(&cl_end) if end.is_some_and(|end| end <= cl_end) => {
                    Step::Record(entry_len(&e.topic) as u32)
                }
                _ => Step::Stop(Some(DecodeError::Malformed(
                    "entry points past the surviving CommitLog",
                ))),
            }
        }
        Ok(Some(CqRecord::Watermark { .. })) => Step::Record(WATERMARK_LEN as u32),
        Ok(Some(CqRecord::QueuePosition { topic, .. })) => {
            Step::Record(queue_position_len(&topic) as u32)
        }
        Ok(Some(CqRecord::TopicDeleted {
            topic,
            source,
            upto,
            ..
        })) => match cl_ends.get(source as usize) {
            Some(&cl_end) if upto <= cl_end => Step::Record(topic_deleted_len(&topic) as u32),
            _ => Step::Stop(Some(DecodeError::Malformed(
                "topic deleted record points past the surviving CommitLog",
            ))),
        },
        Err(e) => Step::Stop(Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(topic: &str) -> CqEntry {
        CqEntry {
            topic: topic.into(),
            queue_id: 7,
            queue_offset: 12345,
            source: 1,
            cl_offset: 999_999,
            size: 1100,
            tag_hash: 0xDEAD_BEEF_0000_0001,
            time_ms: 1_700_000_000_000,
        }
    }

    fn bytes(record: &CqRecord, position: u64) -> Vec<u8> {
        let mut out = vec![0u8; record_len(record)];
        encode(record, position, &mut out);
        out
    }

    proptest! {
        #[test]
        fn round_trip(topic in "[a-zA-Z0-9%_-]{1,100}", pos in any::<u64>(), q in any::<u32>(), off in any::<u64>()) {
            let mut e = entry(&topic);
            e.queue_id = q;
            e.queue_offset = off;
            let r = CqRecord::Entry(e);
            prop_assert_eq!(decode(&bytes(&r, pos), pos, u64::MAX).unwrap(), Some(r));
            let w = CqRecord::Watermark { source: 3, upto: off };
            prop_assert_eq!(decode(&bytes(&w, pos), pos, u64::MAX).unwrap(), Some(w));
            let d = CqRecord::TopicDeleted { topic: topic.clone(), generation: off, source: q as u16, upto: pos };
            prop_assert_eq!(decode(&bytes(&d, pos), pos, u64::MAX).unwrap(), Some(d));
            let p = CqRecord::QueuePosition { topic, queue_id: q, next: off };
            prop_assert_eq!(decode(&bytes(&p, pos), pos, u64::MAX).unwrap(), Some(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400), pos in any::<u64>(), left in any::<u64>()) {
            let _ = decode(&b, pos, left);
            let _ = scan_step(&Bytes::from(b), pos, left, &[u64::MAX, 0]);
        }

        #[test]
        fn flips_are_detected(at in any::<prop::sample::Index>(), bit in 0u8..8, kind in 0..4) {
            let record = match kind {
                0 => CqRecord::Entry(entry("t")),
                1 => CqRecord::Watermark { source: 1, upto: 77 },
                2 => CqRecord::QueuePosition { topic: "t".into(), queue_id: 3, next: 99 },
                _ => CqRecord::TopicDeleted { topic: "t".into(), generation: 4, source: 1, upto: 77 },
            };
            let mut b = bytes(&record, 64);
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
            prop_assert!(decode(&b, 64, u64::MAX).is_err());
        }
    }

    #[test]
    fn topic_deleted_past_the_commitlog_ends_the_log() {
        let d = CqRecord::TopicDeleted {
            topic: "orders".into(),
            generation: 2,
            source: 1,
            upto: 5000,
        };
        let b = Bytes::from(bytes(&d, 0));
        assert_eq!(scan_step(&b, 0, 1 << 20, &[0, 5000]), Step::Record(70));
        assert!(matches!(
            scan_step(&b, 0, 1 << 20, &[0, 4999]),
            Step::Stop(Some(_))
        ));
        assert!(matches!(
            scan_step(&b, 0, 1 << 20, &[0]),
            Step::Stop(Some(_))
        ));
    }

    #[test]
    fn entry_past_the_commitlog_ends_the_log() {
        let b = Bytes::from(bytes(&CqRecord::Entry(entry("t")), 0));
        assert_eq!(scan_step(&b, 0, 1 << 20, &[0, 1_001_099]), Step::Record(65));
        assert!(matches!(
            scan_step(&b, 0, 1 << 20, &[0, 1_001_098]),
            Step::Stop(Some(_))
        ));
    }
}
