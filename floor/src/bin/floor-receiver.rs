//! floor-receiver: one client for every server a broadcast is measured on (wsscale in
//! each mode, and floor-sender), so their figures share a clock and a client cost.
//!
//! It opens `--connections` connections to a WebSocket URL on loopback — from source
//! addresses spread over 127.0.0.0/8 (`--first-source`, one more per `--per-source`
//! connections) with IP_BIND_ADDRESS_NO_PORT, so each source has the whole ephemeral port
//! range toward the server — upgrades each with a hand-written request, `--in-flight` at a
//! time, and prints `ready N ...` once all are open. Then `--threads` threads (default one)
//! wait in epoll, each on its share, and for every push frame (`wsscale_wire::push`) record
//! the delivery latency (CLOCK_REALTIME after the read that brought it, minus the send
//! time it carries) and the pushes the connection missed (sequence gaps). Pings are
//! answered, so no idle timeout fires; a close frame is answered and counts the
//! connection as lost.
//!
//! With `--pushes K` it stops once every connection has K pushes (received or missed) or
//! is lost; otherwise at SIGINT/SIGTERM or after `--timeout`. It then prints, per push and
//! overall, the pushes delivered and missed and the delivery p50/p99/max, and writes them
//! as JSON (`--json`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use wsscale_floor::frame::{FrameReader, opcode};
use wsscale_floor::{frame, handshake};
use wsscale_wire::push;

/// Open N WebSocket connections on loopback and time every server push they receive.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server's WebSocket URL: ws://127.x.y.z:PORT/PATH (loopback only).
    #[arg(long)]
    url: url::Url,
    /// Connections to open and hold (each is a file descriptor: fewer than the fd limit).
    #[arg(long)]
    connections: usize,
    /// Pushes each connection expects: stop once every connection has them (received or
    /// missed) or is lost. Without it, run until SIGINT/SIGTERM or --timeout.
    #[arg(long)]
    pushes: Option<u64>,
    /// Threads waiting in epoll, each on its share of the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// The first source address; the next one in 127.0.0.0/8 every --per-source connections.
    #[arg(long, default_value = "127.0.3.1")]
    first_source: Ipv4Addr,
    /// Connections per source address (each source has ~28k ports toward one server).
    #[arg(long, default_value_t = 10_000)]
    per_source: usize,
    /// Upgrades in flight at once while opening.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// The longest the receiver waits for pushes once every connection is open.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write the summary as JSON here (then print `done`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Once the summary is out, hold every connection open until SIGINT/SIGTERM, so the
    /// server's CPU can be read before the connections close (pings are no longer
    /// answered meanwhile).
    #[arg(long)]
    linger: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);
/// Connections with all their pushes (or lost): the threads stop when it reaches N.
static FINISHED: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("floor-receiver: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let target = target_of(&args.url)?;
    let fds = wsscale_host::fd::raise_fd_limit()?;
    if args.connections == 0 || args.connections as u64 + 32 > fds.soft {
        return Err(format!(
            "--connections must be 1 to {} (the fd limit {} minus 32 for the process's own)",
            fds.soft.saturating_sub(32),
            fds.soft
        )
        .into());
    }
    if args.per_source == 0 || args.in_flight == 0 {
        return Err("--per-source and --in-flight must be at least 1".into());
    }
    wsscale_floor::stop_on_signal(&STOP);
    let opening = Instant::now();
    let connections = open_all(args, target)?;
    println!(
        "ready {} connections to {} in {:.2} s",
        connections.len(),
        args.url,
        opening.elapsed().as_secs_f64()
    );
    std::io::stdout().flush()?;

    let started = Instant::now();
    let deadline = started + args.timeout;
    let mask = (push::now_unix_nanos() as u32 | 1).to_be_bytes();
    let threads = usize::from(args.threads);
    let mut shares: Vec<Vec<Connection>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, connection) in connections.into_iter().enumerate() {
        shares[index % threads].push(connection);
    }
    let mut held = Vec::new();
    let tally = std::thread::scope(|scope| {
        let waiters: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || wait_for_pushes(share, args, deadline, mask)))
            .collect();
        waiters
            .into_iter()
            .map(|waiter| waiter.join().expect("a receiver thread panicked"))
            .try_fold(Tally::new(), |mut all, waited| {
                let (tally, connections) = waited?;
                all.merge(tally);
                held.push(connections);
                Ok::<_, std::io::Error>(all)
            })
    })?;
    let summary = tally.summary(args, started.elapsed());
    print_summary(&summary);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    println!("done");
    std::io::stdout().flush()?;
    while args.linger && !STOP.load(Ordering::Acquire) {
        // Nothing to do but wait for the signal; the connections stay open meanwhile.
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    Ok(())
}

