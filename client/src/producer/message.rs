//! What a producer sends ([`Message`]) and what it gets back ([`SendReceipt`]); the checks a
//! message passes before it goes on the wire, and its wire form.

use bytes::Bytes;
use shardmq_protocol::message::{BatchEntry, SendMessageRequest};

use crate::error::ClientError;

/// The longest topic name.
pub const TOPIC_MAX_LEN: usize = 127;

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    /// One tag (consumers filter on it), if any.
    pub tags: Option<String>,
    /// Keys to look the message up by.
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    /// RocketMQ delay level (1 = 1 s, 2 = 5 s, …); 0 for none.
    pub delay_level: u32,
    /// Deliver at this time (ms since the Unix epoch) instead of now.
    pub deliver_at_ms: Option<i64>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            body: body.into(),
            ..Message::default()
        }
    }

    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = Some(tags.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    pub fn with_delay_level(mut self, level: u32) -> Self {
        self.delay_level = level;
        self
    }

    pub fn with_deliver_at_ms(mut self, at_ms: i64) -> Self {
        self.deliver_at_ms = Some(at_ms);
        self
    }

    /// Bytes counted against the maximum message size: body, tags, keys and properties.
    pub fn size(&self) -> usize {
        self.body.len()
            + self.tags.as_ref().map_or(0, String::len)
            + self.keys.iter().map(|k| k.len() + 1).sum::<usize>()
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    fn keys_joined(&self) -> String {
        self.keys.join(" ")
    }

    /// Refuses what the broker would refuse (or the codec would cut): a bad topic name,
    /// overlong strings, a bad delivery time, a message over `max_size`.
    pub fn validate(&self, max_size: usize) -> Result<(), ClientError> {
        validate_topic(&self.topic)?;
        let size = self.size();
        if size > max_size {
            return Err(ClientError::MessageTooLarge {
                size,
                max: max_size,
            });
        }
        let invalid = |what: String| Err(ClientError::InvalidMessage(what));
        if self.keys.iter().any(|k| k.is_empty() || k.contains(' ')) {
            return invalid("a key is empty or contains a space".into());
        }
        let long = |s: &str| s.len() > u16::MAX as usize;
        if self.tags.as_deref().is_some_and(long) || long(&self.keys_joined()) {
            return invalid(format!("tags or keys over {} bytes", u16::MAX));
        }
        if self
            .properties
            .iter()
            .any(|(k, v)| k.is_empty() || long(k) || long(v))
        {
            return invalid(format!(
                "a property name is empty, or a name or value is over {} bytes",
                u16::MAX
            ));
        }
        if self.properties.len() > shardmq_protocol::wire::LIST_MAX as usize {
            return invalid("too many properties".into());
        }
        if let Some(at) = self.deliver_at_ms {
            if at <= 0 {
                return invalid(format!("deliver_at_ms {at} is not a time"));
            }
        }
        Ok(())
    }

    /// The wire request, with `topic`, queue id and group filled in later per try.
    pub(crate) fn to_request(&self, unique_id: String, born_ms: i64) -> SendMessageRequest {
        SendMessageRequest {
            producer_group: String::new(),
            topic: self.topic.clone(),
            queue_id: 0,
            unique_id,
            tags: self.tags.clone().unwrap_or_default(),
            keys: self.keys_joined(),
            flags: 0,
            sys_flag: 0,
            born_timestamp_ms: born_ms,
            reconsume_times: 0,
            delay_level: self.delay_level,
            deliver_at_ms: self.deliver_at_ms.unwrap_or(0),
            properties: self.properties.clone(),
            body: self.body.clone(),
        }
    }

    pub(crate) fn to_batch_entry(&self, unique_id: String, born_ms: i64) -> BatchEntry {
        BatchEntry {
            unique_id,
            tags: self.tags.clone().unwrap_or_default(),
            keys: self.keys_joined(),
            flags: 0,
            born_timestamp_ms: born_ms,
            properties: self.properties.clone(),
            body: self.body.clone(),
        }
    }
}

/// Checks a topic name: 1..=127 bytes of `A-Z a-z 0-9 _ % | -`.
pub fn validate_topic(topic: &str) -> Result<(), ClientError> {
    let ok = !topic.is_empty()
        && topic.len() <= TOPIC_MAX_LEN
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'%' | b'|' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClientError::InvalidMessage(format!(
            "topic {topic:?} is not 1..={TOPIC_MAX_LEN} bytes of A-Z a-z 0-9 _ % | -"
        )))
    }
}

