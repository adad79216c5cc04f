//! A fake ShardMQ peer for the client's tests: a std `TcpListener` on 127.0.0.1:0 whose
//! connection threads decode frames with the protocol crate and answer them through a
//! handler; plus a fake broker (stores sends in memory, serves pulls and offsets, can be told
//! to fail) and a fake NameServer (answers routes).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use shardmq_protocol::message::{
    error_response, response, BrokerData, ClusterInfo, Empty, OffsetResponse, PullMessageResponse,
    QueueData, SendBatchResponse, SendResult, TopicRoute, WireMessage,
};
use shardmq_protocol::{Frame, FrameDecoder, Header, Request, Status};

/// What a handler does with a request: answer with these frames (maybe none, to answer
/// later or never), or close the connection.
pub enum Answer {
    Frames(Vec<Frame>),
    Close,
}

/// Handles one connection's requests, in arrival order.
pub type Handler = Box<dyn FnMut(&Header, Request) -> Answer + Send>;

/// Accepted connections: a handle to shut each down, and its thread.
type Conns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// A fake peer listening on a free port; stops and joins its threads on drop.
pub struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Conns,
}

impl FakeServer {
    /// Serves each accepted connection with a handler made by `make`.
    pub fn start(make: impl Fn() -> Handler + Send + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let (stop2, conns2) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Ok(control) = stream.try_clone() else {
                    continue;
                };
                let handler = make();
                let h = std::thread::spawn(move || serve(stream, handler));
                conns2.lock().unwrap().push((control, h));
            }
        });
        FakeServer {
            addr,
            stop,
            accept: Some(accept),
            conns,
        }
    }

    /// Serves every connection with one shared function.
    pub fn start_fn(f: impl Fn(&Header, Request) -> Answer + Send + Sync + 'static) -> FakeServer {
        let f = Arc::new(f);
        FakeServer::start(move || {
            let f = Arc::clone(&f);
            Box::new(move |h: &Header, r: Request| f(h, r))
        })
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (s, h) in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
            let _ = h.join();
        }
    }
}

