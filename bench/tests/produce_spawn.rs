//! One real run of the load generator: `shardmq-bench produce --spawn` starts a broker from
//! the `shardmq` binary beside it (`cargo test --workspace` builds it into the same target
//! directory), sends a handful of messages, prints its JSON report and removes the broker's
//! directory. Skipped, with a message, when the broker binary has not been built (e.g.
//! `cargo test -p shardmq-bench` alone). Asserts on counts and shape, never on speed.

use std::path::Path;
use std::process::Command;

#[test]
fn produce_against_a_spawned_broker() {
    let bench = Path::new(env!("CARGO_BIN_EXE_shardmq-bench"));
    let broker = bench.with_file_name("shardmq");
    if !broker.is_file() {
        eprintln!(
            "skipped: no broker binary at {} (cargo test --workspace or cargo build -p shardmq-server builds it)",
            broker.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let hist = dir.path().join("latency.hgrm");
    let data = dir.path().join("brokers");
    let out = Command::new(bench)
        .args([
            "produce",
            "--spawn",
            "--count",
            "200",
            "--producers",
            "2",
            "--inflight",
            "4",
        ])
        .args([
            "--size",
            "256",
            "--queues",
            "4",
            "--json",
            "--broker-shards",
            "2",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--hist")
        .arg(&hist)
        .output()
        .expect("run shardmq-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shardmq-bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a report line");
    let v: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(v["mode"], "produce");
    assert_eq!(v["messages"], 200);
    assert_eq!(v["bytes"], 200 * 256);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["params"]["target"], "shardmq");
    assert_eq!(v["params"]["spawned"], true);
    assert!(v["p50_us"].as_u64().expect("p50") > 0);
    assert!(v["max_us"].as_u64() >= v["p99_us"].as_u64());
    // Both sides' CPU time is measured (the spawned broker's without --server-pid); 200
    // messages may take less than a clock tick, so only the shape is checked.
    for key in [
        "server_cpu_s",
        "bench_cpu_s",
        "server_cpu_us_per_msg",
        "bench_cpu_us_per_msg",
    ] {
        assert!(
            v[key].as_f64().is_some_and(|x| x >= 0.0),
            "{key}: {}",
            v[key]
        );
    }
    assert_eq!(v["params"]["server_pids"].as_array().map(Vec::len), Some(1));
    let text = std::fs::read_to_string(&hist).expect("histogram written");
    assert!(text.contains("Total count    =          200"), "{text}");
    // The broker is gone and its temporary directory removed.
    let left: Vec<_> = std::fs::read_dir(&data).expect("data dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
