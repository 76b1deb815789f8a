//! TLS on the event loop's sockets (protocol 4): the rustls server configuration (TLS 1.2
//! and 1.3, ALPN `http/1.1`, ring provider) and the session of one connection:
//!
//! - The handshake runs in rustls's *unbuffered* API, so the loop owns the buffers.
//! - Once it is done, the traffic keys move to ssehub's record layer (`record.rs`) and
//!   rustls's connection is dropped: an idle TLS 1.3 stream keeps its keys and rustls's
//!   small key schedule (968 bytes of heap in all, `tests/tls_session.rs`), a TLS 1.2 one
//!   184 bytes, instead of rustls's buffered `ServerConnection` (~7.5 KB).
//! - Incoming ciphertext is read into the loop's scratch buffer and opened there; only an
//!   incomplete record (or, during the handshake, a handshake message rustls has not
//!   finished) is kept in the session, and only while it is incomplete.
//! - Outgoing frames are gathered (up to one 16 KiB record) and sealed into one
//!   thread-local buffer and written to the socket from there; only ciphertext the socket
//!   did not take stays in the session, until the socket is writable again.
//!
//! Never blocks. Sockets stay registered for both readable and writable (edge-triggered);
//! the stream table asks the session whether it has bytes to send (`wants_write`) when the
//! socket becomes writable or after a read.

use super::record::{self, Record, Traffic};
use crate::conn::{Flush, OutQueue};
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Plaintext gathered into one record (TLS's maximum fragment).
const RECORD_PLAINTEXT: usize = 16 * 1024;

/// A stored incoming partial record (or unfinished handshake flight) larger than this is a
/// protocol error: a TLS record is at most 2^14 + 256 bytes of payload plus a 5-byte header.
const MAX_HELD_INPUT: usize = 32 * 1024;

/// The largest record a stream accepts (its length field): a stream takes no input but
/// close_notify, KeyUpdates and alerts, a few dozen bytes each, so an incomplete record can
/// never make an idle stream hold much (a client that sends more data is closed anyway).
const STREAM_RECORD_MAX: usize = 1024;

/// What one record costs against a connection's input budget besides its plaintext
/// (`read` returns plaintext plus this per record): records are counted, not only bytes,
/// so empty or tiny records cannot be sent for free.
pub const RECORD_COST: usize = 32;

/// Incomplete records held by all sessions together (bytes of buffer): past it, a session
/// that would hold more is ended. 1,024 connections each holding a whole record.
const MAX_HELD_TOTAL: usize = 1024 * (MAX_HELD_INPUT / 2);

thread_local! {
    /// Bytes of incomplete input held by the loop's sessions (`MAX_HELD_TOTAL`).
    static HELD_TOTAL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes of incomplete TLS input all sessions on this thread hold (tests).
pub fn held_input_bytes() -> usize {
    HELD_TOTAL.get()
}

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
    // Once the handshake is done the traffic keys move to our record layer
    // (`record::Traffic`), which is what lets an idle stream hold so little.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// One TLS connection: rustls during the handshake, then only the traffic keys
/// (`record::Traffic`), plus the little the socket has not taken or not completed yet.
/// Both vectors are empty — and own no memory — on an idle stream.
pub struct Session {
    phase: Phase,
    /// Received ciphertext that is not a whole record yet (kept at the front: rustls's
    /// handshake deframer counts positions from here).
    input: Vec<u8>,
    /// Ciphertext the socket did not take yet.
    output: Vec<u8>,
    /// The peer's close_notify was seen: no more input.
    peer_closed: bool,
    /// We sent close_notify (or a fatal alert): nothing more goes out.
    closed: bool,
    /// A stream: a record announcing more than `STREAM_RECORD_MAX` bytes is refused at its
    /// header, before any of its body is held.
    stream_input: bool,
    /// The incomplete record held now was already held at an `incomplete_too_long` check
    /// (a stream's timer), first at `held_since_ms` (the loop's clock, truncated).
    held_at_check: bool,
    held_since_ms: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        HELD_TOTAL.set(HELD_TOTAL.get().saturating_sub(self.input.capacity()));
    }
}

enum Phase {
    Handshake(Box<UnbufferedServerConnection>),
    Traffic(Traffic),
    /// The handover failed; the connection is being closed.
    Failed,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Handshake(_) => "handshake",
            Phase::Traffic(_) => "traffic",
            Phase::Failed => "failed",
        };
        f.debug_struct("Session")
            .field("phase", &phase)
            .field("input", &self.input.len())
            .field("output", &self.output.len())
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

pub fn new_session(config: &Arc<rustls::ServerConfig>) -> io::Result<Box<Session>> {
    let conn = UnbufferedServerConnection::new(config.clone()).map_err(io::Error::other)?;
    Ok(Box::new(Session {
        phase: Phase::Handshake(Box::new(conn)),
        input: Vec::new(),
        output: Vec::new(),
        peer_closed: false,
        closed: false,
        stream_input: false,
        held_at_check: false,
        held_since_ms: 0,
    }))
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

thread_local! {
    /// The loop's shared sealing buffers: gathered plaintext and its ciphertext.
    static SEAL: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What the session wants next after the records at hand are processed.
enum Next {
    /// More input is needed (handshake) or the connection is established and idle.
    Idle,
    /// The peer closed (close_notify) or both sides did.
    Closed,
}

/// A sealing call that found its buffer too small, or failed.
enum Short {
    Need(usize),
    Fail(io::Error),
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Short::Need(required_size)
            }
            e => Short::Fail(invalid(e)),
        }
    }
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Short::Need(required_size)
            }
            e => Short::Fail(invalid(e)),
        }
    }
}

