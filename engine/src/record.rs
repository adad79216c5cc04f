//! CommitLog record layout: a pure encoder/decoder (no I/O).
//!
//! Every record is self-describing and self-checking: it carries its own total size, a magic
//! number, a CRC-32 (IEEE, `crc32fast`) over everything after the CRC field, and the physical offset it was written
//! at. Recovery uses the last two to tell a whole record from a torn one and from a stale record
//! left behind by an earlier use of the same file. The byte layout is documented in
//! `docs/format.md` ("CommitLog record"); keep the two in step.
//!
//! The segment tail after the last record that fits is a *blank marker*: `total_size` (bytes to
//! the end of the segment) followed by [`BLANK_MAGIC`].

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::{Buf, Bytes};

use crate::log::recovery::{frame_step, Step};
use thiserror::Error;

/// Magic of a message record (format version 2: the record holds its queue offset).
pub const MESSAGE_MAGIC: u32 = 0x534D_5132;
/// Magic of the blank marker that pads the end of a segment.
pub const BLANK_MAGIC: u32 = 0x534D_5142;
/// Bytes of the blank marker that must be present (size + magic).
pub const BLANK_LEN_MIN: u64 = 8;
/// Fixed part of a message record before the body.
pub const HEADER_LEN: usize = 108;
/// Bytes covered by neither the CRC (total size, magic, crc).
const CRC_START: usize = 12;
/// Topic names are at most this many bytes (the length is one byte on disk).
pub const TOPIC_LEN_MAX: usize = 255;
/// Properties (tags, keys and user properties) are at most this many bytes when encoded.
pub const PROPERTIES_LEN_MAX: usize = u16::MAX as usize;

/// Property key under which the tags are stored.
pub const PROPERTY_TAGS: &str = "TAGS";
/// Property key under which the keys are stored.
pub const PROPERTY_KEYS: &str = "KEYS";

/// What a producer hands to the store: everything the record holds but the fields the store
/// assigns (physical offset, store time, store host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInput {
    pub topic: String,
    pub queue_id: u32,
    pub body: Bytes,
    pub tags: Option<String>,
    pub keys: Option<String>,
    /// User properties, in order. Keys `TAGS` and `KEYS` are reserved for the fields above.
    pub properties: Vec<(String, String)>,
    pub flag: u32,
    pub sys_flag: u32,
    pub reconsume_times: u32,
    pub born_timestamp_ms: i64,
    pub born_host: SocketAddr,
    pub prepared_transaction_offset: u64,
}

impl MessageInput {
    /// A new message for `topic`/`queue_id` with `stored`'s body, tags, keys, flags, reconsume
    /// count, born time and host, and the given properties (any `TAGS`/`KEYS` among them are
    /// the fields above and left out): a delayed message's delivery, a retry.
    pub fn copy_of(
        stored: &StoredMessage,
        topic: impl Into<String>,
        queue_id: u32,
        properties: Vec<(String, String)>,
    ) -> Self {
        let mut m = MessageInput::new(topic, queue_id, stored.body.clone());
        m.tags = stored.property("TAGS").map(str::to_owned);
        m.keys = stored.property("KEYS").map(str::to_owned);
        m.properties = properties
            .into_iter()
            .filter(|(k, _)| k != "TAGS" && k != "KEYS")
            .collect();
        m.flag = stored.flag;
        m.sys_flag = stored.sys_flag;
        m.reconsume_times = stored.reconsume_times;
        m.born_timestamp_ms = stored.born_timestamp_ms;
        m.born_host = stored.born_host;
        m
    }

    /// A message with only topic, queue and body set; the rest takes neutral defaults.
    pub fn new(topic: impl Into<String>, queue_id: u32, body: impl Into<Bytes>) -> Self {
        MessageInput {
            topic: topic.into(),
            queue_id,
            body: body.into(),
            tags: None,
            keys: None,
            properties: Vec::new(),
            flag: 0,
            sys_flag: 0,
            reconsume_times: 0,
            born_timestamp_ms: 0,
            born_host: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            prepared_transaction_offset: 0,
        }
    }

    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = Some(tags.into());
        self
    }

    pub fn with_keys(mut self, keys: impl Into<String>) -> Self {
        self.keys = Some(keys.into());
        self
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }
}

/// The fields the store fills in at append time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStamp {
    pub physical_offset: u64,
    /// The offset the queue's owner reserved for this record in its queue.
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    pub store_host: SocketAddr,
}

