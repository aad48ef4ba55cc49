//! Hostile clients and bad input: slowloris, malformed frames, floods past capacity,
//! descriptor exhaustion. Each gets the right answer and the server stays healthy for
//! everyone else.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsscale::child::ServeChild;

use crate::support::{Kind, TestServer, assert_all_echo, assert_echo, client_frame, eventually, http_get};

crate::every_server!(
    slowloris_clients_are_cut_at_the_handshake_timeout,
    malformed_frames_fail_the_connection,
    a_flood_past_capacity_gets_only_503s,
    accept_recovers_from_descriptor_exhaustion,
    half_open_clients_hold_no_permit_and_no_thread,
    the_handshake_bound_holds_under_2000_half_open_clients,
);

crate::both_modes!(
    a_client_still_sending_an_oversized_message_reads_its_1009_and_a_clean_end,
    a_failed_connection_lingers_no_longer_than_its_bounds,
);

const SLOW_CLIENTS: usize = 200;

async fn slowloris_clients_are_cut_at_the_handshake_timeout(kind: Kind) {
    let server = TestServer::start(kind, &["--handshake-timeout", "1s"]);
    let addr = server.ws_addr;
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let request = b"GET /ws HTTP/1.1\r\nHost: slow\r\nUpgrade: websocket\r\n";
                // One byte every 50 ms, never finishing: the request would take far
                // longer than the handshake timeout, and never ends anyway.
                for byte in request.iter().cycle() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    let mut probe = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut probe)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(_)) | Err(_) => {}
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(20),
                        "a slow client was never cut"
                    );
                }
                started.elapsed()
            })
        })
        .collect();
    // Meanwhile, ordinary clients connect and echo as usual.
    for i in 0..20 {
        assert_echo(&mut server.connect().await, &format!("normal {i}")).await;
    }
    for task in slow {
        let lasted = task.await.unwrap();
        assert!(
            lasted >= Duration::from_millis(900),
            "cut after {lasted:?}, before the timeout"
        );
    }
    server
        .wait_for_metric(
            "wsscale_connections_rejected_total",
            &[("reason", "handshake_timeout")],
            SLOW_CLIENTS as f64,
            Duration::from_secs(10),
        )
        .await;
}

/// Completes an upgrade by hand; returns the raw socket.
async fn raw_upgrade(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.ws_addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// A masked client frame (FIN set).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(opcode, payload, Some([0x12, 0x34, 0x56, 0x78]))
}