/// Appends what `f` writes to `output`, growing it as `f` asks.
fn append(
    output: &mut Vec<u8>,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    let old = output.len();
    let mut need = 256;
    loop {
        output.resize(old + need, 0);
        match f(&mut output[old..]) {
            Ok(n) => {
                output.truncate(old + n);
                return Ok(());
            }
            Err(Short::Need(n)) if n > need => need = n,
            Err(Short::Need(_)) => {
                output.truncate(old);
                return Err(io::Error::other("TLS: buffer size request did not grow"));
            }
            Err(Short::Fail(e)) => {
                output.truncate(old);
                return Err(e);
            }
        }
    }
}

type Writer<'c> = rustls::unbuffered::WriteTraffic<'c, rustls::server::ServerConnectionData>;

impl Session {
    /// Ciphertext is waiting for the socket.
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Bytes this session holds in its own buffers (zero on an idle stream).
    pub fn buffered_bytes(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// The handshake is over and rustls has handed the keys over.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Traffic(_))
    }

    /// The connection became a stream: from now on records longer than
    /// `STREAM_RECORD_MAX` are refused (see there).
    pub fn limit_records_to_stream_input(&mut self) {
        self.stream_input = true;
    }

    /// Called from a stream's timer (at least every keepalive interval) with the loop's
    /// clock: true when the same incomplete record has been held since a check at least
    /// `limit_ms` ago. A client that starts a record must finish it within one to two
    /// intervals; it cannot park up to 16 KiB per stream for as long as it stays connected.
    pub fn incomplete_too_long(&mut self, now_ms: u64, limit_ms: u64) -> bool {
        if self.input.is_empty() {
            self.held_at_check = false;
            return false;
        }
        // Truncated: only differences below 49 days matter.
        let now = now_ms as u32;
        if !std::mem::replace(&mut self.held_at_check, true) {
            self.held_since_ms = now;
            return false;
        }
        u64::from(now.wrapping_sub(self.held_since_ms)) >= limit_ms
    }

    /// Sets `input` to `rest` (what follows the last whole record), keeping the count of
    /// held bytes; `Err` when all sessions together hold too much.
    fn hold(&mut self, rest: &[u8]) -> io::Result<()> {
        let before = self.input.capacity();
        if rest.is_empty() {
            self.input = Vec::new();
        } else {
            self.input.clear();
            self.input.extend_from_slice(rest);
        }
        let after = self.input.capacity();
        let total = HELD_TOTAL.get().saturating_sub(before) + after;
        HELD_TOTAL.set(total);
        if total > MAX_HELD_TOTAL && !rest.is_empty() {
            return Err(invalid("TLS: incomplete records held over the budget"));
        }
        Ok(())
    }

