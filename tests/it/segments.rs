//! `wsscale load --segment I/N` and `wsscale load merge` against the real server: the
//! segments of one run open exactly their shares, start together, and merge into the
//! summary of one run, with percentiles from the merged histograms; the Kubernetes
//! Indexed Job's environment alone names a pod's segment.

use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wsscale_loadgen::Summary;
use wsscale_loadgen::report::Percentiles;
use wsscale_loadgen::stats::Histograms;

use crate::load::describe;
use crate::support::{Kind, TestServer, read_json};

fn wsscale() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"));
    command.env("RUST_LOG", "warn").kill_on_drop(true);
    command
}

async fn finish(command: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the run ends by itself")
        .unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_segments_merge_into_the_summary_of_one_run() {
    const CONNECTIONS: usize = 1000;
    let server = TestServer::start(Kind::TASKS_LEAN, &[]);
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    // Started one after the other, they ramp together from --start-at.
    let start_at = unix_now() + 3.0;
    let files: Vec<_> = (0..3)
        .map(|index| dir.path().join(format!("segment-{index}.json")))
        .collect();
    let runs: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(index, json)| {
            let mut command = wsscale();
            command
                .args(["load", "--url", &url, "--connections", &CONNECTIONS.to_string()])
                .args(["--segment", &format!("{index}/3"), "--start-at", &start_at.to_string()])
                .args(["--hold", "2s", "--ping-interval", "500ms", "--json"])
                .arg(json);
            if index == 2 {
                // A segment may itself be sharded into child processes.
                command.args(["--max-per-process", "200"]);
            }
            tokio::spawn(async move { finish(&mut command).await })
        })
        .collect();
    server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(60),
        )
        .await;
    for run in runs {
        let output = run.await.unwrap();
        assert!(output.status.success(), "{}", describe(&output));
    }
    let segments: Vec<Summary> = files.iter().map(|file| read_json::<Summary>(file)).collect();
    // Exact shares: 1000 = 334 + 333 + 333.
    let opened: Vec<u64> = segments.iter().map(|segment| segment.opened).collect();
    assert_eq!(opened, [334, 333, 333]);
    assert_eq!(segments[2].processes, 2, "the sharded segment");
    for segment in &segments {
        assert_eq!(segment.run_id, segments[0].run_id, "one run, one derived id");
        assert!(
            segment.ramp_start_unix >= start_at,
            "{} began before --start-at {start_at}",
            segment.ramp_start_unix
        );
        // Not a second wait, nor a start at the hold's end (loose: the machine may be busy).
        assert!(segment.ramp_start_unix < start_at + 10.0, "{}", segment.ramp_start_unix);
    }

    let merged_json = dir.path().join("merged.json");
    let mut merge = wsscale();
    merge
        .arg("load")
        .arg("merge")
        .args(&files)
        .arg("--json")
        .arg(&merged_json);
    let output = finish(&mut merge).await;
    assert!(output.status.success(), "{}", describe(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("merged segments 0/3 1/3 2/3"), "{table}");
    let merged = read_json::<Summary>(&merged_json);
    assert_eq!(merged.connections, CONNECTIONS);
    assert_eq!(merged.opened, CONNECTIONS as u64);
    assert_eq!(merged.failed, 0);
    assert_eq!(merged.closed_cleanly, CONNECTIONS as u64);
    assert_eq!(merged.processes, 4);
    assert_eq!(merged.source_ips, 3, "one address of its own per segment");
    assert_eq!(merged.segment, None);
    // The ramp spans the earliest start to the latest end.
    let earliest = segments.iter().map(|s| s.ramp_start_unix).fold(f64::INFINITY, f64::min);
    let latest = segments.iter().map(|s| s.ramp_end_unix).fold(0.0, f64::max);
    assert_eq!((merged.ramp_start_unix, merged.ramp_end_unix), (earliest, latest));
    // Percentiles are those of the segments' histograms added, not of their percentiles.
    let mut added = Histograms::default();
    for segment in &segments {
        added.add(&segment.histograms);
    }
    assert_eq!(merged.histograms, added);
    assert_eq!(merged.connect_ms, Percentiles::of(&added.connect_us));
    assert_eq!(merged.ping_rtt_ms, Percentiles::of(&added.ping_rtt_us));
    assert_eq!(merged.connect_ms.count, CONNECTIONS as u64);
    assert_eq!(
        merged.ping_rtt_ms.count,
        segments.iter().map(|s| s.ping_rtt_ms.count).sum::<u64>()
    );
    let metrics = server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        metrics.value("wsscale_connections_opened_total", &[]),
        CONNECTIONS as f64
    );

    // The same segment twice, or a segment of another run, is refused by name.
    let mut twice = wsscale();
    twice.args(["load", "merge"]).args([&files[0], &files[1], &files[1]]);
    let output = finish(&mut twice).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("both segment 1/3"), "{stderr}");
    let mut other_run = read_json::<Summary>(&files[1]);
    other_run.run_id = "another-run".into();
    let other_file = dir.path().join("other.json");
    std::fs::write(&other_file, serde_json::to_string(&other_run).unwrap()).unwrap();
    let mut mixed = wsscale();
    mixed.args(["load", "merge"]).args([&files[0], &other_file]);
    let output = finish(&mut mixed).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("different runs") && stderr.contains("other.json"),
        "{stderr}"
    );
}

/// What a pod of an Indexed Job with `completions: 3` gets: JOB_COMPLETION_INDEX from
/// Kubernetes, the rest from the Job's env. No flag at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_pod_opens_exactly_its_share_from_the_environment() {
    let server = TestServer::start(Kind::TASKS_LEAN, &[]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let mut pod = wsscale();
    pod.env_clear()
        .arg("load")
        .env("JOB_COMPLETION_INDEX", "1")
        .env("WSSCALE_LOAD_SEGMENTS", "3")
        .env("WSSCALE_LOAD_URL", server.url())
        .env("WSSCALE_LOAD_CONNECTIONS", "1000")
        .env("WSSCALE_LOAD_HOLD", "1s")
        .env("WSSCALE_LOAD_PING_INTERVAL", "0s")
        .env("WSSCALE_LOAD_JSON", &json);
    let output = finish(&mut pod).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = read_json::<Summary>(&json);
    assert_eq!(summary.segment.map(|s| s.to_string()), Some("1/3".into()));
    assert_eq!(summary.connections, 333);
    assert_eq!(summary.opened, 333);
    assert_eq!(summary.closed_cleanly, 333);
    let metrics = server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        metrics.value("wsscale_connections_opened_total", &[]),
        333.0,
        "the server saw exactly this segment's share"
    );
}
