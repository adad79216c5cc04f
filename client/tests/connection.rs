//! `Connection` against fake peers: pipelining with answers out of order, many callers at
//! once, timeouts, cancellation, a peer that closes, oneway frames.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{dead_addr, reply, Answer, FakeServer, Handler};
use shardmq_client::{ClientError, Connection};
use shardmq_protocol::message::{response, OffsetResponse, QueueRequest};
use shardmq_protocol::{Frame, Header, Request, Status};

const LONG: Duration = Duration::from_secs(10);

/// GetMaxOffset for queue `n`: the echo server answers offset `n * 10`.
fn ask(n: u32) -> Request {
    Request::GetMaxOffset(QueueRequest {
        topic: "T".into(),
        queue_id: n,
    })
}

fn queue_of(r: &Request) -> u32 {
    match r {
        Request::GetMaxOffset(q) => q.queue_id,
        _ => u32::MAX,
    }
}

fn offset(frame: &Frame) -> u64 {
    match shardmq_protocol::decode_reply::<OffsetResponse>(frame, &[]).unwrap() {
        shardmq_protocol::Reply::Typed(Status::Success, o) => o.offset,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn echo_server() -> FakeServer {
    FakeServer::start_fn(|h, r| {
        reply(
            h,
            &OffsetResponse {
                offset: u64::from(queue_of(&r)) * 10,
            },
        )
    })
}

/// Holds requests until `n` have arrived, then answers them all, last first.
fn reverse_after(n: usize) -> FakeServer {
    FakeServer::start(move || {
        let mut held: Vec<(Header, u32)> = Vec::new();
        let h: Handler = Box::new(move |h, r| {
            held.push((*h, queue_of(&r)));
            if held.len() < n {
                return Answer::Frames(vec![]);
            }
            let frames = held
                .drain(..)
                .rev()
                .map(|(h, q)| {
                    response(
                        &h,
                        Status::Success,
                        &OffsetResponse {
                            offset: u64::from(q) * 10,
                        },
                    )
                })
                .collect();
            Answer::Frames(frames)
        });
        h
    })
}

#[test]
fn pipelined_requests_complete_by_id_when_answered_out_of_order() {
    // The server answers only once all 8 are in: they must all be outstanding at once.
    let server = reverse_after(8);
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let futures: Vec<_> = (0..8).map(|n| conn.call_async(&ask(n), LONG)).collect();
    for (n, f) in futures.into_iter().enumerate() {
        assert_eq!(offset(&f.wait().unwrap()), n as u64 * 10);
    }
    assert_eq!(conn.pending(), 0);
}

#[test]
fn futures_can_be_awaited_from_an_executor() {
    let server = reverse_after(3);
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let fs: Vec<_> = (1..=3).map(|n| conn.call_async(&ask(n), LONG)).collect();
    let got = futures_lite::future::block_on(async {
        let mut out = Vec::new();
        for f in fs {
            out.push(offset(&f.await.unwrap()));
        }
        out
    });
    assert_eq!(got, vec![10, 20, 30]);
}

#[test]
fn many_threads_share_one_connection() {
    let server = echo_server();
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let conn = conn.clone();
            s.spawn(move || {
                for i in 0..100u32 {
                    let n = t * 1000 + i;
                    let f = conn.call(&ask(n), LONG).unwrap();
                    assert_eq!(offset(&f), u64::from(n) * 10);
                }
            });
        }
    });
    assert_eq!(server.connections(), 1);
    assert_eq!(conn.pending(), 0);
}

