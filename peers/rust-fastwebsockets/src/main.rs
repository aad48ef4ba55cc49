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
use tokio::net::TcpListener;

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

fn main() -> Result<(), WebSocketError> {
    let port = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("WSSCALE_PORT").ok())
        .expect("usage: rust-fastwebsockets PORT (or set WSSCALE_PORT)");
    let addr = format!("127.0.0.1:{port}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();

    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("rust-fastwebsockets listening ws://{addr}/ws");
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn_fut = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                if let Err(e) = conn_fut.await {
                    eprintln!("An error occurred: {:?}", e);
                }
            });
        }
    })
}
