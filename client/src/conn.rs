//! `Connection`: a blocking, pipelined RPC connection to one broker or NameServer over
//! `std::net::TcpStream`.
//!
//! Any number of requests may be outstanding at once. Writers take turns on one mutex and
//! write whole frames. Reading is not per connection: one shared I/O thread per process
//! (`shardmq-io`, an event loop over every connection's socket, see `reactor.rs`) decodes
//! response frames with the protocol's [`FrameDecoder`] and completes each pending request by
//! its request id, in whatever order the peer answers. It also expires requests past their
//! deadline (every [`SWEEP_TICK`]). When a read or write fails, or the peer closes, the
//! connection is marked broken and every pending request fails with [`ClientError::Broken`];
//! a broken connection refuses new requests (callers reconnect, see
//! [`crate::pool::ConnectionPool`]).
//!
//! Nothing here depends on an async runtime: [`Connection::call`] blocks the calling thread,
//! [`Connection::call_async`] returns a [`ResponseFuture`] that can be waited for or polled
//! from any executor, and [`Connection::call_with`] hands the answer to a callback.
//!
//! # Callbacks run on the shared I/O thread
//!
//! `call_with` callbacks, the wakers of polled [`ResponseFuture`]s and the
//! [`PeerRequestHandler`] run on the one I/O thread that reads every connection of the
//! process. They must not block: a callback that sleeps, takes a contended lock or waits on a
//! bounded channel stalls the answers of every connection. One that waits for an answer
//! ([`Connection::call`], [`ResponseFuture::wait`], a producer's blocking send) would wait for
//! the very thread it holds: such a wait fails at once with [`ClientError::WaitOnIoThread`]
//! instead. Hand the work to another thread (an unbounded channel) or send with
//! [`Connection::call_with`] and go on from its callback. A callback that panics breaks its
//! own connection.

mod future;
mod pending;
mod reactor;
#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use shardmq_protocol::{Frame, FrameDecoder, Request, FRAME_MAX_DEFAULT};

pub use future::ResponseFuture;
pub use pending::Callback;
use pending::PendingTable;
pub(crate) use reactor::on_io_thread;

use crate::error::ClientError;
use crate::lock;

/// How often the I/O thread expires requests past their deadline: an async request's timeout
/// fires up to this late.
pub const SWEEP_TICK: Duration = Duration::from_millis(100);

/// What a connection does with a request the peer sends it (a broker's consumer group
/// notification): called on the shared I/O thread, so it must not block (see the module's
/// docs).
pub type PeerRequestHandler = Arc<dyn Fn(Frame) + Send + Sync>;

/// A pipelined connection. Cloning is cheap and shares the connection; the socket closes
/// when the last clone is dropped (or on [`Connection::close`]).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    table: Arc<PendingTable>,
    writer: Mutex<TcpStream>,
    /// Frames waiting to be written, and whether a caller is writing them now.
    outbox: Mutex<Outbox>,
    /// For shutting the socket down without waiting for a writer.
    control: TcpStream,
    next_id: AtomicU64,
    max_frame: u32,
    /// The I/O thread's reading of the socket; dropped (after `Inner::drop`) it stops.
    _reading: reactor::Registration,
}

