//! Connections, on the shard that accepted them: a read loop that decodes frames and starts
//! one task per request (so a parked pull never holds up the requests behind it), and a
//! writer task that sends answers as they finish (matched by request id, in any order).
//!
//! Memory a client can make the broker hold is bounded (docs/config.md, "Memory"):
//! - requests: in flight per connection, request bytes per shard, connections per shard
//!   (closed at accept); past a cap a request is answered SYSTEM_BUSY.
//! - answers: counted against the connection's budget (`connection_out_max_bytes`) and the
//!   shard's (`shard_out_max_bytes`) from before a pull's answer is built until its bytes
//!   are written (`budget.rs`). A pull waits for room in its connection's budget (its client
//!   has not taken earlier answers) and is refused SYSTEM_BUSY when the shard's is full;
//!   past the connection's budget the read loop stops reading requests (TCP pushes back).
//! - time: a frame must arrive whole within `frame_timeout_ms` of its first byte, and a
//!   connection on which nothing moves (no byte read or written, and no request being
//!   served) for `connection_idle_timeout_ms` is closed — also one whose client stopped
//!   reading its answers.
//!
//! A connection that closes (end of stream, error, timeout) drops all its work at once: its
//! requests' tasks are cancelled, answers not yet written are dropped and their bytes given
//! back. A frame the decoder refuses costs its connection only: one error frame (request id
//! 0, status BadRequest, the reason as remark), written within a short grace, and a close.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use shardmq_engine::waiters::LocalEvent;
use shardmq_protocol::{error_response, Frame, FrameDecoder, Header, Status};

use super::budget::{Answers, Budget};
use super::clients::ClientChannel;
use super::closing::{Closing, UntilClosed, WaitClosed};
use super::{handler, Broker};

/// Answers smaller than this are copied into one buffer with their neighbours and written
/// together; larger ones (pull answers) are written as they are.
const COALESCE_MAX: usize = 64 << 10;

/// A large answer is written in pieces of this size, so that a client reading slowly but
/// steadily shows progress to the idle timeout.
const WRITE_PIECE_BYTES: usize = 256 << 10;

/// Bytes a connection reads at once into its scratch buffer.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// How long the error frame of a refused frame may take to be written before the close.
const FAREWELL_GRACE: Duration = Duration::from_secs(1);

/// Numbers this process's connections (heartbeats remember which one they came on).
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// What a request's handler knows of the connection it came on.
pub struct ConnCtx {
    pub peer: SocketAddr,
    /// For pushing frames to the client later (consumer group notifications).
    pub channel: ClientChannel,
    /// Room for answers: a pull reserves its answer here before building it.
    pub answers: Answers,
}

/// What the connections of one shard share.
pub struct ShardLoad {
    request_bytes: Cell<usize>,
    connections: Cell<usize>,
    /// Answer bytes of all the shard's connections (`shard_out_max_bytes`).
    answers: Rc<Budget>,
}

/// Serves a shard's listeners (the port all shards share, and its own) until the broker
/// stops; their connections share the shard's caps.
pub async fn serve_shard(broker: Arc<Broker>, listeners: Vec<TcpListener>) {
    if let Some(shard) = broker.store.current_shard() {
        super::metrics::Metrics::enter_shard(shard);
    }
    let load = Rc::new(ShardLoad {
        request_bytes: Cell::new(0),
        connections: Cell::new(0),
        answers: Rc::new(Budget::new(broker.settings.shard_out_max_bytes)),
    });
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| glommio::spawn_local(accept_loop(broker.clone(), load.clone(), l)))
        .collect();
    for l in loops {
        l.await;
    }
}

