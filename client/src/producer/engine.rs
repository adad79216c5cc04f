//! The send machinery shared by every kind of send: a [`SendJob`] picks a queue, goes out
//! pipelined on the broker's connection, and its answer (handed over on the client's shared
//! I/O thread) records the broker's latency and either completes the job or hands it to
//! the retry worker for another try, on another broker where there is one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardmq_protocol::message::{
    SendBatchRequest, SendBatchResponse, SendMessageRequest, SendResult,
};
use shardmq_protocol::{Frame, Request, Status};

use super::message::SendReceipt;
use super::Core;
use crate::error::{is_retryable_status, ClientError};
use crate::route::{select_queue, MessageQueue, QueueTarget};
use crate::{lock, rpc};

/// What a send job ends with: one receipt per message.
pub(crate) type Outcome = Result<Vec<SendReceipt>, ClientError>;

/// The request of a job, its topic and queue filled in per try.
pub(crate) enum Payload {
    One(SendMessageRequest),
    Batch(SendBatchRequest),
}

impl Payload {
    pub(crate) fn request(&self, group: &str, queue: &MessageQueue) -> Request {
        match self {
            Payload::One(r) => Request::SendMessage(SendMessageRequest {
                producer_group: group.to_string(),
                topic: queue.topic.clone(),
                queue_id: queue.queue_id,
                ..r.clone()
            }),
            Payload::Batch(r) => Request::SendBatch(SendBatchRequest {
                producer_group: group.to_string(),
                topic: queue.topic.clone(),
                queue_id: queue.queue_id,
                entries: r.entries.clone(),
            }),
        }
    }

    fn unique_ids(&self) -> Vec<&str> {
        match self {
            Payload::One(r) => vec![r.unique_id.as_str()],
            Payload::Batch(r) => r.entries.iter().map(|e| e.unique_id.as_str()).collect(),
        }
    }

    fn decode(&self, frame: &Frame, target: &QueueTarget) -> Outcome {
        let results = match self {
            Payload::One(_) => vec![rpc::expect::<SendResult>(frame, &[])?.1],
            Payload::Batch(_) => rpc::expect::<SendBatchResponse>(frame, &[])?.1.results,
        };
        let ids = self.unique_ids();
        if results.len() != ids.len() {
            return Err(ClientError::Unexpected {
                addr: target.addr.clone(),
                what: format!("{} send results for {} messages", results.len(), ids.len()),
            });
        }
        Ok(results
            .into_iter()
            .zip(ids)
            .map(|(r, id)| SendReceipt {
                msg_id: r.msg_id,
                unique_id: id.to_string(),
                broker_name: target.queue.broker_name.clone(),
                queue_id: r.queue_id,
                queue_offset: r.queue_offset,
            })
            .collect())
    }
}

/// Where a job's tries go.
pub(crate) enum Target {
    /// Round robin over the topic's writable queues (avoiding slow and failed brokers).
    RoundRobin,
    /// Always this queue (ordered sends: a retry elsewhere would reorder).
    Fixed(QueueTarget),
}

/// One send (of a message or a batch) and its progress through its tries.
pub(crate) struct SendJob {
    pub topic: String,
    pub payload: Payload,
    pub target: Target,
    /// The send's whole time budget ends here; each try gets what is left.
    pub deadline: Instant,
    pub tries: u32,
    pub max_tries: u32,
    /// SystemBusy answers so far (the backoff doubles with each).
    pub busy: u32,
    /// The broker the last try failed on.
    pub avoid: Option<String>,
    pub refresh_route: bool,
    pub last_err: Option<ClientError>,
    pub done: Done,
}

/// Where a job's outcome goes: a future's channel, or a caller's callback.
pub(crate) enum Done {
    Channel(flume::Sender<Outcome>),
    Callback(Box<dyn FnOnce(Outcome) + Send>),
}

impl SendJob {
    pub(crate) fn finish(self, outcome: Outcome) {
        match self.done {
            // The caller may have dropped its future: nobody wants the outcome then.
            Done::Channel(tx) => {
                let _ = tx.send(outcome);
            }
            Done::Callback(f) => f(outcome),
        }
    }

    fn give_up(self, last: ClientError) {
        let topic = self.topic.clone();
        let tries = self.tries;
        self.finish(Err(ClientError::AllBrokersFailed {
            topic,
            tries,
            last: Box::new(last),
        }));
    }
}