fn serve(mut stream: TcpStream, mut handler: Handler) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let answer = match Request::from_frame(&frame) {
                Ok(req) => handler(&frame.header, req),
                Err(e) => Answer::Frames(vec![error_response(
                    &frame.header,
                    e.status(),
                    e.to_string(),
                )]),
            };
            match answer {
                Answer::Close => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                Answer::Frames(frames) => {
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

pub fn reply<T: shardmq_protocol::Wire>(h: &Header, v: &T) -> Answer {
    Answer::Frames(vec![response(h, Status::Success, v)])
}

pub fn fail(h: &Header, status: Status, remark: &str) -> Answer {
    Answer::Frames(vec![error_response(h, status, remark)])
}

/// How a fake broker answers sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store and acknowledge.
    Store,
    /// Answer every send with this status.
    Fail(Status),
    /// Answer the next `n` sends with SystemBusy, then store.
    BusyFor(u32),
    /// Close the connection on a send.
    Close,
}

/// What a fake broker holds.
#[derive(Default)]
pub struct BrokerState {
    pub name: String,
    pub mode: Mutex<Option<Mode>>,
    /// Every request, in arrival order, with its header.
    pub requests: Mutex<Vec<(Header, Request)>>,
    /// Stored messages per (topic, queue).
    pub queues: Mutex<HashMap<(String, u32), Vec<WireMessage>>>,
    pub offsets: Mutex<HashMap<(String, String, u32), u64>>,
    /// Each request's opcode as it arrives, for tests to await.
    pub events: Option<flume::Sender<Request>>,
}

impl BrokerState {
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = Some(m);
    }

    /// Sends (single and batch) received.
    pub fn send_count(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| matches!(r, Request::SendMessage(_) | Request::SendBatch(_)))
            .count()
    }

    pub fn stored(&self, topic: &str, queue: u32) -> Vec<WireMessage> {
        self.queues
            .lock()
            .unwrap()
            .get(&(topic.to_string(), queue))
            .cloned()
            .unwrap_or_default()
    }

    fn store(&self, topic: &str, queue_id: u32, mut m: WireMessage) -> SendResult {
        let mut qs = self.queues.lock().unwrap();
        let q = qs.entry((topic.to_string(), queue_id)).or_default();
        let offset = q.len() as u64;
        m.topic = topic.to_string();
        m.queue_id = queue_id;
        m.queue_offset = offset;
        m.msg_id = format!("{}-{queue_id}-{offset}", self.name);
        m.store_host = self.name.clone();
        let r = SendResult {
            msg_id: m.msg_id.clone(),
            queue_id,
            queue_offset: offset,
            store_timestamp_ms: 1,
        };
        q.push(m);
        r
    }

    fn handle(&self, h: &Header, req: Request) -> Answer {
        self.requests.lock().unwrap().push((*h, req.clone()));
        if let Some(tx) = &self.events {
            let _ = tx.send(req.clone());
        }
        let is_send = matches!(req, Request::SendMessage(_) | Request::SendBatch(_));
        if is_send {
            let mut mode = self.mode.lock().unwrap();
            match *mode {
                Some(Mode::Fail(st)) => return fail(h, st, "told to fail"),
                Some(Mode::Close) => return Answer::Close,
                Some(Mode::BusyFor(n)) if n > 0 => {
                    *mode = Some(Mode::BusyFor(n - 1));
                    return fail(h, Status::SystemBusy, "busy");
                }
                _ => {}
            }
        }
        if h.is_oneway() && !is_send {
            return Answer::Frames(vec![]);
        }
        let answer = match req {
            Request::SendMessage(r) => {
                let m = WireMessage {
                    unique_id: r.unique_id,
                    tags: r.tags,
                    keys: r.keys,
                    properties: r.properties,
                    body: r.body,
                    born_timestamp_ms: r.born_timestamp_ms,
                    ..WireMessage::default()
                };
                reply(h, &self.store(&r.topic, r.queue_id, m))
            }
            Request::SendBatch(r) => {
                let results = r
                    .entries
                    .into_iter()
                    .map(|e| {
                        let m = WireMessage {
                            unique_id: e.unique_id,
                            tags: e.tags,
                            keys: e.keys,
                            properties: e.properties,
                            body: e.body,
                            ..WireMessage::default()
                        };
                        self.store(&r.topic, r.queue_id, m)
                    })
                    .collect();
                reply(h, &SendBatchResponse { results })
            }
            Request::PullMessage(r) => {
                let q = self.stored(&r.topic, r.queue_id);
                let max = q.len() as u64;
                let mut resp = PullMessageResponse {
                    next_begin_offset: r.queue_offset,
                    min_offset: 0,
                    max_offset: max,
                    messages: vec![],
                };
                if r.queue_offset > max {
                    resp.next_begin_offset = max;
                    Answer::Frames(vec![response(h, Status::PullOffsetMoved, &resp)])
                } else if r.queue_offset == max {
                    // Long polling: nothing arrives here, so hold the pull its whole wait.
                    std::thread::sleep(Duration::from_millis(r.suspend_timeout_ms.into()));
                    Answer::Frames(vec![response(h, Status::PullNotFound, &resp)])
                } else {
                    resp.messages = q
                        .into_iter()
                        .skip(r.queue_offset as usize)
                        .take(r.max_msgs as usize)
                        .collect();
                    resp.next_begin_offset = r.queue_offset + resp.messages.len() as u64;
                    reply(h, &resp)
                }
            }
            Request::UpdateConsumerOffset(r) => {
                self.offsets
                    .lock()
                    .unwrap()
                    .insert((r.consumer_group, r.topic, r.queue_id), r.offset);
                reply(h, &Empty {})
            }
            Request::QueryConsumerOffset(r) => {
                let key = (r.consumer_group, r.topic, r.queue_id);
                match self.offsets.lock().unwrap().get(&key) {
                    Some(o) => reply(h, &OffsetResponse { offset: *o }),
                    None => fail(h, Status::QueryNotFound, "no offset committed"),
                }
            }
            Request::GetMinOffset(_) => reply(h, &OffsetResponse { offset: 0 }),
            Request::GetMaxOffset(r) => reply(
                h,
                &OffsetResponse {
                    offset: self.stored(&r.topic, r.queue_id).len() as u64,
                },
            ),
            Request::SearchOffsetByTime(r) => reply(
                h,
                &OffsetResponse {
                    offset: r.timestamp_ms.max(0) as u64,
                },
            ),
            _ => fail(h, Status::RequestCodeNotSupported, "not in the fake"),
        };
        answer
    }
}

