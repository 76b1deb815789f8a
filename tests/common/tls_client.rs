//! A TLS client that writes its own records: rustls does the client side of the handshake
//! over a real socket, then the traffic keys are derived here (TLS 1.3: HKDF-Expand-Label
//! from the key log's traffic secrets, RFC 8446 §7.1/§7.3; TLS 1.2: rustls's extracted
//! secrets) with `ring` directly, independently of ssehub's record layer, so that a test
//! can send any record: empty, padded, of any type, tampered, replayed, a KeyUpdate.
//!
//! The handshake is fed to rustls one record at a time from our own buffer, so that rustls
//! never reads past the server's last handshake record: whatever follows (a
//! NewSessionTicket, an answer) is read by `recv` under the application keys, from sequence
//! number 0 (TLS 1.3) or 1 (TLS 1.2, after the Finished).

use ring::{aead, hkdf};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ConnectionTrafficSecrets};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;
pub const CHANGE_CIPHER_SPEC: u8 = 20;

/// What the next thing from the server was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// A record other than an alert (application data, a NewSessionTicket, a KeyUpdate).
    Record {
        content_type: u8,
        plain: Vec<u8>,
    },
    /// An alert (decrypted; or in the clear, if the server sent one before its keys).
    Alert {
        level: u8,
        description: u8,
    },
    /// The connection ended (EOF or reset).
    Eof,
    Timeout,
}

/// One direction's keys.
pub struct Keys {
    alg: &'static aead::Algorithm,
    key: Vec<u8>,
    iv: [u8; 12],
    pub seq: u64,
    /// TLS 1.3: this key's traffic secret (for the next generation on a KeyUpdate).
    secret: Vec<u8>,
}

impl Keys {
    fn nonce(&self) -> aead::Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        aead::Nonce::assume_unique_for_key(n)
    }

    fn aead(&self) -> aead::LessSafeKey {
        aead::LessSafeKey::new(aead::UnboundKey::new(self.alg, &self.key).expect("key length"))
    }

    fn chacha(&self) -> bool {
        std::ptr::eq(self.alg, &aead::CHACHA20_POLY1305)
    }
}

/// The sending side of a session: seals records, moves to the next key on a KeyUpdate.
pub struct Sealer {
    pub tls13: bool,
    pub keys: Keys,
    hkdf: hkdf::Algorithm,
}

impl Sealer {
    /// One record (TLS 1.3: with `padding` zeros); advances the sequence number.
    pub fn seal(&mut self, content_type: u8, plain: &[u8], padding: usize) -> Vec<u8> {
        seal_with(&mut self.keys, self.tls13, content_type, plain, padding)
    }

    /// TLS 1.3: KeyUpdate(update_requested = `request`) under the current key; the key
    /// then moves to the next generation (HKDF-Expand-Label "traffic upd", RFC 8446 §7.2).
    pub fn key_update_bytes(&mut self, request: bool) -> Vec<u8> {
        assert!(self.tls13, "KeyUpdate is TLS 1.3");
        let record = self.seal(HANDSHAKE, &[24, 0, 0, 1, u8::from(request)], 0);
        let next = expand_label(
            self.hkdf,
            &self.keys.secret,
            "traffic upd",
            self.keys.secret.len(),
        );
        self.keys = tls13_keys(self.keys.alg, self.hkdf, next, 0);
        record
    }
}

pub struct RawTls {
    pub sock: TcpStream,
    pub tls13: bool,
    pub suite: CipherSuite,
    pub tx: Sealer,
    pub rx: Keys,
    hkdf: hkdf::Algorithm,
    /// Bytes read from the socket and not yet taken as records.
    input: Vec<u8>,
}

/// The key log: the TLS 1.3 traffic secrets as rustls derives them.
#[derive(Debug, Default)]
pub struct Secrets(Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((label.to_string(), secret.to_vec()));
    }
    fn will_log(&self, _label: &str) -> bool {
        true
    }
}

impl Secrets {
    pub fn get(&self, label: &str) -> Vec<u8> {
        let v = self.0.lock().unwrap();
        v.iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no {label} in the key log"))
            .1
            .clone()
    }
}

