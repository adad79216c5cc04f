//! Recovery of a shard's CommitLog from torn tails, garbage, stale records and corruption, and
//! segment rolls at exact boundaries.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{body, config, message};
use shardmq_engine::record::{encode, encoded_len, MessageInput, StoreStamp, HEADER_LEN};
use shardmq_engine::{FlushMode, OpenError, PutResult, RecoveryError, Store, StoreConfig};

fn segment0(dir: &Path) -> PathBuf {
    dir.join("commitlog/0/00000000000000000000")
}

/// Forget the checkpoint, as after a crash before any was written: recovery scans it all.
fn drop_checkpoint(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("commitlog/0/checkpoint"));
}

fn shutdown(store: Store) {
    futures_lite::future::block_on(store.shutdown()).unwrap();
}

fn write_n(cfg: &StoreConfig, n: u64, len: usize) -> Vec<PutResult> {
    let store = Store::open(cfg.clone()).unwrap();
    let puts = (0..n)
        .map(|i| store.put_message_blocking(message(0, i, len)).unwrap())
        .collect();
    shutdown(store);
    puts
}

fn stale_record(claimed_offset: u64) -> Vec<u8> {
    let m = MessageInput::new("stale", 0, &b"from an earlier use of this file"[..]);
    let mut out = vec![0u8; encoded_len(&m).unwrap()];
    let stamp = StoreStamp {
        physical_offset: claimed_offset,
        queue_offset: 0,
        store_timestamp_ms: 1,
        store_host: "127.0.0.1:1".parse().unwrap(),
    };
    encode(&m, &stamp, &mut out);
    out
}

#[derive(Clone, Copy, Debug)]
enum After {
    Zeroes,
    Garbage,
    StaleRecord,
}

#[test]
fn torn_last_record_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, FlushMode::Sync);
    let puts = write_n(&cfg, 4, 60);
    let last = *puts.last().unwrap();
    let seg = segment0(dir.path());
    let end = last.offset + last.size as u64;
    let mut pristine = vec![0u8; end as usize];
    std::fs::File::open(&seg)
        .unwrap()
        .read_exact_at(&mut pristine, 0)
        .unwrap();
    let zero_tail = vec![0u8; 8192];
    for cut in 0..last.size as u64 {
        for after in [After::Zeroes, After::Garbage, After::StaleRecord] {
            // Lay the file out: whole records, `cut` bytes of the last one, then `after`.
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            f.write_all_at(&zero_tail, last.offset).unwrap();
            f.write_all_at(&pristine[..(last.offset + cut) as usize], 0)
                .unwrap();
            let at = last.offset + cut;
            match after {
                After::Zeroes => {}
                After::Garbage => {
                    let junk: Vec<u8> = body(9, cut, 97).iter().map(|b| b | 1).collect();
                    f.write_all_at(&junk, at).unwrap();
                }
                After::StaleRecord => f.write_all_at(&stale_record(at + 4096), at).unwrap(),
            }
            drop(f);
            drop_checkpoint(dir.path());

            let store = Store::open(cfg.clone()).unwrap();
            let report = &store.recovery_reports()[0];
            assert_eq!(
                report.end_offset, last.offset,
                "cut {cut} {after:?}: {report:?}"
            );
            let clean = cut == 0 && matches!(after, After::Zeroes);
            assert_eq!(
                report.cut.is_none(),
                clean,
                "cut {cut} {after:?}: {report:?}"
            );
            for (i, p) in puts[..puts.len() - 1].iter().enumerate() {
                let m = store.read_message_blocking(p.shard, p.offset).unwrap();
                assert_eq!(&m.body[..], &body(0, i as u64, 60)[..]);
            }
            assert!(store.read_message_blocking(0, last.offset).is_err());
            // The log continues where the whole records end, over zeroes.
            let again = store.put_message_blocking(message(0, 3, 60)).unwrap();
            assert_eq!(again.offset, last.offset);
            shutdown(store);
            let store = Store::open(cfg.clone()).unwrap();
            let m = store.read_message_blocking(0, last.offset).unwrap();
            assert_eq!(&m.body[..], &body(0, 3, 60)[..]);
            assert!(
                store.read_message_blocking(0, end).is_err(),
                "nothing stale survives"
            );
            drop(store);
        }
    }
}

