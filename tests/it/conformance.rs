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

/// A sample of the compression sections (12.* and 13.*: every subsection, that is every
/// offer and every data set, with its messages of up to 1 KiB, and one fragmented case;
/// `scripts/autobahn.sh --compression-sample`) against the lean engine with `--deflate
/// stateless` in tasks mode, in the test command: under a minute (47 s for 49 cases on
/// the 2-core machine, zlib-rs optimized in the test build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_compression_sample_passes_with_stateless_deflate() {
    compression_cases_pass(&["--deflate", "stateless"], "--compression-sample", 45).await;
}

/// The compression sections whole, in stateless mode: every case OK or INFORMATIONAL,
/// UNIMPLEMENTED (nothing negotiated) only where the offer asks for a window of 8
/// (13.3.*, 13.5.*), which the engine declines; a server that declined everything would
/// fail here. The other deflate modes and threads mode: `scripts/autobahn.sh URL OUTDIR
/// AGENT --compression` against `wsscale serve --deflate context` (docs/testing.md).
///
/// Not in the test command: sections 12 and 13 send 1000 messages of up to 128 KiB per
/// case, which the suite's Python client takes far longer than CI allows over (still
/// running after 15 minutes, its client busy, the server not); run it by hand:
/// `cargo test --release --test it -- --ignored conformance::autobahn_compression_cases`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour of the suite's Python client; run by hand (see above)"]
async fn autobahn_compression_cases_pass_with_stateless_deflate() {
    compression_cases_pass(&["--deflate", "stateless"], "--compression-only", 200).await;
}

async fn compression_cases_pass(flags: &[&str], option: &'static str, at_least: usize) {
    let kind = Kind::TASKS_LEAN;
    let index = run_autobahn(kind, flags, Some(option), "tasks-lean-deflate").await;
    let cases = index["tasks-lean-deflate"].as_object().expect("results for this agent");
    let mut failures = Vec::new();
    let mut negotiated = 0;
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        let declined_on_purpose = case.starts_with("13.3.") || case.starts_with("13.5.");
        let passes = match behavior {
            "OK" | "INFORMATIONAL" => {
                negotiated += 1;
                true
            }
            "UNIMPLEMENTED" => declined_on_purpose,
            _ => false,
        };
        if !passes || !matches!(close, "OK" | "INFORMATIONAL" | "UNIMPLEMENTED") {
            failures.push(format!("{case}: {behavior}/{close}"));
        }
    }
    println!(
        "autobahn compression ({option}): {} cases, {negotiated} negotiated",
        cases.len()
    );
    assert!(cases.len() >= at_least, "only {} cases ran", cases.len());
    assert!(negotiated > at_least / 2, "only {negotiated} cases negotiated");
    assert!(failures.is_empty(), "{} cases fail: {failures:?}", failures.len());
}

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

/// Runs the suite (scripts/autobahn.sh, with its `option`) against a server of `kind`
/// started with `flags`, as `agent`; returns its index.json.
async fn run_autobahn(kind: Kind, flags: &[&str], option: Option<&'static str>, agent: &str) -> Value {
    // Autobahn's 9.* cases send messages of up to 16 MiB.
    let mut args = vec!["--max-message-size", "20MiB"];
    args.extend_from_slice(flags);
    let server = ServeChild::spawn(Path::new(env!("CARGO_BIN_EXE_wsscale")), kind.args(&args), |command| {
        command.stderr(Stdio::inherit());
    })
    .unwrap();
    let reports = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/autobahn.sh");
    let url = server.url();
    let outdir = reports.path().to_owned();
    let agent = agent.to_owned();
    let status = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("bash");
        command.arg(script).arg(&url).arg(&outdir).arg(&agent);
        command.args(option);
        command.status()
    })
    .await
    .unwrap()
    .expect("bash runs scripts/autobahn.sh");
    assert!(
        status.success(),
        "the Autobahn suite could not run ({status}); see the script's message above"
    );
    read_json(&reports.path().join("index.json"))
}

async fn autobahn_fuzzing_client_passes_every_case(kind: Kind) {
    let bar = if kind.is_lean() { &LEAN_ENGINE } else { &STOCK_ENGINE };
    let index = run_autobahn(kind, &[], None, &kind.to_string()).await;
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
        // Sections 3 and 4 send a message, then a frame the server must fail on, octet by
        // octet: a server that closed its socket at once, with those octets still
        // arriving, lost the echo before them to the kernel's reset (NON-STRICT, now and
        // then). The lean engine lingers after failing a connection, so no allowance.
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