/// The server's address, if the URL is ws:// to a loopback IPv4 address.
fn target_of(url: &url::Url) -> Result<SocketAddr, String> {
    if url.scheme() != "ws" {
        return Err(format!("--url {url}: only ws:// (no TLS)"));
    }
    let ip: IpAddr = url
        .host_str()
        .and_then(|host| host.parse().ok())
        .ok_or_else(|| format!("--url {url}: the host must be an IPv4 address on loopback"))?;
    if !matches!(ip, IpAddr::V4(ip) if ip.is_loopback()) {
        return Err(format!("--url {url}: loopback only (127.0.0.0/8): this is a load tool"));
    }
    let port = url.port().ok_or_else(|| format!("--url {url}: no port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// One held connection. No buffer: the reader holds bytes only while a read ended inside
/// a frame.
struct Connection {
    stream: TcpStream,
    reader: FrameReader,
    /// Bytes that came with the 101, read before the epoll loop starts.
    early: Vec<u8>,
    last_seq: u64,
    received: u64,
    gaps: u64,
    /// Counted in FINISHED (all pushes, or lost).
    finished: bool,
    /// Read no more: lost (EOF, error, close frame or a protocol error).
    ended: bool,
}

/// Opens every connection: connect and send the request for `--in-flight` of them, then
/// read their answers, and so on.
fn open_all(args: &Args, target: SocketAddr) -> Result<Vec<Connection>, String> {
    let host = target.to_string();
    let path = &args.url[url::Position::BeforePath..url::Position::AfterQuery];
    let seed = push::now_unix_nanos();
    let mut connections = Vec::with_capacity(args.connections);
    for first in (0..args.connections).step_by(args.in_flight) {
        let last = (first + args.in_flight).min(args.connections);
        let mut opening = Vec::with_capacity(last - first);
        for index in first..last {
            let source = Ipv4Addr::from(u32::from(args.first_source) + (index / args.per_source) as u32);
            let key = handshake::client_key(seed ^ index as u64);
            let stream = connect(target, source)
                .and_then(|mut stream| {
                    stream.write_all(handshake::client_request(&host, path, &key).as_bytes())?;
                    Ok(stream)
                })
                .map_err(|error| format!("connection {index} from {source}: {error}"))?;
            opening.push((index, stream, key));
        }
        for (index, stream, key) in opening {
            let early = read_upgrade(&stream, &key).map_err(|error| format!("connection {index}: upgrade: {error}"))?;
            stream
                .set_nonblocking(true)
                .map_err(|error| format!("connection {index}: {error}"))?;
            connections.push(Connection {
                stream,
                reader: FrameReader::default(),
                early,
                last_seq: push::NO_PUSH_YET,
                received: 0,
                gaps: 0,
                finished: false,
                ended: false,
            });
        }
    }
    Ok(connections)
}

/// Connects from `source` (port chosen at connect time: IP_BIND_ADDRESS_NO_PORT).
fn connect(target: SocketAddr, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let enable: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the declared size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const enable).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(source.into(), 0).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(10))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Reads the server's answer (within 10 s) and checks it is our 101; returns the bytes
/// that followed it.
fn read_upgrade(mut stream: &TcpStream, key: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = [0u8; 2048];
    let mut len = 0;
    loop {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        len += n;
        match handshake::check_response(&head[..len], key)? {
            Some(head_len) => return Ok(head[head_len..len].to_vec()),
            None if len == head.len() => return Err("response head over 2 KiB".into()),
            None => {}
        }
    }
}

/// What one thread saw (merged into one for the summary).
struct Tally {
    /// Delivery latency of every push, microseconds.
    delivery: Histogram<u64>,
    /// The same per push, by sequence number.
    per_push: BTreeMap<u64, Histogram<u64>>,
    delivered: u64,
    gaps: u64,
    /// Connections lost, by cause (eof, error, close_CODE, protocol).
    lost: BTreeMap<String, u64>,
    /// Pushes whose send time is after their receipt (clocks apart), recorded as 1 µs.
    clock_behind: u64,
    /// Data messages that are not pushes.
    other_messages: u64,
    pings_answered: u64,
    /// Pongs (or close replies) the socket did not take whole.
    write_failures: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl Tally {
    fn new() -> Tally {
        Tally {
            delivery: histogram(),
            per_push: BTreeMap::new(),
            delivered: 0,
            gaps: 0,
            lost: BTreeMap::new(),
            clock_behind: 0,
            other_messages: 0,
            pings_answered: 0,
            write_failures: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.delivery.add(&other.delivery).expect("same bounds");
        for (seq, histogram) in other.per_push {
            self.per_push
                .entry(seq)
                .or_insert_with(self::histogram)
                .add(&histogram)
                .expect("same bounds");
        }
        self.delivered += other.delivered;
        self.gaps += other.gaps;
        for (cause, count) in other.lost {
            *self.lost.entry(cause).or_default() += count;
        }
        self.clock_behind += other.clock_behind;
        self.other_messages += other.other_messages;
        self.pings_answered += other.pings_answered;
        self.write_failures += other.write_failures;
    }

    fn record_push(&mut self, seq: u64, delivery_us: u64) {
        self.delivered += 1;
        self.delivery.saturating_record(delivery_us);
        self.per_push
            .entry(seq)
            .or_insert_with(histogram)
            .saturating_record(delivery_us);
    }

    fn summary(&self, args: &Args, elapsed: Duration) -> serde_json::Value {
        let ms = |histogram: &Histogram<u64>, quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1e3;
        let expected = args.pushes.map(|pushes| pushes * args.connections as u64);
        json!({
            "url": args.url.as_str(),
            "connections": args.connections,
            "threads": args.threads,
            "pushes_expected": expected,
            "delivered": self.delivered,
            // Without --pushes, only the gaps are known to be missed.
            "missed": expected.map_or(self.gaps, |expected| expected.saturating_sub(self.delivered)),
            "gaps": self.gaps,
            "lost_connections": self.lost.values().sum::<u64>(),
            "lost": self.lost,
            "clock_behind": self.clock_behind,
            "other_messages": self.other_messages,
            "pings_answered": self.pings_answered,
            "write_failures": self.write_failures,
            "delivery_ms": {
                "p50": ms(&self.delivery, 0.5),
                "p99": ms(&self.delivery, 0.99),
                "max": self.delivery.max() as f64 / 1e3,
                "mean": self.delivery.mean() / 1e3,
            },
            "pushes": self.per_push.iter().map(|(seq, histogram)| json!({
                "seq": seq,
                "delivered": histogram.len(),
                // Connections that did not get it (every connection was open before it).
                "missed": (args.connections as u64).saturating_sub(histogram.len()),
                "p50_ms": ms(histogram, 0.5),
                "p99_ms": ms(histogram, 0.99),
                "max_ms": histogram.max() as f64 / 1e3,
            })).collect::<Vec<_>>(),
            "elapsed_s": elapsed.as_secs_f64(),
            "receiver_cpu_s": process_cpu_time().as_secs_f64(),
        })
    }
}

fn print_summary(summary: &serde_json::Value) {
    for push in summary["pushes"].as_array().into_iter().flatten() {
        println!(
            "push {}: delivered {}, missed {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            push["seq"], push["delivered"], push["missed"], push["p50_ms"], push["p99_ms"], push["max_ms"]
        );
    }
    let delivery = &summary["delivery_ms"];
    println!(
        "all: delivered {}, missed {}, lost connections {}; delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        summary["delivered"],
        summary["missed"],
        summary["lost_connections"],
        delivery["p50"],
        delivery["p99"],
        delivery["max"]
    );
}

/// User + system CPU time of this process so far.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills a zeroed rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let of = |time: libc::timeval| Duration::new(time.tv_sec as u64, time.tv_usec as u32 * 1000);
    of(usage.ru_utime) + of(usage.ru_stime)
}

/// One thread: its share of the connections in one epoll set, until every connection
/// has its pushes (or is lost), the deadline, or a signal. Returns the connections still
/// open, for `--linger`.
fn wait_for_pushes(
    mut connections: Vec<Connection>,
    args: &Args,
    deadline: Instant,
    mask: [u8; 4],
) -> std::io::Result<(Tally, Vec<Connection>)> {
    let mut tally = Tally::new();
    // SAFETY: epoll_create1 with a valid flag; the fd is closed by OwnedFd.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: epoll is a new descriptor nothing else owns.
    let epoll = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epoll) };
    for (index, connection) in connections.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: index as u64,
        };
        // SAFETY: valid epoll and socket fds, and an event we own.
        if unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                connection.stream.as_raw_fd(),
                &mut event,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    let now = push::now_unix_nanos();
    for connection in &mut connections {
        let early = std::mem::take(&mut connection.early);
        connection.on_bytes(&early, now, args.pushes, mask, &mut tally);
    }
    let all = if args.pushes.is_some() {
        args.connections
    } else {
        usize::MAX
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    // One read buffer for the thread: a connection holds none.
    let mut buffer = vec![0u8; 64 * 1024];
    while !STOP.load(Ordering::Acquire) && FINISHED.load(Ordering::Acquire) < all && Instant::now() < deadline {
        // SAFETY: events has room for events.len() entries.
        let ready = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 100) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        for event in &events[..ready as usize] {
            let connection = &mut connections[{ event.u64 } as usize];
            connection.on_readable(&mut buffer, args.pushes, mask, &mut tally);
            if connection.ended {
                // SAFETY: valid epoll and socket fds; DEL ignores the event argument.
                unsafe {
                    libc::epoll_ctl(
                        epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        connection.stream.as_raw_fd(),
                        std::ptr::null_mut(),
                    );
                }
            }
        }
    }
    Ok((tally, connections))
}

