//! What a TLS session itself holds once its handshake is done, without any WebSocket or
//! socket around it: N server sessions handshaken in memory against rustls clients, the
//! clients dropped, then the live heap per server session, counted by the same allocator
//! wrapper the server's heap figures come from. For the breakdown of what an idle wss://
//! connection costs (docs/results.md):
//!
//! ```sh
//! cargo run --release --example tls_state [N]
//! ```
//!
//! - `unbuffered`: `rustls::server::UnbufferedServerConnection`, what the lean engine
//!   holds (inside its `LeanTls`);
//! - `lean`: the lean engine's `LeanTls` (the same, boxed, with its bookkeeping);
//! - `buffered`: `rustls::ServerConnection`, what tokio-rustls holds for the stock stack.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use wsscale::server::lean_tls::LeanTls;
use wsscale::server::tls::{self_signed, server_config};
use wsscale_host::alloc::{CountingAllocator, allocated_bytes};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let (cert, key) = self_signed().expect("a certificate");
    let server = server_config(
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let client = client_config(&cert);
    // Warm up once (the session cache, the provider's statics), outside the count.
    drop(lean(&server, &client, 300));
    drop(buffered(&server, &client, 300));

    let before = allocated_bytes();
    let held = lean(&server, &client, n);
    let per_lean = (allocated_bytes() - before) as f64 / n as f64;
    drop(held);

    let before = allocated_bytes();
    let held = buffered(&server, &client, n);
    let per_buffered = (allocated_bytes() - before) as f64 / n as f64;
    drop(held);

    println!("live heap per idle TLS session after its handshake ({n} sessions, rustls {RUSTLS}, ring, rustls' defaults):");
    println!("  lean engine's LeanTls (rustls unbuffered): {per_lean:.0} B");
    println!("  rustls buffered ServerConnection (tokio-rustls): {per_buffered:.0} B");
}

const RUSTLS: &str = "0.23";

fn client_config(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Everything the client has to send now.
fn client_flight(client: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// `n` LeanTls sessions handshaken (and their clients' tickets delivered), clients dropped.
fn lean(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>, n: usize) -> Vec<LeanTls> {
    (0..n)
        .map(|_| {
            let mut tls = LeanTls::new(server.clone()).unwrap();
            let mut peer = rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
            let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
            while peer.is_handshaking() || tls.is_handshaking() || !outgoing.is_empty() {
                let mut flight = client_flight(&mut peer);
                if !flight.is_empty() {
                    tls.receive(&mut flight, &mut plaintext, &mut outgoing).unwrap();
                }
                peer.read_tls(&mut &outgoing[..]).unwrap();
                peer.process_new_packets().unwrap();
                outgoing.clear();
            }
            tls
        })
        .collect()
}

/// `n` buffered ServerConnections handshaken the same way.
fn buffered(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Vec<rustls::ServerConnection> {
    (0..n)
        .map(|_| {
            let mut tls = rustls::ServerConnection::new(server.clone()).unwrap();
            let mut peer = rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
            while peer.is_handshaking() || tls.is_handshaking() || tls.wants_write() {
                let flight = client_flight(&mut peer);
                if !flight.is_empty() {
                    tls.read_tls(&mut &flight[..]).unwrap();
                    tls.process_new_packets().unwrap();
                }
                let mut out = Vec::new();
                while tls.wants_write() {
                    tls.write_tls(&mut out).unwrap();
                }
                peer.read_tls(&mut &out[..]).unwrap();
                peer.process_new_packets().unwrap();
            }
            tls
        })
        .collect()
}
