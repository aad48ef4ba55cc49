//! permessage-deflate on the lean engine (`--deflate`), with a real client that offers it
//! as browsers do: Python `websockets` (the peer's venv, which scripts/test.sh installs),
//! whose client offers `permessage-deflate; client_max_window_bits` by default and checks
//! RSV1 and the negotiated parameters on every frame. The stock engine refuses the flag.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{Kind, TestServer};

/// Connects, echoes a compressible text and a binary message, and prints the 101's
/// Sec-WebSocket-Extensions (null when declined).
const CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def main(url):
    async with connect(url) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        text = "the same words again and again, " * 2000
        for message in [text, bytes(range(256)) * 100, "", "é" * 10]:
            await ws.send(message)
            assert await ws.recv() == message, "echo differs"
        print(json.dumps({"extensions": extensions}))

asyncio.run(main(sys.argv[1]))
"#;

fn python_client(url: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("peers/python-websockets/.venv/bin/python");
    assert!(
        python.is_file(),
        "the python-websockets peer is not installed: run peers/install.sh python-websockets (scripts/test.sh does)"
    );
    let output = Command::new(python).arg("-c").arg(CLIENT).arg(url).output().unwrap();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

crate::both_modes!(each_deflate_mode_negotiates_with_a_browser_like_client_and_echoes);

async fn each_deflate_mode_negotiates_with_a_browser_like_client_and_echoes(kind: Kind) {
    for (flags, wanted) in [
        (&["--deflate", "off"][..], Value::Null),
        (
            &["--deflate", "stateless"][..],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover".into(),
        ),
        (
            &["--deflate", "context", "--deflate-window-bits", "10"][..],
            "permessage-deflate; client_max_window_bits=10".into(),
        ),
    ] {
        let server = TestServer::start(kind, flags);
        let url = server.url();
        let answer = tokio::task::spawn_blocking(move || python_client(&url)).await.unwrap();
        assert_eq!(answer["extensions"], wanted, "{kind} {flags:?}");
    }
}

#[test]
fn the_stock_engine_refuses_deflate_at_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsscale"))
        .args([
            "serve",
            "--engine",
            "tungstenite",
            "--deflate",
            "stateless",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--deflate needs the lean engine"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
