//! Delayed messages, the pure part: the delay levels, where a delayed put is stored and when
//! it is due, the wheel of minute slots for exact delivery times, and what a delivered copy
//! looks like.
//!
//! A put with delay level `L > 0` (clamped to the last level) is stored under
//! [`SCHEDULE_TOPIC`], queue `L − 1`: each level's queue is in due order, since every message
//! in it waits the same time. A put with an exact delivery time goes to the queue of the
//! minute it is due in: queue `levels + (due_minute mod slots)`, a wheel of `slots` minutes
//! that covers the longest delay allowed. Either way the real topic and queue travel in
//! properties and the due time in the queue entry's time field, so the service never reads a
//! body to learn when a message is due.

use std::time::Duration;

use crate::record::MessageInput;

/// The topic delayed messages wait in (RocketMQ's name).
pub const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";
/// Property: the delay level asked for (RocketMQ's `DELAY`).
pub const PROP_DELAY_LEVEL: &str = "DELAY";
/// Property: the exact delivery time asked for, ms since the epoch.
pub const PROP_DELIVER_AT: &str = "DELIVER_AT_MS";
/// Property: when the message is due, ms since the epoch (set by the store).
pub const PROP_DUE: &str = "DUE_MS";
/// Properties: where the message goes when due.
pub const PROP_REAL_TOPIC: &str = "REAL_TOPIC";
pub const PROP_REAL_QUEUE: &str = "REAL_QID";
/// Property of a delivered copy: the message id of the delayed original.
pub const PROP_ORIGIN_MSG_ID: &str = "ORIGIN_MSG_ID";

/// A wheel slot spans one minute.
pub const SLOT_MS: i64 = 60_000;

/// RocketMQ's 18 levels.
pub const DEFAULT_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("delay level {0:?} is not a duration (like 500ms, 1s, 5m, 2h, 1d)")]
    BadLevel(String),
    #[error("no delay levels configured")]
    NoLevels,
    #[error(
        "delivery time {deliver_at_ms} is {ahead_ms} ms ahead, past the longest delay allowed \
         ({max_ms} ms, schedule.max_delay_ms)"
    )]
    TooFar {
        deliver_at_ms: i64,
        ahead_ms: i64,
        max_ms: u64,
    },
    #[error("property {key} = {value:?} is not a number")]
    BadProperty { key: &'static str, value: String },
}