#[test]
fn callbacks_get_each_answer_once() {
    let server = reverse_after(4);
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let (tx, rx) = flume::unbounded();
    let calls = Arc::new(AtomicUsize::new(0));
    for n in 0..4 {
        let (tx, calls) = (tx.clone(), Arc::clone(&calls));
        conn.call_with(&ask(n), LONG, move |answer| {
            calls.fetch_add(1, Ordering::SeqCst);
            tx.send((n, answer.map(|f| offset(&f)))).unwrap();
        });
    }
    let mut got: Vec<(u32, u64)> = (0..4)
        .map(|_| {
            let (n, r) = rx.recv_timeout(LONG).unwrap();
            (n, r.unwrap())
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![(0, 0), (1, 10), (2, 20), (3, 30)]);
    drop(conn);
    drop(server);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn a_call_times_out_and_its_late_answer_is_dropped() {
    // The first request is answered only when the second arrives, after the first timed out.
    let server = reverse_after(2);
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let err = conn.call(&ask(1), Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { after, .. } if after == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(conn.pending(), 0, "a timed-out call leaves no entry");
    // The late answer to request 1 arrives first; request 2 still gets its own.
    assert_eq!(offset(&conn.call(&ask(2), LONG).unwrap()), 20);
    assert!(!conn.is_broken());
}

#[test]
fn an_async_call_times_out_through_the_reader_sweep() {
    let server = FakeServer::start_fn(|_, _| Answer::Frames(vec![]));
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let f = conn.call_async(&ask(1), Duration::from_millis(50));
    let err = futures_lite::future::block_on(f).unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert_eq!(conn.pending(), 0);
}

#[test]
fn dropping_a_future_cancels_its_request() {
    let server = FakeServer::start_fn(|_, _| Answer::Frames(vec![]));
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let f = conn.call_async(&ask(1), LONG);
    assert_eq!(conn.pending(), 1);
    drop(f);
    assert_eq!(conn.pending(), 0);
}

#[test]
fn a_peer_closing_fails_every_pending_call_and_later_ones() {
    // Holds two requests; the third closes the connection.
    let server = FakeServer::start(|| {
        let mut seen = 0;
        let h: Handler = Box::new(move |_, _| {
            seen += 1;
            if seen < 3 {
                Answer::Frames(vec![])
            } else {
                Answer::Close
            }
        });
        h
    });
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let a = conn.call_async(&ask(1), LONG);
    let b = conn.call_async(&ask(2), LONG);
    let c = conn.call(&ask(3), LONG).unwrap_err();
    for err in [a.wait().unwrap_err(), b.wait().unwrap_err(), c] {
        assert!(matches!(err, ClientError::Broken { .. }), "{err:?}");
    }
    assert!(conn.is_broken());
    assert_eq!(conn.pending(), 0);
    let err = conn.call(&ask(4), LONG).unwrap_err();
    assert!(matches!(err, ClientError::Broken { .. }), "{err:?}");
    assert!(conn.oneway(&ask(5)).is_err());
}

#[test]
fn closing_here_fails_pending_calls() {
    let server = FakeServer::start_fn(|_, _| Answer::Frames(vec![]));
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let f = conn.call_async(&ask(1), LONG);
    conn.close();
    let err = f.wait().unwrap_err();
    assert!(
        matches!(&err, ClientError::Broken { reason, .. } if reason.contains("closed")),
        "{err:?}"
    );
    assert!(conn.is_broken());
}

#[test]
fn oneway_requests_carry_the_flag_and_wait_for_nothing() {
    let (tx, rx) = flume::unbounded();
    let server = FakeServer::start_fn(move |h, r| {
        tx.send((h.is_oneway(), queue_of(&r))).unwrap();
        Answer::Frames(vec![])
    });
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    conn.oneway(&ask(7)).unwrap();
    assert_eq!(conn.pending(), 0);
    assert_eq!(rx.recv_timeout(LONG).unwrap(), (true, 7));
}

#[test]
fn a_refused_connect_is_an_io_error_naming_the_address() {
    let addr = dead_addr();
    let err = Connection::connect(&addr, Duration::from_secs(2)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Io { addr: a, .. } if *a == addr),
        "{err:?}"
    );
    let err = Connection::connect("not an address", Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");
}

#[test]
fn garbage_from_the_peer_breaks_the_connection() {
    let server = FakeServer::start_fn(|h, _| {
        let mut f = response(h, Status::Success, &OffsetResponse { offset: 1 });
        // Corrupt the framing: a header with unknown flag bits.
        f.header.flags = 0x80;
        Answer::Frames(vec![f])
    });
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let err = conn.call(&ask(1), LONG).unwrap_err();
    assert!(
        matches!(&err, ClientError::Broken { reason, .. } if reason.contains("flag")),
        "{err:?}"
    );
}

#[test]
fn corked_requests_leave_together_when_the_cork_ends() {
    let server = echo_server();
    let conn = Connection::connect(&server.addr(), LONG).unwrap();
    let futures = shardmq_client::conn::corked(|| {
        let fs: Vec<_> = (1..=50).map(|n| conn.call_async(&ask(n), LONG)).collect();
        // Held back until the cork ends: all 50 are waiting.
        assert_eq!(conn.pending(), 50);
        fs
    });
    for (n, f) in (1..=50u64).zip(futures) {
        assert_eq!(offset(&f.wait().unwrap()), n * 10);
    }
    // Outside a cork, a request goes out at once.
    assert_eq!(offset(&conn.call(&ask(7), LONG).unwrap()), 70);
}
