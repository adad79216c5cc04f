//! Faults through the I/O seam: a simulated power cut (every write not covered by a completed
//! fdatasync is dropped) and injected write / fdatasync errors.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{body, config};
use shardmq_engine::{
    FaultPlan, FlushMode, GetRequest, MessageInput, Perm, PutError, PutResult, PutStatus, Store,
    StoreConfig, TagFilter,
};

const WRITERS_PER_SHARD: u32 = 6;
const PUTS_PER_WRITER: u64 = 150;

fn msg(writer: u32, seq: u64) -> MessageInput {
    MessageInput::new(
        "faults",
        writer,
        body(writer, seq, 200 + (seq as usize * 13) % 900),
    )
}

/// Runs writers on both shards until each has done its puts or met a put that was not
/// acknowledged OK. Returns the acknowledged puts and every other outcome.
type Acked = Vec<(u32, u64, PutResult)>;
type Others = Vec<Result<PutResult, PutError>>;

fn load(store: &Store) -> (Acked, Others) {
    // One queue per writer: more than an auto-created topic has.
    let queues = 2 * WRITERS_PER_SHARD;
    store
        .create_topic("faults", queues, queues, Perm::READ_WRITE)
        .unwrap();
    load_with(store, msg)
}

fn load_with(store: &Store, msg: fn(u32, u64) -> MessageInput) -> (Acked, Others) {
    let mut tasks = Vec::new();
    for shard in 0..2 {
        for i in 0..WRITERS_PER_SHARD {
            let writer = shard as u32 * WRITERS_PER_SHARD + i;
            let s = store.clone();
            tasks.push(store.spawn_on(shard, move || async move {
                let mut acked = Vec::new();
                for seq in 0..PUTS_PER_WRITER {
                    match s.put_message(msg(writer, seq)).await {
                        Ok(r) if r.status == PutStatus::PutOk => acked.push((writer, seq, r)),
                        other => return (acked, Some(other)),
                    }
                }
                (acked, None)
            }));
        }
    }
    let mut acked = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (a, o) = futures_lite::future::block_on(t).expect("writer task ran");
        acked.extend(a);
        other.extend(o);
    }
    (acked, other)
}

/// Acknowledged puts missing (or different) after reopening without the fault plan.
fn lost(cfg: &StoreConfig, acked: &[(u32, u64, PutResult)]) -> usize {
    let cfg = StoreConfig {
        fault_plan: None,
        unsafe_ack_before_flush: false,
        ..cfg.clone()
    };
    let store = Store::open(cfg).unwrap();
    acked
        .iter()
        .filter(
            |(w, seq, r)| match store.read_message_blocking(r.shard, r.offset) {
                Ok(m) => m.body[..] != body(*w, *seq, 200 + (*seq as usize * 13) % 900)[..],
                Err(_) => true,
            },
        )
        .count()
}

/// Sends under SYNC_FLUSH while flushes work, then stalls every later fdatasync and cuts the
/// power: returns (acknowledged puts, how many of them were lost, writes dropped).
fn power_cut_run(ack_before_flush: bool) -> (usize, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::power_cut_tracking());
    let cfg = StoreConfig {
        fault_plan: Some(plan.clone()),
        unsafe_ack_before_flush: ack_before_flush,
        sync_flush_timeout_ms: 300,
        // No segment roll during the run: a roll waits for a flush, and with flushes stalled
        // the write-acknowledging variant would wait forever.
        segment_size_bytes: 8 << 20,
        ..config(dir.path(), 2, FlushMode::Sync)
    };
    let store = Store::open(cfg.clone()).unwrap();
    // Let a handful of group commits complete, then flushes hang until the power goes.
    plan.stall_fsync_after
        .store(plan.fsyncs() + 12, Ordering::SeqCst);
    let (acked, other) = load(&store);
    assert!(
        other
            .iter()
            .all(|o| matches!(o, Ok(r) if r.status == PutStatus::FlushDiskTimeout)),
        "a stalled flush gives FLUSH_DISK_TIMEOUT, never an error or a silent OK: {other:?}"
    );
    plan.freeze();
    drop(store);
    let dropped = plan.power_cut().unwrap();
    (acked.len(), lost(&cfg, &acked), dropped)
}

#[test]
fn power_cut_keeps_every_sync_flush_acknowledgement() {
    let (acked, lost, dropped) = power_cut_run(false);
    eprintln!("acked {acked}, lost {lost}, unsynced writes dropped {dropped}");
    assert!(acked > 0, "some puts must be acknowledged before the stall");
    assert!(
        dropped > 0,
        "the power cut must drop unsynced writes for the test to mean anything"
    );
    assert_eq!(lost, 0);
}

#[test]
fn power_cut_test_catches_acknowledgement_before_flush() {
    // The same scenario with the acknowledgement moved before the fdatasync must lose acked
    // puts: this is what makes the test above a real check.
    let (acked, lost, dropped) = power_cut_run(true);
    eprintln!("acked {acked}, lost {lost}, unsynced writes dropped {dropped}");
    assert!(lost > 0, "acknowledging before the flush went unnoticed");
}

