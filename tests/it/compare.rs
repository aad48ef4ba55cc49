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
    compare_with_env(args, dir, &[]).await
}

/// The same with environment variables set.
async fn compare_with_env(args: &[&str], dir: &Path, env: &[(&str, &Path)]) -> (Output, PathBuf) {
    let out = dir.join("report");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .envs(env.iter().copied())
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
    assert_kernel_rows_and_sizing(&summary, &report);
    assert_self_contained_index(&out, &names, &stdout);
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
    // An external server gets the same kernel row and sizing as wsscale's own.
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_kernel_rows_and_sizing(&summary, &report);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_self_contained_index(&out, &["tasks-lean", "node-ws"], &stdout);
}

/// Every run's kernel socket row (its raw slopes from the host's readings; the figure
/// itself may be null when the host's socket count did not follow the connections — the
/// tests run in parallel and move it, tests/kernel.rs checks its value alone) and its
/// sizing; report.md's rows and sections.
fn assert_kernel_rows_and_sizing(summary: &Value, report: &str) {
    for run in summary["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let kernel = &run["kernel_sockets"];
        for field in [
            "slab_slope_bytes_per_connection",
            "slab_r2",
            "slab_unreclaimable_slope_bytes_per_connection",
            "tcp_memory_slope_bytes_per_connection",
            "tcp_sockets_per_connection",
        ] {
            assert!(kernel[field].is_number(), "{name}: kernel_sockets.{field}: {run:#}");
        }
        let socket = &run["kernel_socket_bytes_per_connection"];
        assert!(socket.is_number() || socket.is_null(), "{name}: {socket}");
        assert_eq!(*socket, kernel["slab_per_socket_bytes"], "{name}");
        for sample in run["samples"].as_array().unwrap() {
            for field in [
                "slab_bytes",
                "slab_unreclaimable_bytes",
                "tcp_memory_bytes",
                "tcp_sockets_inuse",
            ] {
                assert!(
                    sample[field].as_u64().is_some(),
                    "{name} sample lacks {field}: {sample:#}"
                );
            }
        }
        let figure = |key: &str| run[key].as_f64().unwrap_or_else(|| panic!("{name}: {key}: {run:#}"));
        // The new sum holds the old one and the kernel's socket memory (never below 0).
        assert!(
            figure("user_plus_kernel_bytes_per_connection") >= figure("user_plus_kernel_stack_bytes_per_connection"),
            "{name}: {run:#}"
        );
        let sizing = &run["sizing"];
        let per = sizing["bytes_per_connection"].as_f64().unwrap();
        assert_eq!(per, figure("user_plus_kernel_bytes_per_connection"), "{name}");
        assert!(per > 0.0, "{name}: {sizing:#}");
        let per_gib = sizing["connections_per_gib"].as_u64().unwrap();
        assert_eq!(per_gib, (1024.0 * 1024.0 * 1024.0 / per) as u64, "{name}: {sizing:#}");
        let memory = sizing["memory_for"].as_array().unwrap();
        assert_eq!(memory[0]["connections"], 100_000, "{sizing:#}");
        assert_eq!(memory[1]["connections"], 1_000_000, "{sizing:#}");
        let for_million = memory[1]["bytes"].as_f64().unwrap();
        assert!((for_million - per * 1e6).abs() < 1.0, "{name}: {sizing:#}");
        assert!(sizing["process_baseline_bytes"].as_u64().unwrap() > 0, "{sizing:#}");
    }
    let limits = summary["sizing"]["node_limits"].as_array().unwrap();
    let limit = |prefix: &str| {
        limits
            .iter()
            .find(|limit| limit["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {limits:#?}"))
    };
    assert_eq!(limit("RLIMIT_NOFILE")["needed"][1]["value"], 1_000_256);
    assert!(limit("vm.max_map_count")["needed"][1]["value"].as_u64().unwrap() >= 4_000_000);
    limit("kernel.pid_max");
    limit("kernel.threads-max");
    assert!(limit("client source addresses")["needed"][1]["value"].as_u64().unwrap() >= 16);
    assert!(
        summary["kernel_socket_derivation"]
            .as_str()
            .unwrap()
            .contains("sockstat")
    );
    for wanted in [
        "| kernel socket memory (slab per socket) |",
        "## Kernel socket memory",
        "## Sizing",
        "| connections per GiB |",
        "1,000,000 connections",
        "vm.max_map_count",
        "net.ipv4.ip_local_port_range",
    ] {
        assert!(report.contains(wanted), "report.md lacks {wanted:?}:\n{report}");
    }
}