    /// Processes the records in `buf` (front first), passing application data to `sink`
    /// and queuing what must be sent; returns how many bytes of `buf` were consumed and
    /// whether the peer closed. On a protocol error the alert to send is queued before the
    /// error returns.
    fn process(
        &mut self,
        buf: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
        records: &mut usize,
    ) -> io::Result<(usize, Next)> {
        let mut start = 0;
        if let Phase::Handshake(conn) = &mut self.phase {
            let (used, next) = handshake(conn, &mut self.output, buf, sink)?;
            start = used;
            if matches!(next, Next::Closed) {
                return Ok((start, next));
            }
            if conn.is_handshaking() {
                return Ok((start, Next::Idle));
            }
            self.take_over()?;
        }
        let Phase::Traffic(traffic) = &mut self.phase else {
            return Err(io::Error::other("TLS: session failed"));
        };
        loop {
            let rest = &mut buf[start..];
            let len = match traffic.record_len(rest) {
                Ok(Some(len)) => len,
                Ok(None) => return Ok((start, Next::Idle)),
                Err(e) => {
                    traffic.alert(record::RECORD_OVERFLOW, &mut self.output);
                    self.closed = true;
                    return Err(e);
                }
            };
            let record = &mut rest[..len];
            *records += 1;
            match traffic.open(record, &mut self.output) {
                Ok(Record::Data(range)) => {
                    if !range.is_empty() {
                        sink(&record[range]);
                    }
                }
                Ok(Record::Nothing) => {}
                Ok(Record::Closed) => return Ok((start + len, Next::Closed)),
                Err((alert, e)) => {
                    // A peer's own fatal alert is not answered.
                    if alert != record::CLOSE_NOTIFY {
                        traffic.alert(alert, &mut self.output);
                    }
                    self.closed = true;
                    return Err(e);
                }
            }
            start += len;
        }
    }

    /// The handshake is done: rustls's keys move to our record layer.
    fn take_over(&mut self) -> io::Result<()> {
        let Phase::Handshake(conn) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(());
        };
        self.phase = Phase::Traffic(Traffic::take_over(*conn)?);
        Ok(())
    }

    /// Tests: renew the sending key (TLS 1.3) or end (TLS 1.2) after `limit` records
    /// instead of 2^23.
    #[doc(hidden)]
    pub fn set_record_limit(&mut self, limit: u64) {
        if let Phase::Traffic(t) = &mut self.phase {
            t.set_record_limit(limit);
        }
    }

    /// Seals `plain` (up to 16 KiB) as application data into `out`; Ok(false) while the
    /// handshake is not over.
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        if self.closed {
            return Err(io::Error::other("TLS: output after close_notify"));
        }
        if let Phase::Handshake(conn) = &mut self.phase {
            // Normally the handover happened when the request was read; a session that
            // still runs rustls drives it to where it may encrypt.
            let mut input = std::mem::take(&mut self.input);
            let done = with_writer(conn, &mut input, &mut self.output, |_, _| ());
            self.input = input;
            // (rustls may allow 0.5-RTT data before the client's Finished; we wait.)
            if done?.is_none() || conn.is_handshaking() {
                return Ok(false);
            }
            self.take_over()?;
        }
        match &mut self.phase {
            Phase::Traffic(t) => {
                t.seal(record::APPLICATION_DATA, plain, out)?;
                Ok(true)
            }
            _ => Err(io::Error::other("TLS: session failed")),
        }
    }

    /// Queues a close_notify alert (sent by the next `write_pending`).
    pub fn send_close_notify(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        match &mut self.phase {
            Phase::Traffic(t) => t.alert(record::CLOSE_NOTIFY, &mut self.output),
            Phase::Handshake(conn) => {
                let mut input = std::mem::take(&mut self.input);
                let _ = with_writer(conn, &mut input, &mut self.output, |w, output| {
                    append(output, |out| Ok(w.queue_close_notify(out)?))
                });
                self.input = input;
            }
            Phase::Failed => {}
        }
    }
}

/// The length field of the TLS record header at `at` in `buf`, once the header is there.
fn announced_len(buf: &[u8], at: usize) -> Option<usize> {
    match buf.get(at + 3..at + 5) {
        Some(&[hi, lo]) => Some(usize::from(u16::from_be_bytes([hi, lo]))),
        _ => None,
    }
}

