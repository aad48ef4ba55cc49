//! `wsscale compare` end to end, small: every mode with every engine, steps up to 1,000
//! connections; and `--server` with a real peer (Node `ws`, installed by
//! `peers/install.sh node-ws`, which scripts/test.sh runs) and with servers that fail.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::read_json;

/// Runs `wsscale compare ARGS --out DIR/report` from the repository root (where the
/// peers' commands are relative to); returns the output and the report folder.
async fn compare(args: &[&str], dir: &Path) -> (Output, PathBuf) {
    let out = dir.join("report");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .arg("compare")
        .args(args)
        .arg("--out")
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(400), run)
        .await
        .expect("compare ends by itself")
        .unwrap();
    (output, out)
}

fn describe(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn compares_modes_and_engines_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = compare(
        &["--connections", "1000", "--steps", "4", "--settle-timeout", "5s"],
        dir.path(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    for wanted in [
        "threads ÷ tasks (lean engine)",
        "threads ÷ tasks (tungstenite engine)",
        "tungstenite ÷ lean (tasks mode)",
        "tungstenite ÷ lean (threads mode)",
        "report written to",
    ] {
        assert!(stdout.contains(wanted), "no {wanted:?} in:\n{stdout}");
    }

    let summary: Value = read_json(&out.join("summary.json"));
    for key in [
        "config",
        "machine",
        "wsscale_version",
        "ratios_threads_over_tasks",
        "runs",
        "ratios",
    ] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    let steps = [0u64, 250, 500, 750, 1000];
    let runs = summary["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|run| run["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["tasks-lean", "threads-lean", "tasks-tungstenite", "threads-tungstenite"]
    );
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let mode = run["mode"].as_str().unwrap();
        let samples = run["samples"].as_array().unwrap();
        assert_eq!(samples.len(), steps.len(), "{name}");
        for (sample, step) in samples.iter().zip(steps) {
            assert_eq!(sample["connections"], step, "{name}: {sample:#}");
            for field in [
                "rss_bytes",
                "heap_bytes",
                "threads",
                "tasks_alive",
                "kernel_stack_bytes",
                "open_fds",
                "cpu_seconds",
            ] {
                assert!(sample[field].is_number(), "{name} sample lacks {field}: {sample:#}");
            }
            assert_eq!(
                sample["cross_check_ok"], true,
                "{name}: /metrics disagrees with /proc: {sample:#}"
            );
        }
        let at = |i: usize, field: &str| samples[i][field].as_f64().unwrap();
        let last = steps.len() - 1;
        match mode {
            "threads" => assert!(
                at(last, "threads") - at(0, "threads") >= 1000.0,
                "{name}: one thread per connection"
            ),
            _ => {
                assert_eq!(
                    at(last, "threads"),
                    at(0, "threads"),
                    "{name}: tasks mode adds no thread"
                );
                assert!(
                    at(last, "tasks_alive") - at(0, "tasks_alive") >= 1000.0,
                    "{name}: one task per connection"
                );
            }
        }
        assert!(
            run["slope_bytes_per_connection"].as_f64().unwrap() > 0.0,
            "{name} slope"
        );
        assert!(run["r2"].is_number());
        for setting in [
            "read_buffer_size",
            "write_buffer_size",
            "max_message_size",
            "thread_stack_size",
        ] {
            assert_eq!(
                run["settings"][setting]["source"], "engine_default",
                "{name}: {setting} {:#}",
                run["settings"]
            );
        }
    }
    let slope = |name: &str| {
        runs.iter().find(|run| run["name"] == name).unwrap()["slope_bytes_per_connection"]
            .as_f64()
            .unwrap()
    };
    assert!(slope("threads-lean") > slope("tasks-lean"));
    assert!(
        slope("tasks-tungstenite") > 64.0 * 1024.0,
        "tungstenite's 128 KiB read buffer per connection: {}",
        slope("tasks-tungstenite")
    );
    // The first format's readers: the lean runs by mode, the lean ratio.
    assert_eq!(summary["modes"]["tasks"]["name"], "tasks-lean");
    assert_eq!(summary["modes"]["threads"]["name"], "threads-lean");
    for ratio in [
        &summary["ratios"]["threads_over_tasks"]["lean"],
        &summary["ratios"]["threads_over_tasks"]["tungstenite"],
        &summary["ratios"]["stock_over_lean"]["tasks"],
        &summary["ratios"]["stock_over_lean"]["threads"],
        &summary["ratios"]["over_lean_tasks"]["threads-tungstenite"],
    ] {
        assert!(ratio["user_memory"].as_f64().unwrap() > 1.0, "{:#}", summary["ratios"]);
    }

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("threads ÷ tasks"), "{report}");
    assert!(
        report.contains("read buffer"),
        "the conclusions name the read buffer: {report}"
    );
    for name in names {
        assert!(out.join(format!("serve-{name}.log")).is_file(), "serve-{name}.log");
    }
    for (chart, labels) in [
        ("memory_vs_connections.svg", ["idle connections", "memory (MiB)"]),
        (
            "threads_and_tasks_vs_connections.svg",
            ["idle connections", "count (threads, tasks)"],
        ),
        (
            "memory_per_connection.svg",
            ["server (execution model - engine)", "bytes per connection (KiB)"],
        ),
    ] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{chart} is not XML: {e}"));
        let texts: Vec<&str> = document.descendants().filter_map(|node| node.text()).collect();
        for label in labels.into_iter().chain(["tasks-tungstenite"]) {
            assert!(
                texts.iter().any(|text| text.contains(label)),
                "{chart} lacks the label {label:?}"
            );
        }
        assert!(report.contains(chart), "report.md shows {chart}");
    }
}

