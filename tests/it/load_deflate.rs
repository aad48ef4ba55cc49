//! `wsscale load --offer-deflate` against the real server: the lean engine in each
//! `--deflate` mode (off declines; stateless, context at 15 and at 10 accept), the stock
//! engine (declines), over ws:// and wss://. The summary records the offer and each
//! answer; echoes of compressible and incompressible messages come back inflated (and a
//! relay that counts the bytes on the wire shows that the compressible ones went
//! compressed both ways); pushes arrive inflated, every one, in order; connections lost
//! to a restart come back and negotiate again; a bad offer is refused before anything
//! starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::load::{describe, interrupt, load};
use crate::support::{Kind, TestServer, body, eventually, http_get, http_post, wait_for_metric_at};

const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
const STATELESS: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const CONNECTIONS: u64 = 4;
/// The generator's messages: large enough that compression shows in the byte counts.
const MESSAGE_BYTES: u64 = 4096;

/// A TCP relay in front of a server that counts the bytes each way: what a connection's
/// frames take on the wire, compressed or not.
struct CountingRelay {
    addr: SocketAddr,
    /// Generator to server, server to generator.
    counts: Arc<[AtomicU64; 2]>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    async fn start(server: SocketAddr) -> CountingRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<[AtomicU64; 2]> = Arc::default();
        let task = tokio::spawn({
            let counts = counts.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let counts = counts.clone();
                    tokio::spawn(async move {
                        let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = upstream.into_split();
                        let up = relay(client_read, server_write, &counts[0]);
                        let down = relay(server_read, client_write, &counts[1]);
                        tokio::join!(up, down);
                    });
                }
            }
        });
        CountingRelay { addr, counts, task }
    }

    /// The bytes relayed so far: generator to server, server to generator.
    fn counts(&self) -> (u64, u64) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, count: &AtomicU64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 || to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// A short run (2 s) with messages every 50 ms of `content`, offering `offer`; its summary.
async fn run_with_messages(server: &TestServer, offer: &str, content: &str, extra: &[&str]) -> Value {
    run_to(&server.url(), offer, content, extra).await
}

/// [`run_with_messages`] through a [`CountingRelay`]: its summary, and the bytes the
/// connections sent and received on the wire.
async fn run_counted(server: &TestServer, offer: &str, content: &str) -> (Value, u64, u64) {
    let relay = CountingRelay::start(server.ws_addr).await;
    let summary = run_to(&format!("ws://{}/ws", relay.addr), offer, content, &[]).await;
    let (sent, received) = relay.counts();
    (summary, sent, received)
}

async fn run_to(url: &str, offer: &str, content: &str, extra: &[&str]) -> Value {
    let offer = format!("--offer-deflate={offer}");
    let mut args = vec![
        "--url",
        url,
        "--connections",
        "4",
        "--hold",
        "2s",
        "--ping-interval",
        "200ms",
        "--message-interval",
        "50ms",
        "--message-size",
        "4096B",
        "--message-content",
        content,
        &offer,
    ];
    args.extend_from_slice(extra);
    let (output, summary) = load(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    summary.expect("summary written")
}

/// Every connection opened, held, got its echoes and pongs, and closed cleanly; the
/// summary's `deflate` says `accepted` (with that answer) or declined.
fn assert_held_and_echoed(summary: &Value, offer: &str, answer: Option<&str>, what: &str) -> u64 {
    assert_eq!(summary["opened"], CONNECTIONS, "{what}: {summary:#}");
    assert_eq!(summary["lost_during_hold"], 0, "{what}: {summary:#}");
    assert_eq!(summary["closed_cleanly"], CONNECTIONS, "{what}: {summary:#}");
    assert!(
        summary["ping_rtt_ms"]["count"].as_u64().unwrap() >= CONNECTIONS,
        "{what}: {summary:#}"
    );
    // 2 s of messages every 50 ms: at least one echo each; how many more depends on how
    // busy the machine is (an unoptimised zlib-rs takes milliseconds on 4 KiB of noise).
    let echoed = summary["messages_echoed"].as_u64().unwrap();
    assert!(echoed >= CONNECTIONS, "{what}: {summary:#}");
    let deflate = &summary["deflate"];
    assert_eq!(deflate["offered"], offer, "{what}: {summary:#}");
    match answer {
        Some(answer) => {
            assert_eq!(deflate["accepted"], CONNECTIONS, "{what}: {summary:#}");
            assert_eq!(deflate["declined"], 0, "{what}: {summary:#}");
            assert_eq!(deflate["answers"], serde_json::json!({ answer: CONNECTIONS }), "{what}");
        }
        None => {
            assert_eq!(deflate["accepted"], 0, "{what}: {summary:#}");
            assert_eq!(deflate["declined"], CONNECTIONS, "{what}: {summary:#}");
            assert_eq!(deflate["answers"], serde_json::json!({}), "{what}");
        }
    }
    echoed
}

/// The lean engine in each mode, with the browser's offer and with one that asks for
/// more: the answer in the summary; compressible messages go compressed both ways (the
/// server reads and writes a fraction of what the echoes carry), incompressible ones
/// come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_negotiates_each_lean_deflate_mode_and_echoes() {
    let custom = "permessage-deflate; client_no_context_takeover; server_max_window_bits=10";
    for (flags, offer, answer) in [
        (&["--deflate", "off"][..], BROWSER_OFFER, None),
        (&["--deflate", "stateless"][..], BROWSER_OFFER, Some(STATELESS)),
        (
            &["--deflate", "context"][..],
            BROWSER_OFFER,
            Some("permessage-deflate; client_max_window_bits=15"),
        ),
        (
            &["--deflate", "context", "--deflate-window-bits", "10"][..],
            BROWSER_OFFER,
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            &["--deflate", "stateless"][..],
            custom,
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10",
            ),
        ),
        (
            &["--deflate", "context", "--deflate-window-bits", "10"][..],
            custom,
            Some(custom),
        ),
        // The lean engine cannot deflate with a window of 8: it declines, and the
        // connections run uncompressed.
        (
            &["--deflate", "context"][..],
            "permessage-deflate; server_max_window_bits=8",
            None,
        ),
    ] {
        let what = format!("{flags:?} offered {offer:?}");
        let server = TestServer::start(Kind::TASKS_LEAN, flags);
        let (summary, sent, received) = run_counted(&server, offer, "repeated").await;
        let echoed = assert_held_and_echoed(&summary, offer, answer, &what);
        let carried = echoed * MESSAGE_BYTES;
        if answer.is_some() {
            assert!(
                sent < carried / 10 && received < carried / 10,
                "{what}: compressible messages compressed both ways: {sent} bytes sent and {received} received \
                 for {echoed} echoes of {MESSAGE_BYTES}"
            );
            let (summary, _, received) = run_counted(&server, offer, "random").await;
            let echoed = assert_held_and_echoed(&summary, offer, answer, &format!("{what}, random"));
            assert!(
                received >= echoed * MESSAGE_BYTES,
                "{what}: incompressible echoes whole: {received} bytes received for {echoed} echoes"
            );
        } else {
            assert!(
                sent >= carried && received >= carried,
                "{what}: declined, so uncompressed: {sent} bytes sent and {received} received for {echoed} echoes \
                 of {MESSAGE_BYTES}"
            );
        }
    }
}

