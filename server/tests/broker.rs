//! A real standalone broker process: round trips, hostile bytes, and the in-flight cap.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use common::*;
use shardmq_protocol::message::{
    Empty, KeyValues, OffsetResponse, PullMessageRequest, PullMessageResponse, QueueRequest,
    SendMessageRequest, SendResult,
};
use shardmq_protocol::{Frame, FrameDecoder, Header, Opcode, Request, Status};

fn send_req(topic: &str, queue_id: u32, body: Bytes) -> Request {
    Request::SendMessage(SendMessageRequest {
        producer_group: "pg".into(),
        topic: topic.into(),
        queue_id,
        tags: "TagA".into(),
        body,
        ..Default::default()
    })
}

fn pull_req(topic: &str, queue_id: u32, offset: u64, wait_ms: u32) -> Request {
    Request::PullMessage(PullMessageRequest {
        consumer_group: "cg".into(),
        topic: topic.into(),
        queue_id,
        queue_offset: offset,
        max_msgs: 32,
        max_bytes: 4 << 20,
        suspend_timeout_ms: wait_ms,
        commit_offset: -1,
        subscription: "*".into(),
    })
}

#[test]
fn ten_thousand_messages_come_back_with_the_same_bytes_in_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &[]);
    let mut conn = connect(&broker.get("broker"));
    create_topic(&mut conn, "RoundTrip", 4);
    let mut sent: Vec<Vec<Bytes>> = vec![Vec::new(); 4];
    for i in 0..10_000u32 {
        let q = i % 4;
        // Bodies of varied sizes, each unique.
        let body = Bytes::from(format!("m{i:05}-{}", "x".repeat((i % 300) as usize)));
        let (_, r): (_, SendResult) = call(&mut conn, &send_req("RoundTrip", q, body.clone()), &[]);
        assert_eq!(r.queue_id, q);
        assert_eq!(r.queue_offset, sent[q as usize].len() as u64);
        sent[q as usize].push(body);
    }
    for q in 0..4u32 {
        let mut got = Vec::new();
        let mut offset = 0;
        while (got.len() as u64) < sent[q as usize].len() as u64 {
            let (status, r): (_, PullMessageResponse) =
                call(&mut conn, &pull_req("RoundTrip", q, offset, 1000), PULL);
            assert_eq!(status, Status::Success, "queue {q} at {offset}");
            for m in r.messages {
                assert_eq!(m.queue_offset, offset);
                assert_eq!(m.tags, "TagA");
                got.push(m.body);
                offset += 1;
            }
        }
        assert_eq!(got, sent[q as usize], "queue {q}");
        let (status, r): (_, PullMessageResponse) =
            call(&mut conn, &pull_req("RoundTrip", q, offset, 0), PULL);
        assert_eq!(status, Status::PullNotFound);
        assert_eq!(r.next_begin_offset, offset);
    }
}

/// Reads frames until the peer closes; returns them.
fn frames_until_close(s: &mut TcpStream) -> Vec<Frame> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s
            .read(&mut chunk)
            .expect("the broker answers or closes, never hangs");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(f)) = FrameDecoder::default().decode(&mut buf) {
            out.push(f);
        }
    }
    out
}

