//! The test harness: a real `wsscale serve` child process on 127.0.0.1:0, real WebSocket
//! clients, raw HTTP for the non-WebSocket paths, and polling with deadlines instead of
//! sleeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_util::either::Either;
use wsscale::child::ServeChild;

/// A test client's socket: plain TCP (ws://) or TLS over it (wss://).
pub type ClientIo = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
pub type Client = WebSocketStream<ClientIo>;

/// A rustls client configuration that trusts the certificates in `cert` (PEM) alone: the
/// server's own (`wsscale::server::tls::client_config_trusting`, what compare uses).
pub fn trusting(cert: &Path) -> Arc<rustls::ClientConfig> {
    wsscale::server::tls::client_config_trusting(cert).expect("a PEM certificate file")
}

/// The TCP connection (under TLS for wss://, trusting `cert`) of a client of `url`.
pub async fn open(url: &str, cert: Option<&Path>) -> std::io::Result<ClientIo> {
    let addr = url::Url::parse(url)
        .map_err(std::io::Error::other)?
        .socket_addrs(|| None)?[0];
    open_over(url, cert, TcpStream::connect(addr).await?).await
}

/// [`open`] over a TCP connection the caller made (with its own socket options).
pub async fn open_over(url: &str, cert: Option<&Path>, stream: TcpStream) -> std::io::Result<ClientIo> {
    let url = url::Url::parse(url).map_err(std::io::Error::other)?;
    if url.scheme() != "wss" {
        return Ok(Either::Left(stream));
    }
    let cert = cert.expect("a wss:// client needs the server's certificate");
    let name = rustls_pki_types::ServerName::try_from(url.host_str().unwrap().to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(trusting(cert))
        .connect(name, stream)
        .await?;
    Ok(Either::Right(tls))
}

/// A WebSocket client of `url` (ws:// or wss://, trusting `cert`), and the response to its
/// upgrade: a refusal is an `Err` with the HTTP response in it.
pub async fn connect_to(
    url: &str,
    cert: Option<&Path>,
) -> Result<(Client, Response), tokio_tungstenite::tungstenite::Error> {
    let io = open(url, cert).await?;
    tokio_tungstenite::client_async(url, io).await
}

/// Reads a JSON file a run wrote (a summary, a report index); a missing or malformed
/// file fails the test with its path.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Which server a test runs against: an execution model, an engine and a scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub mode: &'static str,
    pub engine: &'static str,
    /// "ws", or "wss" (the server makes a self-signed certificate, the clients trust it).
    pub scheme: &'static str,
}

impl Kind {
    pub const TASKS_LEAN: Kind = Kind::ws("tasks", "lean");

    /// A plain ws:// server.
    pub const fn ws(mode: &'static str, engine: &'static str) -> Kind {
        Kind {
            mode,
            engine,
            scheme: "ws",
        }
    }

    pub fn is_lean(self) -> bool {
        self.engine == "lean"
    }

    pub fn is_tls(self) -> bool {
        self.scheme == "wss"
    }

    /// `--mode MODE --engine ENGINE` (and `--tls-self-signed` for wss) followed by
    /// `extra_args`, for `wsscale serve`.
    pub fn args<'a>(self, extra_args: &[&'a str]) -> Vec<&'a str> {
        let (mode, engine): (&'static str, &'static str) = (self.mode, self.engine);
        let mut args = vec!["--mode", mode, "--engine", engine];
        if self.is_tls() {
            args.push("--tls-self-signed");
        }
        args.extend_from_slice(extra_args);
        args
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.mode, self.engine)?;
        if self.is_tls() {
            f.write_str("-wss")?;
        }
        Ok(())
    }
}

/// A `wsscale serve` child process; killed on drop.
pub struct TestServer {
    child: ServeChild,
    pub kind: Kind,
    pub ws_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// wss://: the server's certificate, for clients to trust.
    pub cert: Option<PathBuf>,
}

impl TestServer {
    pub fn start(kind: Kind, extra_args: &[&str]) -> TestServer {
        Self::start_at(kind, SocketAddr::from(([127, 0, 0, 1], 0)), extra_args)
    }

