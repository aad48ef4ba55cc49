//! The WebSocket upgrade (RFC 6455 section 4), both sides, written out: the receiver's
//! request and its check of the answer, the sender's answer. No IO: each side reads the
//! head into its own buffer and asks whether it is complete.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not an HTTP head.
    Malformed(String),
    /// The server answered with this status instead of 101.
    Status(u16),
    /// A 101 whose Sec-WebSocket-Accept does not match our key.
    BadAccept,
    /// The sender refuses the request: the status it answers and why.
    Refused(u16, &'static str),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Malformed(why) => write!(f, "not an HTTP head: {why}"),
            HandshakeError::Status(status) => write!(f, "the server answered {status}, not 101"),
            HandshakeError::BadAccept => write!(f, "the 101's Sec-WebSocket-Accept does not match the key"),
            HandshakeError::Refused(status, why) => write!(f, "refused with {status}: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Sec-WebSocket-Accept for a client's Sec-WebSocket-Key.
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// A Sec-WebSocket-Key: 16 bytes (from `seed`, distinct per connection), base64.
pub fn client_key(seed: u64) -> String {
    // splitmix64 twice: any 16 bytes are a valid key; distinct seeds give distinct keys.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&mix(seed).to_be_bytes());
    bytes[8..].copy_from_slice(&mix(!seed).to_be_bytes());
    BASE64.encode(bytes)
}

/// The receiver's upgrade request for `path` on `host` (HOST:PORT).
pub fn client_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// Checks the server's answer so far: None while the head is incomplete; the head's
/// length once it is a 101 with the right Sec-WebSocket-Accept (bytes after it are
/// frames).
pub fn check_response(head: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(head) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(error) => return Err(HandshakeError::Malformed(error.to_string())),
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(HandshakeError::Status(status));
    }
    let accept = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("sec-websocket-accept"));
    if accept.map(|header| header.value) != Some(accept_key(key).as_bytes()) {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(head_len))
}

/// The sender's answer to a request head so far: None while incomplete; the 101 for a
/// valid upgrade on /ws; otherwise the refusal (the caller answers its status and closes).
pub fn answer_request(head: &[u8]) -> Result<Option<String>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(error) => return Err(HandshakeError::Malformed(error.to_string())),
    }
    if request.method != Some("GET") {
        return Err(HandshakeError::Refused(405, "only GET upgrades"));
    }
    if request.path.map(|path| path.split('?').next()) != Some(Some("/ws")) {
        return Err(HandshakeError::Refused(404, "WebSocket connections are on /ws"));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
    };
    if !header("upgrade").is_some_and(|value| value.eq_ignore_ascii_case("websocket")) {
        return Err(HandshakeError::Refused(426, "Upgrade: websocket expected"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::Refused(426, "Sec-WebSocket-Version: 13 expected"));
    }
    let Some(key) = header("sec-websocket-key") else {
        return Err(HandshakeError::Refused(400, "Sec-WebSocket-Key missing"));
    };
    Ok(Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.trim())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // RFC 6455 section 1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn the_senders_answer_passes_the_receivers_check() {
        let key = client_key(42);
        assert_eq!(BASE64.decode(&key).unwrap().len(), 16);
        assert_ne!(key, client_key(43));
        let request = client_request("127.0.0.1:9", "/ws", &key);
        for at in 0..request.len() {
            assert_eq!(
                answer_request(&request.as_bytes()[..at]),
                Ok(None),
                "incomplete at {at}"
            );
        }
        let response = answer_request(request.as_bytes()).unwrap().unwrap();
        for at in 0..response.len() {
            assert_eq!(check_response(&response.as_bytes()[..at], &key), Ok(None));
        }
        let mut with_a_frame = response.clone().into_bytes();
        with_a_frame.extend_from_slice(&[0x82, 0]);
        assert_eq!(check_response(&with_a_frame, &key), Ok(Some(response.len())));
        assert_eq!(
            check_response(response.as_bytes(), &client_key(7)),
            Err(HandshakeError::BadAccept)
        );
    }

    #[test]
    fn the_sender_refuses_what_is_not_an_upgrade_on_ws() {
        let key = client_key(1);
        let refused = |request: String| answer_request(request.as_bytes());
        assert!(matches!(
            refused(client_request("h", "/other", &key)),
            Err(HandshakeError::Refused(404, _))
        ));
        assert!(matches!(
            refused(client_request("h", "/ws", &key).replace("GET", "POST")),
            Err(HandshakeError::Refused(405, _))
        ));
        assert!(matches!(
            refused(client_request("h", "/ws", &key).replace("Upgrade: websocket", "Upgrade: h2c")),
            Err(HandshakeError::Refused(426, _))
        ));
        assert!(matches!(
            refused("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".into()),
            Err(HandshakeError::Refused(400, _))
        ));
        assert_eq!(
            check_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", &key),
            Err(HandshakeError::Status(503))
        );
    }
}
