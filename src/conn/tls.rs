//! TLS on the event loop's sockets (protocol 4): the rustls server configuration (TLS 1.2 and
//! 1.3, ALPN `http/1.1`, ring provider) and non-blocking read/write helpers in the order
//! rustls wants: `read_tls` → `process_new_packets` → plaintext; plaintext → `writer` →
//! `write_tls`. Never blocks. Sockets stay registered for both readable and writable
//! (edge-triggered); the stream table asks rustls whether it has bytes to send
//! (`wants_write`) when the socket becomes writable or after a read.

use mio::net::TcpStream;
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Plaintext plus ciphertext rustls may hold for one connection: the TLS form of the
/// socket's send buffer, and its backpressure limit.
pub const BUFFER_LIMIT: usize = 64 * 1024;

/// Loads the certificate chain and key (PEM) into a server configuration; the error names
/// the file and the problem, for a clear start-up failure.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One session ticket is plenty for browsers resuming their one stream.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

pub fn new_session(config: &Arc<rustls::ServerConfig>) -> io::Result<Box<ServerConnection>> {
    let mut tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
    tls.set_buffer_limit(Some(BUFFER_LIMIT));
    Ok(Box::new(tls))
}

/// Reads plaintext into `out`: Ok(0) at the end (close_notify or EOF), `WouldBlock` when
/// the socket has nothing more. Handshake messages are answered on the way.
pub fn read(sock: &mut TcpStream, tls: &mut ServerConnection, out: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(out) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(0),
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    // Let the alert reach the peer before we close.
                    let _ = write_pending(sock, tls);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                write_pending(sock, tls)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes the ciphertext rustls holds: Ok(true) when all of it left, Ok(false) when the
/// socket is full.
pub fn write_pending(sock: &mut TcpStream, tls: &mut ServerConnection) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Hands plaintext to rustls (up to its buffer limit); returns how much it took.
pub fn write_plaintext(tls: &mut ServerConnection, bytes: &[u8]) -> io::Result<usize> {
    tls.writer().write(bytes)
}
