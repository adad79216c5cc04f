//! Server configuration: the `[broker]` and `[namesrv]` tables of the TOML file, the engine's
//! `[store]` table, and the flags and environment variables that override them (flags win,
//! then environment, then the file, then the defaults). `docs/config.md` lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardmq_engine::StoreConfig;

/// Broker settings (`[broker]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Where clients connect; port 0 picks a free port (printed at start-up).
    pub listen: SocketAddr,
    /// The address registered with NameServers (default: `listen`, with 127.0.0.1 for an
    /// unspecified IP and the port actually bound).
    pub advertise: Option<String>,
    /// NameServer addresses, `;`-separated.
    pub namesrv: String,
    pub cluster: String,
    pub broker_name: String,
    /// 0 for a master.
    pub broker_id: u64,
    /// How often the broker registers with every NameServer.
    pub register_interval_ms: u64,
    /// A frame's length at most (bytes).
    pub frame_max_bytes: u32,
    /// A message body at most (bytes).
    pub message_max_bytes: u32,
    /// Requests one connection may have in flight; more are answered SYSTEM_BUSY.
    pub connection_requests_max: usize,
    /// Request bytes all connections of one shard may have in flight; more are answered
    /// SYSTEM_BUSY.
    pub shard_request_bytes_max: usize,
    /// Connections one shard serves at once; more are closed at accept.
    pub shard_connections_max: usize,
    /// Response bytes one connection may have waiting to be written; past it the broker
    /// reads no more of that connection's requests until the client takes its responses.
    pub connection_out_max_bytes: usize,
    /// Answer bytes all connections of one shard may hold (waiting to be written, or
    /// reserved for a pull's answer being built); a pull that does not fit is answered
    /// SYSTEM_BUSY.
    pub shard_out_max_bytes: usize,
    /// A frame must arrive whole within this long of its first byte; otherwise its
    /// connection is closed.
    pub frame_timeout_ms: u64,
    /// A connection on which nothing moves this long (no byte read or written, no request
    /// being served) is closed; so is one whose client stopped taking its answers.
    pub connection_idle_timeout_ms: u64,
    /// Whether every shard also listens on a port of its own, advertised to clients so that
    /// they send each queue's requests to the shard that owns it (no cross-core hop).
    pub shard_ports: bool,
    /// Shard `s` listens on `shard_port_base + s`; 0 picks free ports (advertised).
    pub shard_port_base: u16,
    /// A parked pull waits this long at most, whatever the client asks.
    pub long_poll_max_ms: u64,
    /// A pull returns this many bytes of messages at most.
    pub pull_bytes_max: u32,
    /// How often consumer offsets are persisted.
    pub offsets_persist_interval_ms: u64,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// A client silent this long leaves its consumer groups (it also leaves at once when
    /// its connection closes).
    pub client_ttl_ms: u64,
    /// An orderly consumer's queue lock lasts this long past its last renewal.
    pub queue_lock_ttl_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: "127.0.0.1:10911".parse().expect("a valid literal"),
            advertise: None,
            namesrv: "127.0.0.1:9876".into(),
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            register_interval_ms: 30_000,
            frame_max_bytes: shardmq_protocol::FRAME_MAX_DEFAULT,
            message_max_bytes: 4 << 20,
            connection_requests_max: 1024,
            shard_request_bytes_max: 256 << 20,
            shard_connections_max: 10_000,
            connection_out_max_bytes: 16 << 20,
            shard_out_max_bytes: 256 << 20,
            frame_timeout_ms: 30_000,
            connection_idle_timeout_ms: 120_000,
            shard_ports: true,
            shard_port_base: 0,
            long_poll_max_ms: 15_000,
            pull_bytes_max: 4 << 20,
            offsets_persist_interval_ms: 5_000,
            shutdown_grace_ms: 20_000,
            client_ttl_ms: 120_000,
            queue_lock_ttl_ms: 60_000,
            metrics_listen: None,
        }
    }
}

/// NameServer settings (`[namesrv]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamesrvSettings {
    pub listen: SocketAddr,
    /// A broker silent this long is dropped from routes.
    pub broker_ttl_ms: u64,
    /// How often silent brokers are looked for.
    pub scan_interval_ms: u64,
    /// Connections served at once (a thread each); more are closed when accepted.
    pub connections_max: usize,
    /// A frame must arrive whole within this long of its first byte.
    pub frame_timeout_ms: u64,
    /// A connection with no request started this long is closed.
    pub connection_idle_timeout_ms: u64,
}