/// Reads server frames until a close frame, and returns its status code; None when the
/// server closes TCP without one.
async fn close_code(stream: &mut (impl AsyncRead + Unpin)) -> Option<u16> {
    let read = async {
        loop {
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).await?;
            let mut len = u64::from(header[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext).await?;
                len = u64::from(u16::from_be_bytes(ext));
            } else if len == 127 {
                let mut ext = [0u8; 8];
                stream.read_exact(&mut ext).await?;
                len = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0u8; len as usize];
            stream.read_exact(&mut payload).await?;
            if header[0] & 0x0f == 0x8 {
                return Ok::<u16, std::io::Error>(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server ends the connection")
    {
        Ok(code) => Some(code),
        Err(error) => {
            assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{error}"
            );
            None
        }
    }
}

async fn malformed_frames_fail_the_connection(kind: Kind) {
    let server = TestServer::start(kind, &["--max-message-size", "1KiB"]);
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "invalid UTF-8 in a text frame",
            frame(0x1, &[0xce, 0xba, 0xff, 0xfe]),
            1007,
        ),
        ("an unmasked client frame", client_frame(0x1, b"hello", None), 1002),
        ("a message above --max-message-size", frame(0x2, &[7u8; 2048]), 1009),
    ];
    for (what, bytes, code) in cases {
        let mut stream = raw_upgrade(&server).await;
        stream.write_all(&bytes).await.unwrap();
        // The lean engine fails the connection with the code RFC 6455 names; stock
        // tungstenite returns an error to the application and sends no close frame, so
        // the connection simply ends (what an axum echo server does).
        let expected = kind.is_lean().then_some(code);
        assert_eq!(close_code(&mut stream).await, expected, "{kind}: {what}");
    }
    let version = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 8",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let (status, response) = http_get(server.ws_addr, "/ws", &version).await;
    assert_eq!(status, 426, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("sec-websocket-version: 13"),
        "{response}"
    );
    // Everyone else is still served.
    let mut client = server.connect().await;
    assert_echo(&mut client, "fine").await;
    let metrics = server
        .wait_for_metric(
            "wsscale_connections_closed_total",
            &[("reason", "error")],
            3.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(metrics.value("wsscale_connections_active", &[]), 1.0);
}

async fn a_flood_past_capacity_gets_only_503s(kind: Kind) {
    let server = TestServer::start(kind, &["--max-connections", "100"]);
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(server.connect().await);
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args([
            "load",
            "--url",
            &server.url(),
            "--connections",
            "300",
            "--rate",
            "0",
            "--hold",
            "0s",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert!(
        table.contains("http_503=300"),
        "every extra client gets a 503 and nothing else:\n{table}"
    );
    assert_all_echo(&mut held).await;
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("wsscale_connections_rejected_total", &[("reason", "capacity")]),
        300.0
    );
    assert_eq!(metrics.value("wsscale_connections_active", &[]), 100.0);
}

/// A server whose `resource` limit (soft and hard) is `limit` from its first instruction.
fn spawn_limited(kind: Kind, args: &[&str], resource: libc::__rlimit_resource_t, limit: u64) -> ServeChild {
    let program = Path::new(env!("CARGO_BIN_EXE_wsscale"));
    ServeChild::spawn(program, kind.args(args), |command| {
        command.env("RUST_LOG", "error");
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    })
    .expect("wsscale serve starts")
}

async fn accept_recovers_from_descriptor_exhaustion(kind: Kind) {
    const FD_LIMIT: u64 = 64;
    // A hard limit of 64 descriptors and a cap the limit cannot honour: accept() meets
    // EMFILE.
    let server = spawn_limited(kind, &["--max-connections", "1000"], libc::RLIMIT_NOFILE, FD_LIMIT);
    let url = server.url();
    let attempts: Vec<_> = (0..FD_LIMIT as usize)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), crate::support::connect_to(&url, None))
                    .await
                    .ok()?
                    .ok()
            })
        })
        .collect();
    let mut held = Vec::new();
    for attempt in attempts {
        if let Some((client, _)) = attempt.await.unwrap() {
            held.push(client);
        }
    }
    assert!(
        !held.is_empty() && held.len() < FD_LIMIT as usize,
        "{} of {FD_LIMIT} opened",
        held.len()
    );
    // Descriptors free up: the server accepts again, and the earlier ones still echo.
    let mut survivor = held.pop().unwrap();
    drop(held);
    let mut client = eventually(
        Duration::from_secs(15),
        format_args!("{kind}: accept to recover"),
        async || match tokio::time::timeout(Duration::from_secs(2), crate::support::connect_to(&url, None)).await {
            Ok(Ok((client, _))) => Ok(client),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 2 s".to_owned()),
        },
    )
    .await;
    assert_echo(&mut client, "recovered").await;
    assert_echo(&mut survivor, "survived").await;
}

crate::servers!(
    [a_refused_thread_is_a_503_and_nothing_else];
    thread_spawn_lean: "threads" "lean" "ws",
    thread_spawn_tungstenite: "threads" "tungstenite" "ws"
);

