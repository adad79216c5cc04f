//! The Redis Streams driver (feature `redis`, the `redis` crate, blocking API).
//!
//! A topic `t` with `q` queues is `q` streams `<prefix>-t-i`; a send is `XADD key * b BODY`
//! to the next stream (a batch: that many XADDs written as one pipeline). To keep several
//! sends in flight on one connection, the producer writes commands packed by the crate
//! (`Cmd::get_packed_command`) on its socket and a reader thread parses the replies with the
//! crate's `Parser`, in order (Redis answers a connection's commands in order), posting each
//! send's outcome to the channel [`Sender::wait`] reads. Consumers are a consumer group:
//! `XREADGROUP ... BLOCK` over their share of the streams, then one pipelined `XACK` per
//! stream for what they got.
//!
//! Durability is the server's setting, reported in the params: with `appendonly yes` and
//! `appendfsync always` Redis answers a write after its AOF `fsync` (the commands of one
//! event-loop pass share it), with `everysec` before.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redis::streams::StreamReadReply;
use redis::{Client, ConnectionAddr, Value};
use serde_json::{Map, Value as Json};

use super::{assigned, DriverError, Event, Fetcher, Layout, Notify, Sender, StartAt, Target};

/// Messages asked for per XREADGROUP.
const READ_COUNT: usize = 256;
/// The field holding the body.
const FIELD: &str = "b";

/// A Redis server.
#[derive(Debug)]
pub struct RedisTarget {
    client: Client,
    addr: String,
    data_dir: Option<PathBuf>,
    settings: Map<String, Json>,
}

fn config_get(con: &mut redis::Connection, key: &str) -> Option<String> {
    let pairs: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query(con).ok()?;
    pairs.get(1).cloned()
}

impl RedisTarget {
    /// Connects to `url` (`redis://HOST:PORT`); `data_dir` overrides the server's `dir`.
    pub fn open(url: &str, data_dir: Option<PathBuf>) -> Result<RedisTarget, DriverError> {
        let client = Client::open(url)?;
        let addr = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => {
                return Err(DriverError::UnknownTarget(format!(
                    "{other:?}: only redis://HOST:PORT"
                )))
            }
        };
        let mut con = client.get_connection()?;
        let mut settings = Map::new();
        for key in ["appendonly", "appendfsync", "dir"] {
            if let Some(v) = config_get(&mut con, key) {
                settings.insert(format!("redis_{key}"), v.into());
            }
        }
        let dir = settings
            .get("redis_dir")
            .and_then(|v| v.as_str())
            .map(PathBuf::from);
        Ok(RedisTarget {
            client,
            addr,
            data_dir: data_dir.or(dir),
            settings,
        })
    }

    fn keys(layout: &Layout) -> Vec<String> {
        (0..layout.topics)
            .flat_map(|t| (0..layout.queues).map(move |q| (t, q)))
            .map(|(t, q)| format!("{}-{q}", layout.topic(t)))
            .collect()
    }
}

impl Target for RedisTarget {
    fn name(&self) -> &str {
        "redis"
    }

    fn describe(&self) -> Map<String, Json> {
        let mut m = self.settings.clone();
        m.insert("redis_addr".into(), self.addr.clone().into());
        m
    }

    fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.clone()
    }

    /// Deletes the streams, so that each run starts empty (XADD creates them again).
    fn create_topics(&self, layout: &Layout) -> Result<(), DriverError> {
        let mut con = self.client.get_connection()?;
        for key in Self::keys(layout) {
            let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con)?;
        }
        Ok(())
    }

    fn sender(
        &self,
        layout: &Layout,
        _id: usize,
        _inflight: usize,
        notify: Notify,
    ) -> Result<Box<dyn Sender>, DriverError> {
        let stream = TcpStream::connect(&self.addr)
            .map_err(|e| DriverError::io(format!("connect {}", self.addr), e))?;
        let _ = stream.set_nodelay(true);
        let read_half = stream
            .try_clone()
            .map_err(|e| DriverError::io("clone the socket", e))?;
        let (tokens, tokens_rx) = flume::unbounded::<(u64, usize)>();
        let reader = std::thread::Builder::new()
            .name("bench-redis-replies".into())
            .spawn(move || read_replies(read_half, &tokens_rx, &notify))
            .map_err(|e| DriverError::io("start the reply reader", e))?;
        Ok(Box::new(RedisSender {
            stream,
            keys: (0..layout.topics)
                .map(|t| {
                    (0..layout.queues)
                        .map(|q| format!("{}-{q}", layout.topic(t)))
                        .collect()
                })
                .collect(),
            next: 0,
            buf: Vec::new(),
            tokens: Some(tokens),
            reader: Some(reader),
        }))
    }

    fn fetchers(
        &self,
        layout: &Layout,
        group: &str,
        count: usize,
        start: StartAt,
    ) -> Result<Vec<Box<dyn Fetcher>>, DriverError> {
        let keys = Self::keys(layout);
        let mut con = self.client.get_connection()?;
        let from = match start {
            StartAt::Earliest => "0",
            StartAt::Latest => "$",
        };
        for key in &keys {
            let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(group)
                .arg(from)
                .arg("MKSTREAM")
                .query(&mut con);
            r?;
        }
        let mut out: Vec<Box<dyn Fetcher>> = Vec::with_capacity(count);
        for k in 0..count {
            let mine: Vec<String> = assigned(keys.len(), k, count)
                .into_iter()
                .map(|i| keys[i].clone())
                .collect();
            out.push(Box::new(RedisFetcher {
                con: self.client.get_connection()?,
                group: group.to_string(),
                name: format!("c{k}"),
                keys: mine,
            }));
        }
        Ok(out)
    }
}

