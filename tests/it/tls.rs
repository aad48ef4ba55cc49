//! wss:// bad input, in every mode with every engine: a plain HTTP client on the TLS
//! port, a garbage or truncated ClientHello, a ClientHello sent a byte a second, a client
//! that leaves mid-handshake, garbage and alerts mid-session, and hundreds of stalled
//! handshakes beside real clients. Each is counted by reason, ends within
//! --handshake-timeout, holds no permit, thread or buffer afterwards, and disturbs no
//! other client. And a certificate or key that cannot be used stops the server at start,
//! naming the file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::support::{Kind, Metrics, TestServer, assert_echo, eventually, http_exchange, trusting};

crate::every_server_over_tls!(
    bad_handshakes_are_counted_by_reason_and_leave_nothing_behind,
    garbage_mid_session_ends_that_connection_alone,
    stalled_client_hellos_hold_no_permit,
);

/// The first `len` bytes of a real ClientHello for `cert`'s server.
fn client_hello_start(cert: &Path, len: usize) -> Vec<u8> {
    let mut client = rustls::ClientConnection::new(trusting(cert), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert!(hello.len() > len, "a ClientHello is {} bytes", hello.len());
    hello.truncate(len);
    hello
}

/// Reads until the server closes; true if it did within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The idle server's heap and threads, once no connection or handshake is left.
async fn idle(server: &TestServer) -> Metrics {
    server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(20))
        .await;
    server
        .wait_for_metric("wsscale_handshakes_in_flight", &[], 0.0, Duration::from_secs(20))
        .await
}

async fn bad_handshakes_are_counted_by_reason_and_leave_nothing_behind(kind: Kind) {
    let server = TestServer::start(kind, &["--handshake-timeout", "2s"]);
    let cert = server.cert.clone().expect("a wss server names its certificate");
    // One ordinary connection first, so what the first one warms up once is not counted
    // as left behind.
    let mut first = server.connect().await;
    assert_echo(&mut first, "before").await;
    first.close(None).await.unwrap();
    let before = idle(&server).await;
    let heap_before = before.value("wsscale_heap_allocated_bytes", &[]);
    let threads_before = before.value("process_threads", &[]);
    let mut good = server.connect().await;
    let started = Instant::now();

    // Plain HTTP on the TLS port: a plain 400 that says why.
    let (status, response) = crate::support::http_get(server.ws_addr, "/ws", &[]).await;
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("speaks TLS"), "{response}");
    // Garbage where the ClientHello should be: an alert, then the server closes.
    let mut garbage = TcpStream::connect(server.ws_addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    assert!(
        closed_within(&mut garbage, Duration::from_secs(5)).await,
        "{kind}: garbage ClientHello"
    );
    // A client that leaves halfway through its ClientHello.
    let mut leaving = TcpStream::connect(server.ws_addr).await.unwrap();
    leaving.write_all(&client_hello_start(&cert, 40)).await.unwrap();
    drop(leaving);
    // A ClientHello a byte a second: cut at the handshake timeout.
    let hello = client_hello_start(&cert, 100);
    let mut slow = TcpStream::connect(server.ws_addr).await.unwrap();
    let slow_started = Instant::now();
    let mut sent = 0;
    let cut = eventually(Duration::from_secs(20), "the slow ClientHello cut", async || {
        // The next byte once a second has passed since the last one.
        if sent < hello.len() && slow_started.elapsed() >= Duration::from_secs(sent as u64) {
            if slow.write_all(&hello[sent..=sent]).await.is_err() {
                return Ok(slow_started.elapsed());
            }
            sent += 1;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(slow_started.elapsed()),
            _ => Err(format!(
                "still open after {:?}, {sent} bytes sent",
                slow_started.elapsed()
            )),
        }
    })
    .await;
    assert!(
        cut < Duration::from_secs(10),
        "{kind}: cut after {cut:?}, --handshake-timeout is 2s"
    );

    // Every reason counted, and the ordinary client never noticed.
    assert_echo(&mut good, "during").await;
    let metrics = server
        .wait_for_metric(
            "wsscale_tls_handshake_failures_total",
            &[("reason", "timeout")],
            1.0,
            Duration::from_secs(10),
        )
        .await;
    for (reason, count) in [("plain_http", 1.0), ("protocol", 1.0), ("eof", 1.0)] {
        assert_eq!(
            metrics.value("wsscale_tls_handshake_failures_total", &[("reason", reason)]),
            count,
            "{kind}: {reason}"
        );
    }
    assert_eq!(
        metrics.value("wsscale_connections_rejected_total", &[("reason", "tls")]),
        3.0
    );
    assert_eq!(
        metrics.value("wsscale_connections_rejected_total", &[("reason", "handshake_timeout")]),
        1.0
    );
    assert_eq!(
        metrics.value("wsscale_tls_handshake_duration_seconds_count", &[]),
        2.0,
        "{kind}: the two ordinary handshakes are timed, the failed ones are not"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Nothing held afterwards: no permit, no thread, the heap back within 5 %.
    good.close(None).await.unwrap();
    while let Some(Ok(_)) = good.next().await {}
    idle(&server).await;
    let after = eventually(
        Duration::from_secs(20),
        format_args!("{kind}: threads back"),
        async || {
            let metrics = server.metrics().await;
            let threads = metrics.value("process_threads", &[]);
            if threads == threads_before {
                Ok(metrics)
            } else {
                Err(format!("{threads} threads, {threads_before} before"))
            }
        },
    )
    .await;
    let heap_after = after.value("wsscale_heap_allocated_bytes", &[]);
    assert!(
        heap_after <= heap_before * 1.05,
        "{kind}: heap {heap_before} B before the bad handshakes, {heap_after} B after"
    );
    let mut again = server.connect().await;
    assert_echo(&mut again, "after").await;
}

async fn garbage_mid_session_ends_that_connection_alone(kind: Kind) {
    let server = TestServer::start(kind, &[]);
    let mut bystander = server.connect().await;
    for injected in [
        // Not a TLS record at all.
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        // A plaintext fatal alert (handshake_failure) where only encrypted records may come.
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28][..],
    ] {
        let mut victim = server.connect().await;
        assert_echo(&mut victim, "before").await;
        let Either::Right(tls) = victim.get_mut() else {
            panic!("a wss client")
        };
        tls.get_mut().0.write_all(injected).await.unwrap();
        // The server drops the connection (an alert, then close) without a WebSocket
        // close; the client sees an error or the end of the stream.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match victim.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the server ends the connection");
        assert!(!matches!(ended, Some(Ok(_))), "{kind}: {ended:?}");
        assert_echo(&mut bystander, "unharmed").await;
    }
    server
        .wait_for_metric(
            "wsscale_connections_closed_total",
            &[("reason", "error")],
            2.0,
            Duration::from_secs(10),
        )
        .await;
}

