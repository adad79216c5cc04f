//! The metrics endpoint: `GET /metrics` on `broker.metrics_listen`, Prometheus' text format,
//! served by one plain thread (a scrape every few seconds).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use shardmq_engine::{StatvfsProbe, UsageProbe};

use super::Broker;

/// Starts serving; returns the bound address.
pub fn start(broker: Arc<Broker>, listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if broker.is_stopping() {
                    return;
                }
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut first = String::new();
                if BufReader::new(&conn).read_line(&mut first).is_err() {
                    continue;
                }
                let (status, body) = if first.starts_with("GET /metrics") {
                    ("200 OK", render(&broker))
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_owned())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(addr)
}

fn render(broker: &Broker) -> String {
    let mut out = String::new();
    broker.metrics.render(&mut out);
    if let Ok(u) = StatvfsProbe.usage(broker.store.path()) {
        let name = "shardmq_disk_used_ratio";
        let _ = writeln!(
            out,
            "# HELP {name} Used share of the store's filesystem.\n# TYPE {name} gauge"
        );
        let _ = writeln!(out, "{name} {}", u.ratio());
    }
    let name = "shardmq_commitlog_written_bytes";
    let _ = writeln!(
        out,
        "# HELP {name} CommitLog end per shard.\n# TYPE {name} gauge"
    );
    for shard in 0..broker.store.shards() {
        if let Some((written, _)) = broker.store.offsets(shard) {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {written}");
        }
    }
    let name = "shardmq_cross_shard_sends_total";
    let _ = writeln!(
        out,
        "# HELP {name} Messages a shard sent to other shards (reservations, dispatch, \
         requests handed to a queue's owner).\n# TYPE {name} counter"
    );
    for shard in 0..broker.store.shards() {
        if let Some(n) = broker.store.cross_shard_sends(shard) {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {n}");
        }
    }
    let name = "shardmq_consumer_lag_messages";
    let _ = writeln!(
        out,
        "# HELP {name} Queue max offset minus the group's committed offset.\n# TYPE {name} gauge"
    );
    for (group, topic, queue_id, committed) in broker.offsets.all() {
        let max = futures_lite::future::block_on(broker.store.queue_offsets(&topic, queue_id))
            .map_or(0, |(_, max)| max);
        let lag = max.saturating_sub(committed);
        let _ = writeln!(
            out,
            "{name}{{group=\"{group}\",topic=\"{topic}\",queue=\"{queue_id}\"}} {lag}"
        );
    }
    out
}