/// Why a message cannot be encoded. These are the producer's fault (MESSAGE_ILLEGAL).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("topic must be 1..={TOPIC_LEN_MAX} bytes, got {0}")]
    TopicLength(usize),
    #[error("properties encode to {0} bytes, more than the limit of {PROPERTIES_LEN_MAX}")]
    PropertiesTooLong(usize),
    #[error("property `{0}` is reserved")]
    ReservedProperty(String),
    #[error("body of {0} bytes does not fit a u32 length")]
    BodyTooLong(usize),
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("need {needed} bytes, only {available} available")]
    Truncated { needed: u64, available: u64 },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("record size {0} is impossible")]
    BadSize(u32),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record claims physical offset {stored}, but lies at {actual}")]
    OffsetMismatch { stored: u64, actual: u64 },
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// A record read back from the CommitLog. Variable-size fields share the buffer they were
/// decoded from (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub total_size: u32,
    pub queue_id: u32,
    pub flag: u32,
    pub physical_offset: u64,
    pub sys_flag: u32,
    pub reconsume_times: u32,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub born_host: SocketAddr,
    pub store_host: SocketAddr,
    pub prepared_transaction_offset: u64,
    /// The record's offset in its queue, reserved before it was appended.
    pub queue_offset: u64,
    pub body: Bytes,
    pub topic: String,
    /// All properties, including `TAGS` and `KEYS` when set.
    pub properties: Vec<(String, String)>,
}

impl StoredMessage {
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn tags(&self) -> Option<&str> {
        self.property(PROPERTY_TAGS)
    }

    pub fn keys(&self) -> Option<&str> {
        self.property(PROPERTY_KEYS)
    }
}

/// What lies at a position of a segment.
// Decoded once per record read and moved out at once; a box would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A whole, valid message record.
    Message(StoredMessage),
    /// The blank marker: the segment's records end here; `len` bytes to the segment end.
    Blank { len: u32 },
}

fn properties_len(msg: &MessageInput) -> usize {
    let pair = |k: &str, v: &str| 4 + k.len() + v.len();
    let mut len = 0;
    if let Some(t) = &msg.tags {
        len += pair(PROPERTY_TAGS, t);
    }
    if let Some(k) = &msg.keys {
        len += pair(PROPERTY_KEYS, k);
    }
    len + msg
        .properties
        .iter()
        .map(|(k, v)| pair(k, v))
        .sum::<usize>()
}

/// The encoded size of `msg`, after checking it can be encoded at all.
pub fn encoded_len(msg: &MessageInput) -> Result<usize, EncodeError> {
    if msg.topic.is_empty() || msg.topic.len() > TOPIC_LEN_MAX {
        return Err(EncodeError::TopicLength(msg.topic.len()));
    }
    if let Some((k, _)) = msg
        .properties
        .iter()
        .find(|(k, _)| k == PROPERTY_TAGS || k == PROPERTY_KEYS)
    {
        return Err(EncodeError::ReservedProperty(k.clone()));
    }
    let props = properties_len(msg);
    let too_long = props > PROPERTIES_LEN_MAX
        || msg
            .tags
            .as_ref()
            .is_some_and(|t| t.len() > u16::MAX as usize)
        || msg
            .keys
            .as_ref()
            .is_some_and(|k| k.len() > u16::MAX as usize)
        || msg
            .properties
            .iter()
            .any(|(k, v)| k.len().max(v.len()) > u16::MAX as usize);
    if too_long {
        return Err(EncodeError::PropertiesTooLong(props));
    }
    if msg.body.len() > (u32::MAX as usize) / 2 {
        return Err(EncodeError::BodyTooLong(msg.body.len()));
    }
    Ok(HEADER_LEN + msg.body.len() + 1 + msg.topic.len() + 2 + props)
}

fn put_host(out: &mut [u8], host: &SocketAddr) {
    let v6 = match host.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out[..16].copy_from_slice(&v6.octets());
    out[16..18].copy_from_slice(&host.port().to_le_bytes());
}

fn get_host(bytes: &[u8]) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[..16]);
    let v6 = Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_le_bytes([bytes[16], bytes[17]]))
}

/// A little cursor that writes into a slice it was sized for.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn put_pair(&mut self, k: &str, v: &str) {
        // Lengths were checked by `encoded_len`.
        self.put(&(k.len() as u16).to_le_bytes());
        self.put(k.as_bytes());
        self.put(&(v.len() as u16).to_le_bytes());
        self.put(v.as_bytes());
    }
}

