//! The WebSocket session policy, shared by both execution models: what to answer to each
//! message, when to ping, when a silent peer is dead, how a connection ends and why.
//!
//! This module does no IO and owns no socket or buffer. Each execution model drives a
//! [`Session`] from its own loop (an async `select!` in tasks mode, poll(2) in threads
//! mode) and does what it returns, so the two models behave identically on the wire and
//! count identically in the metrics.

use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::metrics::ServerMetrics;

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

/// The timing policy every session follows; one per server.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
}

/// What the driver does when the session's deadline passes.
#[derive(Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing due yet (the deadline moved, e.g. traffic arrived).
    Nothing,
    /// Send a ping frame.
    SendPing,
    /// The peer is silent past the idle timeout: send this close frame (best effort) and
    /// drop the connection without waiting for a reply.
    CloseIdle(CloseFrame),
    /// A close handshake we started did not finish in time: drop the connection.
    Abandon,
}

/// What the driver does after a read error.
#[derive(Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// The connection is over; drop it.
    End,
    /// The peer broke the protocol: send this close frame, then drop the connection
    /// without waiting for a reply ("fail the WebSocket connection", RFC 6455 7.1.7).
    Close(CloseFrame),
}

/// One connection's state: its timers and how it is ending.
#[derive(Debug)]
pub struct Session {
    policy: SessionPolicy,
    last_activity: Instant,
    next_ping: Instant,
    /// Set once the connection starts ending: the reason it will be counted under, and
    /// (when we started a close handshake) how long we wait for the peer's reply.
    ending: Option<(CloseReason, Option<Instant>)>,
}

impl Session {
    pub fn new(policy: SessionPolicy, now: Instant) -> Self {
        Session {
            policy,
            last_activity: now,
            next_ping: now + policy.ping_interval,
            ending: None,
        }
    }

    /// When the driver must call [`Session::on_timer`] if nothing else happens first.
    pub fn deadline(&self) -> Instant {
        match self.ending {
            Some((_, Some(drain_deadline))) => drain_deadline,
            _ => self.next_ping.min(self.last_activity + self.policy.idle_timeout),
        }
    }

