//! The stack users open in a browser, proven here without Docker or Grafana: the compose
//! file against the compose specification, the Prometheus configuration with promtool,
//! the dashboard's model, and every panel query against a real Prometheus scraping a real
//! server in each mode and a real load run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wsscale::child::ServeChild;
use yaml_rust2::{Yaml, YamlLoader};

const DATASOURCE_UID: &str = "wsscale-prometheus";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn yaml(path: &Path) -> Yaml {
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
pub fn must_pass(program: &str, args: &[&str], install_hint: &str) {
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

/// docker-compose.yml with YAML merge keys (`<<: *anchor`) applied, as compose reads it.
fn compose() -> Yaml {
    fn merge_keys(node: Yaml) -> Yaml {
        match node {
            Yaml::Hash(hash) => {
                let merge = Yaml::String("<<".into());
                let mut merged = yaml_rust2::yaml::Hash::new();
                for (key, value) in hash.iter().filter(|(key, _)| **key != merge) {
                    merged.insert(key.clone(), merge_keys(value.clone()));
                }
                let sources = match hash.get(&merge) {
                    Some(Yaml::Array(sources)) => sources.clone(),
                    Some(source) => vec![source.clone()],
                    None => Vec::new(),
                };
                for source in sources {
                    for (key, value) in source.into_hash().expect("`<<` merges mappings") {
                        merged.entry(key).or_insert_with(|| merge_keys(value));
                    }
                }
                Yaml::Hash(merged)
            }
            Yaml::Array(items) => Yaml::Array(items.into_iter().map(merge_keys).collect()),
            other => other,
        }
    }
    merge_keys(yaml(&root().join("docker-compose.yml")))
}

fn services(compose: &Yaml) -> impl Iterator<Item = (&str, &Yaml)> {
    compose["services"]
        .as_hash()
        .expect("services")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap(), service))
}

/// A service's environment variable (map syntax, as docker-compose.yml writes it).
fn service_env<'a>(service: &'a Yaml, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// The host ports a service publishes at a fixed number (`"8080:8080"`, or `published:`
/// in the long syntax); `"8080"` alone lets Docker pick the host port.
fn fixed_host_ports(service: &Yaml) -> Vec<String> {
    service["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|port| match port {
            Yaml::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                (parts.len() >= 2 && !parts[parts.len() - 2].is_empty()).then(|| short.clone())
            }
            Yaml::Hash(_) => port["published"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| port["published"].as_i64().map(|p| p.to_string())),
            _ => Some(format!("{port:?}")),
        })
        .collect()
}

#[test]
fn compose_file_is_valid_and_everything_it_mounts_exists() {
    must_pass(
        "check-jsonschema",
        &["--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        "pip install check-jsonschema",
    );
    let compose = compose();
    let mut mounts = 0;
    for (name, service) in services(&compose) {
        if let Some(context) = service["build"].as_str() {
            assert!(
                root().join(context).join("Dockerfile").is_file(),
                "{name:?} builds from {context} without a Dockerfile"
            );
        }
        for volume in service["volumes"].as_vec().into_iter().flatten() {
            // Inputs in the short syntax must exist; an output folder is a long-syntax
            // bind that Docker creates.
            if volume["bind"]["create_host_path"].as_bool() == Some(true) {
                continue;
            }
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
        mounts >= 4,
        "the Prometheus config, the provisioning, the dashboard and the balancer's config are mounted"
    );
    for service in [
        "server-tasks",
        "server-threads",
        "server-tungstenite",
        "lb",
        "loadgen-0",
        "loadgen-1",
        "prometheus",
        "grafana",
    ] {
        assert!(!compose["services"][service].is_badvalue(), "no {service} service");
    }
    for (name, service) in services(&compose).filter(|(name, _)| name.starts_with("loadgen")) {
        assert_eq!(
            service["profiles"][0].as_str(),
            Some("load"),
            "`up` does not start {name}"
        );
    }
    let tungstenite = &compose["services"]["server-tungstenite"];
    assert_eq!(service_env(tungstenite, "WSSCALE_ENGINE"), Some("tungstenite"));
    assert_eq!(service_env(tungstenite, "WSSCALE_MODE"), Some("tasks"));
    assert_eq!(fixed_host_ports(tungstenite), ["8082:8080", "9102:9100"]);
}

/// The backends of deploy/haproxy/haproxy.cfg: (backend, `server-template` host, port).
fn balancer_backends(config: &str) -> Vec<(String, String, u16)> {
    let mut backend = String::new();
    let mut found = Vec::new();
    for line in config.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["backend", name, ..] => backend = (*name).to_owned(),
            ["server-template", _prefix, _count, target, ..] => {
                let (host, port) = target.split_once(':').unwrap();
                found.push((backend.clone(), host.to_owned(), port.parse().unwrap()));
            }
            _ => {}
        }
    }
    found
}

