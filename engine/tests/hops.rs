//! Cross-shard messages (the shards' `cross_shard_sends` counters): puts on the shard that
//! owns their queue cost none — in particular the other shard is not sent a dispatch batch
//! for group writes that hold nothing for it — and a put whose queue another shard owns
//! costs its reservation, the answer, and its dispatch.

mod common;

use common::config;
use futures_lite::future::block_on;
use shardmq_engine::{FlushMode, GetRequest, GetStatus, MessageInput, Store, TagFilter};

/// A queue of `topic` owned by `shard`.
fn queue_owned_by(store: &Store, topic: &str, shard: usize) -> u32 {
    (0..64)
        .find(|&q| store.queue_shard(topic, q) == shard)
        .expect("some queue hashes to every shard")
}

fn put_on(store: &Store, shard: usize, topic: &'static str, queue: u32, n: usize) {
    let s = store.clone();
    let task = store.spawn_on(shard, move || async move {
        let puts: Vec<_> = (0..n)
            .map(|i| s.put_message(MessageInput::new(topic, queue, vec![b'h'; 500 + i % 7])))
            .collect();
        for p in puts {
            p.await.unwrap();
        }
    });
    block_on(task).unwrap();
}

#[test]
fn puts_on_their_queues_owner_cross_no_shard_and_others_cost_their_hops() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), 2, FlushMode::Async)).unwrap();
    store
        .create_topic("h", 8, 8, shardmq_engine::Perm::READ_WRITE)
        .unwrap();
    let mine = queue_owned_by(&store, "h", 0);
    let theirs = queue_owned_by(&store, "h", 1);
    let before = [0, 1].map(|s| store.cross_shard_sends(s).unwrap());

    // Many group writes on shard 0, every record for a queue shard 0 owns.
    put_on(&store, 0, "h", mine, 2000);
    let after = [0, 1].map(|s| store.cross_shard_sends(s).unwrap());
    assert_eq!(after, before, "no message crossed shards");

    // The same from shard 0 to a queue shard 1 owns: reservations and dispatch cross.
    put_on(&store, 0, "h", theirs, 200);
    let last = [0, 1].map(|s| store.cross_shard_sends(s).unwrap());
    assert!(last[0] > after[0], "{last:?}");
    assert!(
        last[1] > after[1],
        "the owner's reservation answers cross back: {last:?}"
    );

    for (queue, n) in [(mine, 2000), (theirs, 200)] {
        let req = GetRequest {
            group: "g".into(),
            topic: "h".into(),
            queue_id: queue,
            offset: n - 1,
            max_messages: 1,
            max_bytes: 1 << 20,
            filter: TagFilter::parse("*"),
        };
        assert_eq!(
            block_on(store.get_message(req)).unwrap().status,
            GetStatus::Found
        );
    }
    block_on(store.shutdown()).unwrap();
}
