//! Store API: put and read back, shutdown and reopen, locking, TOML config, batches.

mod common;

use common::{body, config, message};
use shardmq_engine::{FlushMode, MessageInput, OpenError, PutError, PutStatus, Store};

#[test]
fn put_read_shutdown_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for flush in [FlushMode::Async, FlushMode::Sync] {
        let path = dir.path().join(format!("{flush:?}"));
        let store = Store::open(config(&path, 2, flush)).unwrap();
        let mut puts = Vec::new();
        for seq in 0..500u64 {
            let put = store
                .put_message_blocking(message(1, seq, 100 + seq as usize * 7))
                .unwrap();
            assert_eq!(put.status, PutStatus::PutOk);
            puts.push((seq, put));
        }
        for (seq, put) in &puts {
            let m = store.read_message_blocking(put.shard, put.offset).unwrap();
            assert_eq!(&m.body[..], &body(1, *seq, 100 + *seq as usize * 7)[..]);
            assert_eq!(m.physical_offset, put.offset);
            assert_eq!(m.tags(), Some("w1"));
        }
        futures_lite::future::block_on(store.clone().shutdown()).unwrap();
        drop(store);
        let store = Store::open(config(&path, 2, flush)).unwrap();
        for r in store.recovery_reports() {
            assert!(
                r.cut.is_none(),
                "clean shutdown leaves nothing to cut: {r:?}"
            );
        }
        for (seq, put) in &puts {
            let m = store.read_message_blocking(put.shard, put.offset).unwrap();
            assert_eq!(&m.body[..], &body(1, *seq, 100 + *seq as usize * 7)[..]);
        }
        // Appends continue after the recovered end.
        let next = store.put_message_blocking(message(1, 9999, 10)).unwrap();
        let last = puts
            .iter()
            .filter(|(_, p)| p.shard == next.shard)
            .map(|(_, p)| p.offset + p.size as u64)
            .max()
            .unwrap();
        assert!(next.offset >= last);
    }
}

#[test]
fn second_open_of_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 1, FlushMode::Async)).unwrap();
    let err = Store::open(config(dir.path(), 1, FlushMode::Async))
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Locked(_)), "{err}");
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    drop(store);
    Store::open(config(dir.path(), 1, FlushMode::Async)).unwrap();
}

#[test]
fn shard_count_is_fixed_by_meta() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap());
    let err = Store::open(config(dir.path(), 1, FlushMode::Async))
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("has 2 shards, but 1 were requested"),
        "{err}"
    );
}

#[test]
fn oversized_and_illegal_messages_are_refused_without_appending() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 1, FlushMode::Async)).unwrap();
    let big = MessageInput::new("t", 0, vec![0u8; 70 << 10]);
    assert!(matches!(
        store.put_message_blocking(big),
        Err(PutError::MessageTooLarge { .. })
    ));
    let bad = MessageInput::new("", 0, &b"x"[..]);
    assert!(matches!(
        store.put_message_blocking(bad),
        Err(PutError::MessageIllegal(_))
    ));
    let ok = store
        .put_message_blocking(MessageInput::new("t", 0, &b"x"[..]))
        .unwrap();
    assert_eq!(ok.offset, 0, "nothing was appended before");
}

#[test]
fn batch_is_contiguous_and_on_shard_puts_take_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Sync)).unwrap();
    let s = store.clone();
    let results = futures_lite::future::block_on(store.spawn_on(1, move || async move {
        assert_eq!(s.current_shard(), Some(1));
        let batch: Vec<_> = (0..50).map(|i| message(7, i, 333)).collect();
        s.put_messages(batch).await
    }))
    .unwrap()
    .unwrap();
    assert_eq!(results.len(), 50);
    for w in results.windows(2) {
        assert_eq!(w[0].shard, 1, "on-shard puts land on the caller's shard");
        assert_eq!(w[0].offset + w[0].size as u64, w[1].offset);
    }
}

/// Descriptors of this process that point into `dir`.
fn open_files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
fn closing_or_dropping_a_store_closes_its_files() {
    // glommio closes a dropped file on its executor's next I/O cycle, which never comes once
    // the shard exits: a leak that once filled the disk with deleted preallocated segments.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, FlushMode::Sync);
    for i in 0..3 {
        let store = Store::open(cfg.clone()).unwrap();
        store.put_message_blocking(message(1, i, 100)).unwrap();
        assert!(open_files_under(dir.path()) > 0);
        if i % 2 == 0 {
            futures_lite::future::block_on(store.shutdown()).unwrap();
        } else {
            drop(store);
        }
        assert_eq!(open_files_under(dir.path()), 0, "cycle {i}");
    }
}
