//! How a connection's bytes travel under its HTTP phase: plain TCP ([`Plain`]), or TLS —
//! the lean engine's own over rustls' unbuffered API ([`LeanTlsTransport`]), or the stock
//! stack's tokio-rustls ([`StockTls`]). `server::run` picks the transport once, with the
//! stack. The TLS handshake is the first step of the HTTP phase: bounded by the same
//! `--handshake-timeout`, under the same `--max-handshakes`, holding no connection permit
//! and no thread; its duration and failures are counted here.

use std::future::Future;
use std::io;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::lean_tls::{LeanTls, LeanTlsStream};
use super::shared::Shared;
use crate::metrics::TlsFailure;

/// A way for bytes to travel.
pub(crate) trait Transport: Send + Sync + 'static {
    /// What hyper serves the HTTP phase over.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Turns an accepted TCP connection into it: nothing to do for plain TCP, the
    /// handshake for TLS. The caller bounds it in time.
    fn accept(shared: &Shared, stream: TcpStream) -> impl Future<Output = Result<Self::Io, TlsFailure>> + Send;
}

/// Plain TCP: ws://.
pub(crate) struct Plain;

impl Transport for Plain {
    type Io = TcpStream;

    async fn accept(_: &Shared, stream: TcpStream) -> Result<TcpStream, TlsFailure> {
        Ok(stream)
    }
}

/// wss:// for the lean engine: rustls' unbuffered connection, driven by wsscale.
pub(crate) struct LeanTlsTransport;

impl Transport for LeanTlsTransport {
    type Io = LeanTlsStream;

    async fn accept(shared: &Shared, stream: TcpStream) -> Result<LeanTlsStream, TlsFailure> {
        let started = Instant::now();
        let stream = refuse_plain_http(stream).await?;
        let tls = LeanTls::new(shared.tls_config()).map_err(|_| TlsFailure::Protocol)?;
        let mut stream = LeanTlsStream::new(stream, tls);
        stream.handshake().await.map_err(TlsFailure::of)?;
        shared.metrics.tls_handshake(started.elapsed().as_secs_f64());
        Ok(stream)
    }
}

/// wss:// for the stock engine: tokio-rustls, as axum-server and the tutorials serve it.
pub(crate) struct StockTls;

impl Transport for StockTls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(shared: &Shared, stream: TcpStream) -> Result<Self::Io, TlsFailure> {
        let started = Instant::now();
        let stream = refuse_plain_http(stream).await?;
        let stream = tokio_rustls::TlsAcceptor::from(shared.tls_config())
            .accept(stream)
            .await
            .map_err(TlsFailure::of)?;
        shared.metrics.tls_handshake(started.elapsed().as_secs_f64());
        Ok(stream)
    }
}

/// What an HTTP request on the TLS port is told.
const PLAIN_HTTP_ANSWER: &str = "This port speaks TLS: connect with wss:// (or https://), not ws://.\n";

/// The whole plain 400 response.
fn plain_http_answer() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{PLAIN_HTTP_ANSWER}",
        PLAIN_HTTP_ANSWER.len()
    )
}

/// A TLS record starts with its content type (handshake: 22); an HTTP request with a
/// method's letters. A client that speaks plain HTTP to the TLS port gets a plain 400
/// that says why, instead of a TLS alert it cannot read.
async fn refuse_plain_http(mut stream: TcpStream) -> Result<TcpStream, TlsFailure> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.map_err(|_| TlsFailure::Io)?;
    if n == 0 {
        return Err(TlsFailure::Eof);
    }
    if first[0].is_ascii_uppercase() {
        let _ = stream.write_all(plain_http_answer().as_bytes()).await;
        let _ = stream.shutdown().await;
        return Err(TlsFailure::PlainHttp);
    }
    Ok(stream)
}

impl TlsFailure {
    /// Why a handshake failed, from its IO error.
    fn of(error: io::Error) -> TlsFailure {
        match error.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                TlsFailure::Eof
            }
            io::ErrorKind::InvalidData => TlsFailure::Protocol,
            _ => TlsFailure::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plain_http_answer_has_the_right_length() {
        let text = super::plain_http_answer();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{text}");
    }
}
