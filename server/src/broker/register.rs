//! Keeping the NameServers informed: the broker registers with every one of them on an
//! interval and whenever its topic table changes, and unregisters when it stops.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use shardmq_protocol::message::{RegisterBrokerRequest, UnregisterBrokerRequest};
use shardmq_protocol::{Request, Status};

use super::Broker;
use crate::config::ms;
use crate::rpc;

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Registrar {
    stop_tx: flume::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Registrar {
    pub fn start(
        broker: Arc<Broker>,
        advertised: String,
        namesrv: Vec<String>,
        topics_changed: flume::Receiver<()>,
    ) -> Registrar {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        // The first registration before start-up returns: once the broker says it is ready,
        // the NameServers route to it.
        register_all(&broker, &advertised, &namesrv);
        let thread = std::thread::Builder::new()
            .name("namesrv-register".into())
            .spawn(move || {
                let every = ms(broker.settings.register_interval_ms);
                loop {
                    let woke = flume::Selector::new()
                        .recv(&stop_rx, |_| true)
                        .recv(&topics_changed, |_| false)
                        .wait_timeout(every);
                    if woke == Ok(true) {
                        break;
                    }
                    register_all(&broker, &advertised, &namesrv);
                }
                let s = &broker.settings;
                let req = Request::UnregisterBroker(UnregisterBrokerRequest {
                    cluster: s.cluster.clone(),
                    broker_name: s.broker_name.clone(),
                    broker_id: s.broker_id,
                    broker_addr: advertised.clone(),
                });
                for addr in &namesrv {
                    if let Err(e) = rpc::call(addr, &req, CALL_TIMEOUT) {
                        tracing::warn!(namesrv = %addr, error = %e, "cannot unregister");
                    }
                }
            })
            .ok();
        Registrar { stop_tx, thread }
    }

    /// Unregisters and waits for the thread.
    pub fn stop(mut self) {
        let _ = self.stop_tx.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn register_all(broker: &Broker, advertised: &str, namesrv: &[String]) {
    let s = &broker.settings;
    let req = Request::RegisterBroker(RegisterBrokerRequest {
        cluster: s.cluster.clone(),
        broker_name: s.broker_name.clone(),
        broker_id: s.broker_id,
        broker_addr: advertised.to_owned(),
        topics: broker.topic_configs(),
        shard_addrs: broker.shard_addrs.get().cloned().unwrap_or_default(),
    });
    for addr in namesrv {
        match rpc::call(addr, &req, CALL_TIMEOUT) {
            Ok(f) if f.header.status == Status::Success.as_u16() => {}
            Ok(f) => {
                tracing::warn!(namesrv = %addr, status = f.header.status, "registration refused")
            }
            Err(e) => tracing::warn!(namesrv = %addr, error = %e, "cannot register"),
        }
    }
}
