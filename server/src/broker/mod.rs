//! The broker: the engine behind the wire protocol. One listener per shard on the same port
//! (SO_REUSEPORT spreads connections), each connection served on its shard (`conn.rs`), each
//! request answered there (`handler.rs`) after the checks of `check.rs`.

pub mod budget;
pub mod check;
pub mod clients;
mod closing;
pub mod conn;
mod exporter;
pub mod handler;
pub mod locks;
mod membership;
pub mod metrics;
pub mod offsets;
mod register;
pub mod sendback;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardmq_engine::{Store, StoreConfig};
use shardmq_protocol::message::TopicConfigData;

use crate::config::{ms, BrokerSettings};
use clients::Clients;
use metrics::Metrics;
use offsets::ConsumerOffsets;

/// What every shard's connections share.
pub struct Broker {
    pub store: Store,
    pub settings: BrokerSettings,
    pub offsets: ConsumerOffsets,
    pub clients: Clients,
    pub locks: locks::QueueLocks,
    pub metrics: Metrics,
    /// The host written into message ids.
    pub store_host: SocketAddr,
    stopping: AtomicBool,
    /// Dropped when the broker stops: every `stopped()` future then resolves.
    stop_tx: Mutex<Option<flume::Sender<()>>>,
    stop_rx: flume::Receiver<()>,
    requests: AtomicUsize,
    /// Wakes the registration thread when the topic table changed.
    topics_tx: flume::Sender<()>,
    /// One advertised address per shard (its own port, served by that shard alone), set
    /// once every shard listens; empty when `shard_ports` is off.
    pub shard_addrs: std::sync::OnceLock<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot open the store: {0}")]
    Store(#[from] shardmq_engine::OpenError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// A running broker.
pub struct BrokerHandle {
    pub broker: Arc<Broker>,
    /// The address clients connect to (the port actually bound).
    pub addr: SocketAddr,
    /// The address registered with NameServers.
    pub advertised: String,
    /// The metrics endpoint, when `broker.metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    accept_tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Option<()>> + Send>>>,
    register: register::Registrar,
    persister: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    /// How long a silent client stays a member of its groups.
    pub fn client_ttl(&self) -> Duration {
        ms(self.settings.client_ttl_ms)
    }

    /// Clients gone at once (silent past the TTL, or their connection closed): their queue
    /// locks are free again and their groups' other members rebalance.
    pub fn departed(&self, d: &clients::Departed) {
        for c in &d.clients {
            self.locks.release_client(c, "");
        }
        self.clients.notify_members(&d.groups);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Resolves once the broker stops.
    pub async fn stopped(&self) {
        let _ = self.stop_rx.recv_async().await;
    }

    /// Runs `f` unless the broker stops first (`None` then).
    pub async fn until_stopped<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(f.await) }, async {
            self.stopped().await;
            None
        })
        .await
    }

