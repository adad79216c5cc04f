//! Frames: a length prefix, a fixed header, the opcode's typed fields, and a body.
//!
//! ```text
//! offset  size  field
//!      0     4  length      u32 BE: bytes after this field (header rest + fields + body)
//!      4     2  magic       0x53 0x4D ("SM")
//!      6     1  version     1
//!      7     1  flags       bit 0 response, bit 1 oneway (a request's only); other bits 0
//!      8     2  opcode      u16 BE (a response repeats its request's)
//!     10     2  status      u16 BE (0 in requests)
//!     12     8  request id  u64 BE (a response repeats its request's)
//!     20     4  fields len  u32 BE
//!     24     F  fields      the opcode's typed fields (`message.rs`)
//!   24+F     B  body        the rest: reserved, empty in version 1 (requests with a
//!                           body are refused; message bodies travel in the fields)
//! ```
//!
//! The decoder is sans-IO: it looks at bytes the caller read and takes whole frames off the
//! front. Lengths are checked against the configured maximum before the caller is told to
//! read more, so a hostile length never makes anyone reserve memory for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codes::{flags, Opcode, Status};

pub const MAGIC: u16 = 0x534D;
pub const VERSION: u8 = 1;
/// The length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Header bytes after the length prefix, up to the fields.
pub const HEADER_BYTES: usize = 20;
/// A frame's length (the prefix's value) at most, unless configured otherwise.
pub const FRAME_MAX_DEFAULT: u32 = 16 << 20;

/// Why bytes are not a frame. The connection's framing is lost: close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {length} is shorter than the {HEADER_BYTES}-byte header")]
    TooShort { length: u32 },
    #[error("frame length {length} is over the limit of {max} bytes")]
    TooLarge { length: u32, max: u32 },
    #[error("bad magic {found:#06x} (expected {MAGIC:#06x}): not a ShardMQ peer")]
    BadMagic { found: u16 },
    #[error("protocol version {found} is not supported (this side speaks {VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("flag bits {bits:#04x} are unknown or contradict each other (a oneway response)")]
    UnknownFlags { bits: u8 },
    #[error("fields length {fields} runs past the frame's {available} bytes after the header")]
    FieldsOverrun { fields: u32, available: u32 },
}

/// The fixed part of a frame. Opcode and status stay raw numbers so that a frame with an
/// unknown opcode still decodes and can be answered (`RequestCodeNotSupported`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub opcode: u16,
    pub status: u16,
    pub request_id: u64,
}

impl Header {
    pub fn request(opcode: Opcode, request_id: u64) -> Self {
        Header {
            flags: 0,
            opcode: opcode.as_u16(),
            status: Status::Success.as_u16(),
            request_id,
        }
    }

    pub fn oneway(opcode: Opcode, request_id: u64) -> Self {
        Header {
            flags: flags::ONEWAY,
            ..Header::request(opcode, request_id)
        }
    }

    /// The response header to this request's.
    pub fn response_to(&self, status: Status) -> Self {
        Header {
            flags: flags::RESPONSE,
            opcode: self.opcode,
            status: status.as_u16(),
            request_id: self.request_id,
        }
    }

    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flags & flags::ONEWAY != 0
    }

    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u16(self.opcode)
    }

    pub fn status(&self) -> Option<Status> {
        Status::from_u16(self.status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub fields: Bytes,
    pub body: Bytes,
}

impl Frame {
    pub fn new(header: Header, fields: Bytes, body: Bytes) -> Self {
        Frame {
            header,
            fields,
            body,
        }
    }

    /// The length prefix's value.
    pub fn length(&self) -> usize {
        HEADER_BYTES + self.fields.len() + self.body.len()
    }

    /// Bytes on the wire, prefix included.
    pub fn encoded_len(&self) -> usize {
        LENGTH_BYTES + self.length()
    }

    /// Appends the frame to `dst`. The caller keeps frames under the peer's limit (the
    /// decoder on the other side refuses larger ones).
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        self.encode_head(dst);
        dst.put_slice(&self.fields);
        dst.put_slice(&self.body);
    }

    /// Appends the length prefix and the header, the 24 bytes before the fields: a writer
    /// may send them, then `fields` and `body` as they are, without copying those.
    pub fn encode_head(&self, dst: &mut BytesMut) {
        put_head(dst, self.length(), &self.header, self.fields.len());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }
}

/// Appends a frame with `header` whose fields `put_fields` writes straight into `dst` (and
/// returns their length), with no body: no intermediate buffer, no copy. Returns the frame's
/// encoded length (prefix included).
pub fn encode_fields_frame(
    header: &Header,
    dst: &mut BytesMut,
    put_fields: impl FnOnce(&mut BytesMut),
) -> usize {
    let start = dst.len();
    // Both lengths are patched once the fields are written.
    put_head(dst, 0, header, 0);
    let fields_at = dst.len();
    put_fields(dst);
    let fields = dst.len() - fields_at;
    let length = dst.len() - start - LENGTH_BYTES;
    debug_assert!(length <= u32::MAX as usize && fields <= u32::MAX as usize);
    dst[start..start + LENGTH_BYTES].copy_from_slice(&(length as u32).to_be_bytes());
    dst[fields_at - 4..fields_at].copy_from_slice(&(fields as u32).to_be_bytes());
    dst.len() - start
}

