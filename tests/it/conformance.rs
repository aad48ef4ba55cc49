//! RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against /ws, both modes,
//! both engines, and over wss:// for the lean engine in tasks mode (the suite's client
//! speaks TLS through pyOpenSSL; the lean engine's TLS is its own driver of rustls'
//! unbuffered API, so the whole suite runs through it). The other wss stacks, for a longer
//! run: `scripts/autobahn.sh wss://… OUTDIR AGENT` against `wsscale serve --tls-self-signed`.
//! Every case must meet the engine's [`PassBar`]: for the lean engine, OK or
//! INFORMATIONAL; for the stock tungstenite engine, OK, NON-STRICT or INFORMATIONAL;
//! close behaviour OK or INFORMATIONAL in both. The suite runs on Python 2.7;
//! scripts/autobahn.sh installs it where missing, and this test fails (never passes
//! silently) where it cannot run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use wsscale::child::ServeChild;

use crate::support::{Kind, read_json};

crate::every_server!(autobahn_fuzzing_client_passes_every_case);
crate::servers!([autobahn_fuzzing_client_passes_every_case]; tasks_lean_wss: "tasks" "lean" "wss");

/// The Autobahn verdicts a case may get: its behaviour, and its close behaviour.
struct PassBar {
    behavior: &'static [&'static str],
    close: &'static [&'static str],
}

/// The lean engine fails fast on invalid UTF-8 (issue #11), so NON-STRICT — failing
/// only at the end of a message or frame (cases 6.4.*) — fails here.
const LEAN_ENGINE: PassBar = PassBar {
    behavior: &["OK", "INFORMATIONAL"],
    close: &["OK", "INFORMATIONAL"],
};

/// The suite's own bar, for an engine that fails late, as tungstenite does.
const STOCK_ENGINE: PassBar = PassBar {
    behavior: &["OK", "NON-STRICT", "INFORMATIONAL"],
    close: &["OK", "INFORMATIONAL"],
};

async fn autobahn_fuzzing_client_passes_every_case(kind: Kind) {
    let bar = if kind.is_lean() { &LEAN_ENGINE } else { &STOCK_ENGINE };
    // Autobahn's 9.* cases send messages of up to 16 MiB.
    let server = ServeChild::spawn(
        Path::new(env!("CARGO_BIN_EXE_wsscale")),
        kind.args(&["--max-message-size", "20MiB"]),
        |command| {
            command.stderr(Stdio::inherit());
        },
    )
    .unwrap();
    let reports = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/autobahn.sh");
    let url = server.url();
    let outdir = reports.path().to_owned();
    let agent = kind.to_string();
    let status = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .arg(&url)
            .arg(&outdir)
            .arg(&agent)
            .status()
    })
    .await
    .unwrap()
    .expect("bash runs scripts/autobahn.sh");
    assert!(
        status.success(),
        "the Autobahn suite could not run ({status}); see the script's message above"
    );

    let index: Value = read_json(&reports.path().join("index.json"));
    let cases = index[kind.to_string()].as_object().expect("results for this agent");
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut not_ok = Vec::new();
    let mut failures = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *tally.entry(format!("{behavior}/{close}")).or_default() += 1;
        if (behavior, close) != ("OK", "OK") {
            not_ok.push(format!("{case}: {behavior}/{close}"));
        }
        if !bar.behavior.contains(&behavior) || !bar.close.contains(&close) {
            failures.push(format!("{case}: {behavior}/{close}"));
        }
    }
    println!(
        "autobahn {kind}: {} cases {tally:?}; not OK/OK: {not_ok:?}",
        cases.len()
    );
    assert!(cases.len() >= 300, "only {} cases ran", cases.len());
    assert!(
        failures.is_empty(),
        "{kind}: {} cases fail: {failures:?}",
        failures.len()
    );
}
