//! Segment files: `commitlog/<shard>/<20-digit offset of the first byte>`, preallocated to the
//! full segment size when created, plus the shard's checkpoint file beside them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glommio::io::OpenOptions;

use crate::error::RecoveryError;
use crate::io::{os_error, FaultPlan, SegmentFile};
use crate::meta::write_atomic;

pub const CHECKPOINT_FILE: &str = "checkpoint";

pub fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Segment files of a shard directory, by base offset. Temp files of interrupted atomic
/// writes are removed; anything else unexpected is an error rather than silently ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RecoveryError> {
    let io_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| RecoveryError::Io { what, path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("cannot list", dir))? {
        let entry = entry.map_err(io_err("cannot list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = parse_segment_name(&name) {
            out.push((base, entry.path()));
        } else if name.ends_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(io_err("cannot remove", &entry.path()))?;
        } else if name != CHECKPOINT_FILE {
            return Err(RecoveryError::StrayFile(entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Opens an existing segment for reading and writing.
pub async fn open_segment(path: &Path, plan: Option<Arc<FaultPlan>>) -> io::Result<SegmentFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| io::Error::other(format!("open {}: {e}", path.display())))?;
    Ok(SegmentFile::new(file, path.to_owned(), plan))
}

/// Creates a segment and reserves its full size (`fallocate`). The caller makes the new name
/// durable (`sync_dir`) before writing records into it. Errors keep their `io::ErrorKind`, so
/// that the caller can tell a full disk (`StorageFull`, `QuotaExceeded`) from the rest.
///
/// The file is made as `<name>.tmp` and renamed once its size is reserved, so a segment name
/// never stands for a short file: on failure the temporary file is removed (a failed
/// `fallocate` may have reserved part of the size, space a full disk needs back), and one
/// left by a creation cut short (a crash, a shutdown while the disk is full) is removed by
/// the next open (`list_segments`) instead of having its reservation finished there.
pub async fn create_segment(
    dir: &Path,
    base: u64,
    size: u64,
    plan: Option<Arc<FaultPlan>>,
) -> io::Result<SegmentFile> {
    let path = dir.join(segment_name(base));
    let tmp = dir.join(format!("{}.tmp", segment_name(base)));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| with_context("create", &tmp, os_error(e)))?;
    let file = SegmentFile::new(file, path.clone(), plan);
    // Renames and unlinks of a file nothing points at yet: cheap enough to run inline.
    let reserved = match file.pre_allocate(size).await {
        Ok(()) => std::fs::rename(&tmp, &path).map_err(|e| with_context("rename", &tmp, e)),
        Err(e) => Err(with_context("fallocate", &tmp, e)),
    };
    match reserved {
        Ok(()) => Ok(file),
        Err(e) => {
            file.close().await;
            if let Err(rm) = std::fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %rm, "cannot remove a segment whose creation failed");
            }
            Err(e)
        }
    }
}

/// `e` with what was done to which file, keeping its kind.
fn with_context(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// `Ok` unless the file system holding `dir` shows (as `df` does: space an unprivileged
/// writer may use) less than `bytes` available; then a `StorageFull` error. A failed reading
/// is `Ok`: `fallocate` decides.
pub fn room_for(dir: &Path, bytes: u64) -> io::Result<()> {
    use crate::retention::{StatvfsProbe, UsageProbe};
    match StatvfsProbe.usage(dir) {
        Ok(u) if u.available_bytes < bytes => Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{}: only {} bytes available, a segment needs {bytes}",
                dir.display(),
                u.available_bytes
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether `e` says the disk (or the user's quota) is full: waiting for space may cure it.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The shard's checkpoint: every byte below `flushed_offset` was covered by an fdatasync.
/// Recovery starts its CRC scan at the start of the segment holding it.
pub fn read_checkpoint(dir: &Path) -> Result<Option<u64>, RecoveryError> {
    let path = dir.join(CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecoveryError::Io {
                what: "cannot read",
                path,
                source,
            })
        }
    };
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("flushed_offset = "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    match value {
        Some(v) => Ok(Some(v)),
        None => Err(RecoveryError::Checkpoint {
            path,
            reason: format!("unreadable: {text:?}"),
        }),
    }
}

pub fn write_checkpoint(dir: &Path, flushed_offset: u64) -> io::Result<()> {
    write_atomic(
        &dir.join(CHECKPOINT_FILE),
        format!("flushed_offset = {flushed_offset}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1073741824), "00000000001073741824");
        assert_eq!(parse_segment_name("00000000001073741824"), Some(1 << 30));
        assert_eq!(parse_segment_name("0000000000107374182x"), None);
        assert_eq!(parse_segment_name("123"), None);
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_errors() {
        let enospc = io::Error::from_raw_os_error(28);
        assert!(is_out_of_space(&enospc));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(122))); // EDQUOT
                                                                      // The context added on the way up keeps the kind.
        assert!(is_out_of_space(&with_context(
            "fallocate",
            Path::new("/x"),
            enospc
        )));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5))); // EIO
        assert!(!is_out_of_space(&io::Error::other(
            "No space left on device"
        )));
    }

    #[test]
    fn no_attempt_without_room_for_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        assert!(room_for(dir.path(), 4096).is_ok());
        let err = room_for(dir.path(), u64::MAX).unwrap_err();
        assert!(is_out_of_space(&err), "{err}");
        assert!(err.to_string().contains("bytes available"), "{err}");
        // No reading (no such directory): let the creation decide.
        assert!(room_for(&dir.path().join("missing"), u64::MAX).is_ok());
    }

    #[test]
    fn checkpoint_round_trip_and_stray_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None);
        write_checkpoint(dir.path(), 12345).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(12345));
        std::fs::write(dir.path().join(segment_name(0)), b"").unwrap();
        std::fs::write(dir.path().join("x.tmp"), b"").unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        assert!(!dir.path().join("x.tmp").exists());
        std::fs::write(dir.path().join("junk"), b"").unwrap();
        assert!(matches!(
            list_segments(dir.path()),
            Err(RecoveryError::StrayFile(_))
        ));
    }
}
