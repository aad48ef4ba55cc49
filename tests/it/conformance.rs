//! RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against /ws, both modes,
//! both engines.
//! Every case must be OK, NON-STRICT or INFORMATIONAL, with close behaviour OK or
//! INFORMATIONAL. The suite runs on Python 2.7; scripts/autobahn.sh installs it where
//! missing, and this test fails (never passes silently) where it cannot run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use wsscale::child::ServeChild;

use crate::support::Kind;

crate::every_server!(autobahn_fuzzing_client_passes_every_case);

async fn autobahn_fuzzing_client_passes_every_case(kind: Kind) {
    // Autobahn's 9.* cases send messages of up to 16 MiB.
    let server = ServeChild::spawn(
        Path::new(env!("CARGO_BIN_EXE_wsscale")),
        kind.mode,
        kind.args(&["--max-message-size", "20MiB"]),
        Stdio::inherit(),
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

    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(reports.path().join("index.json")).unwrap()).unwrap();
    let cases = index[kind.to_string()].as_object().expect("results for this agent");
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *tally.entry(format!("{behavior}/{close}")).or_default() += 1;
        let passes =
            matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL") && matches!(close, "OK" | "INFORMATIONAL");
        if !passes {
            failures.push(format!("{case}: {behavior}/{close}"));
        }
    }
    println!("autobahn {kind}: {} cases {tally:?}", cases.len());
    assert!(cases.len() >= 300, "only {} cases ran", cases.len());
    assert!(
        failures.is_empty(),
        "{kind}: {} cases fail: {failures:?}",
        failures.len()
    );
}
