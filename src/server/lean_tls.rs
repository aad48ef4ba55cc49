//! The lean engine's TLS: rustls' unbuffered server connection
//! (`rustls::server::UnbufferedServerConnection`), driven by wsscale itself so that an
//! idle connection holds no TLS buffer — only the session's state (keys, sequence
//! numbers). rustls' buffered `ServerConnection` keeps a zero-filled 4 KiB incoming
//! buffer on every read and never frees it, and tokio-rustls adds nothing to shrink it;
//! here the ciphertext is read into the buffer the connection borrows for that read, and
//! only a record that is not whole yet is copied out and kept ([`LeanTls::held_bytes`]),
//! until the rest arrives.
//!
//! [`LeanTls`] does no IO: ciphertext in, plaintext and ciphertext out. Two drivers use
//! it: [`LeanTlsStream`], the AsyncRead + AsyncWrite hyper serves the HTTP phase over
//! (from the ClientHello to the 101), and, after the upgrade,
//! `server::connection::Connection`, which reads and writes through it in both execution
//! models.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Ciphertext read from the socket at a time in the HTTP phase.
const HANDSHAKE_READ: usize = 4096;

/// The most ciphertext rustls is shown, and kept for it, at a time: what rustls' buffered
/// connection allows while it joins a handshake message spread over records
/// (`DeframerVecBuffer::prepare_read`, "message buffer full"). rustls joins the message in
/// place and needs every byte from its first record on until the message is whole, so
/// without this bound a ClientHello cut into 1-byte records is held 6 times over.
const MAX_HELD: usize = 0xffff;

/// One TLS session, without IO.
pub struct LeanTls {
    connection: UnbufferedServerConnection,
    /// Ciphertext rustls has not consumed yet: the start of a record (or of a handshake
    /// message spread over records, at most [`MAX_HELD`] bytes) waiting for the rest.
    /// Empty — no allocation — between whole records.
    partial: Vec<u8>,
    /// The peer's close_notify has arrived: no more plaintext will come.
    peer_closed: bool,
    /// Our close_notify has been produced.
    closing: bool,
    /// `receive` failed: rustls is not called again. After some errors it still keeps its
    /// place in bytes it was given (a message interleaved with a cut handshake message),
    /// and going on without them panicked inside rustls; going on with them repeats the
    /// error and its alert.
    failed: bool,
}