impl Connection {
    /// Connects to `addr` ("host:port"), waiting at most `timeout` per resolved address. A
    /// write that cannot go out within `timeout` breaks the connection.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Connection, ClientError> {
        Self::connect_with(addr, timeout, None)
    }

    /// [`Connection::connect`], handing requests the peer sends to `on_request` (without
    /// one they are logged and dropped).
    pub fn connect_with(
        addr: &str,
        timeout: Duration,
        on_request: Option<PeerRequestHandler>,
    ) -> Result<Connection, ClientError> {
        let io_err = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let addrs = addr.to_socket_addrs().map_err(io_err)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| io_err(last))?;
        Self::from_stream(addr, stream, timeout, on_request).map_err(io_err)
    }

    fn from_stream(
        addr: &str,
        stream: TcpStream,
        timeout: Duration,
        on_request: Option<PeerRequestHandler>,
    ) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let read_half = stream.try_clone()?;
        let control = stream.try_clone()?;
        let table = Arc::new(PendingTable::new(addr.to_string()));
        let decoder = FrameDecoder::new(FRAME_MAX_DEFAULT);
        let reading = reactor::register(reactor::Source::new(
            read_half,
            Arc::clone(&table),
            decoder,
            on_request,
        ))?;
        Ok(Connection {
            inner: Arc::new(Inner {
                table,
                writer: Mutex::new(stream),
                outbox: Mutex::new(Outbox::default()),
                control,
                next_id: AtomicU64::new(1),
                max_frame: FRAME_MAX_DEFAULT,
                _reading: reading,
            }),
        })
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        self.inner.table.addr()
    }

    /// Whether the connection failed (or was closed) and refuses new requests.
    pub fn is_broken(&self) -> bool {
        self.inner.table.broken().is_some()
    }

    /// Requests sent and not yet answered, timed out or cancelled.
    pub fn pending(&self) -> usize {
        self.inner.table.len()
    }

    /// Sends `request` and blocks until its response arrives, at most `timeout`. On the
    /// shared I/O thread (in a callback) it fails with [`ClientError::WaitOnIoThread`] and
    /// sends nothing.
    pub fn call(&self, request: &Request, timeout: Duration) -> Result<Frame, ClientError> {
        if on_io_thread() {
            return Err(ClientError::WaitOnIoThread);
        }
        self.call_async(request, timeout).wait()
    }

    /// Sends `request` (blocking only while its frame is written) and returns its answer to
    /// come. Many calls may be outstanding at once.
    pub fn call_async(&self, request: &Request, timeout: Duration) -> ResponseFuture {
        let (tx, rx) = flume::bounded(1);
        let callback: Callback = Box::new(move |answer| {
            // The future may have been dropped (cancelled): nobody wants the answer then.
            let _ = tx.send(answer);
        });
        match self.send_with(request, timeout, callback) {
            Ok(id) => ResponseFuture::new(rx, Arc::clone(&self.inner.table), id, timeout),
            Err(err) => ResponseFuture::failed(self.addr(), err),
        }
    }

    /// Sends `request` and hands its answer to `done` (exactly once): on the shared I/O
    /// thread when the response, the timeout or the breakage comes, or on this thread before
    /// returning when the request cannot be sent. `done` must not block (see the module's
    /// docs); it may send further requests with `call_with`.
    pub fn call_with(
        &self,
        request: &Request,
        timeout: Duration,
        done: impl FnOnce(Result<Frame, ClientError>) + Send + 'static,
    ) {
        // On failure send_with has called `done` with the error already.
        let _ = self.send_with(request, timeout, Box::new(done));
    }

    /// Registers `done` and writes the request; on failure `done` has been called already
    /// (with the error also returned).
    fn send_with(
        &self,
        request: &Request,
        timeout: Duration,
        done: Callback,
    ) -> Result<u64, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            // Encoded straight into the outbox, and registered under its lock: no writer
            // can send the frame before its answer has somewhere to go.
            let mut q = lock(&self.inner.outbox);
            let start = q.buf.len();
            let len = request.encode_frame(id, false, &mut q.buf);
            let registered = match self.check_len(len) {
                Ok(()) => self.inner.table.insert(id, timeout, done),
                Err(err) => Err((done, err)),
            };
            if let Err((done, err)) = registered {
                q.buf.truncate(start);
                drop(q);
                done(Err(self.copy_err(&err)));
                return Err(err);
            }
        }
        if let Err(err) = self.flush_unless_corked() {
            if let Some(done) = self.inner.table.remove(id) {
                done(Err(self.copy_err(&err)));
            }
            return Err(err);
        }
        Ok(id)
    }

    /// Sends `request` as a oneway frame: no response comes and none is awaited.
    pub fn oneway(&self, request: &Request) -> Result<(), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = self.inner.table.broken() {
            return Err(self.inner.table.broken_error(&reason));
        }
        {
            let mut q = lock(&self.inner.outbox);
            let start = q.buf.len();
            let len = request.encode_frame(id, true, &mut q.buf);
            if let Err(err) = self.check_len(len) {
                q.buf.truncate(start);
                return Err(err);
            }
        }
        self.flush_unless_corked()
    }

    /// Closes the connection: pending requests fail with [`ClientError::Broken`].
    pub fn close(&self) {
        self.inner.table.break_all("closed by this client");
        let _ = self.inner.control.shutdown(Shutdown::Both);
    }

    /// Refuses a frame of `encoded` bytes (prefix included) whose length prefix the peer's
    /// limit would refuse.
    fn check_len(&self, encoded: usize) -> Result<(), ClientError> {
        let length = encoded.saturating_sub(shardmq_protocol::frame::LENGTH_BYTES);
        if length > self.inner.max_frame as usize {
            return Err(ClientError::MessageTooLarge {
                size: length,
                max: self.inner.max_frame as usize,
            });
        }
        Ok(())
    }

    /// Writes `frame`, coalesced with whatever other callers queue meanwhile: the first
    /// caller to find nobody writing becomes the writer and sends every queued frame in one
    /// `write` per round (one syscall for many pipelined requests instead of one each). A
    /// frame queued behind another caller's write returns at once; if that write fails, the
    /// connection breaks and the frame's request fails with it. Inside [`corked`], frames
    /// only queue; they go out when the outermost `corked` returns.
    fn flush_unless_corked(&self) -> Result<(), ClientError> {
        let deferred = CORK.with(|c| match c.borrow_mut().as_mut() {
            Some(held) => {
                if !held.iter().any(|h| Arc::ptr_eq(&h.inner, &self.inner)) {
                    held.push(self.clone());
                }
                true
            }
            None => false,
        });
        if deferred {
            return Ok(());
        }
        self.flush_outbox()
    }

    /// Writes the queued frames unless another caller is writing them already.
    fn flush_outbox(&self) -> Result<(), ClientError> {
        {
            let mut q = lock(&self.inner.outbox);
            if q.writing || q.buf.is_empty() {
                return Ok(());
            }
            q.writing = true;
        }
        loop {
            // Every frame queued so far, taken whole; its allocation comes back to the
            // outbox for reuse once written and dropped.
            let bytes = {
                let mut q = lock(&self.inner.outbox);
                if q.buf.is_empty() {
                    q.writing = false;
                    return Ok(());
                }
                q.buf.split()
            };
            if let Err(e) = self.write_bytes(&bytes) {
                let mut q = lock(&self.inner.outbox);
                q.buf.clear();
                q.writing = false;
                return Err(e);
            }
        }
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut w = lock(&self.inner.writer);
        if let Some(reason) = self.inner.table.broken() {
            return Err(self.inner.table.broken_error(&reason));
        }
        if let Err(e) = w.write_all(bytes) {
            drop(w);
            // Part of the frame may be out: the stream's framing is lost.
            let reason = format!("write failed: {e}");
            let _ = self.inner.control.shutdown(Shutdown::Both);
            self.inner.table.break_all(&reason);
            return Err(ClientError::Io {
                addr: self.addr().to_string(),
                source: e,
            });
        }
        Ok(())
    }

    /// The same failure for a second recipient (I/O errors are not `Clone`).
    fn copy_err(&self, err: &ClientError) -> ClientError {
        match err {
            ClientError::MessageTooLarge { size, max } => ClientError::MessageTooLarge {
                size: *size,
                max: *max,
            },
            other => self.inner.table.broken_error(&other.to_string()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // May run on the I/O thread (the last handle dropped by a callback): nothing here
        // waits for it. `_reading` goes next and has the I/O thread drop the socket.
        self.table.break_all("connection dropped");
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr())
            .field("broken", &self.inner.table.broken())
            .field("pending", &self.pending())
            .finish()
    }
}

