//! TLS for `wss://` URLs: the one client configuration every connection of a run shares,
//! the handshake over a connected socket, and the failure causes of rustls' errors.
//!
//! - One crypto provider, ring: every configuration is built with
//!   `ClientConfig::builder_with_provider` (with ring and aws-lc-rs both compiled in,
//!   rustls' `builder()` panics; the workspace enables ring only).
//! - Whom to trust ([`Trust`]): the Mozilla root program compiled in (`webpki-roots`,
//!   the default), the PEM certificates of one file (`--tls-ca`, e.g. a self-signed
//!   server's own certificate) and nothing else, or nobody checked at all
//!   (`--tls-insecure`: the server's certificate chain and name are not verified; its
//!   handshake signature still is, so the handshake costs what a verified one costs minus
//!   the chain check). webpki-roots rather than the system's store: the generator runs
//!   the same in a bare container image (no `ca-certificates`), a run's trust does not
//!   depend on the host it happens to run on, and a private CA is what `--tls-ca` is for.
//! - SNI and the certificate name come from the URL's host; an IP address host is
//!   checked against the certificate's IP addresses and sends no SNI (RFC 6066 forbids
//!   an address in it).
//! - Every handshake is a full one: session resumption is off, as each connection
//!   stands for a distinct client (thousands of devices do not share one ticket cache),
//!   and a ramp's handshakes then all cost the same. ALPN offers `http/1.1`, the protocol
//!   of the upgrade that follows.
//!
//! What a held wss connection costs the generator: the boxed `TlsStream` (rustls'
//! `ClientConnection` state and its incoming buffer, which tokio-rustls' pending read
//! keeps at 4 KiB for an idle connection). docs/load.md "wss://" gives the measured figure.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Whom a wss run trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The Mozilla root program, as compiled into the `webpki-roots` crate.
    WebpkiRoots,
    /// The PEM certificates in this file, and nothing else (`--tls-ca`).
    Ca(PathBuf),
    /// No certificate verification (`--tls-insecure`).
    Insecure,
}

