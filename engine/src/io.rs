//! The narrow file-I/O seam every CommitLog write, flush and read goes through.
//!
//! In production it is a thin wrapper over glommio's [`DmaFile`]. Tests attach a
//! [`FaultPlan`] to inject faults (fail the Nth write or fdatasync, stall flushes, fail
//! segment reservations with an errno such as ENOSPC) and to
//! simulate a power cut: every write not covered by a completed `fdatasync` of its file is
//! rolled back to the bytes it overwrote.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, ReadResult};

/// Faults to inject, shared by every shard of a store (counts are store-wide).
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// 1-based index of the write that fails (0: none).
    pub fail_write_nth: AtomicU64,
    /// 1-based index of the fdatasync that fails (0: none).
    pub fail_fsync_nth: AtomicU64,
    /// fdatasyncs after this many never complete until the plan is frozen (0: none stall).
    pub stall_fsync_after: AtomicU64,
    /// While not 0, every segment reservation (`fallocate`) fails with this errno, e.g.
    /// ENOSPC (28) for a full disk.
    pub fallocate_errno: AtomicI32,
    /// While set, writes wait before they are issued (a device that takes its time).
    pub hold_writes: AtomicBool,
    /// Record pre-images so that `power_cut` can drop unsynced writes.
    pub track_power_cut: bool,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    frozen: AtomicBool,
    unsynced: Mutex<Unsynced>,
}

#[derive(Debug, Default)]
struct Unsynced {
    next_seq: u64,
    /// Pre-images of writes since the last covering fdatasync, in submission order.
    images: Vec<PreImage>,
    /// Count of completed tracked writes; a write's pre-image records the count at its
    /// completion, an fdatasync the count at its issue.
    completed_seq: u64,
}

#[derive(Debug)]
struct PreImage {
    seq: u64,
    path: PathBuf,
    pos: u64,
    bytes: Vec<u8>,
    /// `completed_seq` when the write completed; None while in flight.
    completed: Option<u64>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl FaultPlan {
    pub fn power_cut_tracking() -> Self {
        FaultPlan {
            track_power_cut: true,
            ..Default::default()
        }
    }

    /// Makes every later write and fdatasync fail, as if power were gone. Writes already in
    /// flight still complete; drop the store before calling [`FaultPlan::power_cut`].
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Rolls back every write not covered by a completed fdatasync, newest first. Call after
    /// the store is gone (no I/O in flight). Returns how many writes were dropped.
    pub fn power_cut(&self) -> io::Result<usize> {
        self.freeze();
        let mut state = self
            .unsynced
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        let images = std::mem::take(&mut state.images);
        let dropped = images.len();
        for image in images.iter().rev() {
            let file = std::fs::OpenOptions::new().write(true).open(&image.path)?;
            file.write_all_at(&image.bytes, image.pos)?;
            file.sync_all()?;
        }
        Ok(dropped)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::SeqCst)
    }

