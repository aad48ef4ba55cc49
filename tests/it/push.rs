//! Server push: every held connection gets every broadcast once and in order, a peer
//! that does not read is bounded and delays nobody, a broadcast meets the shutdown drain
//! cleanly, and the endpoint refuses what it should. Latency figures are benchmarks
//! (`wsscale compare --push`), not tests.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, Kind, TestServer, eventually, http_post, read_json};

crate::lean_stacks!(
    every_connection_gets_every_broadcast_once_in_order,
    a_peer_that_does_not_read_is_bounded_and_delays_nobody,
    a_broadcast_meets_the_drain_cleanly,
    push_interval_pushes_on_its_own,
);

/// The sequence number of a push (`WSSP`, seq, send time, padding); None for anything else.
fn push_seq(message: &Message) -> Option<u64> {
    let Message::Binary(payload) = message else { return None };
    (payload.len() >= 20 && payload[..4] == *b"WSSP").then(|| u64::from_be_bytes(payload[4..12].try_into().unwrap()))
}

/// Reads until `count` pushes have arrived; returns their sequence numbers in order.
async fn pushes(client: &mut Client, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), client.next())
            .await
            .expect("the pushes arrive")
            .expect("the connection stays open")
            .unwrap();
        seqs.extend(push_seq(&message));
    }
    seqs
}

async fn every_connection_gets_every_broadcast_once_in_order(kind: Kind) {
    const CONNECTIONS: usize = 2000;
    const BROADCASTS: u64 = 5;
    let server = TestServer::start(kind, &["--allow-broadcast"]);
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(server.connect().await);
    }
    server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(30),
        )
        .await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let seqs = pushes(&mut client, BROADCASTS as usize).await;
                (seqs, client)
            })
        })
        .collect();
    for seq in 1..=BROADCASTS {
        let (status, body) = http_post(server.metrics_addr, "/broadcast?size=64").await;
        assert_eq!(status, 200, "{body}");
        let posted: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(posted["seq"], seq, "{body}");
        assert_eq!(posted["connections"], CONNECTIONS, "{body}");
    }
    let mut held = Vec::new();
    for reader in readers {
        let (seqs, client) = reader.await.unwrap();
        assert_eq!(
            seqs,
            (1..=BROADCASTS).collect::<Vec<_>>(),
            "{kind}: once each, in order"
        );
        held.push(client);
    }
    let metrics = server
        .wait_for_metric(
            "wsscale_broadcast_duration_seconds_count",
            &[],
            BROADCASTS as f64,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(metrics.value("wsscale_broadcasts_total", &[]), BROADCASTS as f64);
    assert_eq!(
        metrics.value("wsscale_messages_sent_total", &[]),
        (BROADCASTS as usize * CONNECTIONS) as f64
    );
    assert_eq!(metrics.value("wsscale_pushes_dropped_total", &[]), 0.0);
}

async fn a_peer_that_does_not_read_is_bounded_and_delays_nobody(kind: Kind) {
    const READERS: usize = 10;
    const BROADCASTS: usize = 20;
    const PUSH: usize = 512 * 1024;
    let server = TestServer::start(
        kind,
        &[
            "--allow-broadcast",
            "--max-message-size",
            "1MiB",
            "--write-buffer-size",
            "1MiB",
        ],
    );
    let idle_heap = server.metrics().await.value("wsscale_heap_allocated_bytes", &[]);
    // A peer with a tiny receive buffer that never reads: the server's queue for it fills.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.ws_addr).await.unwrap();
    let io = crate::support::open_over(&server.url(), server.cert.as_deref(), stream)
        .await
        .unwrap();
    let (_stuck, _) = tokio_tungstenite::client_async(server.url(), io).await.unwrap();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (url, cert) = (server.url(), server.cert.clone());
            tokio::spawn(async move {
                let (mut client, _) = crate::support::connect_to(&url, cert.as_deref()).await.unwrap();
                pushes(&mut client, BROADCASTS).await
            })
        })
        .collect();
    server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            (READERS + 1) as f64,
            Duration::from_secs(10),
        )
        .await;
    for _ in 0..BROADCASTS {
        let (status, body) = http_post(server.metrics_addr, &format!("/broadcast?size={PUSH}")).await;
        assert_eq!(status, 200, "{body}");
    }
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            (1..=BROADCASTS as u64).collect::<Vec<_>>(),
            "{kind}: the readers get everything while one peer does not read"
        );
    }
    let metrics = server
        .wait_for_metric(
            "wsscale_broadcast_duration_seconds_count",
            &[],
            BROADCASTS as f64,
            Duration::from_secs(10),
        )
        .await;
    let dropped = metrics.value("wsscale_pushes_dropped_total", &[]);
    assert!(
        dropped > 0.0,
        "{kind}: 10 MiB of pushes cannot all wait for a peer that does not read"
    );
    // What waits for the stuck peer is bounded by --write-buffer-size (1 MiB + a frame
    // header), plus the buffers being lent and the ring of pushes (20 x 512 KiB).
    let heap = metrics.value("wsscale_heap_allocated_bytes", &[]);
    let bound = idle_heap + (2 << 20) as f64 + (BROADCASTS * PUSH) as f64 + (1 << 20) as f64;
    assert!(heap < bound, "{kind}: heap {heap} with a stuck peer, bound {bound}");
}

