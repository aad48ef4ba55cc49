//! The HTTP side of a WebSocket upgrade (RFC 6455 section 4.2), shared by both execution
//! models: both run the same HTTP phase (hyper with the axum router, see
//! `server::upgrade`), which asks [`check`] and sends the response built here. So the two
//! models accept, and refuse, exactly the same requests with exactly the same answers.

use http::header::{self, HeaderMap, HeaderValue};

use crate::deflate::Agreement;
use http::{Method, Response, StatusCode, Version};

/// Why a client did not get a WebSocket: the `reason` label of
/// `wsscale_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Every permit is taken (HTTP 503).
    Capacity,
    /// The upgrade request did not arrive complete within --handshake-timeout.
    HandshakeTimeout,
    /// Not a valid WebSocket upgrade (HTTP 400 or 426).
    BadRequest,
    /// threads mode: the OS refused a new thread (HTTP 503).
    ThreadSpawn,
    /// The TLS handshake failed (wsscale_tls_handshake_failures_total says why); one that
    /// timed out counts as `handshake_timeout`.
    Tls,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Capacity,
        RejectReason::HandshakeTimeout,
        RejectReason::BadRequest,
        RejectReason::ThreadSpawn,
        RejectReason::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Capacity => "capacity",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::BadRequest => "bad_request",
            RejectReason::ThreadSpawn => "thread_spawn",
            RejectReason::Tls => "tls",
        }
    }
}

/// The one path that upgrades.
pub const WEBSOCKET_PATH: &str = "/ws";

/// An upgrade request that passed every check: send [`switching_protocols`] to accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The Sec-WebSocket-Accept value derived from the client's key.
    pub accept_key: String,
    /// permessage-deflate, when the engine accepted an offer (decided by the caller: the
    /// stock engine declines every offer).
    pub deflate: Option<Agreement>,
}

/// Why a request does not upgrade; [`Refusal::response`] is the answer to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    MethodNotAllowed,
    /// Not an upgrade request at all (a browser or curl on /ws).
    UpgradeRequired,
    /// An upgrade request for a WebSocket version other than 13.
    UnsupportedVersion,
    /// HTTP/1.0 or older, or a missing or malformed Sec-WebSocket-Key.
    BadRequest(&'static str),
    /// Every connection permit is taken.
    AtCapacity,
    /// threads mode: the OS refused a thread for the connection.
    ThreadUnavailable,
}

impl Refusal {
    /// The metric label of a refusal counted in `wsscale_connections_rejected_total`
    /// (404 and 405 are not WebSocket rejections and are not counted).
    pub fn reject_reason(self) -> Option<RejectReason> {
        match self {
            Refusal::NotFound | Refusal::MethodNotAllowed => None,
            Refusal::UpgradeRequired | Refusal::UnsupportedVersion | Refusal::BadRequest(_) => {
                Some(RejectReason::BadRequest)
            }
            Refusal::AtCapacity => Some(RejectReason::Capacity),
            Refusal::ThreadUnavailable => Some(RejectReason::ThreadSpawn),
        }
    }

    /// A complete response with a one-line text body; the connection closes after it.
    pub fn response(self) -> Response<String> {
        let (status, body) = match self {
            Refusal::NotFound => (StatusCode::NOT_FOUND, "not found: WebSocket clients connect to /ws"),
            Refusal::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET"),
            Refusal::UpgradeRequired => (
                StatusCode::UPGRADE_REQUIRED,
                "upgrade required: /ws speaks WebSocket only",
            ),
            Refusal::UnsupportedVersion => (
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version: use 13",
            ),
            Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            Refusal::AtCapacity => (StatusCode::SERVICE_UNAVAILABLE, "server at capacity: try again later"),
            Refusal::ThreadUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server cannot start a thread for this connection: try again later",
            ),
        };
        let mut response = Response::new(format!("{body}\n"));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Decides whether a request upgrades to WebSocket. Capacity is the caller's check, made
/// after this one passes, so a malformed request never takes a permit (and no request
/// takes one before it has fully arrived).
pub fn check(method: &Method, path: &str, version: Version, headers: &HeaderMap) -> Result<Accepted, Refusal> {
    if path != WEBSOCKET_PATH {
        return Err(Refusal::NotFound);
    }
    if method != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    let is_upgrade = header_has_token(headers, &header::CONNECTION, "upgrade")
        && header_has_token(headers, &header::UPGRADE, "websocket");
    if !is_upgrade {
        return Err(Refusal::UpgradeRequired);
    }
    if version < Version::HTTP_11 {
        return Err(Refusal::BadRequest("bad request: WebSocket needs HTTP/1.1"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Refusal::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Refusal::BadRequest("bad request: missing Sec-WebSocket-Key"))?;
    if !is_valid_key(key.as_bytes()) {
        return Err(Refusal::BadRequest(
            "bad request: Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    Ok(Accepted {
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        deflate: None,
    })
}

/// The 101 response that completes an upgrade.
pub fn switching_protocols(accepted: &Accepted) -> Response<String> {
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accepted.accept_key).expect("base64 is a valid header value"),
    );
    if let Some(agreement) = &accepted.deflate {
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(&agreement.response()).expect("parameters are tokens"),
        );
    }
    response
}

/// True when a comma-separated header (any of its occurrences) holds `token`, ignoring
/// case: `Connection: keep-alive, Upgrade` is an upgrade.
fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// A Sec-WebSocket-Key must be 16 bytes in base64: 22 symbols, the last carrying only
/// two significant bits, then `==`.
fn is_valid_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|byte| ALPHABET.contains(byte))
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        headers
    }

    #[test]
    fn rfc_6455_sample_key_is_accepted() {
        let accepted = check(&Method::GET, "/ws", Version::HTTP_11, &upgrade_headers()).unwrap();
        assert_eq!(accepted.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn each_defect_has_its_own_answer() {
        let headers = upgrade_headers();
        assert_eq!(
            check(&Method::GET, "/", Version::HTTP_11, &headers),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            check(&Method::POST, "/ws", Version::HTTP_11, &headers),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(
            check(&Method::GET, "/ws", Version::HTTP_11, &HeaderMap::new()),
            Err(Refusal::UpgradeRequired)
        );
        let mut old_version = headers.clone();
        old_version.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            check(&Method::GET, "/ws", Version::HTTP_11, &old_version),
            Err(Refusal::UnsupportedVersion)
        );
        for bad_key in [
            "",
            "short==",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub2!jZQ==",
        ] {
            let mut bad = headers.clone();
            bad.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(bad_key));
            assert!(
                matches!(
                    check(&Method::GET, "/ws", Version::HTTP_11, &bad),
                    Err(Refusal::BadRequest(_))
                ),
                "key {bad_key:?} was accepted"
            );
        }
        assert!(matches!(
            check(&Method::GET, "/ws", Version::HTTP_10, &headers),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn refusals_are_one_line_and_close_the_connection() {
        for refusal in [
            Refusal::NotFound,
            Refusal::UpgradeRequired,
            Refusal::AtCapacity,
            Refusal::ThreadUnavailable,
            Refusal::BadRequest("bad"),
        ] {
            let response = refusal.response();
            assert_eq!(response.body().lines().count(), 1);
            assert_eq!(response.headers()[header::CONNECTION], "close", "{refusal:?}");
        }
        for refusal in [Refusal::AtCapacity, Refusal::ThreadUnavailable] {
            let response = refusal.response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
    }
}
