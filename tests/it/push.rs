//! Server push: every held connection gets every broadcast once and in order, a peer
//! that does not read is bounded and delays nobody, a broadcast meets the shutdown drain
//! cleanly, and the endpoint refuses what it should. Latency figures are benchmarks
//! (`wsscale compare --push`), not tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, Kind, TestServer, client_frame, eventually, http_post, read_json};

crate::lean_stacks!(
    every_connection_gets_every_broadcast_once_in_order,
    a_burst_of_broadcasts_arrives_whole_and_in_order_everywhere,
    a_push_racing_echoes_pongs_and_the_close_never_interleaves_frames,
    a_peer_that_does_not_read_is_bounded_and_delays_nobody,
    a_broadcast_meets_the_drain_cleanly,
    push_interval_pushes_on_its_own,
);

/// The sequence number of a push (`WSSP`, seq, send time, padding); None for anything else.
fn push_seq(message: &Message) -> Option<u64> {
    let Message::Binary(payload) = message else { return None };
    (payload.len() >= 20 && payload[..4] == *b"WSSP").then(|| u64::from_be_bytes(payload[4..12].try_into().unwrap()))
}

/// Whether a post writes pushes straight to this kind's sockets (tasks mode, lean engine,
/// plain TCP) rather than waking every connection's task or thread.
fn writes_directly(kind: Kind) -> bool {
    kind.mode == "tasks" && kind.is_lean() && !kind.is_tls()
}