/// threads mode: a thread the OS refuses is a 503 (counted), never a crash. Refusal is
/// forced with an address-space limit that fits only a few 1 GiB thread stacks.
async fn a_refused_thread_is_a_503_and_nothing_else(kind: Kind) {
    const ADDRESS_SPACE: u64 = 6 << 30;
    let args = ["--thread-stack-size", "1GiB", "--max-connections", "100"];
    let server = spawn_limited(kind, &args, libc::RLIMIT_AS, ADDRESS_SPACE);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match crate::support::connect_to(&server.url(), None).await {
            Ok((client, _)) => held.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(other) => panic!("expected 101 or 503, got {other:?}"),
        }
    }
    assert!(
        !held.is_empty() && refused > 0,
        "{} held, {refused} refused",
        held.len()
    );
    assert_all_echo(&mut held).await;
    let metrics = wsscale::child::http_get_body(server.metrics_addr, "/metrics")
        .await
        .unwrap();
    let counted = wsscale::exposition::sample_value(
        &metrics,
        "wsscale_connections_rejected_total",
        &[("reason", "thread_spawn")],
    );
    assert_eq!(counted, Some(refused as f64), "{metrics}");
}

/// Opens `count` TCP connections that send the start of an upgrade request and nothing
/// more (the server cannot tell them from a slow client until the handshake timeout).
async fn half_open(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        streams.push(stream);
    }
    streams
}

async fn half_open_clients_hold_no_permit_and_no_thread(kind: Kind) {
    let server = TestServer::start(kind, &["--max-connections", "100", "--handshake-timeout", "10s"]);
    let idle_threads = server.metrics().await.value("process_threads", &[]);
    let _half_open = half_open(server.ws_addr, 300).await;
    let metrics = server
        .wait_for_metric("wsscale_handshakes_in_flight", &[], 300.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        metrics.value("process_threads", &[]),
        idle_threads,
        "{kind}: a half-open connection holds no thread"
    );
    // Every permit is still free: 100 real clients upgrade and echo.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(server.connect().await);
    }
    assert_all_echo(&mut held).await;
    match server.try_connect().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("{kind}: expected 503 past the cap of 100, got {other:?}"),
    }
}

async fn the_handshake_bound_holds_under_2000_half_open_clients(kind: Kind) {
    const BOUND: usize = 500;
    let server = TestServer::start(kind, &["--max-handshakes", "500", "--handshake-timeout", "3s"]);
    let idle = server.metrics().await;
    let idle_threads = idle.value("process_threads", &[]);
    let first = half_open(server.ws_addr, BOUND).await;
    let at_bound = server
        .wait_for_metric(
            "wsscale_handshakes_in_flight",
            &[],
            BOUND as f64,
            Duration::from_secs(10),
        )
        .await;
    // 1,500 more wait in the listen backlog: accept pauses, nothing grows.
    let rest = half_open(server.ws_addr, 2000 - BOUND).await;
    let past_bound = server.metrics().await;
    assert_eq!(
        past_bound.value("wsscale_handshakes_in_flight", &[]),
        BOUND as f64,
        "{kind}: --max-handshakes bounds the HTTP phases in flight"
    );
    assert_eq!(
        past_bound.value("process_threads", &[]),
        idle_threads,
        "{kind}: threads stay flat"
    );
    let heap = |metrics: &crate::support::Metrics| metrics.value("wsscale_heap_allocated_bytes", &[]);
    // Each phase in flight holds its task and hyper's buffers (~27 KiB in this debug
    // build); the waiting ones hold nothing of ours.
    assert!(
        heap(&past_bound) - heap(&idle) < BOUND as f64 * 64.0 * 1024.0,
        "{kind}: heap {} -> {} with {BOUND} handshakes in flight",
        heap(&idle),
        heap(&past_bound)
    );
    assert!(
        heap(&past_bound) <= heap(&at_bound) * 1.1,
        "{kind}: heap grew from {} to {} while the extra clients waited",
        heap(&at_bound),
        heap(&past_bound)
    );
    // The clients hang up: the phases in flight end at their EOF, the waiting ones are
    // accepted and end the same way, and a real client is served.
    drop((first, rest));
    server
        .wait_for_metric("wsscale_handshakes_in_flight", &[], 0.0, Duration::from_secs(30))
        .await;
    assert_echo(&mut server.connect().await, "after the flood").await;
}

