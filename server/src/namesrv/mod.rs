//! The NameServer: brokers register with it every 30 s; clients ask it where topics live.
//!
//! Control traffic only, so it runs on plain threads: one accepting, one per connection, one
//! expiring silent brokers. The table itself (`routes.rs`) is pure.

pub mod routes;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardmq_protocol::message::{Empty, NameList};
use shardmq_protocol::{error_response, response, Frame, FrameDecoder, Request, Status};

use crate::rpc::{read_frame, ReadFrameError};
use routes::RouteTable;

/// NameServer settings.
#[derive(Debug, Clone)]
pub struct NamesrvConfig {
    pub listen: SocketAddr,
    /// A broker silent this long is dropped.
    pub broker_ttl: Duration,
    /// How often silent brokers are looked for.
    pub scan_interval: Duration,
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
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let table = table.clone();
                        let _ = std::thread::Builder::new()
                            .name("namesrv-conn".into())
                            .spawn(move || serve(conn, &table));
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

fn serve(mut conn: TcpStream, table: &Mutex<RouteTable>) {
    let peer = conn.peer_addr().ok();
    let _ = conn.set_nodelay(true);
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        let frame = match read_frame(&mut conn, &decoder, &mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                if !matches!(e, ReadFrameError::Io(_)) {
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
