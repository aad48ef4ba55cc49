//! Any WebSocket server, run by `wsscale compare --server NAME=COMMAND`: started under
//! `sh -c` in a process group of its own with `{port}` (and `WSSCALE_PORT`) set to a free
//! port — and `{cert}`, `{key}` to compare's certificate and key, which make it a wss://
//! server —, its output kept in the report folder, ready once a WebSocket upgrade
//! succeeds (over TLS for wss://, trusting that certificate), measured from /proc as a
//! process tree, and stopped with SIGTERM to the group (SIGKILL after a grace period).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::plan::TlsFiles;

/// How long a stopped server's group may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running external server.
pub struct ExternalServer {
    pub name: String,
    pub command: String,
    child: Child,
    pub port: u16,
    /// wss://: the certificate clients trust.
    pub cert: Option<PathBuf>,
    log: PathBuf,
}

impl ExternalServer {
    /// Starts `command` and waits until `ws://127.0.0.1:PORT{path}` (wss:// when the
    /// command takes `{cert}` or `{key}`, from `tls`) upgrades, or fails naming the server
    /// and quoting the end of its output.
    pub async fn start(
        name: &str,
        command: &str,
        path: &str,
        start_timeout: Duration,
        log: &Path,
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command_line = command.replace("{port}", &port.to_string());
        let uses_tls = command.contains("{cert}") || command.contains("{key}");
        let cert = match (uses_tls, tls) {
            (false, _) => None,
            (true, Some(tls)) => {
                command_line = command_line
                    .replace("{cert}", &tls.cert.display().to_string())
                    .replace("{key}", &tls.key.display().to_string());
                Some(tls.cert.clone())
            }
            (true, None) => bail!("server {name} takes {{cert}} or {{key}}, but compare made no certificate"),
        };
        let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(&command_line)
            .env("WSSCALE_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting server {name}: sh -c {command_line:?}"))?;
        let mut server = ExternalServer {
            name: name.to_owned(),
            command: command_line,
            child,
            port,
            cert,
            log: log.to_owned(),
        };
        server.wait_for_upgrade(path, start_timeout).await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.cert.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_for_upgrade(&mut self, path: &str, start_timeout: Duration) -> anyhow::Result<()> {
        let url = self.url(path);
        let deadline = Instant::now() + start_timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "server {} exited before it upgraded a connection ({status}); its output ({}):\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            let last_error = match tokio::time::timeout(Duration::from_secs(2), self.try_upgrade(&url)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => "no answer within 2 s".to_owned(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "server {} did not upgrade {url} within {start_timeout:?} (last attempt: {last_error}); its output ({}):\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One upgrade of `url` (over TLS, trusting the server's certificate, for wss://),
    /// closed at once.
    async fn try_upgrade(&self, url: &str) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|error| error.to_string())?;
        let io = match &self.cert {
            None => tokio_util::either::Either::Left(stream),
            Some(cert) => {
                let config = crate::server::tls::client_config_trusting(cert).map_err(|error| error.to_string())?;
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP address");
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|error| format!("TLS: {error}"))?;
                tokio_util::either::Either::Right(tls)
            }
        };
        let (mut socket, _) = tokio_tungstenite::client_async(url, io)
            .await
            .map_err(|error| error.to_string())?;
        let _ = socket.close(None).await;
        Ok(())
    }

    /// SIGTERM to the whole group, SIGKILL after the grace period; true if every
    /// process of the group exited on SIGTERM.
    pub fn stop(mut self) -> bool {
        self.signal_group(libc::SIGTERM);
        let graceful = self.wait_for_group(STOP_GRACE);
        if !graceful {
            self.signal_group(libc::SIGKILL);
            self.wait_for_group(STOP_GRACE);
        }
        graceful
    }

    /// True while any process of the server's group exists. Reaps the leader when it
    /// has exited (a zombie would still count as a member).
    fn group_alive(&mut self) -> bool {
        let _ = self.child.try_wait();
        // SAFETY: signal 0 only checks for existence. A group's id is not reused while
        // any member exists, and the leader is ours.
        unsafe { libc::kill(-(self.child.id() as i32), 0) == 0 }
    }

    /// Signals every process of the group, if any is left.
    fn signal_group(&mut self, signal: i32) {
        if self.group_alive() {
            // SAFETY: the group exists (checked just above), so its id is still ours.
            unsafe { libc::kill(-(self.child.id() as i32), signal) };
        }
    }

    fn wait_for_group(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.group_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        self.wait_for_group(STOP_GRACE);
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() { "(nothing)".to_owned() } else { tail }
}