/// Accepts until the broker stops.
async fn accept_loop(broker: Arc<Broker>, load: Rc<ShardLoad>, listener: TcpListener) {
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            broker.stopped().await;
            None
        })
        .await;
        match next {
            None => return,
            Some(Ok(stream)) => {
                if load.connections.get() >= broker.settings.shard_connections_max {
                    broker.metrics.here().busy.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                glommio::spawn_local(serve(broker.clone(), load.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers waiting for the writer.
#[derive(Default)]
struct Outgoing {
    /// Frames the broker pushes to the client (group notifications): not answers, not counted.
    pushed: Vec<Bytes>,
    /// Small answers, encoded back to back.
    small: BytesMut,
    /// Large answers' pieces (head, fields, body), in order.
    large: VecDeque<Bytes>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.pushed.is_empty() && self.small.is_empty() && self.large.is_empty()
    }
}

/// One connection's state, shared by its read loop, writer and request tasks.
struct Conn {
    broker: Arc<Broker>,
    load: Rc<ShardLoad>,
    ctx: Rc<ConnCtx>,
    /// Answers waiting for the writer (their bytes counted in `ctx.answers`), and its wake-up.
    out: RefCell<Outgoing>,
    out_ready: LocalEvent,
    in_flight: Cell<usize>,
    /// Wakes the close sequence when the last request task ends.
    task_ended: LocalEvent,
    closing: Closing,
    /// When a byte last moved either way (or a served request showed the client waits).
    last_progress: Cell<Instant>,
    /// When the first byte of the frame now partly read arrived (none while the read loop
    /// pauses for answers to drain).
    frame_started: Cell<Option<Instant>>,
    /// Why the watchdog closed the connection.
    end: Cell<Option<End>>,
}

impl Conn {
    fn close(&self) {
        self.closing.close();
    }

    fn wait_closed(&self) -> WaitClosed<'_> {
        self.closing.wait()
    }

    /// Runs `f` unless the connection closes first (`None` then).
    fn until_closed<F: std::future::Future>(&self, f: F) -> UntilClosed<'_, F> {
        UntilClosed::new(&self.closing, f)
    }

    /// Queues an answer for the writer: a small one encoded straight into the shared buffer
    /// (one copy, one write for many), a large one (a pull's) as its head, fields and body,
    /// never copied.
    fn answer(&self, f: Frame) {
        if self.closing.is_closed() {
            return;
        }
        let n = f.encoded_len();
        self.ctx.answers.take(n);
        let mut out = self.out.borrow_mut();
        if n < COALESCE_MAX {
            f.encode(&mut out.small);
        } else {
            let mut head = BytesMut::with_capacity(32);
            f.encode_head(&mut head);
            out.large.push_back(head.freeze());
            out.large
                .extend([f.fields, f.body].into_iter().filter(|b| !b.is_empty()));
        }
        drop(out);
        self.out_ready.notify();
    }

    fn progress(&self) {
        self.last_progress.set(Instant::now());
    }
}

struct ConnGuard {
    broker: Arc<Broker>,
    load: Rc<ShardLoad>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.load.connections.set(self.load.connections.get() - 1);
        self.broker
            .metrics
            .here()
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// End of stream or a read error: the client is gone.
    Eof,
    /// The writer failed (the client is gone).
    Closed,
    /// The decoder refused a frame; its error frame is queued.
    BadFrame,
    FrameTimeout,
    Idle,
}

async fn serve(broker: Arc<Broker>, load: Rc<ShardLoad>, stream: TcpStream) {
    load.connections.set(load.connections.get() + 1);
    broker
        .metrics
        .here()
        .connections
        .fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard {
        broker: broker.clone(),
        load: load.clone(),
    };
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = stream.set_nodelay(true);
    let (rd, wr) = futures_lite::io::split(stream);
    let (push_tx, push_rx) = flume::unbounded::<Bytes>();
    let answers = Answers {
        conn: Rc::new(Budget::new(broker.settings.connection_out_max_bytes)),
        shard: load.answers.clone(),
    };
    let conn = Rc::new(Conn {
        broker: broker.clone(),
        load,
        ctx: Rc::new(ConnCtx {
            peer,
            channel: ClientChannel {
                conn_id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
                tx: push_tx.downgrade(),
            },
            answers: answers.clone(),
        }),
        out: RefCell::default(),
        out_ready: LocalEvent::default(),
        in_flight: Cell::new(0),
        task_ended: LocalEvent::default(),
        closing: Closing::default(),
        last_progress: Cell::new(Instant::now()),
        frame_started: Cell::new(None),
        end: Cell::new(None),
    });
    let writer = glommio::spawn_local(write_loop(conn.clone(), wr, push_rx));
    glommio::spawn_local(watchdog(conn.clone())).detach();
    let end = read_loop(&conn, rd).await;
    if matches!(end, End::FrameTimeout | End::Idle) {
        tracing::info!(%peer, reason = ?end, "closing a connection");
    }
    if end == End::BadFrame {
        // Let the error frame (and answers before it) go out, briefly.
        futures_lite::future::or(conn.ctx.answers.conn.wait_empty(), async {
            glommio::timer::sleep(FAREWELL_GRACE).await;
        })
        .await;
    }
    conn.close();
    // Every request task sees the close and ends (dropping what it held) at its next poll.
    loop {
        let generation = conn.task_ended.generation();
        if conn.in_flight.get() == 0 {
            break;
        }
        conn.task_ended.wait_past(generation).await;
    }
    writer.await;
    // Answers queued and never written: no task holds a reservation any more, so what the
    // connection still counts is exactly those bytes.
    answers.give(answers.conn.used());
    drop(push_tx);
    broker.departed(&broker.clients.connection_closed(conn.ctx.channel.conn_id));
}

/// Decodes and dispatches frames until the connection ends; says why.
async fn read_loop(conn: &Rc<Conn>, mut rd: ReadHalf<TcpStream>) -> End {
    let decoder = FrameDecoder::new(conn.broker.settings.frame_max_bytes);
    let mut buf = BytesMut::new();
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let mut decoded = false;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    decoded = true;
                    dispatch(conn, frame);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(peer = %conn.ctx.peer, error = %e, "closing a connection after a bad frame");
                    let h = Header {
                        flags: 0,
                        opcode: 0,
                        status: 0,
                        request_id: 0,
                    };
                    conn.answer(error_response(&h, Status::BadRequest, e.to_string()));
                    return End::BadFrame;
                }
            }
        }
        // The frame clock (the watchdog's): from the first byte of a frame still partial.
        if buf.is_empty() {
            conn.frame_started.set(None);
        } else if decoded || conn.frame_started.get().is_none() {
            conn.frame_started.set(Some(Instant::now()));
        }
        // Answers the client has not taken yet: read no more requests until they drain.
        if conn.ctx.answers.conn.over() {
            // The pause is ours, not the client's: the frame clock stops meanwhile.
            let paused = conn.frame_started.take().is_some();
            let drained = conn.ctx.answers.conn.wait_within();
            if conn.until_closed(drained).await.is_none() {
                return conn.end.get().unwrap_or(End::Closed);
            }
            if paused {
                conn.frame_started.set(Some(Instant::now()));
            }
            continue;
        }
        // What the frame being read still lacks (checked against the frame limit).
        let missing = match decoder.needed(&buf) {
            Ok(Some(total)) => total.saturating_sub(buf.len()),
            _ => 0,
        };
        let at = buf.len();
        if missing > READ_CHUNK_BYTES {
            // A large frame is read straight into its place, a mebibyte at a time (a frame
            // announced and never sent holds no more): each byte is zeroed once, then
            // overwritten by the reads.
            let end = at + missing.min(1 << 20);
            buf.resize(end, 0);
            let mut filled = at;
            while filled < end {
                let outcome = conn.until_closed(rd.read(&mut buf[filled..end])).await;
                let Some(n) = outcome.map(|r| r.unwrap_or_default()) else {
                    buf.truncate(filled);
                    return conn.end.get().unwrap_or(End::Closed);
                };
                if n == 0 {
                    buf.truncate(filled);
                    return End::Eof;
                }
                filled += n;
                conn.progress();
            }
            continue;
        }
        // Anything else through the scratch buffer: a read costs a copy of what arrived
        // instead of zeroing a whole chunk of `buf` every time. A read error ends the
        // connection like an end of stream does.
        let outcome = conn.until_closed(rd.read(&mut scratch[..])).await;
        let Some(n) = outcome.map(|r| r.unwrap_or_default()) else {
            return conn.end.get().unwrap_or(End::Closed);
        };
        buf.extend_from_slice(&scratch[..n]);
        if n == 0 {
            return End::Eof;
        }
        conn.progress();
    }
}

