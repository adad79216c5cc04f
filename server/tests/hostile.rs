//! Clients that misbehave on purpose, against a real `shardmq standalone`: one pipelining
//! pulls whose answers it never reads, and ones that never finish a frame or go silent.
//! Each must cost the broker a bounded amount of memory and time, and nobody else anything.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use shardmq_protocol::message::{
    Empty, KeyValues, PullMessageRequest, PullMessageResponse, SendMessageRequest, SendResult,
};
use shardmq_protocol::{Request, Status};

const MIB: u64 = 1 << 20;

/// With a 600 ms frame timeout and a 1.5 s idle timeout at `addr`: a connection holding the
/// first 10 bytes of `frame` is closed after the frame timeout, not before, and one that sends
/// nothing after the idle timeout.
fn half_frames_and_silence_are_closed_on_time(addr: &str, frame: &[u8]) {
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&frame[..10]).unwrap();
    let waited = closed_within(&mut half, Duration::from_secs(10));
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}, before the frame timeout"
    );
    let mut silent = TcpStream::connect(addr).unwrap();
    let waited = closed_within(&mut silent, Duration::from_secs(10));
    assert!(
        waited >= Duration::from_millis(1200),
        "closed after {waited:?}, before the idle timeout"
    );
}

/// Waits (at most `within`) for the peer to close `s` without sending anything; how long it
/// took.
fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
    s.set_read_timeout(Some(within)).unwrap();
    let t = Instant::now();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => t.elapsed(),
        Ok(n) => panic!("the peer sent {n} bytes instead of closing"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => t.elapsed(),
        Err(e) => panic!("not closed within {within:?}: {e}"),
    }
}

fn status_value(conn: &mut shardmq_server::rpc::Conn, key: &str) -> u64 {
    let (_, kv): (_, KeyValues) = call(conn, &Request::GetBrokerStatus(Empty {}), &[]);
    kv.entries
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {kv:?}"))
}

fn pull(topic: &str, max_bytes: u32, suspend_ms: u32) -> Request {
    Request::PullMessage(PullMessageRequest {
        consumer_group: "hostile".into(),
        topic: topic.into(),
        queue_id: 0,
        queue_offset: 0,
        max_msgs: 1024,
        max_bytes,
        suspend_timeout_ms: suspend_ms,
        commit_offset: -1,
        subscription: "*".into(),
    })
}

