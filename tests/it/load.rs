//! `wsscale load` against the real server: counts, histograms, failure causes,
//! sharding, the JSON summary and the preflight refusal.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Kind, TestServer, read_json};

crate::both_modes!(holds_2000_connections_and_measures_them);

/// Runs `wsscale load` to completion with `--json`; returns its output and the summary.
pub(crate) async fn load(args: &[&str]) -> (Output, Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let json: PathBuf = dir.path().join("summary.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("load run ends by itself")
        .unwrap();
    let summary = std::fs::read_to_string(&json)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("summary is JSON"));
    (output, summary)
}

pub(crate) fn describe(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Stops a running `wsscale load` with SIGINT (it closes every connection cleanly and
/// exits 0) and reads the summary it wrote to `json`.
pub(crate) async fn interrupt(load: tokio::process::Child, json: &std::path::Path) -> (Output, Value) {
    // SAFETY: kill(2) on our own running child.
    unsafe { libc::kill(load.id().unwrap() as i32, libc::SIGINT) };
    let output = tokio::time::timeout(Duration::from_secs(30), load.wait_with_output())
        .await
        .expect("the run stops on SIGINT")
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    (output, read_json(json))
}

async fn holds_2000_connections_and_measures_them(kind: Kind) {
    let server = TestServer::start(kind, &[]);
    let url = server.url();
    let run = tokio::spawn(async move {
        load(&[
            "--url",
            &url,
            "--connections",
            "2000",
            "--hold",
            "8s",
            "--ping-interval",
            "500ms",
        ])
        .await
    });
    server
        .wait_for_metric("wsscale_connections_active", &[], 2000.0, Duration::from_secs(30))
        .await;
    let (output, summary) = run.await.unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.expect("summary written");
    assert_eq!(summary["opened"], 2000, "{summary:#}");
    assert_eq!(summary["failed"], 0, "{summary:#}");
    assert_eq!(summary["lost_during_hold"], 0, "{summary:#}");
    assert_eq!(summary["closed_cleanly"], 2000, "{summary:#}");
    assert_eq!(summary["connect_ms"]["count"], 2000);
    assert_eq!(summary["upgrade_ms"]["count"], 2000);
    assert!(summary["ping_rtt_ms"]["count"].as_u64().unwrap() >= 2000, "{summary:#}");
    assert!(summary["ping_rtt_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(summary["open_rate_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("opened"),
        "human summary on stdout"
    );
    let after = server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        after.value("wsscale_connections_closed_total", &[("reason", "client_close")]),
        2000.0
    );
}

#[tokio::test]
async fn classifies_refused_connections() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (output, summary) = load(&[
        "--url",
        &url,
        "--connections",
        "20",
        "--hold",
        "0s",
        "--no-reachability-check",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["opened"], 0);
    assert_eq!(summary["failed"], 20);
    assert_eq!(summary["failures"]["refused"], 20, "{summary:#}");
}

#[tokio::test]
async fn classifies_503_from_a_server_at_capacity() {
    let server = TestServer::start(Kind::TASKS_LEAN, &["--max-connections", "50"]);
    let (output, summary) = load(&["--url", &server.url(), "--connections", "80", "--hold", "1s"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["opened"], 50, "{summary:#}");
    assert_eq!(summary["failures"]["http_503"], 30, "{summary:#}");
}

#[tokio::test]
async fn shards_across_processes_into_one_summary() {
    let server = TestServer::start(Kind::TASKS_LEAN, &[]);
    let url = server.url();
    let args = [
        "--url",
        &url,
        "--connections",
        "2000",
        "--max-per-process",
        "500",
        "--hold",
        "2s",
        "--ping-interval",
        "500ms",
    ];
    let (output, summary) = load(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["processes"], 4, "{summary:#}");
    assert_eq!(summary["opened"], 2000, "{summary:#}");
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["closed_cleanly"], 2000);
    assert_eq!(
        summary["connect_ms"]["count"], 2000,
        "every shard's histogram is merged"
    );
    assert_eq!(summary["upgrade_ms"]["count"], 2000);
    assert!(summary["ping_rtt_ms"]["count"].as_u64().unwrap() > 0);
    let metrics = server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
    assert_eq!(metrics.value("wsscale_connections_opened_total", &[]), 2000.0);
}

#[tokio::test]
async fn json_summary_has_every_documented_field() {
    let server = TestServer::start(Kind::TASKS_LEAN, &[]);
    let (output, summary) = load(&["--url", &server.url(), "--connections", "10", "--hold", "0s"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    for key in [
        "run_id",
        "segment",
        "target",
        "connections",
        "processes",
        "source_ips",
        "opened",
        "failed",
        "failures",
        "lost_during_hold",
        "lost",
        "closed_cleanly",
        "messages_echoed",
        "reconnected",
        "reconnect_failures",
        "push_missed",
        "push_negative_latency",
        "ramp_start_unix",
        "ramp_end_unix",
        "ramp_secs",
        "hold_secs",
        "open_rate_per_sec",
        "held",
        "loadgen_rss_per_connection_bytes",
        "loadgen_heap_per_connection_bytes",
        "interrupted",
    ] {
        assert!(summary.get(key).is_some(), "missing {key}: {summary:#}");
    }
    assert!(summary.get("merged_segments").is_none(), "only in a merge");
    for histogram in [
        "connect_ms",
        "upgrade_ms",
        "ping_rtt_ms",
        "reconnect_ms",
        "push_delivery_ms",
    ] {
        for field in ["p50", "p90", "p99", "max", "count"] {
            assert!(summary[histogram].get(field).is_some(), "missing {histogram}.{field}");
        }
    }
    for histogram in [
        "connect_us",
        "upgrade_us",
        "ping_rtt_us",
        "reconnect_us",
        "push_delivery_us",
    ] {
        let base64 = summary["histograms"][histogram].as_str();
        assert!(
            base64.is_some_and(|text| !text.is_empty()),
            "histograms.{histogram}: {summary:#}"
        );
    }
    assert!(summary["ramp_end_unix"].as_f64() >= summary["ramp_start_unix"].as_f64());
    assert_eq!(summary["segment"], Value::Null);
}

#[tokio::test]
async fn preflight_refuses_a_run_one_process_cannot_hold() {
    let server = TestServer::start(Kind::TASKS_LEAN, &[]);
    let (output, summary) = load(&["--url", &server.url(), "--connections", "30000", "--processes", "1"]).await;
    assert!(!output.status.success());
    assert!(summary.is_none(), "nothing was run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("RLIMIT_NOFILE") && stderr.contains("--processes auto"),
        "{stderr}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("wsscale_connections_opened_total", &[]),
        0.0,
        "no connection was attempted"
    );
}

#[tokio::test]
async fn a_signal_stops_every_shard_cleanly() {
    let server = TestServer::start(Kind::TASKS_LEAN, &[]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let load = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args(["load", "--url", &server.url(), "--connections", "400"])
        .args(["--max-per-process", "200", "--hold", "10m", "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server
        .wait_for_metric("wsscale_connections_active", &[], 400.0, Duration::from_secs(30))
        .await;
    // Only the parent is signalled: it forwards the stop to its two shards.
    let (_, summary) = interrupt(load, &json).await;
    assert_eq!(summary["processes"], 2, "{summary:#}");
    assert_eq!(summary["interrupted"], true, "{summary:#}");
    assert_eq!(
        summary["closed_cleanly"], 400,
        "every shard closed its connections: {summary:#}"
    );
    server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
}
