//! `SendFuture`: the outcome of an asynchronous send, awaited by blocking or polled as a
//! `Future` from any executor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use flume::r#async::RecvFut;

use super::engine::Outcome;
use super::message::SendReceipt;
use crate::error::ClientError;

/// How long past a send's deadline `wait` still waits: the send machinery ends every job by
/// its deadline (plus an I/O thread's sweep), so this only guards against a bug hanging a caller.
const WAIT_GRACE: Duration = Duration::from_secs(5);

/// The outcome of [`Producer::send_async`](super::Producer::send_async): resolves once, with
/// the receipt or the send's final error (after its retries).
#[must_use = "a send future does nothing unless waited for or polled (the send goes out anyway)"]
pub struct SendFuture {
    rx: flume::Receiver<Outcome>,
    fut: Option<RecvFut<'static, Outcome>>,
    deadline: Instant,
}

impl SendFuture {
    pub(crate) fn new(rx: flume::Receiver<Outcome>, deadline: Instant) -> Self {
        SendFuture {
            rx,
            fut: None,
            deadline,
        }
    }

    /// A future already resolved with `err`.
    pub(crate) fn failed(err: ClientError) -> Self {
        let (tx, rx) = flume::bounded(1);
        let _ = tx.send(Err(err));
        SendFuture::new(rx, Instant::now())
    }

    /// Blocks until the send is done (at most about the producer's send timeout).
    pub fn wait(self) -> Result<SendReceipt, ClientError> {
        first(self.wait_all())
    }

    /// Like `wait`, with every receipt (batches). On the client's shared I/O thread (in a
    /// callback), where the outcome could never arrive while this waits, it fails at once
    /// with [`ClientError::WaitOnIoThread`].
    pub(crate) fn wait_all(self) -> Outcome {
        if crate::conn::on_io_thread() {
            return Err(ClientError::WaitOnIoThread);
        }
        match self.rx.recv_deadline(self.deadline + WAIT_GRACE) {
            Ok(outcome) => outcome,
            Err(flume::RecvTimeoutError::Timeout) => Err(ClientError::Timeout {
                addr: String::new(),
                after: WAIT_GRACE,
            }),
            Err(flume::RecvTimeoutError::Disconnected) => Err(dropped()),
        }
    }
}

fn dropped() -> ClientError {
    ClientError::Unexpected {
        addr: String::new(),
        what: "the send ended without an outcome".into(),
    }
}

pub(crate) fn first(outcome: Outcome) -> Result<SendReceipt, ClientError> {
    outcome?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Unexpected {
            addr: String::new(),
            what: "a send answered with no receipt".into(),
        })
}

impl Future for SendFuture {
    type Output = Result<SendReceipt, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let fut = this
            .fut
            .get_or_insert_with(|| this.rx.clone().into_recv_async());
        Pin::new(fut)
            .poll(cx)
            .map(|r| first(r.unwrap_or_else(|_| Err(dropped()))))
    }
}

impl std::fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture")
            .field("done", &!self.rx.is_empty())
            .finish()
    }
}
