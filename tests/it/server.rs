//! The wire behaviour a client relies on, over ws:// and wss:// in every mode and engine:
//! upgrade and echo, the HTTP answers, capacity, the idle timeout and graceful shutdown.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Kind, TestServer, assert_all_echo, assert_echo, body, http_exchange, http_get};

crate::every_stack!(
    upgrades_and_echoes,
    refuses_past_capacity_and_keeps_serving,
    reaps_silent_peers,
    sigterm_closes_every_connection_with_1001
);

/// The HTTP answers on the plain port (the TLS port's are in tls.rs).
mod plain_http {
    use super::*;

    crate::every_server!(answers_plain_http);

    async fn answers_plain_http(kind: Kind) {
        let server = TestServer::start(kind, &[]);
        let (status, response) = http_get(server.ws_addr, "/elsewhere", &[]).await;
        assert_eq!(status, 404, "{response}");
        let (status, response) = http_get(server.ws_addr, "/ws", &[]).await;
        assert_eq!(status, 426, "{response}");
        assert_eq!(body(&response).lines().count(), 1, "one-line body: {response}");
        let bad_key = [
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: nope",
        ];
        let (status, response) = http_get(server.ws_addr, "/ws", &bad_key).await;
        assert_eq!(status, 400, "{response}");
        let (status, response) = http_exchange(server.ws_addr, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n").await;
        assert_eq!(status, 400, "{response}");
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.value("wsscale_connections_rejected_total", &[("reason", "bad_request")]),
            3.0
        );
        // The server is still healthy for WebSocket clients.
        let mut client = server.connect().await;
        assert_echo(&mut client, "still here").await;
    }
}

async fn upgrades_and_echoes(kind: Kind) {
    let server = TestServer::start(kind, &[]);
    let mut client = server.connect().await;
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::text("hello"));
    let payload: Vec<u8> = (0..=255).collect();
    client.send(Message::binary(payload.clone())).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(payload));
    // A message of exactly the maximum size is echoed whole.
    let big = vec![7u8; 64 * 1024];
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(big));
    client.close(None).await.unwrap();
    // The server completes the close handshake and ends the stream.
    while let Some(Ok(_)) = client.next().await {}
    let metrics = server
        .wait_for_metric(
            "wsscale_connections_closed_total",
            &[("reason", "client_close")],
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(metrics.value("wsscale_messages_received_total", &[]), 3.0);
    assert_eq!(metrics.value("wsscale_messages_sent_total", &[]), 3.0);
    assert_eq!(metrics.value("wsscale_connections_opened_total", &[]), 1.0);
    assert_eq!(metrics.value("wsscale_connections_active", &[]), 0.0);
    assert_eq!(metrics.value("wsscale_handshake_duration_seconds_count", &[]), 1.0);
}

async fn refuses_past_capacity_and_keeps_serving(kind: Kind) {
    let server = TestServer::start(kind, &["--max-connections", "5"]);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(server.connect().await);
    }
    for _ in 0..3 {
        match server.try_connect().await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503)
            }
            other => panic!("expected HTTP 503 at capacity, got {other:?}"),
        }
    }
    assert_all_echo(&mut held).await;
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("wsscale_connections_rejected_total", &[("reason", "capacity")]),
        3.0
    );
    assert_eq!(metrics.value("wsscale_connections_active", &[]), 5.0);
    // A freed permit admits the next client.
    held.pop().unwrap().close(None).await.unwrap();
    server
        .wait_for_metric("wsscale_connections_active", &[], 4.0, Duration::from_secs(5))
        .await;
    server.connect().await;
}

async fn reaps_silent_peers(kind: Kind) {
    let server = TestServer::start(kind, &["--ping-interval", "100ms", "--idle-timeout", "400ms"]);
    // A peer that never reads never answers pings: it is dead to the server.
    let _silent = server.connect().await;
    // A peer that reads answers every ping and stays, well past the idle timeout.
    let mut live = server.connect().await;
    let started = Instant::now();
    let mut pings = 0;
    while pings < 10 {
        match live.next().await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("live peer lost its connection after {:?}: {other:?}", started.elapsed()),
        }
    }
    assert!(
        started.elapsed() > Duration::from_millis(800),
        "ten pings take at least ten intervals"
    );
    let metrics = server
        .wait_for_metric(
            "wsscale_connections_closed_total",
            &[("reason", "idle_timeout")],
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        metrics.value("wsscale_connections_active", &[]),
        1.0,
        "only the silent peer is reaped"
    );
}

async fn sigterm_closes_every_connection_with_1001(kind: Kind) {
    let mut server = TestServer::start(kind, &["--drain-timeout", "5s"]);
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(server.connect().await);
    }
    server
        .wait_for_metric("wsscale_connections_active", &[], 50.0, Duration::from_secs(5))
        .await;
    server.signal(libc::SIGTERM);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                loop {
                    match client.next().await {
                        Some(Ok(Message::Close(frame))) => return frame.map(|frame| frame.code),
                        Some(Ok(_)) => continue,
                        other => panic!("expected a close frame, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(CloseCode::Away));
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
