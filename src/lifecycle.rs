//! A WebSocket connection's life as the server sees it, whatever engine frames its bytes:
//! when to ping, when a silent peer is dead, how shutdown's 1001 and the drain go, and
//! why the connection ended. The lean engine's [`crate::session::Session`] and the
//! stock tungstenite engines all follow this one policy, so engines differ in framing
//! and buffers, never in behaviour. No IO, no clock of its own: callers pass `now`.

use std::time::{Duration, Instant};

/// Why a connection ended: the `reason` label of `wsscale_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer started the close handshake.
    ClientClose,
    /// No traffic from the peer within the idle timeout (pings went unanswered).
    IdleTimeout,
    /// A protocol violation, an oversized message, a reset, or EOF without a close frame.
    Error,
    /// The server is shutting down and sent 1001.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::ClientClose,
        CloseReason::IdleTimeout,
        CloseReason::Error,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The policy every connection follows; one per server.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_message_size: usize,
}

/// What the driver does after handing a connection an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Write what was produced and keep going.
    Continue,
    /// Write what was produced (best effort), close the socket: the connection ended for
    /// this reason.
    Finish(CloseReason),
}

/// What the timer asks of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet (the timer fired early, or the deadline moved).
    Nothing,
    /// Send a ping.
    Ping,
    /// The peer has been silent past the idle timeout: send close 1000 "idle timeout"
    /// (best effort, the peer is probably gone) and end the connection.
    IdleTimeout,
    /// A close we started got no answer within the drain timeout: end the connection.
    Finish(CloseReason),
}

/// How long a failed connection lingers, reading and discarding, before the server closes
/// its socket (see [`Lifecycle::begin_linger`]).
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes a failed connection reads and discards while it lingers.
pub const LINGER_BYTES: u32 = 1 << 20;

/// How a lingering close ended: the `end` label of `wsscale_close_lingers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerEnd {
    /// The peer closed its side (it read our close frame and hung up): the good end.
    PeerClosed,
    /// [`LINGER_TIMEOUT`] passed with the peer still connected.
    Timeout,
    /// The peer sent more than [`LINGER_BYTES`] after our close frame.
    Limit,
}

impl LingerEnd {
    pub const ALL: [LingerEnd; 3] = [LingerEnd::PeerClosed, LingerEnd::Timeout, LingerEnd::Limit];

    pub fn as_str(self) -> &'static str {
        match self {
            LingerEnd::PeerClosed => "peer_closed",
            LingerEnd::Timeout => "timeout",
            LingerEnd::Limit => "limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame and wait for the peer's until the deadline.
    Closing {
        reason: CloseReason,
        deadline: Instant,
    },
    /// We failed the connection: our close frame is written (or queued) and nothing more
    /// will be; what the peer still sends is read and discarded until it closes, the
    /// deadline passes or `left` bytes run out.
    Lingering {
        reason: CloseReason,
        deadline: Instant,
        left: u32,
    },
}

/// One connection's timing and closing state.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    state: State,
    last_activity: Instant,
    next_ping: Instant,
}

impl Lifecycle {
    pub fn new(policy: &SessionPolicy, now: Instant) -> Self {
        Lifecycle {
            state: State::Open,
            last_activity: now,
            next_ping: now + policy.ping_interval,
        }
    }

    /// When [`Lifecycle::on_timer`] is due if nothing else happens first.
    pub fn deadline(&self, policy: &SessionPolicy) -> Instant {
        match self.state {
            State::Closing { deadline, .. } | State::Lingering { deadline, .. } => deadline,
            State::Open => self.next_ping.min(self.last_activity + policy.idle_timeout),
        }
    }