/// index.html beside report.md: the tables with every run, the charts inline, and nothing
/// fetched from anywhere (no script, no stylesheet, no image by URL); its path printed.
fn assert_self_contained_index(out: &Path, names: &[&str], stdout: &str) {
    let index = out.join("index.html");
    let html = std::fs::read_to_string(&index).unwrap_or_else(|e| panic!("{}: {e}", index.display()));
    assert!(stdout.contains(&format!("open {}", index.display())), "{stdout}");
    assert!(
        stdout.contains("sizing (user + kernel stack + kernel socket"),
        "{stdout}"
    );
    assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..100.min(html.len())]);
    for id in [
        "per-connection-table",
        "sizing-table",
        "limits-table",
        "kernel-sockets-table",
        "servers-table",
    ] {
        assert!(html.contains(&format!("<table id=\"{id}\">")), "index.html lacks #{id}");
    }
    for name in names {
        assert!(
            html.contains(&format!("<th class=\"r\">{name}</th>")),
            "no column for {name}"
        );
        assert!(
            html.contains(&format!("<td class=\"l\">{name}</td>")),
            "no row for {name}"
        );
    }
    assert!(html.matches("<svg").count() >= 3, "the charts inline");
    for fetch in [
        "src=",
        "href=\"http",
        "<script",
        "<link",
        "@import",
        "url(",
        "<img",
        "<iframe",
    ] {
        assert!(!html.contains(fetch), "index.html holds {fetch:?}");
    }
    assert!(!html.contains("NaN") && !html.contains("undefined"));
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
    // Without the floor program: the report is as it was, and says why.
    let missing = dir.path().join("no-floor-sender");
    let (output, out) = compare_with_env(&args, dir.path(), &[("WSSCALE_FLOOR_SENDER", &missing)]).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("| server push |"),
        "{}",
        describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the floor is not measured"),
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
    assert!(
        report.contains("The floor was not measured") && report.contains("cargo build --release -p wsscale-floor"),
        "{report}"
    );
    assert!(summary["push_floor_missing"].is_string(), "{summary:#}");
    assert!(summary.get("push_floor").is_none());
}

/// A floor program that does not start fails the comparison before any run, quoting why.
#[tokio::test]
async fn a_floor_that_does_not_start_fails_before_any_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sender = dir.path().join("floor-sender");
    std::fs::write(&sender, "#!/bin/sh\necho cannot start >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&sender, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = ["-n", "100", "--modes", "tasks", "--engines", "lean", "--push"];
    let (output, out) = compare_with_env(&args, dir.path(), &[("WSSCALE_FLOOR_SENDER", &sender)]).await;
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ended before it listened (exit status: 3)"), "{stderr}");
    assert!(!stderr.contains("[tasks-lean] server pid"), "no run started: {stderr}");
    let log = std::fs::read_to_string(out.join("serve-floor.log")).unwrap();
    assert!(log.contains("cannot start"), "{log}");
}