/// Why a TLS configuration cannot be built; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-ca {}: {why}", path.display())]
    Ca { path: PathBuf, why: String },
    #[error("the URL's host {0:?} is not a valid TLS server name: {1}")]
    ServerName(String, String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS side of a wss run: one shared configuration, the server's name, and what the
/// run id records of the trust.
#[derive(Debug, Clone)]
pub struct TlsClient {
    trust: Trust,
    /// The trust as the run id hashes it: its kind, and for a CA file a digest of the
    /// certificates (their content, not the file's path, which may differ per machine).
    trust_digest: String,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// The configuration for connections to `host` (the URL's host), trusting `trust`;
    /// reads a `--tls-ca` file now, so that a bad one is refused before the first
    /// connection.
    pub fn new(trust: Trust, host: &url::Host<&str>) -> Result<TlsClient, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let (mut config, trust_digest) = match &trust {
            Trust::WebpkiRoots => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                (
                    builder.with_root_certificates(roots).with_no_client_auth(),
                    "webpki_roots".to_owned(),
                )
            }
            Trust::Ca(path) => {
                let (certificates, roots, digest) = read_ca(path)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|error| TlsError::Ca {
                        path: path.clone(),
                        why: error.to_string(),
                    })?;
                let verifier = CaFileVerifier { webpki, certificates };
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(verifier))
                        .with_no_client_auth(),
                    format!("ca:{digest:016x}"),
                )
            }
            Trust::Insecure => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoCertificateVerification(provider)))
                    .with_no_client_auth(),
                "insecure".to_owned(),
            ),
        };
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsClient {
            trust,
            trust_digest,
            config: Arc::new(config),
            server_name: server_name(host)?,
        })
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// What the run id records of the trust: `webpki_roots`, `insecure`, or `ca:` and a
    /// digest of the CA file's certificates.
    pub fn trust_digest(&self) -> &str {
        &self.trust_digest
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The TLS handshake over a connected socket. A failure is an `io::Error`; one that
    /// rustls reports carries its `rustls::Error` (see [`io_error_cause`]).
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> io::Result<TlsStream<S>> {
        TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// The URL host as a TLS server name: a DNS name, or an IP address (checked against the
/// certificate's IP addresses; no SNI is sent for it).
fn server_name(host: &url::Host<&str>) -> Result<ServerName<'static>, TlsError> {
    match host {
        url::Host::Domain(domain) => ServerName::try_from(domain.to_string())
            .map_err(|error| TlsError::ServerName(domain.to_string(), error.to_string())),
        url::Host::Ipv4(ip) => Ok(ServerName::IpAddress(IpAddr::V4(*ip).into())),
        url::Host::Ipv6(ip) => Ok(ServerName::IpAddress(IpAddr::V6(*ip).into())),
    }
}

/// The certificates of a PEM file, the same as trust anchors, and a digest of them
/// (FNV-1a over their DER).
fn read_ca(path: &Path) -> Result<(Vec<CertificateDer<'static>>, RootCertStore, u64), TlsError> {
    let error = |why: String| TlsError::Ca {
        path: path.to_owned(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| error(format!("cannot read it: {e}")))?;
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| error(format!("not a PEM file of certificates: {e}")))?;
    if certificates.is_empty() {
        return Err(error(
            "no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)".to_owned(),
        ));
    }
    let mut roots = RootCertStore::empty();
    let mut digest = crate::config::fnv1a(b"");
    for (index, certificate) in certificates.iter().enumerate() {
        digest = crate::config::fnv1a_extend(digest, certificate);
        roots
            .add(certificate.clone())
            .map_err(|e| error(format!("certificate {} cannot be a trust anchor: {e}", index + 1)))?;
    }
    Ok((certificates, roots, digest))
}

/// `--tls-ca`: webpki's verification against the file's certificates as the only roots;
/// and a server that presents one of those very certificates is trusted with it, its
/// name still checked. The second rule is for the commonest self-signed certificate,
/// `openssl req -x509`'s, which OpenSSL marks `CA:TRUE`: webpki refuses a CA certificate
/// as a server's own (`CaUsedAsEndEntity`), where curl and browsers accept the exact
/// certificate the user said to trust.
#[derive(Debug)]
struct CaFileVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    certificates: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for CaFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(_) if self.certificates.iter().any(|trusted| trusted == end_entity) => {
                rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `--tls-insecure`: accepts any certificate for any name, but still checks that the
/// server signed the handshake with the key of the certificate it sent (so a handshake
/// costs the same work as a verified one, less the chain check).
#[derive(Debug)]
struct NoCertificateVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error an IO error carries (tokio-rustls wraps them as `InvalidData`).
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The failure cause of an IO error that carries a rustls error; None for other errors.
pub fn io_error_cause(error: &io::Error) -> Option<String> {
    rustls_error(error).map(cause)
}

/// Logs the first handshake failure of each TLS cause in this process in rustls' own
/// words (which certificate problem, which alert): the summary counts causes, this says
/// what to fix. Once per cause, so a run of thousands of failures logs a line or two.
pub fn log_first_failure(error: &io::Error) {
    static LOGGED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let Some(tls_error) = rustls_error(error) else {
        return;
    };
    let cause = cause(tls_error);
    let mut logged = LOGGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if logged.insert(cause.clone()) {
        tracing::warn!("first TLS handshake failure counted as {cause}: {tls_error}");
    }
}

/// A rustls error as the summary counts it. Stable names (docs/load.md "Failure causes"):
///
/// - `tls_certificate_unknown`: the server's certificate does not chain to a trusted
///   root (a self-signed server without `--tls-ca`, the wrong or a stale CA file);
/// - `tls_certificate_name`: the certificate is not valid for the URL's host;
/// - `tls_certificate_expired`: outside its validity period;
/// - `tls_certificate`: any other certificate problem (bad encoding, revoked,
///   unsupported algorithm, none presented);
/// - `tls_alert_<description>`: the server ended the handshake (or the session) with a
///   fatal alert, e.g. `tls_alert_handshake_failure`, `tls_alert_protocol_version`;
/// - `tls_incompatible`: no protocol version, cipher suite or key exchange in common;
/// - `tls_protocol`: the peer sent something that is not valid TLS where TLS was due,
///   e.g. a plain `ws://` server answering the ClientHello in HTTP;
/// - `tls_handshake`: any other TLS failure.
pub fn cause(error: &rustls::Error) -> String {
    use rustls::Error;
    let cause = match error {
        Error::InvalidCertificate(certificate) => match certificate {
            // BadSignature: issued in the name of a trusted certificate but not signed by
            // its key, e.g. a self-signed server that made a new certificate (same subject)
            // at its restart while --tls-ca still holds the old one.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "tls_certificate_unknown",
            // A self-signed certificate marked CA:TRUE (OpenSSL's `req -x509`), not given
            // to --tls-ca: as untrusted as an unknown issuer.
            CertificateError::Other(other)
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                "tls_certificate_unknown"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls_certificate_name"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "tls_certificate_expired",
            _ => "tls_certificate",
        },
        Error::NoCertificatesPresented | Error::UnsupportedNameType => "tls_certificate",
        Error::AlertReceived(alert) => return format!("tls_alert_{}", alert_name(*alert)),
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "tls_incompatible",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_)
        | Error::PeerSentOversizedRecord
        | Error::DecryptError => "tls_protocol",
        _ => "tls_handshake",
    };
    cause.to_owned()
}

/// What to do about the TLS failures among `failures` (causes and counts), for the end
/// of a run.
pub fn hints(failures: &std::collections::BTreeMap<String, u64>) -> Vec<&'static str> {
    let mut hints = Vec::new();
    if failures.contains_key("tls_certificate_unknown") {
        hints.push(
            "tls_certificate_unknown: the server's certificate does not chain to a trusted root. For a self-signed \
             server, pass its certificate (PEM) with --tls-ca FILE; --tls-insecure skips verification.",
        );
    }
    if failures.contains_key("tls_certificate_name") {
        hints.push(
            "tls_certificate_name: the server's certificate is not for the URL's host. Use a host it names in --url \
             (localhost or 127.0.0.1 for a self-signed one), or --tls-insecure.",
        );
    }
    if failures.contains_key("tls_protocol") {
        hints.push(
            "tls_protocol: the server did not answer in TLS. Is it a plain ws:// server on this port? Then use a \
             ws:// URL.",
        );
    }
    hints
}

