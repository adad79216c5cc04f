//! Creating the bench's topics on a ShardMQ cluster over the wire, the way
//! `shardmq admin topic create` does: find the master brokers through the NameServer, send
//! each a CreateTopic, and return once the NameServer routes the topic to all of them (so
//! the producers' first route lookup finds it).

use std::time::{Duration, Instant};

use shardmq_client::Connection;
use shardmq_protocol::message::{
    decode_reply, ClusterInfo, Empty, Reply, TopicConfigData, TopicRequest, TopicRoute,
};
use shardmq_protocol::{Request, Wire};

use super::DriverError;

/// One call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a broker to register and for routes to show a topic.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// One request to `addr` on a fresh connection; a failure status is an error.
fn call<T: Wire>(addr: &str, request: &Request) -> Result<T, DriverError> {
    let conn = Connection::connect(addr, CALL_TIMEOUT)?;
    let frame = conn.call(request, CALL_TIMEOUT)?;
    conn.close();
    match decode_reply::<T>(&frame, &[]) {
        Ok(Reply::Typed(_, v)) => Ok(v),
        Ok(Reply::Error(status, remark)) => Err(DriverError::Admin(format!(
            "{} to {addr}: {status}: {remark}",
            request.opcode()
        ))),
        Err(e) => Err(DriverError::Admin(format!("bad answer from {addr}: {e}"))),
    }
}

/// The master brokers registered with the NameServer at `namesrv`, waiting for the first.
fn masters(namesrv: &str) -> Result<Vec<String>, DriverError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let info: ClusterInfo = call(namesrv, &Request::GetClusterInfo(Empty {}))?;
        let addrs: Vec<String> = info
            .brokers
            .iter()
            .flat_map(|b| b.addrs.iter())
            .filter(|(id, _)| *id == 0)
            .map(|(_, a)| a.clone())
            .collect();
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        if Instant::now() > deadline {
            return Err(DriverError::Admin(format!(
                "no broker registered with the NameServer {namesrv}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn routed(namesrv: &str, topic: &str, brokers: &[String]) -> bool {
    let request = Request::GetRouteByTopic(TopicRequest {
        topic: topic.to_string(),
    });
    match call::<TopicRoute>(namesrv, &request) {
        Ok(route) => brokers.iter().all(|a| {
            route
                .brokers
                .iter()
                .any(|b| b.addrs.iter().any(|(_, x)| x == a))
        }),
        Err(_) => false,
    }
}

/// Creates (or updates) each topic with `queues` read and write queues on every master, and
/// waits until the NameServer routes it.
pub fn create_topics(namesrv: &str, topics: &[String], queues: u32) -> Result<(), DriverError> {
    let brokers = masters(namesrv)?;
    for addr in &brokers {
        for topic in topics {
            let cfg = TopicConfigData {
                topic: topic.clone(),
                read_queues: queues,
                write_queues: queues,
                perm: 6,
                order: false,
            };
            let _: Empty = call(addr, &Request::CreateTopic(cfg))?;
        }
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for topic in topics {
        while !routed(namesrv, topic, &brokers) {
            if Instant::now() > deadline {
                return Err(DriverError::Admin(format!(
                    "the NameServer {namesrv} does not route topic {topic} after {SETTLE_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