/// A message far past the limit that is still arriving when the server fails the
/// connection, as when a browser sends 210 KB to a server with the default 64 KiB limit.
/// Closing the socket with those bytes unread would make the kernel answer with a reset,
/// and a reset throws away what the client has not read yet, the 1009 among it (Chromium
/// reports 1006). The lean engine lingers instead: the client sends everything, reads the
/// 1009 and then a clean end of stream, never a reset.
async fn a_client_still_sending_an_oversized_message_reads_its_1009_and_a_clean_end(kind: Kind) {
    const CLIENTS: usize = 5;
    let server = TestServer::start(kind, &[]);
    let message = frame(0x1, &vec![b'x'; 210_000]);
    for i in 0..CLIENTS {
        let (mut read, mut write) = raw_upgrade(&server).await.into_split();
        let message = message.clone();
        let writer = tokio::spawn(async move {
            let sent = write.write_all(&message).await;
            (sent, write)
        });
        assert_eq!(close_code(&mut read).await, Some(1009), "{kind}: client {i}");
        let mut rest = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(10), read.read(&mut rest))
            .await
            .expect("the server ends its side after the close frame");
        assert!(
            matches!(end, Ok(0)),
            "{kind}: client {i}: after the 1009, {end:?}, not a clean end"
        );
        let (sent, write) = writer.await.unwrap();
        assert!(sent.is_ok(), "{kind}: client {i}: the whole message went out: {sent:?}");
        drop((read, write));
    }
    let metrics = server
        .wait_for_metric(
            "wsscale_close_lingers_total",
            &[("reason", "peer_closed")],
            CLIENTS as f64,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        metrics.value("wsscale_connections_closed_total", &[("reason", "error")]),
        CLIENTS as f64
    );
    assert!(metrics.value("wsscale_close_linger_bytes_total", &[]) > 0.0);
    assert_eq!(
        metrics.value("wsscale_close_lingers_total", &[("reason", "timeout")]),
        0.0
    );
    assert_eq!(metrics.value("wsscale_connections_active", &[]), 0.0);
}

/// A failed connection whose peer neither closes nor stops sending is not held forever:
/// the server closes it after the linger timeout (2 s) or once the peer has sent 1 MiB
/// more, whichever comes first, and counts which.
async fn a_failed_connection_lingers_no_longer_than_its_bounds(kind: Kind) {
    let server = TestServer::start(kind, &["--max-message-size", "1KiB"]);
    // Silent after its violation, and still connected.
    let mut silent = raw_upgrade(&server).await;
    silent.write_all(&frame(0x1, b"\xff")).await.unwrap();
    let started = Instant::now();
    assert_eq!(close_code(&mut silent).await, Some(1007));
    // Sends on and on after its violation.
    let (mut read, mut write) = raw_upgrade(&server).await.into_split();
    write.write_all(&frame(0x2, &[0u8; 2048])).await.unwrap();
    let flood = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        // Until the server closes: then a write fails. 64 MiB is far more than the
        // budget plus every buffer between the two.
        for _ in 0..1024 {
            if write.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    assert_eq!(close_code(&mut read).await, Some(1009));
    assert!(
        flood.await.unwrap(),
        "the server closed a peer sending past the byte budget"
    );
    server
        .wait_for_metric(
            "wsscale_close_lingers_total",
            &[("reason", "limit")],
            1.0,
            Duration::from_secs(10),
        )
        .await;
    let metrics = server
        .wait_for_metric(
            "wsscale_close_lingers_total",
            &[("reason", "timeout")],
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the silent peer was cut after {:?}, before the linger timeout",
        started.elapsed()
    );
    assert_eq!(
        metrics.value("wsscale_connections_closed_total", &[("reason", "error")]),
        2.0
    );
    let mut end = [0u8; 8];
    assert!(
        !matches!(silent.read(&mut end).await, Ok(n) if n > 0),
        "nothing after the close frame"
    );
}