/// Closes the connection when its current frame is past `frame_timeout_ms` or it has been
/// idle for `connection_idle_timeout_ms`, saying why in `conn.end`. One timer per
/// connection, re-armed only when it fires (not per read).
async fn watchdog(conn: Rc<Conn>) {
    let settings = &conn.broker.settings;
    let frame_timeout = Duration::from_millis(settings.frame_timeout_ms);
    let idle_timeout = Duration::from_millis(settings.connection_idle_timeout_ms);
    loop {
        let now = Instant::now();
        let frame_deadline = conn.frame_started.get().map(|t| t + frame_timeout);
        if frame_deadline.is_some_and(|d| now >= d) {
            conn.end.set(Some(End::FrameTimeout));
            conn.close();
            return;
        }
        if now >= conn.last_progress.get() + idle_timeout {
            // A request being served with nothing owed to the client (a parked pull): the
            // client waits for us, so the connection is not idle.
            if conn.in_flight.get() > 0 && conn.ctx.answers.conn.used() == 0 {
                conn.progress();
            } else {
                conn.end.set(Some(End::Idle));
                conn.close();
                return;
            }
        }
        let idle_at = conn.last_progress.get() + idle_timeout;
        let next = frame_deadline.map_or(idle_at, |d| d.min(idle_at));
        let slept = glommio::timer::sleep(next.saturating_duration_since(now));
        if conn.until_closed(slept).await.is_none() {
            return;
        }
    }
}