/// A fake broker on a free port.
pub struct FakeBroker {
    pub state: Arc<BrokerState>,
    pub server: FakeServer,
}

impl FakeBroker {
    pub fn start(name: &str) -> FakeBroker {
        Self::start_with_events(name, None)
    }

    pub fn start_with_events(name: &str, events: Option<flume::Sender<Request>>) -> FakeBroker {
        let state = Arc::new(BrokerState {
            name: name.to_string(),
            events,
            ..BrokerState::default()
        });
        let s = Arc::clone(&state);
        let server = FakeServer::start_fn(move |h, r| s.handle(h, r));
        FakeBroker { state, server }
    }

    pub fn addr(&self) -> String {
        self.server.addr()
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
}

/// A route of `topic` over `brokers`, `queues` read and write queues each, perm rw.
pub fn route_over(brokers: &[&FakeBroker], queues: u32) -> TopicRoute {
    TopicRoute {
        brokers: brokers
            .iter()
            .map(|b| BrokerData {
                cluster: "test".into(),
                broker_name: b.name().to_string(),
                addrs: vec![(0, b.addr())],
                shard_addrs: Vec::new(),
            })
            .collect(),
        queues: brokers
            .iter()
            .map(|b| QueueData {
                broker_name: b.name().to_string(),
                read_queues: queues,
                write_queues: queues,
                perm: 6,
            })
            .collect(),
    }
}

/// The cluster `brokers` make (each a master), as a NameServer describes it.
pub fn cluster_of(brokers: &[&FakeBroker]) -> ClusterInfo {
    let route = route_over(brokers, 1);
    ClusterInfo {
        clusters: vec![(
            "test".into(),
            brokers.iter().map(|b| b.name().to_string()).collect(),
        )],
        brokers: route.brokers,
    }
}

/// A fake NameServer answering GetRouteByTopic from a table (TopicNotExist otherwise), and
/// GetClusterInfo once `cluster` is set (RequestCodeNotSupported before).
pub struct FakeNamesrv {
    pub routes: Arc<Mutex<HashMap<String, TopicRoute>>>,
    pub cluster: Arc<Mutex<Option<ClusterInfo>>>,
    pub queries: Arc<Mutex<usize>>,
    pub server: FakeServer,
}

impl FakeNamesrv {
    pub fn start(routes: Vec<(&str, TopicRoute)>) -> FakeNamesrv {
        let table: HashMap<String, TopicRoute> = routes
            .into_iter()
            .map(|(t, r)| (t.to_string(), r))
            .collect();
        let routes = Arc::new(Mutex::new(table));
        let cluster: Arc<Mutex<Option<ClusterInfo>>> = Arc::default();
        let queries = Arc::new(Mutex::new(0));
        let (r, c, q) = (
            Arc::clone(&routes),
            Arc::clone(&cluster),
            Arc::clone(&queries),
        );
        let server = FakeServer::start_fn(move |h, req| match req {
            Request::GetRouteByTopic(t) => {
                *q.lock().unwrap() += 1;
                match r.lock().unwrap().get(&t.topic) {
                    Some(route) => reply(h, route),
                    None => fail(h, Status::TopicNotExist, "no route"),
                }
            }
            Request::GetClusterInfo(_) => match &*c.lock().unwrap() {
                Some(info) => reply(h, info),
                None => fail(h, Status::RequestCodeNotSupported, "no cluster info"),
            },
            _ => fail(h, Status::RequestCodeNotSupported, "namesrv"),
        });
        FakeNamesrv {
            routes,
            cluster,
            queries,
            server,
        }
    }

    pub fn addr(&self) -> String {
        self.server.addr()
    }

    pub fn query_count(&self) -> usize {
        *self.queries.lock().unwrap()
    }
}

/// An address nothing listens on (a port just bound and released).
pub fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr").to_string();
    drop(l);
    a
}
