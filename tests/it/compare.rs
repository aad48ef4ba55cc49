//! `wsscale compare` end to end, small: both modes, steps up to 1,000 connections.

use std::time::Duration;

use serde_json::Value;

#[tokio::test]
async fn compares_tasks_and_threads_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args([
            "compare",
            "--connections",
            "1000",
            "--steps",
            "4",
            "--settle-timeout",
            "5s",
            "--out",
        ])
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("compare ends by itself")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("threads ÷ tasks") && stdout.contains("report written to"),
        "{stdout}"
    );

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for key in ["config", "machine", "wsscale_version", "ratios_threads_over_tasks"] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    let steps = [0u64, 250, 500, 750, 1000];
    for mode in ["tasks", "threads"] {
        let m = &summary["modes"][mode];
        let samples = m["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no samples for {mode}"));
        assert_eq!(samples.len(), steps.len(), "{mode}");
        for (sample, step) in samples.iter().zip(steps) {
            assert_eq!(sample["connections"], step, "{mode}: {sample:#}");
            for field in [
                "rss_bytes",
                "heap_bytes",
                "threads",
                "tasks_alive",
                "kernel_stack_bytes",
                "open_fds",
                "cpu_seconds",
            ] {
                assert!(sample[field].is_number(), "{mode} sample lacks {field}: {sample:#}");
            }
            assert_eq!(
                sample["cross_check_ok"], true,
                "{mode}: /metrics disagrees with /proc: {sample:#}"
            );
        }
        let at = |i: usize, field: &str| samples[i][field].as_f64().unwrap();
        let last = steps.len() - 1;
        match mode {
            "threads" => assert!(
                at(last, "threads") - at(0, "threads") >= 1000.0,
                "one thread per connection"
            ),
            _ => {
                assert_eq!(at(last, "threads"), at(0, "threads"), "tasks mode adds no thread");
                assert!(
                    at(last, "tasks_alive") - at(0, "tasks_alive") >= 1000.0,
                    "one task per connection"
                );
            }
        }
        assert!(m["slope_bytes_per_connection"].as_f64().unwrap() > 0.0, "{mode} slope");
        assert!(m["r2"].is_number());
    }
    let slope = |mode: &str| summary["modes"][mode]["slope_bytes_per_connection"].as_f64().unwrap();
    assert!(
        slope("threads") > slope("tasks"),
        "threads {} vs tasks {}",
        slope("threads"),
        slope("tasks")
    );

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("threads ÷ tasks"), "{report}");
    for (chart, labels) in [
        ("memory_vs_connections.svg", ["idle connections", "memory (MiB)"]),
        (
            "threads_and_tasks_vs_connections.svg",
            ["idle connections", "count (threads, tasks)"],
        ),
        (
            "memory_per_connection.svg",
            ["execution model", "bytes per connection (KiB)"],
        ),
    ] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{chart} is not XML: {e}"));
        let texts: Vec<&str> = document.descendants().filter_map(|node| node.text()).collect();
        for label in labels {
            assert!(
                texts.iter().any(|text| text.contains(label)),
                "{chart} lacks the label {label:?}"
            );
        }
        assert!(report.contains(chart), "report.md shows {chart}");
    }
}
