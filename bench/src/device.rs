//! Which block device holds a directory, and how many cache flushes it has completed.
//!
//! The count comes from `/sys/block/<dev>/stat` (layout: the kernel's
//! `Documentation/block/stat.rst`). It is device-wide: flushes issued by other processes
//! during a run are counted too, so measure on a quiet machine. Flushes are accounted to the
//! whole disk, never to a partition, so a partition is mapped to its parent disk. For stacked
//! devices (dm, md) the count is that of the upper device.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why the device or its counters could not be found.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("stat {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is on device {major}:{minor}, which is not a block device \
         (tmpfs, overlayfs, btrfs, network file system?)"
    )]
    NotBlockDevice {
        path: PathBuf,
        major: u32,
        minor: u32,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected block stat line: {0}")]
    Parse(String),
    #[error("{0} has no flush counter (field 16 needs Linux 5.5 or newer)")]
    NoFlushField(PathBuf),
}

/// The counters of one `/sys/block/<dev>/stat` line this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskStat {
    /// Field 1: read I/Os completed.
    pub read_ios: u64,
    /// Field 5: write I/Os completed.
    pub write_ios: u64,
    /// Field 7: 512-byte sectors written.
    pub write_sectors: u64,
    /// Field 9: I/Os currently in flight.
    pub in_flight: u64,
    /// Field 16: flush requests completed (absent before Linux 5.5).
    pub flush_ios: Option<u64>,
    /// Field 17: milliseconds spent on flushes.
    pub flush_ticks_ms: Option<u64>,
}

/// Parses one stat line: 11, 15 or 17 (or more) unsigned numbers separated by spaces.
///
/// Fields, 1-based as in `stat.rst`: 1 read I/Os, 2 read merges, 3 read sectors, 4 read
/// ticks, 5 write I/Os, 6 write merges, 7 write sectors, 8 write ticks, 9 in_flight,
/// 10 io_ticks, 11 time_in_queue, 12-15 discard I/Os/merges/sectors/ticks, 16 flush I/Os,
/// 17 flush ticks.
pub fn parse_stat(line: &str) -> Result<DiskStat, DeviceError> {
    let fields = line
        .split_ascii_whitespace()
        .map(str::parse::<u64>)
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|e| DeviceError::Parse(format!("{e}: {line:?}")))?;
    if fields.len() < 11 {
        return Err(DeviceError::Parse(format!(
            "{} fields, expected at least 11: {line:?}",
            fields.len()
        )));
    }
    Ok(DiskStat {
        read_ios: fields[0],
        write_ios: fields[4],
        write_sectors: fields[6],
        in_flight: fields[8],
        flush_ios: fields.get(15).copied(),
        flush_ticks_ms: fields.get(16).copied(),
    })
}

/// A whole block device, found through `/sys/dev/block/MAJ:MIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name of the whole disk, e.g. `vda`, `nvme0n1`, `dm-0`.
    pub name: String,
    /// The partition the path lives on, if any (e.g. `vda1`); counters are the disk's.
    pub partition: Option<String>,
    /// `st_dev` of the path.
    pub major: u32,
    pub minor: u32,
    /// The stat file read: the whole disk's.
    pub stat_path: PathBuf,
}

impl BlockDevice {
    /// Finds the disk holding `path` (a file or directory that exists).
    pub fn for_path(path: &Path) -> Result<Self, DeviceError> {
        let st = rustix::fs::stat(path).map_err(|e| DeviceError::Stat {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        let link = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let not_block = || DeviceError::NotBlockDevice {
            path: path.to_path_buf(),
            major,
            minor,
        };
        let dir = fs::canonicalize(&link).map_err(|_| not_block())?;
        let dev_name = |d: &Path| d.file_name().map(|n| n.to_string_lossy().into_owned());
        let (disk_dir, partition) = if dir.join("partition").exists() {
            let parent = dir.parent().ok_or_else(not_block)?.to_path_buf();
            (parent, dev_name(&dir))
        } else {
            (dir, None)
        };
        let name = dev_name(&disk_dir).ok_or_else(not_block)?;
        Ok(BlockDevice {
            name,
            partition,
            major,
            minor,
            stat_path: disk_dir.join("stat"),
        })
    }

    /// Reads the disk's counters now.
    pub fn read_stat(&self) -> Result<DiskStat, DeviceError> {
        let text = fs::read_to_string(&self.stat_path).map_err(|source| DeviceError::Read {
            path: self.stat_path.clone(),
            source,
        })?;
        parse_stat(&text)
    }

    /// Flush requests the disk has completed since boot.
    pub fn flushes(&self) -> Result<u64, DeviceError> {
        self.read_stat()?
            .flush_ios
            .ok_or_else(|| DeviceError::NoFlushField(self.stat_path.clone()))
    }
}

/// Counts device flushes over a run: [`FlushCounter::start`] before, [`FlushCounter::finish`]
/// after. Never fails: when the count is unavailable, `finish` gives `None` and
/// [`FlushCounter::unavailable`] says why.
#[derive(Debug)]
pub struct FlushCounter {
    device: Option<BlockDevice>,
    start: Result<u64, String>,
}

impl FlushCounter {
    /// Reads the starting count of the device found for a path (see [`BlockDevice::for_path`]).
    pub fn start(device: Result<BlockDevice, DeviceError>) -> Self {
        match device {
            Ok(dev) => {
                let start = dev.flushes().map_err(|e| e.to_string());
                FlushCounter {
                    device: Some(dev),
                    start,
                }
            }
            Err(e) => FlushCounter {
                device: None,
                start: Err(e.to_string()),
            },
        }
    }

    /// Flushes completed since `start`, or `None` if they cannot be counted.
    pub fn finish(&mut self) -> Option<u64> {
        let (dev, start) = (self.device.as_ref()?, *self.start.as_ref().ok()?);
        match dev.flushes() {
            Ok(end) => Some(end.saturating_sub(start)),
            Err(e) => {
                self.start = Err(e.to_string());
                None
            }
        }
    }

    /// The disk whose flushes are counted, if one was found.
    pub fn device(&self) -> Option<&BlockDevice> {
        self.device.as_ref()
    }

    /// Why flushes cannot be counted, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.start.as_ref().err().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_17_field_line() {
        // /sys/block/vda/stat on Linux 6.x (padded with spaces, trailing newline).
        let line = "   10321     5212  2696050    26114     2810    17109  2844920    13603 \
                    0    12604    40218     4163       62    51464      498       35        2\n";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.read_ios, 10321);
        assert_eq!(st.write_ios, 2810);
        assert_eq!(st.write_sectors, 2844920);
        assert_eq!(st.in_flight, 0);
        assert_eq!(st.flush_ios, Some(35));
        assert_eq!(st.flush_ticks_ms, Some(2));
    }

    #[test]
    fn old_kernels_have_no_flush_field() {
        let eleven = "1 2 3 4 5 6 7 8 9 10 11";
        assert_eq!(parse_stat(eleven).unwrap().flush_ios, None);
        let fifteen = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(parse_stat(fifteen).unwrap().flush_ios, None);
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("1 2 3").is_err());
        assert!(parse_stat("1 2 3 4 5 6 7 8 9 10 x").is_err());
        assert!(parse_stat("1 2 3 4 5 6 7 8 9 10 -11").is_err());
    }
}