/// Scaled servers publish no fixed host port (their replicas would collide on it): the
/// balancer reaches every replica, health-checked on its metrics listener, and
/// Prometheus finds every replica through Docker's DNS.
#[test]
fn scaled_servers_sit_behind_the_balancer_and_publish_no_fixed_port() {
    let compose = compose();
    let config = std::fs::read_to_string(root().join("deploy/haproxy/haproxy.cfg")).unwrap();
    let backends = balancer_backends(&config);
    let scaled: BTreeSet<&str> = services(&compose)
        .filter(|(_, service)| service["deploy"]["replicas"].as_i64().unwrap_or(1) > 1)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(scaled, BTreeSet::from(["server-tasks", "server-threads"]));
    let behind: BTreeSet<&str> = backends.iter().map(|(_, host, _)| host.as_str()).collect();
    assert_eq!(behind, scaled, "the balancer fronts exactly the scaled services");
    let health_port: u16 = config
        .lines()
        .find_map(|line| line.trim().strip_prefix("default-server "))
        .and_then(|options| options.split_whitespace().skip_while(|w| *w != "port").nth(1))
        .expect("default-server checks a port")
        .parse()
        .unwrap();
    for (backend, host, port) in &backends {
        let service = &compose["services"][host.as_str()];
        assert!(
            fixed_host_ports(service).is_empty(),
            "{host} is scaled but publishes {:?}",
            fixed_host_ports(service)
        );
        assert_eq!(
            port_of(service_env(service, "WSSCALE_LISTEN").unwrap()),
            *port,
            "{backend}"
        );
        assert_eq!(
            port_of(service_env(service, "WSSCALE_METRICS_LISTEN").unwrap()),
            health_port,
            "{backend} is health-checked on the metrics listener"
        );
    }
    // The balancer publishes what its frontends bind.
    let published = fixed_host_ports(&compose["services"]["lb"]);
    for line in config.lines().map(str::trim) {
        if let Some(bind) = line.strip_prefix("bind ") {
            let port = port_of(bind.split_whitespace().next().unwrap());
            assert!(
                published.contains(&format!("{port}:{port}")),
                "lb binds {port} but does not publish it: {published:?}"
            );
        }
    }

    // Prometheus: every server and load segment by DNS, on its metrics port.
    let prometheus = yaml(&root().join("dashboards/prometheus.yml"));
    let mut discovered: BTreeMap<String, i64> = BTreeMap::new();
    for job in prometheus["scrape_configs"].as_vec().unwrap() {
        assert!(
            job["static_configs"].is_badvalue(),
            "replicas are found by DNS, not listed"
        );
        for dns in job["dns_sd_configs"].as_vec().unwrap() {
            assert_eq!(dns["type"].as_str(), Some("A"));
            for name in dns["names"].as_vec().unwrap() {
                discovered.insert(name.as_str().unwrap().to_owned(), dns["port"].as_i64().unwrap());
            }
        }
    }
    for (name, service) in services(&compose) {
        let metrics = match service["command"][0].as_str() {
            Some("serve") => service_env(service, "WSSCALE_METRICS_LISTEN"),
            Some("load") => service_env(service, "WSSCALE_LOAD_METRICS_LISTEN"),
            _ => continue,
        };
        assert_eq!(
            discovered.get(name).copied(),
            Some(i64::from(port_of(metrics.unwrap()))),
            "Prometheus does not find {name} on its metrics port"
        );
    }
}