/// An alert's name in snake case (`UnknownCA` → `unknown_ca`), or its number for one
/// rustls does not know (a bounded set either way: one byte).
fn alert_name(alert: rustls::AlertDescription) -> String {
    if let rustls::AlertDescription::Unknown(code) = alert {
        return code.to_string();
    }
    let camel = format!("{alert:?}");
    let chars: Vec<char> = camel.chars().collect();
    let mut snake = String::with_capacity(camel.len() + 4);
    for (at, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && at > 0 {
            let previous_lower = chars[at - 1].is_ascii_lowercase();
            let next_lower = chars.get(at + 1).is_some_and(char::is_ascii_lowercase);
            if previous_lower || (chars[at - 1].is_ascii_uppercase() && next_lower) {
                snake.push('_');
            }
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

#[cfg(test)]
mod tests {
    use rustls::AlertDescription;

    use super::*;

    #[test]
    fn alerts_have_snake_case_names() {
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(AlertDescription::HandshakeFailure), "handshake_failure");
        assert_eq!(alert_name(AlertDescription::UnknownPSKIdentity), "unknown_psk_identity");
        assert_eq!(alert_name(AlertDescription::CloseNotify), "close_notify");
        assert_eq!(alert_name(AlertDescription::Unknown(250)), "250");
    }

    #[test]
    fn rustls_errors_map_to_stable_causes() {
        use rustls::Error;
        let certificate = |error| cause(&Error::InvalidCertificate(error));
        assert_eq!(certificate(CertificateError::UnknownIssuer), "tls_certificate_unknown");
        assert_eq!(certificate(CertificateError::NotValidForName), "tls_certificate_name");
        assert_eq!(certificate(CertificateError::Expired), "tls_certificate_expired");
        assert_eq!(certificate(CertificateError::BadSignature), "tls_certificate_unknown");
        assert_eq!(certificate(CertificateError::BadEncoding), "tls_certificate");
        assert_eq!(
            cause(&Error::AlertReceived(AlertDescription::ProtocolVersion)),
            "tls_alert_protocol_version"
        );
        assert_eq!(
            cause(&Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)),
            "tls_protocol"
        );
        assert_eq!(cause(&Error::General("x".into())), "tls_handshake");
        // Through the io::Error tokio-rustls hands over.
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(io_error_cause(&wrapped).as_deref(), Some("tls_certificate_unknown"));
        assert_eq!(io_error_cause(&io::ErrorKind::UnexpectedEof.into()), None);
    }

    /// A server certificate for localhost and 127.0.0.1 (a CA certificate when
    /// `is_ca`, as OpenSSL's `req -x509` makes), and its key.
    fn certificate(is_ca: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        (params.self_signed(&key).unwrap(), key)
    }

    /// A handshake in memory between `client` and a rustls server with `certificate`:
    /// the failure cause, or None when it succeeded.
    async fn handshake_cause(client: &TlsClient, certificate: &(rcgen::Certificate, rcgen::KeyPair)) -> Option<String> {
        use rustls::pki_types::PrivateKeyDer;
        let (cert, key) = certificate;
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let _ = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(server_end)
                .await;
        });
        let result = client.handshake(client_end).await;
        server.abort();
        result
            .err()
            .map(|error| io_error_cause(&error).unwrap_or_else(|| panic!("not a TLS error: {error}")))
    }

    fn ca_file(dir: &Path, name: &str, certificate: &rcgen::Certificate) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, certificate.pem()).unwrap();
        path
    }

    #[tokio::test]
    async fn trust_decides_which_handshakes_succeed_and_why_others_fail() {
        let dir = std::env::temp_dir().join(format!("wsscale-loadgen-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let localhost = url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST);
        let server = certificate(false);
        let openssl_like = certificate(true);
        let other = certificate(false);
        let client = |trust: Trust, host: &url::Host<&str>| TlsClient::new(trust, host).unwrap();

        // The server's own certificate in --tls-ca: trusted, for its IP address and name.
        let ca = client(Trust::Ca(ca_file(&dir, "server.pem", &server.0)), &localhost);
        assert_eq!(handshake_cause(&ca, &server).await, None);
        let by_name = client(
            Trust::Ca(ca_file(&dir, "server.pem", &server.0)),
            &url::Host::Domain("localhost"),
        );
        assert_eq!(handshake_cause(&by_name, &server).await, None);
        // A self-signed CA certificate given to --tls-ca is trusted as it is.
        let pinned = client(Trust::Ca(ca_file(&dir, "openssl.pem", &openssl_like.0)), &localhost);
        assert_eq!(handshake_cause(&pinned, &openssl_like).await, None);
        // ... but not for another name.
        let wrong_name = client(
            Trust::Ca(ca_file(&dir, "openssl.pem", &openssl_like.0)),
            &url::Host::Domain("example.com"),
        );
        assert_eq!(
            handshake_cause(&wrong_name, &openssl_like).await.as_deref(),
            Some("tls_certificate_name")
        );
        // Another certificate in the file, or the public roots: unknown, whichever kind.
        let wrong_ca = client(Trust::Ca(ca_file(&dir, "other.pem", &other.0)), &localhost);
        assert_eq!(
            handshake_cause(&wrong_ca, &server).await.as_deref(),
            Some("tls_certificate_unknown")
        );
        let roots = client(Trust::WebpkiRoots, &localhost);
        assert_eq!(
            handshake_cause(&roots, &server).await.as_deref(),
            Some("tls_certificate_unknown")
        );
        assert_eq!(
            handshake_cause(&roots, &openssl_like).await.as_deref(),
            Some("tls_certificate_unknown")
        );
        // --tls-insecure takes any certificate for any name.
        let insecure = client(Trust::Insecure, &url::Host::Domain("example.com"));
        assert_eq!(handshake_cause(&insecure, &other).await, None);
        // The run id tells CA files apart by their certificates, not their paths.
        let copy = client(Trust::Ca(ca_file(&dir, "copy-of-server.pem", &server.0)), &localhost);
        assert_eq!(copy.trust_digest(), ca.trust_digest());
        assert_ne!(wrong_ca.trust_digest(), ca.trust_digest());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_file_is_read_or_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("wsscale-loadgen-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST);
        let missing = dir.join("missing.pem");
        let error = TlsClient::new(Trust::Ca(missing.clone()), &host)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("missing.pem") && error.contains("cannot read"),
            "{error}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = TlsClient::new(Trust::Ca(empty), &host).unwrap_err().to_string();
        assert!(error.contains("no certificate"), "{error}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = TlsClient::new(Trust::Ca(garbage), &host).unwrap_err().to_string();
        assert!(
            error.contains("garbage.pem") && error.contains("trust anchor"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // The default and the insecure configurations need no file.
        let roots = TlsClient::new(Trust::WebpkiRoots, &url::Host::Domain("example.com")).unwrap();
        assert_eq!(roots.trust_digest(), "webpki_roots");
        assert!(matches!(roots.server_name(), ServerName::DnsName(_)));
        let insecure = TlsClient::new(Trust::Insecure, &host).unwrap();
        assert!(matches!(insecure.server_name(), ServerName::IpAddress(_)));
    }
}