impl Default for NamesrvSettings {
    fn default() -> Self {
        NamesrvSettings {
            listen: "127.0.0.1:9876".parse().expect("a valid literal"),
            broker_ttl_ms: 120_000,
            scan_interval_ms: 10_000,
            connections_max: 1024,
            frame_timeout_ms: 30_000,
            connection_idle_timeout_ms: 120_000,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub broker: BrokerSettings,
    pub namesrv: NamesrvSettings,
    pub store: StoreConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            broker: BrokerSettings::default(),
            namesrv: NamesrvSettings::default(),
            store: StoreConfig {
                schedule: shardmq_engine::schedule::ScheduleConfig {
                    enabled: true,
                    ..Default::default()
                },
                ..StoreConfig::new("shardmq-data")
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Environment variables naming a key: `SHARDMQ_CFG__<TABLE>__<KEY>` (levels separated by
/// two underscores, any case), e.g. `SHARDMQ_CFG__BROKER__LONG_POLL_MAX_MS=5000`.
pub const ENV_PREFIX: &str = "SHARDMQ_CFG__";

impl ServerConfig {
    /// Loads a TOML file (missing tables and keys take their defaults).
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        ServerConfig::layered(Some(path), std::iter::empty(), &[])
    }

    /// The configuration from its layers, each overriding the one before: the defaults, the
    /// TOML file, environment variables (`ENV_PREFIX`), then `--set table.key=value` flags.
    /// A value is read as TOML (`5000`, `true`, `"text"`, `[1, 2]`), else as a string.
    pub fn layered(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<ServerConfig, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Parse {
                        path: path.to_owned(),
                        source: Box::new(source),
                    })?
            }
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            set_key(&mut table, &key, &value)?;
        }
        for s in sets {
            let (key, value) = s.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--set {s:?}: expected table.key=value"))
            })?;
            set_key(&mut table, key.trim(), value.trim())?;
        }
        // The broker delivers delayed messages unless told not to (an embedded store's
        // default is off).
        let scheduled = table
            .get("store")
            .and_then(|s| s.get("schedule"))
            .and_then(|s| s.get("enabled"))
            .is_some();
        if !scheduled {
            set_key(&mut table, "store.schedule.enabled", "true")?;
        }
        let origin = file.map(Path::to_owned).unwrap_or_else(|| "(flags)".into());
        toml::Value::Table(table)
            .try_into()
            .map_err(|source| ConfigError::Parse {
                path: origin,
                source: Box::new(source),
            })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        if b.message_max_bytes as u64 + 64 * 1024 > b.frame_max_bytes as u64 {
            return Err(ConfigError::Invalid(format!(
                "broker.frame_max_bytes ({}) must exceed broker.message_max_bytes ({}) by 64 KiB \
                 for headers and properties",
                b.frame_max_bytes, b.message_max_bytes
            )));
        }
        let intervals = [
            ("broker.register_interval_ms", b.register_interval_ms),
            (
                "broker.offsets_persist_interval_ms",
                b.offsets_persist_interval_ms,
            ),
            ("broker.client_ttl_ms", b.client_ttl_ms),
            ("broker.queue_lock_ttl_ms", b.queue_lock_ttl_ms),
            ("broker.frame_timeout_ms", b.frame_timeout_ms),
            (
                "broker.connection_idle_timeout_ms",
                b.connection_idle_timeout_ms,
            ),
            ("namesrv.scan_interval_ms", self.namesrv.scan_interval_ms),
            ("namesrv.broker_ttl_ms", self.namesrv.broker_ttl_ms),
            ("namesrv.frame_timeout_ms", self.namesrv.frame_timeout_ms),
            (
                "namesrv.connection_idle_timeout_ms",
                self.namesrv.connection_idle_timeout_ms,
            ),
            (
                "namesrv.connections_max",
                self.namesrv.connections_max as u64,
            ),
        ];
        if let Some((key, _)) = intervals.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{key} must be > 0")));
        }
        if b.connection_requests_max == 0 || b.shard_connections_max == 0 {
            return Err(ConfigError::Invalid(
                "broker.connection_requests_max and broker.shard_connections_max must be > 0"
                    .into(),
            ));
        }
        if (b.shard_request_bytes_max as u64) < b.frame_max_bytes as u64 {
            return Err(ConfigError::Invalid(format!(
                "broker.shard_request_bytes_max ({}) must hold at least one frame ({})",
                b.shard_request_bytes_max, b.frame_max_bytes
            )));
        }
        self.store
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn namesrv_addrs(&self) -> Vec<String> {
        split_addrs(&self.broker.namesrv)
    }
}

/// Sets `a.b.c = value` in `table`, creating the tables on the way.
fn set_key(table: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Invalid(format!(
            "bad configuration key {key:?}"
        )));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, path) = parts.split_last().expect("non-empty");
    let mut at = table;
    for p in path {
        let entry = at
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| {
            ConfigError::Invalid(format!("{key:?}: {p:?} is a value, not a table"))
        })?;
    }
    at.insert(last.to_string(), parsed);
    Ok(())
}

/// `a:1;b:2` → `["a:1", "b:2"]`.
pub fn split_addrs(s: &str) -> Vec<String> {
    s.split(';')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_defaults_and_unknown_keys_are_refused() {
        let c: ServerConfig =
            toml::from_str("[broker]\nbroker_name = \"b1\"\n[store]\nshards = 2\n").unwrap();
        assert_eq!(c.broker.broker_name, "b1");
        assert_eq!(c.broker.long_poll_max_ms, 15_000);
        assert_eq!(c.store.shards, Some(2));
        c.validate().unwrap();
        assert!(toml::from_str::<ServerConfig>("[broker]\nlisten_port = 1\n").is_err());
        assert_eq!(split_addrs(" a:1; ;b:2"), vec!["a:1", "b:2"]);
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[broker]\nlong_poll_max_ms = 1\ncluster = \"F\"\n").unwrap();
        let env = vec![
            (
                "SHARDMQ_CFG__BROKER__LONG_POLL_MAX_MS".to_owned(),
                "2".to_owned(),
            ),
            (
                "SHARDMQ_CFG__STORE__RETENTION__FILE_RESERVED_HOURS".to_owned(),
                "5".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = ServerConfig::layered(
            Some(&file),
            env.into_iter(),
            &[
                "broker.broker_name=b9".into(),
                "broker.long_poll_max_ms = 3".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.broker.long_poll_max_ms, 3);
        assert_eq!(c.broker.cluster, "F");
        assert_eq!(c.broker.broker_name, "b9");
        assert_eq!(c.store.retention.file_reserved_hours, 5);
        let bad = ServerConfig::layered(None, std::iter::empty(), &["broker.nope=1".into()]);
        assert!(bad.is_err());
    }
}
