//! TLS set-up: the one rustls `ServerConfig` every stack of a server uses (the ring
//! provider, rustls' defaults otherwise), from PEM files or from a self-signed
//! certificate made at start. A certificate or key that cannot be used stops the server
//! at start with the file named and what is wrong with it ([`TlsSetupError`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;

/// The names a self-signed certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why TLS could not be set up. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--tls-cert {path}: {what}")]
    Cert { path: PathBuf, what: String },
    #[error("--tls-key {path}: {what}")]
    Key { path: PathBuf, what: String },
    #[error("--tls-cert {cert} and --tls-key {key} do not go together: {what}")]
    Mismatch { cert: PathBuf, key: PathBuf, what: String },
    #[error("--tls-self-signed: {0}")]
    SelfSigned(String),
}

/// A server's TLS: its configuration, and the certificate file clients can trust.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// The certificate's PEM file (the given one, or the self-signed one written at start).
    pub cert_path: PathBuf,
    /// A file this server wrote (the self-signed certificate), removed when it is dropped.
    written: Option<PathBuf>,
}

impl Drop for Tls {
    fn drop(&mut self) {
        if let Some(path) = &self.written {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Tls {
    /// Loads (or makes) the certificate and key and builds the configuration.
    pub fn set_up(source: &TlsSource) -> Result<Tls, TlsSetupError> {
        match source {
            TlsSource::Files { cert, key } => {
                let chain = read_chain(cert)?;
                let private_key = read_key(key)?;
                Ok(Tls {
                    config: server_config(chain, private_key).map_err(|error| TlsSetupError::Mismatch {
                        cert: cert.clone(),
                        key: key.clone(),
                        what: error.to_string(),
                    })?,
                    cert_path: cert.clone(),
                    written: None,
                })
            }
            TlsSource::SelfSigned => {
                let (cert_pem, key_pem) = self_signed().map_err(TlsSetupError::SelfSigned)?;
                let path = std::env::temp_dir().join(format!("wsscale-{}-cert.pem", std::process::id()));
                std::fs::write(&path, &cert_pem)
                    .map_err(|error| TlsSetupError::SelfSigned(format!("writing {}: {error}", path.display())))?;
                let chain = vec![
                    CertificateDer::from_pem_slice(cert_pem.as_bytes())
                        .map_err(|error| TlsSetupError::SelfSigned(error.to_string()))?,
                ];
                let private_key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|error| TlsSetupError::SelfSigned(error.to_string()))?;
                Ok(Tls {
                    config: server_config(chain, private_key)
                        .map_err(|error| TlsSetupError::SelfSigned(error.to_string()))?,
                    cert_path: path.clone(),
                    written: Some(path),
                })
            }
        }
    }
}

/// A self-signed certificate for [`SELF_SIGNED_NAMES`] (ECDSA P-256, rcgen's default),
/// and its key, as PEM.
pub fn self_signed() -> Result<(String, String), String> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|name| (*name).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).map_err(|error| error.to_string())?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// The ring provider, and rustls' defaults for everything else (protocol versions,
/// cipher suites, session resumption, tickets): the configuration people run.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A client configuration (ring) that trusts the certificates in `cert` (PEM) alone: for
/// the clients that talk to a server whose certificate compare or `--tls-self-signed`
/// made.
pub fn client_config_trusting(cert: &Path) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in read_chain(cert)? {
        roots.add(der).map_err(|error| TlsSetupError::Cert {
            path: cert.to_owned(),
            what: error.to_string(),
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsSetupError::Cert {
            path: cert.to_owned(),
            what: error.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let fail = |what: String| TlsSetupError::Cert {
        path: path.to_owned(),
        what,
    };
    let text = std::fs::read(path).map_err(|error| fail(error.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("not PEM certificates ({error})")))?;
    if chain.is_empty() {
        return Err(fail("no CERTIFICATE block in the file".to_owned()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let fail = |what: String| TlsSetupError::Key {
        path: path.to_owned(),
        what,
    };
    let text = std::fs::read(path).map_err(|error| fail(error.to_string()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| fail(format!("no usable private key ({error})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = self_signed().unwrap();
        let (other_cert, _) = self_signed().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("cert.pem", &cert_pem);
        let key = write("key.pem", &key_pem);
        let other = write("other.pem", &other_cert);
        let garbage = write("garbage.pem", "not a certificate\n");
        let missing = dir.path().join("missing.pem");
        let files = |cert: &Path, key: &Path| TlsSource::Files {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        assert!(Tls::set_up(&files(&cert, &key)).is_ok());
        for (source, expected) in [
            (files(&missing, &key), "missing.pem"),
            (files(&garbage, &key), "no CERTIFICATE"),
            (files(&cert, &garbage), "no usable private key"),
            (files(&cert, &cert), "no usable private key"),
            (files(&other, &key), "do not go together"),
        ] {
            let error = Tls::set_up(&source).err().expect("refused").to_string();
            assert!(error.contains(expected), "{source:?}: {error}");
        }
    }

    #[test]
    fn a_self_signed_certificate_is_written_and_removed() {
        let tls = Tls::set_up(&TlsSource::SelfSigned).unwrap();
        let path = tls.cert_path.clone();
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        drop(tls);
        assert!(!path.exists());
    }
}
