//! The shared I/O thread: one `mio` event loop per process that reads the responses of every
//! [`Connection`](super::Connection), decodes them and completes their requests.
//!
//! Writers keep the socket to themselves (blocking writes with a write timeout); only reading
//! moves here. The loop reads with `recv(MSG_DONTWAIT)`, so the socket itself stays blocking
//! for the writers: `O_NONBLOCK` is a flag of the open file, shared by every duplicate of the
//! descriptor, and setting it would make each writer handle `WouldBlock` and wait for room
//! with a poll of its own instead of the kernel's `SO_SNDTIMEO`.
//!
//! A connection is watched from the thread that opens it: its reading state is queued to the
//! loop first, then its socket is registered (edge-triggered). The loop takes queued commands
//! before it looks at events, so it knows a token by the time its socket reports; and opening
//! a connection never waits for the loop (a callback may open one on the loop's own thread).
//! Only the loop deregisters and closes its copy of a socket, on end of stream, a failure, or
//! the [`Registration`] being dropped with the last handle to the connection.
//!
//! The loop also expires requests past their deadline every [`SWEEP_TICK`]. Callbacks run
//! here: one that blocks stalls every connection of the process, and one that waits for an
//! answer would wait for itself, so waiting on this thread fails at once
//! ([`ClientError::WaitOnIoThread`](crate::ClientError::WaitOnIoThread)). A callback that
//! panics breaks its own connection; the loop goes on.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use shardmq_protocol::FrameDecoder;

use super::pending::PendingTable;
use super::{PeerRequestHandler, SWEEP_TICK};
use crate::lock;

/// Bytes asked of a socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Reads one socket gets per turn before the others get theirs (it is read again next turn).
const READS_PER_TURN: usize = 16;
/// Readiness events taken per wait.
const EVENTS: usize = 1024;
/// The token of the waker (connections count from 1).
const WAKE: Token = Token(0);

thread_local! {
    static ON_IO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller is the shared I/O thread (inside a callback), where nothing may wait
/// for an answer.
pub(crate) fn on_io_thread() -> bool {
    ON_IO_THREAD.with(Cell::get)
}

/// What the loop needs to read one connection.
pub(super) struct Source {
    /// The loop's own copy of the socket (closed by the loop).
    stream: TcpStream,
    table: Arc<PendingTable>,
    decoder: FrameDecoder,
    on_request: Option<PeerRequestHandler>,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
}

impl Source {
    pub(super) fn new(
        stream: TcpStream,
        table: Arc<PendingTable>,
        decoder: FrameDecoder,
        on_request: Option<PeerRequestHandler>,
    ) -> Self {
        Source {
            stream,
            table,
            decoder,
            on_request,
            buf: BytesMut::new(),
        }
    }
}

enum Command {
    Add(Token, Box<Source>),
    Remove(Token),
}

/// The handle to the loop, shared by every connection.
struct Reactor {
    registry: Registry,
    waker: Waker,
    commands: flume::Sender<Command>,
    next_token: AtomicUsize,
}

/// Started by the first connection; lives as long as the process.
static REACTOR: Mutex<Option<Arc<Reactor>>> = Mutex::new(None);

fn reactor() -> io::Result<Arc<Reactor>> {
    let mut slot = lock(&REACTOR);
    if let Some(r) = &*slot {
        return Ok(Arc::clone(r));
    }
    let poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let waker = Waker::new(poll.registry(), WAKE)?;
    let (commands, rx) = flume::unbounded();
    std::thread::Builder::new()
        .name("shardmq-io".into())
        .spawn(move || run(poll, &rx))?;
    let r = Arc::new(Reactor {
        registry,
        waker,
        commands,
        next_token: AtomicUsize::new(WAKE.0 + 1),
    });
    *slot = Some(Arc::clone(&r));
    Ok(r)
}

/// A connection's place in the loop; dropping it stops the reading and closes the loop's
/// copy of the socket.
pub(super) struct Registration {
    reactor: Arc<Reactor>,
    token: Token,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The loop outlives every connection: neither can fail but at process exit.
        let _ = self.reactor.commands.send(Command::Remove(self.token));
        let _ = self.reactor.waker.wake();
    }
}

/// Hands `source` to the loop and watches its socket.
pub(super) fn register(source: Source) -> io::Result<Registration> {
    let reactor = reactor()?;
    let token = Token(reactor.next_token.fetch_add(1, Ordering::Relaxed));
    let fd = source.stream.as_raw_fd();
    let registration = Registration { reactor, token };
    let gone = |_| io::Error::other("the client's I/O thread is gone");
    let r = &registration.reactor;
    r.commands
        .send(Command::Add(token, Box::new(source)))
        .map_err(gone)?;
    // The loop owns `fd` now, but closes it only on an event (there is none before this
    // registration) or on the `Remove` that dropping `registration` sends.
    r.registry
        .register(&mut SourceFd(&fd), token, Interest::READABLE)?;
    Ok(registration)
}

/// How reading a ready socket went.
enum Read {
    /// Everything available was read.
    Drained,
    /// The turn's reads ran out with more perhaps waiting.
    More,
    /// The connection is over, for this reason.
    Ended(String),
}