/// A rustls client config trusting `ca`, with only `suite`, ALPN http/1.1.
pub fn client_config(
    ca: &Path,
    suite: CipherSuite,
    key_log: Option<Arc<dyn rustls::KeyLog>>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(
        provider.cipher_suites.len(),
        1,
        "{suite:?} not in ring's provider"
    );
    let tls13 = matches!(
        provider.cipher_suites[0],
        rustls::SupportedCipherSuite::Tls13(_)
    );
    let version = if tls13 {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: every connection is a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    if let Some(log) = key_log {
        config.key_log = log;
    }
    config.enable_secret_extraction = true;
    config
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1).
pub fn expand_label(alg: hkdf::Algorithm, secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let full = format!("tls13 {label}");
    let length = u16::try_from(len).unwrap().to_be_bytes();
    let label_len = [u8::try_from(full.len()).unwrap()];
    let context_len = [0u8];
    let info: [&[u8]; 4] = [&length, &label_len, full.as_bytes(), &context_len];
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let okm = prk.expand(&info, Len(len)).expect("HKDF expand");
    let mut out = vec![0u8; len];
    okm.fill(&mut out).expect("HKDF fill");
    out
}

/// The AEAD and HKDF of a TLS 1.3 suite.
fn tls13_algs(suite: CipherSuite) -> (&'static aead::Algorithm, hkdf::Algorithm) {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => (&aead::AES_128_GCM, hkdf::HKDF_SHA256),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => (&aead::AES_256_GCM, hkdf::HKDF_SHA384),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
            (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256)
        }
        other => panic!("not a TLS 1.3 suite: {other:?}"),
    }
}

/// TLS 1.3 traffic key and IV from a traffic secret (RFC 8446 §7.3).
fn tls13_keys(
    alg: &'static aead::Algorithm,
    h: hkdf::Algorithm,
    secret: Vec<u8>,
    seq: u64,
) -> Keys {
    let key = expand_label(h, &secret, "key", alg.key_len());
    let iv: [u8; 12] = expand_label(h, &secret, "iv", 12).try_into().unwrap();
    Keys {
        alg,
        key,
        iv,
        seq,
        secret,
    }
}

/// Keys from rustls's extracted secrets.
fn extracted_keys(seq: u64, secrets: &ConnectionTrafficSecrets) -> Keys {
    let (alg, key, iv): (&'static aead::Algorithm, &[u8], &[u8]) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            (&aead::AES_128_GCM, key.as_ref(), iv.as_ref())
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            (&aead::AES_256_GCM, key.as_ref(), iv.as_ref())
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (&aead::CHACHA20_POLY1305, key.as_ref(), iv.as_ref())
        }
        _ => panic!("unexpected suite"),
    };
    Keys {
        alg,
        key: key.to_vec(),
        iv: iv.try_into().expect("12-byte IV"),
        seq,
        secret: Vec::new(),
    }
}

/// The length of the whole record at the front of `buf`, once it is all there.
pub fn whole_record(buf: &[u8]) -> Option<usize> {
    if buf.len() < 5 {
        return None;
    }
    let n = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    (buf.len() >= n).then_some(n)
}

/// Seals one record with `keys` (TLS 1.3: inner type and `padding` zeros; TLS 1.2: the
/// explicit nonce for GCM, RFC 5288; the IV XOR the sequence number for ChaCha20, RFC 7905)
/// and advances the sequence number.
pub fn seal_with(
    keys: &mut Keys,
    tls13: bool,
    content_type: u8,
    plain: &[u8],
    padding: usize,
) -> Vec<u8> {
    let nonce = keys.nonce();
    let seq = keys.seq;
    keys.seq += 1;
    let key = keys.aead();
    if tls13 {
        let mut inner = plain.to_vec();
        inner.push(content_type);
        inner.resize(inner.len() + padding, 0);
        let len = u16::try_from(inner.len() + 16).unwrap().to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, len[0], len[1]];
        key.seal_in_place_append_tag(nonce, aead::Aad::from(header), &mut inner)
            .unwrap();
        let mut out = header.to_vec();
        out.extend_from_slice(&inner);
        out
    } else {
        let explicit = !keys.chacha();
        let body_len = plain.len() + 16 + if explicit { 8 } else { 0 };
        let len = u16::try_from(body_len).unwrap().to_be_bytes();
        let mut out = vec![content_type, 3, 3, len[0], len[1]];
        if explicit {
            out.extend_from_slice(&nonce.as_ref()[4..]);
        }
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            nonce,
            aead::Aad::from(tls12_aad(seq, content_type, plain.len())),
            &mut body,
        )
        .unwrap();
        out.extend_from_slice(&body);
        out
    }
}

