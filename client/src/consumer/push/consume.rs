//! Handing pulled messages to the worker pool and taking the results back: concurrently
//! (any number of batches of a queue at once; the commit offset is the smallest still in
//! flight) or orderly (one batch of a queue at a time, retried here after a pause when the
//! listener asks, sent to the dead-letter topic after `max_reconsume_times` tries).

use super::driver::{Driver, Outcome, Timer};
use super::workers::Work;
use crate::route::MessageQueue;
use crate::WireMessage;

/// Messages whose send-back failed are consumed again here after this.
const LOCAL_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

impl Driver {
    pub fn dispatch_concurrent(&mut self, mq: &MessageQueue, gen: u64, msgs: Vec<WireMessage>) {
        let size = self.cfg.consume_batch_size.max(1);
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let batch: Vec<WireMessage> = msgs.by_ref().take(size).collect();
            self.send_work(Work {
                mq: mq.clone(),
                gen,
                msgs: batch,
            });
        }
    }

    /// Gives the queue's next batch to the listener, if none is with it now.
    pub fn consume_orderly(&mut self, mq: &MessageQueue) {
        let size = self.cfg.consume_batch_size.max(1);
        let Some(q) = self.queues.get_mut(mq) else {
            return;
        };
        if q.consuming || q.dropping {
            return;
        }
        let batch = match q.suspended.as_mut() {
            Some((batch, _)) => batch.clone(),
            None => {
                let n = q.waiting.len().min(size);
                q.waiting.drain(..n).collect()
            }
        };
        if batch.is_empty() {
            return;
        }
        q.consuming = true;
        let gen = q.gen;
        self.send_work(Work {
            mq: mq.clone(),
            gen,
            msgs: batch,
        });
    }

    pub fn on_consumed(&mut self, mq: &MessageQueue, gen: u64, outcome: Outcome) {
        match outcome {
            Outcome::Orderly { ok, batch } => self.on_consumed_orderly(mq, gen, ok, batch),
            Outcome::Concurrent { done, retry } => {
                if let Some(q) = self.queues.get_mut(mq) {
                    q.pq.remove(done);
                    if !retry.is_empty() {
                        q.local_retry.extend(retry);
                        self.schedule(LOCAL_RETRY_DELAY, Timer::LocalRetry(mq.clone(), gen));
                    }
                }
            }
        }
        let Some(q) = self.queues.get(mq) else {
            return;
        };
        if q.dropping && q.drained(self.listener.is_orderly()) {
            self.finish_drop(mq);
        }
    }

    fn on_consumed_orderly(
        &mut self,
        mq: &MessageQueue,
        gen: u64,
        ok: bool,
        mut batch: Vec<WireMessage>,
    ) {
        let max = self.cfg.max_reconsume_times;
        let tries = match self.queues.get_mut(mq) {
            Some(q) => {
                q.consuming = false;
                q.suspended.as_ref().map_or(0, |(_, n)| *n) + 1
            }
            None => return,
        };
        // Past the limit the batch goes to the dead-letter topic and the queue moves on; if
        // that fails, the batch stays here and is tried again.
        let finished = ok || (tries > max && self.to_dead_letters(mq, &batch));
        let Some(q) = self.queues.get_mut(mq) else {
            return;
        };
        if finished {
            q.suspended = None;
            q.pq.remove(batch.iter().map(|m| m.queue_offset));
            self.consume_orderly(mq);
        } else {
            for m in &mut batch {
                m.reconsume_times = tries;
            }
            q.suspended = Some((batch, tries));
            let pause = self.cfg.lock_retry_interval;
            self.schedule(pause, Timer::Resume(mq.clone(), gen));
        }
    }

    /// Sends each message of `batch` to the group's dead-letter topic; whether all went.
    fn to_dead_letters(&self, mq: &MessageQueue, batch: &[WireMessage]) -> bool {
        let max = self.cfg.max_reconsume_times;
        let addr = match self.api.master_of(mq) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(queue = %mq, error = %e,
                    "no broker to move messages to the dead-letter topic; trying again later");
                return false;
            }
        };
        let calls = self.calls();
        batch.iter().all(|m| {
            let sent = calls.send_back(&addr, &self.cfg.group, &m.msg_id, max, max);
            if let Err(e) = &sent {
                tracing::warn!(queue = %mq, offset = m.queue_offset, error = %e,
                    "cannot move a message to the dead-letter topic; trying again later");
            }
            sent.is_ok()
        })
    }
}
