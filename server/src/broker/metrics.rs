//! Counters the broker keeps (shown by `admin broker status` and the metrics endpoint).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub put_messages: AtomicU64,
    pub put_bytes: AtomicU64,
    pub get_messages: AtomicU64,
    pub get_bytes: AtomicU64,
    /// Requests refused by a check (bad input, permissions, ...).
    pub refused: AtomicU64,
    /// Requests answered SYSTEM_BUSY by a cap.
    pub busy: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
}

impl Metrics {
    pub fn put(&self, messages: u64, bytes: u64) {
        self.put_messages.fetch_add(messages, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn got(&self, messages: u64, bytes: u64) {
        self.get_messages.fetch_add(messages, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
