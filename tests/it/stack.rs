//! The stack users open in a browser, proven here without Docker or Grafana: the compose
//! file against the compose specification, the Prometheus configuration with promtool,
//! the dashboard's model, and every panel query against a real Prometheus scraping a real
//! server in each mode and a real load run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wsscale::child::ServeChild;
use yaml_rust2::{Yaml, YamlLoader};

const DATASOURCE_UID: &str = "wsscale-prometheus";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove(0)
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("dashboards/wsscale.json")).unwrap())
        .expect("the dashboard is well-formed JSON")
}

/// Runs a checker that must be installed (.ci/run installs it) and must pass.
fn must_pass(program: &str, args: &[&str], install_hint: &str) {
    let output = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} is required ({install_hint}): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_file_is_valid_and_everything_it_mounts_exists() {
    must_pass(
        "check-jsonschema",
        &["--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        "pip install check-jsonschema",
    );
    let compose = yaml(&root().join("docker-compose.yml"));
    let services = compose["services"].as_hash().expect("services");
    let mut mounts = 0;
    for (name, service) in services {
        if let Some(context) = service["build"].as_str() {
            assert!(
                root().join(context).join("Dockerfile").is_file(),
                "{name:?} builds from {context} without a Dockerfile"
            );
        }
        for volume in service["volumes"].as_vec().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    root().join(source).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
                mounts += 1;
            }
        }
    }
    assert!(
        mounts >= 3,
        "the Prometheus config, the provisioning and the dashboard are mounted"
    );
    for service in ["server-tasks", "server-threads", "loadgen", "prometheus", "grafana"] {
        assert!(!compose["services"][service].is_badvalue(), "no {service} service");
    }
    assert_eq!(
        compose["services"]["loadgen"]["profiles"][0].as_str(),
        Some("load"),
        "`up` does not start a load run"
    );
}

#[test]
fn prometheus_configuration_passes_promtool() {
    must_pass(
        "promtool",
        &["check", "config", "dashboards/prometheus.yml"],
        "Debian package prometheus",
    );
}

#[test]
fn dashboard_model_is_consistent_with_its_provisioning() {
    let datasources = yaml(&root().join("dashboards/provisioning/datasources/prometheus.yml"));
    assert_eq!(datasources["datasources"][0]["uid"].as_str(), Some(DATASOURCE_UID));
    let providers = yaml(&root().join("dashboards/provisioning/dashboards/wsscale.yml"));
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );

    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id in {title}"
        );
        assert_eq!(panel["datasource"]["uid"], DATASOURCE_UID, "{title}");
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(!unit.is_empty(), "{title} has no unit");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], DATASOURCE_UID, "{title}");
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["mode", "instance"]);
}

/// Every (panel title, refId, expression) of the dashboard, variables substituted.
fn panel_queries(substitutions: &[(&str, &str)]) -> Vec<(String, String, String)> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let mut expr = target["expr"].as_str().unwrap().to_owned();
            for (variable, value) in substitutions {
                expr = expr.replace(variable, value);
            }
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["refId"].as_str().unwrap().to_owned(),
                expr,
            ));
        }
    }
    queries
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_json(url: &str, query: &[(&str, &str)]) -> Option<Value> {
    let mut request = ureq::get(url);
    for (key, value) in query {
        request = request.query(*key, *value);
    }
    let body = request.call().ok()?.body_mut().read_to_string().ok()?;
    serde_json::from_str(&body).ok()
}

/// Polls until `check` returns Some, or panics with `what` after `within`.
fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let program = Path::new(env!("CARGO_BIN_EXE_wsscale"));
    let tasks = ServeChild::spawn(program, "tasks", ["--ping-interval", "1s"], Stdio::inherit()).unwrap();
    let threads = ServeChild::spawn(program, "threads", ["--ping-interval", "1s"], Stdio::inherit()).unwrap();
    // Slow ramps, so handshakes are still happening while the queries run; both bounded.
    let loadgen_metrics = format!("127.0.0.1:{}", free_port());
    let load = |url: String, metrics: Option<&str>| {
        let mut command = Command::new(program);
        command.args([
            "load",
            "--url",
            &url,
            "--connections",
            "400",
            "--rate",
            "10",
            "--hold",
            "10s",
        ]);
        command
            .args(["--ping-interval", "500ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(addr) = metrics {
            command.args(["--metrics-listen", addr]);
        }
        Running(command.spawn().unwrap())
    };
    let _load_tasks = load(tasks.url(), Some(&loadgen_metrics));
    let _load_threads = load(threads.url(), None);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wsscale\n    \
             static_configs:\n      - targets: [\"{}\", \"{}\"]\n  - job_name: wsscale-loadgen\n    static_configs:\n      \
             - targets: [\"{loadgen_metrics}\"]\n",
            tasks.metrics_addr, threads.metrics_addr
        ),
    )
    .unwrap();
    let prometheus_addr = format!("127.0.0.1:{}", free_port());
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is required (Debian package prometheus; .ci/run installs it)"),
    );
    let api = format!("http://{prometheus_addr}/api/v1");
    eventually(Duration::from_secs(60), "all three targets up", || {
        let targets = get_json(&format!("{api}/targets"), &[])?;
        let active = targets["data"]["activeTargets"].as_array()?;
        (active.len() == 3 && active.iter().all(|t| t["health"] == "up")).then_some(())
    });

    // Template variables take the values Grafana would give them: every mode and every
    // instance (multi-value "All" becomes a regex), a rate interval of 4 scrapes.
    let instances = format!("{}|{}", tasks.metrics_addr, threads.metrics_addr);
    let queries = panel_queries(&[
        ("$mode", "tasks|threads"),
        ("$instance", &instances),
        ("$__rate_interval", "4s"),
        ("$__interval", "1s"),
    ]);

    // promtool parses every expression (as recording rules).
    let rules: String = queries
        .iter()
        .enumerate()
        .map(|(i, (_, _, expr))| {
            format!(
                "      - record: dashboard_query_{i}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            )
        })
        .collect();
    let rules_file = dir.path().join("rules.yml");
    std::fs::write(
        &rules_file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    must_pass(
        "promtool",
        &["check", "rules", rules_file.to_str().unwrap()],
        "Debian package prometheus",
    );

    let mut report = String::from("panel | query | first series | value\n");
    for (title, ref_id, expr) in &queries {
        let (series, value) = eventually(
            Duration::from_secs(45),
            &format!("data for {title} {ref_id}: {expr}"),
            || {
                let answer = get_json(&format!("{api}/query"), &[("query", expr)])?;
                assert_eq!(answer["status"], "success", "{expr}: {answer}");
                let result = answer["data"]["result"].as_array()?;
                result.iter().find_map(|series| {
                    let value: f64 = series["value"][1].as_str()?.parse().ok()?;
                    (!value.is_nan()).then(|| (series["metric"].to_string(), value))
                })
            },
        );
        report.push_str(&format!("{title} | {ref_id} | {series} | {value}\n"));
    }
    // The values, for whoever reads the test log (cargo test -- --nocapture).
    println!("{report}");
}
