//! A flood far past the broker's caps: every request is answered (stored or SYSTEM_BUSY),
//! the broker's peak memory stays under the bound its caps state, and the refused sends go
//! through once the flood eases.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use common::*;
use shardmq_protocol::message::{SendMessageRequest, SendResult};
use shardmq_protocol::{FrameDecoder, Request, Status};

const MIB: u64 = 1 << 20;
const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 100;
const BODY: usize = 1 << 20;

fn send(topic: &str, i: usize) -> Request {
    Request::SendMessage(SendMessageRequest {
        producer_group: "flood".into(),
        topic: topic.into(),
        queue_id: (i % 4) as u32,
        body: Bytes::from(vec![b'f'; BODY - 1024]),
        ..Default::default()
    })
}

#[test]
fn a_flood_past_the_caps_is_refused_busy_memory_stays_bounded_and_it_goes_through_after() {
    let dir = tempfile::tempdir().unwrap();
    // Caps small enough that a 400 MiB flood must meet them.
    let broker = standalone_small(
        dir.path(),
        "message_max_bytes = 1048576\n\
         frame_max_bytes = 2097152\n\
         connection_requests_max = 16\n\
         shard_request_bytes_max = 4194304\n\
         connection_out_max_bytes = 1048576\n\
         pull_bytes_max = 1048576\n",
    );
    let addr = broker.get("broker");
    let mut admin = connect(&addr);
    create_topic(&mut admin, "Flood", 4);
    let before = peak_rss_bytes(broker.pid());

    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT * 6)).unwrap();
                // Everything first, reading nothing: the broker must not buffer it for us.
                let writer = {
                    let mut w = s.try_clone().unwrap();
                    std::thread::spawn(move || {
                        for i in 0..PER_CONNECTION {
                            let id = (c * PER_CONNECTION + i) as u64;
                            w.write_all(&send("Flood", i).to_frame(id, false).to_bytes())
                                .unwrap();
                        }
                    })
                };
                let decoder = FrameDecoder::default();
                let mut buf = BytesMut::new();
                let mut statuses = Vec::new();
                while statuses.len() < PER_CONNECTION {
                    if let Some(f) = decoder.decode(&mut buf).unwrap() {
                        statuses.push((f.header.request_id, f.header.status()));
                        continue;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).expect("every request is answered");
                    assert!(n > 0, "the broker closed a flooding connection");
                    buf.extend_from_slice(&chunk[..n]);
                }
                writer.join().unwrap();
                statuses
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut stored = 0;
    for f in floods {
        for (id, status) in f.join().unwrap() {
            match status {
                Some(Status::Success) => stored += 1,
                Some(Status::SystemBusy) => refused.push(id),
                other => panic!("request {id} answered {other:?}"),
            }
        }
    }
    let peak = peak_rss_bytes(broker.pid());
    // The stated bound (docs/config.md, "Memory"): the store's budgets per shard (I/O memory,
    // write buffer, tail and read caches), request bytes per shard, and per connection a
    // frame being read, responses waiting and one pull's answer, over a 64 MiB base.
    let shards = 2;
    let per_shard = 4 * MIB + 8 * MIB + 8 * MIB + 8 * MIB + 4 * MIB;
    let per_connection = 2 * MIB + MIB + MIB;
    let bound = 64 * MIB + shards * per_shard + (CONNECTIONS as u64 + 1) * per_connection;
    let offered = (CONNECTIONS * PER_CONNECTION) as u64 * BODY as u64;
    eprintln!(
        "flood: {stored} stored, {} busy; peak RSS {} MiB (before {} MiB, bound {} MiB, offered {} MiB)",
        refused.len(),
        peak / MIB,
        before / MIB,
        bound / MIB,
        offered / MIB
    );
    assert!(peak < bound, "peak RSS {peak} over the bound {bound}");
    assert_eq!(stored + refused.len(), CONNECTIONS * PER_CONNECTION);

    // The flood eased: what was refused goes through now, one at a time.
    for id in refused {
        let i = id as usize % PER_CONNECTION;
        let (_, r): (_, SendResult) = call(&mut admin, &send("Flood", i), &[]);
        assert_eq!(r.queue_id, (i % 4) as u32);
    }
}