thread_local! {
    /// Connections this thread queued frames on inside [`corked`], to flush at its end.
    static CORK: std::cell::RefCell<Option<Vec<Connection>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's requests held back, then writes them: every request `f`
/// sends on a connection goes out in one `write` when `f` returns (or unwinds), instead of
/// one each. For a thread that pipelines many sends at once (`Producer::send_async` in a
/// loop). Nested calls flush at the outermost one. Do not wait for an answer inside `f`:
/// its request has not left yet. A write failure breaks the connection,
/// which fails the held requests like any other.
pub fn corked<R>(f: impl FnOnce() -> R) -> R {
    struct Uncork(bool);
    impl Drop for Uncork {
        fn drop(&mut self) {
            if !self.0 {
                return;
            }
            let held = CORK.with(|c| c.borrow_mut().take()).unwrap_or_default();
            for conn in held {
                // A failure breaks the connection and fails its pending requests.
                let _ = conn.flush_outbox();
            }
        }
    }
    let outermost = CORK.with(|c| {
        let mut c = c.borrow_mut();
        let first = c.is_none();
        if first {
            *c = Some(Vec::new());
        }
        first
    });
    let _uncork = Uncork(outermost);
    f()
}

#[derive(Default)]
struct Outbox {
    /// Frames encoded and not yet taken by a writer.
    buf: BytesMut,
    writing: bool,
}