/// The stock engine cannot compress: it declines, and the run goes on uncompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_engine_declines_and_the_run_still_works() {
    let server = TestServer::start(Kind::ws("tasks", "tungstenite"), &[]);
    let summary = run_with_messages(&server, BROWSER_OFFER, "random", &[]).await;
    assert_held_and_echoed(&summary, BROWSER_OFFER, None, "stock engine");
}

/// A sharded run: every shard offers (the flag reaches them), and the parent's summary
/// adds up their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_offers() {
    let server = TestServer::start(Kind::TASKS_LEAN, &["--deflate", "stateless"]);
    let summary = run_with_messages(&server, BROWSER_OFFER, "repeated", &["--max-per-process", "2"]).await;
    assert_eq!(summary["processes"], 2, "{summary:#}");
    assert_held_and_echoed(&summary, BROWSER_OFFER, Some(STATELESS), "two shards");
}

/// Over wss://, against both engines: the lean one accepts, the stock one declines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offer_works_over_tls() {
    for (engine, answer) in [("lean", Some(STATELESS)), ("tungstenite", None)] {
        let kind = Kind {
            mode: "tasks",
            engine,
            scheme: "wss",
        };
        let flags: &[&str] = if answer.is_some() {
            &["--deflate", "stateless"]
        } else {
            &[]
        };
        let server = TestServer::start(kind, flags);
        let cert = server.cert.clone().unwrap();
        let ca = cert.to_str().unwrap();
        let summary = run_with_messages(&server, BROWSER_OFFER, "repeated", &["--tls-ca", ca]).await;
        assert_held_and_echoed(&summary, BROWSER_OFFER, answer, &format!("{kind}"));
        assert_eq!(summary["tls_ms"]["count"], CONNECTIONS, "{summary:#}");
    }
}