#[test]
fn hostile_bytes_cost_only_their_own_connection_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &[]);
    let addr = broker.get("broker");
    let mut good = connect(&addr);
    create_topic(&mut good, "Safe", 1);

    let bad_frame_cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "length over the limit",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
        (
            "length shorter than the header",
            vec![0, 0, 0, 5, 0, 0, 0, 0, 0],
        ),
    ];
    for (what, bytes) in bad_frame_cases {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&bytes).unwrap();
        let frames = frames_until_close(&mut s);
        assert_eq!(frames.len(), 1, "{what}: one error frame, then a close");
        assert_eq!(
            frames[0].header.status(),
            Some(Status::BadRequest),
            "{what}"
        );
        // The broker keeps serving everyone else.
        let _: (_, KeyValues) = call(&mut good, &Request::GetBrokerStatus(Empty {}), &[]);
    }

    // A truncated frame, then the client goes away.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        let whole = send_req("Safe", 0, Bytes::from_static(b"never stored"))
            .to_frame(1, false)
            .to_bytes();
        s.write_all(&whole[..whole.len() / 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(frames_until_close(&mut s).is_empty());
    }

    // An unknown opcode is answered and the connection goes on.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        let odd = Frame::new(
            Header {
                opcode: 999,
                ..Header::request(Opcode::SendMessage, 7)
            },
            Bytes::new(),
            Bytes::new(),
        );
        s.write_all(&odd.to_bytes()).unwrap();
        s.write_all(
            &Request::GetBrokerStatus(Empty {})
                .to_frame(8, false)
                .to_bytes(),
        )
        .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let frames = frames_until_close(&mut s);
        assert_eq!(frames.len(), 2);
        let by_id = |id| frames.iter().find(|f| f.header.request_id == id).unwrap();
        assert_eq!(
            by_id(7).header.status(),
            Some(Status::RequestCodeNotSupported)
        );
        assert_eq!(by_id(8).header.status(), Some(Status::Success));
    }

    // Refused messages: over 4 MiB, a bad topic name, a reserved topic.
    let big = Bytes::from(vec![b'x'; (4 << 20) + 1]);
    let (s, remark) = call_err(&mut good, &send_req("Safe", 0, big));
    assert_eq!(s, Status::MessageIllegal, "{remark}");
    let (s, remark) = call_err(
        &mut good,
        &send_req("bad topic!", 0, Bytes::from_static(b"x")),
    );
    assert_eq!(s, Status::MessageIllegal, "{remark}");
    let (s, _) = call_err(
        &mut good,
        &send_req("%RETRY%g", 0, Bytes::from_static(b"x")),
    );
    assert_eq!(s, Status::MessageIllegal);
    let (s, _) = call_err(&mut good, &send_req("Safe", 5, Bytes::from_static(b"x")));
    assert_eq!(s, Status::QueueIdOutOfRange);

    // Nothing was stored.
    let (_, max): (_, OffsetResponse) = call(
        &mut good,
        &Request::GetMaxOffset(QueueRequest {
            topic: "Safe".into(),
            queue_id: 0,
        }),
        &[],
    );
    assert_eq!(max.offset, 0);
    let (_, status): (_, KeyValues) = call(&mut good, &Request::GetBrokerStatus(Empty {}), &[]);
    let puts = status
        .entries
        .iter()
        .find(|(k, _)| k == "put_messages")
        .unwrap();
    assert_eq!(puts.1, "0");
}

