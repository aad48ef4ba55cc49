//! The library entry, `wsscale::server::run`, in this test's own process: bound
//! listeners on port 0, the recorder's handle and the requests to stop (a channel here;
//! SIGINT and SIGTERM for `wsscale serve`), as mini-redis' `run` takes its listener and
//! shutdown signal. The other tests run `wsscale serve` as a child process, which is what
//! users run; this one shows a server can be embedded and stopped by its caller.

use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsscale::config::{Cli, Command, Engine, Mode, Scheme, ServeConfig};
use wsscale::server::Listeners;

use crate::support::{assert_echo, wait_for_metric_at};

/// The process-wide recorder: it installs once per process, whatever runs in it.
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            wsscale::metrics::install(Mode::Tasks, Engine::Lean, Scheme::Ws).expect("the first recorder installs")
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_in_process_until_it_is_asked_to_stop() {
    let Command::Serve(args) = Cli::parse_from([
        "wsscale",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-connections",
        "10",
    ])
    .command
    else {
        unreachable!("a serve command line")
    };
    let config = ServeConfig::try_from(args).unwrap();
    let listeners = Listeners::bind(&config, None).unwrap();
    let start = listeners.start_line(&config).unwrap();
    let (stop, stops) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server = tokio::spawn(wsscale::server::run(config, listeners, recorder(), stops));

    let (mut client, _) = crate::support::connect_to(&start.url, None).await.unwrap();
    assert_echo(&mut client, "in process").await;
    let metrics = wait_for_metric_at(
        start.metrics_addr,
        "wsscale_connections_active",
        &[],
        1.0,
        Duration::from_secs(10),
        "the in-process server",
    )
    .await;
    assert_eq!(metrics.value("wsscale_connections_max", &[]), 10.0);

    // The caller's shutdown: every session gets 1001, and run returns after the drain.
    stop.send(()).unwrap();
    let close = loop {
        match client.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|frame| frame.code), Some(CloseCode::Away));
    // Reading on sends our reply, and the server closes the connection.
    while let Some(Ok(_)) = client.next().await {}
    // Well within the drain timeout (10 s): nothing waits for it.
    tokio::time::timeout(Duration::from_secs(8), server)
        .await
        .expect("run returns once the session has closed")
        .unwrap()
        .unwrap();
    // Nothing of the server is left listening.
    assert!(tokio::net::TcpStream::connect(start.ws_addr).await.is_err());
    assert!(tokio::net::TcpStream::connect(start.metrics_addr).await.is_err());
}
