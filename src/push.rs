//! The server push's payload: what `POST /broadcast` and `--push-interval` send to every
//! held connection, as one binary message. No IO.
//!
//! Layout: the 4 magic bytes `WSSP` (so a client tells pushes from echoes), the sequence
//! number (u64, big-endian), the server's send time (CLOCK_REALTIME nanoseconds, u64,
//! big-endian), then zero padding to the asked size. A client on the same host measures
//! delivery latency as its own CLOCK_REALTIME minus the send time, and missed pushes as
//! gaps in the sequence.

/// The first four bytes of every push.
pub const MAGIC: [u8; 4] = *b"WSSP";
/// Magic, sequence number and send time.
pub const HEADER_LEN: usize = 20;

/// A push payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn payload(seq: u64, sent_unix_nanos: u64, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(HEADER_LEN));
    payload.extend_from_slice(&MAGIC);
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(&sent_unix_nanos.to_be_bytes());
    payload.resize(size.max(HEADER_LEN), 0);
    payload
}

/// CLOCK_REALTIME now, in nanoseconds since the UNIX epoch.
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_magic_sequence_and_send_time_then_padding() {
        let payload = payload(7, 0x0102_0304_0506_0708, 32);
        assert_eq!(payload.len(), 32);
        assert_eq!(&payload[..4], b"WSSP");
        assert_eq!(payload[4..12], 7u64.to_be_bytes());
        assert_eq!(payload[12..20], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(payload[20..].iter().all(|&byte| byte == 0));
        assert_eq!(
            super::payload(1, 2, 3).len(),
            HEADER_LEN,
            "never shorter than its header"
        );
    }
}
