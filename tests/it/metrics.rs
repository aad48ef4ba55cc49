//! /metrics tells the truth: it agrees with what the test did and with /proc, and
//! promtool finds nothing wrong with it.

use std::time::Duration;

use futures_util::StreamExt;
use wsscale_host::proc::ProcessStatus;

use crate::support::{Kind, Metrics, TestServer, assert_promtool_clean};

crate::every_server!(agrees_with_the_test_and_with_proc, passes_promtool);

const CONNECTIONS: usize = 500;

async fn agrees_with_the_test_and_with_proc(kind: Kind) {
    let server = TestServer::start(kind, &[]);
    let before = server.metrics().await;
    for name in [
        "wsscale_connections_active",
        "wsscale_tasks_alive",
        "process_threads",
        "wsscale_heap_allocated_bytes",
        "wsscale_host_kernel_stack_bytes",
        "wsscale_host_tcp_sockets_inuse",
        "wsscale_host_slab_bytes",
        "wsscale_host_slab_unreclaimable_bytes",
        "wsscale_host_tcp_memory_bytes",
        "wsscale_runtime_workers",
    ] {
        assert!(
            before
                .get(name, &[("mode", kind.mode), ("engine", kind.engine)])
                .is_some(),
            "{name} missing from the first scrape"
        );
    }
    let threads_before = before.value("process_threads", &[]);
    let tasks_before = before.value("wsscale_tasks_alive", &[]);

    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(server.connect().await);
    }
    let held = server
        .wait_for_metric(
            "wsscale_connections_active",
            &[],
            CONNECTIONS as f64,
            Duration::from_secs(10),
        )
        .await;
    let proc_status = ProcessStatus::read(server.pid()).unwrap();

    let threads = held.value("process_threads", &[]);
    let tasks = held.value("wsscale_tasks_alive", &[]);
    match kind.mode {
        "threads" => assert!(
            threads - threads_before >= CONNECTIONS as f64,
            "threads {threads_before} -> {threads}"
        ),
        _ => {
            assert!(
                tasks - tasks_before >= CONNECTIONS as f64,
                "tasks {tasks_before} -> {tasks}"
            );
            assert_eq!(threads, threads_before, "tasks mode adds no thread per connection");
        }
    }
    assert_eq!(
        threads, proc_status.threads as f64,
        "process_threads vs /proc/PID/status Threads"
    );
    let rss = held.value("process_resident_memory_bytes", &[]);
    let vm_rss = proc_status.vm_rss_bytes as f64;
    assert!(
        (rss - vm_rss).abs() <= vm_rss * 0.05,
        "process_resident_memory_bytes {rss} vs VmRSS {vm_rss}"
    );
    let per_connection_rss = held.value("wsscale_memory_per_connection_bytes", &[("source", "rss")]);
    let per_connection_heap = held.value("wsscale_memory_per_connection_bytes", &[("source", "heap")]);
    assert!(
        per_connection_rss > 0.0 && per_connection_heap > 0.0,
        "rss {per_connection_rss} heap {per_connection_heap}"
    );
    let fds = held.value("process_open_fds", &[]);
    assert!(fds >= CONNECTIONS as f64, "process_open_fds {fds}");

    drop(clients);
    let after = server
        .wait_for_metric("wsscale_connections_active", &[], 0.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        after.value("wsscale_memory_per_connection_bytes", &[("source", "rss")]),
        0.0
    );
    assert_eq!(after.value("wsscale_connections_opened_total", &[]), CONNECTIONS as f64);
}

async fn passes_promtool(kind: Kind) {
    let server = TestServer::start(kind, &[]);
    // With traffic behind it, so histograms and labelled counters have values.
    let mut client = server.connect().await;
    futures_util::SinkExt::send(&mut client, "x".into()).await.unwrap();
    client.next().await.unwrap().unwrap();
    let Metrics(text) = server.metrics().await;
    assert_promtool_clean(&text);
}

/// The stock engine measures what it claims to: tungstenite's default 128 KiB read buffer
/// is allocated for every connection when it opens, and `--read-buffer-size` is what
/// changes it. If either figure drifted, `compare` would be measuring something else.
/// Measured as `compare` does: the RSS slope between two connection counts, so what the
/// first connections warm up once (runtime, allocator arenas) is not charged to each.
/// RSS per connection between `first` and `first + more` idle connections, as `compare`
/// measures it: the slope, so what the first connections warm up once is not charged to
/// each.
async fn rss_slope(server: &TestServer, first: usize, more: usize) -> f64 {
    let mut clients = Vec::with_capacity(first + more);
    let mut rss = Vec::new();
    for target in [first, first + more] {
        while clients.len() < target {
            clients.push(server.connect().await);
        }
        let held = server
            .wait_for_metric(
                "wsscale_connections_active",
                &[],
                target as f64,
                Duration::from_secs(60),
            )
            .await;
        rss.push(held.value("process_resident_memory_bytes", &[]));
    }
    (rss[1] - rss[0]) / more as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stock_connection_costs_its_read_buffer() {
    let stock = Kind::ws("tasks", "tungstenite");
    let defaults = rss_slope(&TestServer::start(stock, &[]), 1000, 2000).await;
    let small_buffer = rss_slope(&TestServer::start(stock, &["--read-buffer-size", "4KiB"]), 1000, 2000).await;
    println!("stock tasks RSS per connection: defaults {defaults:.0} B, --read-buffer-size 4KiB {small_buffer:.0} B");
    assert!(
        defaults > 64.0 * 1024.0,
        "default stock connection: {defaults:.0} B of RSS, expected tungstenite's 128 KiB read buffer in it"
    );
    assert!(
        small_buffer < 8.0 * 1024.0,
        "stock connection with a 4 KiB read buffer: {small_buffer:.0} B of RSS"
    );
}

/// What an idle wss:// connection costs: the lean engine holds its TLS session and no
/// buffer (rustls' unbuffered API); the stock stack holds tungstenite's read buffer and
/// rustls' buffered connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wss_connection_costs_its_tls_session_and_no_buffer() {
    let lean = rss_slope(
        &TestServer::start(
            Kind {
                scheme: "wss",
                ..Kind::TASKS_LEAN
            },
            &[],
        ),
        1000,
        2000,
    )
    .await;
    let stock = Kind {
        scheme: "wss",
        ..Kind::ws("tasks", "tungstenite")
    };
    let stock = rss_slope(&TestServer::start(stock, &[]), 500, 1000).await;
    println!("tasks wss RSS per connection: lean {lean:.0} B, stock {stock:.0} B");
    assert!(lean < 6.0 * 1024.0, "lean wss connection: {lean:.0} B of RSS");
    assert!(stock > 64.0 * 1024.0, "stock wss connection: {stock:.0} B of RSS");
}
