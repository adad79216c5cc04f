//! Connections, on the shard that accepted them: a read loop that decodes frames and starts
//! one task per request (so a parked pull never holds up the requests behind it), and a
//! writer task that sends responses as they finish (matched by request id, in any order).
//!
//! Caps, each answered with SYSTEM_BUSY instead of growing memory: requests in flight per
//! connection, request bytes in flight per shard, connections per shard (closed at accept).
//! A client that does not read its responses is not answered into memory: past
//! `connection_out_max_bytes` of responses waiting to be written, the connection stops
//! reading requests until the writer catches up (TCP pushes back on the client).
//! A frame the decoder refuses costs its connection only: one error frame (request id 0,
//! status BadRequest, the reason as remark) and a close.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use shardmq_protocol::{error_response, Frame, FrameDecoder, Header, Status};

use super::clients::ClientChannel;
use super::{handler, Broker};

/// Responses smaller than this are copied into one buffer with their neighbours and written
/// together; larger ones (pull answers) are written as they are.
const COALESCE_MAX: usize = 64 << 10;

/// Numbers this process's connections (heartbeats remember which one they came on).
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// What a request's handler knows of the connection it came on.
pub struct ConnCtx {
    pub peer: SocketAddr,
    /// For pushing frames to the client later (consumer group notifications).
    pub channel: ClientChannel,
}

/// What the connections of one shard share.
#[derive(Default)]
pub struct ShardLoad {
    request_bytes: Cell<usize>,
    connections: Cell<usize>,
}

/// Accepts until the broker stops.
pub async fn accept_loop(broker: Arc<Broker>, listener: TcpListener) {
    let load = Rc::new(ShardLoad::default());
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
                    broker.metrics.busy.fetch_add(1, Ordering::Relaxed);
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

struct ConnGuard {
    broker: Arc<Broker>,
    load: Rc<ShardLoad>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.load.connections.set(self.load.connections.get() - 1);
        self.broker
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(broker: Arc<Broker>, load: Rc<ShardLoad>, stream: TcpStream) {
    load.connections.set(load.connections.get() + 1);
    broker.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard {
        broker: broker.clone(),
        load: load.clone(),
    };
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let (tx, rx) = flume::unbounded::<Bytes>();
    let (push_tx, push_rx) = flume::unbounded::<Bytes>();
    let ctx = Rc::new(ConnCtx {
        peer,
        channel: ClientChannel {
            conn_id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            tx: push_tx.downgrade(),
        },
    });
    let (drained_tx, drained_rx) = flume::bounded::<()>(1);
    let queued = Rc::new(Cell::new(0usize));
    let out = Rc::new(Outbox {
        tx,
        queued: queued.clone(),
    });
    // The writer holds only the byte count, not a sender: it ends when the last sender (the
    // read loop's and its requests') is gone.
    let writer = {
        glommio::spawn_local(async move {
            // Responses (counted in `queued`) and frames the broker pushes (not counted).
            let next = || {
                futures_lite::future::or(
                    async { rx.recv_async().await.map(|b| (b, true)) },
                    async {
                        match push_rx.recv_async().await {
                            Ok(b) => Ok((b, false)),
                            // No pushes any more; go on with the responses alone.
                            Err(_) => rx.recv_async().await.map(|b| (b, true)),
                        }
                    },
                )
            };
            while let Ok(first) = next().await {
                let mut batch = vec![first];
                batch.extend(rx.try_iter().map(|b| (b, true)));
                batch.extend(push_rx.try_iter().map(|b| (b, false)));
                // Small frames go out together, one write for the lot (a pipelining client's
                // responses would otherwise cost a send each); a large one on its own.
                let mut small = BytesMut::new();
                for (b, counted) in &batch {
                    if b.len() >= COALESCE_MAX {
                        if !small.is_empty() && wr.write_all(&small.split()).await.is_err() {
                            return;
                        }
                        if wr.write_all(b).await.is_err() {
                            return;
                        }
                    } else {
                        small.extend_from_slice(b);
                    }
                    if *counted {
                        queued.set(queued.get() - b.len());
                    }
                }
                if !small.is_empty() && wr.write_all(&small).await.is_err() {
                    return;
                }
                if wr.flush().await.is_err() {
                    return;
                }
                let _ = drained_tx.try_send(());
            }
            let _ = wr.close().await;
        })
    };
    let out_max = broker.settings.connection_out_max_bytes;
    let decoder = FrameDecoder::new(broker.settings.frame_max_bytes);
    let in_flight = Rc::new(Cell::new(0usize));
    let mut buf = BytesMut::with_capacity(64 << 10);
    'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => dispatch(&broker, &load, &in_flight, &out, frame, &ctx),
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing a connection after a bad frame");
                    let h = Header {
                        flags: 0,
                        opcode: 0,
                        status: 0,
                        request_id: 0,
                    };
                    out.push(error_response(&h, Status::BadRequest, e.to_string()).to_bytes());
                    break 'conn;
                }
            }
        }
        // Responses the client has not taken yet: read no more requests until they drain.
        while out.queued.get() > out_max {
            if drained_rx.recv_async().await.is_err() {
                break 'conn;
            }
        }
        let want = match decoder.needed(&buf) {
            Ok(Some(total)) => total.saturating_sub(buf.len()).max(1),
            Ok(None) => 64 << 10,
            Err(_) => 1,
        };
        let at = buf.len();
        buf.resize(at + want.min(1 << 20), 0);
        // A read error ends the connection like an end of stream does.
        let n: usize = rd.read(&mut buf[at..]).await.unwrap_or_default();
        buf.truncate(at + n);
        if n == 0 {
            break;
        }
    }
    drop(out);
    drop(push_tx);
    broker.departed(&broker.clients.connection_closed(ctx.channel.conn_id));
    writer.await;
}