#[test]
fn balancer_configuration_passes_haproxy_check() {
    // -dW: a warning (an unresolvable name without `init-addr none`, say) fails too.
    must_pass(
        "haproxy",
        &["-dW", "-c", "-f", "deploy/haproxy/haproxy.cfg"],
        "Debian package haproxy; .ci/run installs it",
    );
    let config = std::fs::read_to_string(root().join("deploy/haproxy/haproxy.cfg")).unwrap();
    let setting = |name: &str| {
        config
            .lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no `{name}` in haproxy.cfg"))
    };
    // WebSocket: once upgraded, `timeout tunnel` governs; it must outlast the servers'
    // idle timeout so that the servers decide when an idle connection ends.
    let tunnel: Duration = setting("timeout tunnel").parse::<humantime::Duration>().unwrap().into();
    assert!(tunnel > Duration::from_secs(90), "timeout tunnel {tunnel:?}");
    assert_eq!(setting("nameserver"), "dns 127.0.0.11:53", "Docker's embedded DNS");
    assert!(setting("default-server").contains("init-addr none"));
    assert!(setting("default-server").contains("resolvers docker"));
    let backends = config.split("\nbackend ").skip(1);
    let mut count = 0;
    for backend in backends {
        let section = backend.split("\n\n").next().unwrap();
        assert!(section.contains("balance leastconn"), "{section}");
        assert!(section.contains("http-check send meth GET uri /healthz"), "{section}");
        count += 1;
    }
    assert_eq!(count, balancer_backends(&config).len());
}

/// The load segments of compose cover the run exactly once: `I/N` for every I below N,
/// each writing its own summary, all starting at the time given in the shell.
#[test]
fn compose_load_segments_cover_the_run_once() {
    let compose = compose();
    let segments: Vec<(&str, &Yaml)> = services(&compose)
        .filter(|(_, service)| service["command"][0].as_str() == Some("load"))
        .collect();
    let mut indexes = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    for (name, service) in &segments {
        let segment = service_env(service, "WSSCALE_LOAD_SEGMENT").unwrap_or_else(|| panic!("{name}"));
        let (index, count) = segment.split_once('/').unwrap();
        assert_eq!(count.parse::<usize>().unwrap(), segments.len(), "{name}");
        assert_eq!(
            name.strip_prefix("loadgen-"),
            Some(index),
            "{name} runs segment {segment}"
        );
        indexes.insert(index.parse::<usize>().unwrap());
        outputs.insert(service_env(service, "WSSCALE_LOAD_JSON").unwrap().to_owned());
        for passed_through in ["WSSCALE_LOAD_START_AT", "WSSCALE_LOAD_RUN_ID"] {
            let environment = service["environment"].as_hash().unwrap();
            assert!(
                environment.get(&Yaml::String(passed_through.into())) == Some(&Yaml::Null),
                "{name} takes {passed_through} from the shell"
            );
        }
    }
    assert_eq!(indexes, (0..segments.len()).collect(), "every segment once");
    assert_eq!(outputs.len(), segments.len(), "one summary file each");
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
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn get_json(url: &str, query: &[(&str, &str)]) -> Option<Value> {
    let mut request = ureq::get(url);
    for (key, value) in query {
        request = request.query(*key, *value);
    }
    let body = request.call().ok()?.body_mut().read_to_string().ok()?;
    serde_json::from_str(&body).ok()
}

/// Polls until `check` returns Some, or panics with `what` after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
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