#[test]
fn requests_past_the_in_flight_cap_get_system_busy_and_succeed_once_it_eases() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "[broker]\nconnection_requests_max = 4\n").unwrap();
    let broker = standalone(dir.path(), &["--config", config.to_str().unwrap()]);
    let addr = broker.get("broker");
    let mut admin = connect(&addr);
    create_topic(&mut admin, "Busy", 1);

    // Four long-polling pulls park on the empty queue and fill the connection's cap...
    let mut s = TcpStream::connect(&addr).unwrap();
    for id in 1..=4 {
        s.write_all(
            &pull_req("Busy", 0, 0, 30_000)
                .to_frame(id, false)
                .to_bytes(),
        )
        .unwrap();
    }
    // ...so a fifth request is answered at once, SYSTEM_BUSY.
    s.write_all(
        &send_req("Busy", 0, Bytes::from_static(b"over the cap"))
            .to_frame(5, false)
            .to_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut next = |s: &mut TcpStream| -> Frame {
        loop {
            if let Some(f) = decoder.decode(&mut buf).unwrap() {
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).expect("a response");
            assert!(n > 0, "the broker closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let busy = next(&mut s);
    assert_eq!(busy.header.request_id, 5);
    assert_eq!(busy.header.status(), Some(Status::SystemBusy));

    // A message from another connection wakes the parked pulls; the cap eases.
    let _: (_, SendResult) = call(
        &mut admin,
        &send_req("Busy", 0, Bytes::from_static(b"wake")),
        &[],
    );
    for _ in 0..4 {
        let f = next(&mut s);
        assert!((1..=4).contains(&f.header.request_id));
        assert_eq!(f.header.status(), Some(Status::Success));
    }
    s.write_all(
        &send_req("Busy", 0, Bytes::from_static(b"now it fits"))
            .to_frame(6, false)
            .to_bytes(),
    )
    .unwrap();
    let ok = next(&mut s);
    assert_eq!(ok.header.request_id, 6);
    assert_eq!(ok.header.status(), Some(Status::Success));
}

#[test]
fn the_metrics_endpoint_counts_sends_latencies_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let mut conn = connect(&broker.get("broker"));
    create_topic(&mut conn, "Metered", 1);
    for _ in 0..3 {
        let _: (_, SendResult) = call(
            &mut conn,
            &send_req("Metered", 0, Bytes::from_static(b"abc")),
            &[],
        );
    }
    let _: (_, Empty) = call(
        &mut conn,
        &Request::UpdateConsumerOffset(shardmq_protocol::message::UpdateConsumerOffsetRequest {
            consumer_group: "g".into(),
            topic: "Metered".into(),
            queue_id: 0,
            offset: 1,
        }),
        &[],
    );
    let mut http = TcpStream::connect(broker.get("metrics")).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\nshardmq_put_messages_total 3\n"), "{text}");
    assert!(text.contains("\nshardmq_put_bytes_total 9\n"), "{text}");
    assert!(
        text.contains("\nshardmq_put_latency_seconds_count 3\n"),
        "{text}"
    );
    assert!(
        text.contains("shardmq_consumer_lag_messages{group=\"g\",topic=\"Metered\",queue=\"0\"} 2"),
        "{text}"
    );
    assert!(text.contains("shardmq_disk_used_ratio "), "{text}");
}

#[test]
fn consumer_group_members_follow_heartbeats_and_unregistrations() {
    use shardmq_protocol::message::{
        ConsumerData, GroupRequest, HeartbeatRequest, NameList, UnregisterClientRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(dir.path(), &[]);
    let mut conn = connect(&broker.get("broker"));
    let beat = |conn: &mut shardmq_server::rpc::Conn, id: &str, group: &str| {
        let _: (_, Empty) = call(
            conn,
            &Request::Heartbeat(HeartbeatRequest {
                client_id: id.into(),
                producer_groups: vec![],
                consumers: vec![ConsumerData {
                    group: group.into(),
                    message_model: 0,
                    consume_from: 0,
                    subscriptions: vec![("T".into(), "*".into())],
                }],
            }),
            &[],
        );
    };
    beat(&mut conn, "c2", "G");
    beat(&mut conn, "c1", "G");
    beat(&mut conn, "c3", "Other");
    let members = |conn: &mut shardmq_server::rpc::Conn| {
        let (_, l): (_, NameList) = call(
            conn,
            &Request::GetConsumerList(GroupRequest { group: "G".into() }),
            &[],
        );
        l.names
    };
    assert_eq!(members(&mut conn), vec!["c1".to_string(), "c2".to_string()]);
    let _: (_, Empty) = call(
        &mut conn,
        &Request::UnregisterClient(UnregisterClientRequest {
            client_id: "c1".into(),
            producer_group: String::new(),
            consumer_group: "G".into(),
        }),
        &[],
    );
    assert_eq!(members(&mut conn), vec!["c2".to_string()]);
    // A member whose connection closes leaves at once (its notification to c2 is skipped by
    // this plain connection).
    let mut other = connect(&broker.get("broker"));
    beat(&mut other, "c5", "G");
    assert_eq!(members(&mut conn), vec!["c2".to_string(), "c5".to_string()]);
    drop(other);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while members(&mut conn) != vec!["c2".to_string()] {
        assert!(
            std::time::Instant::now() < deadline,
            "c5 should leave with its connection"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_message_sent_back_goes_to_the_retry_topic_delayed_then_to_the_dead_letter_topic() {
    use shardmq_protocol::message::ConsumerSendBackRequest;
    let dir = tempfile::tempdir().unwrap();
    let broker = standalone(
        dir.path(),
        &["--set", "store.schedule.levels=\"10ms 20ms 300ms 40ms\""],
    );
    let mut conn = connect(&broker.get("broker"));
    create_topic(&mut conn, "Work", 1);
    let (_, sent): (_, SendResult) = call(
        &mut conn,
        &send_req("Work", 0, Bytes::from_static(b"job")),
        &[],
    );
    let back = |conn: &mut shardmq_server::rpc::Conn, times: u32| {
        let _: (_, Empty) = call(
            conn,
            &Request::ConsumerSendBack(ConsumerSendBackRequest {
                group: "G".into(),
                msg_id: sent.msg_id.clone(),
                reconsume_times: times,
                max_reconsume_times: 16,
            }),
            &[],
        );
    };
    let backed = std::time::Instant::now();
    back(&mut conn, 0);
    // Delay level 3 (300 ms here), then in %RETRY%G with its origin.
    let deadline = std::time::Instant::now() + TIMEOUT * 3;
    let retried = loop {
        let (status, r): (_, PullMessageResponse) = call(
            &mut conn,
            &pull_req("%RETRY%G", 0, 0, 1000),
            &[Status::PullNotFound],
        );
        if status == Status::Success {
            break r.messages[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "never retried");
    };
    assert!(
        backed.elapsed() >= std::time::Duration::from_millis(300),
        "retried before its delay"
    );
    assert_eq!(&retried.body[..], b"job");
    assert_eq!(retried.reconsume_times, 1);
    let prop = |k: &str| {
        retried
            .properties
            .iter()
            .find(|(p, _)| p == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(prop("RETRY_TOPIC").as_deref(), Some("Work"));
    assert_eq!(prop("ORIGIN_MSG_ID").as_deref(), Some(sent.msg_id.as_str()));
    // Past the reconsume limit: the dead-letter topic, at once.
    back(&mut conn, 16);
    let (status, r): (_, PullMessageResponse) = call(
        &mut conn,
        &pull_req("%DLQ%G", 0, 0, 5000),
        &[Status::PullNotFound],
    );
    assert_eq!(status, Status::Success);
    assert_eq!(&r.messages[0].body[..], b"job");
}
