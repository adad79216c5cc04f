//! `Connection`: a blocking, pipelined RPC connection to one broker or NameServer over
//! `std::net::TcpStream`.
//!
//! Any number of requests may be outstanding at once. Writers take turns on one mutex and
//! write whole frames; one reader thread per connection decodes response frames with the
//! protocol's [`FrameDecoder`] and completes each pending request by its request id, in
//! whatever order the peer answers. The reader also expires requests past their deadline
//! (it wakes at least every [`SWEEP_TICK`]). When a read or write fails, or the peer
//! closes, the connection is marked broken and every pending request fails with
//! [`ClientError::Broken`]; a broken connection refuses new requests (callers reconnect,
//! see [`crate::pool::ConnectionPool`]).
//!
//! Nothing here depends on an async runtime: [`Connection::call`] blocks the calling thread,
//! [`Connection::call_async`] returns a [`ResponseFuture`] that can be waited for or polled
//! from any executor, and [`Connection::call_with`] hands the answer to a callback.

mod future;
mod pending;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardmq_protocol::{Frame, FrameDecoder, Request, FRAME_MAX_DEFAULT};

pub use future::ResponseFuture;
pub use pending::Callback;
use pending::PendingTable;

use crate::error::ClientError;
use crate::lock;

/// How often, at most, the reader wakes to expire requests past their deadline: an async
/// request's timeout fires up to this late.
pub const SWEEP_TICK: Duration = Duration::from_millis(100);

/// What a connection does with a request the peer sends it (a broker's consumer group
/// notification): called on the connection's reader thread, so it must not block.
pub type PeerRequestHandler = Arc<dyn Fn(Frame) + Send + Sync>;

/// Bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 64 * 1024;

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
    reader: Mutex<Option<JoinHandle<()>>>,
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
        read_half.set_read_timeout(Some(SWEEP_TICK))?;
        let control = stream.try_clone()?;
        let table = Arc::new(PendingTable::new(addr.to_string()));
        let decoder = FrameDecoder::new(FRAME_MAX_DEFAULT);
        let reader_table = Arc::clone(&table);
        let reader = std::thread::Builder::new()
            .name(format!("shardmq-conn {addr}"))
            .spawn(move || read_loop(read_half, &reader_table, decoder, on_request.as_ref()))?;
        Ok(Connection {
            inner: Arc::new(Inner {
                table,
                writer: Mutex::new(stream),
                outbox: Mutex::new(Outbox::default()),
                control,
                next_id: AtomicU64::new(1),
                max_frame: FRAME_MAX_DEFAULT,
                reader: Mutex::new(Some(reader)),
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

    /// Sends `request` and blocks until its response arrives, at most `timeout`.
    pub fn call(&self, request: &Request, timeout: Duration) -> Result<Frame, ClientError> {
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

    /// Sends `request` and hands its answer to `done` (exactly once): on the connection's
    /// reader thread when the response, the timeout or the breakage comes, or on this
    /// thread before returning when the request cannot be sent. `done` must not block.
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
        self.table.break_all("connection dropped");
        let _ = self.control.shutdown(Shutdown::Both);
        if let Some(h) = lock(&self.reader).take() {
            // The last handle may go from a callback on the reader thread itself: it ends on
            // its own once the socket is shut down, and cannot join itself.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
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

/// The reader thread: decodes responses and completes their requests until the connection
/// ends, then fails whatever is still pending.
fn read_loop(
    mut stream: TcpStream,
    table: &PendingTable,
    decoder: FrameDecoder,
    on_request: Option<&PeerRequestHandler>,
) {
    let reason = match read_frames(&mut stream, table, decoder, on_request) {
        Ok(()) => "closed by the peer".to_string(),
        Err(e) => e,
    };
    tracing::debug!(addr = table.addr(), %reason, "connection ended");
    table.break_all(&reason);
}

/// Returns at end of stream; `Err` holds the reason on a read or framing failure.
fn read_frames(
    stream: &mut TcpStream,
    table: &PendingTable,
    decoder: FrameDecoder,
    on_request: Option<&PeerRequestHandler>,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut last_sweep = Instant::now();
    loop {
        while let Some(frame) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            if !frame.header.is_response() {
                if let Some(handle) = on_request {
                    handle(frame);
                    continue;
                }
                tracing::debug!(
                    addr = table.addr(),
                    opcode = frame.header.opcode,
                    "ignored a request from the peer"
                );
                continue;
            }
            let id = frame.header.request_id;
            if !table.complete(id, frame) {
                tracing::debug!(addr = table.addr(), id, "dropped a response nobody awaits");
            }
        }
        if let Some(reason) = table.broken() {
            return Err(reason);
        }
        if let Some(total) = decoder.needed(&buf).map_err(|e| e.to_string())? {
            // The decoder checked `total` against the frame limit: safe to reserve.
            buf.reserve(total.saturating_sub(buf.len()));
        }
        let got = stream.read(&mut scratch);
        if let Ok(n) = got {
            buf.extend_from_slice(&scratch[..n]);
        }
        match got {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= SWEEP_TICK {
            table.expire(now);
            last_sweep = now;
        }
    }
}
