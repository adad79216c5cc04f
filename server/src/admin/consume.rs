//! `admin consume`: pulls a topic's queues for a group, prints the messages, and commits the
//! group's offsets on the brokers.

use std::time::{Duration, Instant};

use clap::Args;
use shardmq_protocol::message::PULL_TYPED;
use shardmq_protocol::message::{
    ConsumerOffsetRequest, Empty, OffsetResponse, PullMessageRequest, PullMessageResponse,
    QueueRequest, UpdateConsumerOffsetRequest, WireMessage,
};
use shardmq_protocol::{Request, Status};

use super::{call_on, master, outln, AdminError, Namesrv, TIMEOUT};
use crate::rpc::Conn;

#[derive(Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// A group without committed offsets starts at each queue's first message (else at its
    /// end, RocketMQ's CONSUME_FROM_LAST_OFFSET).
    #[arg(long)]
    from_beginning: bool,
    /// Give up after this long without reaching --count.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// The readable queue groups of a route, with their master's address.
pub(super) fn readable(
    route: &shardmq_protocol::message::TopicRoute,
) -> impl Iterator<Item = (&shardmq_protocol::message::QueueData, &str)> {
    route
        .queues
        .iter()
        .filter(|q| q.perm & 4 != 0)
        .filter_map(|q| {
            let b = route
                .brokers
                .iter()
                .find(|b| b.broker_name == q.broker_name)?;
            Some((q, master(b)?))
        })
}

pub fn print_message(m: &WireMessage, broker: &str) -> Result<(), AdminError> {
    outln!(
        "msg_id={} unique_id={} broker={broker} queue={} offset={} tags={} keys={} body={}",
        m.msg_id,
        m.unique_id,
        m.queue_id,
        m.queue_offset,
        m.tags,
        m.keys,
        String::from_utf8_lossy(&m.body)
    )
}

struct QueueCursor {
    broker: usize,
    queue_id: u32,
    offset: u64,
    committed: Option<u64>,
}