impl LeanTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<LeanTls, rustls::Error> {
        Ok(LeanTls {
            connection: UnbufferedServerConnection::new(config)?,
            partial: Vec::new(),
            peer_closed: false,
            closing: false,
            failed: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// Whether the peer has closed its side of the session (close_notify).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes held for the peer between reads: a record that is not whole yet.
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity()
    }

    /// Takes ciphertext just read (the caller's buffer, which rustls may modify): the
    /// plaintext it completes is appended to `plaintext`, anything TLS has to send back
    /// (handshake messages, key updates, alerts) to `outgoing`. A trailing part of a record
    /// is kept until the rest arrives. What follows the peer's close_notify is ignored
    /// (RFC 8446 section 6.1; rustls reads nothing after it) and not kept.
    pub fn receive(
        &mut self,
        incoming: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        if self.failed {
            return Err(failed());
        }
        let result = self.receive_records(incoming, plaintext, outgoing);
        self.failed = result.is_err();
        result
    }

    fn receive_records(
        &mut self,
        incoming: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        if self.partial.is_empty() {
            let used = self.process_bounded(incoming, plaintext, outgoing)?;
            if used < incoming.len() && !self.peer_closed {
                self.partial = incoming[used..].to_vec();
            }
        } else {
            let mut pending = std::mem::take(&mut self.partial);
            pending.extend_from_slice(incoming);
            let used = self.process_bounded(&mut pending, plaintext, outgoing)?;
            if used < pending.len() && !self.peer_closed {
                pending.drain(..used);
                pending.shrink_to_fit();
                self.partial = pending;
            }
        }
        Ok(())
    }

    /// Runs rustls over `buffer`, showing it at most [`MAX_HELD`] bytes past what it has
    /// consumed; returns how many it consumed. An error if rustls consumes nothing of a
    /// full window and more bytes wait: they would be held past the bound.
    fn process_bounded(
        &mut self,
        buffer: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<usize, rustls::Error> {
        let mut used = 0;
        loop {
            let end = buffer.len().min(used + MAX_HELD);
            let consumed = self.process(&mut buffer[used..end], plaintext, outgoing)?;
            used += consumed;
            if consumed == 0 || self.peer_closed {
                if end - used == MAX_HELD && end < buffer.len() && !self.peer_closed {
                    return Err(buffer_full());
                }
                return Ok(used);
            }
        }
    }

    /// Runs rustls over `buffer` until it needs more bytes; returns how many it consumed.
    fn process(
        &mut self,
        buffer: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<usize, rustls::Error> {
        let mut used = 0;
        loop {
            let status = self.connection.process_tls_records(&mut buffer[used..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(error) => {
                    // rustls queued an alert for the peer: send it with the error.
                    drain_alert(&mut self.connection, &mut buffer[used..], outgoing);
                    return Err(error);
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(outgoing, |buffer| encode.encode(buffer).map_err(encode_error))?;
                }
                // What was encoded is in `outgoing`, in order, for the caller to send.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    return Ok(used + discard);
                }
                // Nothing more to do with these bytes: the handshake waits for the peer's
                // next flight, or the session waits for the next record.
                _ => return Ok(used + discard),
            }
            used += discard;
        }
    }

    /// Encrypts `data` (plaintext) into records appended to `outgoing`.
    pub fn encrypt(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if self.failed {
            return Err(failed());
        }
        let mut result = Ok(());
        self.with_pending(|connection, pending, peer_closed| {
            loop {
                let status = connection.process_tls_records(pending);
                let state = match status.state {
                    Ok(state) => state,
                    Err(error) => {
                        result = Err(error);
                        return 0;
                    }
                };
                match state {
                    ConnectionState::WriteTraffic(mut write) => {
                        result = append(outgoing, |buffer| write.encrypt(data, buffer).map_err(encrypt_error));
                        return status.discard;
                    }
                    ConnectionState::EncodeTlsData(mut encode) => {
                        if let Err(error) = append(outgoing, |buffer| encode.encode(buffer).map_err(encode_error)) {
                            result = Err(error);
                            return status.discard;
                        }
                    }
                    ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                    ConnectionState::PeerClosed => *peer_closed = true,
                    state => {
                        result = Err(rustls::Error::General(format!(
                            "cannot encrypt application data in state {state:?}"
                        )));
                        return status.discard;
                    }
                }
            }
        });
        result
    }

    /// Appends our close_notify to `outgoing`, once; nothing after a failed `receive`
    /// (rustls sent its alert then, if the error has one).
    pub fn close(&mut self, outgoing: &mut Vec<u8>) {
        if std::mem::replace(&mut self.closing, true) || self.failed {
            return;
        }
        self.with_pending(|connection, pending, peer_closed| {
            loop {
                let status = connection.process_tls_records(pending);
                match status.state {
                    Ok(ConnectionState::WriteTraffic(mut write)) => {
                        let _ = append(outgoing, |buffer| {
                            write.queue_close_notify(buffer).map_err(encrypt_error)
                        });
                        return status.discard;
                    }
                    Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                        let _ = append(outgoing, |buffer| encode.encode(buffer).map_err(encode_error));
                    }
                    Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                    Ok(ConnectionState::PeerClosed) => *peer_closed = true,
                    _ => return status.discard,
                }
            }
        });
    }

    /// Runs `f` on the connection with the bytes it has not consumed yet: rustls keeps
    /// its place in them (a handshake message spread over records), so every call must
    /// see them, never an empty buffer in their stead. `f` returns how many it consumed.
    fn with_pending(&mut self, f: impl FnOnce(&mut UnbufferedServerConnection, &mut [u8], &mut bool) -> usize) {
        let mut pending = std::mem::take(&mut self.partial);
        let consumed = f(&mut self.connection, &mut pending, &mut self.peer_closed);
        if consumed < pending.len() {
            pending.drain(..consumed);
            self.partial = pending;
        }
    }
}

/// More than [`MAX_HELD`] bytes would be held while rustls joins a handshake message.
fn buffer_full() -> rustls::Error {
    rustls::Error::General(format!(
        "message buffer full: a handshake message spread over more than {MAX_HELD} bytes"
    ))
}

/// What `receive` and `encrypt` return once `receive` has failed.
fn failed() -> rustls::Error {
    rustls::Error::General("the TLS session failed earlier".to_owned())
}

/// After an error, the alert rustls queued (if any) into `outgoing`. `pending` is what
/// rustls has not consumed of the buffer it failed on. Each call pops one queued message
/// before rustls looks at `pending` again, and looking again would repeat the error (and
/// its alert, which rustls asserts against): so it is called only while a message waits.
fn drain_alert(connection: &mut UnbufferedServerConnection, pending: &mut [u8], outgoing: &mut Vec<u8>) {
    while connection.wants_write() {
        let status = connection.process_tls_records(pending);
        let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state else {
            return;
        };
        if append(outgoing, |buffer| encode.encode(buffer).map_err(encode_error)).is_err() {
            return;
        }
    }
}

/// Runs `write` into the free end of `outgoing`, growing it to the size rustls asks for.
fn append(
    outgoing: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Fill>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let mut room = 256;
    loop {
        outgoing.resize(start + room, 0);
        match write(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(Fill::Needs(required)) => room = required,
            Err(Fill::Failed(error)) => {
                outgoing.truncate(start);
                return Err(error);
            }
        }
    }
}

/// A write into a caller's buffer: too small (and how big it must be), or failed.
enum Fill {
    Needs(usize),
    Failed(rustls::Error),
}

fn encode_error(error: EncodeError) -> Fill {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Fill::Needs(required_size),
        EncodeError::AlreadyEncoded => Fill::Failed(rustls::Error::General("encoded twice".to_owned())),
    }
}

fn encrypt_error(error: EncryptError) -> Fill {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Fill::Needs(required_size),
        EncryptError::EncryptExhausted => Fill::Failed(rustls::Error::EncryptError),
    }
}

