//! The stack users open in a browser, proven here without Docker or Grafana: the compose
//! file against the compose specification, the Prometheus configuration with promtool,
//! the dashboard's model, and every panel query against a real Prometheus scraping a real
//! server in each mode and a real load run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wsscale::child::ServeChild;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::eventually_blocking;

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
        // A draining server answers 503: anything but 200 takes it out.
        assert!(section.contains("http-check expect status 200"), "{section}");
        count += 1;
    }
    assert_eq!(count, balancer_backends(&config).len());

    // A connection attempt that fails (a replica gone) is retried, on another replica.
    let retries: u32 = setting("retries ").parse().unwrap();
    assert!(retries >= 1, "retries {retries}");
    assert_eq!(setting("option redispatch"), "1", "every retry on another replica");
    assert!(setting("retry-on ").split_whitespace().any(|w| w == "conn-failure"));

    // Two descriptors per proxied connection: the global maxconn fits the fd limit compose
    // gives `lb`, with room for listeners, checks and logs.
    let maxconn: u64 = setting("maxconn ").parse().unwrap();
    let nofile = compose()["services"]["lb"]["ulimits"]["nofile"]["soft"]
        .as_i64()
        .unwrap() as u64;
    assert!(
        2 * maxconn + 100 <= nofile,
        "maxconn {maxconn} needs {} descriptors; lb has {nofile}",
        2 * maxconn + 100
    );
}

/// How long HAProxy may take to mark a replica down once its /healthz answers 503, from
/// haproxy.cfg's `default-server` (`inter`, `fastinter`, `fall`) and `timeout check`: the
/// next regular check, then `fall - 1` checks at the transition's pace, and `timeout
/// check` for the check in flight (a draining replica answers its 503 at once).
pub fn balancer_takes_a_replica_out_within(config: &str) -> Duration {
    let default_server: Vec<&str> = config
        .lines()
        .find_map(|line| line.trim().strip_prefix("default-server "))
        .expect("a default-server line")
        .split_whitespace()
        .collect();
    let option = |name: &str| -> &str {
        let at = default_server
            .iter()
            .position(|word| *word == name)
            .unwrap_or_else(|| panic!("default-server sets no {name}"));
        default_server[at + 1]
    };
    let duration = |text: &str| -> Duration { text.parse::<humantime::Duration>().unwrap().into() };
    let inter = duration(option("inter"));
    let fastinter = duration(option("fastinter"));
    let fall: u32 = option("fall").parse().unwrap();
    let timeout_check = config
        .lines()
        .find_map(|line| line.trim().strip_prefix("timeout check "))
        .map_or(inter, |value| duration(value.trim()));
    inter + fastinter * (fall - 1) + timeout_check
}

