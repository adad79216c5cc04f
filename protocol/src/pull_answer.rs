//! A pull's answer encoded straight from borrowed message parts: the same bytes as
//! [`PullMessageResponse`](crate::message::PullMessageResponse) with its `WireMessage`s, but
//! with no owned string, no property list and no intermediate message per entry, into one
//! buffer sized up front. A broker answering pulls of hundreds of messages spends most of its
//! time here otherwise.

use bytes::{BufMut, BytesMut};

use crate::codes::Status;
use crate::frame::{Frame, Header};
use crate::wire::put_str;

/// One message of a pull's answer, borrowed from wherever it is stored. Field meanings are
/// `WireMessage`'s; `properties` excludes the ones with their own fields.
#[derive(Debug, Clone)]
pub struct MessageParts<'a, P> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub msg_id: &'a str,
    pub unique_id: &'a str,
    pub tags: &'a str,
    pub keys: &'a str,
    pub flags: u32,
    pub sys_flag: u32,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub born_host: &'a str,
    pub store_host: &'a str,
    pub reconsume_times: u32,
    /// Walked twice: once to count, once to write.
    pub properties: P,
    pub body: &'a [u8],
}

/// A pull answer being built: the offsets first, then messages appended one by one, the
/// message count patched in at the end.
#[derive(Debug)]
pub struct PullAnswer {
    fields: BytesMut,
    count: u32,
    count_at: usize,
}

impl PullAnswer {
    /// An answer with room for `capacity` bytes of fields (an estimate: it grows if short).
    pub fn new(next_begin_offset: u64, min_offset: u64, max_offset: u64, capacity: usize) -> Self {
        let mut fields = BytesMut::with_capacity(capacity.max(28));
        fields.put_u64(next_begin_offset);
        fields.put_u64(min_offset);
        fields.put_u64(max_offset);
        let count_at = fields.len();
        fields.put_u32(0);
        PullAnswer {
            fields,
            count: 0,
            count_at,
        }
    }

    /// Appends one message.
    pub fn push<'a, P>(&mut self, m: &MessageParts<'a, P>)
    where
        P: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        let w = &mut self.fields;
        put_str(w, m.topic);
        w.put_u32(m.queue_id);
        w.put_u64(m.queue_offset);
        put_str(w, m.msg_id);
        put_str(w, m.unique_id);
        put_str(w, m.tags);
        put_str(w, m.keys);
        w.put_u32(m.flags);
        w.put_u32(m.sys_flag);
        w.put_i64(m.born_timestamp_ms);
        w.put_i64(m.store_timestamp_ms);
        put_str(w, m.born_host);
        put_str(w, m.store_host);
        w.put_u32(m.reconsume_times);
        w.put_u32(m.properties.clone().count() as u32);
        for (k, v) in m.properties.clone() {
            put_str(w, k);
            put_str(w, v);
        }
        w.put_u32(m.body.len() as u32);
        w.put_slice(m.body);
        self.count += 1;
    }

    /// Messages appended so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The response frame to `request` with `status`.
    pub fn finish(mut self, request: &Header, status: Status) -> Frame {
        let at = self.count_at;
        self.fields[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        Frame::new(
            request.response_to(status),
            self.fields.freeze(),
            bytes::Bytes::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::codes::Opcode;
    use crate::message::{response, PullMessageResponse, WireMessage};
    use crate::wire::gen::{Gen, Rng};

    fn parts(m: &WireMessage) -> MessageParts<'_, impl Iterator<Item = (&str, &str)> + Clone> {
        MessageParts {
            topic: &m.topic,
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            msg_id: &m.msg_id,
            unique_id: &m.unique_id,
            tags: &m.tags,
            keys: &m.keys,
            flags: m.flags,
            sys_flag: m.sys_flag,
            born_timestamp_ms: m.born_timestamp_ms,
            store_timestamp_ms: m.store_timestamp_ms,
            born_host: &m.born_host,
            store_host: &m.store_host,
            reconsume_times: m.reconsume_times,
            properties: m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            body: &m.body,
        }
    }

    proptest! {
        #[test]
        fn encodes_the_same_bytes_as_the_owned_response(seed in any::<u64>(), capacity in 0usize..4096) {
            let mut rng = Rng(seed | 1);
            let fields = PullMessageResponse::gen(&mut rng);
            let h = Header::request(Opcode::PullMessage, 7);
            let owned = response(&h, Status::Success, &fields);
            let mut answer = PullAnswer::new(
                fields.next_begin_offset,
                fields.min_offset,
                fields.max_offset,
                capacity,
            );
            for m in &fields.messages {
                answer.push(&parts(m));
            }
            prop_assert_eq!(answer.len(), fields.messages.len());
            let built = answer.finish(&h, Status::Success);
            prop_assert_eq!(built.header, owned.header);
            prop_assert_eq!(&built.fields, &owned.fields);
            prop_assert_eq!(built.body, Bytes::new());
        }
    }
}
