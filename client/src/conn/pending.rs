//! The table of requests awaiting a response on one connection, and the connection's broken
//! flag: the shared I/O thread completes entries by request id, callers cancel theirs on timeout,
//! and breaking the connection fails every entry at once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardmq_protocol::Frame;

use crate::error::ClientError;
use crate::lock;

/// What a pending request's answer is handed to: called exactly once, with the response
/// frame or the reason there is none. Called on the shared I/O thread (or on the caller's,
/// when the request never left), so it must not block.
pub type Callback = Box<dyn FnOnce(Result<Frame, ClientError>) + Send>;

/// Hashes a request id: ids are a per-connection counter, so one multiplication (Fibonacci
/// hashing) spreads them well, at a fraction of SipHash's cost on every request.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(FIBONACCI);
    }
}

/// 2^64 / φ, odd: multiplying by it is a bijection that moves entropy into the high bits.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

struct Entry {
    done: Callback,
    deadline: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

/// One connection's pending requests.
pub(crate) struct PendingTable {
    addr: String,
    state: Mutex<State>,
}

impl PendingTable {
    pub(crate) fn new(addr: String) -> Self {
        PendingTable {
            addr,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn broken_error(&self, reason: &str) -> ClientError {
        ClientError::Broken {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    /// Why the connection is broken, if it is.
    pub(crate) fn broken(&self) -> Option<String> {
        lock(&self.state).broken.clone()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.state).entries.len()
    }

    /// Adds a request awaiting its answer; refused (the callback handed back) once the
    /// connection is broken.
    pub(crate) fn insert(
        &self,
        id: u64,
        timeout: Duration,
        done: Callback,
    ) -> Result<(), (Callback, ClientError)> {
        let mut st = lock(&self.state);
        if let Some(reason) = &st.broken {
            let err = self.broken_error(reason);
            return Err((done, err));
        }
        let deadline = Instant::now() + timeout;
        st.entries.insert(
            id,
            Entry {
                done,
                deadline,
                timeout,
            },
        );
        Ok(())
    }

    /// Takes a request out of the table (cancelled, or its write failed); `None` if it was
    /// completed already.
    pub(crate) fn remove(&self, id: u64) -> Option<Callback> {
        lock(&self.state).entries.remove(&id).map(|e| e.done)
    }

    /// Completes a request with its response. A response nobody waits for any more (timed
    /// out, cancelled) is dropped; returns whether someone was waiting.
    pub(crate) fn complete(&self, id: u64, frame: Frame) -> bool {
        match self.remove(id) {
            Some(done) => {
                done(Ok(frame));
                true
            }
            None => false,
        }
    }

    /// Fails every request whose deadline passed with a timeout.
    pub(crate) fn expire(&self, now: Instant) {
        let expired: Vec<Entry> = {
            let mut st = lock(&self.state);
            let ids: Vec<u64> = st
                .entries
                .iter()
                .filter(|(_, e)| e.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| st.entries.remove(id)).collect()
        };
        for e in expired {
            (e.done)(Err(ClientError::Timeout {
                addr: self.addr.clone(),
                after: e.timeout,
            }));
        }
    }

    /// Marks the connection broken (the first reason sticks) and fails every pending request.
    pub(crate) fn break_all(&self, reason: &str) {
        let (entries, reason) = {
            let mut st = lock(&self.state);
            let reason = st.broken.get_or_insert_with(|| reason.to_string()).clone();
            (std::mem::take(&mut st.entries), reason)
        };
        for (_, e) in entries {
            (e.done)(Err(self.broken_error(&reason)));
        }
    }
}
