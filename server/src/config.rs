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
    /// A parked pull waits this long at most, whatever the client asks.
    pub long_poll_max_ms: u64,
    /// A pull returns this many bytes of messages at most.
    pub pull_bytes_max: u32,
    /// How often consumer offsets are persisted.
    pub offsets_persist_interval_ms: u64,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_grace_ms: u64,
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
            long_poll_max_ms: 15_000,
            pull_bytes_max: 4 << 20,
            offsets_persist_interval_ms: 5_000,
            shutdown_grace_ms: 20_000,
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
}

impl Default for NamesrvSettings {
    fn default() -> Self {
        NamesrvSettings {
            listen: "127.0.0.1:9876".parse().expect("a valid literal"),
            broker_ttl_ms: 120_000,
            scan_interval_ms: 10_000,
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
            store: StoreConfig::new("shardmq-data"),
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

impl ServerConfig {
    /// Loads a TOML file (missing tables and keys take their defaults).
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
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
}