    /// True until the connection starts closing; only an open connection heeds shutdown
    /// and answers messages.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The peer sent something (any frame): it is alive.
    pub fn on_activity(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// The deadline may have passed: ping, reap a silent peer, or give up on a close.
    pub fn on_timer(&mut self, now: Instant, policy: &SessionPolicy) -> Due {
        match self.state {
            State::Closing { reason, deadline } if now >= deadline => Due::Finish(reason),
            State::Closing { .. } => Due::Nothing,
            State::Lingering { reason, deadline, .. } if now >= deadline => Due::Finish(reason),
            State::Lingering { .. } => Due::Nothing,
            State::Open if now >= self.last_activity + policy.idle_timeout => Due::IdleTimeout,
            State::Open if now >= self.next_ping => {
                self.next_ping = now + policy.ping_interval;
                Due::Ping
            }
            State::Open => Due::Nothing,
        }
    }

    /// The server is shutting down: true if the connection was open, so the engine sends
    /// 1001 now; from here it waits for the peer's close until the drain timeout.
    pub fn begin_shutdown(&mut self, now: Instant, policy: &SessionPolicy) -> bool {
        if self.state != State::Open {
            return false;
        }
        self.state = State::Closing {
            reason: CloseReason::Shutdown,
            deadline: now + policy.drain_timeout,
        };
        true
    }

    /// The connection failed (a protocol violation, a message too big) and its close
    /// frame is on its way: from here nothing more is written, and what the peer sends is
    /// read and discarded ([`Lifecycle::on_discarded`]) until it closes, for at most
    /// [`LINGER_TIMEOUT`] and [`LINGER_BYTES`]. Closing the socket at once, with the
    /// peer's bytes unread or still arriving, would make the kernel answer with a reset,
    /// and a reset makes the peer's stack throw away what it had not read yet — our close
    /// frame among it (a browser then reports 1006, not the code we sent).
    pub fn begin_linger(&mut self, reason: CloseReason, now: Instant) {
        self.state = State::Lingering {
            reason,
            deadline: now + LINGER_TIMEOUT,
            left: LINGER_BYTES,
        };
    }

    /// True while a failed connection reads and discards.
    pub fn is_lingering(&self) -> bool {
        matches!(self.state, State::Lingering { .. })
    }

    /// `n` bytes were read and discarded while lingering: the connection's reason when
    /// that spent the byte budget, `None` while it lasts.
    pub fn on_discarded(&mut self, n: usize) -> Option<CloseReason> {
        let State::Lingering { reason, left, .. } = &mut self.state else {
            return None;
        };
        match u32::try_from(n).ok().and_then(|n| left.checked_sub(n)) {
            Some(rest) => {
                *left = rest;
                None
            }
            None => Some(*reason),
        }
    }

    /// The peer's close frame arrived (or, for a close we started, its answer).
    pub fn on_peer_close(&self) -> CloseReason {
        match self.state {
            State::Open => CloseReason::ClientClose,
            State::Closing { reason, .. } | State::Lingering { reason, .. } => reason,
        }
    }

    /// The peer closed TCP (or reset it) without a close frame.
    pub fn on_eof(&self) -> CloseReason {
        match self.state {
            // We asked to close and the peer hung up instead of answering: still ours.
            State::Closing { reason, .. } | State::Lingering { reason, .. } => reason,
            State::Open => CloseReason::Error,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The policy the unit tests of the lifecycle and of the session run under.
    pub(crate) const POLICY: SessionPolicy = SessionPolicy {
        ping_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(25),
        drain_timeout: Duration::from_secs(3),
        max_message_size: 1024,
    };

    #[test]
    fn pings_on_schedule_and_reaps_a_silent_peer() {
        let start = Instant::now();
        let mut life = Lifecycle::new(&POLICY, start);
        assert_eq!(life.deadline(&POLICY), start + POLICY.ping_interval);
        assert_eq!(life.on_timer(start + Duration::from_secs(5), &POLICY), Due::Nothing);
        assert_eq!(life.on_timer(start + Duration::from_secs(10), &POLICY), Due::Ping);
        assert_eq!(life.on_timer(start + Duration::from_secs(20), &POLICY), Due::Ping);
        assert_eq!(
            life.deadline(&POLICY),
            start + POLICY.idle_timeout,
            "idle deadline comes before the next ping"
        );
        assert_eq!(
            life.on_timer(start + Duration::from_secs(25), &POLICY),
            Due::IdleTimeout
        );
        assert_eq!(life.on_eof(), CloseReason::Error);
    }

    #[test]
    fn activity_postpones_the_idle_deadline() {
        let start = Instant::now();
        let mut life = Lifecycle::new(&POLICY, start);
        life.on_activity(start + Duration::from_secs(20));
        assert_eq!(life.on_timer(start + Duration::from_secs(26), &POLICY), Due::Ping);
        assert!(life.is_open());
        assert_eq!(life.on_peer_close(), CloseReason::ClientClose);
    }

    #[test]
    fn a_failed_connection_lingers_within_its_time_and_byte_budget() {
        let start = Instant::now();
        let mut life = Lifecycle::new(&POLICY, start);
        life.begin_linger(CloseReason::Error, start);
        assert!(life.is_lingering() && !life.is_open(), "no more answers, no 1001");
        assert_eq!(life.deadline(&POLICY), start + LINGER_TIMEOUT);
        assert_eq!(life.on_discarded(LINGER_BYTES as usize - 1), None);
        assert_eq!(life.on_discarded(1), None, "the budget is inclusive");
        assert_eq!(life.on_discarded(1), Some(CloseReason::Error));
        assert_eq!(life.on_eof(), CloseReason::Error);
        assert_eq!(life.on_timer(start + Duration::from_secs(1), &POLICY), Due::Nothing);
        assert_eq!(
            life.on_timer(start + LINGER_TIMEOUT, &POLICY),
            Due::Finish(CloseReason::Error)
        );
        let mut open = Lifecycle::new(&POLICY, start);
        assert_eq!(open.on_discarded(10), None, "an open connection discards nothing");
        assert!(!open.is_lingering());
    }

    #[test]
    fn shutdown_starts_once_and_gives_up_at_the_drain_timeout() {
        let start = Instant::now();
        let mut life = Lifecycle::new(&POLICY, start);
        assert!(life.begin_shutdown(start, &POLICY));
        assert!(!life.begin_shutdown(start, &POLICY), "1001 is sent once");
        assert!(!life.is_open());
        assert_eq!(life.deadline(&POLICY), start + POLICY.drain_timeout);
        assert_eq!(life.on_timer(start + Duration::from_secs(1), &POLICY), Due::Nothing);
        assert_eq!(life.on_peer_close(), CloseReason::Shutdown);
        assert_eq!(life.on_eof(), CloseReason::Shutdown);
        assert_eq!(
            life.on_timer(start + POLICY.drain_timeout, &POLICY),
            Due::Finish(CloseReason::Shutdown)
        );
    }
}
