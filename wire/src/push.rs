//! Server pushes: binary messages the server sends to every held connection on its own
//! (`POST /broadcast`, `--push-interval`), to measure delivery latency. The payload is
//!
//! ```text
//! bytes 0..4    b"WSSP"                       magic: a push, not the echo of our message
//! bytes 4..12   sequence number               u64 big-endian, one more per push
//! bytes 12..20  the server's send time        CLOCK_REALTIME nanoseconds, u64 big-endian
//! bytes 20..    padding to the push size
//! ```
//!
//! Delivery latency is this host's CLOCK_REALTIME at receipt minus the send time, so it
//! is exact on one host and as good as the clock sync between two. A send time later than
//! the receipt (clocks apart) is counted and recorded as the histogram's floor (1 µs). Missed pushes are sequence
//! gaps on one connection; the first push a connection sees is not a gap.
//!
//! What a held connection keeps for this is one u64: the last sequence number it saw.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first four bytes of every push.
pub const MAGIC: [u8; 4] = *b"WSSP";

/// Magic, sequence number and send time; a shorter message is not a push.
pub const HEADER_LEN: usize = 20;

/// `last_seq` of a connection that has seen no push yet.
pub const NO_PUSH_YET: u64 = u64::MAX;

/// A push's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    pub seq: u64,
    /// The server's CLOCK_REALTIME at send, nanoseconds since the UNIX epoch.
    pub sent_unix_nanos: u64,
}

/// The push in a binary message, or None for any other message (an echo).
pub fn parse(payload: &[u8]) -> Option<Push> {
    let header: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
    if header[..4] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    Some(Push {
        seq: u64_at(4),
        sent_unix_nanos: u64_at(12),
    })
}

/// A push payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn encode(push: Push, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(HEADER_LEN));
    payload.extend_from_slice(&MAGIC);
    payload.extend_from_slice(&push.seq.to_be_bytes());
    payload.extend_from_slice(&push.sent_unix_nanos.to_be_bytes());
    payload.resize(size.max(HEADER_LEN), 0);
    payload
}

/// The pushes missed between the connection's last sequence number and `seq`, and the
/// new last sequence number. A repeated or older number is no gap and does not move the
/// last one back.
pub fn gap(last_seq: u64, seq: u64) -> (u64, u64) {
    if last_seq == NO_PUSH_YET {
        (0, seq)
    } else if seq > last_seq {
        (seq - last_seq - 1, seq)
    } else {
        (0, last_seq)
    }
}

/// Delivery latency of a push sent at `sent_unix_nanos` and received at `now_unix_nanos`;
/// None when the send time is later (the two clocks disagree).
pub fn delivery(sent_unix_nanos: u64, now_unix_nanos: u64) -> Option<Duration> {
    now_unix_nanos.checked_sub(sent_unix_nanos).map(Duration::from_nanos)
}

/// CLOCK_REALTIME now, nanoseconds since the UNIX epoch.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_server_sends() {
        let push = Push {
            seq: 0x0102_0304_0506_0708,
            sent_unix_nanos: 1_700_000_000_123_456_789,
        };
        let payload = encode(push, 64);
        assert_eq!(payload.len(), 64);
        assert_eq!(&payload[..4], b"WSSP");
        assert_eq!(&payload[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse(&payload), Some(push));
        // Exactly the header, no padding.
        assert_eq!(parse(&encode(push, 0)), Some(push));
    }

    #[test]
    fn echoes_and_short_messages_are_not_pushes() {
        assert_eq!(parse(&[0x5a; 32]), None, "the generator's own messages");
        assert_eq!(parse(b"WSSP"), None);
        assert_eq!(
            parse(
                &encode(
                    Push {
                        seq: 1,
                        sent_unix_nanos: 2
                    },
                    20
                )[..19]
            ),
            None
        );
        let mut wrong_magic = encode(
            Push {
                seq: 1,
                sent_unix_nanos: 2,
            },
            20,
        );
        wrong_magic[3] = b'Q';
        assert_eq!(parse(&wrong_magic), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn gaps_count_missed_pushes_per_connection() {
        // The first push is never a gap, whatever its number.
        assert_eq!(gap(NO_PUSH_YET, 41), (0, 41));
        assert_eq!(gap(NO_PUSH_YET, 0), (0, 0));
        assert_eq!(gap(0, 1), (0, 1));
        // Seq 3 after seq 1 missed one.
        assert_eq!(gap(1, 3), (1, 3));
        assert_eq!(gap(1, 11), (9, 11));
        // A repeat or an older number is no gap and keeps the highest.
        assert_eq!(gap(5, 5), (0, 5));
        assert_eq!(gap(5, 2), (0, 5));
        // A connection's sequence: 7, 8, 10, 13, 13, 14 missed 1 + 2.
        let mut last = NO_PUSH_YET;
        let mut missed = 0;
        for seq in [7, 8, 10, 13, 13, 14] {
            let (gap, new_last) = gap(last, seq);
            missed += gap;
            last = new_last;
        }
        assert_eq!((missed, last), (3, 14));
    }

    #[test]
    fn delivery_is_receipt_minus_send() {
        assert_eq!(delivery(1_000, 3_500), Some(Duration::from_nanos(2_500)));
        assert_eq!(delivery(1_000, 1_000), Some(Duration::ZERO));
        assert_eq!(delivery(3_500, 1_000), None);
        let now = now_unix_nanos();
        assert!(now > 1_600_000_000_000_000_000, "CLOCK_REALTIME in nanoseconds");
    }
}
