//! A fleet behind a balancer: the drain a balancer can follow (`--drain-delay`: /healthz
//! answers 503 while the server still serves and accepts, then 1001 to every session),
//! and `scripts/fleet.sh` at small scale — three replicas behind a real HAProxy
//! configured from deploy/haproxy/haproxy.cfg, a load run with `--reconnect`, a rolling
//! restart of every replica, a real Prometheus answering the dashboard's queries over
//! the fleet.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, Kind, TestServer, assert_echo, body, http_get};

crate::both_modes!(drain_delay_fails_health_while_serving_and_a_second_signal_ends_it);

/// GET /healthz: the status and the body.
async fn health(server: &TestServer) -> (u16, String) {
    let (status, response) = http_get(server.metrics_addr, "/healthz", &[]).await;
    (status, body(&response).to_owned())
}

/// Polls /healthz until it answers `status`; panics after `within`.
async fn wait_for_health(server: &TestServer, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (current, body) = health(server).await;
        if current == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz answers {current} {body:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the close frame; its code.
async fn close_code(mut client: Client) -> Option<CloseCode> {
    loop {
        match client.next().await {
            Some(Ok(Message::Close(frame))) => return frame.map(|frame| frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A delay far longer than the test: everything checked during it happens while the
/// server is draining, however slow the machine, and the second signal ends it.
async fn drain_delay_fails_health_while_serving_and_a_second_signal_ends_it(kind: Kind) {
    let mut server = TestServer::start(kind, &["--drain-delay", "120s", "--drain-timeout", "5s"]);
    let (status, ok) = health(&server).await;
    assert_eq!((status, ok.as_str()), (200, "ok\n"));
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(server.connect().await);
    }
    server
        .wait_for_metric("wsscale_connections_active", &[], 20.0, Duration::from_secs(10))
        .await;

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let draining = wait_for_health(&server, 503, Duration::from_secs(10)).await;
    assert!(draining.contains("draining"), "{draining:?}");
    // Still accepting: a new client upgrades and is served; the held ones too.
    let mut newcomer = server.connect().await;
    assert_echo(&mut newcomer, "accepted while draining").await;
    for (i, client) in held.iter_mut().enumerate() {
        assert_echo(client, &format!("still served {i}")).await;
    }
    held.push(newcomer);
    let metrics = server
        .wait_for_metric("wsscale_connections_active", &[], 21.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        metrics.get("wsscale_connections_closed_total", &[("reason", "shutdown")]),
        Some(0.0),
        "no session closed during the delay"
    );

    // A second signal skips the rest of the delay: 1001 to every session, exit 0.
    server.signal(libc::SIGINT);
    let readers: Vec<_> = held
        .into_iter()
        .map(|client| tokio::spawn(close_code(client)))
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(CloseCode::Away));
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(100),
        "the second signal ended the 120 s delay ({:?})",
        signalled.elapsed()
    );
}

/// Without a second signal the delay runs out by itself: no session is closed before
/// it, every one gets 1001 after it, and the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_runs_out_then_every_session_gets_1001() {
    const DELAY: Duration = Duration::from_secs(2);
    let mut server = TestServer::start(Kind::TASKS_LEAN, &["--drain-delay", "2s"]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(server.connect().await);
    }
    server
        .wait_for_metric("wsscale_connections_active", &[], 10.0, Duration::from_secs(10))
        .await;
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let code = close_code(client).await;
                (code, signalled.elapsed())
            })
        })
        .collect();
    wait_for_health(&server, 503, Duration::from_secs(10)).await;
    for reader in readers {
        let (code, after) = reader.await.unwrap();
        assert_eq!(code, Some(CloseCode::Away));
        assert!(
            after >= DELAY,
            "1001 came {after:?} after SIGTERM, within the {DELAY:?} delay"
        );
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `scripts/fleet.sh` at small scale, as CI runs it: three tasks-mode replicas × 300
/// connections through a real HAProxy configured from deploy/haproxy/haproxy.cfg, load
/// segments with `--reconnect`, a rolling restart of every replica (the drain delay one
/// second longer than the configuration's checks take to mark a replica down), and a
/// real Prometheus.
#[test]
fn a_rolling_restart_behind_haproxy_loses_no_one() {
    const REPLICAS: usize = 3;
    const CONNECTIONS: u64 = 900;
    let began = Instant::now();
    let config = std::fs::read_to_string(crate::stack::root().join("deploy/haproxy/haproxy.cfg")).unwrap();
    let drain_delay = crate::stack::balancer_takes_a_replica_out_within(&config) + Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fleet");
    let output = std::process::Command::new(crate::stack::root().join("scripts/fleet.sh"))
        .args([
            "--replicas",
            &REPLICAS.to_string(),
            "--connections",
            &CONNECTIONS.to_string(),
        ])
        .args(["--rolling-restart", "--ping-interval", "1s", "--drain-delay"])
        .arg(format!("{}ms", drain_delay.as_millis()))
        .arg("--out")
        .arg(&out)
        .env("WSSCALE_BIN", env!("CARGO_BIN_EXE_wsscale"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("scripts/fleet.sh runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "scripts/fleet.sh failed:\n{printed}");
    let fleet: serde_json::Value = crate::support::read_json(&out.join("fleet.json"));
    let context = format!("{printed}\n{fleet:#}");

    // Every connection held, spread evenly by leastconn.
    assert_eq!(fleet["through"], "haproxy", "{context}");
    assert_eq!(fleet["all_held"], true, "{context}");
    let held: Vec<u64> = serde_json::from_value(fleet["held_per_replica"].clone()).unwrap();
    assert_eq!(held.len(), REPLICAS, "{context}");
    assert_eq!(held.iter().sum::<u64>(), CONNECTIONS, "{context}");
    let share = CONNECTIONS as f64 / REPLICAS as f64;
    for count in &held {
        assert!(
            (*count as f64 - share).abs() <= 0.2 * share,
            "unbalanced: {held:?}\n{context}"
        );
    }

    // The rolling restart: every replica lost all it held, and every one came back
    // through the balancer at the first attempt.
    let rolling = &fleet["rolling_restart"];
    assert_eq!(rolling["failed_attempts"], 0, "{context}");
    assert_eq!(rolling["lost_at_end"], 0, "{context}");
    assert_eq!(rolling["held_after"], CONNECTIONS, "{context}");
    let restarts = rolling["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), REPLICAS, "{context}");
    for restart in restarts {
        assert!(restart["held"].as_u64().unwrap() > 0, "{context}");
        assert_eq!(restart["lost"], restart["held"], "{context}");
        assert!(restart["recovered_secs"].is_number(), "{context}");
    }
    let load = &fleet["load"];
    assert_eq!(load["opened"], CONNECTIONS, "{context}");
    assert_eq!(load["failed"], 0, "{context}");
    assert_eq!(load["reconnect_failures"], serde_json::json!({}), "{context}");
    let lost: u64 = restarts.iter().map(|r| r["lost"].as_u64().unwrap()).sum();
    assert_eq!(load["lost_during_hold"], lost, "{context}");
    assert_eq!(load["lost"]["close_1001"], lost, "every loss a 1001: {context}");
    assert_eq!(load["reconnected"], lost, "{context}");
    assert_eq!(load["merged_segments"].as_array().unwrap().len(), REPLICAS, "{context}");
    // HAProxy took each replica out before it stopped accepting: no attempt of its own
    // failed, none needed a retry (the old configuration's restart needed hundreds).
    let backend = &fleet["haproxy"]["backend"];
    assert_eq!(backend["sessions"], CONNECTIONS + lost, "{context}");
    assert_eq!(backend["connection_errors"], 0, "{context}");
    assert_eq!(backend["retries"], 0, "{context}");
    assert_eq!(backend["redispatches"], 0, "{context}");

    // Prometheus answers the dashboard's queries over the three replicas: the sum of
    // connections and the connection-weighted memory per connection.
    let dashboard = &fleet["dashboard"];
    let per_replica = |key: &str| -> Vec<f64> {
        let values = dashboard[key].as_object().unwrap_or_else(|| panic!("{key}: {context}"));
        assert_eq!(values.len(), REPLICAS, "{key}: {context}");
        values.values().map(|v| v.as_f64().unwrap()).collect()
    };
    let active = per_replica("active_connections_per_replica");
    assert_eq!(active.iter().sum::<f64>(), CONNECTIONS as f64, "{context}");
    assert_eq!(dashboard["active_connections"], CONNECTIONS as f64, "{context}");
    assert_eq!(dashboard["loadgen_connections_open"], CONNECTIONS as f64, "{context}");
    let rss = per_replica("rss_bytes_per_replica");
    assert_eq!(
        dashboard["rss_bytes"].as_f64().unwrap(),
        rss.iter().sum::<f64>(),
        "{context}"
    );
    let memory: Vec<f64> = dashboard["memory_per_connection_rss_bytes_per_replica"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(instance, bytes)| {
            bytes.as_f64().unwrap() * dashboard["active_connections_per_replica"][instance].as_f64().unwrap()
        })
        .collect();
    let weighted = memory.iter().sum::<f64>() / CONNECTIONS as f64;
    let panel = dashboard["memory_per_connection_rss_bytes"].as_f64().unwrap();
    assert!(
        weighted > 0.0 && (panel - weighted).abs() <= 1e-6 * weighted,
        "{panel} vs {weighted}: {context}"
    );

    // The balancer ran the repository's configuration, transformed only where loopback
    // differs from compose.
    assert_derived_from_the_source(&std::fs::read_to_string(out.join("haproxy.cfg")).unwrap());
    println!("{printed}\nfleet test: {:.1} s", began.elapsed().as_secs_f64());
}

/// Every line of the generated configuration is a line of deploy/haproxy/haproxy.cfg,
/// or one of the transformations scripts/fleet.sh makes (the replicas as `server` lines,
/// loopback binds, maxconn, the default-server without Docker's resolvers); and every
/// setting of the source's `defaults` section is in it.
fn assert_derived_from_the_source(generated: &str) {
    let source = std::fs::read_to_string(crate::stack::root().join("deploy/haproxy/haproxy.cfg")).unwrap();
    let source_lines: std::collections::BTreeSet<&str> = source.lines().collect();
    let source_default_server = source
        .lines()
        .find(|line| line.trim_start().starts_with("default-server "))
        .unwrap();
    for line in generated.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let transformed = match words.as_slice() {
            ["server", _, address, "port", _] => address.starts_with("127.0.0.1:"),
            ["bind", address] => address.starts_with("127.0.0.1:"),
            ["maxconn", _] => true,
            ["default-server", rest @ ..] => {
                let kept: Vec<&str> = source_default_server.split_whitespace().skip(1).collect();
                let mut expected = Vec::new();
                let mut words = kept.iter();
                while let Some(word) = words.next() {
                    if matches!(*word, "init-addr" | "resolvers") {
                        words.next();
                    } else {
                        expected.push(*word);
                    }
                }
                rest == expected.as_slice()
            }
            _ => false,
        };
        assert!(
            transformed || source_lines.contains(line),
            "{line:?} is neither in deploy/haproxy/haproxy.cfg nor a loopback transformation:\n{generated}"
        );
    }
    let defaults = source
        .split("\ndefaults\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    for setting in defaults.lines().filter(|line| !line.trim_start().starts_with('#')) {
        if !setting.trim_start().starts_with("default-server") {
            assert!(generated.lines().any(|line| line == setting), "{setting:?} is missing");
        }
    }
    for kept in [
        "option redispatch 1",
        "retries 3",
        "balance leastconn",
        "http-check send meth GET uri /healthz",
    ] {
        assert!(generated.contains(kept), "{kept} is missing:\n{generated}");
    }
}
