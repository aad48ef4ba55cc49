//! `wsscale load --reconnect` against the real server, stopped with SIGTERM (every client
//! gets 1001) and started again on the same port: every connection comes back, and the
//! summary and the generator's /metrics count the losses and the reconnections.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::load::interrupt;
use crate::support::{Kind, TestServer, assert_promtool_clean, wait_for_metric_at};

crate::every_server!(reconnect_brings_back_every_connection_after_a_restart_on_the_same_port);

const CONNECTIONS: usize = 200;

async fn reconnect_brings_back_every_connection_after_a_restart_on_the_same_port(kind: Kind) {
    let mut server = TestServer::start(kind, &[]);
    let listen = server.ws_addr;
    let loadgen_metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let load = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args([
            "load",
            "--url",
            &server.url(),
            "--connections",
            &CONNECTIONS.to_string(),
        ])
        .args(["--reconnect", "--hold", "10m", "--ping-interval", "1s"])
        .args(["--metrics-listen", &loadgen_metrics.to_string(), "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(30),
        )
        .await;

    // SIGTERM: every connection gets close 1001, the server drains and exits.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let restarted = TestServer::start_at(kind, listen, &[]);
    restarted
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(60),
        )
        .await;
    // The generator publishes its samples and its totals one after the other on each
    // tick: wait for each figure on its own rather than read one scrape as all of them.
    for name in ["wsscale_loadgen_reconnects_total", "wsscale_loadgen_connections_open"] {
        wait_for_metric_at(
            loadgen_metrics,
            name,
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(30),
            "the load generator",
        )
        .await;
    }
    let metrics = wait_for_metric_at(
        loadgen_metrics,
        "wsscale_loadgen_reconnect_seconds_count",
        &[],
        CONNECTIONS as f64,
        Duration::from_secs(30),
        "the load generator",
    )
    .await;
    assert_eq!(
        metrics.get("wsscale_loadgen_connections_lost_total", &[("reason", "close_1001")]),
        Some(CONNECTIONS as f64)
    );
    assert_promtool_clean(&metrics.0);

    let (output, summary) = interrupt(load, &json).await;
    assert_eq!(summary["opened"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["lost_during_hold"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["lost"]["close_1001"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["reconnected"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["reconnect_ms"]["count"], CONNECTIONS, "{summary:#}");
    assert!(summary["reconnect_ms"]["max"].as_f64().unwrap() > 0.0, "{summary:#}");
    assert!(summary["reconnect_failures"].is_object(), "{summary:#}");
    assert_eq!(
        summary["closed_cleanly"], CONNECTIONS,
        "the reconnected ones: {summary:#}"
    );
    assert_eq!(summary["connect_ms"]["count"], CONNECTIONS, "the ramp's only");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("reconnected") && table.contains("reconnect "), "{table}");
    restarted
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
}
