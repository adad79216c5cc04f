//! What a put becomes: its status and where it landed. Plain data, below everything that
//! stores or answers puts (the shard, the dispatch, the store's facade).

/// Outcome of a stored put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutStatus {
    /// Stored (and, under SYNC_FLUSH, covered by a completed fdatasync).
    PutOk,
    /// SYNC_FLUSH only: stored, but no flush covered it within the timeout. The record is in
    /// the log and may yet become durable; it is *not* confirmed durable.
    FlushDiskTimeout,
}

/// Where a put landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub status: PutStatus,
    pub shard: usize,
    /// Physical offset of the record in its shard's CommitLog.
    pub offset: u64,
    /// Encoded record size in bytes.
    pub size: u32,
    pub store_timestamp_ms: i64,
    /// The offset the queue's owner assigned; `None` if the put was answered before that
    /// (FLUSH_DISK_TIMEOUT while its CommitLog flush was still pending).
    pub queue_offset: Option<u64>,
}