/// A TLS error as an IO error, for hyper and the drivers.
pub fn io_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// The HTTP phase's IO over TLS: the socket and its [`LeanTls`], with the plaintext read
/// and the ciphertext to write buffered here for as long as the phase lasts. At the
/// upgrade, [`LeanTlsStream::into_parts`] keeps only the session and what is still
/// unread or unsent.
pub struct LeanTlsStream {
    stream: TcpStream,
    tls: Box<LeanTls>,
    /// Plaintext decrypted and not yet read by hyper, from `read_at` on.
    plaintext: Vec<u8>,
    read_at: usize,
    /// Ciphertext to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
}

/// What the session keeps of the HTTP phase's TLS.
pub struct LeanTlsParts {
    pub stream: TcpStream,
    pub tls: Box<LeanTls>,
    /// Plaintext that came after the upgrade request.
    pub early: Vec<u8>,
    /// Ciphertext not yet sent.
    pub unsent: Vec<u8>,
}

impl LeanTlsStream {
    pub fn new(stream: TcpStream, tls: LeanTls) -> LeanTlsStream {
        LeanTlsStream {
            stream,
            tls: Box::new(tls),
            plaintext: Vec::new(),
            read_at: 0,
            outgoing: Vec::new(),
            sent: 0,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    pub fn into_parts(mut self) -> LeanTlsParts {
        LeanTlsParts {
            early: self.plaintext.split_off(self.read_at),
            unsent: self.outgoing.split_off(self.sent),
            stream: self.stream,
            tls: self.tls,
        }
    }

    /// Sends what is waiting; Ready once everything has gone.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let written = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.outgoing[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext once and runs it through TLS. Ready(false) at the end of the stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut ciphertext = [0u8; HANDSHAKE_READ];
        let mut read = ReadBuf::new(&mut ciphertext);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        self.tls
            .receive(&mut ciphertext[..n], &mut self.plaintext, &mut self.outgoing)
            .map_err(io_error)?;
        Poll::Ready(Ok(true))
    }

    /// Drives the handshake to its end (the HTTP phase's first step).
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            loop {
                ready!(self.poll_send(cx))?;
                if !self.tls.is_handshaking() {
                    return Poll::Ready(Ok(()));
                }
                if !ready!(self.poll_receive(cx))? {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        })
        .await
    }
}