    /// A message from the peer; returns the message to send back, if any.
    pub fn on_message(&mut self, message: Message, now: Instant, metrics: &ServerMetrics) -> Option<Message> {
        self.last_activity = now;
        match message {
            Message::Text(_) | Message::Binary(_) => {
                metrics.messages_received.increment(1);
                if self.ending.is_some() {
                    return None;
                }
                metrics.messages_sent.increment(1);
                Some(message)
            }
            // tungstenite queues the pong and the close reply itself; the driver keeps
            // reading so they are flushed and the close handshake completes cleanly.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(_) => {
                self.ending.get_or_insert((CloseReason::ClientClose, None));
                None
            }
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> TimerAction {
        if let Some((_, Some(drain_deadline))) = self.ending {
            return if now >= drain_deadline {
                TimerAction::Abandon
            } else {
                TimerAction::Nothing
            };
        }
        if now >= self.last_activity + self.policy.idle_timeout {
            self.ending = Some((CloseReason::IdleTimeout, None));
            return TimerAction::CloseIdle(close_frame(CloseCode::Normal, "idle timeout"));
        }
        if now >= self.next_ping {
            self.next_ping = now + self.policy.ping_interval;
            return TimerAction::SendPing;
        }
        TimerAction::Nothing
    }

    /// The server is shutting down: returns the 1001 frame to send; the driver keeps
    /// reading until the peer replies or [`Session::deadline`] passes.
    pub fn begin_shutdown(&mut self, now: Instant) -> Option<CloseFrame> {
        if self.ending.is_some() {
            return None;
        }
        self.ending = Some((CloseReason::Shutdown, Some(now + self.policy.drain_timeout)));
        Some(close_frame(CloseCode::Away, "server shutting down"))
    }

    /// A read or write failed. Close-handshake completions are ordinary ends; protocol
    /// violations get the close code RFC 6455 names for them.
    pub fn on_error(&mut self, error: &WsError, now: Instant) -> ErrorAction {
        let close = match error {
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                self.ending.get_or_insert((CloseReason::Error, None));
                return ErrorAction::End;
            }
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => close_frame(CloseCode::Size, "message too big"),
            WsError::Utf8(_) => close_frame(CloseCode::Invalid, "invalid UTF-8"),
            // EOF without a close frame: nobody is left to tell.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.ending.get_or_insert((CloseReason::Error, None));
                return ErrorAction::End;
            }
            WsError::Protocol(_) => close_frame(CloseCode::Protocol, "protocol error"),
            _ => {
                self.ending = Some((CloseReason::Error, None));
                return ErrorAction::End;
            }
        };
        if self.ending.is_some() {
            return ErrorAction::End;
        }
        self.ending = Some((CloseReason::Error, Some(now + self.policy.drain_timeout)));
        ErrorAction::Close(close)
    }

    /// The reason this connection is counted under when it ends now.
    pub fn close_reason(&self) -> CloseReason {
        self.ending.map_or(CloseReason::Error, |(reason, _)| reason)
    }

    /// True once the connection is ending and no further echo is due.
    pub fn is_ending(&self) -> bool {
        self.ending.is_some()
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SessionPolicy = SessionPolicy {
        ping_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(25),
        drain_timeout: Duration::from_secs(3),
    };

    fn metrics() -> ServerMetrics {
        ServerMetrics::register()
    }

    #[test]
    fn echoes_data_and_not_control_frames() {
        let metrics = metrics();
        let now = Instant::now();
        let mut session = Session::new(POLICY, now);
        assert_eq!(
            session.on_message(Message::text("hi"), now, &metrics),
            Some(Message::text("hi"))
        );
        assert_eq!(
            session.on_message(Message::binary(vec![1, 2]), now, &metrics),
            Some(Message::binary(vec![1, 2]))
        );
        assert_eq!(session.on_message(Message::Ping(vec![1].into()), now, &metrics), None);
        assert_eq!(session.on_message(Message::Close(None), now, &metrics), None);
        assert_eq!(session.close_reason(), CloseReason::ClientClose);
        assert_eq!(
            session.on_message(Message::text("late"), now, &metrics),
            None,
            "no echo after close"
        );
    }

    #[test]
    fn pings_on_schedule_and_reaps_a_silent_peer() {
        let start = Instant::now();
        let mut session = Session::new(POLICY, start);
        assert_eq!(session.deadline(), start + POLICY.ping_interval);
        assert_eq!(session.on_timer(start + Duration::from_secs(5)), TimerAction::Nothing);
        assert_eq!(session.on_timer(start + Duration::from_secs(10)), TimerAction::SendPing);
        assert_eq!(session.on_timer(start + Duration::from_secs(20)), TimerAction::SendPing);
        assert_eq!(
            session.deadline(),
            start + POLICY.idle_timeout,
            "idle deadline comes before the next ping"
        );
        assert!(matches!(
            session.on_timer(start + Duration::from_secs(25)),
            TimerAction::CloseIdle(_)
        ));
        assert_eq!(session.close_reason(), CloseReason::IdleTimeout);
    }

    #[test]
    fn traffic_postpones_the_idle_deadline() {
        let metrics = metrics();
        let start = Instant::now();
        let mut session = Session::new(POLICY, start);
        session.on_message(
            Message::Pong(Vec::new().into()),
            start + Duration::from_secs(20),
            &metrics,
        );
        assert_eq!(session.on_timer(start + Duration::from_secs(26)), TimerAction::SendPing);
        assert!(!session.is_ending());
    }

    #[test]
    fn shutdown_sends_1001_once_and_waits_the_drain_timeout() {
        let start = Instant::now();
        let mut session = Session::new(POLICY, start);
        let frame = session.begin_shutdown(start).unwrap();
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(session.begin_shutdown(start), None);
        assert_eq!(session.deadline(), start + POLICY.drain_timeout);
        assert_eq!(session.on_timer(start + Duration::from_secs(1)), TimerAction::Nothing);
        assert_eq!(session.on_timer(start + POLICY.drain_timeout), TimerAction::Abandon);
        assert_eq!(session.on_error(&WsError::ConnectionClosed, start), ErrorAction::End);
        assert_eq!(session.close_reason(), CloseReason::Shutdown);
    }

    #[test]
    fn oversized_messages_close_with_1009() {
        let start = Instant::now();
        let mut session = Session::new(POLICY, start);
        let error = WsError::Capacity(CapacityError::MessageTooLong { size: 10, max_size: 5 });
        let ErrorAction::Close(frame) = session.on_error(&error, start) else {
            panic!("no close frame")
        };
        assert_eq!(frame.code, CloseCode::Size);
        assert_eq!(session.close_reason(), CloseReason::Error);
    }
}