/// Opens one whole record with `keys`: (content type, plaintext), or None when it does
/// not authenticate. Advances the sequence number when it does.
pub fn open_with(keys: &mut Keys, tls13: bool, record: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (header, body) = record.split_at(5);
    let key = keys.aead();
    let out = if tls13 {
        let mut body = body.to_vec();
        let n = key
            .open_in_place(
                keys.nonce(),
                aead::Aad::from(<[u8; 5]>::try_from(header).unwrap()),
                &mut body,
            )
            .ok()?
            .len();
        body.truncate(n);
        let end = body.iter().rposition(|&b| b != 0)?;
        let content_type = body[end];
        body.truncate(end);
        (content_type, body)
    } else {
        let explicit = if keys.chacha() { 0 } else { 8 };
        if body.len() < explicit + 16 {
            return None;
        }
        let mut nonce = *keys.nonce().as_ref();
        if explicit > 0 {
            nonce[4..].copy_from_slice(&body[..8]);
        }
        let mut data = body[explicit..].to_vec();
        let plain_len = data.len() - 16;
        let n = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(tls12_aad(keys.seq, header[0], plain_len)),
                &mut data,
            )
            .ok()?
            .len();
        data.truncate(n);
        (header[0], data)
    };
    keys.seq += 1;
    Some(out)
}

fn tls12_aad(seq: u64, content_type: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    aad
}

/// The record layer's keys taken from a client connection whose handshake is done: TLS 1.3
/// from the key log (and checked against rustls's extracted secrets), TLS 1.2 extracted.
/// Returns (tls13, sending side, receiving keys, hkdf).
pub fn take_keys(
    conn: rustls::ClientConnection,
    log: &Secrets,
    suite: CipherSuite,
) -> (bool, Sealer, Keys, hkdf::Algorithm) {
    let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let extracted = conn.dangerous_extract_secrets().expect("secret extraction");
    let (tx_seq, tx_secrets) = extracted.tx;
    let (rx_seq, rx_secrets) = extracted.rx;
    if tls13 {
        let (alg, h) = tls13_algs(suite);
        let tx = tls13_keys(alg, h, log.get("CLIENT_TRAFFIC_SECRET_0"), 0);
        let rx = tls13_keys(alg, h, log.get("SERVER_TRAFFIC_SECRET_0"), 0);
        // Our derivation agrees with rustls's, and nothing was sent or read under them.
        for (ours, seq, theirs) in [(&tx, tx_seq, &tx_secrets), (&rx, rx_seq, &rx_secrets)] {
            let theirs = extracted_keys(seq, theirs);
            assert_eq!((&ours.key, ours.iv, 0), (&theirs.key, theirs.iv, seq));
        }
        let tx = Sealer {
            tls13,
            keys: tx,
            hkdf: h,
        };
        (true, tx, rx, h)
    } else {
        let tx = Sealer {
            tls13,
            keys: extracted_keys(tx_seq, &tx_secrets),
            hkdf: hkdf::HKDF_SHA256,
        };
        let rx = extracted_keys(rx_seq, &rx_secrets);
        (false, tx, rx, hkdf::HKDF_SHA256)
    }
}

impl RawTls {
    /// TLS 1.3 handshake with exactly `suite` to `addr`, trusting the CA PEM `ca`, ALPN
    /// http/1.1. Returns once the handshake is complete and the client's Finished is written.
    pub fn connect13(addr: SocketAddr, ca: &Path, suite: CipherSuite) -> RawTls {
        let (mut tls, finished) = RawTls::handshake(addr, ca, suite, true);
        tls.send(&finished);
        tls
    }

    /// Same, but the client's last flight (its Finished) is not written: it is returned, so
    /// that the caller can send it together with further records in one write.
    pub fn connect13_holding_finished(
        addr: SocketAddr,
        ca: &Path,
        suite: CipherSuite,
    ) -> (RawTls, Vec<u8>) {
        RawTls::handshake(addr, ca, suite, true)
    }

    /// TLS 1.2 with `suite` (an ECDHE_ECDSA suite for the test CA's EC leaf).
    pub fn connect12(addr: SocketAddr, ca: &Path, suite: CipherSuite) -> RawTls {
        let (mut tls, finished) = RawTls::handshake(addr, ca, suite, false);
        // TLS 1.2: the client's Finished went before the server's; nothing is held.
        tls.send(&finished);
        tls
    }