/// The length prefix (`length`: the bytes after it) and the header (`fields` bytes of fields).
fn put_head(dst: &mut BytesMut, length: usize, header: &Header, fields: usize) {
    debug_assert!(length <= u32::MAX as usize && fields <= u32::MAX as usize);
    dst.put_u32(length as u32);
    dst.put_u16(MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(header.flags);
    dst.put_u16(header.opcode);
    dst.put_u16(header.status);
    dst.put_u64(header.request_id);
    dst.put_u32(fields as u32);
}

/// Takes frames off the front of a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_length: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(FRAME_MAX_DEFAULT)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames whose length prefix exceeds `max_length`.
    pub fn new(max_length: u32) -> Self {
        FrameDecoder {
            max_length: max_length.max(HEADER_BYTES as u32),
        }
    }

    pub fn max_length(&self) -> u32 {
        self.max_length
    }

    /// Bytes the frame at the front of `src` needs in all, once its header is there: a
    /// reader may reserve that much (never more than the limit allows). `Ok(None)` while
    /// the header is incomplete.
    pub fn needed(&self, src: &[u8]) -> Result<Option<usize>, FrameError> {
        if src.len() < LENGTH_BYTES + HEADER_BYTES {
            // Refuse an impossible length as soon as its 4 bytes arrived.
            if src.len() >= LENGTH_BYTES {
                self.check_length(u32::from_be_bytes([src[0], src[1], src[2], src[3]]))?;
            }
            return Ok(None);
        }
        let header = self.check_header(src)?;
        Ok(Some(LENGTH_BYTES + header as usize))
    }

    fn check_length(&self, length: u32) -> Result<(), FrameError> {
        if length < HEADER_BYTES as u32 {
            return Err(FrameError::TooShort { length });
        }
        if length > self.max_length {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_length,
            });
        }
        Ok(())
    }

    /// Validates the prefix and header at the front of `src` (which holds at least both);
    /// returns the length prefix's value.
    fn check_header(&self, src: &[u8]) -> Result<u32, FrameError> {
        let mut h = &src[..LENGTH_BYTES + HEADER_BYTES];
        let length = h.get_u32();
        self.check_length(length)?;
        let magic = h.get_u16();
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = h.get_u8();
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let fl = h.get_u8();
        let response_and_oneway = flags::RESPONSE | flags::ONEWAY;
        if fl & !flags::KNOWN != 0 || fl & response_and_oneway == response_and_oneway {
            return Err(FrameError::UnknownFlags { bits: fl });
        }
        h.advance(2 + 2 + 8);
        let fields = h.get_u32();
        let available = length - HEADER_BYTES as u32;
        if fields > available {
            return Err(FrameError::FieldsOverrun { fields, available });
        }
        Ok(length)
    }

    /// Takes one whole frame off the front of `src`, or `Ok(None)` if more bytes are needed.
    /// The frame's fields and body share `src`'s memory.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(total) = self.needed(src)? else {
            return Ok(None);
        };
        if src.len() < total {
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(LENGTH_BYTES + 2 + 1);
        let flags = frame.get_u8();
        let opcode = frame.get_u16();
        let status = frame.get_u16();
        let request_id = frame.get_u64();
        let fields_len = frame.get_u32() as usize;
        let fields = frame.split_to(fields_len);
        Ok(Some(Frame {
            header: Header {
                flags,
                opcode,
                status,
                request_id,
            },
            fields,
            body: frame,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Frame {
        Frame::new(
            Header::request(Opcode::SendMessage, 42),
            Bytes::from_static(b"fields"),
            Bytes::from_static(b"the body"),
        )
    }

    #[test]
    fn decodes_byte_by_byte_and_back_to_back() {
        let a = sample();
        let b = Frame::new(
            a.header.response_to(Status::SystemBusy),
            Bytes::new(),
            Bytes::new(),
        );
        let mut wire = BytesMut::new();
        a.encode(&mut wire);
        b.encode(&mut wire);
        let d = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![a, b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_lengths_as_soon_as_the_prefix_arrives() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[0, 0, 4, 1][..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                length: 1025,
                max: 1024
            })
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 19][..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::TooShort { length: 19 }));
    }

    #[test]
    fn refuses_bad_headers() {
        let d = FrameDecoder::default();
        let good = sample().to_bytes();
        let bad = |at: usize, v: u8| {
            let mut b = BytesMut::from(&good[..]);
            b[at] = v;
            d.decode(&mut b)
        };
        assert_eq!(bad(4, b'X'), Err(FrameError::BadMagic { found: 0x584D }));
        assert_eq!(bad(6, 9), Err(FrameError::UnsupportedVersion { found: 9 }));
        assert_eq!(bad(7, 0x80), Err(FrameError::UnknownFlags { bits: 0x80 }));
        assert!(matches!(
            bad(23, 200),
            Err(FrameError::FieldsOverrun { fields: 200, .. })
        ));
    }

    proptest! {
        #[test]
        fn any_frame_round_trips(
            flags in 0u8..=2, opcode: u16, status: u16, id: u64,
            fields in proptest::collection::vec(any::<u8>(), 0..300),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let f = Frame::new(
                Header { flags, opcode, status, request_id: id },
                Bytes::from(fields),
                Bytes::from(body),
            );
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            let back = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(back, f);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_take_more_than_they_have(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            max in 20u32..100_000,
        ) {
            let d = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.len();
                match d.decode(&mut buf) {
                    Ok(Some(f)) => {
                        prop_assert!(f.length() <= max as usize);
                        prop_assert_eq!(before - buf.len(), f.encoded_len());
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if let Ok(Some(n)) = d.needed(&buf) {
                prop_assert!(n <= LENGTH_BYTES + max as usize);
            }
        }
    }
}
