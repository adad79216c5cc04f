//! The NameServer: brokers register with it every 30 s; clients ask it where topics live.
//!
//! Control traffic only, so it runs on plain threads: one accepting, one per connection, one
//! expiring silent brokers. The table itself (`routes.rs`) is pure.

pub mod routes;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardmq_protocol::message::{Empty, NameList};
use shardmq_protocol::{error_response, response, Frame, FrameDecoder, Request, Status};

use crate::rpc::{read_frame_with, ReadFrameError};
use routes::RouteTable;

/// NameServer settings.
#[derive(Debug, Clone)]
pub struct NamesrvConfig {
    pub listen: SocketAddr,
    /// A broker silent this long is dropped.
    pub broker_ttl: Duration,
    /// How often silent brokers are looked for.
    pub scan_interval: Duration,
    /// Connections served at once; more are closed when accepted (a thread each).
    pub connections_max: usize,
    /// A frame must arrive whole within this long of its first byte.
    pub frame_timeout: Duration,
    /// A connection with no request started this long is closed.
    pub idle_timeout: Duration,
}

pub struct NameServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl NameServer {
    /// Binds and starts serving on background threads.
    pub fn start(config: NamesrvConfig) -> std::io::Result<NameServer> {
        let listener = TcpListener::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let table = Arc::new(Mutex::new(RouteTable::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::Builder::new()
                .name("namesrv-expiry".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(config.scan_interval);
                        let dead = lock(&table).expire(Instant::now(), config.broker_ttl);
                        for a in dead {
                            tracing::warn!(broker = %a, "broker silent too long: dropped from routes");
                        }
                    }
                })?;
        }
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("namesrv-accept".into())
                .spawn(move || {
                    let open = Arc::new(AtomicUsize::new(0));
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        if open.load(Ordering::Acquire) >= config.connections_max {
                            tracing::warn!(
                                max = config.connections_max,
                                "NameServer connections at their cap: closing a new one"
                            );
                            continue;
                        }
                        open.fetch_add(1, Ordering::AcqRel);
                        let (table, count, limits) = (table.clone(), open.clone(), config.clone());
                        let spawned = std::thread::Builder::new()
                            .name("namesrv-conn".into())
                            .spawn(move || {
                                serve(conn, &table, &limits);
                                count.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            open.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                })?;
        }
        tracing::info!(%addr, "NameServer listening");
        Ok(NameServer { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connections already open finish on their own).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn lock(table: &Mutex<RouteTable>) -> std::sync::MutexGuard<'_, RouteTable> {
    // A panic while holding the table leaves it consistent (every method is one map
    // operation), so a poisoned lock is taken over.
    table.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(mut conn: TcpStream, table: &Mutex<RouteTable>, limits: &NamesrvConfig) {
    let peer = conn.peer_addr().ok();
    let _ = conn.set_nodelay(true);
    let Ok(timer) = conn.try_clone() else { return };
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        // The clock of the frame being read: its first byte, or the last answer.
        let mut since = Instant::now();
        let mut started = false;
        let deadline = |buf: &BytesMut| {
            if !buf.is_empty() && !started {
                (since, started) = (Instant::now(), true);
            }
            let limit = if started {
                limits.frame_timeout
            } else {
                limits.idle_timeout
            };
            let left = (since + limit).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            timer.set_read_timeout(Some(left))
        };
        let frame = match read_frame_with(&mut conn, &decoder, &mut buf, deadline) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                if let ReadFrameError::Io(io) = &e {
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) {
                        tracing::info!(?peer, "closing an idle or stalled NameServer connection");
                    }
                } else {
                    tracing::info!(?peer, error = %e, "closing a NameServer connection");
                }
                return;
            }
        };
        if frame.header.is_response() {
            continue;
        }
        let reply = handle(&frame, table);
        if frame.header.is_oneway() {
            continue;
        }
        if conn.write_all(&reply.to_bytes()).is_err() {
            return;
        }
    }
}

/// Answers one request.
pub fn handle(frame: &Frame, table: &Mutex<RouteTable>) -> Frame {
    let h = &frame.header;
    let req = match Request::from_frame(frame) {
        Ok(r) => r,
        Err(e) => return error_response(h, e.status(), e.to_string()),
    };
    match req {
        Request::RegisterBroker(r) => {
            tracing::debug!(broker = %r.broker_addr, topics = r.topics.len(), "broker registered");
            lock(table).register(r, Instant::now());
            response(h, Status::Success, &Empty {})
        }
        Request::UnregisterBroker(r) => {
            tracing::info!(broker = %r.broker_addr, "broker unregistered");
            lock(table).unregister(&r);
            response(h, Status::Success, &Empty {})
        }
        Request::GetRouteByTopic(t) => match lock(table).route(&t.topic) {
            Some(route) => response(h, Status::Success, &route),
            None => error_response(
                h,
                Status::TopicNotExist,
                format!("no broker serves topic {:?}", t.topic),
            ),
        },
        Request::GetClusterInfo(_) => response(h, Status::Success, &lock(table).cluster_info()),
        Request::GetTopicList(_) => response(
            h,
            Status::Success,
            &NameList {
                names: lock(table).topics(),
            },
        ),
        other => error_response(
            h,
            Status::RequestCodeNotSupported,
            format!("a NameServer does not serve {}", other.opcode()),
        ),
    }
}
