//! The consumer-group calls a push consumer makes to one broker, blocking: heartbeat,
//! member list, queue locks, sending a failed message back, unregistering.

use std::time::Duration;

use shardmq_protocol::message::{
    ConsumerSendBackRequest, Empty, GroupRequest, HeartbeatRequest, LockBatchRequest,
    LockBatchResponse, NameList, UnregisterClientRequest,
};
use shardmq_protocol::{Request, Wire};

use crate::consumer::pull::PullConsumer;
use crate::error::ClientError;
use crate::pool::ConnectionPool;
use crate::rpc;

/// One broker, reached over a pool.
pub struct BrokerCalls<'a> {
    pub pool: &'a ConnectionPool,
    pub timeout: Duration,
}

impl<'a> BrokerCalls<'a> {
    /// Over the consumer's pool, with its call timeout.
    pub fn of(api: &'a PullConsumer) -> Self {
        BrokerCalls {
            pool: api.pool(),
            timeout: api.timeout(),
        }
    }

    fn call<T: Wire>(&self, addr: &str, request: &Request) -> Result<T, ClientError> {
        let frame = self.pool.get(addr)?.call(request, self.timeout)?;
        rpc::expect::<T>(&frame, &[]).map(|(_, v)| v)
    }

    pub fn heartbeat(&self, addr: &str, hb: &HeartbeatRequest) -> Result<(), ClientError> {
        self.call::<Empty>(addr, &Request::Heartbeat(hb.clone()))
            .map(|_| ())
    }

    pub fn members(&self, addr: &str, group: &str) -> Result<Vec<String>, ClientError> {
        let r = Request::GetConsumerList(GroupRequest {
            group: group.to_owned(),
        });
        self.call::<NameList>(addr, &r).map(|l| l.names)
    }

    pub fn lock(
        &self,
        addr: &str,
        group: &str,
        client_id: &str,
        queues: Vec<(String, u32)>,
    ) -> Result<Vec<(String, u32)>, ClientError> {
        let r = Request::LockBatchQueue(LockBatchRequest {
            group: group.to_owned(),
            client_id: client_id.to_owned(),
            queues,
        });
        self.call::<LockBatchResponse>(addr, &r).map(|l| l.locked)
    }

    pub fn unlock(
        &self,
        addr: &str,
        group: &str,
        client_id: &str,
        queues: Vec<(String, u32)>,
    ) -> Result<(), ClientError> {
        let r = Request::UnlockBatchQueue(LockBatchRequest {
            group: group.to_owned(),
            client_id: client_id.to_owned(),
            queues,
        });
        self.call::<Empty>(addr, &r).map(|_| ())
    }

    pub fn send_back(
        &self,
        addr: &str,
        group: &str,
        msg_id: &str,
        reconsume_times: u32,
        max_reconsume_times: u32,
    ) -> Result<(), ClientError> {
        let r = Request::ConsumerSendBack(ConsumerSendBackRequest {
            group: group.to_owned(),
            msg_id: msg_id.to_owned(),
            reconsume_times,
            max_reconsume_times,
        });
        self.call::<Empty>(addr, &r).map(|_| ())
    }

    pub fn unregister(&self, addr: &str, client_id: &str, group: &str) -> Result<(), ClientError> {
        let r = Request::UnregisterClient(UnregisterClientRequest {
            client_id: client_id.to_owned(),
            producer_group: String::new(),
            consumer_group: group.to_owned(),
        });
        self.call::<Empty>(addr, &r).map(|_| ())
    }
}