/// Parses replies in order; each send's outcome is posted once all its replies came.
fn read_replies(sock: TcpStream, tokens: &flume::Receiver<(u64, usize)>, notify: &Notify) {
    let mut parser = redis::Parser::new();
    let mut input = BufReader::with_capacity(64 * 1024, sock);
    let mut broken: Option<String> = None;
    for (token, replies) in tokens.iter() {
        let mut outcome = Ok(());
        for _ in 0..replies {
            if broken.is_some() {
                break;
            }
            match parser.parse_value(&mut input) {
                Ok(v) => {
                    if let Err(e) = v.extract_error() {
                        outcome = Err(DriverError::from(e));
                    }
                }
                Err(e) => broken = Some(e.to_string()),
            }
        }
        if let Some(why) = &broken {
            outcome = Err(DriverError::io(
                "redis connection",
                std::io::Error::other(why.clone()),
            ));
        }
        notify.post(Event::Done(token, outcome));
    }
}

struct RedisSender {
    stream: TcpStream,
    /// Stream keys per topic.
    keys: Vec<Vec<String>>,
    next: usize,
    buf: Vec<u8>,
    tokens: Option<flume::Sender<(u64, usize)>>,
    reader: Option<JoinHandle<()>>,
}

impl Sender for RedisSender {
    fn submit(&mut self, token: u64, topic: usize, bodies: Vec<Bytes>) -> Result<(), DriverError> {
        let keys = &self.keys[topic % self.keys.len()];
        let key = &keys[self.next % keys.len()];
        self.next = self.next.wrapping_add(1);
        self.buf.clear();
        for b in &bodies {
            let cmd = redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg(FIELD)
                .arg(b.as_ref())
                .get_packed_command();
            self.buf.extend_from_slice(&cmd);
        }
        // The reader must know of the replies before they can arrive.
        if let Some(t) = &self.tokens {
            let _ = t.send((token, bodies.len()));
        }
        self.stream
            .write_all(&self.buf)
            .map_err(|e| DriverError::io("write to redis", e))
    }
}

impl Drop for RedisSender {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.tokens.take();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

struct RedisFetcher {
    con: redis::Connection,
    group: String,
    name: String,
    keys: Vec<String>,
}

impl Fetcher for RedisFetcher {
    fn fetch(
        &mut self,
        wait: Duration,
        on_body: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DriverError> {
        if self.keys.is_empty() {
            std::thread::sleep(wait);
            return Ok(0);
        }
        let block_ms = wait.as_millis().max(1) as u64;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.group).arg(&self.name);
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS");
        cmd.arg(&self.keys);
        for _ in &self.keys {
            cmd.arg(">");
        }
        let reply: Option<StreamReadReply> = cmd.query(&mut self.con)?;
        let Some(reply) = reply else {
            return Ok(0);
        };
        let mut acks = redis::pipe();
        let mut n = 0;
        for key in &reply.keys {
            if key.ids.is_empty() {
                continue;
            }
            for id in &key.ids {
                if let Some(Value::BulkString(body)) = id.map.get(FIELD) {
                    on_body(body);
                }
            }
            n += key.ids.len();
            let ids: Vec<&str> = key.ids.iter().map(|i| i.id.as_str()).collect();
            acks.cmd("XACK")
                .arg(&key.key)
                .arg(&self.group)
                .arg(ids)
                .ignore();
        }
        if n > 0 {
            acks.query::<()>(&mut self.con)?;
        }
        Ok(n)
    }
}
