//! `ConnectionPool`: one shared [`Connection`] per address, opened on first use and opened
//! again when the cached one is broken.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::conn::{Connection, PeerRequestHandler};
use crate::error::ClientError;
use crate::lock;

/// Connections by address ("host:port").
pub struct ConnectionPool {
    connect_timeout: Duration,
    conns: Mutex<HashMap<String, Connection>>,
    on_request: Option<PeerRequestHandler>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("connect_timeout", &self.connect_timeout)
            .field("conns", &self.conns)
            .finish_non_exhaustive()
    }
}

impl ConnectionPool {
    /// A pool whose connects wait at most `connect_timeout` (also each connection's write
    /// timeout).
    pub fn new(connect_timeout: Duration) -> Self {
        ConnectionPool {
            connect_timeout,
            conns: Mutex::new(HashMap::new()),
            on_request: None,
        }
    }

    /// A pool whose connections hand requests from their peers to `on_request`.
    pub fn with_request_handler(connect_timeout: Duration, on_request: PeerRequestHandler) -> Self {
        ConnectionPool {
            on_request: Some(on_request),
            ..Self::new(connect_timeout)
        }
    }

    /// The connection to `addr`, connecting if there is none or the cached one is broken.
    /// The connect happens outside the pool's lock, so a slow address holds up no other.
    pub fn get(&self, addr: &str) -> Result<Connection, ClientError> {
        if let Some(c) = lock(&self.conns).get(addr) {
            if !c.is_broken() {
                return Ok(c.clone());
            }
        }
        let fresh = Connection::connect_with(addr, self.connect_timeout, self.on_request.clone())?;
        let mut conns = lock(&self.conns);
        match conns.get(addr) {
            // Another thread connected meanwhile: share its connection, drop ours.
            Some(c) if !c.is_broken() => Ok(c.clone()),
            _ => {
                conns.insert(addr.to_string(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    /// Closes and forgets the connection to `addr` (the next `get` reconnects).
    pub fn evict(&self, addr: &str) {
        if let Some(c) = lock(&self.conns).remove(addr) {
            c.close();
        }
    }

    /// Closes every connection.
    pub fn close_all(&self) {
        let conns: Vec<Connection> = lock(&self.conns).drain().map(|(_, c)| c).collect();
        for c in conns {
            c.close();
        }
    }

    /// Addresses with an open (not broken) connection.
    pub fn open_addrs(&self) -> Vec<String> {
        lock(&self.conns)
            .iter()
            .filter(|(_, c)| !c.is_broken())
            .map(|(a, _)| a.clone())
            .collect()
    }
}
