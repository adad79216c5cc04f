//! ASYNC_FLUSH's acknowledgement point (`StoreConfig::async_ack`): `Written` answers a put
//! once its write completed, `Appended` once its record is in the write buffer — but never
//! ahead of an earlier answer, and not while the buffer is more than half full, so a producer
//! is slowed down rather than refused. Writes are held back through the fault plan.

mod common;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config;
use futures_lite::future::{block_on, poll_once};
use shardmq_engine::{
    AsyncAck, FaultPlan, FlushMode, GetRequest, GetStatus, MessageInput, PutError, PutResult,
    Store, StoreConfig, TagFilter,
};

fn open(dir: &std::path::Path, ack: AsyncAck, plan: &Arc<FaultPlan>) -> Store {
    Store::open(StoreConfig {
        async_ack: ack,
        fault_plan: Some(plan.clone()),
        write_buffer_max_bytes: 256 << 10,
        ..config(dir, 1, FlushMode::Async)
    })
    .unwrap()
}

fn msg(i: usize) -> MessageInput {
    let mut body = format!("m{i:05}").into_bytes();
    body.resize(1000, b'.');
    MessageInput::new("acks", 0, body)
}

/// Polls `f` until it completes or `within` passes.
fn done_within<F: Future + Unpin>(f: &mut F, within: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(out) = block_on(poll_once(&mut *f)) {
            return Some(out);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_all(store: &Store, n: usize) {
    let mut offset = 0;
    while offset < n as u64 {
        let req = GetRequest {
            group: "g".into(),
            topic: "acks".into(),
            queue_id: 0,
            offset,
            max_messages: 64,
            max_bytes: 1 << 20,
            filter: TagFilter::parse("*"),
        };
        let r = block_on(store.get_message(req)).unwrap();
        assert_eq!(r.status, GetStatus::Found, "at {offset}");
        for m in r.messages {
            assert_eq!(m.message.body, msg(m.queue_offset as usize).body);
            offset = m.queue_offset + 1;
        }
    }
}

#[test]
fn appended_acks_answer_before_the_write_and_written_acks_after_it() {
    for ack in [AsyncAck::Appended, AsyncAck::Written] {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(FaultPlan::default());
        let store = open(dir.path(), ack, &plan);
        store.put_message_blocking(msg(0)).unwrap();
        plan.hold_writes.store(true, Ordering::SeqCst);
        let mut put = store.put_message(msg(1));
        let answered = done_within(&mut put, Duration::from_millis(300));
        match ack {
            AsyncAck::Appended => {
                let r: PutResult = answered.expect("answered at append").unwrap();
                let (written, _) = store.offsets(0).unwrap();
                assert!(written <= r.offset, "answered before its write ({written})");
            }
            AsyncAck::Written => assert!(answered.is_none(), "answered before its write"),
        }
        plan.hold_writes.store(false, Ordering::SeqCst);
        if ack == AsyncAck::Written {
            block_on(put).unwrap();
        }
        read_all(&store, 2);
        block_on(store.shutdown()).unwrap();
    }
}

#[test]
fn appended_acks_wait_for_the_write_past_half_the_buffer_and_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let store = open(dir.path(), AsyncAck::Appended, &plan);
    store.put_message_blocking(msg(0)).unwrap();
    plan.hold_writes.store(true, Ordering::SeqCst);
    // ~200 KiB of records into a 256 KiB buffer whose writes are held back.
    let n = 200;
    let mut puts: Vec<_> = (1..n).map(|i| store.put_message(msg(i))).collect();
    let mut acked = 0;
    for p in puts.iter_mut() {
        match done_within(p, Duration::from_millis(300)) {
            Some(r) => {
                let r: Result<PutResult, PutError> = r;
                r.unwrap();
                acked += 1;
            }
            None => break,
        }
    }
    // About half the buffer's worth was answered at append; the rest waits (not refused).
    assert!(
        (100..=140).contains(&acked),
        "{acked} answered while writes were held"
    );
    for p in puts.iter_mut().skip(acked + 1) {
        assert!(
            block_on(poll_once(p)).is_none(),
            "answered ahead of an earlier put"
        );
    }
    plan.hold_writes.store(false, Ordering::SeqCst);
    for p in puts.into_iter().skip(acked) {
        block_on(p).unwrap();
    }
    read_all(&store, n);
    block_on(store.shutdown()).unwrap();
}
