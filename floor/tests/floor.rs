//! The floor programs against each other, as `scripts/bench-push.sh` runs them: the real
//! sender on 127.0.0.1:0, the real receiver opening connections to it, broadcasts over
//! the control port. Small N, a second or so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// A child whose stdout lines arrive on a channel, killed when dropped.
struct Program {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Program {
    fn start(binary: &str, args: &[&str]) -> Program {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the program");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Program { child, lines }
    }

    /// The next stdout line starting with `prefix`, within the deadline.
    fn line_starting(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("no line starting {prefix:?} within {DEADLINE:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Waits for the exit (within the deadline) and returns whether it succeeded.
    fn wait(&mut self) -> bool {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(std::time::Instant::now() < deadline, "did not exit within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP request on the control port: the status and the body.
fn request(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the control port");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("the whole response");
    let status = response[9..12].parse().expect("a status");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    (status, body)
}

fn start_sender() -> (Program, String, SocketAddr) {
    let sender = Program::start(env!("CARGO_BIN_EXE_floor-sender"), &["--threads", "2"]);
    // listening ws://ADDR/ws control http://ADDR/broadcast
    let line = sender.line_starting("listening ");
    let words: Vec<&str> = line.split(' ').collect();
    let control = words[3]
        .trim_start_matches("http://")
        .trim_end_matches("/broadcast")
        .parse()
        .expect("the control address");
    (sender, words[1].to_owned(), control)
}

#[test]
fn every_connection_gets_every_push_in_order_and_the_receiver_times_each() {
    const CONNECTIONS: u64 = 300;
    const PUSHES: u64 = 3;
    let (_sender, url, control) = start_sender();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("receiver.json");
    let mut receiver = Program::start(
        env!("CARGO_BIN_EXE_floor-receiver"),
        &[
            "--url",
            &url,
            "--connections",
            &CONNECTIONS.to_string(),
            "--pushes",
            &PUSHES.to_string(),
            "--threads",
            "2",
            "--in-flight",
            "64",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let ready = receiver.line_starting("ready ");
    assert!(
        ready.starts_with(&format!("ready {CONNECTIONS} connections to {url} in ")),
        "every connection upgraded: {ready}"
    );
    for seq in 1..=PUSHES {
        let (status, body) = request(control, "POST", "/broadcast?size=32");
        assert_eq!(status, 200, "{body}");
        let posted: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(posted["seq"], seq);
        assert_eq!(posted["connections"], CONNECTIONS);
        assert_eq!(posted["sent"], CONNECTIONS, "one whole frame per connection: {body}");
        assert_eq!(posted["frame_bytes"], 34, "wsscale's push frame size");
    }
    assert!(receiver.wait(), "the receiver stops by itself once every push is in");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["delivered"], CONNECTIONS * PUSHES);
    assert_eq!(summary["missed"], 0);
    assert_eq!(summary["gaps"], 0);
    assert_eq!(summary["lost_connections"], 0);
    let pushes = summary["pushes"].as_array().unwrap();
    assert_eq!(pushes.len() as u64, PUSHES);
    for (push, seq) in pushes.iter().zip(1..) {
        assert_eq!(push["seq"], seq);
        assert_eq!(push["delivered"], CONNECTIONS);
        assert_eq!(push["missed"], 0);
        let (p50, max) = (push["p50_ms"].as_f64().unwrap(), push["max_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max && max < DEADLINE.as_secs_f64() * 1e3, "{push}");
    }
}

#[test]
fn a_connection_takes_the_pushes_after_it_opened_and_a_bad_request_is_refused() {
    let (_sender, url, control) = start_sender();
    // A push before the receiver connects is not its own: its connections start at seq 2.
    assert_eq!(request(control, "POST", "/broadcast").0, 200);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("receiver.json");
    let mut receiver = Program::start(
        env!("CARGO_BIN_EXE_floor-receiver"),
        &[
            "--url",
            &url,
            "--connections",
            "20",
            "--pushes",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    receiver.line_starting("ready ");
    assert_eq!(
        request(control, "POST", "/broadcast?size=5").0,
        400,
        "below the push header"
    );
    assert_eq!(request(control, "POST", "/broadcast?size=lots").0, 400);
    assert_eq!(request(control, "GET", "/broadcast").0, 405);
    assert_eq!(request(control, "GET", "/metrics").0, 404);
    assert_eq!(request(control, "GET", "/healthz"), (200, "ok\n".to_owned()));
    let (status, body) = request(control, "POST", "/broadcast?size=200");
    assert_eq!(status, 200);
    assert!(body.contains(r#""frame_bytes":204"#), "a 16-bit length: {body}");
    assert_eq!(request(control, "POST", "/broadcast?size=32B").0, 200);
    assert!(receiver.wait());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["delivered"], 40);
    assert_eq!(summary["missed"], 0);
    assert_eq!(summary["gaps"], 0, "the first push a connection sees is not a gap");
    let seqs: Vec<u64> = summary["pushes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|push| push["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
}

#[test]
fn the_receiver_refuses_what_is_not_loopback_ws() {
    for url in ["ws://10.1.2.3:80/ws", "wss://127.0.0.1:443/ws", "ws://localhost:80/ws"] {
        let output = Command::new(env!("CARGO_BIN_EXE_floor-receiver"))
            .args(["--url", url, "--connections", "1"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--url"), "{url}: {stderr}");
    }
}
