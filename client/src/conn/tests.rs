//! The shared I/O thread against a tiny in-test peer: many connections on one thread,
//! answers in any order, a peer closing one connection, timeouts from the sweep,
//! deregistration on drop, waits refused on the I/O thread, a panicking callback.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardmq_protocol::message::{response, OffsetResponse, QueueRequest};
use shardmq_protocol::{Frame, FrameDecoder, Header, Request, Status};

use super::Connection;
use crate::error::ClientError;

const LONG: Duration = Duration::from_secs(10);

/// What the peer does with one connection's request for queue `n`: the frames to write now
/// (maybe none), or `None` to close the connection.
type Answerer = dyn Fn(&Header, u32) -> Option<Vec<Frame>> + Send + Sync;

/// A peer on 127.0.0.1:0 that answers GetMaxOffset for queue `n` with offset `n * 10`, one
/// thread per accepted connection.
struct Peer {
    addr: String,
    stop: Arc<AtomicBool>,
    /// The peer's side of every accepted connection, in accept order.
    accepted: flume::Receiver<TcpStream>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections whose client side closed (or that failed).
    ended: Arc<AtomicUsize>,
}

impl Peer {
    fn start(answer: impl Fn(&Header, u32) -> Option<Vec<Frame>> + Send + Sync + 'static) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answer: Arc<Answerer> = Arc::new(answer);
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicUsize::new(0));
        let (tx, accepted) = flume::unbounded();
        let (stop2, open2, ended2) = (Arc::clone(&stop), Arc::clone(&open), Arc::clone(&ended));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                open2.lock().unwrap().push(stream.try_clone().unwrap());
                let _ = tx.send(stream.try_clone().unwrap());
                let (answer, ended) = (Arc::clone(&answer), Arc::clone(&ended2));
                std::thread::spawn(move || {
                    serve(stream, &*answer);
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Peer {
            addr,
            stop,
            accepted,
            open,
            ended,
        }
    }

    /// Answers every request at once.
    fn echo() -> Peer {
        Peer::start(|h, n| Some(vec![offset_frame(h, n)]))
    }

    /// The peer's side of the next accepted connection.
    fn next_accepted(&self) -> TcpStream {
        self.accepted.recv_timeout(LONG).expect("a connection")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(&self.addr);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn serve(mut stream: TcpStream, answer: &Answerer) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            let n = match Request::from_frame(&frame) {
                Ok(Request::GetMaxOffset(q)) => q.queue_id,
                _ => u32::MAX,
            };
            match answer(&frame.header, n) {
                None => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                Some(frames) => {
                    for f in frames {
                        if stream.write_all(&f.to_bytes()).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn offset_frame(h: &Header, n: u32) -> Frame {
    response(
        h,
        Status::Success,
        &OffsetResponse {
            offset: u64::from(n) * 10,
        },
    )
}

fn ask(n: u32) -> Request {
    Request::GetMaxOffset(QueueRequest {
        topic: "T".into(),
        queue_id: n,
    })
}

fn offset(frame: &Frame) -> u64 {
    match shardmq_protocol::decode_reply::<OffsetResponse>(frame, &[]).unwrap() {
        shardmq_protocol::Reply::Typed(Status::Success, o) => o.offset,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Waits until `cond` holds, at most `LONG`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn one_io_thread_reads_a_hundred_connections() {
    let peer = Peer::echo();
    let conns: Vec<Connection> = (0..100)
        .map(|_| Connection::connect(&peer.addr, LONG).unwrap())
        .collect();
    let (tx, rx) = flume::unbounded();
    for (c, conn) in conns.iter().enumerate() {
        for k in 0..5u32 {
            let n = c as u32 * 100 + k;
            let tx = tx.clone();
            conn.call_with(&ask(n), LONG, move |answer| {
                let t = std::thread::current();
                let _ = tx.send((
                    n,
                    answer.map(|f| offset(&f)),
                    t.id(),
                    t.name().map(String::from),
                ));
            });
        }
    }
    let mut threads = std::collections::HashSet::new();
    for _ in 0..500 {
        let (n, got, id, name) = rx.recv_timeout(LONG).expect("every answer");
        assert_eq!(got.unwrap(), u64::from(n) * 10);
        assert_eq!(name.as_deref(), Some("shardmq-io"));
        threads.insert(id);
    }
    assert_eq!(threads.len(), 1, "one thread reads every connection");
    // Blocking calls from many threads, over the same connections.
    std::thread::scope(|s| {
        for (c, conn) in conns.iter().enumerate() {
            s.spawn(move || {
                let n = c as u32 + 7;
                assert_eq!(
                    offset(&conn.call(&ask(n), LONG).unwrap()),
                    u64::from(n) * 10
                );
            });
        }
    });
    assert!(conns.iter().all(|c| c.pending() == 0 && !c.is_broken()));
}

#[test]
fn answers_in_any_order_reach_their_requests() {
    // Each connection's peer holds 6 requests, then answers them last first.
    type Held = std::collections::HashMap<u32, Vec<(Header, u32)>>;
    let held: Arc<Mutex<Held>> = Arc::default();
    let peer = Peer::start(move |h, n| {
        let mut held = held.lock().unwrap();
        let mine = held.entry(n / 100).or_default();
        mine.push((*h, n));
        if mine.len() < 6 {
            return Some(vec![]);
        }
        Some(
            mine.drain(..)
                .rev()
                .map(|(h, n)| offset_frame(&h, n))
                .collect(),
        )
    });
    let conns: Vec<Connection> = (0..10)
        .map(|_| Connection::connect(&peer.addr, LONG).unwrap())
        .collect();
    // Interleaved across connections, and waited for in yet another order.
    let mut futures = Vec::new();
    for k in 0..6u32 {
        for (c, conn) in conns.iter().enumerate() {
            let n = c as u32 * 100 + k;
            futures.push((n, conn.call_async(&ask(n), LONG)));
        }
    }
    for (n, f) in futures.into_iter().rev() {
        assert_eq!(offset(&f.wait().unwrap()), u64::from(n) * 10);
    }
}

#[test]
fn a_peer_closing_one_connection_breaks_only_that_one() {
    // Queue 0 is never answered; others are.
    let peer = Peer::start(|h, n| {
        Some(if n == 0 {
            vec![]
        } else {
            vec![offset_frame(h, n)]
        })
    });
    let a = Connection::connect(&peer.addr, LONG).unwrap();
    let a_peer_side = peer.next_accepted();
    let b = Connection::connect(&peer.addr, LONG).unwrap();
    let held_a = a.call_async(&ask(0), LONG);
    let held_b = b.call_async(&ask(0), LONG);
    eventually("both requests are in", || {
        a.pending() == 1 && b.pending() == 1
    });
    a_peer_side.shutdown(Shutdown::Both).unwrap();
    let err = held_a.wait().unwrap_err();
    assert!(
        matches!(&err, ClientError::Broken { reason, .. } if reason.contains("closed by the peer")),
        "{err:?}"
    );
    assert!(a.is_broken());
    assert!(!b.is_broken());
    assert_eq!(b.pending(), 1, "the other connection's request still waits");
    assert_eq!(offset(&b.call(&ask(3), LONG).unwrap()), 30);
    drop(held_b);
    assert_eq!(b.pending(), 0);
}

#[test]
fn an_unanswered_request_times_out_on_the_sweep() {
    let peer = Peer::start(|_, _| Some(vec![]));
    let conn = Connection::connect(&peer.addr, LONG).unwrap();
    let (tx, rx) = flume::bounded(1);
    let started = Instant::now();
    conn.call_with(&ask(1), Duration::from_millis(50), move |answer| {
        let _ = tx.send(answer);
    });
    let err = rx.recv_timeout(LONG).unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, ClientError::Timeout { after, .. } if after == Duration::from_millis(50)),
        "{err:?}"
    );
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the sweep runs every tick: {took:?}"
    );
    assert_eq!(conn.pending(), 0);
    assert!(!conn.is_broken(), "a timeout leaves the connection usable");
}

#[test]
fn dropping_the_last_handle_deregisters_and_closes_the_socket() {
    let peer = Peer::echo();
    let conn = Connection::connect(&peer.addr, LONG).unwrap();
    let copy = conn.clone();
    assert_eq!(offset(&conn.call(&ask(2), LONG).unwrap()), 20);
    let table = Arc::downgrade(&conn.inner.table);
    drop(conn);
    // One handle left: still registered, still working.
    assert_eq!(offset(&copy.call(&ask(3), LONG).unwrap()), 30);
    assert_eq!(peer.ended.load(Ordering::SeqCst), 0);
    drop(copy);
    // The I/O thread held the table for reading: it lets go once the socket is deregistered.
    eventually("the I/O thread drops the connection", || {
        table.strong_count() == 0
    });
    eventually("the peer sees the end of stream", || {
        peer.ended.load(Ordering::SeqCst) == 1
    });
}

#[test]
fn waiting_for_an_answer_on_the_io_thread_fails_at_once() {
    let peer = Peer::echo();
    let conn = Connection::connect(&peer.addr, LONG).unwrap();
    let (tx, rx) = flume::bounded(1);
    let inner = conn.clone();
    conn.call_with(&ask(1), LONG, move |first| {
        let started = Instant::now();
        let call = inner.call(&ask(2), LONG);
        let wait = inner.call_async(&ask(3), LONG).wait();
        let _ = tx.send((
            first.is_ok(),
            call,
            wait,
            started.elapsed(),
            inner.pending(),
        ));
    });
    let (first_ok, call, wait, took, pending) = rx.recv_timeout(LONG).unwrap();
    assert!(first_ok);
    assert!(matches!(call, Err(ClientError::WaitOnIoThread)), "{call:?}");
    assert!(matches!(wait, Err(ClientError::WaitOnIoThread)), "{wait:?}");
    assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
    assert_eq!(pending, 0, "the refused wait cancelled its request");
    assert!(!ClientError::WaitOnIoThread.is_transport());
    // The I/O thread goes on.
    assert_eq!(offset(&conn.call(&ask(4), LONG).unwrap()), 40);
    assert!(!conn.is_broken());
}

#[test]
fn a_panicking_callback_breaks_only_its_connection() {
    let peer = Peer::echo();
    let bad = Connection::connect(&peer.addr, LONG).unwrap();
    let good = Connection::connect(&peer.addr, LONG).unwrap();
    bad.call_with(&ask(1), LONG, |_| {
        panic!("a callback bug (expected by this test)")
    });
    eventually("the panic breaks its connection", || bad.is_broken());
    let err = bad.call(&ask(2), LONG).unwrap_err();
    assert!(
        matches!(&err, ClientError::Broken { reason, .. } if reason.contains("panicked")),
        "{err:?}"
    );
    assert_eq!(offset(&good.call(&ask(3), LONG).unwrap()), 30);
}
