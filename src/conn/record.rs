//! The TLS record layer of an established session (RFC 8446 §5 for TLS 1.3, RFC 5288 and
//! RFC 7905 for TLS 1.2's AEAD suites), so that an idle stream keeps only its traffic keys
//! (a few dozen bytes each way) instead of rustls's whole connection. rustls does the
//! handshake; its traffic secrets are then taken over (`dangerous_into_kernel_connection`,
//! the path meant for kernel TLS). For TLS 1.3 rustls's small `KernelConnection` is kept to
//! derive the next secrets on a KeyUpdate.
//!
//! Keys are stored as bytes; ring's key schedule (AES round keys, the GHASH table) is
//! built for each record sealed or opened, which costs far less than the write itself.
//! What is wiped: our key and IV bytes, when a session ends or a KeyUpdate replaces them
//! (`Keys`'s `Drop`); rustls's secrets it hands over (`AeadKey`) and its TLS 1.3 key
//! schedule zero themselves. What is not: ring's per-record key schedule on the loop's
//! stack (ring does not zero it; the next record's overwrites it). Acceptable because it
//! only shortens how long keys linger in freed memory: nothing here defends against a
//! reader of the live process (protocol 4, "Record-layer limits").
//!
//! Limits kept from rustls's own record layer: at most `MAX_EMPTY_IN_A_ROW` empty
//! records in a row and no empty handshake or alert record, a few ignored warning alerts,
//! `MAX_KEY_UPDATES`, records per key; `tls.rs` adds the hand-over right after the
//! Finished, the per-record input cost and the bounds on incomplete records.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use std::io;

/// Content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Alert descriptions we send.
pub const CLOSE_NOTIFY: u8 = 0;
pub const UNEXPECTED_MESSAGE: u8 = 10;
pub const BAD_RECORD_MAC: u8 = 20;
pub const RECORD_OVERFLOW: u8 = 22;
pub const ILLEGAL_PARAMETER: u8 = 47;
pub const DECODE_ERROR: u8 = 50;
pub const USER_CANCELED: u8 = 90;
pub const NO_RENEGOTIATION: u8 = 100;

const TAG: usize = 16;
const HEADER: usize = 5;
/// Largest plaintext of a record.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// A TLS 1.2 GCM record carries its 8-byte explicit nonce.
const EXPLICIT_NONCE: usize = 8;
/// Records sealed under one key before it is renewed (TLS 1.3, a KeyUpdate) or the
/// connection is ended (TLS 1.2): well under AES-GCM's limit of 2^24.5 (RFC 8446 §5.5).
const MAX_RECORDS_PER_KEY: u64 = 1 << 23;
/// KeyUpdates a client may send on one connection (an hourly one for half a year).
const MAX_KEY_UPDATES: u16 = 4096;
/// Empty records (no plaintext: an empty application-data record, or in TLS 1.3 one of
/// padding only) accepted in a row; one more is fatal. rustls's limit, from BoringSSL.
pub const MAX_EMPTY_IN_A_ROW: u8 = 32;
/// Warning alerts ignored on one connection (TLS 1.2's, and TLS 1.3's `user_canceled`);
/// one more is fatal. rustls's limit.
const MAX_WARNING_ALERTS: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20,
}