async fn stalled_client_hellos_hold_no_permit(kind: Kind) {
    const STALLED: usize = 300;
    const CAP: usize = 100;
    let server = TestServer::start(
        kind,
        &["--max-connections", &CAP.to_string(), "--handshake-timeout", "60s"],
    );
    let cert = server.cert.clone().unwrap();
    let hello = client_hello_start(&cert, 60);
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(server.ws_addr).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        stalled.push(stream);
    }
    server
        .wait_for_metric(
            "wsscale_handshakes_in_flight",
            &[],
            STALLED as f64,
            Duration::from_secs(30),
        )
        .await;
    // The stalled handshakes hold no connection permit: every real client upgrades.
    let mut real = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        real.push(server.connect().await);
    }
    for (i, client) in real.iter_mut().enumerate() {
        assert_echo(client, &format!("real {i}")).await;
    }
    // The next one is over the cap: a 503, inside TLS.
    match server.try_connect().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("{kind}: expected 503 past the cap, got {other:?}"),
    }
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("wsscale_connections_active", &[]), CAP as f64);
    let threads = metrics.value("process_threads", &[]);
    if kind.mode == "threads" {
        // The runtime's thread, the sampler, and one per connection: none for a handshake.
        assert_eq!(threads, (CAP + 2) as f64, "{kind}: a stalled handshake holds no thread");
    }
}

/// A certificate or key that cannot be used: exit status 2, and the message names the
/// file and what is wrong.
#[test]
fn a_bad_certificate_or_key_stops_the_server_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (args, expected) in [
        (
            vec![
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                garbage.to_str().unwrap(),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--tls-cert",
                garbage.to_str().unwrap(),
                "--tls-key",
                garbage.to_str().unwrap(),
            ],
            "garbage.pem",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wsscale"))
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "no start line: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    // --tls-cert without --tls-key is a usage error too.
    let output = Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args(["serve", "--tls-cert", garbage.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key"));
}

/// A raw HTTP exchange is plain: on the TLS port it is refused in plain words.
#[tokio::test]
async fn a_ws_client_on_the_wss_port_is_told_why() {
    let server = TestServer::start(
        Kind {
            scheme: "wss",
            ..Kind::TASKS_LEAN
        },
        &[],
    );
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (status, response) = http_exchange(server.ws_addr, upgrade).await;
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("wss://"), "{response}");
}