    /// A server whose WebSocket listener is on `listen`.
    pub fn start_at(kind: Kind, listen: SocketAddr, extra_args: &[&str]) -> TestServer {
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_wsscale"));
        let child = ServeChild::spawn_at(program, listen, kind.args(extra_args), |command| {
            command.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        })
        .expect("wsscale serve starts");
        TestServer {
            kind,
            ws_addr: child.ws_addr,
            metrics_addr: child.metrics_addr,
            cert: child.start.field("cert").map(PathBuf::from),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// ws://ADDR/ws or wss://ADDR/ws, as the server announced it.
    pub fn url(&self) -> String {
        self.child.url()
    }

    pub async fn connect(&self) -> Client {
        let (client, response) = self.try_connect().await.expect("upgrade");
        assert_eq!(response.status(), 101);
        client
    }

    /// A client's attempt, whatever its outcome.
    pub async fn try_connect(&self) -> Result<(Client, Response), tokio_tungstenite::tungstenite::Error> {
        connect_to(&self.url(), self.cert.as_deref()).await
    }

    pub async fn metrics(&self) -> Metrics {
        let (status, body) = http_get(self.metrics_addr, "/metrics", &[]).await;
        assert_eq!(status, 200, "{body}");
        Metrics(self::body(&body).to_owned())
    }

    /// Polls /metrics until `metric` equals `value`; panics with the last reading after
    /// the deadline.
    pub async fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], value: f64, within: Duration) -> Metrics {
        wait_for_metric_at(self.metrics_addr, name, labels, value, within, self.kind).await
    }

    pub fn signal(&mut self, signal: i32) {
        self.child.signal(signal).unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.child
            .wait_exit(within)
            .unwrap()
            .unwrap_or_else(|| panic!("server did not exit within {within:?}"))
    }
}

/// How often a deadline loop looks again.
const POLL: Duration = Duration::from_millis(20);

/// What one look of a deadline loop found: the value (`Some`, `Ok`), or not yet (`None`,
/// or `Err` with the state it saw, for the message when time runs out).
pub trait Attempt<T> {
    fn outcome(self) -> Result<T, String>;
}

impl<T> Attempt<T> for Option<T> {
    fn outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet".to_owned())
    }
}

impl<T> Attempt<T> for Result<T, String> {
    fn outcome(self) -> Result<T, String> {
        self
    }
}

/// The one deadline loop of the tests: calls `check` until it finds the value (see
/// [`Attempt`]), at most for `within`, and then panics with `what` and the last state it
/// saw. Never a
/// sleep as synchronisation: only a condition, and a deadline generous enough for a busy
/// machine.
pub async fn eventually<T, R>(within: Duration, what: impl std::fmt::Display, mut check: impl AsyncFnMut() -> R) -> T
where
    R: Attempt<T>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await.outcome() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}: {last}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for code that blocks (a plain `#[test]`, a blocking HTTP client).
pub fn eventually_blocking<T, R: Attempt<T>>(
    within: Duration,
    what: impl std::fmt::Display,
    mut check: impl FnMut() -> R,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().outcome() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}: {last}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// Polls the /metrics at `addr` (a server's or a load generator's) until `name` equals
/// `value`; panics with the last reading, naming `whose`, after the deadline.
pub async fn wait_for_metric_at(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    value: f64,
    within: Duration,
    whose: impl std::fmt::Display,
) -> Metrics {
    eventually(
        within,
        format_args!("{name}{labels:?} = {value} ({whose})"),
        async || {
            let (status, response) = http_get(addr, "/metrics", &[]).await;
            assert_eq!(status, 200, "{response}");
            let metrics = Metrics(body(&response).to_owned());
            match metrics.get(name, labels) {
                Some(current) if current == value => Ok(metrics),
                current => Err(format!("{current:?}")),
            }
        },
    )
    .await
}

/// `promtool check metrics` finds nothing to say about `text`.
pub fn assert_promtool_clean(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package prometheus; scripts/test.sh installs it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

/// Sends `text` and expects it echoed back (server pings in between are skipped).
pub async fn assert_echo(client: &mut Client, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    client.send(Message::text(text)).await.unwrap();
    loop {
        match client.next().await {
            Some(Ok(Message::Text(echo))) => return assert_eq!(echo.as_str(), text),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// Every client still gets its echo.
pub async fn assert_all_echo(clients: &mut [Client]) {
    for (i, client) in clients.iter_mut().enumerate() {
        assert_echo(client, &format!("held {i}")).await;
    }
}

/// A /metrics text with lookups by name and labels (the `mode` label is implied).
pub struct Metrics(pub String);

impl Metrics {
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        wsscale::exposition::sample_value(&self.0, name, labels)
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in /metrics:\n{}", self.0))
    }
}

/// A raw HTTP/1.1 GET; returns the status and the whole response text.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    http_exchange(addr, request.as_bytes()).await
}

/// Sends raw bytes, reads until the server closes; returns the status and the response.
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("server answered and closed")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The body of a raw HTTP response.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// A raw HTTP/1.1 POST with an empty body; returns the status and the body.
pub async fn http_post(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let (status, response) = http_exchange(addr, request.as_bytes()).await;
    (status, body(&response).to_owned())
}

/// A client frame with FIN set, masked with `mask` as RFC 6455 requires, or unmasked
/// (`None`), as no client may send.
pub fn client_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
