//! `ConnectionPool`: one shared [`Connection`] per address, opened on first use and opened
//! again when the cached one is broken.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::conn::Connection;
use crate::error::ClientError;
use crate::lock;

/// Connections by address ("host:port").
#[derive(Debug)]
pub struct ConnectionPool {
    connect_timeout: Duration,
    conns: Mutex<HashMap<String, Connection>>,
}

impl ConnectionPool {
    /// A pool whose connects wait at most `connect_timeout` (also each connection's write
    /// timeout).
    pub fn new(connect_timeout: Duration) -> Self {
        ConnectionPool {
            connect_timeout,
            conns: Mutex::new(HashMap::new()),
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
        let fresh = Connection::connect(addr, self.connect_timeout)?;
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