/// Makes the job's next try: picks a queue, writes the request, and arranges for the answer
/// to reach [`on_answer`]. Blocks only for a route lookup (when the cached one is stale), a
/// connect, and the write.
pub(crate) fn attempt(core: &Arc<Core>, mut job: SendJob) {
    let now = Instant::now();
    if now >= job.deadline {
        let last = job.last_err.take().unwrap_or(ClientError::Timeout {
            addr: String::new(),
            after: core.config.send_timeout,
        });
        return job.give_up(last);
    }
    let target = match pick_target(core, &mut job, now) {
        Ok(t) => t,
        Err(e) => return job.finish(Err(e)),
    };
    job.tries += 1;
    let conn = match core.pool.get(&target.addr) {
        Ok(c) => c,
        Err(e) => {
            lock(&core.fault).record_failure(&target.queue.broker_name, Instant::now());
            return after_failure(core, job, &target, e);
        }
    };
    let request = job.payload.request(&core.config.group, &target.queue);
    let timeout = job.deadline.saturating_duration_since(now);
    let started = Instant::now();
    let core = Arc::clone(core);
    conn.call_with(&request, timeout, move |answer| {
        on_answer(&core, job, &target, started, answer)
    });
}

fn pick_target(core: &Core, job: &mut SendJob, now: Instant) -> Result<QueueTarget, ClientError> {
    if let Target::Fixed(q) = &job.target {
        return Ok(q.clone());
    }
    // A topic without a route yet goes by the fallback route (see `get_for_send`).
    let route = if std::mem::take(&mut job.refresh_route) {
        core.routes
            .refresh(&job.topic)
            .or_else(|_| core.routes.get_for_send(&job.topic))?
    } else {
        core.routes.get_for_send(&job.topic)?
    };
    let fault = lock(&core.fault);
    select_queue(
        &route.write,
        route.next_index(),
        job.avoid.as_deref(),
        &fault,
        now,
    )
    .cloned()
    .ok_or_else(|| ClientError::NoRoute {
        topic: job.topic.clone(),
    })
}

/// A try's answer (on the shared I/O thread: nothing here blocks; the fault lock is held
/// briefly, a retry goes to the retry worker's unbounded queue, the outcome to a channel
/// that holds it).
fn on_answer(
    core: &Arc<Core>,
    job: SendJob,
    target: &QueueTarget,
    started: Instant,
    answer: Result<Frame, ClientError>,
) {
    let now = Instant::now();
    let broker = &target.queue.broker_name;
    match answer.and_then(|frame| job.payload.decode(&frame, target)) {
        Ok(receipts) => {
            lock(&core.fault).update(broker, now - started, now);
            job.finish(Ok(receipts));
        }
        Err(e) => {
            {
                let mut fault = lock(&core.fault);
                if e.is_transport()
                    || matches!(
                        e.status(),
                        Some(Status::ServiceNotAvailable | Status::DiskFull)
                    )
                {
                    fault.record_failure(broker, now);
                } else {
                    fault.update(broker, now - started, now);
                }
            }
            after_failure(core, job, target, e);
        }
    }
}

/// Backoff before the try after the `n`th SystemBusy answer (from 0): `base` doubling, at
/// most a second.
pub(crate) fn busy_backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(16))
        .min(Duration::from_secs(1))
}

/// Ends the job with `err`, or schedules another try when `err` is worth one and tries and
/// time are left.
fn after_failure(core: &Arc<Core>, mut job: SendJob, target: &QueueTarget, err: ClientError) {
    let status = err.status();
    if !(err.is_transport() || status.is_some_and(is_retryable_status)) {
        return job.finish(Err(err));
    }
    if job.tries >= job.max_tries || !core.is_running() {
        return job.give_up(err);
    }
    let mut delay = Duration::ZERO;
    if status == Some(Status::SystemBusy) {
        delay = busy_backoff(core.config.busy_backoff, job.busy);
        job.busy += 1;
    }
    if matches!(status, Some(Status::TopicNotExist | Status::NoPermission)) {
        job.refresh_route = true;
    }
    let at = Instant::now() + delay;
    if at >= job.deadline {
        return job.give_up(err);
    }
    tracing::debug!(topic = %job.topic, broker = %target.queue.broker_name, tries = job.tries, error = %err, ?delay, "send failed; retrying");
    job.avoid = Some(target.queue.broker_name.clone());
    job.last_err = Some(err);
    if let Err(mut job) = core.submit_retry(at, Box::new(job)) {
        let last = job.last_err.take().unwrap_or(ClientError::NotRunning);
        job.give_up(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_up_to_a_second() {
        let b = Duration::from_millis(100);
        let got: Vec<u128> = (0..6).map(|n| busy_backoff(b, n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(busy_backoff(b, u32::MAX), Duration::from_secs(1));
    }
}
