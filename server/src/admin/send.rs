//! `admin send`: messages to a topic, round robin over its writable queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use shardmq_protocol::message::{SendMessageRequest, SendResult};
use shardmq_protocol::{Request, Status};

use super::{call_on, master, outln, AdminError, Namesrv, TIMEOUT};
use crate::rpc::Conn;

#[derive(Args)]
pub struct SendArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    tag: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    body: String,
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Deliver after this delay level (1 = the first of the broker's levels).
    #[arg(long, default_value_t = 0)]
    delay_level: u32,
    /// Deliver at this time, ms since the epoch.
    #[arg(long)]
    deliver_at_ms: Option<i64>,
}

/// A message's client-side unique id: process, start time and a counter, in hex.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "{:08X}{:012X}{:012X}",
        std::process::id(),
        now & 0xFFFF_FFFF_FFFF,
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF_FFFF
    )
}

pub fn run(ns: &Namesrv, a: SendArgs) -> Result<(), AdminError> {
    // A topic nobody serves yet goes to the first master, which creates it (auto-create).
    let targets: Vec<(String, String, u32)> = match ns.route(&a.topic) {
        Ok(route) => route
            .queues
            .iter()
            .filter(|q| q.perm & 2 != 0)
            .filter_map(|q| {
                let b = route
                    .brokers
                    .iter()
                    .find(|b| b.broker_name == q.broker_name)?;
                Some((b.broker_name.clone(), master(b)?.to_owned(), q.write_queues))
            })
            .collect(),
        Err(_) => {
            let info = ns.cluster_info()?;
            info.brokers
                .iter()
                .filter_map(|b| Some((b.broker_name.clone(), master(b)?.to_owned(), 1)))
                .take(1)
                .collect()
        }
    };
    let queues: Vec<(usize, u32)> = targets
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, n))| (0..*n).map(move |q| (i, q)))
        .collect();
    if queues.is_empty() {
        return Err(format!("no writable queue for topic {}", a.topic).into());
    }
    let mut conns: Vec<Option<Conn>> = targets.iter().map(|_| None).collect();
    for k in 0..a.count {
        let (t, queue_id) = queues[k as usize % queues.len()];
        let conn = match &mut conns[t] {
            Some(c) => c,
            slot => slot.insert(Conn::connect(&targets[t].1, TIMEOUT).map_err(|e| e.to_string())?),
        };
        let req = Request::SendMessage(SendMessageRequest {
            producer_group: "shardmq-admin".into(),
            topic: a.topic.clone(),
            queue_id,
            unique_id: unique_id(),
            tags: a.tag.clone().unwrap_or_default(),
            keys: a.key.clone().unwrap_or_default(),
            born_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            body: Bytes::from(a.body.clone()),
            delay_level: a.delay_level,
            deliver_at_ms: a.deliver_at_ms.unwrap_or(0),
            ..Default::default()
        });
        let (_, r): (Status, SendResult) = call_on(conn, &req, &[])?;
        outln!(
            "msg_id={} broker={} queue={} offset={}",
            r.msg_id,
            targets[t].0,
            r.queue_id,
            r.queue_offset
        )?;
    }
    Ok(())
}