/// Every `wsscale serve` service of compose drains before Docker's SIGKILL
/// (`stop_grace_period` covers the drain delay, the drain timeout and a margin), and
/// every one behind the balancer keeps accepting until the balancer has taken it out
/// (its drain delay exceeds the time HAProxy's checks take to mark it down): a rolling
/// `docker compose up` loses no client (docs/fleet.md measures it).
#[test]
fn compose_servers_drain_as_the_balancer_follows() {
    let compose = compose();
    let config = std::fs::read_to_string(root().join("deploy/haproxy/haproxy.cfg")).unwrap();
    let takes_out = balancer_takes_a_replica_out_within(&config);
    assert!(takes_out <= Duration::from_secs(5), "{takes_out:?}");
    let behind: BTreeSet<String> = balancer_backends(&config)
        .into_iter()
        .map(|(_, host, _)| host)
        .collect();
    let duration = |text: &str| -> Duration { text.parse::<humantime::Duration>().unwrap().into() };
    let mut servers = 0;
    for (name, service) in services(&compose).filter(|(_, s)| s["command"][0].as_str() == Some("serve")) {
        let delay = service_env(service, "WSSCALE_DRAIN_DELAY").map_or(Duration::ZERO, duration);
        let drain = duration(
            service_env(service, "WSSCALE_DRAIN_TIMEOUT")
                .unwrap_or_else(|| panic!("{name} sets WSSCALE_DRAIN_TIMEOUT")),
        );
        // Docker's default is 10 s: as long as the drain timeout alone.
        let grace = service["stop_grace_period"]
            .as_str()
            .map_or(Duration::from_secs(10), duration);
        assert!(
            grace >= delay + drain + Duration::from_secs(5),
            "{name}: stop_grace_period {grace:?} < drain delay {delay:?} + drain timeout {drain:?} + 5s"
        );
        if behind.contains(name) {
            assert!(
                delay > takes_out,
                "{name}: WSSCALE_DRAIN_DELAY {delay:?} does not outlast the {takes_out:?} HAProxy takes to mark it down"
            );
        }
        servers += 1;
    }
    assert_eq!(servers, 3);
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

/// The filter every server selector of the dashboard carries: the four variables.
const SERVER_FILTER: &str = r#"{mode=~"$mode", engine=~"$engine", scheme=~"$scheme", instance=~"$instance"}"#;

/// The TLS panels' selectors narrow the filter to wss:// servers (a ws:// server's TLS
/// series are zeros that say nothing).
const TLS_FILTER: &str =
    r#"{mode=~"$mode", engine=~"$engine", scheme=~"$scheme", instance=~"$instance", scheme="wss"}"#;

/// The metric names an expression selects (`wsscale_…` and `process_…`), each with the
/// text that follows it.
fn selectors(expr: &str) -> Vec<(&str, &str)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    for prefix in ["wsscale_", "process_"] {
        for (start, _) in expr.match_indices(prefix) {
            if expr[..start].chars().next_back().is_some_and(is_name) {
                continue;
            }
            let end = expr[start..]
                .find(|c: char| !is_name(c))
                .map_or(expr.len(), |n| start + n);
            found.push((&expr[start..end], &expr[end..]));
        }
    }
    found
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
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title} does not say what a reader sees"
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], DATASOURCE_UID, "{title}");
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.is_empty(), "{title}");
            let selected = selectors(expr);
            assert!(!selected.is_empty(), "{title}: {expr}");
            for (name, after) in selected {
                if name.starts_with("wsscale_loadgen_") {
                    // The generator's series carry no mode, engine or server instance.
                    assert!(!after.starts_with('{'), "{title}: {name} filtered: {expr}");
                } else if name.starts_with("wsscale_tls_") {
                    assert!(
                        after.starts_with(TLS_FILTER),
                        "{title}: {name} is not filtered by every variable and to wss: {expr}"
                    );
                } else {
                    assert!(
                        after.starts_with(SERVER_FILTER),
                        "{title}: {name} is not filtered by every variable: {expr}"
                    );
                }
            }
            // A server line per mode, engine and scheme: ws and wss of one kind apart.
            let server = !expr.contains("wsscale_loadgen_");
            for (start, _) in expr.match_indices(" by (") {
                let labels = expr[start + " by (".len()..].split(')').next().unwrap();
                assert!(
                    !server || labels.contains("mode, engine, scheme"),
                    "{title}: not grouped by scheme: {expr}"
                );
            }
            let legend = target["legendFormat"].as_str().unwrap_or("");
            assert!(
                !legend.contains("{{engine}}") || legend.contains("{{engine}} {{scheme}}"),
                "{title}: the legend names no scheme: {legend}"
            );
            // Quantiles of a fleet come from summed buckets, never from per-instance
            // quantiles: histogram_quantile(q, sum by (le, …) (rate(…_bucket…))).
            for (start, _) in expr.match_indices("histogram_quantile(") {
                let argument = expr[start..].split_once(", ").unwrap().1;
                let server = !argument.contains("wsscale_loadgen_");
                let by = if server {
                    "sum by (le, mode, engine, scheme) (rate("
                } else {
                    "sum by (le) (rate("
                };
                assert!(argument.starts_with(by), "{title}: {expr}");
            }
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["mode", "engine", "scheme", "instance"]);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        assert_eq!(variable["datasource"]["uid"], DATASOURCE_UID);
        assert_eq!(variable["multi"], true);
        assert_eq!(variable["includeAll"], true);
        // No custom "All" value: Grafana then sends every value as a regex, so `.*` never
        // lets series without the label (the generator's) into a server panel.
        assert!(variable["allValue"].is_null());
    }
}

/// One query of a panel, variables substituted.
struct PanelQuery {
    title: String,
    ref_id: String,
    legend: String,
    expr: String,
}

fn substitute(text: &str, substitutions: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (variable, value) in substitutions {
        text = text.replace(variable, value);
    }
    assert!(!text.contains('$'), "unsubstituted variable in {text}");
    text
}

/// Every query of the dashboard, variables substituted.
fn panel_queries(substitutions: &[(&str, &str)]) -> Vec<PanelQuery> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push(PanelQuery {
                title: panel["title"].as_str().unwrap().to_owned(),
                ref_id: target["refId"].as_str().unwrap().to_owned(),
                legend: target["legendFormat"].as_str().unwrap_or("").to_owned(),
                expr: substitute(target["expr"].as_str().unwrap(), substitutions),
            });
        }
    }
    queries
}

/// What Grafana's Prometheus datasource puts in place of a multi-value variable:
/// each value regex-escaped (`prometheusSpecialRegexEscape`: a backslash pair before
/// each special character, as a PromQL string writes one backslash), several values as
/// `(a|b)`.
fn grafana_multi_value(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|value| {
            let mut out = String::new();
            for c in value.chars() {
                match c {
                    '\\' => out.push_str(r"\\\\"),
                    '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                        out.push_str(r"\\");
                        out.push(c);
                    }
                    _ => out.push(c),
                }
            }
            out
        })
        .collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        _ => format!("({})", escaped.join("|")),
    }
}

/// The values of a `label_values(SELECTOR, LABEL)` variable, as Grafana asks Prometheus
/// for them: the label values API, matching SELECTOR (earlier variables substituted),
/// over the dashboard's time range.
fn label_values(api: &str, definition: &str, substitutions: &[(&str, &str)], range: (f64, f64)) -> Vec<String> {
    let inner = definition
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {definition}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let selector = substitute(selector.trim(), substitutions);
    let answer = get_json(
        &format!("{api}/label/{}/values", label.trim()),
        &[
            ("match[]", &selector),
            ("start", &range.0.to_string()),
            ("end", &range.1.to_string()),
        ],
    )
    .unwrap_or_else(|| panic!("label values for {definition}"));
    assert_eq!(answer["status"], "success", "{definition}: {answer}");
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_str().unwrap().to_owned())
        .collect()
}