/// Responses on their way to the writer task, counted in bytes.
struct Outbox {
    tx: flume::Sender<Bytes>,
    queued: Rc<Cell<usize>>,
}

impl Outbox {
    fn push(&self, b: Bytes) {
        self.queued.set(self.queued.get() + b.len());
        if self.tx.send(b).is_err() {
            // The writer is gone (the client went away): nothing will drain it.
            self.queued.set(0);
        }
    }
}

fn dispatch(
    broker: &Arc<Broker>,
    load: &Rc<ShardLoad>,
    in_flight: &Rc<Cell<usize>>,
    out: &Rc<Outbox>,
    frame: Frame,
    ctx: &Rc<ConnCtx>,
) {
    let h = frame.header;
    if h.is_response() {
        return;
    }
    let size = frame.encoded_len();
    let answer = |f: Frame| {
        if !h.is_oneway() {
            out.push(f.to_bytes());
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
    if in_flight.get() >= broker.settings.connection_requests_max
        || load.request_bytes.get() + size > broker.settings.shard_request_bytes_max
    {
        broker.metrics.busy.fetch_add(1, Ordering::Relaxed);
        answer(error_response(
            &h,
            Status::SystemBusy,
            "too many requests in flight; retry later",
        ));
        return;
    }
    in_flight.set(in_flight.get() + 1);
    load.request_bytes.set(load.request_bytes.get() + size);
    broker.requests_begin();
    let (broker, load, in_flight, out, ctx) = (
        broker.clone(),
        load.clone(),
        in_flight.clone(),
        out.clone(),
        ctx.clone(),
    );
    glommio::spawn_local(async move {
        let reply = handler::handle(&broker, frame, &ctx).await;
        in_flight.set(in_flight.get() - 1);
        load.request_bytes.set(load.request_bytes.get() - size);
        if !h.is_oneway() {
            out.push(reply.to_bytes());
        }
        broker.requests_end();
    })
    .detach();
}