pub fn run(ns: &Namesrv, a: ConsumeArgs) -> Result<(), AdminError> {
    let route = ns.route(&a.topic)?;
    let mut brokers: Vec<(String, Conn)> = Vec::new();
    let mut cursors = Vec::new();
    for (q, addr) in readable(&route) {
        let mut conn = Conn::connect(addr, TIMEOUT).map_err(|e| e.to_string())?;
        let bi = brokers.len();
        for queue_id in 0..q.read_queues {
            let committed = call_on::<OffsetResponse>(
                &mut conn,
                &Request::QueryConsumerOffset(ConsumerOffsetRequest {
                    consumer_group: a.group.clone(),
                    topic: a.topic.clone(),
                    queue_id,
                }),
                &[],
            )
            .ok()
            .map(|(_, o)| o.offset);
            let start = match committed {
                Some(o) => o,
                None => {
                    let req = QueueRequest {
                        topic: a.topic.clone(),
                        queue_id,
                    };
                    let which = if a.from_beginning {
                        Request::GetMinOffset(req)
                    } else {
                        Request::GetMaxOffset(req)
                    };
                    call_on::<OffsetResponse>(&mut conn, &which, &[])?.1.offset
                }
            };
            cursors.push(QueueCursor {
                broker: bi,
                queue_id,
                offset: start,
                committed,
            });
        }
        brokers.push((addr.to_owned(), conn));
    }
    if cursors.is_empty() {
        return Err(format!("topic {} has no readable queue", a.topic).into());
    }
    let deadline = Instant::now() + Duration::from_millis(a.timeout_ms);
    let mut got = 0u64;
    // A line that could not be printed (stdout closed) stops the pulls.
    let mut stopped = None;
    'outer: while got < a.count && Instant::now() < deadline {
        let mut any = false;
        for c in cursors.iter_mut() {
            let (addr, conn) = &mut brokers[c.broker];
            let req = Request::PullMessage(PullMessageRequest {
                consumer_group: a.group.clone(),
                topic: a.topic.clone(),
                queue_id: c.queue_id,
                queue_offset: c.offset,
                max_msgs: (a.count - got).min(32) as u32,
                max_bytes: 4 << 20,
                suspend_timeout_ms: 0,
                commit_offset: -1,
                subscription: "*".into(),
            });
            let (status, r): (Status, PullMessageResponse) = call_on(conn, &req, PULL_TYPED)?;
            if status == Status::PullOffsetMoved {
                c.offset = r.next_begin_offset;
                continue;
            }
            for m in &r.messages {
                if let Err(e) = print_message(m, addr) {
                    stopped = Some(e);
                    break 'outer;
                }
                got += 1;
                any = true;
                c.offset = m.queue_offset + 1;
                if got >= a.count {
                    break 'outer;
                }
            }
            if r.messages.is_empty() && status == Status::PullRetryImmediately {
                c.offset = r.next_begin_offset;
            }
        }
        if !any {
            // Nothing anywhere: ask one queue to hold the pull until something arrives.
            let c = &cursors[0];
            let (_, conn) = &mut brokers[c.broker];
            let wait = deadline.saturating_duration_since(Instant::now());
            let _ = conn.set_timeout(wait + TIMEOUT);
            let req = Request::PullMessage(PullMessageRequest {
                consumer_group: a.group.clone(),
                topic: a.topic.clone(),
                queue_id: c.queue_id,
                queue_offset: c.offset,
                max_msgs: 0,
                max_bytes: 1,
                suspend_timeout_ms: wait.as_millis().min(1_000) as u32,
                commit_offset: -1,
                subscription: "*".into(),
            });
            let _ = call_on::<PullMessageResponse>(conn, &req, PULL_TYPED);
            let _ = conn.set_timeout(TIMEOUT);
        }
    }
    // Commit up to the last message printed, also when stdout closed: as with `subscribe`, a
    // line printed is a message delivered.
    for c in &cursors {
        if c.committed != Some(c.offset) {
            let (_, conn) = &mut brokers[c.broker];
            let _: (Status, Empty) = call_on(
                conn,
                &Request::UpdateConsumerOffset(UpdateConsumerOffsetRequest {
                    consumer_group: a.group.clone(),
                    topic: a.topic.clone(),
                    queue_id: c.queue_id,
                    offset: c.offset,
                }),
                &[],
            )?;
        }
    }
    if let Some(e) = stopped {
        return Err(e);
    }
    if got < a.count {
        return Err(format!(
            "got {got} of {} messages before the {} ms timeout",
            a.count, a.timeout_ms
        )
        .into());
    }
    Ok(())
}

/// Scans every queue of `topic` for the message whose producer gave it `unique_id`.
pub fn find_unique(ns: &Namesrv, topic: &str, unique_id: &str) -> Result<(), AdminError> {
    let route = ns.route(topic)?;
    for (q, addr) in readable(&route) {
        let mut conn = Conn::connect(addr, TIMEOUT).map_err(|e| e.to_string())?;
        for queue_id in 0..q.read_queues {
            let mut offset = 0;
            loop {
                let req = Request::PullMessage(PullMessageRequest {
                    consumer_group: "shardmq-admin-lookup".into(),
                    topic: topic.to_owned(),
                    queue_id,
                    queue_offset: offset,
                    max_msgs: 256,
                    max_bytes: 4 << 20,
                    suspend_timeout_ms: 0,
                    commit_offset: -1,
                    subscription: "*".into(),
                });
                let (status, r): (Status, PullMessageResponse) =
                    call_on(&mut conn, &req, PULL_TYPED)?;
                match status {
                    Status::Success => {}
                    Status::PullOffsetMoved | Status::PullRetryImmediately
                        if r.next_begin_offset > offset =>
                    {
                        offset = r.next_begin_offset;
                        continue;
                    }
                    _ => break,
                }
                for m in &r.messages {
                    if m.unique_id == unique_id {
                        return print_message(m, addr);
                    }
                    offset = m.queue_offset + 1;
                }
            }
        }
    }
    Err(format!("no message of topic {topic} has the unique id {unique_id}").into())
}
