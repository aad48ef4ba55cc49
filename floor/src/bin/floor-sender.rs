//! floor-sender: the floor of a broadcast. It accepts WebSocket connections on /ws
//! (answering each upgrade with a 101, so any client takes it for a server), and on
//! `POST /broadcast?size=BYTES` on its control port — the request wsscale serves with
//! `--allow-broadcast` — writes one push frame, encoded once, to every connection from
//! `--threads` threads, each write one plain non-blocking `send()`. Nothing else runs in
//! it: what a broadcast costs here is the kernel's TCP path (on loopback, the receiving
//! side's too), which no server can go below.
//!
//! It prints one line when it listens (`listening ws://ADDR/ws control http://ADDR/broadcast`)
//! and one per broadcast, and answers each POST with the same figures as JSON once every
//! write is done. A write the socket does not take whole (a peer that does not read) is
//! counted, never retried: the receiver sees the gap.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use wsscale_floor::frame::{self, opcode};
use wsscale_floor::handshake::{self, HandshakeError};
use wsscale_wire::push;

/// The floor of a broadcast: accept WebSocket connections, then write one push frame to
/// each with a plain send() per connection on POST /broadcast.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address for WebSocket connections (GET /ws). Port 0 picks a free port; the bound
    /// address is printed.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address for POST /broadcast?size=BYTES (and GET /healthz).
    #[arg(long, default_value = "127.0.0.1:0")]
    control_listen: SocketAddr,
    /// Threads that write a broadcast, each to its share of the connections.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Size of a push's payload when POST /broadcast gives none: 32 bytes is a 34-byte
    /// frame, wsscale's default.
    #[arg(long, default_value_t = 32)]
    push_size: usize,
}

/// One accepted WebSocket connection.
struct Peer {
    stream: TcpStream,
    /// A write failed or went out short: the stream is no longer framed, so nothing more
    /// is written to it.
    broken: AtomicBool,
}

/// The connections, and the last push's sequence number (both under one lock: a broadcast
/// holds it, so accepts wait until it is written).
struct Peers {
    list: Vec<Peer>,
    seq: u64,
}

/// What one thread's writes (or one broadcast's) came to.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    sent: u64,
    /// The socket took nothing (its send buffer is full).
    would_block: u64,
    /// The socket took part of the frame: the connection is marked broken.
    partial: u64,
    /// An error (the peer is gone), or skipped as broken.
    failed: u64,
    cpu: Duration,
}

impl Outcome {
    fn add(self, other: Outcome) -> Outcome {
        Outcome {
            sent: self.sent + other.sent,
            would_block: self.would_block + other.would_block,
            partial: self.partial + other.partial,
            failed: self.failed + other.failed,
            cpu: self.cpu + other.cpu,
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("floor-sender: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.push_size < push::HEADER_LEN {
        return Err(format!(
            "--push-size must be at least {} bytes (the push header)",
            push::HEADER_LEN
        )
        .into());
    }
    wsscale_host::fd::raise_fd_limit()?;
    let listener = listen(args.listen)?;
    let control = listen(args.control_listen)?;
    println!(
        "listening ws://{}/ws control http://{}/broadcast",
        listener.local_addr()?,
        control.local_addr()?
    );
    std::io::stdout().flush()?;
    let peers = Arc::new(Mutex::new(Peers {
        list: Vec::new(),
        seq: 0,
    }));
    {
        let peers = peers.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(&listener, &peers))?;
    }
    // SIGINT or SIGTERM ends the process where it stands: there is nothing to flush.
    for stream in control.incoming() {
        if let Err(error) = stream
            .map_err(Into::into)
            .and_then(|stream| serve_control(stream, &peers, args))
        {
            eprintln!("floor-sender: control request: {error}");
        }
    }
    Ok(())
}

/// A listening socket with a backlog as deep as the kernel allows (somaxconn), so a
/// client opening thousands of connections at once does not see SYNs dropped.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Accepts connections for the life of the process; each upgrade is answered in turn.
fn accept_loop(listener: &TcpListener, peers: &Mutex<Peers>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("floor-sender: accept: {error}");
                // Out of descriptors, most likely: give the peer side time to close some.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let answer = match read_upgrade(&stream) {
            Ok(answer) => answer,
            Err(error) => {
                eprintln!("floor-sender: upgrade: {error}");
                continue;
            }
        };
        // The 101 and the connection's place in the list under the lock a broadcast holds:
        // no push can reach a connection before its 101, nor miss one after it.
        let mut peers = peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let answered = (&stream)
            .write_all(answer.as_bytes())
            .and_then(|()| stream.set_nonblocking(true));
        match answered {
            Ok(()) => peers.list.push(Peer {
                stream,
                broken: AtomicBool::new(false),
            }),
            Err(error) => eprintln!("floor-sender: upgrade: {error}"),
        }
    }
}

