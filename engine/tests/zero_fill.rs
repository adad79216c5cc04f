//! Zero-filling ahead of the writer (SYNC_FLUSH): the blocks ahead of the append offset are
//! written (no unwritten extents left for group commit to convert), and no record is hurt by
//! the zeroes, whichever of writer and filler runs ahead.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{body, config, message};
use shardmq_engine::{FlushMode, PutStatus, Store};

const SEGMENT: u64 = 256 << 10;

/// Byte ranges of `path` that are reserved but unwritten (FIEMAP's UNWRITTEN flag); `None`
/// when the file system does not map extents (the test then says so and checks nothing).
fn unwritten_ranges(path: &Path) -> Option<Vec<(u64, u64)>> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS: usize = 256;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS],
    }
    let file = std::fs::File::open(path).ok()?;
    let mut map = Fiemap {
        start: 0,
        length: u64::MAX,
        flags: FIEMAP_FLAG_SYNC,
        mapped: 0,
        count: EXTENTS as u32,
        reserved: 0,
        extents: [Extent::default(); EXTENTS],
    };
    // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` followed by `count` extents,
    // which is exactly `Fiemap`'s layout; the pointer is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Fiemap) };
    if rc != 0 {
        return None;
    }
    Some(
        map.extents[..map.mapped as usize]
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
            .map(|e| (e.logical, e.logical + e.length))
            .collect(),
    )
}

fn segment_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join("commitlog").join("0").join(format!("{base:020}"))
}

/// Puts 1 KiB messages until `bytes` are appended; returns the append end.
fn fill(store: &Store, bytes: u64) -> u64 {
    let mut end = 0;
    let mut seq = 0;
    while end < bytes {
        let put = store.put_message_blocking(message(0, seq, 1024)).unwrap();
        end = put.offset + put.size as u64;
        seq += 1;
    }
    end
}

#[test]
fn blocks_ahead_of_the_appends_are_written_under_sync_flush_and_not_without_zero_fill() {
    let dir = tempfile::tempdir().unwrap();
    let on = dir.path().join("on");
    let store = Store::open(config(&on, 1, FlushMode::Sync)).unwrap();
    let end = fill(&store, 20 << 10);
    let seg = segment_path(&on, 0);
    if unwritten_ranges(&seg).is_none() {
        eprintln!("SKIPPED: the file system under the temp dir does not answer FIEMAP");
        return;
    }
    // The filler runs behind the puts' progress: wait for its result, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = unwritten_ranges(&seg).unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segment 0 still has unwritten ranges {left:?} with records up to {end}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    futures_lite::future::block_on(store.clone().shutdown()).unwrap();

    let off = dir.path().join("off");
    let mut cfg = config(&off, 1, FlushMode::Sync);
    cfg.zero_fill_ahead = Some(false);
    let store = Store::open(cfg).unwrap();
    let end = fill(&store, 20 << 10);
    futures_lite::future::block_on(store.clone().shutdown()).unwrap();
    let left = unwritten_ranges(&segment_path(&off, 0)).unwrap();
    assert!(
        left.iter().any(|&(_, b)| b == SEGMENT) && left.iter().all(|&(a, _)| a >= end - end % 4096),
        "without zero-fill the blocks past the records stay unwritten: {left:?}, records to {end}"
    );
}

#[test]
fn records_written_among_zero_fills_read_back_whole_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Arc::new(Store::open(config(&path, 2, FlushMode::Sync)).unwrap());
    // Four writers with sizes up to 24 KiB roll the 256 KiB segments every few dozen puts,
    // so the filler works right at the writer's heels and across rolls.
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..300u64)
                    .map(|seq| {
                        let len = 100 + ((seq * 7919 + w as u64 * 104_729) % (24 << 10)) as usize;
                        let put = store.put_message_blocking(message(w, seq, len)).unwrap();
                        assert_eq!(put.status, PutStatus::PutOk);
                        (w, seq, len, put.shard, put.offset)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let puts: Vec<_> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let check = |store: &Store| {
        for &(w, seq, len, shard, offset) in &puts {
            let m = store.read_message_blocking(shard, offset).unwrap();
            assert_eq!(&m.body[..], &body(w, seq, len)[..], "writer {w} seq {seq}");
        }
    };
    check(&store);
    let store = Arc::into_inner(store).unwrap();
    futures_lite::future::block_on(store.clone().shutdown()).unwrap();
    drop(store);
    let store = Store::open(config(&path, 2, FlushMode::Sync)).unwrap();
    for r in store.recovery_reports() {
        assert!(
            r.cut.is_none(),
            "clean shutdown leaves nothing to cut: {r:?}"
        );
    }
    check(&store);
}