fn injected_error_run(fail_write: bool) {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::power_cut_tracking());
    let cfg = StoreConfig {
        fault_plan: Some(plan.clone()),
        ..config(dir.path(), 2, FlushMode::Sync)
    };
    let store = Store::open(cfg.clone()).unwrap();
    if fail_write {
        plan.fail_write_nth
            .store(plan.writes() + 25, Ordering::SeqCst);
    } else {
        plan.fail_fsync_nth
            .store(plan.fsyncs() + 8, Ordering::SeqCst);
    }
    let (acked, other) = load(&store);
    let failed: Vec<_> = other
        .iter()
        .filter(|o| matches!(o, Err(PutError::ShardFailed { .. })))
        .collect();
    assert!(
        !failed.is_empty(),
        "the injected error must fail puts: {other:?}"
    );
    assert!(
        other.iter().all(|o| o.is_err()),
        "no put after the fault completes OK: {other:?}"
    );
    // The failed shard refuses further writes and says why.
    let shard = match failed[0] {
        Err(PutError::ShardFailed { shard, reason }) => {
            assert!(reason.contains("injected fault"), "{reason}");
            *shard
        }
        _ => unreachable!(),
    };
    // Whether its CommitLog or its ConsumeQueue log failed, a put appended on that shard to a
    // queue it owns must fail.
    let queue = (0..)
        .find(|&q| store.queue_shard("faults", q) == shard)
        .unwrap();
    let s = store.clone();
    let again = futures_lite::future::block_on(store.spawn_on(shard, move || async move {
        s.put_message(msg(queue, 0)).await
    }))
    .unwrap();
    assert!(
        matches!(again, Err(PutError::ShardFailed { .. })),
        "{again:?}"
    );
    // And nothing acknowledged depended on the failed I/O: cut the power and check.
    plan.freeze();
    drop(store);
    plan.power_cut().unwrap();
    assert_eq!(lost(&cfg, &acked), 0);
}

#[test]
fn injected_write_error_never_acknowledges() {
    injected_error_run(true);
}

#[test]
fn injected_fdatasync_error_never_acknowledges() {
    injected_error_run(false);
}

/// Writers on both shards share these queues, so each queue interleaves both shards' records.
const SHARED_QUEUES: u32 = 3;

fn shared_msg(writer: u32, seq: u64) -> MessageInput {
    MessageInput::new(
        "shared",
        writer % SHARED_QUEUES,
        body(writer, seq, 200 + (seq as usize * 13) % 900),
    )
}

#[test]
fn after_a_power_cut_every_queue_holds_exactly_the_surviving_commitlog() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::power_cut_tracking());
    let cfg = StoreConfig {
        fault_plan: Some(plan.clone()),
        sync_flush_timeout_ms: 300,
        segment_size_bytes: 8 << 20,
        ..config(dir.path(), 2, FlushMode::Sync)
    };
    let store = Store::open(cfg.clone()).unwrap();
    plan.stall_fsync_after
        .store(plan.fsyncs() + 12, Ordering::SeqCst);
    let (acked, _) = load_with(&store, shared_msg);
    plan.freeze();
    drop(store);
    assert!(plan.power_cut().unwrap() > 0, "the cut must drop writes");

    let store = Store::open(StoreConfig {
        fault_plan: None,
        ..cfg
    })
    .unwrap();
    // What re-dispatching the surviving CommitLog gives: each record at the queue offset it
    // holds (reserved before its append).
    let mut expected: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
    for shard in 0..2 {
        let mut offset = 0;
        while let Ok(m) = store.read_message_blocking(shard, offset) {
            offset += m.total_size as u64;
            let at = (m.queue_id, m.queue_offset);
            assert!(
                expected.insert(at, m.body.to_vec()).is_none(),
                "two surviving records claim queue {} offset {}",
                at.0,
                at.1
            );
        }
    }
    // What the queues hold.
    let mut got: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
    let mut skips = 0;
    for queue in 0..SHARED_QUEUES {
        let (min, max) =
            futures_lite::future::block_on(store.queue_offsets("shared", queue)).unwrap();
        assert_eq!(min, 0);
        let mut offset = 0;
        while offset < max {
            let req = GetRequest {
                group: "g".into(),
                topic: "shared".into(),
                queue_id: queue,
                offset,
                max_messages: 64,
                max_bytes: 1 << 20,
                filter: TagFilter::parse("*"),
            };
            let r = futures_lite::future::block_on(store.get_message(req)).unwrap();
            let mut next = offset;
            for m in &r.messages {
                skips += m.queue_offset - next;
                next = m.queue_offset + 1;
                got.insert((queue, m.queue_offset), m.message.body.to_vec());
            }
            skips += r.next_begin_offset - next;
            assert!(r.next_begin_offset > offset, "reads move on");
            offset = r.next_begin_offset;
        }
    }
    eprintln!(
        "acked {}, surviving records {}, skipped offsets {skips}",
        acked.len(),
        expected.len()
    );
    assert_eq!(
        got, expected,
        "each queue is its surviving records at their offsets"
    );
    for (w, seq, r) in &acked {
        let at = (*w % SHARED_QUEUES, r.queue_offset.unwrap());
        assert_eq!(
            got.get(&at).map(Vec::as_slice),
            Some(&body(*w, *seq, 200 + (*seq as usize * 13) % 900)[..]),
            "acknowledged put kept its queue offset"
        );
    }
    drop(store);
}