impl Connection {
    /// Reads what the socket has; each read's bytes share one receipt time, taken as the
    /// read returns.
    fn on_readable(&mut self, buffer: &mut [u8], pushes: Option<u64>, mask: [u8; 4], tally: &mut Tally) {
        while !self.ended {
            match (&self.stream).read(buffer) {
                Ok(0) => self.end("eof", tally),
                Ok(n) => {
                    self.on_bytes(&buffer[..n], push::now_unix_nanos(), pushes, mask, tally);
                    if n < buffer.len() {
                        break;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.end("error", tally),
            }
        }
    }

    /// Every frame the bytes complete: pushes timed, pings answered, a close answered.
    fn on_bytes(&mut self, bytes: &[u8], now: u64, pushes: Option<u64>, mask: [u8; 4], tally: &mut Tally) {
        let Connection {
            stream,
            reader,
            last_seq,
            received,
            gaps,
            ..
        } = self;
        let mut closed = None;
        let mut reply = Vec::new();
        let fed = reader.feed(bytes, |frame| match frame.opcode {
            opcode::BINARY if frame.fin => match push::parse(frame.payload) {
                Some(pushed) => {
                    let delivery_us = match push::delivery(pushed.sent_unix_nanos, now) {
                        Some(delivery) => (delivery.as_micros() as u64).max(1),
                        None => {
                            tally.clock_behind += 1;
                            1
                        }
                    };
                    tally.record_push(pushed.seq, delivery_us);
                    let (gap, seq) = push::gap(*last_seq, pushed.seq);
                    *received += 1;
                    *gaps += gap;
                    tally.gaps += gap;
                    *last_seq = seq;
                }
                None => tally.other_messages += 1,
            },
            opcode::PING => {
                frame::encode(&mut reply, opcode::PONG, frame.payload, Some(mask));
                tally.pings_answered += 1;
            }
            opcode::CLOSE => {
                let code = frame.payload.get(..2).unwrap_or_default();
                frame::encode(&mut reply, opcode::CLOSE, code, Some(mask));
                closed = Some(match code {
                    [high, low] => format!("close_{}", u16::from_be_bytes([*high, *low])),
                    _ => "close_none".to_owned(),
                });
            }
            opcode::PONG => {}
            // Neither wsscale nor the sender fragments: a fragment is some other server's
            // message, counted but not timed.
            _ => tally.other_messages += u64::from(frame.fin),
        });
        if !reply.is_empty() && !matches!(stream.write(&reply), Ok(n) if n == reply.len()) {
            tally.write_failures += 1;
        }
        if let Err(error) = fed {
            eprintln!("floor-receiver: {error}");
            self.end("protocol", tally);
        } else if let Some(cause) = closed {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.end(&cause, tally);
        } else if !self.finished && pushes.is_some_and(|pushes| self.received + self.gaps >= pushes) {
            self.finished = true;
            FINISHED.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The connection is lost: read no more; it counts as finished.
    fn end(&mut self, cause: &str, tally: &mut Tally) {
        self.ended = true;
        *tally.lost.entry(cause.to_owned()).or_default() += 1;
        if !self.finished {
            self.finished = true;
            FINISHED.fetch_add(1, Ordering::AcqRel);
        }
    }
}