/// Pushes written by the post itself and by the connections' own tasks or threads.
fn pushes_written(metrics: &crate::support::Metrics) -> (f64, f64) {
    (
        metrics.value("wsscale_pushes_written_total", &[("path", "direct")]),
        metrics.value("wsscale_pushes_written_total", &[("path", "task")]),
    )
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
    let (direct, task) = pushes_written(&metrics);
    assert_eq!(direct + task, (BROADCASTS as usize * CONNECTIONS) as f64, "{kind}");
    if writes_directly(kind) {
        // Idle connections: the post writes to them itself.
        assert!(direct > 0.0, "{kind}: direct {direct}, by task {task}");
    } else {
        assert_eq!(direct, 0.0, "{kind}: only plain TCP in tasks mode is written directly");
    }
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

/// Broadcasts posted back to back from several clients at once, faster than the
/// connections take them: a connection finds several pushes on one wake-up, and still
/// sends each once, whole and in order.
async fn a_burst_of_broadcasts_arrives_whole_and_in_order_everywhere(kind: Kind) {
    const CONNECTIONS: usize = 200;
    const POSTERS: u64 = 4;
    const EACH: u64 = 10;
    const BROADCASTS: u64 = POSTERS * EACH;
    let server = TestServer::start(kind, &["--allow-broadcast"]);
    let mut readers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut client = server.connect().await;
        readers.push(tokio::spawn(async move {
            let seqs = pushes(&mut client, BROADCASTS as usize).await;
            (seqs, client)
        }));
    }
    server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(30),
        )
        .await;
    let metrics_addr = server.metrics_addr;
    let posters: Vec<_> = (0..POSTERS)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..EACH {
                    let (status, body) = http_post(metrics_addr, "/broadcast?size=100").await;
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for poster in posters {
        poster.await.unwrap();
    }
    let mut held = Vec::new();
    for reader in readers {
        let (seqs, client) = reader.await.unwrap();
        assert_eq!(seqs, (1..=BROADCASTS).collect::<Vec<_>>(), "{kind}: whole and in order");
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
    assert_eq!(
        metrics.value("wsscale_messages_sent_total", &[]),
        (BROADCASTS as usize * CONNECTIONS) as f64
    );
    assert_eq!(metrics.value("wsscale_pushes_dropped_total", &[]), 0.0);
}

/// Every frame in `bytes`, parsed strictly as a server's: FIN set, no reserved bit, a
/// known opcode, unmasked, the length in its shortest form, and nothing left over.
fn strict_frames(mut bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let at = |frames: &Vec<(u8, Vec<u8>)>| format!("frame {} ({} bytes left)", frames.len(), bytes.len());
        if bytes.len() < 2 {
            return Err(format!("{}: a torn header", at(&frames)));
        }
        let (first, second) = (bytes[0], bytes[1]);
        if first & 0xF0 != 0x80 {
            return Err(format!("{}: FIN/RSV bits {first:#04x}", at(&frames)));
        }
        let opcode = first & 0x0F;
        if ![0x1, 0x2, 0x8, 0xA].contains(&opcode) {
            return Err(format!("{}: opcode {opcode:#x}", at(&frames)));
        }
        if second & 0x80 != 0 {
            return Err(format!("{}: a masked server frame", at(&frames)));
        }
        let (len, header) = match second & 0x7F {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return Err(format!("{}: a torn extended length", at(&frames))),
            len => (len as usize, 2),
        };
        if (header == 4 && len < 126) || (header == 10 && len <= 65535) {
            return Err(format!("{}: length {len} not in its shortest form", at(&frames)));
        }
        if bytes.len() < header + len {
            return Err(format!("{}: a torn payload ({len} bytes announced)", at(&frames)));
        }
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    Ok(frames)
}

/// One connection gets pushes while it echoes, answers pings and closes: every byte it
/// receives parses strictly into whole frames (a push written into the middle of an echo,
/// a pong or the close reply would break the parse or a payload), the echoes and pongs
/// come back whole and in order, the pushes in order with none missing, and nothing
/// follows the close reply.
async fn a_push_racing_echoes_pongs_and_the_close_never_interleaves_frames(kind: Kind) {
    const MESSAGES: usize = 300;
    // Room for everything this test sends at once (7 MB of echoes), so no push is dropped
    // however slowly this client is scheduled: a gap could only be an interleaving bug.
    let server = TestServer::start(
        kind,
        &[
            "--allow-broadcast",
            "--max-message-size",
            "1MiB",
            "--write-buffer-size",
            "16MiB",
        ],
    );
    let mut io = crate::support::open(&server.url(), server.cert.as_deref())
        .await
        .unwrap();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.ws_addr
    );
    io.write_all(upgrade.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let head_end = loop {
        let mut byte = [0; 1];
        assert_eq!(io.read(&mut byte).await.unwrap(), 1, "{kind}: the 101 in full");
        response.push(byte[0]);
        if response.ends_with(b"\r\n\r\n") {
            break response.len();
        }
    };
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{kind}: {head}");
    server
        .wait_for_metric("wsscale_connections_active", &[], 1.0, Duration::from_secs(10))
        .await;
    let (mut read_half, mut write_half) = tokio::io::split(io);
    let received = tokio::spawn(async move {
        let mut bytes = Vec::new();
        read_half.read_to_end(&mut bytes).await.map(|_| bytes)
    });

    // Pushes keep coming the whole time: before, during and after the close.
    let posted = Arc::new(AtomicU64::new(0));
    let metrics_addr = server.metrics_addr;
    let broadcaster = {
        let posted = posted.clone();
        tokio::spawn(async move {
            for _ in 0..MESSAGES / 2 {
                let (status, body) = http_post(metrics_addr, "/broadcast?size=200").await;
                if status != 200 {
                    return body;
                }
                posted.fetch_add(1, Ordering::Release);
            }
            String::new()
        })
    };
    eventually(Duration::from_secs(30), "the first broadcast", async || {
        (posted.load(Ordering::Acquire) > 0).then_some(())
    })
    .await;
    let mut texts = Vec::new();
    let mut pings = Vec::new();
    for i in 0..MESSAGES {
        let mask = (i as u32).wrapping_mul(0x9E37_79B9).to_be_bytes();
        let frame = if i % 3 == 2 {
            let payload = format!("ping {i}").into_bytes();
            pings.push(payload.clone());
            client_frame(0x9, &payload, Some(mask))
        } else {
            // Echoes of every length form: 7-bit, 16-bit, and a few past the socket's
            // first write.
            let len = [10, 300, 5000, 70_000][i % 4];
            let text: String = format!("echo {i} ").chars().cycle().take(len).collect();
            texts.push(text.clone().into_bytes());
            client_frame(0x1, text.as_bytes(), Some(mask))
        };
        write_half.write_all(&frame).await.unwrap();
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    write_half
        .write_all(&client_frame(0x8, &1000u16.to_be_bytes(), Some([7, 7, 7, 7])))
        .await
        .unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(60), received)
        .await
        .expect("the server closes after its close reply")
        .unwrap()
        .expect("the stream reads to its end");
    let frames = strict_frames(&response[head_end..].iter().chain(&bytes).copied().collect::<Vec<_>>())
        .unwrap_or_else(|error| panic!("{kind}: {error}"));
    let (last, before) = frames.split_last().expect("frames");
    assert_eq!(last.0, 0x8, "{kind}: the close reply ends the stream");
    assert_eq!(last.1[..2], 1000u16.to_be_bytes(), "{kind}");
    let of = |opcode: u8| {
        before
            .iter()
            .filter(move |frame| frame.0 == opcode)
            .map(|frame| frame.1.clone())
    };
    assert!(of(0x8).next().is_none(), "{kind}: one close, the last frame");
    assert!(of(0x1).eq(texts.iter().cloned()), "{kind}: every echo whole, in order");
    assert!(of(0xA).eq(pings.iter().cloned()), "{kind}: every pong whole, in order");
    let seqs: Vec<u64> = of(0x2)
        .map(|payload| {
            assert_eq!(payload.len(), 200, "{kind}: a push whole");
            push_seq(&Message::Binary(payload.into())).expect("a push")
        })
        .collect();
    assert!(!seqs.is_empty(), "{kind}: pushes raced the echoes");
    // From the first push the connection was open for (the session registers on the
    // board a moment after the 101), every one in order up to its close.
    assert!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{kind}: pushes in order, none missed: {seqs:?}"
    );
    let refused = broadcaster.await.unwrap();
    assert!(refused.is_empty(), "{kind}: {refused}");
    // Both paths raced the echoes: the post's own writes (between two of the connection's
    // wake-ups) and the connection's task (a post that found it writing, or with bytes
    // queued, woke it instead).
    let (direct, task) = pushes_written(&server.metrics().await);
    eprintln!("{kind}: pushes written directly {direct}, by the connection's task {task}");
    if writes_directly(kind) {
        assert!(
            direct > 0.0,
            "{kind}: the direct path was taken (direct {direct}, task {task})"
        );
    } else {
        assert_eq!(direct, 0.0, "{kind}");
    }
}
