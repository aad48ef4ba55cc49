//! What a TLS session itself holds once its handshake is done, without any WebSocket or
//! socket around it: `n` server sessions handshaken in memory against rustls clients,
//! the clients dropped, then the live heap per server session, counted by the allocator
//! wrapper every heap figure of wsscale comes from (`wsscale_host::alloc`; a process
//! without it installed reads 0). `compare --schemes ws,wss` reports it beside the wss
//! runs, as the floor of what an idle wss:// connection can cost;
//! `cargo run --release --example tls_state` prints it alone.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use wsscale_host::alloc::allocated_bytes;

use crate::server::lean_tls::LeanTls;
use crate::server::tls::{self_signed, server_config};

/// Live heap per idle TLS session after its handshake (rustls' defaults, ring).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TlsState {
    pub sessions: usize,
    /// The lean engine's `LeanTls`: rustls' unbuffered server connection, boxed.
    pub lean_bytes: f64,
    /// rustls' buffered `ServerConnection`, what tokio-rustls holds.
    pub buffered_bytes: f64,
}

/// Measures [`TlsState`] over `n` sessions of each kind.
pub fn measure(n: usize) -> anyhow::Result<TlsState> {
    let (cert, key) = self_signed().map_err(anyhow::Error::msg)?;
    let server = server_config(
        vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
        PrivateKeyDer::from_pem_slice(key.as_bytes())?,
    )?;
    let client = client_config(&cert)?;
    // Warm up once (the session cache, the provider's statics), outside the count.
    drop(lean(&server, &client, 300)?);
    drop(buffered(&server, &client, 300)?);
    let before = allocated_bytes();
    let held = lean(&server, &client, n)?;
    let lean_bytes = allocated_bytes().saturating_sub(before) as f64 / n as f64;
    drop(held);
    let before = allocated_bytes();
    let held = buffered(&server, &client, n)?;
    let buffered_bytes = allocated_bytes().saturating_sub(before) as f64 / n as f64;
    drop(held);
    Ok(TlsState {
        sessions: n,
        lean_bytes,
        buffered_bytes,
    })
}

fn client_config(cert_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes())?)?;
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn peer(client: &Arc<rustls::ClientConfig>) -> anyhow::Result<rustls::ClientConnection> {
    Ok(rustls::ClientConnection::new(client.clone(), "localhost".try_into()?)?)
}

/// Everything the client has to send now.
fn client_flight(client: &mut rustls::ClientConnection) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out)?;
    }
    Ok(out)
}

/// `n` LeanTls sessions handshaken (and their clients' tickets delivered), clients dropped.
fn lean(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    n: usize,
) -> anyhow::Result<Vec<LeanTls>> {
    (0..n)
        .map(|_| {
            let mut tls = LeanTls::new(server.clone())?;
            let mut peer = peer(client)?;
            let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
            while peer.is_handshaking() || tls.is_handshaking() || !outgoing.is_empty() {
                let mut flight = client_flight(&mut peer)?;
                if !flight.is_empty() {
                    tls.receive(&mut flight, &mut plaintext, &mut outgoing)?;
                }
                peer.read_tls(&mut &outgoing[..])?;
                peer.process_new_packets()?;
                outgoing.clear();
            }
            Ok(tls)
        })
        .collect()
}

/// `n` buffered ServerConnections handshaken the same way.
fn buffered(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    n: usize,
) -> anyhow::Result<Vec<rustls::ServerConnection>> {
    (0..n)
        .map(|_| {
            let mut tls = rustls::ServerConnection::new(server.clone())?;
            let mut peer = peer(client)?;
            while peer.is_handshaking() || tls.is_handshaking() || tls.wants_write() {
                let flight = client_flight(&mut peer)?;
                if !flight.is_empty() {
                    tls.read_tls(&mut &flight[..])?;
                    tls.process_new_packets()?;
                }
                let mut out = Vec::new();
                while tls.wants_write() {
                    tls.write_tls(&mut out)?;
                }
                peer.read_tls(&mut &out[..])?;
                peer.process_new_packets()?;
            }
            Ok(tls)
        })
        .collect()
}
