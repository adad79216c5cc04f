//! `ResponseFuture`: the answer to one pipelined request, awaited by blocking (`wait`) or
//! polled as a `Future` from any executor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use flume::r#async::RecvFut;
use shardmq_protocol::Frame;

use super::pending::PendingTable;
use crate::error::ClientError;

type Answer = Result<Frame, ClientError>;

/// The answer to a request sent with [`Connection::call_async`](super::Connection::call_async).
///
/// It resolves once: with the response frame, a timeout, or the connection breaking. `wait`
/// enforces the request's timeout itself; a polled future relies on the shared I/O thread,
/// which expires requests within [`super::SWEEP_TICK`] of their deadline (and wakes the
/// future's waker from that thread). Dropping it unresolved cancels the request: a late
/// response is dropped.
#[must_use = "a response future does nothing unless waited for or polled"]
pub struct ResponseFuture {
    rx: flume::Receiver<Answer>,
    fut: Option<RecvFut<'static, Answer>>,
    /// The table to cancel in; `None` once resolved (or for a request that never left).
    cancel: Option<(Arc<PendingTable>, u64)>,
    addr: String,
    deadline: Instant,
    timeout: Duration,
}

impl ResponseFuture {
    pub(crate) fn new(
        rx: flume::Receiver<Answer>,
        table: Arc<PendingTable>,
        id: u64,
        timeout: Duration,
    ) -> Self {
        ResponseFuture {
            rx,
            fut: None,
            addr: table.addr().to_string(),
            cancel: Some((table, id)),
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    /// A future that is already resolved with `err` (the request could not be sent).
    pub(crate) fn failed(addr: &str, err: ClientError) -> Self {
        let (tx, rx) = flume::bounded(1);
        // The receiver is alive: this send cannot fail.
        let _ = tx.send(Err(err));
        ResponseFuture {
            rx,
            fut: None,
            cancel: None,
            addr: addr.to_string(),
            deadline: Instant::now(),
            timeout: Duration::ZERO,
        }
    }

    fn lost(&self) -> ClientError {
        ClientError::Broken {
            addr: self.addr.clone(),
            reason: "the response slot was dropped unanswered".into(),
        }
    }

    /// Blocks until the answer arrives, at most the request's timeout. On the shared I/O
    /// thread (in a callback), where the answer could never arrive while this waits, it
    /// fails at once with [`ClientError::WaitOnIoThread`] and cancels the request.
    pub fn wait(mut self) -> Answer {
        if super::on_io_thread() {
            return Err(ClientError::WaitOnIoThread);
        }
        let answer = match self.rx.recv_deadline(self.deadline) {
            Ok(a) => a,
            Err(flume::RecvTimeoutError::Disconnected) => Err(self.lost()),
            Err(flume::RecvTimeoutError::Timeout) => match self.cancel.take() {
                Some((table, id)) if table.remove(id).is_some() => Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    after: self.timeout,
                }),
                // Completed just now (or the I/O thread's sweep got there first): whoever took
                // the entry is handing the answer over.
                _ => self.rx.recv().unwrap_or_else(|_| Err(self.lost())),
            },
        };
        self.cancel = None;
        answer
    }

    /// Waits for the answer from async code (same as `.await` on the future itself).
    pub async fn recv_async(self) -> Answer {
        self.await
    }
}

impl Future for ResponseFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let this = &mut *self;
        let fut = this
            .fut
            .get_or_insert_with(|| this.rx.clone().into_recv_async());
        match Pin::new(fut).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(res) => {
                this.cancel = None;
                Poll::Ready(res.unwrap_or_else(|_| Err(this.lost())))
            }
        }
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if let Some((table, id)) = self.cancel.take() {
            table.remove(id);
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("addr", &self.addr)
            .field("request_id", &self.cancel.as_ref().map(|(_, id)| *id))
            .finish()
    }
}
