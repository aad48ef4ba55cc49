//! `wsscale load` over wss:// against real TLS WebSocket servers on 127.0.0.1:0: a
//! tokio-rustls + tokio-tungstenite echo server in this test binary, with a certificate
//! rcgen makes for the test (the server's own `--tls-self-signed` is not used here), and
//! the Node `ws` and Python `websockets` peers serving TLS with `--cert`/`--key` (OpenSSL's
//! TLS, not rustls').
//! Trust (`--tls-ca`, `--tls-insecure`, neither), the TLS handshake histogram in the
//! summary and the generator's /metrics, failures by cause, shards, segments and merge,
//! and `--reconnect` across a restart on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsscale_loadgen::Summary;
use wsscale_loadgen::stats::Histograms;

use crate::load::{describe, interrupt, load};
use crate::support::{Kind, TestServer, assert_promtool_clean, eventually, read_json, wait_for_metric_at};

/// A certificate and its key, and the certificate's PEM file (what `--tls-ca` is given).
struct TestCertificate {
    certificate: CertificateDer<'static>,
    key_der: Vec<u8>,
    pem_path: PathBuf,
    key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCertificate {
    /// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses).
    fn new(names: &[&str]) -> TestCertificate {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&pem_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
        TestCertificate {
            certificate: cert.der().clone(),
            key_der: signing_key.serialize_der(),
            pem_path,
            key_path,
            _dir: dir,
        }
    }

    fn pem(&self) -> &str {
        self.pem_path.to_str().unwrap()
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::try_from(self.key_der.clone()).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// What the echo server saw.
#[derive(Default)]
struct Counts {
    tls_failures: AtomicU64,
    open: AtomicU64,
    upgraded: AtomicU64,
    echoed: AtomicU64,
    /// Close frames received from clients (the client closed; the server answered).
    client_closes: AtomicU64,
}

impl Counts {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// A wss:// echo server on 127.0.0.1: tokio-rustls, then tokio-tungstenite. On
/// [`WssEchoServer::restart_away`] every connection gets close 1001, as a server that
/// stops does.
struct WssEchoServer {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl WssEchoServer {
    async fn start(certificate: &TestCertificate) -> WssEchoServer {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), certificate, Arc::default()).await
    }

    async fn start_at(listen: SocketAddr, certificate: &TestCertificate, counts: Arc<Counts>) -> WssEchoServer {
        // tokio sets SO_REUSEADDR: the port of a stopped server can be bound again.
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(certificate.server_config());
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn({
            let (counts, stop, tracker) = (counts.clone(), stop.clone(), tracker.clone());
            async move {
                loop {
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => accepted.unwrap().0,
                    };
                    tracker.spawn(serve(acceptor.clone(), stream, counts.clone(), stop.clone()));
                }
            }
        });
        WssEchoServer {
            addr,
            counts,
            stop,
            tracker,
        }
    }

    fn url(&self) -> String {
        format!("wss://{}/ws", self.addr)
    }

    /// Every connection gets close 1001; the listener closes; returns once every
    /// connection has ended.
    async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(30), self.tracker.wait())
            .await
            .expect("every connection ends after its close 1001");
    }

    async fn wait_open(&self, count: u64, within: Duration) {
        eventually(within, format_args!("{count} open wss connections"), async || {
            let open = Counts::get(&self.counts.open);
            (open == count).then_some(()).ok_or(format!("{open} open"))
        })
        .await;
    }
}