/// Parses `"1s 5s 10s 1m 2h"` (units ms, s, m, h, d).
pub fn parse_levels(spec: &str) -> Result<Vec<Duration>, ScheduleError> {
    let levels: Vec<Duration> = spec
        .split_whitespace()
        .map(|l| parse_duration(l).ok_or_else(|| ScheduleError::BadLevel(l.to_owned())))
        .collect::<Result<_, _>>()?;
    if levels.is_empty() {
        return Err(ScheduleError::NoLevels);
    }
    Ok(levels)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// The wheel: levels, then one queue per minute slot.
#[derive(Debug, Clone)]
pub struct Plan {
    pub levels: Vec<Duration>,
    pub max_delay_ms: u64,
    /// Minute slots in the wheel: enough that no two pending minutes share one.
    pub slots: u32,
}

impl Plan {
    pub fn new(levels: Vec<Duration>, max_delay_ms: u64) -> Plan {
        // Slots for the longest delay plus the minutes the service may still be draining
        // (the current one and two behind) and one ahead.
        let slots = (max_delay_ms / SLOT_MS as u64) as u32 + 4;
        Plan {
            levels,
            max_delay_ms,
            slots,
        }
    }

    /// Queues of the schedule topic.
    pub fn queues(&self) -> u32 {
        self.levels.len() as u32 + self.slots
    }

    /// The queue of a minute (`due_ms / SLOT_MS`).
    pub fn slot_queue(&self, minute: i64) -> u32 {
        self.levels.len() as u32 + minute.rem_euclid(self.slots as i64) as u32
    }

    /// Rewrites a put that asks for a delay to wait in the schedule topic; `Ok(None)` for a
    /// put without one. `now_ms` is the put's time.
    pub fn rewrite(
        &self,
        msg: &mut MessageInput,
        now_ms: i64,
    ) -> Result<Option<i64>, ScheduleError> {
        let level = take_prop(msg, PROP_DELAY_LEVEL)?;
        let at = take_prop(msg, PROP_DELIVER_AT)?;
        let (queue, due) = match (level, at) {
            (_, Some(at)) => {
                let ahead = at.saturating_sub(now_ms);
                if ahead > self.max_delay_ms as i64 {
                    return Err(ScheduleError::TooFar {
                        deliver_at_ms: at,
                        ahead_ms: ahead,
                        max_ms: self.max_delay_ms,
                    });
                }
                // A time already past is due now, in the current minute's slot.
                let due = at.max(now_ms);
                (self.slot_queue(due.div_euclid(SLOT_MS)), due)
            }
            (Some(l), None) if l > 0 => {
                let l = (l as usize).min(self.levels.len());
                let due = now_ms + self.levels[l - 1].as_millis() as i64;
                ((l - 1) as u32, due)
            }
            _ => return Ok(None),
        };
        let real_topic = std::mem::replace(&mut msg.topic, SCHEDULE_TOPIC.to_owned());
        let real_queue = std::mem::replace(&mut msg.queue_id, queue);
        msg.properties.push((PROP_REAL_TOPIC.into(), real_topic));
        msg.properties
            .push((PROP_REAL_QUEUE.into(), real_queue.to_string()));
        msg.properties.push((PROP_DUE.into(), due.to_string()));
        Ok(Some(due))
    }
}

fn take_prop(msg: &mut MessageInput, key: &'static str) -> Result<Option<i64>, ScheduleError> {
    let Some(i) = msg.properties.iter().position(|(k, _)| k == key) else {
        return Ok(None);
    };
    let (_, value) = msg.properties.remove(i);
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|_| ScheduleError::BadProperty { key, value })
}

/// The time a queue entry carries: for the schedule topic, the due time from the record's
/// properties; for every other topic, the store time.
pub fn entry_time<'a>(
    topic: &str,
    mut props: impl Iterator<Item = (&'a str, &'a str)>,
    store_ms: i64,
) -> i64 {
    if topic != SCHEDULE_TOPIC {
        return store_ms;
    }
    props
        .find(|(k, _)| *k == PROP_DUE)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(store_ms)
}

/// Where a due message goes and the properties its copy carries.
pub type Delivery = (String, u32, Vec<(String, String)>);