/// `--push` with the floor program (floor-sender beside wsscale: `cargo build -p
/// wsscale-floor`, which `cargo test --workspace` and scripts/test.sh build): the floor is
/// one more run through the same steps and clients, apart from the servers' runs, and each
/// run's push figures are divided by its.
#[tokio::test]
async fn push_reports_the_floor_beside_the_runs() {
    const CONNECTIONS: u64 = 300;
    let sender = Path::new(env!("CARGO_BIN_EXE_wsscale")).with_file_name("floor-sender");
    if !sender.is_file() {
        eprintln!(
            "skipped: no {} (cargo build -p wsscale-floor, or cargo test --workspace)",
            sender.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connections",
        "300",
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
    let (output, out) = compare_with_env(&args, dir.path(), &[("WSSCALE_FLOOR_SENDER", &sender)]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary: Value = read_json(&out.join("summary.json"));
    let names: Vec<&str> = summary["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tasks-lean"], "the floor is in no memory comparison");
    assert!(
        summary["ratios"]["over_lean_tasks"].as_object().unwrap().is_empty(),
        "{summary:#}"
    );
    let floor = &summary["push_floor"];
    assert_eq!(floor["name"], "floor", "{summary:#}");
    let step = &floor["samples"][1];
    assert_eq!(step["connections"], CONNECTIONS, "{step:#}");
    assert_eq!(step["push_delivered"], CONNECTIONS * 2, "{step:#}");
    // Net of a quiet window: on a busy machine a small broadcast can read at or below it.
    assert!(
        step["cpu_seconds_per_broadcast"].as_f64().unwrap().is_finite(),
        "{step:#}"
    );
    let over = &summary["ratios"]["push_over_floor"]["tasks-lean"][0];
    assert_eq!(over["connections"], CONNECTIONS, "{summary:#}");
    let p99 = over["p99_over_floor"].as_f64().unwrap_or(f64::NAN);
    assert!(p99.is_finite() && p99 > 0.0, "p99_over_floor: {over:#}");
    // A CPU ratio only of two figures above zero, else null (and "-" in the table).
    let cpu = &over["cpu_over_floor"];
    assert!(
        cpu.is_null() || cpu.as_f64().is_some_and(|ratio| ratio.is_finite() && ratio > 0.0),
        "cpu_over_floor: {over:#}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| CPU ÷ floor | p99 ÷ floor |"), "{report}");
    let row = |name: &str| {
        report
            .lines()
            .find(|line| line.starts_with(&format!("| {name} | 300 |")))
            .unwrap_or_else(|| panic!("no push row of {name}: {report}"))
            .to_owned()
    };
    assert!(row("floor").contains("ms"), "{report}");
    let lean = row("tasks-lean");
    let cells: Vec<&str> = lean.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect();
    let [cpu, p99] = [cells[cells.len() - 2], cells[cells.len() - 1]]
        .map(|cell| (cell != "-").then(|| cell.trim_end_matches('×').parse::<f64>().unwrap_or(f64::NAN)));
    assert!(p99.is_some_and(|ratio| ratio.is_finite() && ratio > 0.0), "{lean}");
    assert!(cpu.is_none_or(|ratio| ratio.is_finite() && ratio > 0.0), "{lean}");
    assert_eq!(
        cpu.is_none(),
        over["cpu_over_floor"].is_null(),
        "the table says what summary.json says: {lean}"
    );
    assert!(!report.contains("## Samples: floor"), "{report}");
    assert!(
        std::fs::read_to_string(out.join("index.html"))
            .unwrap()
            .contains("floor-sender")
    );
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

/// index.html opened from disk in a real browser with the network off: the tables render
/// with every run in them, the charts are there, nothing shows NaN or undefined, and the
/// page asked for no resource at all. The external server's command carries markup (in a
/// shell comment, so the server still runs), which the page shows as text.
#[tokio::test]
async fn index_html_opens_offline_in_a_browser() {
    const MARKUP: &str = "<script>alert(\"x\")</script> & 'q'";
    let dir = tempfile::tempdir().unwrap();
    let server = format!("node-ws=node peers/node-ws/server.js {{port}} # {MARKUP}");
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
        &server,
    ];
    let (output, out) = compare(&args, dir.path()).await;
    assert!(output.status.success(), "{}", describe(&output));
    let index = out.join("index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(!html.contains("<script"), "the command is escaped");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"));

    let mut browser = crate::browser::Browser::launch().await;
    browser.open("about:blank").await;
    browser.offline().await;
    browser.navigate(&format!("file://{}", index.display())).await;
    let cells = "Array.from(document.querySelectorAll('#per-connection-table td, #sizing-table td'))\
                 .map(c => c.innerText).join('\\n')";
    let text = browser
        .wait_for("the tables", Duration::from_secs(30), async |browser| {
            let ready = browser.eval("document.readyState").await == "complete";
            let cells = browser.eval(cells).await.as_str().unwrap_or_default().to_owned();
            (ready && cells.contains("tasks-lean") && cells.contains("node-ws")).then_some(cells)
        })
        .await;
    assert!(text.contains("KiB"), "{text}");
    let body = browser.body_text().await;
    for wrong in ["NaN", "undefined", "Infinity"] {
        assert!(!body.contains(wrong), "the page shows {wrong}:\n{body}");
    }
    assert!(body.contains(MARKUP), "the command shown as text:\n{body}");
    assert!(body.contains("kernel socket memory (slab per socket)"), "{body}");
    assert!(body.contains("1,000,000 connections"), "{body}");
    let facts = browser
        .eval(
            "JSON.stringify({ svgs: document.querySelectorAll('figure svg').length, \
             drawn: Array.from(document.querySelectorAll('figure svg')).every(s => s.getBBox().width > 100), \
             scripts: document.scripts.length, \
             requests: performance.getEntriesByType('resource').length })",
        )
        .await;
    let facts: Value = serde_json::from_str(facts.as_str().unwrap()).unwrap();
    assert_eq!(facts["scripts"], 0, "{facts}");
    assert_eq!(facts["requests"], 0, "index.html asks for nothing: {facts}");
    assert!(
        facts["svgs"].as_u64().unwrap() >= 3 && facts["drawn"] == true,
        "{facts}"
    );
    browser
        .screenshot(&crate::browser::screenshot_path(&dir, "compare-index.png"))
        .await;
}
