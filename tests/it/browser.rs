//! A real browser for the live pages: headless Chromium (Debian's `chromium`;
//! scripts/test.sh installs it), driven over the DevTools protocol.
//!
//! Why the protocol rather than `chromium --dump-dom`: a page that must be watched going
//! from "live" to "disconnected" and back while a server stops and starts needs one page
//! that stays open, and tests that wait for a condition of the DOM with a deadline need to
//! read it as often as they like; `--dump-dom` gives one snapshot of a fresh page per
//! Chromium start, and `--virtual-time-budget` runs the page's clock ahead of the real one.
//! Why by hand rather than a driver crate: the tests need four commands (open a page,
//! evaluate an expression, set the viewport, take a screenshot) over a WebSocket, which
//! the workspace already speaks (tokio-tungstenite); the driver crates (chromiumoxide,
//! headless_chrome) generate bindings for the whole protocol, minutes of compile time on
//! a 2-core CI machine for four commands.
//!
//! Chromium runs in its own process group with a fresh profile, and the group is killed
//! when the [`Browser`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::Client;

/// How long Chromium may take to start, and one command to answer, on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The viewport the pages are read and photographed at.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1000;

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools: Client,
    next_id: u64,
    /// The page's session (flat mode: commands for the page carry it).
    session: Option<String>,
}

impl Browser {
    /// Starts Chromium (`WSSCALE_CHROMIUM`, or `chromium` on the PATH) with the flags the
    /// tests need and nothing that reaches out to the network on its own.
    pub async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let program = std::env::var("WSSCALE_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&program)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    "--remote-debugging-port=0",
                    &format!("--window-size={WIDTH},{HEIGHT}"),
                    &format!("--user-data-dir={}", profile.path().display()),
                    "about:blank",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| panic!("{program}: {error} (scripts/test.sh installs Debian's chromium)"))
        };
        // Chromium writes the port it bound and the browser's WebSocket path here.
        let active_port = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&active_port)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not start within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (devtools, _) = crate::support::connect_to(&endpoint, None)
            .await
            .expect("DevTools endpoint");
        Browser {
            child,
            _profile: profile,
            devtools,
            next_id: 0,
            session: None,
        }
    }

    /// Sends one command (to the page once one is open) and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.devtools.send(Message::text(command.to_string())).await.unwrap();
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let message = self.devtools.next().await.expect("DevTools connection open").unwrap();
                let Message::Text(text) = message else { continue };
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                // Events have no id; answers to other commands cannot be pending.
                if value["id"] == json!(id) {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within {COMMAND_TIMEOUT:?}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Opens `url` in a new page; the commands that follow go to it.
    pub async fn open(&mut self, url: &str) {
        self.session = None;
        let target = self.call("Target.createTarget", json!({ "url": url })).await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        self.viewport(HEIGHT).await;
    }

    /// Takes the open page off the network: every request it makes from now on fails
    /// (Chromium's offline emulation), as on a machine with no network.
    pub async fn offline(&mut self) {
        self.call("Network.enable", json!({})).await;
        self.call(
            "Network.emulateNetworkConditions",
            json!({ "offline": true, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0 }),
        )
        .await;
    }

    /// Loads `url` in the open page.
    pub async fn navigate(&mut self, url: &str) {
        let answer = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(answer.get("errorText").is_none(), "{url}: {answer}");
    }

    async fn viewport(&mut self, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// The value of a JavaScript expression in the page (null if it throws).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if result.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        result["result"]["value"].clone()
    }

    /// The text of the element with id `id` ("" if there is none yet).
    pub async fn text(&mut self, id: &str) -> String {
        let expression = format!("(document.getElementById({id:?}) || {{}}).textContent || ''");
        self.eval(&expression).await.as_str().unwrap_or_default().to_owned()
    }

    /// What a person sees: the page's whole text.
    pub async fn body_text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls `check` until it answers `Some` or `within` passes; panics with `what` and
    /// the page's text.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut check: impl AsyncFnMut(&mut Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = check(self).await {
                return found;
            }
            if Instant::now() >= deadline {
                let text = self.body_text().await;
                panic!("the page never showed {what} within {within:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the element `id` reads `expected`.
    pub async fn wait_for_text(&mut self, id: &str, expected: &str, within: Duration) {
        let what = format!("#{id} = {expected:?}");
        self.wait_for(&what, within, async |browser| {
            (browser.text(id).await == expected).then_some(())
        })
        .await;
    }

    /// A PNG of the whole page (every section, not only the viewport) at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let height = self
            .eval("document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(u64::from(HEIGHT)) as u32;
        self.viewport(height.clamp(HEIGHT, 4000)).await;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        self.viewport(HEIGHT).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real picture");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: killpg(2) on the process group Chromium leads (process_group(0) made its
        // pid the group id), which only our child and its own children are in.
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Where a test keeps its screenshot: `WSSCALE_SCREENSHOTS` (e.g. `docs`, to refresh
/// README's pictures) or a temporary folder.
pub fn screenshot_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    match std::env::var_os("WSSCALE_SCREENSHOTS") {
        Some(folder) => {
            let folder = PathBuf::from(folder);
            std::fs::create_dir_all(&folder).unwrap();
            folder.join(name)
        }
        None => dir.path().join(name),
    }
}

/// A figure as the page prints it ("1,409 B", "2,000", "12.5/s") as a number; None for
/// a dash or nothing.
pub fn number(text: &str) -> Option<f64> {
    let digits: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, ',' | '.' | '-'))
        .filter(|c| *c != ',')
        .collect();
    digits.parse().ok()
}