    pub fn requests_begin(&self) {
        self.requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Requests of all connections being served (the status this request is in counts).
    pub fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    pub fn requests_end(&self) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn topics_changed(&self) {
        let _ = self.topics_tx.try_send(());
    }

    /// Creates a consumer group's retry or dead-letter topic (one queue, read-write) if it
    /// does not exist: those topics are the broker's own, made on first use.
    pub fn ensure_group_topic(&self, topic: &str) {
        if self.store.topic(topic).is_none()
            && self
                .store
                .create_topic(topic, 1, 1, shardmq_engine::Perm::READ_WRITE)
                .is_ok()
        {
            self.topics_changed();
        }
    }

    pub fn topic_configs(&self) -> Vec<TopicConfigData> {
        self.store
            .topics()
            .into_iter()
            .map(|t| TopicConfigData {
                topic: t.name,
                read_queues: t.read_queues,
                write_queues: t.write_queues,
                perm: t.perm.bits(),
                order: false,
            })
            .collect()
    }
}

/// Opens the store and starts serving: listeners on every shard, registration with the
/// NameServers, and the consumer-offset persister.
pub fn start(
    settings: BrokerSettings,
    mut store_config: StoreConfig,
    namesrv: Vec<String>,
) -> Result<BrokerHandle, BrokerError> {
    // Port 0: take a free port now, so that message ids (which encode the broker's address)
    // and the registration carry the real one.
    let mut listen = settings.listen;
    if listen.port() == 0 {
        let port = std::net::TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .map_err(|e| BrokerError::Listen {
                addr: listen,
                reason: e.to_string(),
            })?
            .port();
        listen.set_port(port);
    }
    let advertised = settings.advertise.clone().unwrap_or_else(|| {
        let ip = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            listen.ip().to_string()
        };
        format!("{ip}:{}", listen.port())
    });
    if let Ok(a) = advertised.parse() {
        store_config.store_host = a;
    }
    let store_host = store_config.store_host;
    let store_path = store_config.store_path.clone();
    let store = Store::open(store_config)?;
    let offsets = match ConsumerOffsets::open(&store_path, store.shards()) {
        Ok(o) => o,
        Err(e) => {
            let _ = futures_lite::future::block_on(store.shutdown());
            return Err(e.into());
        }
    };
    let (stop_tx, stop_rx) = flume::bounded(1);
    let (topics_tx, topics_rx) = flume::bounded(1);
    let broker = Arc::new(Broker {
        store: store.clone(),
        settings: settings.clone(),
        offsets,
        clients: Clients::default(),
        locks: locks::QueueLocks::new(ms(settings.queue_lock_ttl_ms)),
        metrics: Metrics::new(store.shards()),
        store_host,
        stopping: AtomicBool::new(false),
        stop_tx: Mutex::new(Some(stop_tx)),
        stop_rx,
        requests: AtomicUsize::new(0),
        topics_tx,
        shard_addrs: std::sync::OnceLock::new(),
    });
    // Every shard binds the same port (SO_REUSEPORT: the kernel picks a connection's shard)
    // and, with `shard_ports`, a port of its own (`shard_port_base + shard`, or a free one)
    // that shard-aware clients use to reach each queue's owner directly.
    let mut addr = listen;
    let mut accept_tasks = Vec::new();
    let mut shard_addrs = Vec::new();
    for shard in 0..store.shards() {
        let own = settings.shard_ports.then(|| {
            let mut a = listen;
            a.set_port(match settings.shard_port_base {
                0 => 0,
                base => base.saturating_add(shard as u16),
            });
            a
        });
        let (b, want) = (broker.clone(), addr);
        let (tx, rx) = flume::bounded(1);
        let task = store.spawn_on(shard, move || async move {
            let bound = TcpListenerBind::bind(want).and_then(|shared| {
                let own = own.map(TcpListenerBind::bind).transpose()?;
                Ok((shared, own))
            });
            match bound {
                Ok((shared, own)) => {
                    let local = |l: &glommio::net::TcpListener| l.local_addr().ok();
                    let _ = tx.send(Ok((
                        local(&shared).unwrap_or(want),
                        own.as_ref().and_then(local),
                    )));
                    conn::serve_shard(b, std::iter::once(shared).chain(own).collect()).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
        accept_tasks.push(Box::pin(task) as std::pin::Pin<Box<_>>);
        let (bound, own) = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| BrokerError::Listen {
                addr: want,
                reason: format!("shard {shard} did not start its listener"),
            })?
            .map_err(|reason| BrokerError::Listen { addr: want, reason })?;
        addr = bound;
        if let Some(own) = own {
            shard_addrs.push(format!("{}:{}", advertised_host(&advertised), own.port()));
        }
    }
    let _ = broker.shard_addrs.set(shard_addrs);
    let register =
        register::Registrar::start(broker.clone(), advertised.clone(), namesrv, topics_rx);
    let persister = {
        let b = broker.clone();
        let every = ms(settings.offsets_persist_interval_ms);
        std::thread::Builder::new()
            .name("offsets-persist".into())
            .spawn(move || loop {
                let stopped = b
                    .stop_rx
                    .recv_timeout(every)
                    .is_err_and(|e| matches!(e, flume::RecvTimeoutError::Disconnected));
                if let Err(e) = b.offsets.persist() {
                    tracing::error!(error = %e, "cannot persist consumer offsets");
                }
                b.departed(&b.clients.expire(b.client_ttl()));
                if stopped {
                    return;
                }
            })
            .ok()
    };
    let metrics_addr = match settings.metrics_listen {
        Some(m) => Some(
            exporter::start(broker.clone(), m).map_err(|e| BrokerError::Listen {
                addr: m,
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    tracing::info!(%addr, %advertised, shards = store.shards(), "broker listening");
    Ok(BrokerHandle {
        broker,
        addr,
        advertised,
        metrics_addr,
        accept_tasks,
        register,
        persister,
    })
}

/// The host part of an advertised `host:port` address.
fn advertised_host(advertised: &str) -> &str {
    advertised
        .rsplit_once(':')
        .map_or(advertised, |(host, _)| host)
}

/// glommio's listener, named for what it does here (it sets SO_REUSEPORT itself).
struct TcpListenerBind;

impl TcpListenerBind {
    fn bind(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
        glommio::net::TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
    }
}

impl BrokerHandle {
    /// A graceful stop: refuse new requests and connections, let in-flight ones finish (parked
    /// pulls are answered at once), flush the store, persist offsets, unregister from the
    /// NameServers.
    pub fn shutdown(self) -> Result<(), String> {
        let b = &self.broker;
        b.stopping.store(true, Ordering::Release);
        drop(b.stop_tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let deadline = Instant::now() + ms(b.settings.shutdown_grace_ms);
        while b.requests.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.accept_tasks {
            let _ = futures_lite::future::block_on(t);
        }
        self.register.stop();
        if let Some(p) = self.persister {
            let _ = p.join();
        }
        let mut result = Ok(());
        if let Err(e) = b.offsets.persist() {
            result = Err(format!("cannot persist consumer offsets: {e}"));
        }
        if let Err(e) = futures_lite::future::block_on(b.store.clone().shutdown()) {
            result = Err(format!("store shutdown: {e}"));
        }
        result
    }
}