/// Waits (polling, bounded) until `f` holds.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pipelined_pulls_never_read_hold_a_bounded_answer_budget_and_die_with_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone_small(
        dir.path(),
        "connection_out_max_bytes = 4194304\n\
         pull_bytes_max = 4194304\n\
         shutdown_grace_ms = 3000\n",
    );
    let addr = broker.get("broker");
    let mut admin = connect(&addr);
    create_topic(&mut admin, "Pulled", 1);
    // 8 MiB in the queue: every pull of 4 MiB from offset 0 finds a full answer.
    for i in 0..32u32 {
        let send = Request::SendMessage(SendMessageRequest {
            producer_group: "p".into(),
            topic: "Pulled".into(),
            queue_id: 0,
            body: Bytes::from(vec![b'a' + (i % 26) as u8; 256 << 10]),
            ..Default::default()
        });
        let _: (_, SendResult) = call(&mut admin, &send, &[]);
    }
    let pid = broker.pid();
    let before = rss_bytes(pid);

    // 200 pulls of 4 MiB each, pipelined on one connection whose answers are never read:
    // 800 MiB of answers if the broker built them all.
    let mut hostile = TcpStream::connect(&addr).unwrap();
    let pulls: Vec<u8> = (0..200u64)
        .flat_map(|id| {
            pull("Pulled", 4 << 20, 0)
                .to_frame(id + 1, false)
                .to_bytes()
                .to_vec()
        })
        .collect();
    hostile.write_all(&pulls).unwrap();
    // The broker answers until the client's socket buffers and its own answer budget are
    // full, then waits. Watch it for a while: memory must not climb.
    let watch_until = Instant::now() + Duration::from_secs(3);
    let mut gets_before = 0;
    while Instant::now() < watch_until {
        gets_before = status_value(&mut admin, "get_messages");
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = peak_rss_bytes(pid);
    // Others are still served meanwhile: the shard's budget is not the hostile client's.
    let (status, got): (_, PullMessageResponse) =
        call(&mut admin, &pull("Pulled", 1 << 20, 0), PULL);
    assert_eq!(status, Status::Success);
    assert!(!got.messages.is_empty());

    // The bound (docs/config.md, "Memory"): per shard the store's budgets (I/O memory, write
    // buffer, tail and read caches); per connection a frame being read, the answer budget
    // and one answer over it; over the process's base before the flood.
    let shards = 2;
    let per_shard = 4 * MIB + 8 * MIB + 8 * MIB + 8 * MIB;
    let per_connection = 16 * MIB + 4 * MIB + 5 * MIB;
    let bound = before + shards * per_shard + 2 * per_connection;
    eprintln!(
        "pull flood: RSS before {} MiB, peak {} MiB, bound {} MiB (800 MiB asked for)",
        before / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak RSS {peak} over the bound {bound}");

    // The client goes: its waiting pulls are dropped at once, nothing more is read for them.
    drop(hostile);
    eventually(
        "the closed connection's requests end",
        Duration::from_secs(10),
        || status_value(&mut admin, "requests_in_flight") == 1,
    );
    let gets_after_close = status_value(&mut admin, "get_messages");
    assert!(
        gets_after_close <= gets_before + 2 * 1024,
        "pulls went on being served after the close: {gets_before} -> {gets_after_close}"
    );
    eventually("the connection is gone", Duration::from_secs(10), || {
        status_value(&mut admin, "connections") == 1
    });
    let after = rss_bytes(pid);
    eprintln!("pull flood: RSS after the client left {} MiB", after / MIB);
    assert!(
        after <= bound,
        "RSS {after} after the client left, over {bound}"
    );

    // Under the same flood (and a parked pull), a graceful stop keeps within its grace.
    let mut again = TcpStream::connect(&addr).unwrap();
    again.write_all(&pulls).unwrap();
    let mut parked = TcpStream::connect(&addr).unwrap();
    parked
        .write_all(&pull("Pulled", 1024, 0).to_frame(1, false).to_bytes())
        .unwrap();
    eventually("the flood is being served", Duration::from_secs(10), || {
        status_value(&mut admin, "requests_in_flight") > 1
    });
    let mut broker = broker;
    let t = Instant::now();
    let exit = broker.term();
    let took = t.elapsed();
    eprintln!("pull flood: SIGTERM to exit {took:?}");
    assert!(exit.success(), "{exit:?}\n{}", broker.log_text());
    assert!(took < Duration::from_secs(3 + 5), "stopping took {took:?}");
    drop((again, parked));
}

#[test]
fn a_frame_never_finished_and_a_silent_connection_are_closed_after_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(
        dir.path(),
        &[
            "--set",
            "broker.frame_timeout_ms=600",
            "--set",
            "broker.connection_idle_timeout_ms=1500",
        ],
    );
    let addr = broker.get("broker");

    let frame = pull("T", 1024, 0).to_frame(1, false).to_bytes();
    half_frames_and_silence_are_closed_on_time(&addr, &frame);

    // One that finishes its frames slowly but steadily is not closed, nor is a long-polling
    // one whose pull is parked past the idle timeout.
    let mut admin = connect(&addr);
    create_topic(&mut admin, "T", 1);
    let mut slow = TcpStream::connect(&addr).unwrap();
    for piece in frame.chunks(frame.len() / 3 + 1) {
        slow.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut parked = connect(&addr);
    let t = Instant::now();
    let (status, _): (_, PullMessageResponse) = call(&mut parked, &pull("T", 1024, 2500), PULL);
    assert_eq!(status, Status::PullNotFound);
    assert!(
        t.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    let (status, _): (_, PullMessageResponse) = call(&mut parked, &pull("T", 1024, 0), PULL);
    assert_eq!(
        status,
        Status::PullNotFound,
        "the parked pull's connection is open"
    );
    let mut answer = [0u8; 4];
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.read_exact(&mut answer)
        .expect("the slowly sent frame was answered");
}

#[test]
fn the_nameserver_closes_half_sent_frames_and_silent_connections_and_caps_their_number() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(
        dir.path(),
        &[
            "--set",
            "namesrv.frame_timeout_ms=600",
            "--set",
            "namesrv.connection_idle_timeout_ms=1500",
            "--set",
            "namesrv.connections_max=8",
        ],
    );
    let ns = broker.get("namesrv");
    let frame = Request::GetBrokerStatus(Empty {})
        .to_frame(1, false)
        .to_bytes();
    half_frames_and_silence_are_closed_on_time(&ns, &frame);

    // Past the cap a new connection is closed at once; the ones before it are served.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&ns).unwrap()).collect();
    let mut extra = TcpStream::connect(&ns).unwrap();
    closed_within(&mut extra, Duration::from_secs(1));
    drop(held);
    eventually(
        "the NameServer serves again",
        Duration::from_secs(10),
        || {
            let (ok, out, _) = admin(&ns, &["cluster", "list"]);
            ok && out.contains("broker-a")
        },
    );
}
