//! The shard-aware path: the broker advertises one address per shard, and a client that
//! sends each queue's requests to its owner's address makes no message cross shards (the
//! brokers' `cross_shard_sends_<shard>` counters); a client that knows nothing of shards
//! (the shared port) still gets every message, in order per queue.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use shardmq_client::{Message, PullConsumer, PullOptions};
use shardmq_protocol::message::{
    Empty, KeyValues, PullMessageRequest, PullMessageResponse, SendMessageRequest, SendResult,
};
use shardmq_protocol::{Request, Status};

fn hops(admin: &mut shardmq_server::rpc::Conn) -> Vec<u64> {
    let (_, kv): (_, KeyValues) = call(admin, &Request::GetBrokerStatus(Empty {}), &[]);
    let mut out: Vec<(String, u64)> = kv
        .entries
        .into_iter()
        .filter(|(k, _)| k.starts_with("cross_shard_sends_"))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    out.sort();
    out.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn shard_aware_clients_cross_no_shard_and_others_still_get_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // No delayed-message service: its timers read schedule queues across shards.
    let broker = standalone(dir.path(), &["--set", "store.schedule.enabled=false"]);
    let shards = broker.ready["shards"]
        .as_array()
        .expect("shard addresses")
        .len();
    assert_eq!(shards, 2, "{}", broker.ready);
    let ns = broker.get("namesrv");
    let mut admin = connect(&broker.get("broker"));
    create_topic(&mut admin, "Aware", 8);

    let producer = producer(&ns);
    let consumer = PullConsumer::builder()
        .namesrv_addr(ns.as_str())
        .group("aware")
        .build()
        .unwrap();
    consumer.start().unwrap();
    // Routes first (they come from the NameServer, not across shards), then the counters.
    producer.send(Message::new("Aware", "warm-up")).unwrap();
    let queues = consumer.queues("Aware").unwrap();
    let before = hops(&mut admin);

    for i in 0..400 {
        producer
            .send(Message::new("Aware", format!("m{i}")))
            .unwrap();
    }
    let mut got = 0;
    for q in &queues {
        let mut offset = 0;
        loop {
            let mut opts = PullOptions::new(offset, 64, Duration::ZERO);
            opts.commit_offset = Some(offset);
            let r = consumer.pull_with(q, &opts).unwrap();
            if r.messages.is_empty() {
                break;
            }
            got += r.messages.len();
            offset = r.next_offset;
        }
        consumer.commit_offset(q, offset).unwrap();
    }
    assert_eq!(got, 401);
    let after = hops(&mut admin);
    assert_eq!(after, before, "puts, pulls and commits crossed shards");

    // A client that knows nothing of shards: the shared port, one connection.
    let mut plain = connect(&broker.get("broker"));
    for i in 0..100u32 {
        let send = Request::SendMessage(SendMessageRequest {
            producer_group: "plain".into(),
            topic: "Aware".into(),
            queue_id: 3,
            body: Bytes::from(format!("p{i:03}")),
            ..Default::default()
        });
        let _: (_, SendResult) = call(&mut plain, &send, &[]);
    }
    let mut bodies = Vec::new();
    let mut offset = 0;
    while bodies.len() < 100 {
        let pull = Request::PullMessage(PullMessageRequest {
            consumer_group: "plain".into(),
            topic: "Aware".into(),
            queue_id: 3,
            queue_offset: offset,
            max_msgs: 32,
            max_bytes: 1 << 20,
            suspend_timeout_ms: 0,
            commit_offset: -1,
            subscription: "*".into(),
        });
        let (status, r): (_, PullMessageResponse) = call(&mut plain, &pull, PULL);
        assert_eq!(status, Status::Success);
        bodies.extend(
            r.messages
                .iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .filter(|b| b.starts_with('p')),
        );
        offset = r.next_begin_offset;
    }
    let want: Vec<String> = (0..100).map(|i| format!("p{i:03}")).collect();
    assert_eq!(bodies, want, "every message, in order");
}

#[test]
fn clients_and_the_store_agree_on_which_shard_owns_a_queue() {
    for shards in 1..=8 {
        for topic in ["T", "Orders", "%RETRY%g", "SCHEDULE_TOPIC_XXXX", "é-topic"] {
            for q in 0..64 {
                assert_eq!(
                    shardmq_protocol::shards::queue_shard(topic, q, shards),
                    shardmq_engine::meta::queue_shard(topic, q, shards),
                    "{topic}:{q} of {shards}"
                );
            }
        }
    }
}