struct Loop {
    poll: Poll,
    sources: HashMap<Token, Box<Source>>,
    scratch: Vec<u8>,
}

fn run(poll: Poll, commands: &flume::Receiver<Command>) {
    ON_IO_THREAD.with(|f| f.set(true));
    let mut lp = Loop {
        poll,
        sources: HashMap::new(),
        scratch: vec![0u8; READ_CHUNK],
    };
    let mut events = Events::with_capacity(EVENTS);
    let mut again: Vec<Token> = Vec::new();
    let mut turn: Vec<Token> = Vec::new();
    let mut next_sweep = Instant::now() + SWEEP_TICK;
    loop {
        let timeout = if again.is_empty() {
            next_sweep.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        if let Err(e) = lp.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "the client's I/O thread cannot wait for events");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Before the events: a socket reports only after its `Add` was queued.
        for cmd in commands.try_iter() {
            match cmd {
                Command::Add(token, source) => {
                    lp.sources.insert(token, source);
                }
                Command::Remove(token) => lp.end(token, None),
            }
        }
        turn.append(&mut again);
        turn.extend(events.iter().map(|e| e.token()).filter(|t| *t != WAKE));
        // A token twice in a turn (left over and ready again) just reads nothing the second time.
        for token in turn.drain(..) {
            match lp.read(token) {
                Read::Drained => {}
                Read::More => again.push(token),
                Read::Ended(reason) => lp.end(token, Some(&reason)),
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            lp.sweep(now);
            next_sweep = now + SWEEP_TICK;
        }
    }
}

impl Loop {
    /// Reads what `token`'s socket has (up to the turn's share) and hands out its frames.
    fn read(&mut self, token: Token) -> Read {
        let Some(src) = self.sources.get_mut(&token) else {
            return Read::Drained;
        };
        let scratch = &mut self.scratch;
        match catch_unwind(AssertUnwindSafe(|| read_some(src, scratch))) {
            Ok(read) => read,
            Err(_) => Read::Ended("a callback panicked on the client's I/O thread".into()),
        }
    }

    /// Stops watching `token`'s socket and closes the loop's copy; with a reason, fails its
    /// pending requests (a `Remove` comes from a connection that broke them already).
    fn end(&mut self, token: Token, reason: Option<&str>) {
        let Some(src) = self.sources.remove(&token) else {
            return;
        };
        // Closing the descriptor alone would not do: the writers' copies keep the socket
        // open, and with it the registration.
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&src.stream.as_raw_fd()));
        if let Some(reason) = reason {
            tracing::debug!(addr = src.table.addr(), %reason, "connection ended");
            let table = &src.table;
            if catch_unwind(AssertUnwindSafe(|| table.break_all(reason))).is_err() {
                tracing::error!(addr = table.addr(), "a callback panicked on the I/O thread");
            }
        }
    }

    /// Fails the requests past their deadline, on every connection.
    fn sweep(&mut self, now: Instant) {
        let mut panicked = Vec::new();
        for (token, src) in &self.sources {
            let table = &src.table;
            if catch_unwind(AssertUnwindSafe(|| table.expire(now))).is_err() {
                panicked.push(*token);
            }
        }
        for token in panicked {
            self.end(
                token,
                Some("a callback panicked on the client's I/O thread"),
            );
        }
    }
}

fn read_some(src: &mut Source, scratch: &mut [u8]) -> Read {
    for _ in 0..READS_PER_TURN {
        match recv(&src.stream, scratch) {
            Ok(0) => return Read::Ended("closed by the peer".into()),
            Ok(n) => {
                src.buf.extend_from_slice(&scratch[..n]);
                if let Err(reason) = deliver(src) {
                    return Read::Ended(reason);
                }
                // A short read emptied the socket: the next bytes (or the end of stream)
                // raise a new edge, so the read that would say `EAGAIN` can be saved.
                if n < scratch.len() {
                    return Read::Drained;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Read::Ended(format!("read failed: {e}")),
        }
    }
    Read::More
}

/// Reads what the socket has now, without waiting (the socket itself stays blocking).
fn recv(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and the descriptor stays open
    // while `stream` is borrowed.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Completes a request per whole response frame in the buffer; `Err` holds the reason the
/// framing is lost.
fn deliver(src: &mut Source) -> Result<(), String> {
    let table = &src.table;
    while let Some(frame) = src
        .decoder
        .decode(&mut src.buf)
        .map_err(|e| e.to_string())?
    {
        if !frame.header.is_response() {
            match &src.on_request {
                Some(handle) => handle(frame),
                None => tracing::debug!(
                    addr = table.addr(),
                    opcode = frame.header.opcode,
                    "ignored a request from the peer"
                ),
            }
            continue;
        }
        let id = frame.header.request_id;
        if !table.complete(id, frame) {
            tracing::debug!(addr = table.addr(), id, "dropped a response nobody awaits");
        }
    }
    if let Some(total) = src.decoder.needed(&src.buf).map_err(|e| e.to_string())? {
        // The decoder checked `total` against the frame limit: safe to reserve.
        src.buf.reserve(total.saturating_sub(src.buf.len()));
    }
    Ok(())
}
