//! ShardMQ wire protocol: a sans-IO codec shared by server and client.
//!
//! Bytes in, frames out, and back: no sockets, no runtime. Three layers, each documented byte
//! by byte in `docs/format.md`:
//! - [`frame`]: length-prefixed frames with a fixed header (magic, version, flags, opcode,
//!   status, request id) and a [`FrameDecoder`] that checks every length against its limit
//!   before anything is reserved;
//! - [`codes`]: the opcode and status tables;
//! - [`wire`] and [`message`]: the typed fields of every request and response;
//! - [`groups`]: the names a consumer group's broker and clients share (retry and
//!   dead-letter topics);
//! - [`shards`]: which shard of a broker owns a queue, for clients that send each queue's
//!   requests to its owner's address.
//!
//! A [`FrameError`] means the byte stream lost its framing (close the connection); a
//! [`RequestError`] means one request is bad (answer it with its status and go on).

pub mod codes;
pub mod frame;
pub mod groups;
pub mod message;
pub mod pull_answer;
pub mod shards;
pub mod wire;

pub use codes::{Opcode, Status};
pub use frame::{Frame, FrameDecoder, FrameError, Header, FRAME_MAX_DEFAULT};
pub use message::{
    decode_reply, error_response, response, Reply, ReplyError, Request, RequestError,
};
pub use wire::{FieldError, Wire};
