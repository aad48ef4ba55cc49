//! Faults: a load generator killed mid-hold, repeated connect/disconnect cycles, and
//! SIGTERM with thousands of connections held. Nothing leaks and nothing is lost.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{Kind, Metrics, TestServer, eventually};

crate::every_server!(
    a_killed_load_generator_is_reaped_and_memory_returns,
    repeated_cycles_leave_nothing_behind,
    sigterm_sends_1001_to_thousands_and_exits_0,
);

/// Waits until no connection is open, every connection thread has exited (threads leave
/// a moment after their connection is counted closed) and the heap reads the same twice
/// in a row (the last tasks are freed a moment after their connection is counted closed).
async fn wait_until_idle(server: &TestServer, threads_when_idle: f64) -> Metrics {
    server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(30))
        .await;
    let mut previous_heap = -1.0;
    eventually(Duration::from_secs(30), "the heap to settle", async || {
        let metrics = server
            .wait_for_metric("process_threads", &[], threads_when_idle, Duration::from_secs(30))
            .await;
        let heap = metrics.value("wsscale_heap_allocated_bytes", &[]);
        if heap == std::mem::replace(&mut previous_heap, heap) {
            Ok(metrics)
        } else {
            Err(format!("heap {heap} B"))
        }
    })
    .await
}

fn load_command(url: &str, connections: usize, hold: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"));
    command
        .args([
            "load",
            "--url",
            url,
            "--connections",
            &connections.to_string(),
            "--rate",
            "0",
            "--hold",
            hold,
        ])
        // Generous: these tests are about the server's cleanup, not about opening fast
        // on a machine busy with the rest of the suite.
        .args(["--ping-interval", "0s", "--connect-timeout", "60s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Heap the exporter may still hold per recorded handshake when an idle reading is taken.
const LATE_RECLAMATION_PER_HANDSHAKE: usize = 8;

async fn a_killed_load_generator_is_reaped_and_memory_returns(kind: Kind) {
    const HELD: usize = 3000;
    // An idle timeout well above what a busy machine can delay a pong by: a short one
    // reaps live connections while the rest are still opening.
    let server = TestServer::start(kind, &["--ping-interval", "2s", "--idle-timeout", "20s"]);
    let idle_threads = server.metrics().await.value("process_threads", &[]);
    // The baseline is the idle server after one ordinary run of the same size, so what
    // grows once to fit the load (queues, tables) is in it and only leaks are not.
    load_command(&server.url(), HELD, "0s").status().await.unwrap();
    let baseline = wait_until_idle(&server, idle_threads).await;
    let heap_before = baseline.value("wsscale_heap_allocated_bytes", &[]);

    let mut load = load_command(&server.url(), HELD, "10m").spawn().unwrap();
    server
        .wait_for_metric("wsscale_connections_active", &[], HELD as f64, Duration::from_secs(60))
        .await;
    load.start_kill().unwrap();
    load.wait().await.unwrap();
    // The kernel closes a killed process's sockets; whatever it cannot, the idle timeout
    // reaps (20 s here).
    server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(40))
        .await;
    let after = wait_until_idle(&server, idle_threads).await;
    let heap_after = after.value("wsscale_heap_allocated_bytes", &[]);
    // The exporter frees drained histogram blocks late (epoch-based reclamation, ~8 B per
    // handshake recorded; see repeated_cycles_leave_nothing_behind), so allow that much;
    // a leak of a connection's task or session (hundreds of bytes each) is far above it.
    let allowance = (HELD * LATE_RECLAMATION_PER_HANDSHAKE) as f64;
    assert!(
        heap_after <= heap_before + allowance,
        "{kind}: heap {heap_before} before, {heap_after} after {HELD} connections came and went"
    );
    let closed: f64 = ["client_close", "idle_timeout", "error"]
        .iter()
        .map(|reason| after.value("wsscale_connections_closed_total", &[("reason", reason)]))
        .sum();
    assert_eq!(closed, (2 * HELD) as f64);
}

async fn repeated_cycles_leave_nothing_behind(kind: Kind) {
    const CYCLES: usize = 5;
    const CONNECTIONS: usize = 5000;
    let server = TestServer::start(kind, &[]);
    let idle_threads = server.metrics().await.value("process_threads", &[]);
    let mut readings = Vec::new();
    for _ in 0..CYCLES {
        let status = load_command(&server.url(), CONNECTIONS, "0s").status().await.unwrap();
        assert!(status.success());
        let metrics = wait_until_idle(&server, idle_threads).await;
        readings.push((
            metrics.value("wsscale_heap_allocated_bytes", &[]),
            metrics.value("process_open_fds", &[]),
            metrics.value("process_threads", &[]),
        ));
    }
    // The exporter frees its histogram blocks through epoch-based reclamation, some time
    // after they are drained (~8 B per handshake recorded), so an idle reading can carry
    // a few tens of KiB of garbage. A leak of even 7 B per connection would add more than
    // the slack below over the 20,000 connections after the first cycle.
    const SLACK: f64 = 128.0 * 1024.0;
    let (heap_first, fds_first, threads_first) = readings[0];
    for (cycle, (heap, fds, threads)) in readings.iter().enumerate().skip(1) {
        assert!(
            *heap <= heap_first + SLACK,
            "{kind} cycle {cycle}: heap grew: {readings:?}"
        );
        assert_eq!(*fds, fds_first, "{kind} cycle {cycle}: open fds {readings:?}");
        assert_eq!(*threads, threads_first, "{kind} cycle {cycle}: threads {readings:?}");
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("wsscale_connections_opened_total", &[]),
        (CYCLES * CONNECTIONS) as f64
    );
}

async fn sigterm_sends_1001_to_thousands_and_exits_0(kind: Kind) {
    const HELD: usize = 2000;
    let mut server = TestServer::start(kind, &["--drain-timeout", "5s"]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let mut load = load_command(&server.url(), HELD, "10m");
    let load = load.arg("--json").arg(&json).spawn().unwrap();
    server
        .wait_for_metric("wsscale_connections_active", &[], HELD as f64, Duration::from_secs(30))
        .await;
    server.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(5 + 3)))
        .await
        .unwrap();
    assert!(status.success(), "{kind}: {status:?}");
    // The generator has seen every connection closed by the server; stop its hold.
    let (_, summary) = crate::load::interrupt(load, &json).await;
    assert_eq!(summary["opened"], HELD);
    assert_eq!(
        summary["lost"]["close_1001"], HELD,
        "{kind}: every client received close 1001: {summary:#}"
    );
}