/// The end of the first TLS record at or after `at` in `buf`: its header's length, or the
/// end of `buf` when the record is not all there.
fn record_end(buf: &[u8], at: usize) -> usize {
    announced_len(buf, at).map_or(buf.len(), |len| (at + 5 + len).min(buf.len()))
}

/// Handshake records in `buf` through rustls (see `Session::process`).
///
/// rustls sees the records one more at a time, never past the one that ends the
/// handshake: whatever the client sent after its Finished (a KeyUpdate, its request) is
/// left for our record layer. Otherwise rustls would answer a KeyUpdate by switching its
/// own sending key and keep the KeyUpdate it owes the peer until its next write, which
/// never comes once the keys are taken over (the kernel-TLS crates hand records over the
/// same way for the same reason).
fn handshake(
    conn: &mut UnbufferedServerConnection,
    output: &mut Vec<u8>,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<(usize, Next)> {
    let mut start = 0;
    // rustls may keep a handshake message that spans records in place (not discarded
    // until whole), so the window grows from `start` record by record.
    let mut window = record_end(buf, 0);
    let total = buf.len();
    loop {
        let mut grow = false;
        let status = conn.process_tls_records(&mut buf[start..window]);
        let mut discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                queue_alert(conn, output);
                return Err(invalid(e));
            }
        };
        let next = match state {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    let record = record.map_err(invalid)?;
                    discard += record.discard;
                    sink(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut e) => {
                append(output, |out| Ok(e.encode(out)?))?;
                None
            }
            ConnectionState::TransmitTlsData(t) => {
                // The bytes are in `output`; the caller writes them.
                t.done();
                None
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Next::Closed),
            // rustls needs more than the window holds: one more record, if there is one.
            ConnectionState::BlockedHandshake if window < total => {
                grow = true;
                None
            }
            // BlockedHandshake, WriteTraffic, and early data (never enabled).
            _ => Some(Next::Idle),
        };
        start += discard;
        if !conn.is_handshaking() {
            // Done: nothing after this goes to rustls (`Session::process` takes the keys
            // over), but what rustls still has to send (session tickets) is encoded first.
            window = start;
        } else if grow {
            window = record_end(buf, window.max(start));
        } else {
            window = window.max(start);
        }
        if let Some(next) = next {
            return Ok((start, next));
        }
    }
}

/// After a fatal error rustls holds the alert to send: queue it (best effort).
fn queue_alert(conn: &mut UnbufferedServerConnection, output: &mut Vec<u8>) {
    for _ in 0..4 {
        let status = conn.process_tls_records(&mut []);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if append(output, |out| Ok(e.encode(out)?)).is_err() {
                    return;
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return,
        }
    }
}

/// Drives rustls to where it may encrypt, queuing in `output` what it wants sent first,
/// and calls `f` with the encryptor and `output`; Ok(None) while the handshake is not
/// over or the session has closed.
fn with_writer<T>(
    conn: &mut UnbufferedServerConnection,
    input: &mut Vec<u8>,
    output: &mut Vec<u8>,
    f: impl FnOnce(&mut Writer<'_>, &mut Vec<u8>) -> T,
) -> io::Result<Option<T>> {
    // `input` holds at most an incomplete record here (reads consume all whole ones),
    // so no application data comes out.
    let mut f = Some(f);
    let mut result = None;
    let outcome = loop {
        let status = conn.process_tls_records(input);
        let discard = status.discard;
        let done = match status.state {
            Err(e) => Some(Err(invalid(e))),
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                append(output, |out| Ok(e.encode(out)?)).err().map(Err)
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                None
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while r.next_record().is_some() {}
                None
            }
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                if let Some(f) = f.take() {
                    result = Some(f(&mut w, output));
                }
                Some(Ok(()))
            }
            Ok(_) => Some(Ok(())),
        };
        input.drain(..discard);
        if let Some(outcome) = done {
            break outcome;
        }
    };
    outcome.map(|()| result)
}

