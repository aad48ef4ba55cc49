//! Echo server written the way fastwebsockets' `examples/echo_server.rs` writes one: hyper's
//! HTTP/1 server with upgrades, `upgrade::upgrade`, a `FragmentCollector` over the default
//! `WebSocket` (auto close and auto pong on), a task per connection on a current-thread
//! runtime.
//!
//! Differences from the example: the port comes from the first argument or WSSCALE_PORT, the
//! banner goes to stderr, and the example's "Client connected" line per connection is left
//! out. Every path is upgraded, as in the example, so /ws is too. With auto close on,
//! `read_frame` answers the client's Close frame before it returns it. SIGTERM: the default
//! disposition (the process exits).
//!
//! wss://: `--cert FILE --key FILE` (PEM) after the port serve TLS on the same port the way
//! fastwebsockets' `examples/tls_server.rs` does: a `tokio_rustls::TlsAcceptor` from a
//! `rustls::ServerConfig` (rustls' defaults, `with_no_client_auth().with_single_cert`), the
//! accepted TLS stream handed to the same hyper connection. The example's PEM files are
//! compiled in; here they are read at start, and a bad one ends the process with status 2.

use fastwebsockets::upgrade;
use fastwebsockets::OpCode;
use fastwebsockets::WebSocketError;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper::Response;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivateKeyDer;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);

    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(frame).await?;
            }
            _ => {}
        }
    }

    Ok(())
}

async fn server_upgrade(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;

    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            eprintln!("Error in websocket connection: {}", e);
        }
    });

    Ok(response)
}

/// The example's HTTP/1 connection with upgrades, over TCP or TLS.
async fn serve_connection<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn_fut = http1::Builder::new()
        .serve_connection(io, service_fn(server_upgrade))
        .with_upgrades();
    if let Err(e) = conn_fut.await {
        eprintln!("An error occurred: {:?}", e);
    }
}

/// The example's `tls_acceptor`, from the files given; on a bad file, its name and status 2.
fn tls_acceptor(cert: &str, key: &str) -> TlsAcceptor {
    let fail = |what: &str, error: &dyn std::fmt::Display| -> ! {
        eprintln!("rust-fastwebsockets: {what}: {error}");
        std::process::exit(2)
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| fail(&format!("--cert {cert}"), &e));
    let key_file = key;
    let key = PrivateKeyDer::from_pem_file(key_file).unwrap_or_else(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => fail(&format!("--key {key_file}"), &"no PEM private key in it"),
        e => fail(&format!("--key {key_file}"), &e),
    });
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| fail(&format!("--cert {cert} --key {key_file}"), &e));
    TlsAcceptor::from(Arc::new(config))
}

fn main() -> Result<(), WebSocketError> {
    let usage = "usage: rust-fastwebsockets PORT [--cert FILE --key FILE] (or set WSSCALE_PORT)";
    let mut args = std::env::args().skip(1).peekable();
    let mut port = std::env::var("WSSCALE_PORT").ok();
    if args.peek().is_some_and(|arg| !arg.starts_with('-')) {
        port = args.next();
    }
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--cert", Some(file)) => cert = Some(file),
            ("--key", Some(file)) => key = Some(file),
            _ => {
                eprintln!("unexpected argument {arg}\n{usage}");
                std::process::exit(2)
            }
        }
    }
    let Some(port) = port else {
        eprintln!("{usage}");
        std::process::exit(2)
    };
    let acceptor = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(tls_acceptor(&cert, &key)),
        _ => {
            eprintln!("--cert and --key go together\n{usage}");
            std::process::exit(2)
        }
    };
    let addr = format!("127.0.0.1:{port}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();

    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        let scheme = if acceptor.is_some() { "wss" } else { "ws" };
        eprintln!("rust-fastwebsockets listening {scheme}://{addr}/ws");
        loop {
            let (stream, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve_connection(stream).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => serve_connection(stream).await,
                        Err(e) => eprintln!("An error occurred: {:?}", e),
                    },
                }
            });
        }
    })
}