impl Alg {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::Chacha20 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One direction's key, IV and record sequence number.
struct Keys {
    alg: Alg,
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> io::Result<Keys> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Alg::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Alg::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Alg::Chacha20, key, iv),
            _ => return Err(io::Error::other("TLS: unsupported cipher suite")),
        };
        let mut k = Keys {
            alg,
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        let key = key.as_ref();
        if key.len() != alg.ring().key_len() || iv.as_ref().len() != 12 {
            return Err(io::Error::other("TLS: unexpected key size"));
        }
        k.key[..key.len()].copy_from_slice(key);
        k.iv.copy_from_slice(iv.as_ref());
        Ok(k)
    }

    fn aead(&self) -> LessSafeKey {
        let alg = self.alg.ring();
        // The length was checked in `new`.
        LessSafeKey::new(UnboundKey::new(alg, &self.key[..alg.key_len()]).expect("key length"))
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // Best effort: the key bytes do not outlive the connection in freed memory.
        for b in self.key.iter_mut().chain(self.iv.iter_mut()) {
            // SAFETY: `b` is a valid, aligned, exclusive reference to a byte of `self`.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// What one incoming record turned out to be.
pub enum Record {
    /// Application data: this range of the record's buffer (decrypted in place).
    Data(std::ops::Range<usize>),
    /// The peer's close_notify.
    Closed,
    /// A TLS 1.3 KeyUpdate (handled here); nothing for the caller.
    Nothing,
}

pub struct Traffic {
    tls13: bool,
    tx: Keys,
    rx: Keys,
    /// TLS 1.3: derives the next traffic secrets on a KeyUpdate.
    kernel: Option<Box<KernelConnection<ServerConnectionData>>>,
    /// Records sealed under one key (`MAX_RECORDS_PER_KEY`; lower in tests).
    limit: u64,
    /// KeyUpdates received, each costing two key derivations: bounded.
    key_updates: u16,
    /// Empty records received since the last one with plaintext (`MAX_EMPTY_IN_A_ROW`).
    empty_in_a_row: u8,
    /// Warning alerts received and ignored (`MAX_WARNING_ALERTS`).
    warnings: u8,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Traffic {
    /// Takes over an established rustls session's keys.
    pub fn take_over(conn: rustls::server::UnbufferedServerConnection) -> io::Result<Traffic> {
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(io::Error::other)?;
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Traffic {
            tls13,
            tx: Keys::new(tx_seq, tx)?,
            rx: Keys::new(rx_seq, rx)?,
            kernel: tls13.then(|| Box::new(kernel)),
            limit: MAX_RECORDS_PER_KEY,
            key_updates: 0,
            empty_in_a_row: 0,
            warnings: 0,
        })
    }

    /// Fuzzing and tests: a session with fixed keys and no key schedule (a KeyUpdate is
    /// refused), of suite `suite % 3` (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305).
    /// `peer` gives the other end: its sending keys are this end's receiving keys.
    #[doc(hidden)]
    pub fn with_test_keys(suite: u8, tls13: bool, peer: bool) -> Traffic {
        let alg = [Alg::Aes128Gcm, Alg::Aes256Gcm, Alg::Chacha20][usize::from(suite % 3)];
        let keys = |seed: u8| Keys {
            alg,
            key: [seed; 32],
            iv: [seed ^ 0x5a; 12],
            seq: 0,
        };
        let (tx, rx) = if peer { (2, 1) } else { (1, 2) };
        Traffic {
            tls13,
            tx: keys(tx),
            rx: keys(rx),
            kernel: None,
            limit: MAX_RECORDS_PER_KEY,
            key_updates: 0,
            empty_in_a_row: 0,
            warnings: 0,
        }
    }

    /// Lowers the records sealed per key, so that tests reach the renewal.
    pub fn set_record_limit(&mut self, limit: u64) {
        self.limit = limit.clamp(1, MAX_RECORDS_PER_KEY);
    }

    /// Appends one record of `content_type` holding `plain` (at most 16 KiB) to `out`,
    /// renewing the sending key first when it has sealed enough.
    pub fn seal(&mut self, content_type: u8, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        debug_assert!(plain.len() <= MAX_PLAINTEXT);
        if self.tx.seq >= self.limit {
            if !self.tls13 {
                return Err(io::Error::other("TLS 1.2: the key has sealed its maximum"));
            }
            self.seal_raw(HANDSHAKE, &[24, 0, 0, 1, 0], out)?;
            self.renew_tx()?;
        }
        self.seal_raw(content_type, plain, out)
    }

    fn renew_tx(&mut self) -> io::Result<()> {
        let kernel = self
            .kernel
            .as_mut()
            .ok_or_else(|| io::Error::other("TLS: no key schedule"))?;
        let (seq, secrets) = kernel.update_tx_secret().map_err(io::Error::other)?;
        self.tx = Keys::new(seq, secrets)?;
        Ok(())
    }

    fn seal_raw(&mut self, content_type: u8, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        let nonce = self.tx.nonce();
        let seq = self.tx.seq;
        self.tx.seq += 1;
        let key = self.tx.aead();
        if self.tls13 {
            let len = plain.len() + 1 + TAG;
            out.extend_from_slice(&[APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8]);
            out.extend_from_slice(plain);
            out.push(content_type);
            let (head, body) = out[start..].split_at_mut(HEADER);
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&*head),
                    body,
                )
                .map_err(|_| io::Error::other("TLS: seal failed"))?;
            out.extend_from_slice(tag.as_ref());
        } else {
            let explicit = self.tx.alg != Alg::Chacha20;
            let len = plain.len() + TAG + if explicit { EXPLICIT_NONCE } else { 0 };
            out.extend_from_slice(&[content_type, 3, 3, (len >> 8) as u8, len as u8]);
            if explicit {
                out.extend_from_slice(&nonce[4..]);
            }
            let body_start = out.len();
            out.extend_from_slice(plain);
            let aad = tls12_aad(seq, content_type, plain.len());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut out[body_start..],
                )
                .map_err(|_| io::Error::other("TLS: seal failed"))?;
            out.extend_from_slice(tag.as_ref());
        }
        Ok(())
    }

    /// Appends an alert record (fatal unless close_notify).
    pub fn alert(&mut self, description: u8, out: &mut Vec<u8>) {
        let level = if description == CLOSE_NOTIFY { 1 } else { 2 };
        let _ = self.seal_raw(ALERT, &[level, description], out);
    }

    /// The length of the whole record at the front of `buf`, once it is all there;
    /// Err when its header is impossible.
    pub fn record_len(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        let max = if self.tls13 {
            MAX_PLAINTEXT + 256
        } else {
            MAX_PLAINTEXT + 2048
        };
        if len > max {
            return Err(invalid("TLS record too large"));
        }
        Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens one whole record (`record`, header included) in place and handles what is
    /// not application data. `out` receives anything to send back (a KeyUpdate).
    /// On error, the alert to send is `Err((description, error))`.
    pub fn open(
        &mut self,
        record: &mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<Record, (u8, io::Error)> {
        let outer = record[0];
        let seq = self.rx.seq;
        if seq >= MAX_RECORDS_PER_KEY * 2 {
            return Err((
                UNEXPECTED_MESSAGE,
                invalid("TLS: too many records under one key"),
            ));
        }
        let (head, body) = record.split_at_mut(HEADER);
        let (content_type, range) = if self.tls13 {
            if outer != APPLICATION_DATA {
                return Err((
                    UNEXPECTED_MESSAGE,
                    invalid("TLS 1.3: unexpected record type"),
                ));
            }
            let key = self.rx.aead();
            let nonce = self.rx.nonce();
            let n = key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&*head), body)
                .map_err(|_| (BAD_RECORD_MAC, invalid("TLS: bad record MAC")))?
                .len();
            // RFC 8446 §5.4: content, type and padding within 2^14 + 1 bytes.
            if n > MAX_PLAINTEXT + 1 {
                return Err((RECORD_OVERFLOW, invalid("TLS 1.3: record too large")));
            }
            // Strip the padding; the last non-zero byte is the real content type.
            let Some(end) = body[..n].iter().rposition(|&b| b != 0) else {
                return Err((
                    UNEXPECTED_MESSAGE,
                    invalid("TLS 1.3: record without a type"),
                ));
            };
            (body[end], HEADER..HEADER + end)
        } else {
            if !matches!(outer, ALERT | HANDSHAKE | APPLICATION_DATA) {
                return Err((
                    UNEXPECTED_MESSAGE,
                    invalid("TLS 1.2: unexpected record type"),
                ));
            }
            let explicit = if self.rx.alg == Alg::Chacha20 {
                0
            } else {
                EXPLICIT_NONCE
            };
            if body.len() < explicit + TAG {
                return Err((DECODE_ERROR, invalid("TLS 1.2: short record")));
            }
            let mut nonce = self.rx.nonce();
            if explicit > 0 {
                nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
            }
            let plain_len = body.len() - explicit - TAG;
            if plain_len > MAX_PLAINTEXT {
                return Err((RECORD_OVERFLOW, invalid("TLS 1.2: record too large")));
            }
            let aad = tls12_aad(seq, outer, plain_len);
            let key = self.rx.aead();
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body[explicit..],
            )
            .map_err(|_| (BAD_RECORD_MAC, invalid("TLS: bad record MAC")))?;
            let start = HEADER + explicit;
            (outer, start..start + plain_len)
        };
        self.rx.seq += 1;
        if range.is_empty() {
            // Free to send, so bounded: an empty application-data record (or in TLS 1.3
            // one of padding only) a few times in a row; never an empty handshake message
            // or alert (RFC 8446 §5.1, RFC 5246 §6.2.1).
            if content_type != APPLICATION_DATA {
                return Err((
                    DECODE_ERROR,
                    invalid("TLS: empty handshake or alert record"),
                ));
            }
            self.empty_in_a_row += 1;
            if self.empty_in_a_row > MAX_EMPTY_IN_A_ROW {
                return Err((
                    UNEXPECTED_MESSAGE,
                    invalid("TLS: too many empty records in a row"),
                ));
            }
        } else {
            self.empty_in_a_row = 0;
        }
        match content_type {
            APPLICATION_DATA => Ok(Record::Data(range)),
            ALERT => {
                let alert = &record[range];
                match alert {
                    [_, CLOSE_NOTIFY] => Ok(Record::Closed),
                    // Warnings are ignored in TLS 1.2, and `user_canceled` in TLS 1.3
                    // (it precedes a close_notify), a few per connection.
                    [1, description] if !self.tls13 || *description == USER_CANCELED => {
                        self.warnings += 1;
                        if self.warnings > MAX_WARNING_ALERTS {
                            return Err((
                                UNEXPECTED_MESSAGE,
                                invalid("TLS: too many warning alerts"),
                            ));
                        }
                        Ok(Record::Nothing)
                    }
                    [1, _] => Err((DECODE_ERROR, invalid("TLS 1.3: a warning alert"))),
                    [_, _] => Err((CLOSE_NOTIFY, invalid("TLS: the peer sent an alert"))),
                    _ => Err((DECODE_ERROR, invalid("TLS: malformed alert"))),
                }
            }
            HANDSHAKE if self.tls13 => {
                let mut msgs = &record[range];
                while !msgs.is_empty() {
                    // KeyUpdate (type 24) is the only handshake message a client may
                    // send after the handshake (no client certificates here).
                    match msgs {
                        [24, 0, 0, 1, request @ (0 | 1), ..] => {
                            let request = *request;
                            msgs = &msgs[5..];
                            if !msgs.is_empty() {
                                // RFC 8446 §5.1: a key change ends the record.
                                return Err((
                                    UNEXPECTED_MESSAGE,
                                    invalid("TLS: data after KeyUpdate"),
                                ));
                            }
                            self.key_update(request == 1, out)
                                .map_err(|e| (UNEXPECTED_MESSAGE, e))?;
                        }
                        // RFC 8446 §4.6.3: any other request value is illegal_parameter.
                        [24, 0, 0, 1, _, ..] => {
                            return Err((
                                ILLEGAL_PARAMETER,
                                invalid("TLS 1.3: KeyUpdate with an invalid request"),
                            ));
                        }
                        _ => {
                            return Err((
                                UNEXPECTED_MESSAGE,
                                invalid("TLS 1.3: unexpected handshake message"),
                            ));
                        }
                    }
                }
                Ok(Record::Nothing)
            }
            // TLS 1.2: a client asking to renegotiate, which we do not do.
            HANDSHAKE => Err((NO_RENEGOTIATION, invalid("TLS 1.2: renegotiation refused"))),
            _ => Err((UNEXPECTED_MESSAGE, invalid("TLS: unexpected content type"))),
        }
    }

    /// The peer's KeyUpdate: new receiving keys; if it asks, ours follow (announced
    /// under the old key).
    fn key_update(&mut self, requested: bool, out: &mut Vec<u8>) -> io::Result<()> {
        self.key_updates += 1;
        if self.key_updates > MAX_KEY_UPDATES {
            return Err(invalid("TLS 1.3: too many KeyUpdates"));
        }
        let kernel = self
            .kernel
            .as_mut()
            .ok_or_else(|| io::Error::other("TLS: no key schedule"))?;
        let (seq, secrets) = kernel.update_rx_secret().map_err(io::Error::other)?;
        self.rx = Keys::new(seq, secrets)?;
        if requested {
            self.seal_raw(HANDSHAKE, &[24, 0, 0, 1, 0], out)?;
            self.renew_tx()?;
        }
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, content_type: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11] = (len >> 8) as u8;
    aad[12] = len as u8;
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server-side sealer and the matching opener (its tx keys as their rx keys).
    fn pair(alg: Alg, tls13: bool) -> (Traffic, Traffic) {
        let suite = match alg {
            Alg::Aes128Gcm => 0,
            Alg::Aes256Gcm => 1,
            Alg::Chacha20 => 2,
        };
        (
            Traffic::with_test_keys(suite, tls13, false),
            Traffic::with_test_keys(suite, tls13, true),
        )
    }

    const ALL: [(Alg, bool); 6] = [
        (Alg::Aes128Gcm, true),
        (Alg::Aes256Gcm, true),
        (Alg::Chacha20, true),
        (Alg::Aes128Gcm, false),
        (Alg::Aes256Gcm, false),
        (Alg::Chacha20, false),
    ];

    #[test]
    fn records_round_trip_in_every_suite() {
        for (alg, tls13) in ALL {
            let (mut a, mut b) = pair(alg, tls13);
            let mut wire = Vec::new();
            for msg in [&b"hello"[..], b"", &[7u8; MAX_PLAINTEXT]] {
                a.seal(APPLICATION_DATA, msg, &mut wire).unwrap();
            }
            let mut out = Vec::new();
            let mut got = Vec::new();
            let mut rest = &mut wire[..];
            while let Some(len) = b.record_len(rest).unwrap() {
                let (record, tail) = rest.split_at_mut(len);
                match b.open(record, &mut out) {
                    Ok(Record::Data(r)) => got.push(record[r].to_vec()),
                    _ => panic!("{alg:?} {tls13}"),
                }
                rest = tail;
            }
            assert!(rest.is_empty());
            assert_eq!(
                got,
                vec![b"hello".to_vec(), vec![], vec![7u8; MAX_PLAINTEXT]]
            );
            assert!(out.is_empty());
            assert_eq!((a.tx.seq, b.rx.seq), (3, 3));
        }
    }

    /// Seals `plain` as `content_type` on `a` and opens it on `b`: the outcome.
    fn one(a: &mut Traffic, b: &mut Traffic, content_type: u8, plain: &[u8]) -> Result<(), u8> {
        let mut wire = Vec::new();
        a.seal_raw(content_type, plain, &mut wire).unwrap();
        b.open(&mut wire, &mut Vec::new())
            .map(|_| ())
            .map_err(|(alert, _)| alert)
    }

    #[test]
    fn empty_records_are_bounded_in_a_row_and_never_handshake_or_alert() {
        for (alg, tls13) in ALL {
            let (mut a, mut b) = pair(alg, tls13);
            for round in 0..3 {
                for _ in 0..MAX_EMPTY_IN_A_ROW {
                    assert_eq!(one(&mut a, &mut b, APPLICATION_DATA, b""), Ok(()));
                }
                // Data in between starts the count again.
                if round < 2 {
                    assert_eq!(one(&mut a, &mut b, APPLICATION_DATA, b"x"), Ok(()));
                }
            }
            assert_eq!(
                one(&mut a, &mut b, APPLICATION_DATA, b""),
                Err(UNEXPECTED_MESSAGE),
                "{alg:?} {tls13}: one empty record too many"
            );
            for content_type in [HANDSHAKE, ALERT] {
                let (mut a, mut b) = pair(alg, tls13);
                assert_eq!(
                    one(&mut a, &mut b, content_type, b""),
                    Err(DECODE_ERROR),
                    "{alg:?} {tls13} empty {content_type}"
                );
            }
        }
    }

    #[test]
    fn warning_alerts_and_invalid_key_updates() {
        for (alg, tls13) in ALL {
            let (mut a, mut b) = pair(alg, tls13);
            // user_canceled is ignored in both versions, a few times.
            for _ in 0..MAX_WARNING_ALERTS {
                assert_eq!(one(&mut a, &mut b, ALERT, &[1, USER_CANCELED]), Ok(()));
            }
            assert_eq!(
                one(&mut a, &mut b, ALERT, &[1, USER_CANCELED]),
                Err(UNEXPECTED_MESSAGE)
            );
            // Any other warning: ignored in TLS 1.2, fatal in TLS 1.3.
            let (mut a, mut b) = pair(alg, tls13);
            let other = one(&mut a, &mut b, ALERT, &[1, 42]);
            assert_eq!(other, if tls13 { Err(DECODE_ERROR) } else { Ok(()) });
            // A fatal alert ends without an answer; close_notify at either level closes.
            let (mut a, mut b) = pair(alg, tls13);
            assert_eq!(one(&mut a, &mut b, ALERT, &[2, 40]), Err(CLOSE_NOTIFY));
            if tls13 {
                let (mut a, mut b) = pair(alg, tls13);
                assert_eq!(
                    one(&mut a, &mut b, HANDSHAKE, &[24, 0, 0, 1, 2]),
                    Err(ILLEGAL_PARAMETER),
                    "RFC 8446 4.6.3"
                );
            }
        }
    }

    #[test]
    fn a_changed_byte_or_a_replayed_record_fails_authentication() {
        for (alg, tls13) in ALL {
            let (mut a, mut b) = pair(alg, tls13);
            let mut wire = Vec::new();
            a.seal(APPLICATION_DATA, b"secret", &mut wire).unwrap();
            let mut bad = wire.clone();
            *bad.last_mut().unwrap() ^= 1;
            let err = b.open(&mut bad, &mut Vec::new()).err().unwrap();
            assert_eq!(err.0, BAD_RECORD_MAC);
            let mut good = wire.clone();
            assert!(matches!(
                b.open(&mut good, &mut Vec::new()),
                Ok(Record::Data(_))
            ));
            // The same record again: the sequence number moved on.
            let mut again = wire.clone();
            assert_eq!(
                b.open(&mut again, &mut Vec::new()).err().unwrap().0,
                BAD_RECORD_MAC
            );
        }
    }

    #[test]
    fn alerts_padding_and_unexpected_messages() {
        for (alg, tls13) in ALL {
            let (mut a, mut b) = pair(alg, tls13);
            let mut wire = Vec::new();
            a.alert(CLOSE_NOTIFY, &mut wire);
            assert!(matches!(
                b.open(&mut wire, &mut Vec::new()),
                Ok(Record::Closed)
            ));
            let mut wire = Vec::new();
            a.alert(BAD_RECORD_MAC, &mut wire);
            assert!(b.open(&mut wire, &mut Vec::new()).is_err());
            // A handshake message after the handshake: TLS 1.3 takes only KeyUpdate, TLS
            // 1.2 refuses renegotiation.
            let (mut a, mut b) = pair(alg, tls13);
            let mut wire = Vec::new();
            a.seal_raw(HANDSHAKE, &[1, 0, 0, 0], &mut wire).unwrap();
            let want = if tls13 {
                UNEXPECTED_MESSAGE
            } else {
                NO_RENEGOTIATION
            };
            assert_eq!(b.open(&mut wire, &mut Vec::new()).err().unwrap().0, want);
        }
        // TLS 1.3 padding: zeros after the real content type are stripped.
        let (mut a, mut b) = pair(Alg::Aes128Gcm, true);
        let mut wire = Vec::new();
        a.seal_raw(0, &[b'h', b'i', APPLICATION_DATA, 0, 0, 0], &mut wire)
            .unwrap();
        match b.open(&mut wire, &mut Vec::new()) {
            Ok(Record::Data(r)) => assert_eq!(&wire[r], b"hi"),
            _ => panic!("padded record"),
        }
        // All zeros: no content type.
        let (mut a, mut b) = pair(Alg::Aes128Gcm, true);
        let mut wire = Vec::new();
        a.seal_raw(0, &[0, 0], &mut wire).unwrap();
        assert_eq!(
            b.open(&mut wire, &mut Vec::new()).err().unwrap().0,
            UNEXPECTED_MESSAGE
        );
        // Padding past 2^14 + 1 bytes of inner plaintext (the ciphertext itself is
        // within the record size limit).
        let (mut a, mut b) = pair(Alg::Aes128Gcm, true);
        let mut wire = Vec::new();
        let mut inner = vec![b'x'; MAX_PLAINTEXT];
        inner.extend_from_slice(&[APPLICATION_DATA, 0]);
        a.seal_raw(0, &inner, &mut wire).unwrap();
        assert!(b.record_len(&wire).unwrap().is_some());
        assert_eq!(
            b.open(&mut wire, &mut Vec::new()).err().unwrap().0,
            RECORD_OVERFLOW
        );
        // A plaintext record type on a TLS 1.3 connection.
        let mut plain = vec![HANDSHAKE, 3, 3, 0, 20];
        plain.extend_from_slice(&[0; 20]);
        assert_eq!(
            b.open(&mut plain, &mut Vec::new()).err().unwrap().0,
            UNEXPECTED_MESSAGE
        );
    }

    #[test]
    fn record_lengths_are_bounded() {
        let (_, b) = pair(Alg::Aes128Gcm, true);
        assert_eq!(b.record_len(&[23, 3, 3, 0]).unwrap(), None);
        assert_eq!(b.record_len(&[23, 3, 3, 0, 2, 9]).unwrap(), None);
        assert_eq!(b.record_len(&[23, 3, 3, 0, 1, 9]).unwrap(), Some(6));
        assert!(b.record_len(&[23, 3, 3, 0x41, 0x01]).is_err());
        let (_, b12) = pair(Alg::Aes128Gcm, false);
        assert!(b12.record_len(&[23, 3, 3, 0x48, 0x01]).is_err());
        assert_eq!(b12.record_len(&[23, 3, 3, 0x48, 0x00]).unwrap(), None);
    }

    #[test]
    fn tls12_nonces_and_additional_data() {
        let (a, _) = pair(Alg::Aes128Gcm, false);
        let mut k = Keys {
            seq: 0x0102,
            ..a.tx
        };
        let n = k.nonce();
        assert_eq!(&n[..10], &k.iv[..10]);
        assert_eq!(n[10], k.iv[10] ^ 1);
        assert_eq!(n[11], k.iv[11] ^ 2);
        k.seq = 0;
        assert_eq!(
            tls12_aad(0x0102, APPLICATION_DATA, 300),
            [0, 0, 0, 0, 0, 0, 1, 2, 23, 3, 3, 1, 44]
        );
        // Without a key schedule (TLS 1.2, or this test), a KeyUpdate is an error.
        let (_, mut b) = pair(Alg::Aes128Gcm, true);
        assert!(b.key_update(true, &mut Vec::new()).is_err());
    }

    #[test]
    fn random_records_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (alg, tls13) in ALL {
            let (_, mut b) = pair(alg, tls13);
            for _ in 0..2_000 {
                let len = (next() % 80) as usize;
                let mut rec: Vec<u8> = (0..HEADER + len).map(|_| next() as u8).collect();
                rec[0] = [ALERT, HANDSHAKE, APPLICATION_DATA][(next() % 3) as usize];
                rec[3] = 0;
                rec[4] = len as u8;
                assert_eq!(b.record_len(&rec).unwrap(), Some(HEADER + len));
                assert!(b.open(&mut rec, &mut Vec::new()).is_err());
            }
        }
    }
}