/// Reads an upgrade request (within 10 s): the 101 to answer it with, or an error once
/// the refusal's status is answered.
fn read_upgrade(stream: &TcpStream) -> Result<String, Box<dyn std::error::Error>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = [0u8; 4096];
    let mut len = 0;
    let answer = loop {
        let n = (&*stream).read(&mut head[len..])?;
        if n == 0 {
            return Err("closed before the end of its request".into());
        }
        len += n;
        match handshake::answer_request(&head[..len]) {
            Ok(Some(answer)) => break answer,
            Ok(None) if len < head.len() => continue,
            Ok(None) => return Err("request head over 4 KiB".into()),
            Err(refusal) => {
                let status = match refusal {
                    HandshakeError::Refused(status, _) => status,
                    _ => 400,
                };
                let _ =
                    (&*stream).write_all(format!("HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\n\r\n").as_bytes());
                return Err(refusal.into());
            }
        }
    };
    Ok(answer)
}

/// One request on the control port: POST /broadcast[?size=BYTES] or GET /healthz.
fn serve_control(mut stream: TcpStream, peers: &Mutex<Peers>, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, target) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head)? {
            httparse::Status::Complete(_) => {
                break (
                    request.method.unwrap_or_default().to_owned(),
                    request.path.unwrap_or_default().to_owned(),
                );
            }
            httparse::Status::Partial if head.len() < 16 * 1024 => continue,
            httparse::Status::Partial => return Err("request head over 16 KiB".into()),
        }
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, body) = match (method.as_str(), path) {
        ("POST", "/broadcast") => match broadcast_size(query, args.push_size) {
            Ok(size) => (200, broadcast(peers, size, args.threads)),
            Err(why) => (400, format!("{why}\n")),
        },
        ("GET", "/healthz") => (200, "ok\n".to_owned()),
        (_, "/broadcast" | "/healthz") => (405, "method not allowed\n".to_owned()),
        _ => (404, "POST /broadcast?size=BYTES or GET /healthz\n".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    )?;
    Ok(())
}

/// The push size a query asks for (`size=BYTES`, a whole number of bytes, optionally with
/// a `B`), or `default`.
fn broadcast_size(query: &str, default: usize) -> Result<usize, String> {
    let Some(size) = query.split('&').find_map(|pair| pair.strip_prefix("size=")) else {
        return Ok(default);
    };
    let size: usize = size
        .trim_end_matches('B')
        .parse()
        .map_err(|_| format!("size: {size:?} is not a number of bytes"))?;
    if !(push::HEADER_LEN..=frame::MAX_FRAME_LEN as usize).contains(&size) {
        return Err(format!(
            "size: {size} bytes, must be {} to {}",
            push::HEADER_LEN,
            frame::MAX_FRAME_LEN
        ));
    }
    Ok(size)
}

/// Writes one push of `size` bytes to every connection from `threads` threads and
/// returns the figures as a JSON line (also printed).
fn broadcast(peers: &Mutex<Peers>, size: usize, threads: u16) -> String {
    let mut peers = peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    peers.seq += 1;
    let seq = peers.seq;
    let mut encoded = Vec::with_capacity(size + 10);
    let payload = push::encode(
        push::Push {
            seq,
            sent_unix_nanos: push::now_unix_nanos(),
        },
        size,
    );
    frame::encode(&mut encoded, opcode::BINARY, &payload, None);
    let started = Instant::now();
    let share = peers.list.len().div_ceil(usize::from(threads)).max(1);
    let outcome = std::thread::scope(|scope| {
        let writers: Vec<_> = peers
            .list
            .chunks(share)
            .map(|share| scope.spawn(|| send_to_all(share, &encoded)))
            .collect();
        writers
            .into_iter()
            .map(|writer| writer.join().expect("a writer thread panicked"))
            .fold(Outcome::default(), Outcome::add)
    });
    let wall = started.elapsed();
    let line = serde_json::json!({
        "seq": seq,
        "connections": peers.list.len(),
        "frame_bytes": encoded.len(),
        "sent": outcome.sent,
        "would_block": outcome.would_block,
        "partial": outcome.partial,
        "failed": outcome.failed,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "cpu_ms": outcome.cpu.as_secs_f64() * 1e3,
    })
    .to_string();
    println!("broadcast {line}");
    let _ = std::io::stdout().flush();
    line
}

/// One thread's share: one non-blocking send() of the whole frame per connection.
fn send_to_all(peers: &[Peer], frame: &[u8]) -> Outcome {
    use std::os::fd::AsRawFd;
    let cpu_before = wsscale_floor::thread_cpu_time();
    let mut outcome = Outcome::default();
    for peer in peers {
        if peer.broken.load(Ordering::Relaxed) {
            outcome.failed += 1;
            continue;
        }
        // SAFETY: a valid socket fd and a buffer of frame.len() readable bytes.
        let written = unsafe {
            libc::send(
                peer.stream.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if written == frame.len() as isize {
            outcome.sent += 1;
        } else if written >= 0 {
            outcome.partial += 1;
            peer.broken.store(true, Ordering::Relaxed);
        } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
            outcome.would_block += 1;
        } else {
            outcome.failed += 1;
            peer.broken.store(true, Ordering::Relaxed);
        }
    }
    outcome.cpu = wsscale_floor::thread_cpu_time() - cpu_before;
    outcome
}