    fn handshake(
        addr: SocketAddr,
        ca: &Path,
        suite: CipherSuite,
        tls13: bool,
    ) -> (RawTls, Vec<u8>) {
        let log = Arc::new(Secrets::default());
        let config = client_config(ca, suite, Some(log.clone()));
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut input = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut sock).expect("write handshake");
            }
            // One whole record at a time, so that rustls reads nothing past the handshake.
            if let Some(n) = whole_record(&input) {
                let record: Vec<u8> = input.drain(..n).collect();
                let mut slice = &record[..];
                while !slice.is_empty() {
                    conn.read_tls(&mut slice).expect("read_tls");
                }
                conn.process_new_packets()
                    .unwrap_or_else(|e| panic!("handshake with {suite:?}: {e}"));
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "handshake timed out");
            sock.set_read_timeout(Some(left)).unwrap();
            let n = sock.read(&mut chunk).expect("read handshake");
            assert!(n > 0, "EOF during the handshake with {suite:?}");
            input.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite)
        );
        let mut finished = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut finished).unwrap();
        }
        let (is13, tx, rx, hkdf) = take_keys(conn, &log, suite);
        assert_eq!(is13, tls13, "negotiated version");
        (
            RawTls {
                sock,
                tls13,
                suite,
                tx,
                rx,
                hkdf,
                input,
            },
            finished,
        )
    }

    /// One record (TLS 1.3: with `padding` zeros); advances the sending sequence number.
    pub fn seal(&mut self, content_type: u8, plain: &[u8], padding: usize) -> Vec<u8> {
        self.tx.seal(content_type, plain, padding)
    }

    /// Another handle on the socket (to write from a second thread while this one reads).
    pub fn try_clone_socket(&self) -> TcpStream {
        self.sock.try_clone().expect("clone the socket")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed: a failed write shows in what `recv` reads.
        let _ = self.sock.write_all(bytes);
    }

    pub fn send_record(&mut self, content_type: u8, plain: &[u8]) {
        let record = self.seal(content_type, plain, 0);
        self.send(&record);
    }

    /// TLS 1.3: KeyUpdate(update_requested = `request`) under the current key, then the
    /// sending key moves to the next generation. Returns the record instead of sending it.
    pub fn key_update_bytes(&mut self, request: bool) -> Vec<u8> {
        self.tx.key_update_bytes(request)
    }

    pub fn key_update(&mut self, request: bool) {
        let record = self.key_update_bytes(request);
        self.send(&record);
    }

    /// Reads and opens the next record. A server KeyUpdate switches the receiving key and
    /// is returned as a Record, so is a NewSessionTicket.
    pub fn recv(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 32 * 1024];
        loop {
            if let Some(n) = whole_record(&self.input) {
                let record: Vec<u8> = self.input.drain(..n).collect();
                return self.open(&record);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut chunk) {
                Ok(0) => return Recv::Eof,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Recv::Timeout;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Recv::Eof, // reset
            }
        }
    }

    fn open(&mut self, record: &[u8]) -> Recv {
        // An alert in the clear (TLS 1.2 before the keys changed, or a server not yet
        // encrypting): two bytes.
        if record[0] == ALERT && record.len() == 7 {
            return Recv::Alert {
                level: record[5],
                description: record[6],
            };
        }
        let Some((content_type, plain)) = open_with(&mut self.rx, self.tls13, record) else {
            panic!(
                "a server record does not authenticate (seq {}): {:02x?}",
                self.rx.seq,
                &record[..record.len().min(32)]
            );
        };
        match (content_type, &plain[..]) {
            (ALERT, [level, description]) => Recv::Alert {
                level: *level,
                description: *description,
            },
            (HANDSHAKE, [24, 0, 0, 1, _]) if self.tls13 => {
                let next = expand_label(
                    self.hkdf,
                    &self.rx.secret,
                    "traffic upd",
                    self.rx.secret.len(),
                );
                self.rx = tls13_keys(self.rx.alg, self.hkdf, next, 0);
                Recv::Record {
                    content_type,
                    plain,
                }
            }
            _ => Recv::Record {
                content_type,
                plain,
            },
        }
    }

    /// Sends `req` as one application-data record and reads until the HTTP head (and for an
    /// answer with a Content-Length, the body) arrived; NewSessionTickets are skipped.
    pub fn request(&mut self, req: &str, timeout: Duration) -> Result<String, String> {
        self.send_record(APPLICATION_DATA, req.as_bytes());
        self.read_answer(timeout)
    }

    /// Reads one HTTP answer (see `request`).
    pub fn read_answer(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let body_len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + body_len {
                    return Ok(String::from_utf8_lossy(&got).into_owned());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Record {
                    content_type: APPLICATION_DATA,
                    plain,
                } => got.extend_from_slice(&plain),
                Recv::Record { .. } => {}
                other => {
                    return Err(format!(
                        "{other:?} after {:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
        }
    }
}