/// Reads ciphertext into `scratch` (after any incomplete record kept from before),
/// answers handshake messages and passes application data to `sink`. Returns what the
/// records read cost (> 0: their plaintext plus `RECORD_COST` each), Ok(0) at the end
/// (close_notify or EOF), or `WouldBlock` when the socket has nothing more. `scratch`
/// must hold a whole record (> 17 KiB).
pub fn read(
    sock: &mut TcpStream,
    s: &mut Session,
    scratch: &mut [u8],
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<usize> {
    loop {
        if s.peer_closed {
            return Ok(0);
        }
        let held = s.input.len();
        if held >= scratch.len().min(MAX_HELD_INPUT) {
            return Err(invalid("TLS record larger than allowed"));
        }
        scratch[..held].copy_from_slice(&s.input);
        let end = match sock.read(&mut scratch[held..]) {
            Ok(0) => return Ok(0),
            Ok(n) => held + n,
            Err(e) => return Err(e),
        };
        let mut got = 0;
        let mut records = 0;
        let processed = s.process(
            &mut scratch[..end],
            &mut |p| {
                got += p.len();
                sink(p)
            },
            &mut records,
        );
        let (used, next) = match processed {
            Ok(v) => v,
            Err(e) => {
                // Let the alert reach the peer before we close.
                let _ = write_pending(sock, s);
                return Err(e);
            }
        };
        if used > 0 {
            // Whatever was held is complete now; a new incomplete record starts afresh.
            s.held_at_check = false;
        }
        let rest = &scratch[used..end];
        if s.stream_input && announced_len(rest, 0).is_some_and(|n| n > STREAM_RECORD_MAX) {
            // Refused at its header: a stream never buffers a large record.
            close_notify_now(sock, s);
            return Err(invalid("TLS: a record too large for a stream"));
        }
        s.hold(rest)?;
        write_pending(sock, s)?;
        if matches!(next, Next::Closed) {
            s.peer_closed = true;
        }
        let cost = got + records * RECORD_COST;
        if cost > 0 {
            return Ok(cost);
        }
    }
}

/// Queues a close_notify and writes what the socket takes of it now (best effort: the
/// connection is about to be closed).
pub fn close_notify_now(sock: &mut TcpStream, s: &mut Session) {
    s.send_close_notify();
    let _ = write_pending(sock, s);
}

/// Writes the ciphertext the session holds: Ok(true) when all of it left (its buffer is
/// then freed), Ok(false) when the socket is full.
pub fn write_pending(sock: &mut TcpStream, s: &mut Session) -> io::Result<bool> {
    while !s.output.is_empty() {
        match sock.write(&s.output) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                s.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    s.output = Vec::new();
    Ok(true)
}

/// Writes a stream's queue: frames gathered into records of up to 16 KiB, sealed into the
/// loop's shared buffer and written from there; only what the socket does not take is
/// kept in the session. At most `max_writes` records per call, counted in `writes`.
pub fn flush(
    sock: &mut TcpStream,
    s: &mut Session,
    mut out: Option<&mut OutQueue>,
    max_writes: usize,
    writes: &mut u64,
) -> io::Result<Flush> {
    for _ in 0..max_writes {
        *writes += 1;
        if !write_pending(sock, s)? {
            return Ok(Flush::Blocked);
        }
        let Some(queue) = out.as_deref_mut().filter(|q| !q.is_empty()) else {
            return Ok(Flush::Done);
        };
        let blocked =
            SEAL.with_borrow_mut(|(plain, sealed)| seal_and_write(sock, s, queue, plain, sealed))?;
        if blocked {
            return Ok(Flush::Blocked);
        }
    }
    Ok(Flush::Budget)
}

/// One record: gathers plaintext from `queue`, seals it (after anything rustls must send
/// first) and writes it; true when the socket filled up.
fn seal_and_write(
    sock: &mut TcpStream,
    s: &mut Session,
    queue: &mut OutQueue,
    plain: &mut Vec<u8>,
    sealed: &mut Vec<u8>,
) -> io::Result<bool> {
    plain.clear();
    queue.feed(|bytes| {
        let n = bytes.len().min(RECORD_PLAINTEXT - plain.len());
        plain.extend_from_slice(&bytes[..n]);
        Ok(n)
    })?;
    sealed.clear();
    if !s.seal(plain, sealed)? {
        return Err(io::Error::other("TLS: output before the handshake ended"));
    }
    let n = sealed.len();
    if !s.output.is_empty() {
        // Something rustls queued goes first.
        s.output.extend_from_slice(&sealed[..n]);
        return Ok(false);
    }
    let mut off = 0;
    while off < n {
        match sock.write(&sealed[off..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => off += w,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.output.extend_from_slice(&sealed[off..n]);
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}
