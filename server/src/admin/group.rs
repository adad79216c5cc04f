//! `admin group progress` and `admin offsets reset`: a consumer group's position on each
//! queue of a topic, and moving it to a point in time.

use shardmq_protocol::message::{
    ConsumerOffsetRequest, Empty, OffsetResponse, QueueRequest, SearchOffsetRequest,
    UpdateConsumerOffsetRequest,
};
use shardmq_protocol::{Request, Status};

use super::{call_on, outln, AdminError, Namesrv, TIMEOUT};
use crate::rpc::Conn;

/// Each readable queue of `topic` with a connection to its master: (broker, queue, conn).
fn queues(ns: &Namesrv, topic: &str) -> Result<Vec<(String, u32, Conn)>, String> {
    let route = ns.route(topic)?;
    let mut out = Vec::new();
    for (q, addr) in super::consume::readable(&route) {
        for queue_id in 0..q.read_queues {
            let conn = Conn::connect(addr, TIMEOUT).map_err(|e| e.to_string())?;
            out.push((q.broker_name.clone(), queue_id, conn));
        }
    }
    Ok(out)
}

fn offset(conn: &mut Conn, req: Request) -> Result<u64, String> {
    call_on::<OffsetResponse>(conn, &req, &[]).map(|(_, o)| o.offset)
}

/// Per queue: the broker's max offset, the group's committed offset, and the lag.
pub fn progress(ns: &Namesrv, group: &str, topic: &str) -> Result<(), AdminError> {
    outln!("broker\tqueue\tbroker_offset\tconsumer_offset\tlag")?;
    for (broker, queue_id, mut conn) in queues(ns, topic)? {
        let max = offset(
            &mut conn,
            Request::GetMaxOffset(QueueRequest {
                topic: topic.to_owned(),
                queue_id,
            }),
        )?;
        let committed = offset(
            &mut conn,
            Request::QueryConsumerOffset(ConsumerOffsetRequest {
                consumer_group: group.to_owned(),
                topic: topic.to_owned(),
                queue_id,
            }),
        )
        .ok();
        let (shown, lag) = match committed {
            Some(c) => (c.to_string(), max.saturating_sub(c)),
            None => ("-".to_owned(), max),
        };
        outln!("{broker}\t{queue_id}\t{max}\t{shown}\t{lag}")?;
    }
    Ok(())
}

/// Moves the group's offset on every queue of `topic` to the first message stored at or
/// after `to_time_ms` (the queue's end when none is).
pub fn reset(ns: &Namesrv, group: &str, topic: &str, to_time_ms: i64) -> Result<(), AdminError> {
    for (broker, queue_id, mut conn) in queues(ns, topic)? {
        let to = offset(
            &mut conn,
            Request::SearchOffsetByTime(SearchOffsetRequest {
                topic: topic.to_owned(),
                queue_id,
                timestamp_ms: to_time_ms,
            }),
        )?;
        let _: (Status, Empty) = call_on(
            &mut conn,
            &Request::UpdateConsumerOffset(UpdateConsumerOffsetRequest {
                consumer_group: group.to_owned(),
                topic: topic.to_owned(),
                queue_id,
                offset: to,
            }),
            &[],
        )?;
        outln!("{broker}\t{queue_id}\t{to}")?;
    }
    Ok(())
}
