//! `--push`'s floor run: floor-sender (the wsscale-floor package) started on loopback,
//! port 0 for both its WebSocket and its control listener, read from the line it prints
//! when it listens. Its output goes on into `serve-floor.log` (a thread copies it there:
//! floor-sender prints a line per broadcast, and a closed pipe would end it). Broadcasts
//! are `POST /broadcast?size=BYTES` on its control port, as for `wsscale serve`; its CPU
//! is read from /proc like any server's. Stopped with SIGTERM (SIGKILL after a grace
//! period).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long floor-sender may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running floor-sender.
pub struct FloorSender {
    child: Child,
    /// Where clients connect (`ws://ADDR/ws`).
    pub ws_addr: SocketAddr,
    /// Where `POST /broadcast` goes.
    pub control_addr: SocketAddr,
}

impl FloorSender {
    /// Starts `program` with `threads` writer threads and pushes of `push_size` bytes; its
    /// output (after the listening line) goes to `log`.
    pub fn start(program: &Path, threads: usize, push_size: usize, log: &Path) -> anyhow::Result<FloorSender> {
        let mut log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(program)
            .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
            .args(["--threads", &threads.to_string(), "--push-size", &push_size.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("floor-output".into()).spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut first = true;
            for line in lines.by_ref().map_while(Result::ok) {
                let _ = writeln!(log_file, "{line}");
                if std::mem::take(&mut first) {
                    let _ = sender.send(line);
                }
            }
        })?;
        let mut floor = FloorSender {
            child,
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = match receiver.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!(
                "{} printed no listening line within {START_TIMEOUT:?}; its output: {}",
                program.display(),
                log.display()
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                "{} ended before it listened ({}); its output: {}",
                program.display(),
                floor
                    .child
                    .wait()
                    .map_or_else(|error| error.to_string(), |status| status.to_string()),
                log.display()
            ),
        };
        (floor.ws_addr, floor.control_addr) =
            parse_listening(&line).with_context(|| format!("{}: unexpected first line {line:?}", program.display()))?;
        Ok(floor)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// SIGTERM (its default action ends it: it has nothing to flush), SIGKILL after the
    /// grace period; true if it ended on SIGTERM.
    pub fn stop(mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success() || status.signal() == Some(libc::SIGTERM),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for FloorSender {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `listening ws://ADDR/ws control http://ADDR/broadcast`: the two addresses.
fn parse_listening(line: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let mut words = line.split_whitespace();
    let (Some("listening"), Some(ws), Some("control"), Some(control)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("expected `listening ws://ADDR/ws control http://ADDR/broadcast`");
    };
    let addr = |url: &str, scheme: &str, path: &str| -> anyhow::Result<SocketAddr> {
        url.strip_prefix(scheme)
            .and_then(|rest| rest.strip_suffix(path))
            .context("an address")?
            .parse()
            .context("an address")
    };
    Ok((addr(ws, "ws://", "/ws")?, addr(control, "http://", "/broadcast")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let (ws, control) =
            parse_listening("listening ws://127.0.0.1:4100/ws control http://127.0.0.1:4101/broadcast").unwrap();
        assert_eq!(ws.port(), 4100);
        assert_eq!(control.port(), 4101);
        assert!(parse_listening("listening on 127.0.0.1:4100").is_err());
    }
}