/// Encodes `msg` into `out`. Precondition: `encoded_len(msg)` returned `Ok(out.len())` (the
/// caller validates once, before reserving space for the record).
pub fn encode(msg: &MessageInput, stamp: &StoreStamp, out: &mut [u8]) {
    let len = out.len();
    debug_assert_eq!(
        encoded_len(msg),
        Ok(len),
        "encode: output must be exactly the record"
    );
    let props = properties_len(msg);
    {
        let h = &mut out[..HEADER_LEN];
        h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        h[4..8].copy_from_slice(&MESSAGE_MAGIC.to_le_bytes());
        h[12..16].copy_from_slice(&msg.queue_id.to_le_bytes());
        h[16..20].copy_from_slice(&msg.flag.to_le_bytes());
        h[20..28].copy_from_slice(&stamp.physical_offset.to_le_bytes());
        h[28..32].copy_from_slice(&msg.sys_flag.to_le_bytes());
        h[32..36].copy_from_slice(&msg.reconsume_times.to_le_bytes());
        h[36..44].copy_from_slice(&msg.born_timestamp_ms.to_le_bytes());
        h[44..52].copy_from_slice(&stamp.store_timestamp_ms.to_le_bytes());
        put_host(&mut h[52..70], &msg.born_host);
        put_host(&mut h[70..88], &stamp.store_host);
        h[88..96].copy_from_slice(&msg.prepared_transaction_offset.to_le_bytes());
        h[96..104].copy_from_slice(&stamp.queue_offset.to_le_bytes());
        h[104..108].copy_from_slice(&(msg.body.len() as u32).to_le_bytes());
    }
    let mut w = Writer {
        out,
        at: HEADER_LEN,
    };
    w.put(&msg.body);
    w.put(&[msg.topic.len() as u8]);
    w.put(msg.topic.as_bytes());
    w.put(&(props as u16).to_le_bytes());
    if let Some(t) = &msg.tags {
        w.put_pair(PROPERTY_TAGS, t);
    }
    if let Some(k) = &msg.keys {
        w.put_pair(PROPERTY_KEYS, k);
    }
    for (k, v) in &msg.properties {
        w.put_pair(k, v);
    }
    debug_assert_eq!(w.at, len);
    let crc = crc32fast::hash(&out[CRC_START..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a blank marker of `len` bytes (to the end of the segment) into `out[..8]`.
pub fn encode_blank(len: u32, out: &mut [u8]) {
    debug_assert!(len as u64 >= BLANK_LEN_MIN);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&BLANK_MAGIC.to_le_bytes());
}

/// Reads the total size field at the start of `bytes`, if there are 4 bytes.
pub fn peek_size(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes what lies at the start of `buf`, which sits at physical offset `offset` and has
/// `segment_left` bytes to the end of its segment. Never panics, whatever the bytes.
pub fn decode(buf: &Bytes, offset: u64, segment_left: u64) -> Result<Entry, DecodeError> {
    let available = buf.len() as u64;
    if available < BLANK_LEN_MIN {
        return Err(DecodeError::Truncated {
            needed: BLANK_LEN_MIN,
            available,
        });
    }
    let size = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let magic = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if magic == BLANK_MAGIC {
        if size as u64 != segment_left || (size as u64) < BLANK_LEN_MIN {
            return Err(DecodeError::BadSize(size));
        }
        return Ok(Entry::Blank { len: size });
    }
    if magic != MESSAGE_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if (size as usize) < HEADER_LEN + 4 || size as u64 > segment_left {
        return Err(DecodeError::BadSize(size));
    }
    if (size as u64) > available {
        return Err(DecodeError::Truncated {
            needed: size as u64,
            available,
        });
    }
    let rec = &buf[..size as usize];
    let stored = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]);
    let computed = crc32fast::hash(&rec[CRC_START..]);
    if stored != computed {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    let physical_offset = u64::from_le_bytes(rec[20..28].try_into().unwrap_or_default());
    if physical_offset != offset {
        return Err(DecodeError::OffsetMismatch {
            stored: physical_offset,
            actual: offset,
        });
    }
    decode_fields(buf.slice(..size as usize), size).map(Entry::Message)
}

fn decode_fields(rec: Bytes, size: u32) -> Result<StoredMessage, DecodeError> {
    let mut h = &rec[12..HEADER_LEN];
    let queue_id = h.get_u32_le();
    let flag = h.get_u32_le();
    let physical_offset = h.get_u64_le();
    let sys_flag = h.get_u32_le();
    let reconsume_times = h.get_u32_le();
    let born_timestamp_ms = h.get_i64_le();
    let store_timestamp_ms = h.get_i64_le();
    let born_host = get_host(&rec[52..70]);
    let store_host = get_host(&rec[70..88]);
    let mut h = &rec[88..HEADER_LEN];
    let prepared_transaction_offset = h.get_u64_le();
    let queue_offset = h.get_u64_le();
    let body_len = h.get_u32_le() as usize;

    let mut at = HEADER_LEN;
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, DecodeError> {
        let end = at.checked_add(n).filter(|&e| e <= rec.len());
        let end = end.ok_or(DecodeError::Malformed("field runs past the record end"))?;
        let r = *at..end;
        *at = end;
        Ok(r)
    };
    let body = rec.slice(take(&mut at, body_len)?);
    let topic_len = rec[take(&mut at, 1)?][0] as usize;
    let topic = utf8(&rec[take(&mut at, topic_len)?])?;
    let props_range = take(&mut at, 2)?;
    let props_len = u16::from_le_bytes([rec[props_range.start], rec[props_range.start + 1]]);
    let props = take(&mut at, props_len as usize)?;
    if at != size as usize {
        return Err(DecodeError::Malformed(
            "record size disagrees with its fields",
        ));
    }
    let properties = decode_properties(&rec[props])?;
    Ok(StoredMessage {
        total_size: size,
        queue_id,
        flag,
        physical_offset,
        sys_flag,
        reconsume_times,
        born_timestamp_ms,
        store_timestamp_ms,
        born_host,
        store_host,
        prepared_transaction_offset,
        queue_offset,
        body,
        topic,
        properties,
    })
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Malformed("string is not UTF-8"))
}

fn decode_properties(mut bytes: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut out = Vec::new();
    let next = |bytes: &mut &[u8]| -> Result<String, DecodeError> {
        if bytes.len() < 2 {
            return Err(DecodeError::Malformed("property length cut short"));
        }
        let n = bytes.get_u16_le() as usize;
        if bytes.len() < n {
            return Err(DecodeError::Malformed("property runs past its section"));
        }
        let s = utf8(&bytes[..n])?;
        bytes.advance(n);
        Ok(s)
    };
    while !bytes.is_empty() {
        let k = next(&mut bytes)?;
        let v = next(&mut bytes)?;
        out.push((k, v));
    }
    Ok(out)
}

/// Recovery's step for the CommitLog: what `avail` (the bytes from physical `offset` on,
/// `seg_left` to the segment end) holds. Never panics on any input.
pub fn scan_step(avail: &Bytes, offset: u64, seg_left: u64, record_max: u64) -> Step {
    if let Some(step) = frame_step(avail, seg_left, MESSAGE_MAGIC, record_max) {
        return step;
    }
    match decode(avail, offset, seg_left) {
        Ok(Entry::Message(m)) => Step::Record(m.total_size),
        Ok(Entry::Blank { .. }) => Step::SegmentFull,
        Err(e) => Step::Stop(Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(offset: u64) -> StoreStamp {
        StoreStamp {
            physical_offset: offset,
            queue_offset: offset / 3 + 7,
            store_timestamp_ms: 1_700_000_000_123,
            store_host: "10.1.2.3:10911".parse().unwrap(),
        }
    }

    fn encode_vec(msg: &MessageInput, offset: u64) -> Bytes {
        let mut out = vec![0u8; encoded_len(msg).unwrap()];
        encode(msg, &stamp(offset), &mut out);
        Bytes::from(out)
    }

    fn arb_message() -> impl Strategy<Value = MessageInput> {
        let host = (any::<[u8; 16]>(), any::<u16>(), any::<bool>()).prop_map(|(ip, port, v4)| {
            let ip = if v4 {
                IpAddr::V4([ip[0], ip[1], ip[2], ip[3]].into())
            } else {
                IpAddr::V6(Ipv6Addr::from(ip))
            };
            SocketAddr::new(ip, port)
        });
        (
            "[a-zA-Z0-9_%-]{1,60}",
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::option::of("[ -~]{0,20}"),
            proptest::option::of("[ -~]{0,20}"),
            proptest::collection::vec(("[a-z]{1,8}", "\\PC{0,16}"), 0..4),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<i64>(),
                any::<u64>(),
            ),
            host,
        )
            .prop_map(|(topic, queue_id, body, tags, keys, props, nums, host)| {
                // Filter out the reserved keys the generator could produce in upper case.
                let props = props
                    .into_iter()
                    .filter(|(k, _)| k != "TAGS" && k != "KEYS");
                MessageInput {
                    topic,
                    queue_id,
                    body: Bytes::from(body),
                    tags,
                    keys,
                    properties: props.collect(),
                    flag: nums.0,
                    sys_flag: nums.1,
                    reconsume_times: nums.2,
                    born_timestamp_ms: nums.3,
                    born_host: host,
                    prepared_transaction_offset: nums.4,
                }
            })
    }

    fn canonical_host(h: SocketAddr) -> SocketAddr {
        // A v4-mapped v6 address decodes as v4: that is the documented canonical form.
        match h.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), h.port()),
                None => h,
            },
            IpAddr::V4(_) => h,
        }
    }

    proptest! {
        #[test]
        fn round_trip(msg in arb_message(), offset in any::<u64>()) {
            let bytes = encode_vec(&msg, offset);
            let entry = decode(&bytes, offset, u64::MAX).unwrap();
            let Entry::Message(m) = entry else { panic!("not a message") };
            prop_assert_eq!(m.total_size as usize, bytes.len());
            prop_assert_eq!(&m.topic, &msg.topic);
            prop_assert_eq!(m.queue_id, msg.queue_id);
            prop_assert_eq!(&m.body, &msg.body);
            prop_assert_eq!(m.tags(), msg.tags.as_deref());
            prop_assert_eq!(m.keys(), msg.keys.as_deref());
            let user: Vec<_> = m.properties.iter()
                .filter(|(k, _)| k != PROPERTY_TAGS && k != PROPERTY_KEYS).cloned().collect();
            prop_assert_eq!(user, msg.properties.clone());
            prop_assert_eq!(m.flag, msg.flag);
            prop_assert_eq!(m.sys_flag, msg.sys_flag);
            prop_assert_eq!(m.reconsume_times, msg.reconsume_times);
            prop_assert_eq!(m.born_timestamp_ms, msg.born_timestamp_ms);
            prop_assert_eq!(m.born_host, canonical_host(msg.born_host));
            prop_assert_eq!(m.prepared_transaction_offset, msg.prepared_transaction_offset);
            prop_assert_eq!(m.queue_offset, offset / 3 + 7);
            prop_assert_eq!(m.physical_offset, offset);
            prop_assert_eq!(m.store_timestamp_ms, 1_700_000_000_123);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       offset in any::<u64>(), left in any::<u64>()) {
            let _ = decode(&Bytes::from(bytes), offset, left);
        }

        #[test]
        fn any_single_byte_flip_is_detected(msg in arb_message(), at in any::<prop::sample::Index>(),
                                            bit in 0u8..8) {
            let mut bytes = encode_vec(&msg, 4096).to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(decode(&Bytes::from(bytes), 4096, u64::MAX).is_err());
        }

        #[test]
        fn every_truncation_is_detected(msg in arb_message(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_vec(&msg, 0);
            let cut = cut.index(bytes.len());
            let r = decode(&bytes.slice(..cut), 0, u64::MAX);
            prop_assert!(r.is_err(), "cut at {} of {} decoded", cut, bytes.len());
        }
    }

    #[test]
    fn stale_record_at_wrong_offset_is_rejected() {
        let msg = MessageInput::new("t", 1, &b"hello"[..]);
        let bytes = encode_vec(&msg, 8192);
        let err = decode(&bytes, 4096, u64::MAX).unwrap_err();
        assert_eq!(
            err,
            DecodeError::OffsetMismatch {
                stored: 8192,
                actual: 4096
            }
        );
    }

    #[test]
    fn blank_marker_must_reach_segment_end() {
        let mut out = [0u8; 16];
        encode_blank(64, &mut out);
        let b = Bytes::copy_from_slice(&out);
        assert_eq!(decode(&b, 0, 64).unwrap(), Entry::Blank { len: 64 });
        assert!(decode(&b, 0, 65).is_err());
    }

    #[test]
    fn zeroes_are_not_a_record() {
        let b = Bytes::from(vec![0u8; 256]);
        assert!(matches!(
            decode(&b, 0, 1 << 20),
            Err(DecodeError::BadMagic(0))
        ));
    }

    #[test]
    fn reserved_and_oversized_inputs_are_refused() {
        let m = MessageInput::new("", 0, &b""[..]);
        assert_eq!(encoded_len(&m), Err(EncodeError::TopicLength(0)));
        let m = MessageInput::new("t", 0, &b""[..]).with_property("TAGS", "x");
        assert!(matches!(
            encoded_len(&m),
            Err(EncodeError::ReservedProperty(_))
        ));
        let m = MessageInput::new("t", 0, &b""[..]).with_property("k", "v".repeat(70_000));
        assert!(matches!(
            encoded_len(&m),
            Err(EncodeError::PropertiesTooLong(_))
        ));
    }
}
