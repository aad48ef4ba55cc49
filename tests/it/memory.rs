//! Memory after a burst: what many handshakes at once leave behind goes back to the OS
//! (`--trim-threshold`), and the per-connection figures keep a baseline taken with
//! nothing in flight.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Kind, TestServer, eventually};

crate::every_server!(
    a_burst_of_handshakes_is_given_back_to_the_os,
    trim_threshold_0_never_trims,
);

/// Clients held in their HTTP phase at once: each costs the server hyper's 8 KiB read
/// buffer and 8 KiB header buffer until its upgrade, so together several MiB that are free
/// once they are all upgraded.
const BURST: usize = 400;

/// Opens `count` connections that send the first line of an upgrade request and wait.
async fn half_open(server: &TestServer, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(server.ws_addr).await.unwrap();
        stream.write_all(b"GET /ws HTTP/1.1\r\nHost: burst\r\n").await.unwrap();
        streams.push(stream);
    }
    streams
}

/// Finishes every request and reads each 101: the connections are upgraded and held.
async fn finish_upgrades(streams: &mut [TcpStream]) {
    let rest = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for stream in streams.iter_mut() {
        stream.write_all(rest).await.unwrap();
    }
    for stream in streams.iter_mut() {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte))
                .await
                .expect("the 101 arrives")
                .unwrap();
            assert_eq!(n, 1, "closed before the end of the response head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    }
}

/// Holds `BURST` clients in their HTTP phase, then upgrades them all at once; returns the
/// upgraded sockets once the server holds every connection and no handshake.
async fn burst(server: &TestServer) -> Vec<TcpStream> {
    let mut streams = half_open(server, BURST).await;
    server
        .wait_for_metric(
            "wsscale_handshakes_in_flight",
            &[],
            BURST as f64,
            Duration::from_secs(20),
        )
        .await;
    finish_upgrades(&mut streams).await;
    server
        .wait_for_metric("wsscale_connections_active", &[], BURST as f64, Duration::from_secs(20))
        .await;
    server
        .wait_for_metric("wsscale_handshakes_in_flight", &[], 0.0, Duration::from_secs(20))
        .await;
    streams
}

async fn a_burst_of_handshakes_is_given_back_to_the_os(kind: Kind) {
    let server = TestServer::start(kind, &["--handshake-timeout", "60s"]);
    let trims_before = server.metrics().await.value("wsscale_memory_trims_total", &[]);
    let _held = burst(&server).await;
    // The sampler trims at its next sample with no handshake in flight: a scrape or its
    // once-a-second upkeep.
    let metrics = eventually(
        Duration::from_secs(20),
        format_args!("{kind}: a trim after the burst"),
        async || {
            let metrics = server.metrics().await;
            if metrics.value("wsscale_memory_trims_total", &[]) > trims_before {
                Ok(metrics)
            } else {
                Err(metrics.0)
            }
        },
    )
    .await;
    let released = metrics.value("wsscale_memory_trimmed_bytes_total", &[]);
    assert!(
        released >= (1 << 20) as f64,
        "{kind}: the trims gave back only {released} bytes after {BURST} handshakes of over 16 KiB each"
    );
    assert!(
        metrics.value("wsscale_memory_trim_duration_seconds_count", &[]) >= 1.0,
        "{kind}: every trim is timed"
    );
    // The baseline of the per-connection figures was not taken while the handshakes were
    // in flight (with no connection open yet): their buffers would have made it larger than
    // the heap of the held connections, and the figure 0.
    let heap_per_connection = metrics.value("wsscale_memory_per_connection_bytes", &[("source", "heap")]);
    println!("{kind}: trims gave back {released} B; heap per connection {heap_per_connection} B");
    assert!(
        heap_per_connection >= 256.0,
        "{kind}: heap per connection {heap_per_connection} B after the burst"
    );
}

async fn trim_threshold_0_never_trims(kind: Kind) {
    let server = TestServer::start(kind, &["--handshake-timeout", "60s", "--trim-threshold", "0"]);
    let _held = burst(&server).await;
    // With trimming on, the same burst trims at the first sample with no handshake in
    // flight (the test above), and every scrape is a sample: several scrapes after the
    // burst, and the counter must not move.
    for _ in 0..5 {
        let metrics = server.metrics().await;
        assert_eq!(metrics.value("wsscale_handshakes_in_flight", &[]), 0.0);
        assert_eq!(
            metrics.value("wsscale_memory_trims_total", &[]),
            0.0,
            "{kind}: trimmed with --trim-threshold 0"
        );
    }
}