impl Drop for WssEchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One connection: the TLS handshake, the upgrade, then echo until the client closes or
/// the server stops (close 1001).
async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let Ok(tls) = acceptor.accept(stream).await else {
        counts.tls_failures.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let Ok(mut websocket) = tokio_tungstenite::accept_async(tls).await else {
        return;
    };
    counts.upgraded.fetch_add(1, Ordering::SeqCst);
    counts.open.fetch_add(1, Ordering::SeqCst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let away = CloseFrame { code: CloseCode::Away, reason: "restarting".into() };
                let _ = websocket.close(Some(away)).await;
                let drain = async { while let Some(Ok(_)) = websocket.next().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
                break;
            }
            message = websocket.next() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if websocket.send(message).await.is_err() {
                        break;
                    }
                    counts.echoed.fetch_add(1, Ordering::SeqCst);
                }
                // Reading on after it answers the close until the stream ends.
                Some(Ok(Message::Close(_))) => {
                    counts.client_closes.fetch_add(1, Ordering::SeqCst);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    counts.open.fetch_sub(1, Ordering::SeqCst);
}

/// A free port on the loopback address for the generator's /metrics.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `wsscale load ARGS --json JSON` started in the background.
fn spawn_load(args: &[&str], json: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(json)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_wss_connections_trusting_the_servers_certificate() {
    const CONNECTIONS: u64 = 200;
    let certificate = TestCertificate::new(&["localhost", "127.0.0.1"]);
    let server = WssEchoServer::start(&certificate).await;
    let loadgen_metrics = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let load = spawn_load(
        &[
            "--url",
            &server.url(),
            "--tls-ca",
            certificate.pem(),
            "--connections",
            &CONNECTIONS.to_string(),
            "--hold",
            "10m",
            "--ping-interval",
            "500ms",
            "--message-interval",
            "250ms",
            "--metrics-listen",
            &loadgen_metrics.to_string(),
            // Its bare TCP probe would count as a failed handshake at the server.
            "--no-reachability-check",
        ],
        &json,
    );
    server.wait_open(CONNECTIONS, Duration::from_secs(60)).await;
    // The generator publishes its samples and then its totals on each tick, and the
    // server counts a connection before the client has read the 101: wait for each
    // figure on its own, never read one as proof of the other.
    wait_for_metric_at(
        loadgen_metrics,
        "wsscale_loadgen_connections_open",
        &[],
        CONNECTIONS as f64,
        Duration::from_secs(30),
        "the load generator",
    )
    .await;
    let metrics = wait_for_metric_at(
        loadgen_metrics,
        "wsscale_loadgen_tls_handshake_duration_seconds_count",
        &[],
        CONNECTIONS as f64,
        Duration::from_secs(30),
        "the load generator",
    )
    .await;
    assert!(
        metrics
            .get("wsscale_loadgen_tls_handshake_duration_seconds_sum", &[])
            .is_some_and(|sum| sum > 0.0),
        "{}",
        metrics.0
    );
    assert_promtool_clean(&metrics.0);
    // Every connection echoes over TLS.
    eventually(Duration::from_secs(30), "an echo per connection", async || {
        let echoed = Counts::get(&server.counts.echoed);
        (echoed >= 2 * CONNECTIONS)
            .then_some(())
            .ok_or(format!("{echoed} echoed"))
    })
    .await;

    let (output, summary) = interrupt(load, &json).await;
    assert_eq!(summary["opened"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["failed"], 0, "{summary:#}");
    assert_eq!(summary["lost_during_hold"], 0, "{summary:#}");
    assert_eq!(summary["closed_cleanly"], CONNECTIONS, "{summary:#}");
    assert!(
        summary["messages_echoed"].as_u64().unwrap() >= CONNECTIONS,
        "{summary:#}"
    );
    assert!(summary["ping_rtt_ms"]["count"].as_u64().unwrap() > 0, "{summary:#}");
    for latency in ["connect_ms", "tls_ms", "upgrade_ms"] {
        assert_eq!(summary[latency]["count"], CONNECTIONS, "{latency}: {summary:#}");
        assert!(
            summary[latency]["max"].as_f64().unwrap() > 0.0,
            "{latency}: {summary:#}"
        );
    }
    assert!(
        summary["histograms"]["tls_us"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{summary:#}"
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("tls handshake"), "{table}");
    assert!(!stderr(&output).contains("--tls-insecure"), "{}", stderr(&output));
    // The server saw each client's close, and nothing else failed.
    server.wait_open(0, Duration::from_secs(10)).await;
    assert_eq!(Counts::get(&server.counts.client_closes), CONNECTIONS);
    assert_eq!(Counts::get(&server.counts.upgraded), CONNECTIONS);
    assert_eq!(Counts::get(&server.counts.tls_failures), 0);
}

/// `--tls-insecure` connects to a server whose certificate names another host, which
/// `--tls-ca` with that very certificate refuses by name; it says so on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skips_verification_and_warns() {
    let elsewhere = TestCertificate::new(&["example.com"]);
    let server = WssEchoServer::start(&elsewhere).await;
    let url = server.url();
    let (output, summary) = load(&["--url", &url, "--tls-insecure", "--connections", "20", "--hold", "0s"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["opened"], 20, "{summary:#}");
    assert_eq!(summary["closed_cleanly"], 20, "{summary:#}");
    assert_eq!(summary["tls_ms"]["count"], 20, "{summary:#}");
    let stderr = stderr(&output);
    let warnings: Vec<&str> = stderr.lines().filter(|line| line.contains("--tls-insecure")).collect();
    assert_eq!(warnings.len(), 1, "one warning line: {}", describe(&output));
    assert!(warnings[0].contains("not verified"), "{}", warnings[0]);

    let (output, summary) = load(&[
        "--url",
        &url,
        "--tls-ca",
        elsewhere.pem(),
        "--connections",
        "5",
        "--hold",
        "0s",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["opened"], 0, "{summary:#}");
    assert_eq!(summary["failures"]["tls_certificate_name"], 5, "{summary:#}");
}

/// Without --tls-ca, a self-signed server's certificate is unknown: every attempt fails
/// with that cause, and the run says what to do. A plain ws:// server on a wss:// URL
/// fails with `tls_protocol`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_every_attempt_with_its_cause() {
    let certificate = TestCertificate::new(&["localhost", "127.0.0.1"]);
    let server = WssEchoServer::start(&certificate).await;
    // No reachability check: its bare TCP probe would count as one more failed handshake.
    let (output, summary) = load(&[
        "--url",
        &server.url(),
        "--connections",
        "20",
        "--hold",
        "0s",
        "--no-reachability-check",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["opened"], 0, "{summary:#}");
    assert_eq!(summary["failed"], 20, "{summary:#}");
    assert_eq!(
        summary["failures"],
        serde_json::json!({ "tls_certificate_unknown": 20 }),
        "{summary:#}"
    );
    assert_eq!(summary["tls_ms"]["count"], 0, "{summary:#}");
    let stderr = stderr(&output);
    assert!(stderr.contains("UnknownIssuer"), "rustls' own words, once: {stderr}");
    assert!(stderr.contains("hint:") && stderr.contains("--tls-ca"), "{stderr}");
    // The server saw the client reject its certificate, every time.
    eventually(
        Duration::from_secs(10),
        "20 failed handshakes at the server",
        async || {
            let failures = Counts::get(&server.counts.tls_failures);
            (failures == 20).then_some(()).ok_or(format!("{failures}"))
        },
    )
    .await;
    assert_eq!(Counts::get(&server.counts.upgraded), 0);

    let plain = TestServer::start(Kind::TASKS_LEAN, &[]);
    let url = format!("wss://{}/ws", plain.ws_addr);
    let (output, summary) = load(&["--url", &url, "--connections", "10", "--hold", "0s"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary.unwrap();
    assert_eq!(summary["failures"]["tls_protocol"], 10, "{summary:#}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("plain ws://"),
        "{}",
        describe(&output)
    );
}

/// A TLS flag with a ws:// URL, both TLS flags, or a CA file that cannot be read: refused
/// before anything starts, with exit status 2 and the reason.
#[tokio::test]
async fn bad_tls_options_are_refused_at_start() {
    let port = free_addr().port();
    let ws = format!("ws://127.0.0.1:{port}/ws");
    let wss = format!("wss://127.0.0.1:{port}/ws");
    for (args, expected) in [
        (vec!["--url", &ws, "--tls-ca", "ca.pem"], "--tls-ca is for wss:// URLs"),
        (
            vec!["--url", &ws, "--tls-insecure"],
            "--tls-insecure is for wss:// URLs",
        ),
        (
            vec!["--url", &wss, "--tls-ca", "ca.pem", "--tls-insecure"],
            "cannot be used with",
        ),
        (
            vec!["--url", &wss, "--tls-ca", "/nonexistent/ca.pem"],
            "--tls-ca /nonexistent/ca.pem: cannot read it",
        ),
    ] {
        let (output, summary) = load(&args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", describe(&output));
        assert!(stderr(&output).contains(expected), "{args:?}: {}", describe(&output));
        assert!(summary.is_none(), "nothing ran");
    }
}

/// Two segments of one wss:// run, one of them sharded into child processes (which trust
/// what their parent does): the merge holds every TLS handshake, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_segments_over_wss_merge_into_one_run() {
    let certificate = TestCertificate::new(&["localhost", "127.0.0.1"]);
    let server = WssEchoServer::start(&certificate).await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..2)
        .map(|index| dir.path().join(format!("segment-{index}.json")))
        .collect();
    let url = server.url();
    let runs: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(index, json)| {
            let segment = format!("{index}/2");
            let mut args = vec![
                "--url",
                &url,
                "--tls-ca",
                certificate.pem(),
                "--connections",
                "300",
                "--segment",
                &segment,
                "--hold",
                "1s",
            ];
            if index == 0 {
                args.extend(["--max-per-process", "50"]);
            }
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"));
            command
                .arg("load")
                .args(args)
                .arg("--json")
                .arg(json)
                .env("RUST_LOG", "warn")
                .kill_on_drop(true);
            async move { tokio::time::timeout(Duration::from_secs(120), command.output()).await }
        })
        .collect();
    for output in futures_util::future::join_all(runs).await {
        let output = output.expect("a segment ends by itself").unwrap();
        assert!(output.status.success(), "{}", describe(&output));
    }
    let segments: Vec<Summary> = files.iter().map(|file| read_json::<Summary>(file)).collect();
    assert_eq!(segments[0].processes, 3, "150 connections, 50 per shard");
    assert_eq!(segments[0].run_id, segments[1].run_id);
    for segment in &segments {
        assert_eq!((segment.opened, segment.failed), (150, 0));
        assert_eq!(segment.tls_ms.count, 150, "every shard's TLS handshakes");
    }
    let merged_json = dir.path().join("merged.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args(["load", "merge"])
        .args(&files)
        .arg("--json")
        .arg(&merged_json)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("tls handshake"));
    let merged = read_json::<Summary>(&merged_json);
    let mut added = Histograms::default();
    for segment in &segments {
        added.add(&segment.histograms);
    }
    assert_eq!(merged.histograms, added);
    assert_eq!(merged.tls_ms, wsscale_loadgen::report::Percentiles::of(&added.tls_us));
    assert_eq!(
        (merged.opened, merged.closed_cleanly, merged.tls_ms.count),
        (300, 300, 300)
    );
    assert_eq!(merged.processes, 4);
    server.wait_open(0, Duration::from_secs(10)).await;
    assert_eq!(Counts::get(&server.counts.client_closes), 300);
}

/// `--reconnect` over wss://: the server sends every client 1001 and stops, and a new one
/// (same certificate) listens on the same port: every connection is back, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_over_wss_after_the_server_restarts_on_the_same_port() {
    const CONNECTIONS: u64 = 100;
    let certificate = TestCertificate::new(&["localhost", "127.0.0.1"]);
    let server = WssEchoServer::start(&certificate).await;
    let loadgen_metrics = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let load = spawn_load(
        &[
            "--url",
            &format!("wss://localhost:{}/ws", server.addr.port()),
            "--tls-ca",
            certificate.pem(),
            "--connections",
            &CONNECTIONS.to_string(),
            "--reconnect",
            "--hold",
            "10m",
            "--ping-interval",
            "1s",
            "--metrics-listen",
            &loadgen_metrics.to_string(),
        ],
        &json,
    );
    server.wait_open(CONNECTIONS, Duration::from_secs(60)).await;
    server.stop().await;
    let restarted = WssEchoServer::start_at(server.addr, &certificate, Arc::default()).await;
    restarted.wait_open(CONNECTIONS, Duration::from_secs(60)).await;
    wait_for_metric_at(
        loadgen_metrics,
        "wsscale_loadgen_reconnects_total",
        &[],
        CONNECTIONS as f64,
        Duration::from_secs(10),
        "the load generator",
    )
    .await;
    let (_, summary) = interrupt(load, &json).await;
    assert_eq!(summary["opened"], CONNECTIONS, "{summary:#}");
    assert_eq!(
        summary["lost"],
        serde_json::json!({ "close_1001": CONNECTIONS }),
        "{summary:#}"
    );
    assert_eq!(summary["reconnected"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["closed_cleanly"], CONNECTIONS, "{summary:#}");
    assert_eq!(
        summary["tls_ms"]["count"], CONNECTIONS,
        "the ramp's handshakes: {summary:#}"
    );
    restarted.wait_open(0, Duration::from_secs(10)).await;
    assert_eq!(Counts::get(&restarted.counts.client_closes), CONNECTIONS);
    assert_eq!(Counts::get(&restarted.counts.tls_failures), 0);
}

/// The Node `ws` peer serves wss:// with `--cert FILE --key FILE` (Node's OpenSSL): the
/// generator trusts it with --tls-ca and echoes over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_ws_peer_serves_wss_with_cert_and_key() {
    peer_serves_wss(
        "node-ws",
        "peers/node-ws/node_modules",
        &["node", "peers/node-ws/server.js"],
    )
    .await;
}

/// The Python `websockets` peer serves wss:// the same way (an `ssl.SSLContext`: Python's
/// OpenSSL binding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_websockets_peer_serves_wss_with_cert_and_key() {
    peer_serves_wss(
        "python-websockets",
        "peers/python-websockets/.venv/bin/python",
        &[
            "peers/python-websockets/.venv/bin/python",
            "peers/python-websockets/server.py",
        ],
    )
    .await;
}

/// Starts the peer `name` (installed when `installed` exists; `command` relative to the
/// repository, as peers/servers.txt writes it) as `COMMAND PORT --cert FILE --key FILE`:
/// its start line says wss://, and 50 generator connections that trust the certificate
/// alone open, echo and close cleanly over TLS.
async fn peer_serves_wss(name: &str, installed: &str, command: &[&str]) {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        repository.join(installed).exists(),
        "the {name} peer is not installed: run peers/install.sh {name} (scripts/test.sh does)"
    );
    let certificate = TestCertificate::new(&["localhost", "127.0.0.1"]);
    let addr = free_addr();
    let mut peer = tokio::process::Command::new(command[0])
        .args(&command[1..])
        .arg(addr.port().to_string())
        .arg("--cert")
        .arg(&certificate.pem_path)
        .arg("--key")
        .arg(&certificate.key_path)
        .current_dir(repository)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its start line says it listens.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(peer.stderr.take().unwrap()));
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{name} starts"))
        .unwrap()
        .unwrap_or_default();
    assert_eq!(first, format!("{name} listening wss://{addr}/ws"));
    let (output, summary) = load(&[
        "--url",
        &format!("wss://{addr}/ws"),
        "--tls-ca",
        certificate.pem(),
        "--connections",
        "50",
        "--hold",
        "1s",
        "--message-interval",
        "200ms",
    ])
    .await;
    assert!(output.status.success(), "{name}: {}", describe(&output));
    let summary: Value = summary.unwrap();
    assert_eq!(summary["opened"], 50, "{name}: {summary:#}");
    assert_eq!(summary["closed_cleanly"], 50, "{name}: {summary:#}");
    assert_eq!(summary["tls_ms"]["count"], 50, "{name}: {summary:#}");
    assert!(
        summary["messages_echoed"].as_u64().unwrap() >= 50,
        "{name}: {summary:#}"
    );
    peer.kill().await.unwrap();
}