/// The Node `ws` peer, as peers/servers.txt runs it.
const NODE_WS: &str = "node-ws=node peers/node-ws/server.js {port}";

#[tokio::test]
async fn measures_any_server_given_as_a_command() {
    let node_modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/node-ws/node_modules");
    assert!(
        node_modules.is_dir(),
        "the node-ws peer is not installed: run peers/install.sh node-ws (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connections",
        "300",
        "--steps",
        "3",
        "--settle-timeout",
        "5s",
        "--modes",
        "tasks",
        "--engines",
        "lean",
        "--server",
        NODE_WS,
    ];
    let (output, out) = compare(&args, dir.path()).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("node-ws ÷ tasks-lean"),
        "{}",
        describe(&output)
    );
    let summary: Value = read_json(&out.join("summary.json"));
    let node = summary["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|run| run["name"] == "node-ws")
        .unwrap_or_else(|| panic!("no node-ws run: {summary:#}"));
    assert!(
        node["server"]
            .as_str()
            .unwrap()
            .starts_with("node peers/node-ws/server.js"),
        "{node:#}"
    );
    let samples = node["samples"].as_array().unwrap();
    assert_eq!(samples.last().unwrap()["connections"], 300, "{node:#}");
    assert!(
        samples.iter().all(|sample| sample["heap_bytes"].is_null()),
        "no heap figure from /proc"
    );
    assert!(node["slope_bytes_per_connection"].as_f64().unwrap() > 0.0, "{node:#}");
    let r2 = node["r2"].as_f64().unwrap();
    assert!(r2 > 0.0 && r2 <= 1.0, "{node:#}");
    assert!(
        summary["ratios"]["over_lean_tasks"]["node-ws"]["user_memory"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{:#}",
        summary["ratios"]
    );
    assert!(out.join("serve-node-ws.log").is_file());
}

#[tokio::test]
async fn a_server_that_fails_is_named_with_its_output() {
    for (server, complaint) in [
        ("early-exit=echo cannot bind; exit 3", "exited before it upgraded"),
        ("never-upgrades=sleep 30", "did not upgrade"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "--connections",
            "100",
            "--modes",
            "tasks",
            "--engines",
            "lean",
            "--server-start-timeout",
            "2s",
            "--server",
            server,
        ];
        let (output, _) = compare(&args, dir.path()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = server.split('=').next().unwrap();
        assert!(!output.status.success(), "{}", describe(&output));
        assert!(
            stderr.contains(&format!("server {name}")) && stderr.contains(complaint),
            "{}",
            describe(&output)
        );
        if name == "early-exit" {
            assert!(stderr.contains("cannot bind"), "its output is quoted: {stderr}");
        }
    }
}

#[tokio::test]
async fn push_reports_delivery_and_cost_per_broadcast() {
    const CONNECTIONS: u64 = 200;
    const BROADCASTS: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connections",
        "200",
        "--steps",
        "1",
        "--settle-timeout",
        "5s",
        "--modes",
        "tasks",
        "--engines",
        "lean",
        "--push",
        "--push-count",
        "2",
    ];
    let (output, out) = compare(&args, dir.path()).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("| server push |"),
        "{}",
        describe(&output)
    );
    let summary: Value = read_json(&out.join("summary.json"));
    let samples = summary["runs"][0]["samples"].as_array().unwrap();
    assert!(
        samples[0].get("push_delivery_p99_ms").is_none(),
        "nothing pushed at 0 connections"
    );
    let step = &samples[1];
    assert_eq!(step["connections"], CONNECTIONS, "{step:#}");
    assert_eq!(step["broadcasts"], BROADCASTS, "{step:#}");
    assert_eq!(
        step["push_delivered"],
        CONNECTIONS * BROADCASTS,
        "every push reached every client: {step:#}"
    );
    assert_eq!(step["push_missed"], 0, "{step:#}");
    let p50 = step["push_delivery_p50_ms"].as_f64().unwrap();
    let max = step["push_delivery_max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && max >= p50, "{step:#}");
    for field in ["cpu_seconds_per_broadcast", "context_switches_per_broadcast"] {
        assert!(step[field].is_number(), "{field}: {step:#}");
    }
    assert!(out.join("push_vs_connections.svg").is_file());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Server push"), "{report}");
}

/// `--schemes ws,wss`: every wsscale run also over TLS (named `-wss`), with compare's own
/// certificate, which a `--server` command takes as `{cert}` and `{key}` (the Node peer
/// here); the load generator trusts that certificate alone, so each wss run really holds
/// its connections over TLS; the report says what TLS costs, against a bare session.
#[tokio::test]
async fn measures_wss_beside_ws_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connections",
        "300",
        "--steps",
        "3",
        "--settle-timeout",
        "5s",
        "--modes",
        "tasks",
        "--schemes",
        "ws,wss",
        "--server",
        "node-ws-wss=node peers/node-ws/server.js {port} --cert {cert} --key {key}",
    ];
    let (output, out) = compare(&args, dir.path()).await;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for wanted in [
        "what TLS costs per idle connection",
        "A bare TLS session",
        "wss ÷ ws (tasks-lean)",
    ] {
        assert!(stdout.contains(wanted), "no {wanted:?} in:\n{stdout}");
    }
    let summary: Value = read_json(&out.join("summary.json"));
    let runs = summary["runs"].as_array().unwrap();
    let run = |name: &str| {
        runs.iter()
            .find(|run| run["name"] == name)
            .unwrap_or_else(|| panic!("no run {name}: {summary:#}"))
    };
    for name in ["tasks-lean", "tasks-lean-wss", "tasks-tungstenite-wss", "node-ws-wss"] {
        let samples = run(name)["samples"].as_array().unwrap();
        assert_eq!(samples.last().unwrap()["connections"], 300, "{name}: {:#}", run(name));
    }
    assert_eq!(run("tasks-lean-wss")["scheme"], "wss");
    assert_eq!(run("tasks-lean")["scheme"], "ws");
    assert!(
        run("tasks-lean-wss")["server"].as_str().unwrap().contains("--tls-cert"),
        "{:#}",
        run("tasks-lean-wss")
    );
    // The certificate the servers and the generator shared, and TLS's cost per connection.
    assert!(out.join("tls-cert.pem").is_file() && out.join("tls-key.pem").is_file());
    let tls = summary["ratios"]["wss_over_ws"]["tasks-lean"]["user_memory"]
        .as_f64()
        .unwrap();
    assert!(
        tls > 1.0,
        "TLS costs something per idle connection: {:#}",
        summary["ratios"]
    );
    let lean_wss = run("tasks-lean-wss")["slope_bytes_per_connection"].as_f64().unwrap();
    let lean_ws = run("tasks-lean")["slope_bytes_per_connection"].as_f64().unwrap();
    assert!(lean_wss > lean_ws, "{lean_wss} vs {lean_ws}");
}