/// The message to deliver for a due one: back to its real topic and queue, without the
/// schedule properties, with the original's id. `None` if the properties are missing.
pub fn delivered(properties: &[(String, String)], msg_id: &str) -> Option<Delivery> {
    let get = |k: &str| properties.iter().find(|(p, _)| p == k).map(|(_, v)| v);
    let topic = get(PROP_REAL_TOPIC)?.clone();
    let queue: u32 = get(PROP_REAL_QUEUE)?.parse().ok()?;
    let mut props: Vec<(String, String)> = properties
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                PROP_REAL_TOPIC | PROP_REAL_QUEUE | PROP_DUE | PROP_DELAY_LEVEL | PROP_DELIVER_AT
            )
        })
        .cloned()
        .collect();
    if !props.iter().any(|(k, _)| k == PROP_ORIGIN_MSG_ID) {
        props.push((PROP_ORIGIN_MSG_ID.into(), msg_id.to_owned()));
    }
    Some((topic, queue, props))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new(parse_levels(DEFAULT_LEVELS).unwrap(), 7 * 86_400_000)
    }

    #[test]
    fn levels_parse_and_bad_ones_are_named() {
        let l = parse_levels(DEFAULT_LEVELS).unwrap();
        assert_eq!(l.len(), 18);
        assert_eq!(l[0], Duration::from_secs(1));
        assert_eq!(l[17], Duration::from_secs(7200));
        assert_eq!(
            parse_levels("10ms 1d").unwrap()[1],
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_levels("1s 3x"),
            Err(ScheduleError::BadLevel("3x".into()))
        );
        assert_eq!(parse_levels(" "), Err(ScheduleError::NoLevels));
    }

    #[test]
    fn a_level_put_waits_in_its_level_queue_and_over_large_levels_clamp() {
        let p = plan();
        let mut m = MessageInput::new("Orders", 3, "b");
        m.properties.push((PROP_DELAY_LEVEL.into(), "3".into()));
        assert_eq!(p.rewrite(&mut m, 1_000).unwrap(), Some(11_000));
        assert_eq!((m.topic.as_str(), m.queue_id), (SCHEDULE_TOPIC, 2));
        let (topic, queue, props) = delivered(&m.properties, "ID").unwrap();
        assert_eq!((topic.as_str(), queue), ("Orders", 3));
        assert_eq!(
            props,
            vec![(PROP_ORIGIN_MSG_ID.to_string(), "ID".to_string())]
        );
        let mut far = MessageInput::new("T", 0, "b");
        far.properties.push((PROP_DELAY_LEVEL.into(), "99".into()));
        assert_eq!(p.rewrite(&mut far, 0).unwrap(), Some(7_200_000));
        assert_eq!(far.queue_id, 17);
        let mut plain = MessageInput::new("T", 0, "b");
        assert_eq!(p.rewrite(&mut plain, 0).unwrap(), None);
        assert_eq!(plain.topic, "T");
    }

    #[test]
    fn exact_times_go_to_their_minute_slot_and_too_far_is_refused() {
        let p = plan();
        let now = 1_700_000_000_000;
        let mut m = MessageInput::new("T", 1, "b");
        m.properties
            .push((PROP_DELIVER_AT.into(), (now + 90_000).to_string()));
        assert_eq!(p.rewrite(&mut m, now).unwrap(), Some(now + 90_000));
        assert_eq!(m.queue_id, p.slot_queue((now + 90_000) / SLOT_MS));
        assert!(m.queue_id >= 18 && m.queue_id < p.queues());
        let mut past = MessageInput::new("T", 1, "b");
        past.properties.push((PROP_DELIVER_AT.into(), "5".into()));
        assert_eq!(p.rewrite(&mut past, now).unwrap(), Some(now));
        let mut far = MessageInput::new("T", 1, "b");
        far.properties
            .push((PROP_DELIVER_AT.into(), (now + 8 * 86_400_000).to_string()));
        assert!(matches!(
            p.rewrite(&mut far, now),
            Err(ScheduleError::TooFar { .. })
        ));
        let mut bad = MessageInput::new("T", 1, "b");
        bad.properties.push((PROP_DELIVER_AT.into(), "soon".into()));
        assert!(matches!(
            p.rewrite(&mut bad, now),
            Err(ScheduleError::BadProperty { .. })
        ));
    }

    #[test]
    fn the_wheel_never_gives_two_pending_minutes_one_slot() {
        let p = Plan::new(vec![Duration::from_secs(1)], 3_600_000);
        let now_min = 28_333_333;
        let mut seen = std::collections::HashSet::new();
        // From two minutes behind to the furthest minute a put may ask for.
        for m in now_min - 2..=now_min + 60 + 1 {
            assert!(seen.insert(p.slot_queue(m)), "minute {m} shares a slot");
        }
    }

    #[test]
    fn entry_time_is_the_due_time_only_in_the_schedule_topic() {
        let props = [(PROP_DUE, "42")];
        assert_eq!(entry_time(SCHEDULE_TOPIC, props.iter().copied(), 7), 42);
        assert_eq!(entry_time("T", props.iter().copied(), 7), 7);
    }
}