impl AsyncRead for LeanTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read_at < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.read_at);
                buf.put_slice(&this.plaintext[this.read_at..this.read_at + n]);
                this.read_at += n;
                if this.read_at == this.plaintext.len() {
                    this.plaintext.clear();
                    this.read_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // Handshake messages and key updates answer before we read on.
            ready!(this.poll_send(cx))?;
            if this.tls.peer_closed() {
                return Poll::Ready(Ok(()));
            }
            if !ready!(this.poll_receive(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for LeanTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // At most one write's records wait here at a time.
        ready!(this.poll_send(cx))?;
        this.tls.encrypt(data, &mut this.outgoing).map_err(io_error)?;
        // Sent as far as the socket takes it now; the rest on the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.close(&mut this.outgoing);
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connection for `config`'s certificate, trusting it.
    fn client_for(cert_pem: &str) -> rustls::ClientConnection {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap()
    }

    fn server() -> (LeanTls, rustls::ClientConnection) {
        let (cert, key) = super::super::tls::self_signed().unwrap();
        use rustls_pki_types::pem::PemObject;
        let config = super::super::tls::server_config(
            vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        (LeanTls::new(config).unwrap(), client_for(&cert))
    }

    /// Everything the client has to send, as one buffer.
    fn client_output(client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Feeds `bytes` to the server `step` bytes at a time; returns the plaintext.
    fn feed(server: &mut LeanTls, bytes: &[u8], step: usize, outgoing: &mut Vec<u8>) -> Vec<u8> {
        let mut plaintext = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            let mut chunk = chunk.to_vec();
            server.receive(&mut chunk, &mut plaintext, outgoing).unwrap();
        }
        plaintext
    }

    fn handshake(server: &mut LeanTls, client: &mut rustls::ClientConnection, step: usize) {
        while client.is_handshaking() || server.is_handshaking() {
            let to_server = client_output(client);
            let mut to_client = Vec::new();
            feed(server, &to_server, step, &mut to_client);
            client.read_tls(&mut &to_client[..]).unwrap();
            client.process_new_packets().unwrap();
        }
    }

    #[test]
    fn a_session_works_whatever_the_reads_and_holds_nothing_between_records() {
        for step in [1, 7, 100, 4096, 1 << 20] {
            let (mut server, mut client) = server();
            handshake(&mut server, &mut client, step);
            // The tickets and the end of the handshake reach the client.
            let message = vec![b'x'; 40_000];
            std::io::Write::write_all(&mut client.writer(), &message).unwrap();
            let mut outgoing = Vec::new();
            let received = feed(&mut server, &client_output(&mut client), step, &mut outgoing);
            assert_eq!(received, message, "read {step} bytes at a time");
            assert_eq!(server.held_bytes(), 0, "nothing held once every record is whole");
            // And back.
            let mut to_client = Vec::new();
            server.encrypt(b"echo", &mut to_client).unwrap();
            client.read_tls(&mut &to_client[..]).unwrap();
            client.process_new_packets().unwrap();
            let mut echoed = [0u8; 4];
            std::io::Read::read_exact(&mut client.reader(), &mut echoed).unwrap();
            assert_eq!(&echoed, b"echo");
        }
    }

    #[test]
    fn a_partial_record_is_held_until_it_is_whole() {
        let (mut server, mut client) = server();
        handshake(&mut server, &mut client, 4096);
        std::io::Write::write_all(&mut client.writer(), &[b'y'; 16_000]).unwrap();
        let wire = client_output(&mut client);
        let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
        let mut first = wire[..1000].to_vec();
        server.receive(&mut first, &mut plaintext, &mut outgoing).unwrap();
        assert!(plaintext.is_empty());
        assert!(server.held_bytes() >= 1000, "the start of the record is kept");
        let mut rest = wire[1000..].to_vec();
        server.receive(&mut rest, &mut plaintext, &mut outgoing).unwrap();
        assert_eq!(plaintext.len(), 16_000);
        assert_eq!(server.held_bytes(), 0, "and freed once whole");
    }

    #[test]
    fn garbage_is_an_error_with_an_alert_for_the_peer() {
        let (mut server, _) = server();
        let mut garbage = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
        assert!(server.receive(&mut garbage, &mut plaintext, &mut outgoing).is_err());
        assert!(plaintext.is_empty());
        assert_eq!(outgoing.first(), Some(&0x15), "an alert record: {outgoing:?}");
    }

    /// Found by tests/it/tls.rs: rustls keeps its place in bytes it has not consumed (a
    /// handshake message spread over records), and a call with an empty buffer in their
    /// stead indexed past it and panicked — after a bad ClientHello, and after a partial
    /// post-handshake message followed by an answer to encrypt.
    #[test]
    fn bytes_rustls_has_not_consumed_are_always_passed_back() {
        // A ClientHello that announces 131,844 bytes: an error, with an alert, no panic.
        let (mut tls, _) = server();
        let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8];
        let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
        assert!(tls.receive(&mut garbage, &mut plaintext, &mut outgoing).is_err());
        // A handshake message cut across records before the handshake ends: kept, and a
        // close (which runs rustls without new bytes) does not panic.
        let (mut tls, _) = server();
        let mut start = vec![0x16, 0x03, 0x01, 0x00, 0x04, 1, 0, 0, 200];
        assert!(tls.receive(&mut start, &mut plaintext, &mut outgoing).is_ok());
        assert!(tls.held_bytes() > 0);
        tls.close(&mut outgoing);
        // After the handshake: encrypting and closing run rustls without new bytes.
        let (mut tls, mut client) = server();
        handshake(&mut tls, &mut client, 4096);
        tls.encrypt(b"after", &mut outgoing).unwrap();
        tls.close(&mut outgoing);
    }

    /// A client whose ClientHello carries `alpn_bytes` of ALPN names (the server has none:
    /// they are ignored, but the message is that long).
    fn client_with_alpn(cert_pem: &str, alpn_bytes: usize) -> rustls::ClientConnection {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = (0..alpn_bytes / 201)
            .map(|i| vec![b'a' + (i % 26) as u8; 200])
            .collect();
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap()
    }

    /// Plaintext handshake records re-cut into records of `size` bytes of payload.
    fn recut(records: &[u8], size: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut at = 0;
        while at + 5 <= records.len() {
            assert_eq!(records[at], 0x16, "a handshake record");
            let length = usize::from(u16::from_be_bytes([records[at + 3], records[at + 4]]));
            payload.extend_from_slice(&records[at + 5..at + 5 + length]);
            at += 5 + length;
        }
        let mut out = Vec::new();
        for piece in payload.chunks(size) {
            out.extend_from_slice(&[0x16, 0x03, 0x03, 0, piece.len() as u8]);
            out.extend_from_slice(piece);
        }
        out
    }

    /// Found by tests/fuzz_tls.rs: rustls joins a handshake message spread over records
    /// in place, keeping every byte from its first record on, so a ClientHello of 15 KB in
    /// 1-byte records was held whole — 90 KB — where rustls' buffered connection stops at
    /// 64 KB ("message buffer full"). Now the same bound, and the same decision.
    #[test]
    fn a_handshake_message_is_not_joined_over_more_than_64_kib() {
        let (cert, key) = super::super::tls::self_signed().unwrap();
        use rustls_pki_types::pem::PemObject;
        let config = super::super::tls::server_config(
            vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let hello = client_output(&mut client_with_alpn(&cert, 15_000));
        let wire = recut(&hello, 1);
        assert!(wire.len() > 80_000, "{} bytes", wire.len());
        for step in [HANDSHAKE_READ, wire.len()] {
            let mut tls = LeanTls::new(config.clone()).unwrap();
            let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
            let mut result = Ok(());
            for chunk in wire.chunks(step) {
                result = tls.receive(&mut chunk.to_vec(), &mut plaintext, &mut outgoing);
                assert!(tls.held_bytes() <= MAX_HELD, "holds {} bytes", tls.held_bytes());
                if result.is_err() {
                    break;
                }
            }
            let error = result.expect_err("the limit of rustls' buffered connection");
            assert!(error.to_string().contains("message buffer full"), "{error}");
            assert!(outgoing.is_empty(), "no alert, as from rustls' buffered connection");
        }
        // In 8-byte records (under 64 KB) the same ClientHello is taken.
        let (mut tls, _) = server();
        let mut client = client_with_alpn(&cert, 15_000);
        let wire = recut(&client_output(&mut client), 8);
        let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
        for chunk in wire.chunks(HANDSHAKE_READ) {
            tls.receive(&mut chunk.to_vec(), &mut plaintext, &mut outgoing).unwrap();
        }
        assert!(!outgoing.is_empty(), "the server's first flight");
    }

    /// Found while building tests/fuzz_tls.rs: after some errors rustls keeps its place in
    /// the bytes it failed on (here a ClientHello cut over records with an alert in
    /// between, which rustls refuses as interleaved), and the next call — a close, or a
    /// receive with other bytes — indexed past them and panicked inside rustls. Once
    /// `receive` has failed, rustls is not called again.
    #[test]
    fn after_a_failed_receive_rustls_is_not_called_again() {
        let (_, mut client) = server();
        let hello = client_output(&mut client);
        let wire = recut(&hello, 100);
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x5a];
        let mut bytes = wire[..105].to_vec();
        bytes.extend_from_slice(&alert);
        bytes.extend_from_slice(&wire[105..]);
        let (mut tls, _) = server();
        let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
        let error = tls
            .receive(&mut bytes.clone(), &mut plaintext, &mut outgoing)
            .unwrap_err();
        assert!(
            matches!(
                error,
                rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::MessageInterleavedWithHandshakeMessage)
            ),
            "{error:?}"
        );
        let sent = outgoing.len();
        assert!(
            tls.receive(&mut wire[..10].to_vec(), &mut plaintext, &mut outgoing)
                .is_err()
        );
        assert!(tls.encrypt(b"after", &mut outgoing).is_err());
        tls.close(&mut outgoing);
        assert_eq!(outgoing.len(), sent, "nothing more is sent");
        assert!(plaintext.is_empty());
    }

    /// Found while building tests/fuzz_tls.rs: rustls reads nothing after the peer's
    /// close_notify (RFC 8446 section 6.1), and the bytes after it in the same read were
    /// kept as if they were the start of a record: held for as long as the connection
    /// lived, and handed to rustls again on every call.
    #[test]
    fn bytes_after_the_peers_close_notify_are_not_kept() {
        for step in [1, 7, 4096] {
            let (mut server, mut client) = server();
            handshake(&mut server, &mut client, 4096);
            std::io::Write::write_all(&mut client.writer(), b"before").unwrap();
            client.send_close_notify();
            let mut wire = client_output(&mut client);
            // What a peer might send after its close_notify: garbage and a record.
            wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3]);
            let mut outgoing = Vec::new();
            let received = feed(&mut server, &wire, step, &mut outgoing);
            assert_eq!(received, b"before", "read {step} bytes at a time");
            assert!(server.peer_closed());
            assert_eq!(server.held_bytes(), 0, "read {step} bytes at a time");
            let mut ours = Vec::new();
            server.close(&mut ours);
            assert!(!ours.is_empty(), "our close_notify");
        }
    }

    #[test]
    fn close_notify_from_the_peer_is_seen() {
        let (mut server, mut client) = server();
        handshake(&mut server, &mut client, 4096);
        client.send_close_notify();
        let mut outgoing = Vec::new();
        feed(&mut server, &client_output(&mut client), 4096, &mut outgoing);
        assert!(server.peer_closed());
        let mut ours = Vec::new();
        server.close(&mut ours);
        assert!(!ours.is_empty());
    }
}
