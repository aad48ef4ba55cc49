//! Any WebSocket server, run by `wsscale compare --server NAME=COMMAND`: started under
//! `sh -c` in a process group of its own with `{port}` (and `WSSCALE_PORT`) set to a free
//! port, its output kept in the report folder, ready once a WebSocket upgrade succeeds,
//! measured from /proc as a process tree, and stopped with SIGTERM to the group (SIGKILL
//! after a grace period).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a stopped server's group may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running external server.
pub struct ExternalServer {
    pub name: String,
    pub command: String,
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl ExternalServer {
    /// Starts `command` and waits until `ws://127.0.0.1:PORT{path}` upgrades, or fails
    /// naming the server and quoting the end of its output.
    pub async fn start(
        name: &str,
        command: &str,
        path: &str,
        start_timeout: Duration,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let command_line = command.replace("{port}", &port.to_string());
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
            log: log.to_owned(),
        };
        server.wait_for_upgrade(path, start_timeout).await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
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
            let last_error =
                match tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(&url)).await {
                    Ok(Ok((mut socket, _))) => {
                        let _ = socket.close(None).await;
                        return Ok(());
                    }
                    Ok(Err(error)) => error.to_string(),
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
