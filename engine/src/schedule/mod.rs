//! Delayed messages: a put with a delay level or an exact delivery time waits in
//! [`plan::SCHEDULE_TOPIC`] and the schedule service delivers it to its real topic when due.
//!
//! - `plan.rs` — levels, where a delayed put waits, the wheel of minute slots, the delivered
//!   copy (pure).
//! - `progress.rs` — what has been delivered, persisted atomically every
//!   `schedule.persist_interval_ms` and at shutdown (pure codec, small-file I/O).
//! - `service.rs` — the tasks: one per level, on the shard owning the level's queue (its
//!   queue is in due order: wait for the head, deliver, advance), and one wheel task per
//!   shard for exact times, over the minute slots around now whose queues that shard owns
//!   (each delivered in due order; a minute's messages share one slot queue, so one shard's
//!   wheel delivers them). Every task reads only queues of its own shard, served in place,
//!   learns due times from queue entries, never from bodies, and puts what falls due
//!   together as one batch per real queue. The wheels keep due order across shards: none
//!   puts an entry while another shard's wheel still has an earlier one undelivered.
//!
//! After a crash the service starts from the persisted progress: for each level the queue
//! offset below which everything was delivered, for the wheels each slot's offset and
//! delivered ranges, and the oldest minute some shard's wheel had not retired. It rebuilds
//! nothing else and scans nothing pending beyond the minutes around now. What was delivered
//! after the last persist is delivered again: duplicates are bounded by the persist interval.

pub mod plan;
pub mod progress;
pub mod service;

use serde::{Deserialize, Serialize};

/// `[schedule]` in the store's TOML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Deliver delayed messages (the service runs); off, delayed puts are refused. Off by
    /// default for an embedded store, on in the broker. With it on, shut the store down with
    /// `Store::shutdown`: a store merely dropped (a crash, as far as the data goes) may release
    /// its directory lock a moment after the drop returns, as a service task can hold the
    /// last reference.
    pub enabled: bool,
    /// The delay levels, RocketMQ's `messageDelayLevel` format: durations separated by
    /// spaces with units ms, s, m, h, d.
    pub levels: String,
    /// The longest exact delay accepted (7 days).
    pub max_delay_ms: u64,
    /// How often delivery progress is persisted (10 s).
    pub persist_interval_ms: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            enabled: false,
            levels: plan::DEFAULT_LEVELS.to_owned(),
            max_delay_ms: 7 * 86_400_000,
            persist_interval_ms: 10_000,
        }
    }
}

impl ScheduleConfig {
    pub fn plan(&self) -> Result<plan::Plan, plan::ScheduleError> {
        Ok(plan::Plan::new(
            plan::parse_levels(&self.levels)?,
            self.max_delay_ms,
        ))
    }
}
