//! What a TLS session itself holds once its handshake is done (see
//! `wsscale::compare::tls_state`), for the breakdown of what an idle wss:// connection
//! costs:
//!
//! ```sh
//! cargo run --release --example tls_state [N]
//! ```

use wsscale_host::alloc::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> anyhow::Result<()> {
    let n = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let state = wsscale::compare::tls_state::measure(n)?;
    println!(
        "live heap per idle TLS session after its handshake ({} sessions, rustls 0.23, ring, rustls' defaults):",
        state.sessions
    );
    println!("  lean engine's LeanTls (rustls unbuffered): {:.0} B", state.lean_bytes);
    println!(
        "  rustls buffered ServerConnection (tokio-rustls): {:.0} B",
        state.buffered_bytes
    );
    Ok(())
}