/// Broadcasts to connections that negotiated deflate arrive inflated: every one on every
/// connection (the delivery count), none missed and in order (sequence numbers), while
/// the connections echo their own messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_arrive_inflated_and_in_order_in_each_mode() {
    const BROADCASTS: u64 = 6;
    for flags in [
        &["--deflate", "stateless"][..],
        &["--deflate", "context", "--deflate-window-bits", "10"][..],
    ] {
        let mut server_flags = vec!["--allow-broadcast"];
        server_flags.extend_from_slice(flags);
        let server = TestServer::start(Kind::TASKS_LEAN, &server_flags);
        let loadgen_metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let json: PathBuf = dir.path().join("summary.json");
        let load = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
            .args(["load", "--url", &server.url(), "--connections", "4", "--hold", "10m"])
            .args([
                "--message-interval",
                "100ms",
                "--message-size",
                "1000B",
                "--offer-deflate",
            ])
            .args(["--metrics-listen", &loadgen_metrics.to_string(), "--json"])
            .arg(&json)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for_all_open(&server).await;
        for _ in 0..BROADCASTS {
            let (status, body) = http_post(server.metrics_addr, "/broadcast?size=3000").await;
            assert_eq!(status, 200, "{body}");
        }
        wait_for_metric_at(
            loadgen_metrics,
            "wsscale_loadgen_push_delivery_seconds_count",
            &[],
            (CONNECTIONS * BROADCASTS) as f64,
            Duration::from_secs(30),
            "the load generator",
        )
        .await;
        // The live page's JSON says what was negotiated too; and the connections' own
        // messages (every 100 ms) come back between the pushes.
        let live: Value = eventually(Duration::from_secs(30), "an echo on every connection", async || {
            let (status, response) = http_get(loadgen_metrics, "/api/live", &[]).await;
            assert_eq!(status, 200, "{response}");
            let live: Value = serde_json::from_str(body(&response)).unwrap();
            if live["messages_echoed_total"].as_u64().unwrap_or(0) >= CONNECTIONS {
                Ok(live)
            } else {
                Err(format!("{live:#}"))
            }
        })
        .await;
        assert_eq!(live["deflate"]["offered"], BROWSER_OFFER, "{live:#}");
        assert_eq!(live["deflate"]["accepted"], CONNECTIONS, "{live:#}");
        let (_, summary) = interrupt(load, &json).await;
        let what = format!("{flags:?}");
        assert_eq!(
            summary["push_delivery_ms"]["count"],
            CONNECTIONS * BROADCASTS,
            "{what}: {summary:#}"
        );
        assert_eq!(summary["push_missed"], 0, "{what}: {summary:#}");
        assert_eq!(summary["lost_during_hold"], 0, "{what}: {summary:#}");
        assert_eq!(summary["closed_cleanly"], CONNECTIONS, "{what}: {summary:#}");
        assert_eq!(summary["deflate"]["accepted"], CONNECTIONS, "{what}: {summary:#}");
        assert!(
            summary["messages_echoed"].as_u64().unwrap() >= CONNECTIONS,
            "{what}: {summary:#}"
        );
    }
}

/// A bad --offer-deflate value is refused before any connection, saying what is wrong.
#[tokio::test]
async fn a_bad_offer_is_refused_with_the_reason() {
    for (value, says) in [
        ("deflate", "must start with `permessage-deflate`"),
        (
            "permessage-deflate; client_max_window_bits=8",
            "zlib cannot compress with a window of 8",
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            "window bits are 8 to 15",
        ),
        ("permessage-deflate; nonsense", "unknown parameter \"nonsense\""),
    ] {
        let (output, summary) = load(&[
            "--url",
            "ws://127.0.0.1:9/ws",
            "--no-reachability-check",
            &format!("--offer-deflate={value}"),
        ])
        .await;
        assert_eq!(output.status.code(), Some(2), "{value}: {}", describe(&output));
        assert!(summary.is_none());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--offer-deflate") && stderr.contains(says),
            "{value}: {stderr}"
        );
    }
}

/// A server that stops closes every connection with 1001, through yawc's side of the close
/// handshake; with --reconnect each comes back to the restarted server, negotiates again
/// (a reconnection is one more upgrade in `deflate`) and closes cleanly at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnected_connections_negotiate_again() {
    let flags = ["--deflate", "context", "--deflate-window-bits", "10"];
    let mut server = TestServer::start(Kind::TASKS_LEAN, &flags);
    let listen = server.ws_addr;
    let loadgen_metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let load = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args(["load", "--url", &server.url(), "--connections", "4", "--hold", "10m"])
        .args(["--reconnect", "--message-interval", "100ms", "--offer-deflate"])
        .args(["--metrics-listen", &loadgen_metrics.to_string(), "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_all_open(&server).await;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let restarted = TestServer::start_at(Kind::TASKS_LEAN, listen, &flags);
    wait_for_all_open(&restarted).await;
    wait_for_metric_at(
        loadgen_metrics,
        "wsscale_loadgen_reconnects_total",
        &[],
        CONNECTIONS as f64,
        Duration::from_secs(30),
        "the load generator",
    )
    .await;
    let (_, summary) = interrupt(load, &json).await;
    assert_eq!(summary["lost"]["close_1001"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["reconnected"], CONNECTIONS, "{summary:#}");
    assert_eq!(summary["closed_cleanly"], CONNECTIONS, "{summary:#}");
    let answer = "permessage-deflate; client_max_window_bits=10";
    assert_eq!(
        summary["deflate"]["answers"],
        serde_json::json!({ answer: 2 * CONNECTIONS }),
        "{summary:#}"
    );
    assert_eq!(summary["deflate"]["declined"], 0, "{summary:#}");
}

async fn wait_for_all_open(server: &TestServer) {
    server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(30),
        )
        .await;
}