#[test]
fn bad_record_in_sealed_segment_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, FlushMode::Async);
    let puts = write_n(&cfg, 300, 2000); // ~600 KB: three 256 KiB segments
    assert!(puts.last().unwrap().offset > 2 * cfg.segment_size_bytes);
    let victim = puts[10];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segment0(dir.path()))
        .unwrap();
    f.write_all_at(&[0xFF], victim.offset + HEADER_LEN as u64 + 5)
        .unwrap();
    drop(f);
    drop_checkpoint(dir.path());
    let err = Store::open(cfg.clone())
        .err()
        .expect("corruption refuses to open");
    let text = err.to_string();
    assert!(
        matches!(&err, OpenError::Recovery { source: RecoveryError::Corruption { offset, .. }, .. }
            if *offset == victim.offset),
        "{text}"
    );
    assert!(
        text.contains("CORRUPTION") && text.contains("00000000000000000000"),
        "{text}"
    );
}

#[test]
fn segments_roll_at_exact_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 64 << 10;
    let cfg = StoreConfig {
        segment_size_bytes: seg,
        message_size_max_bytes: 40 << 10,
        ..config(dir.path(), 1, FlushMode::Sync)
    };
    // Bodies sized so records are exactly 32 KiB, then 32 KiB - 8 (leaving an 8-byte blank).
    let sized = |record: usize, seq: u64| {
        let probe = message(0, seq, 0);
        let overhead = encoded_len(&probe).unwrap();
        message(0, seq, record - overhead)
    };
    let store = Store::open(cfg.clone()).unwrap();
    let plan = [32768, 32768, 32768, 32760, 200, 32768, 32768];
    let mut puts = Vec::new();
    for (i, &len) in plan.iter().enumerate() {
        let p = store.put_message_blocking(sized(len, i as u64)).unwrap();
        assert_eq!(p.size as usize, len);
        puts.push(p);
    }
    let offsets: Vec<u64> = puts.iter().map(|p| p.offset).collect();
    // Exact fill: two records end segment 0 at 65536. In segment 1, 32760 leaves 8 bytes, so
    // 200 rolls to 131072 behind an 8-byte blank; in segment 2 the second 32768 does not fit
    // the 32568 left and rolls to 196608.
    assert_eq!(
        offsets,
        vec![0, 32768, 65536, 98304, 131072, 131272, 196608]
    );
    shutdown(store);
    drop_checkpoint(dir.path());
    let store = Store::open(cfg).unwrap();
    assert_eq!(
        store.recovery_reports()[0].records_scanned,
        plan.len() as u64
    );
    for (i, p) in puts.iter().enumerate() {
        let m = store.read_message_blocking(0, p.offset).unwrap();
        assert_eq!(m.total_size as usize, plan[i]);
    }
    let next = store.put_message_blocking(message(0, 99, 10)).unwrap();
    assert_eq!(next.offset, 196608 + 32768);
}

#[test]
fn checkpoint_inside_a_record_loses_nothing() {
    // Flushed offsets can fall inside a record that spans two write chunks; recovery must not
    // start parsing there (that once cut acknowledged records).
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, FlushMode::Sync);
    let puts = write_n(&cfg, 40, 3000);
    let mid = puts[30].offset + 17;
    std::fs::write(
        dir.path().join("commitlog/0/checkpoint"),
        format!("flushed_offset = {mid}\n"),
    )
    .unwrap();
    let store = Store::open(cfg).unwrap();
    assert!(
        store.recovery_reports()[0].cut.is_none(),
        "{:?}",
        store.recovery_reports()
    );
    for (i, p) in puts.iter().enumerate() {
        let m = store.read_message_blocking(0, p.offset).unwrap();
        assert_eq!(&m.body[..], &body(0, i as u64, 3000)[..]);
    }
}
