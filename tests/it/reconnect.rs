//! `wsscale load --reconnect` against the real server, stopped with SIGTERM (every client
//! gets 1001) and started again on the same port: every connection comes back, and the
//! summary and the generator's /metrics count the losses and the reconnections.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::load::describe;
use crate::support::{Metrics, TestServer, body, http_get};

crate::both_modes!(reconnect_brings_back_every_connection_after_a_restart_on_the_same_port);

const CONNECTIONS: usize = 200;

/// `wsscale serve` on a given address (the port of a server that was stopped); killed on
/// drop.
struct Restarted {
    child: Child,
    metrics_addr: SocketAddr,
}

impl Restarted {
    fn start(mode: &str, listen: SocketAddr) -> Restarted {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsscale"))
            .args(["serve", "--mode", mode, "--listen", &listen.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains(&format!("ws://{listen}/")),
            "bound the same port: {line:?}"
        );
        let metrics_addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"));
        Restarted { child, metrics_addr }
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `addr`'s /metrics until `name` reads `value`.
async fn wait_for(addr: SocketAddr, name: &str, value: f64, within: Duration) -> Metrics {
    let deadline = Instant::now() + within;
    loop {
        let (_, response) = http_get(addr, "/metrics", &[]).await;
        let metrics = Metrics(body(&response).to_owned());
        let current = metrics.get(name, &[]);
        if current == Some(value) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{name} is {current:?}, expected {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn promtool_check_metrics(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package prometheus; .ci/run installs it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

async fn reconnect_brings_back_every_connection_after_a_restart_on_the_same_port(mode: &'static str) {
    let mut server = TestServer::start(mode, &[]);
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
    let restarted = Restarted::start(mode, listen);
    wait_for(
        restarted.metrics_addr,
        "wsscale_connections_active",
        CONNECTIONS as f64,
        Duration::from_secs(60),
    )
    .await;
    let metrics = wait_for(
        loadgen_metrics,
        "wsscale_loadgen_reconnects_total",
        CONNECTIONS as f64,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        metrics.get("wsscale_loadgen_connections_open", &[]),
        Some(CONNECTIONS as f64)
    );
    assert_eq!(
        metrics.get("wsscale_loadgen_reconnect_seconds_count", &[]),
        Some(CONNECTIONS as f64)
    );
    assert_eq!(
        metrics.get("wsscale_loadgen_connections_lost_total", &[("reason", "close_1001")]),
        Some(CONNECTIONS as f64)
    );
    promtool_check_metrics(&metrics.0);

    // SAFETY: kill(2) on our own running child.
    unsafe { libc::kill(load.id().unwrap() as i32, libc::SIGINT) };
    let output = tokio::time::timeout(Duration::from_secs(30), load.wait_with_output())
        .await
        .expect("the run stops on SIGINT")
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
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
    wait_for(
        restarted.metrics_addr,
        "wsscale_connections_active",
        0.0,
        Duration::from_secs(10),
    )
    .await;
}
