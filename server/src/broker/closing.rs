//! A connection's close, awaited by its read loop, writer and every request task, each
//! registration O(1) and removed when its future is dropped (a request that finishes
//! normally leaves nothing behind). Single-threaded: one shard's tasks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Closing {
    closed: Cell<bool>,
    /// Wakers of the futures waiting, by slot; `free` lists the empty slots.
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Closing {
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Closes (once) and wakes everyone waiting.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once [`close`](Self::close) was called.
    pub fn wait(&self) -> WaitClosed<'_> {
        WaitClosed {
            closing: self,
            slot: None,
        }
    }
}

pub struct WaitClosed<'a> {
    closing: &'a Closing,
    slot: Option<usize>,
}

pin_project_lite::pin_project! {
    /// `f`'s output, or `None` if the close comes first. A plain struct rather than an async
    /// block racing two others: a request's task holds `f` once, not three times over (the
    /// task is moved whole when spawned, so its size is paid per request).
    pub struct UntilClosed<'a, F> {
        #[pin]
        f: F,
        closed: WaitClosed<'a>,
    }
}

impl<'a, F> UntilClosed<'a, F> {
    pub fn new(closing: &'a Closing, f: F) -> Self {
        UntilClosed {
            f,
            closed: closing.wait(),
        }
    }
}

impl<F: Future> Future for UntilClosed<'_, F> {
    type Output = Option<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Some(v));
        }
        Pin::new(this.closed).poll(cx).map(|()| None)
    }
}

impl Future for WaitClosed<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let closing = self.closing;
        if closing.closed.get() {
            return Poll::Ready(());
        }
        let mut slots = closing.slots.borrow_mut();
        match self.slot {
            Some(i) => match &mut slots[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                entry => *entry = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let i = match closing.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = waker;
                        i
                    }
                    None => {
                        slots.push(waker);
                        slots.len() - 1
                    }
                };
                drop(slots);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for WaitClosed<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(entry) = self.closing.slots.borrow_mut().get_mut(i) {
                *entry = None;
            }
            self.closing.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, or, poll_once, yield_now};

    #[test]
    fn waiters_wake_on_close_and_finished_waits_leave_no_slot_behind() {
        let c = Closing::default();
        for _ in 0..1000 {
            let mut w = Box::pin(c.wait());
            assert!(block_on(poll_once(w.as_mut())).is_none());
        }
        assert_eq!(c.slots.borrow().len(), 1, "one slot, reused");
        let waited = block_on(or(
            async {
                c.wait().await;
                true
            },
            async {
                yield_now().await;
                c.close();
                yield_now().await;
                false
            },
        ));
        assert!(waited);
        assert!(
            block_on(poll_once(c.wait())).is_some(),
            "closed stays closed"
        );
    }
}
