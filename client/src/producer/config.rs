//! `ProducerBuilder`: a producer's settings and their defaults.

use std::time::Duration;

use super::Producer;
use crate::error::ClientError;
use crate::route::{parse_addrs, ROUTE_MAX_AGE};

/// The settings a producer runs with (see [`ProducerBuilder`] for each).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub namesrv: Vec<String>,
    pub group: String,
    pub send_timeout: Duration,
    pub retries: u32,
    pub max_message_size: usize,
    pub connect_timeout: Duration,
    pub busy_backoff: Duration,
    pub route_max_age: Duration,
}

/// Builds a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    namesrv: String,
    group: String,
    send_timeout: Duration,
    retries: u32,
    max_message_size: usize,
    connect_timeout: Duration,
    busy_backoff: Duration,
    route_max_age: Duration,
}

impl Default for ProducerBuilder {
    fn default() -> Self {
        ProducerBuilder {
            namesrv: String::new(),
            group: "DEFAULT_PRODUCER".into(),
            send_timeout: Duration::from_secs(3),
            retries: 2,
            max_message_size: 4 << 20,
            connect_timeout: Duration::from_secs(3),
            busy_backoff: Duration::from_millis(100),
            route_max_age: ROUTE_MAX_AGE,
        }
    }
}

impl ProducerBuilder {
    /// NameServer addresses, "host:port;host:port" (required).
    pub fn namesrv_addr(mut self, addrs: impl Into<String>) -> Self {
        self.namesrv = addrs.into();
        self
    }

    /// The producer group (default `DEFAULT_PRODUCER`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// A send's whole time budget, retries included (default 3 s).
    pub fn send_timeout(mut self, t: Duration) -> Self {
        self.send_timeout = t;
        self
    }

    /// Tries after the first, on another broker where there is one (default 2).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// The largest message (body, tags, keys, properties) or batch, in bytes (default 4 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How long a connect may take (default 3 s); also each connection's write timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The wait before retrying after a SystemBusy answer, doubling with each (default
    /// 100 ms, at most 1 s).
    pub fn busy_backoff(mut self, t: Duration) -> Self {
        self.busy_backoff = t;
        self
    }

    /// How old a cached topic route may get (default 30 s).
    pub fn route_max_age(mut self, t: Duration) -> Self {
        self.route_max_age = t;
        self
    }

    pub fn build(self) -> Result<Producer, ClientError> {
        let namesrv = parse_addrs(&self.namesrv)?;
        if self.group.is_empty() {
            return Err(ClientError::Config("the producer group is empty".into()));
        }
        if self.send_timeout.is_zero() {
            return Err(ClientError::Config("the send timeout is zero".into()));
        }
        Producer::with_config(ProducerConfig {
            namesrv,
            group: self.group,
            send_timeout: self.send_timeout,
            retries: self.retries,
            max_message_size: self.max_message_size,
            connect_timeout: self.connect_timeout,
            busy_backoff: self.busy_backoff,
            route_max_age: self.route_max_age,
        })
    }
}