/// Checks a batch: not empty, one topic, no delays, under `max_size` in all.
pub fn validate_batch(messages: &[Message], max_size: usize) -> Result<(), ClientError> {
    let Some(first) = messages.first() else {
        return Err(ClientError::InvalidMessage("an empty batch".into()));
    };
    for m in messages {
        m.validate(max_size)?;
        if m.topic != first.topic {
            return Err(ClientError::InvalidMessage(format!(
                "a batch mixes topics {:?} and {:?}",
                first.topic, m.topic
            )));
        }
        if m.delay_level != 0 || m.deliver_at_ms.is_some() {
            return Err(ClientError::InvalidMessage(
                "a batch cannot hold delayed messages".into(),
            ));
        }
    }
    let size: usize = messages.iter().map(Message::size).sum();
    if size > max_size {
        return Err(ClientError::MessageTooLarge {
            size,
            max: max_size,
        });
    }
    Ok(())
}

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The broker's message id (encodes the store address).
    pub msg_id: String,
    /// The client-generated unique id sent with the message.
    pub unique_id: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub queue_offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked() {
        assert!(validate_topic("Topic_1%a|b-c").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(128)] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic(&"x".repeat(127)).is_ok());
    }

    #[test]
    fn messages_are_checked() {
        let m = Message::new("T", "12345").with_tags("tag").with_key("k1");
        assert_eq!(m.size(), 5 + 3 + 3);
        assert!(m.validate(11).is_ok());
        assert!(matches!(
            m.validate(10),
            Err(ClientError::MessageTooLarge { size: 11, max: 10 })
        ));
        assert!(m.clone().with_key("a b").validate(100).is_err());
        assert!(m.clone().with_property("", "v").validate(100).is_err());
        let long = "v".repeat(70_000);
        assert!(m
            .clone()
            .with_property("k", long)
            .validate(1 << 20)
            .is_err());
        assert!(m.clone().with_deliver_at_ms(0).validate(100).is_err());
        assert!(m.clone().with_deliver_at_ms(1).validate(100).is_ok());
    }

    #[test]
    fn batches_are_checked() {
        let a = Message::new("T", "aa");
        assert!(validate_batch(&[], 10).is_err());
        assert!(validate_batch(&[a.clone(), a.clone()], 4).is_ok());
        assert!(matches!(
            validate_batch(&[a.clone(), a.clone(), a.clone()], 4),
            Err(ClientError::MessageTooLarge { size: 6, max: 4 })
        ));
        assert!(validate_batch(&[a.clone(), Message::new("U", "b")], 10).is_err());
        assert!(validate_batch(&[a.clone().with_delay_level(1)], 10).is_err());
    }

    #[test]
    fn the_wire_form_carries_every_field() {
        let m = Message::new("T", "body")
            .with_tags("tg")
            .with_key("k1")
            .with_key("k2")
            .with_property("p", "v")
            .with_delay_level(3)
            .with_deliver_at_ms(99);
        let r = m.to_request("U1".into(), 5);
        assert_eq!(
            (r.unique_id.as_str(), r.tags.as_str(), r.keys.as_str()),
            ("U1", "tg", "k1 k2")
        );
        assert_eq!(
            (r.delay_level, r.deliver_at_ms, r.born_timestamp_ms),
            (3, 99, 5)
        );
        assert_eq!(r.properties, vec![("p".to_string(), "v".to_string())]);
        assert_eq!(&r.body[..], b"body");
        let e = m.to_batch_entry("U2".into(), 6);
        assert_eq!((e.unique_id.as_str(), e.keys.as_str()), ("U2", "k1 k2"));
    }
}