    fn frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn before_fallocate(&self) -> io::Result<()> {
        match self.fallocate_errno.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn before_write(&self, path: &Path, pos: u64, len: usize) -> io::Result<Option<u64>> {
        if self.frozen() {
            return Err(injected("power cut (frozen)"));
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_write_nth.load(Ordering::SeqCst) {
            return Err(injected("write failed"));
        }
        if !self.track_power_cut {
            return Ok(None);
        }
        let mut bytes = vec![0u8; len];
        let file = std::fs::File::open(path)?;
        let mut read = 0;
        while read < len {
            match file.read_at(&mut bytes[read..], pos + read as u64)? {
                0 => break,
                k => read += k,
            }
        }
        let mut state = self
            .unsynced
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        let seq = state.next_seq;
        state.next_seq += 1;
        state.images.push(PreImage {
            seq,
            path: path.to_owned(),
            pos,
            bytes,
            completed: None,
        });
        Ok(Some(seq))
    }

    fn after_write(&self, seq: u64) {
        if let Ok(mut state) = self.unsynced.lock() {
            state.completed_seq += 1;
            let done = state.completed_seq;
            if let Some(image) = state.images.iter_mut().find(|i| i.seq == seq) {
                image.completed = Some(done);
            }
        }
    }

    async fn before_fsync(&self) -> io::Result<u64> {
        if self.frozen() {
            return Err(injected("power cut (frozen)"));
        }
        let n = self.fsyncs.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_fsync_nth.load(Ordering::SeqCst) {
            return Err(injected("fdatasync failed"));
        }
        let stall = self.stall_fsync_after.load(Ordering::SeqCst);
        if stall != 0 && n > stall {
            while !self.frozen() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            return Err(injected("fdatasync stalled until power cut"));
        }
        Ok(self.unsynced.lock().map(|s| s.completed_seq).unwrap_or(0))
    }

    /// The fdatasync of `path` issued when `covered_upto` writes had completed succeeded:
    /// those writes to that file are durable.
    fn after_fsync(&self, path: &Path, covered_upto: u64) {
        if let Ok(mut state) = self.unsynced.lock() {
            state
                .images
                .retain(|i| !(i.path == path && i.completed.is_some_and(|c| c <= covered_upto)));
        }
    }
}

/// glommio's error as the OS gave it (errno, hence kind and message), without glommio's
/// repetition of the operation and path: callers say what they did to which file.
pub(crate) fn os_error<T>(e: glommio::GlommioError<T>) -> io::Error {
    match e {
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

/// One CommitLog segment file behind the seam.
#[derive(Debug)]
pub struct SegmentFile {
    file: DmaFile,
    path: PathBuf,
    plan: Option<Arc<FaultPlan>>,
}

impl SegmentFile {
    pub fn new(file: DmaFile, path: PathBuf, plan: Option<Arc<FaultPlan>>) -> Self {
        SegmentFile { file, path, plan }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn alloc_dma_buffer(&self, len: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len)
    }

    pub fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    /// Writes the whole buffer at `pos` (both aligned). The buffer is shared so that the
    /// caller gets it back for reuse once the write completed.
    pub async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        debug_assert_eq!(pos % self.alignment(), 0, "unaligned write position");
        debug_assert_eq!(
            buf.len() as u64 % self.alignment(),
            0,
            "unaligned write length"
        );
        let len = buf.len();
        if let Some(plan) = &self.plan {
            while plan.hold_writes.load(Ordering::SeqCst) && !plan.frozen() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
        let seq = match &self.plan {
            Some(plan) => plan.before_write(&self.path, pos, len)?,
            None => None,
        };
        let result = self.file.write_rc_at(buf, pos).await;
        if let (Some(plan), Some(seq)) = (&self.plan, seq) {
            plan.after_write(seq);
        }
        match result {
            Ok(n) if n == len => Ok(n),
            Ok(n) => Err(io::Error::other(format!(
                "short write: {n} of {len} bytes at {pos}"
            ))),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Writes zeroes ahead of a log's records (`log::zerofill`). Not seen by the fault plan:
    /// zeroes over never-written blocks change no byte a reader or recovery could see, so a
    /// simulated crash has nothing of theirs to drop, and counting them would shift the
    /// plan's numbered faults onto writes that carry no records.
    pub async fn write_zeroes(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<()> {
        debug_assert_eq!(pos % self.alignment(), 0, "unaligned zero write");
        let len = buf.len();
        match self.file.write_rc_at(buf, pos).await {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "short zero write: {n} of {len} bytes at {pos}"
            ))),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// `fdatasync` for [`Self::write_zeroes`], outside the fault plan as they are.
    pub async fn sync_zeroes(&self) -> io::Result<()> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        let covered = match &self.plan {
            Some(plan) => Some(plan.before_fsync().await?),
            None => None,
        };
        self.file
            .fdatasync()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let (Some(plan), Some(covered)) = (&self.plan, covered) {
            plan.after_fsync(&self.path, covered);
        }
        Ok(())
    }

    /// Reads `len` bytes at any `pos` with one aligned DMA read around them. Returns fewer
    /// bytes only at the end of the file.
    pub async fn read_bytes(&self, pos: u64, len: usize) -> io::Result<bytes::Bytes> {
        let block = crate::config::BLOCK_BYTES;
        let start = pos - pos % block;
        let end = (pos + len as u64).next_multiple_of(block);
        let read = self.read_at_aligned(start, (end - start) as usize).await?;
        let from = ((pos - start) as usize).min(read.len());
        let to = (from + len).min(read.len());
        Ok(bytes::Bytes::copy_from_slice(&read[from..to]))
    }

    pub async fn read_at_aligned(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        self.file
            .read_at_aligned(pos, len)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Reserves the file's blocks up to `size` (and sets its length). The error keeps its
    /// kind: a full disk (`StorageFull`) is waited out, other errors are not.
    pub async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        if let Some(plan) = &self.plan {
            plan.before_fallocate()?;
        }
        self.file.pre_allocate(size, false).await.map_err(os_error)
    }

    /// Closes every file no one else holds any more, now (see `close`); the others close
    /// when their last holder drops them.
    pub async fn close_all(files: impl IntoIterator<Item = Rc<SegmentFile>>) {
        for file in files {
            if let Ok(file) = Rc::try_unwrap(file) {
                file.close().await;
            }
        }
    }

    /// Closes the descriptor now (dropping defers it to the executor's next I/O cycle).
    pub async fn close(self) {
        if let Err(e) = self.file.close().await {
            tracing::warn!(path = %self.path.display(), error = %e, "closing a segment failed");
        }
    }

    /// Punches a hole: the range reads as zeroes afterwards.
    pub async fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.file
            .deallocate(offset, len)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }
}
