//! A `wsscale serve` child process on 127.0.0.1:0: started, its bound addresses read from
//! its start line ([`StartLine`]), signalled, and killed when dropped. `wsscale compare` measures
//! servers this way (so the figures are the server's alone), and so do the tests.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::start_line::StartLine;

/// How long a server may take to print its "listening" line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServeChild {
    child: Child,
    /// What the server announced: its URL and bound addresses.
    pub start: StartLine,
    pub ws_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

impl ServeChild {
    /// Starts `program serve ARGS` with both listeners on loopback port 0, lets the caller
    /// adjust the command first (stderr, environment, resource limits), and waits for its
    /// start line.
    pub fn spawn<I, S>(program: &Path, args: I, configure: impl FnOnce(&mut Command)) -> io::Result<ServeChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::spawn_at(program, any_port, args, configure)
    }

    /// Like [`ServeChild::spawn`], with the WebSocket listener on `listen` (a server
    /// restarted on the port of one that stopped, say).
    pub fn spawn_at<I, S>(
        program: &Path,
        listen: SocketAddr,
        args: I,
        configure: impl FnOnce(&mut Command),
    ) -> io::Result<ServeChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
        command
            .args(["serve", "--listen"])
            .arg(listen.to_string())
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn()?;
        // The first line arrives on a thread of its own, so a server that never prints it
        // cannot hang the caller; the thread then drains stdout until the server exits,
        // so the pipe stays open (a later print must not fail) and never fills.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (first_line, first_line_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("serve-stdout".into()).spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let read = stdout.read_line(&mut line).map(|_| line);
            let _ = first_line.send(read);
            let _ = io::copy(&mut stdout, &mut io::sink());
        })?;
        let line = match first_line_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(read) => read?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("wsscale serve printed no address within {STARTUP_TIMEOUT:?}"),
                ));
            }
        };
        match line.parse::<StartLine>() {
            Ok(start) => Ok(ServeChild {
                child,
                ws_addr: start.ws_addr,
                metrics_addr: start.metrics_addr,
                start,
            }),
            // Nothing printed (the server exited), or something else: it did not start.
            Err(_) => {
                let status = child.wait()?;
                Err(io::Error::other(format!(
                    "wsscale serve did not start ({status}); its log says why"
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where WebSocket clients connect, as the server announced it.
    pub fn url(&self) -> String {
        self.start.url.clone()
    }

    /// Sends `signal`, unless the process has already exited (and been reaped: its pid
    /// may belong to another process by now).
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(io::Error::other(format!("wsscale serve has already exited ({status})")));
        }
        // SAFETY: kill(2) on our own child's pid, which try_wait has just shown is not
        // reaped (only this struct reaps it).
        if unsafe { libc::kill(self.child.id() as i32, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `within` for the process to exit; None if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST http://addr/path with an empty body over a fresh connection; the status and the
/// body.
pub async fn http_post(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    exchange(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    )
    .await
}

/// GET http://addr/path over a fresh connection; the body of a 200 response.
pub async fn http_get_body(addr: SocketAddr, path: &str) -> io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    match exchange(addr, request).await? {
        (200, body) => Ok(body),
        (status, _) => Err(io::Error::other(format!("GET {path}: status {status}"))),
    }
}

/// Sends one request, reads until the server closes; the status and the body.
async fn exchange(addr: SocketAddr, request: String) -> io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no HTTP response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}