/// The dashboard's variables at "All", resolved in order (each one's query sees the ones
/// before it), with `chosen` values in place of "All" for the variables it names.
fn resolve_variables(api: &str, range: (f64, f64), chosen: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let dashboard = dashboard();
    let mut resolved: Vec<(String, Vec<String>)> = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        let values = match chosen.iter().find(|(chosen_name, _)| *chosen_name == name) {
            Some((_, value)) => vec![(*value).to_owned()],
            None => {
                let substituted: Vec<(String, String)> = resolved
                    .iter()
                    .map(|(name, values)| (format!("${name}"), grafana_multi_value(values)))
                    .collect();
                let substitutions: Vec<(&str, &str)> =
                    substituted.iter().map(|(v, s)| (v.as_str(), s.as_str())).collect();
                let definition = variable["definition"].as_str().unwrap();
                label_values(api, definition, &substitutions, range)
            }
        };
        assert!(!values.is_empty(), "variable {name} has no value");
        resolved.push((name.to_owned(), values));
    }
    resolved
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
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

/// Prometheus on 127.0.0.1 port 0 with `config`, and its API's base URL (the address it
/// logs once listening).
pub fn start_prometheus(config: &Path, data: &Path) -> (Running, String) {
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus is required (Debian package prometheus; scripts/test.sh installs it)");
    let stderr = BufReader::new(prometheus.stderr.take().unwrap());
    let running = Running(prometheus);
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining the log so Prometheus never blocks on a full pipe.
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("msg=\"Listening on\"")
                && let Some(address) = line.split("address=").nth(1)
            {
                let _ = address_tx.send(address.trim().to_owned());
            }
        }
    });
    let address = address_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Prometheus logs its listening address");
    (running, format!("http://{address}/api/v1"))
}

/// One sample of a process's /metrics, read directly (not through Prometheus).
fn scrape(metrics: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let body = ureq::get(&format!("http://{metrics}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    wsscale::exposition::sample_value(&body, name, labels)
}

/// Every series of an instant query at `time` (UNIX seconds): labels and value.
fn instant(api: &str, expr: &str, time: f64) -> Vec<(Value, f64)> {
    let answer = get_json(&format!("{api}/query"), &[("query", expr), ("time", &time.to_string())])
        .unwrap_or_else(|| panic!("no answer for {expr}"));
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let value = series["value"][1].as_str().unwrap().parse().unwrap();
            (series["metric"].clone(), value)
        })
        .collect()
}

/// The value of the one series of `expr` at `time` whose labels include `labels`.
fn instant_value(api: &str, expr: &str, time: f64, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = instant(api, expr, time)
        .into_iter()
        .filter(|(metric, _)| labels.iter().all(|(key, value)| metric[*key] == *value))
        .map(|(_, value)| value)
        .collect();
    assert_eq!(matching.len(), 1, "{expr} {labels:?} at {time}: {matching:?}");
    matching[0]
}

/// A range query's series: labels and the non-NaN values.
fn range(api: &str, expr: &str, (start, end): (f64, f64)) -> Vec<(Value, Vec<f64>)> {
    let answer = get_json(
        &format!("{api}/query_range"),
        &[
            ("query", expr),
            ("start", &start.to_string()),
            ("end", &end.to_string()),
            ("step", "1"),
        ],
    )
    .unwrap_or_else(|| panic!("no answer for {expr}"));
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let values = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|point| point[1].as_str().unwrap().parse::<f64>().unwrap())
                .filter(|value| !value.is_nan())
                .collect();
            (series["metric"].clone(), values)
        })
        .collect()
}