async fn a_broadcast_meets_the_drain_cleanly(kind: Kind) {
    let mut server = TestServer::start(kind, &["--allow-broadcast", "--drain-timeout", "3s"]);
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(server.connect().await);
    }
    // A peer that never answers the close keeps the drain going.
    let _silent = server.connect().await;
    let (status, body) = http_post(server.metrics_addr, "/broadcast").await;
    assert_eq!(status, 200, "{body}");
    server.signal(libc::SIGTERM);
    // Each reader gets the push before the 1001, or the 1001 alone; nothing else.
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                loop {
                    match client.next().await {
                        Some(Ok(Message::Close(frame))) => return (seqs, frame.map(|frame| frame.code)),
                        Some(Ok(message)) => seqs.extend(push_seq(&message)),
                        other => panic!("expected the push or a close, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    for reader in readers {
        let (seqs, code) = reader.await.unwrap();
        assert_eq!(code, Some(CloseCode::Away), "{kind}");
        assert!(seqs.is_empty() || seqs == [1], "{kind}: {seqs:?}");
    }
    // While the drain waits for the silent peer, a broadcast is refused with a reason.
    let (status, body) = eventually(
        Duration::from_secs(10),
        "a broadcast refused while draining",
        async || match http_post(server.metrics_addr, "/broadcast").await {
            (200, body) => Err(format!("200 {body}")),
            refused => Ok(refused),
        },
    )
    .await;
    assert_eq!(status, 503, "{kind}: {body}");
    assert!(body.contains("shutting down"), "{body}");
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success(), "{kind}: {status:?}");
}

async fn push_interval_pushes_on_its_own(kind: Kind) {
    let server = TestServer::start(kind, &["--push-interval", "100ms", "--push-size", "24B"]);
    let mut client = server.connect().await;
    let seqs = pushes(&mut client, 3).await;
    assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "{kind}: {seqs:?}");
    let (status, body) = http_post(server.metrics_addr, "/broadcast").await;
    assert_eq!(status, 403, "no --allow-broadcast: {body}");
    assert!(body.contains("--allow-broadcast"), "{body}");
}

#[tokio::test]
async fn the_broadcast_endpoint_says_why_it_refuses() {
    let stock = TestServer::start(Kind::ws("tasks", "tungstenite"), &["--allow-broadcast"]);
    let (status, body) = http_post(stock.metrics_addr, "/broadcast").await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("lean engine"), "{body}");
    let lean = TestServer::start(Kind::TASKS_LEAN, &["--allow-broadcast"]);
    for (size, status) in [("8", 400), ("1MiB", 400), ("many", 400), ("1KiB", 200)] {
        let (got, body) = http_post(lean.metrics_addr, &format!("/broadcast?size={size}")).await;
        assert_eq!(got, status, "size={size}: {body}");
    }
}

/// The load generator tells pushes from echoes and measures their delivery.
#[tokio::test]
async fn the_load_generator_measures_push_delivery() {
    let server = TestServer::start(Kind::TASKS_LEAN, &["--push-interval", "200ms"]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args(["load", "--url", &server.url(), "--connections", "50", "--hold", "2s"])
        .args(["--message-interval", "500ms", "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = read_json(&json);
    let delivered = summary["push_delivery_ms"]["count"].as_u64().unwrap();
    assert!(
        delivered >= 50 * 5,
        "2 s of pushes every 200 ms to 50 connections: {summary:#}"
    );
    assert_eq!(summary["push_missed"], 0, "{summary:#}");
    assert!(
        summary["push_delivery_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{summary:#}"
    );
    // Echoes of the generator's own messages are counted apart from pushes.
    let echoed = summary["messages_echoed"].as_u64().unwrap();
    assert!((50..=50 * 5).contains(&echoed), "{summary:#}");
}
