//! Chromium as a WebSocket client of the lean engine (headless, driven as in
//! `browser.rs`): what a browser sees when the server fails its connection, and
//! permessage-deflate as a browser offers it. The WebSocket is opened by a script in a
//! blank page (the server's live page would not do: its Content-Security-Policy allows
//! connections to its own origin only).

use std::time::Duration;

use serde_json::Value;

use crate::browser::Browser;
use crate::support::{Kind, TestServer};

crate::both_modes!(
    a_browser_sending_past_the_limit_sees_1009_not_1006,
    a_browser_negotiates_deflate_and_its_messages_echo,
);

/// How long a script's WebSocket may take to finish, on a busy machine.
const SETTLES: Duration = Duration::from_secs(30);

/// Runs `script` in the server's live page with `url` bound to the WebSocket URL; the
/// script sets `window.outcome` when it is done. Returns that outcome.
async fn run_in_page(server: &TestServer, script: &str) -> Value {
    let mut browser = Browser::launch().await;
    browser.open("about:blank").await;
    let url = server.url();
    let started = browser
        .eval(&format!(
            "(() => {{ const url = {url:?}; window.outcome = null; {script}; return true; }})()"
        ))
        .await;
    assert_eq!(started, Value::Bool(true), "the script did not start");
    browser
        .wait_for("the WebSocket's outcome", SETTLES, async |browser| {
            let outcome = browser.eval("window.outcome").await;
            (!outcome.is_null()).then_some(outcome)
        })
        .await
}

/// A 210 KB text message to a server with the default 64 KiB limit. Before the lean
/// engine lingered after failing a connection, Chromium reported 1006: the server closed
/// its socket with the message still arriving, the kernel answered with a reset, and the
/// browser lost the close frame.
async fn a_browser_sending_past_the_limit_sees_1009_not_1006(kind: Kind) {
    let server = TestServer::start(kind, &[]);
    let outcome = run_in_page(
        &server,
        r#"const ws = new WebSocket(url);
           ws.onopen = () => ws.send("x".repeat(210000));
           ws.onclose = (event) => { window.outcome = { code: event.code, reason: event.reason }; }"#,
    )
    .await;
    assert_eq!(outcome["code"], 1009, "{kind}: {outcome}");
    server
        .wait_for_metric(
            "wsscale_connections_closed_total",
            &[("reason", "error")],
            1.0,
            Duration::from_secs(10),
        )
        .await;
}

/// Chromium offers `permessage-deflate; client_max_window_bits`; under `stateless` and
/// `context` the server accepts, and a compressible and an incompressible message echo
/// through the browser's own inflate.
async fn a_browser_negotiates_deflate_and_its_messages_echo(kind: Kind) {
    for (flags, wanted) in [
        (
            &["--deflate", "stateless"][..],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            &["--deflate", "context", "--deflate-window-bits", "10"][..],
            "permessage-deflate; client_max_window_bits=10",
        ),
        (&["--deflate", "off"][..], ""),
    ] {
        let server = TestServer::start(kind, flags);
        let outcome = run_in_page(
            &server,
            r#"const ws = new WebSocket(url);
               const text = "the same words again and again, ".repeat(2000);
               let noise = "";
               for (let i = 0; i < 5000; i++) noise += String.fromCharCode(33 + (i * 7919) % 90);
               const sent = [text, noise, "é".repeat(10)];
               const got = [];
               ws.onopen = () => sent.forEach((message) => ws.send(message));
               ws.onmessage = (event) => {
                 got.push(event.data);
                 if (got.length === sent.length) {
                   window.outcome = {
                     extensions: ws.extensions,
                     echoed: got.every((message, i) => message === sent[i]),
                   };
                   ws.close(1000);
                 }
               };
               ws.onclose = (event) => {
                 if (window.outcome === null) window.outcome = { closed: event.code };
               }"#,
        )
        .await;
        assert_eq!(outcome["extensions"], wanted, "{kind} {flags:?}: {outcome}");
        assert_eq!(outcome["echoed"], true, "{kind} {flags:?}: {outcome}");
    }
}