/// Prometheus's `histogram_quantile` (promql/quantile.go, bucketQuantile) over
/// (upper bound, cumulative count) buckets.
fn bucket_quantile(q: f64, buckets: &BTreeMap<String, f64>) -> f64 {
    let mut buckets: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(le, count)| (le.parse::<f64>().unwrap(), *count))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.last().unwrap().0.is_infinite());
    let mut max = f64::MIN;
    for bucket in &mut buckets {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    let observations = buckets.last().unwrap().1;
    assert!(observations > 0.0);
    let mut rank = q * observations;
    let b = buckets[..buckets.len() - 1]
        .iter()
        .position(|bucket| bucket.1 >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[b - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: the panel says {actual}, the instances add up to {expected}"
    );
}

/// The dashboard against a real Prometheus (Debian's 2.42) scraping a small fleet on
/// loopback: two replicas of one kind (tasks, lean; both pushing every second), a third
/// server of another mode and engine (threads, tungstenite), a wss:// server of the
/// replicas' kind (`--tls-self-signed`), one load run in two segments (`--segment 0/2`,
/// `1/2`, each its own process and metrics endpoint) with `--reconnect` against the
/// first replica, and a wss:// run trusting the wss:// server's certificate (`--tls-ca`).
/// The events some panels need are made to happen: three half-sent handshakes (in
/// flight, then rejected on timeout), a plain HTTP request on the wss:// port (a TLS
/// handshake failure, `plain_http`), a peer that never reads while broadcasts are posted
/// (pushes dropped), and a restart of the first replica on the same port (closes on
/// shutdown, connections lost, the reconnect storm; Prometheus finds the new replica
/// through file-based discovery, as compose's finds replicas through DNS).
///
/// The variables are resolved as Grafana resolves them (label values, chained, "All" as
/// a regex; `scheme` is {ws, wss} and narrows the instances); every panel query is
/// parsed by promtool and returns data over the run, a query whose legend names no
/// instance returns no per-instance series, and a TLS panel shows wss:// servers only.
/// At one evaluation time, representative panels are shown to combine the two replicas
/// (or the generators) and to keep the wss:// server of the same mode and engine apart:
/// sums equal the sum of the per-instance values, the memory per connection is the
/// connection-weighted figure, and a p99 is the quantile of the summed buckets.
#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let began = Instant::now();
    let range_start = unix_now() - 1.0;
    let program = Path::new(env!("CARGO_BIN_EXE_wsscale"));
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let serve = |mode: &str, listen: SocketAddr, args: &[&str]| {
        ServeChild::spawn_at(program, listen, ["--mode", mode].iter().chain(args), |command| {
            command.env("RUST_LOG", "warn");
        })
        .expect("wsscale serve starts")
    };
    const REPLICA: &[&str] = &["--engine", "lean", "--ping-interval", "1s", "--push-interval", "1s"];
    let mut replica_a = serve("tasks", any_port, REPLICA);
    let replica_b_args = [
        REPLICA,
        &[
            "--allow-broadcast",
            "--handshake-timeout",
            "8s",
            "--max-handshakes",
            "64",
        ],
    ]
    .concat();
    let replica_b = serve("tasks", any_port, &replica_b_args);
    let stock = serve(
        "threads",
        any_port,
        &["--engine", "tungstenite", "--ping-interval", "1s"],
    );
    // A wss:// server of the replicas' mode and engine: a line of its own on every panel,
    // and the TLS panels' data.
    let tls = serve(
        "tasks",
        any_port,
        &["--engine", "lean", "--ping-interval", "1s", "--tls-self-signed"],
    );
    let tls_cert = tls
        .start
        .field("cert")
        .expect("a wss:// server names its certificate")
        .to_owned();

    let dir = tempfile::tempdir().unwrap();
    let servers_file = dir.path().join("servers.json");
    let discover = |servers: &[&ServeChild]| {
        let targets: Vec<String> = servers.iter().map(|s| s.metrics_addr.to_string()).collect();
        let staged = dir.path().join("servers.json.new");
        std::fs::write(&staged, serde_json::json!([{ "targets": targets }]).to_string()).unwrap();
        std::fs::rename(&staged, &servers_file).unwrap();
    };
    discover(&[&replica_a, &replica_b, &stock, &tls]);

    // Prometheus scrapes the servers it discovers in `servers_file`, the two segments of
    // the load run (each its own process and metrics endpoint) and the wss:// run.
    const RUN: usize = 200;
    const ON_B: usize = 25;
    const ON_STOCK: usize = 100;
    // A 4 s ramp at 25/s: TLS handshakes in several scrapes.
    const ON_TLS: usize = 100;
    let segment_metrics: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let tls_load_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wsscale\n    \
             file_sd_configs:\n      - files: [\"{}\"]\n        refresh_interval: 1s\n  - job_name: wsscale-loadgen\n    \
             static_configs:\n      - targets: [\"{}\", \"{}\", \"{}\"]\n",
            servers_file.display(),
            segment_metrics[0],
            segment_metrics[1],
            tls_load_metrics
        ),
    )
    .unwrap();
    let (_prometheus, api) = start_prometheus(&config, &dir.path().join("data"));
    let query = |expr: &str| -> Option<f64> {
        let answer = get_json(&format!("{api}/query"), &[("query", expr)])?;
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    eventually_blocking(Duration::from_secs(60), "the servers up in Prometheus", || {
        let targets = get_json(&format!("{api}/targets"), &[])?;
        let active = targets["data"]["activeTargets"].as_array()?;
        let up = active
            .iter()
            .filter(|t| t["labels"]["job"] == "wsscale" && t["health"] == "up");
        (up.count() == 4).then_some(())
    });

    let load = |url: String, connections: usize, extra: &[&str]| {
        Running(
            Command::new(program)
                .args(["load", "--url", &url, "--connections", &connections.to_string()])
                .args(["--rate", "25", "--hold", "120s", "--ping-interval", "500ms"])
                .args(["--message-interval", "1s"])
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // The segments ramp together once Prometheus scrapes them (8 s at 25/s): the panels
    // of the ramp (opening rate, connect and upgrade time) need samples during it.
    let start_at = (unix_now() + 2.0).to_string();
    let _segments: Vec<Running> = segment_metrics
        .iter()
        .enumerate()
        .map(|(index, metrics)| {
            let segment = format!("{index}/2");
            let metrics = metrics.to_string();
            load(
                replica_a.url(),
                RUN,
                &[
                    "--segment",
                    &segment,
                    "--start-at",
                    &start_at,
                    "--reconnect",
                    "--metrics-listen",
                    &metrics,
                ],
            )
        })
        .collect();
    // Few readers on replica b: every broadcast posted there below reaches each of them.
    let _load_b = load(replica_b.url(), ON_B, &[]);
    let _load_stock = load(stock.url(), ON_STOCK, &[]);
    // The wss:// run trusts the server's own certificate, and ramps with the segments.
    let _load_tls = load(
        tls.url(),
        ON_TLS,
        &[
            "--tls-ca",
            &tls_cert,
            "--start-at",
            &start_at,
            "--metrics-listen",
            &tls_load_metrics.to_string(),
        ],
    );

    eventually_blocking(Duration::from_secs(60), "seven targets up", || {
        let targets = get_json(&format!("{api}/targets"), &[])?;
        let active = targets["data"]["activeTargets"].as_array()?;
        (active.len() == 7 && active.iter().all(|t| t["health"] == "up")).then_some(())
    });
    eventually_blocking(Duration::from_secs(60), "every connection open", || {
        let held = |server: &ServeChild| scrape(server.metrics_addr, "wsscale_connections_active", &[]);
        let segments: f64 = segment_metrics
            .iter()
            .map(|m| scrape(*m, "wsscale_loadgen_connections_open", &[]))
            .sum::<Option<f64>>()?;
        (held(&replica_a)? == RUN as f64
            && held(&replica_b)? == ON_B as f64
            && held(&stock)? == ON_STOCK as f64
            && held(&tls)? == ON_TLS as f64
            && segments == RUN as f64
            && scrape(tls_load_metrics, "wsscale_loadgen_connections_open", &[])? == ON_TLS as f64)
            .then_some(())
    });

    // A plain HTTP client on the wss:// port: answered with a plain 400, a failed TLS
    // handshake (plain_http).
    let mut plain = TcpStream::connect(tls.ws_addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /ws HTTP/1.1\r\nHost: wsscale\r\n\r\n").unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    drop(plain);

    // Three clients send half a request head: in flight until the handshake timeout
    // (8 s on replica b), then rejected. Prometheus must see them in flight.
    let half_sent: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(replica_b.ws_addr).unwrap();
            stream.write_all(b"GET /ws HTTP/1.1\r\nHost: wsscale\r\n").unwrap();
            stream
        })
        .collect();
    let in_flight_b = format!(
        "wsscale_handshakes_in_flight{{instance=\"{}\"}}",
        replica_b.metrics_addr
    );
    eventually_blocking(Duration::from_secs(7), "Prometheus sees 3 handshakes in flight", || {
        (query(&in_flight_b)? == 3.0).then_some(())
    });

    // A peer that never reads (a 4 KiB receive buffer) while broadcasts of 60 kB are
    // posted to replica b: its queue fills and pushes are dropped.
    let stuck = stuck_peer(replica_b.ws_addr);
    let posted = std::cell::Cell::new(0);
    let dropped = eventually_blocking(Duration::from_secs(60), "a push dropped", || {
        let url = format!("http://{}/broadcast?size=60000", replica_b.metrics_addr);
        if ureq::post(&url).send_empty().is_ok() {
            posted.set(posted.get() + 1);
        }
        let dropped = scrape(replica_b.metrics_addr, "wsscale_pushes_dropped_total", &[])?;
        (dropped > 0.0).then_some(dropped)
    });

    // Replica a restarts on the same port: close 1001 to every connection, and both
    // segments reconnect. The new process has a new metrics port: discovery follows.
    let listen_a = replica_a.ws_addr;
    let old_a = replica_a.metrics_addr;
    replica_a.signal(libc::SIGTERM).unwrap();
    let exit = replica_a.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        exit.is_some_and(|status| status.success()),
        "replica a drains and exits"
    );
    drop(replica_a);
    let replica_a = serve("tasks", listen_a, REPLICA);
    discover(&[&replica_a, &replica_b, &stock, &tls]);
    let reconnected = eventually_blocking(Duration::from_secs(60), "every connection back", || {
        let reconnects: f64 = segment_metrics
            .iter()
            .map(|m| scrape(*m, "wsscale_loadgen_reconnects_total", &[]))
            .sum::<Option<f64>>()?;
        let held = scrape(replica_a.metrics_addr, "wsscale_connections_active", &[])?;
        (reconnects >= RUN as f64 && held == RUN as f64).then_some(reconnects)
    });
    eventually_blocking(Duration::from_secs(30), "the half-sent handshakes timed out", || {
        let rejected = scrape(
            replica_b.metrics_addr,
            "wsscale_connections_rejected_total",
            &[("reason", "handshake_timeout")],
        )?;
        (rejected == 3.0).then_some(())
    });
    drop(half_sent);
    // Prometheus has the settled fleet, and the new replica long enough for a rate.
    let new_a = replica_a.metrics_addr;
    let b = replica_b.metrics_addr;
    let wss = tls.metrics_addr;
    eventually_blocking(Duration::from_secs(30), "Prometheus has the settled fleet", || {
        let settled = query("sum(wsscale_loadgen_connections_open)")? == (RUN + ON_TLS) as f64
            // Two seconds before the evaluation time, so a step of the range queries
            // (1 s apart) falls after the timeouts' scrape.
            && query(&format!(
                "wsscale_connections_rejected_total{{instance=\"{b}\",reason=\"handshake_timeout\"}} offset 2s"
            ))? == 3.0
            && query(&format!(
                "wsscale_tls_handshake_failures_total{{instance=\"{wss}\",reason=\"plain_http\"}} offset 2s"
            ))? == 1.0
            && query("sum(wsscale_loadgen_reconnects_total)")? >= reconnected
            && query(&format!("wsscale_connections_active{{instance=\"{new_a}\"}}"))? == RUN as f64
            && query(&format!(
                "count_over_time(wsscale_broadcasts_total{{instance=\"{new_a}\"}}[4s])"
            ))? >= 3.0;
        settled.then_some(())
    });
    // One evaluation time for everything below, once every target has been scraped after
    // it: a sample stamped before it can no longer arrive between two queries.
    let time = unix_now();
    eventually_blocking(
        Duration::from_secs(10),
        "a scrape of every target after the evaluation time",
        || (query("min(timestamp(up))")? > time).then_some(()),
    );
    let span = (range_start, time);

    // The variables, as Grafana resolves them at "All": label values, chained.
    let variables = resolve_variables(&api, span, &[]);
    let values_in = |variables: &[(String, Vec<String>)], name: &str| -> BTreeSet<String> {
        variables
            .iter()
            .find(|(variable, _)| variable == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
            .1
            .iter()
            .cloned()
            .collect()
    };
    let values = |name: &str| values_in(&variables, name);
    let addresses =
        |addresses: &[SocketAddr]| -> BTreeSet<String> { addresses.iter().map(SocketAddr::to_string).collect() };
    assert_eq!(values("mode"), BTreeSet::from(["tasks".into(), "threads".into()]));
    assert_eq!(values("engine"), BTreeSet::from(["lean".into(), "tungstenite".into()]));
    assert_eq!(values("scheme"), BTreeSet::from(["ws".into(), "wss".into()]));
    assert_eq!(
        values("instance"),
        addresses(&[old_a, new_a, replica_b.metrics_addr, stock.metrics_addr, wss]),
        "the range holds the replaced replica too"
    );
    let narrowed = resolve_variables(&api, span, &[("mode", "tasks"), ("engine", "lean")]);
    assert_eq!(
        values_in(&narrowed, "scheme"),
        BTreeSet::from(["ws".into(), "wss".into()]),
        "scheme follows mode and engine"
    );
    assert_eq!(
        values_in(&narrowed, "instance"),
        addresses(&[old_a, new_a, replica_b.metrics_addr, wss]),
        "instance follows mode and engine"
    );
    let narrowed = resolve_variables(&api, span, &[("mode", "threads")]);
    assert_eq!(values_in(&narrowed, "scheme"), BTreeSet::from(["ws".into()]));
    let lean_tasks_ws = resolve_variables(&api, span, &[("mode", "tasks"), ("engine", "lean"), ("scheme", "ws")]);
    assert_eq!(
        values_in(&lean_tasks_ws, "instance"),
        addresses(&[old_a, new_a, replica_b.metrics_addr]),
        "instance follows the scheme"
    );
    let only_wss = resolve_variables(&api, span, &[("scheme", "wss")]);
    assert_eq!(
        values_in(&only_wss, "instance"),
        addresses(&[wss]),
        "instance follows the scheme"
    );

    let substituted: Vec<(String, String)> = variables
        .iter()
        .map(|(name, values)| (format!("${name}"), grafana_multi_value(values)))
        .collect();
    let mut substitutions: Vec<(&str, &str)> = substituted.iter().map(|(v, s)| (v.as_str(), s.as_str())).collect();
    // A rate interval of 4 scrapes, as Grafana computes it ($__interval of one step).
    substitutions.extend([("$__rate_interval", "4s"), ("$__interval", "1s")]);
    let queries = panel_queries(&substitutions);

    // promtool parses every expression (as recording rules).
    let rules: String = queries
        .iter()
        .enumerate()
        .map(|(i, query)| {
            format!(
                "      - record: dashboard_query_{i}\n        expr: {}\n",
                serde_json::to_string(&query.expr).unwrap()
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

    // Every query returns data over the run, as a panel's range query would; a query
    // whose legend names no instance aggregates instances away.
    let mut report = String::from("panel | query | series | last value | max\n");
    let mut peaks: BTreeMap<(String, String), Vec<(Value, f64)>> = BTreeMap::new();
    for query in &queries {
        let series = range(&api, &query.expr, span);
        let with_data: Vec<&(Value, Vec<f64>)> = series.iter().filter(|(_, values)| !values.is_empty()).collect();
        assert!(
            !with_data.is_empty(),
            "no data for {} {}: {}",
            query.title,
            query.ref_id,
            query.expr
        );
        let per_instance = query.legend.contains("{{instance}}");
        let tls_only = query.expr.contains("wsscale_tls_");
        for (metric, _) in &series {
            assert!(
                !tls_only || metric["scheme"] == "wss",
                "{} {}: a TLS panel shows {metric}",
                query.title,
                query.ref_id
            );
            assert_eq!(
                metric.get("instance").is_some(),
                per_instance,
                "{} {}: legend {:?}, series {metric}",
                query.title,
                query.ref_id,
                query.legend
            );
        }
        for (metric, values) in with_data {
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            report.push_str(&format!(
                "{} | {} | {metric} | {} | {max}\n",
                query.title,
                query.ref_id,
                values.last().unwrap()
            ));
            peaks
                .entry((query.title.clone(), query.ref_id.clone()))
                .or_default()
                .push((metric.clone(), max));
        }
    }
    // The events made above show on their panels.
    let peak = |title: &str, ref_id: &str, labels: &[(&str, &str)]| -> f64 {
        peaks
            .get(&(title.to_owned(), ref_id.to_owned()))
            .unwrap_or_else(|| panic!("no panel {title} {ref_id}"))
            .iter()
            .filter(|(metric, _)| labels.iter().all(|(key, value)| metric[*key] == *value))
            .map(|(_, max)| *max)
            .fold(f64::NAN, f64::max)
    };
    let tasks_lean = [("mode", "tasks"), ("engine", "lean"), ("scheme", "ws")];
    assert!(peak("Handshakes in flight vs the bound", "A", &tasks_lean) >= 3.0);
    let timed_out = [("mode", "tasks"), ("reason", "handshake_timeout")];
    assert!(
        peak("Rejects by reason", "A", &timed_out) > 0.0,
        "no handshake timeout on its panel:\n{report}"
    );
    assert!(peak("Broadcasts", "A", &tasks_lean) > 0.0);
    assert!(peak("Broadcast duration", "B", &tasks_lean) > 0.0);
    assert!(peak("Pushes dropped", "A", &tasks_lean) > 0.0);
    assert!(peak("Messages", "B", &[("engine", "tungstenite")]) > 0.0);
    assert!(peak("Load generator: push delivery latency", "B", &[]) > 0.0);
    assert!(peak("Load generator: reconnects", "A", &[]) > 0.0);
    assert!(peak("Load generator: reconnect time", "B", &[]) > 0.0);
    assert!(
        peak(
            "Load generator: connections lost during hold",
            "A",
            &[("reason", "close_1001")]
        ) > 0.0
    );
    // wss://: the ramp's TLS handshakes, on both sides, and the plain HTTP client.
    let tasks_lean_wss = [("mode", "tasks"), ("engine", "lean"), ("scheme", "wss")];
    assert!(peak("TLS handshake rate", "A", &tasks_lean_wss) > 0.0);
    assert!(peak("TLS handshake duration", "A", &tasks_lean_wss) > 0.0);
    assert!(peak("TLS handshake duration", "B", &tasks_lean_wss) > 0.0);
    assert!(peak("Load generator: TLS handshake duration", "B", &[]) > 0.0);
    assert!(
        peak(
            "TLS handshake failures by reason",
            "A",
            &[tasks_lean_wss[2], ("reason", "plain_http")]
        ) > 0.0,
        "no plain_http failure on its panel:\n{report}"
    );
    assert!(peak("Rejects by reason", "A", &[tasks_lean_wss[2], ("reason", "tls")]) > 0.0);

    // Aggregation over instances, at one evaluation time: the panel against the
    // per-instance values read from the same Prometheus.
    let find = |title: &str, ref_id: &str| -> &PanelQuery {
        queries
            .iter()
            .find(|q| q.title == title && q.ref_id == ref_id)
            .unwrap_or_else(|| panic!("no panel {title} {ref_id}"))
    };
    let replicas = [new_a.to_string(), replica_b.metrics_addr.to_string()];
    // Every generator Prometheus scrapes: the run's two segments, and the wss:// run.
    let generators: Vec<String> = segment_metrics
        .iter()
        .chain([&tls_load_metrics])
        .map(SocketAddr::to_string)
        .collect();
    let each = |template: &str, instances: &[String]| -> Vec<f64> {
        instances
            .iter()
            .map(|instance| instant_value(&api, &template.replace("INSTANCE", instance), time, &[]))
            .collect()
    };
    let mut proof = String::from("aggregated panel | per-instance values | panel value\n");

    // Sum of a gauge: connections held by both replicas.
    let active = each("wsscale_connections_active{instance=\"INSTANCE\"}", &replicas);
    let panel = instant_value(&api, &find("Active connections", "A").expr, time, &tasks_lean);
    assert_eq!(
        active,
        [RUN as f64, ON_B as f64 + 1.0],
        "the run, and replica b's load and stuck peer"
    );
    assert_close(panel, active.iter().sum(), "Active connections");
    proof.push_str(&format!(
        "Active connections (tasks, lean, ws) | {active:?} | {panel}\n"
    ));
    // The wss:// server of the same mode and engine is a line of its own.
    let panel = instant_value(&api, &find("Active connections", "A").expr, time, &tasks_lean_wss);
    assert_eq!(panel, ON_TLS as f64, "Active connections (tasks, lean, wss)");
    proof.push_str(&format!(
        "Active connections (tasks, lean, wss) | [{ON_TLS}] | {panel}\n"
    ));

    // Sum of each replica's own bound.
    let bounds = each("wsscale_handshakes_max{instance=\"INSTANCE\"}", &replicas);
    let panel = instant_value(
        &api,
        &find("Handshakes in flight vs the bound", "B").expr,
        time,
        &tasks_lean,
    );
    assert_eq!(bounds, [1024.0, 64.0], "the default, and replica b's --max-handshakes");
    assert_close(panel, bounds.iter().sum(), "Handshakes in flight vs the bound");
    proof.push_str(&format!("Handshakes bound (tasks, lean) | {bounds:?} | {panel}\n"));

    // Sum of rates: broadcasts of both replicas. Every tasks-lean instance with samples in
    // the window counts — a's first process too, while its last samples are in it — so
    // the instances are the ones Prometheus has at that time, not a list of ours.
    let rates = each("rate(wsscale_broadcasts_total{instance=\"INSTANCE\"}[4s])", &replicas);
    assert!(rates.iter().all(|rate| *rate > 0.0), "both replicas push: {rates:?}");
    let every_instance: Vec<f64> = instant(
        &api,
        "rate(wsscale_broadcasts_total{mode=\"tasks\", engine=\"lean\", scheme=\"ws\"}[4s])",
        time,
    )
    .into_iter()
    .map(|(_, rate)| rate)
    .collect();
    let panel = instant_value(&api, &find("Broadcasts", "A").expr, time, &tasks_lean);
    assert_close(panel, every_instance.iter().sum(), "Broadcasts");
    proof.push_str(&format!(
        "Broadcasts/s (tasks, lean) | {rates:?} (every instance: {every_instance:?}) | {panel}\n"
    ));

    // Memory per connection: the sum of each replica's delta over the sum of connections.
    let rss = [("source", "rss")];
    let per_connection: Vec<f64> = each(
        "wsscale_memory_per_connection_bytes{instance=\"INSTANCE\", source=\"rss\"}",
        &replicas,
    );
    let weighted = per_connection
        .iter()
        .zip(&active)
        .map(|(bytes, n)| bytes * n)
        .sum::<f64>()
        / active.iter().sum::<f64>();
    let panel = instant_value(
        &api,
        &find("Memory per connection, by source", "A").expr,
        time,
        &[tasks_lean[0], tasks_lean[1], tasks_lean[2], rss[0]],
    );
    assert_close(panel, weighted, "Memory per connection (rss)");
    proof.push_str(&format!(
        "Memory per connection (tasks, lean, rss) | {per_connection:?} B at {active:?} connections (unweighted mean {}) | {panel}\n",
        per_connection.iter().sum::<f64>() / 2.0
    ));

    // Sum over the generators.
    let open = each("wsscale_loadgen_connections_open{instance=\"INSTANCE\"}", &generators);
    let panel = instant_value(&api, &find("Load generator: connections open", "A").expr, time, &[]);
    assert_eq!(
        open,
        [RUN as f64 / 2.0, RUN as f64 / 2.0, ON_TLS as f64],
        "each segment holds its share, and the wss:// run its own"
    );
    assert_close(panel, open.iter().sum(), "Load generator: connections open");
    proof.push_str(&format!("Load generator: connections open | {open:?} | {panel}\n"));

    // A quantile of the runs: histogram_quantile of every generator's summed bucket rates.
    let mut summed: BTreeMap<String, f64> = BTreeMap::new();
    let mut observed = Vec::new();
    for generator in &generators {
        let buckets = instant(
            &api,
            &format!("rate(wsscale_loadgen_ping_rtt_seconds_bucket{{instance=\"{generator}\"}}[4s])"),
            time,
        );
        for (metric, rate) in buckets {
            let le = metric["le"].as_str().unwrap().to_owned();
            if le == "+Inf" {
                observed.push(rate);
            }
            *summed.entry(le).or_default() += rate;
        }
    }
    assert!(
        observed.iter().all(|rate| *rate > 0.0),
        "every generator pings: {observed:?}"
    );
    let expected = bucket_quantile(0.99, &summed);
    let panel = instant_value(&api, &find("Load generator: ping round trip", "C").expr, time, &[]);
    assert_close(panel, expected, "Load generator: ping round trip p99");
    proof.push_str(&format!(
        "Load generator: ping RTT p99 | pings/s {observed:?}, p99 of the summed buckets {expected} | {panel}\n"
    ));

    drop(stuck);
    // The values, for whoever reads the test log (cargo test -- --nocapture).
    let failures: Vec<String> = instant(&api, "sum by (reason) (wsscale_loadgen_reconnect_failures_total)", time)
        .iter()
        .map(|(metric, count)| format!("{} {count}", metric["reason"].as_str().unwrap_or("")))
        .collect();
    println!(
        "{report}\n{proof}\nbroadcasts posted to replica b: {}, pushes dropped: {dropped}, reconnects: {reconnected}, \
         failed reconnection attempts: {failures:?}; {:.1} s\n",
        posted.get(),
        began.elapsed().as_secs_f64()
    );
}

/// A WebSocket client with a 4 KiB receive buffer that upgrades and then never reads.
fn stuck_peer(addr: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(4096)?;
            socket.connect(addr).await?.into_std()
        })
        .unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = stream;
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}