/// Writes answers (counted) and frames the broker pushes (not counted) until the connection
/// closes or a write fails.
async fn write_loop(conn: Rc<Conn>, mut wr: WriteHalf<TcpStream>, push_rx: flume::Receiver<Bytes>) {
    // Pushes come from any thread; one task moves them into the outgoing queue, so the
    // writer waits on one local event only.
    let pushes = {
        let conn = conn.clone();
        glommio::spawn_local(async move {
            while let Ok(b) = push_rx.recv_async().await {
                conn.out.borrow_mut().pushed.push(b);
                conn.out_ready.notify();
            }
        })
    };
    let work = async {
        loop {
            loop {
                let generation = conn.out_ready.generation();
                if !conn.out.borrow().is_empty() {
                    break;
                }
                conn.out_ready.wait_past(generation).await;
            }
            let (pushed, small, large) = {
                let mut out = conn.out.borrow_mut();
                let pushed = std::mem::take(&mut out.pushed);
                (pushed, out.small.split(), std::mem::take(&mut out.large))
            };
            if write_round(&conn, &mut wr, pushed, small, large)
                .await
                .is_err()
            {
                return;
            }
        }
    };
    futures_lite::future::or(work, conn.wait_closed()).await;
    drop(pushes);
    // The client is gone or the connection ends: the read loop stops too.
    conn.close();
    let _ = wr.close().await;
}

/// Writes one round: pushed frames and the small answers in one write (a pipelining client's
/// answers would otherwise cost a send each), then each large answer's pieces as they are.
/// Each answer's bytes are given back once written.
async fn write_round(
    conn: &Conn,
    wr: &mut WriteHalf<TcpStream>,
    pushes: Vec<Bytes>,
    small: BytesMut,
    large: VecDeque<Bytes>,
) -> std::io::Result<()> {
    let counted = small.len();
    let joined = if pushes.is_empty() {
        small
    } else {
        let mut b =
            BytesMut::with_capacity(small.len() + pushes.iter().map(Bytes::len).sum::<usize>());
        pushes.iter().for_each(|p| b.extend_from_slice(p));
        b.extend_from_slice(&small);
        b
    };
    if !joined.is_empty() {
        wr.write_all(&joined).await?;
        conn.progress();
        conn.ctx.answers.give(counted);
    }
    for piece in large {
        for part in piece.chunks(WRITE_PIECE_BYTES) {
            wr.write_all(part).await?;
            conn.progress();
        }
        conn.ctx.answers.give(piece.len());
    }
    wr.flush().await
}

fn dispatch(conn: &Rc<Conn>, frame: Frame) {
    let h = frame.header;
    if h.is_response() {
        return;
    }
    let broker = &conn.broker;
    let size = frame.encoded_len();
    let answer = |f: Frame| {
        if !h.is_oneway() {
            conn.answer(f);
        }
    };
    if broker.is_stopping() {
        answer(error_response(
            &h,
            Status::ServiceNotAvailable,
            "the broker is shutting down",
        ));
        return;
    }
    let load = &conn.load;
    if conn.in_flight.get() >= broker.settings.connection_requests_max
        || load.request_bytes.get() + size > broker.settings.shard_request_bytes_max
    {
        broker.metrics.here().busy.fetch_add(1, Ordering::Relaxed);
        answer(error_response(
            &h,
            Status::SystemBusy,
            "too many requests in flight; retry later",
        ));
        return;
    }
    conn.in_flight.set(conn.in_flight.get() + 1);
    load.request_bytes.set(load.request_bytes.get() + size);
    broker.requests_begin();
    let conn = conn.clone();
    glommio::spawn_local(async move {
        // A closed connection's requests stop at once; nobody would read their answers.
        let reply = conn
            .until_closed(handler::handle(&conn.broker, frame, &conn.ctx))
            .await;
        if let Some(reply) = reply {
            if !h.is_oneway() {
                conn.answer(reply);
            }
        }
        conn.in_flight.set(conn.in_flight.get() - 1);
        conn.load
            .request_bytes
            .set(conn.load.request_bytes.get() - size);
        conn.broker.requests_end();
        conn.task_ended.notify();
    })
    .detach();
}
