//! ssehub's own TLS record layer (`src/conn/record.rs`) against stock rustls, record for
//! record: the same client records after the handshake go (a) to a rustls
//! `ServerConnection` in memory and (b) to the real ssehub server over a socket
//! (`common::tls_client::RawTls`, records sealed with keys derived in the test). Every case
//! ends with the HTTP request `GET /healthz`, so "delivered" is observable on ssehub (it
//! answers) and on rustls (`reader()` gives the request); otherwise the connection
//! "ended", with the alert the server sent (decrypted), if any.
//!
//! Expected differences between the two are listed in `cases()` with their reasons; every
//! other case must come out the same on both, alert included.
mod common;

use common::tls_client::*;
use common::*;
use rustls::CipherSuite;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
const TIMEOUT: Duration = Duration::from_secs(5);

const TLS13_SUITES: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];
const TLS12_SUITES: [CipherSuite; 2] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certs::ca_and_leaf(dir.path());
    Pki {
        _dir: dir,
        ca,
        cert,
        key,
    }
}

fn start_tls(pki: &Pki) -> Server {
    let tls = format!(
        "cert = {:?}\nkey = {:?}",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    );
    Server::start_with(&[("tls", &tls)])
}

// ---------------------------------------------------------------------------------------
// The client itself

/// `RawTls` against the real server: every suite ssehub offers for this EC certificate
/// (three TLS 1.3, two TLS 1.2) gets `200` for `GET /healthz`, twice on one connection,
/// the second time after empty and (TLS 1.3) padded records and a KeyUpdate, and the
/// server's answers open under the keys derived here.
#[test]
fn raw_records_get_answers_in_every_suite() {
    let pki = pki();
    let server = start_tls(&pki);
    let req = std::str::from_utf8(REQUEST).unwrap();
    for suite in TLS13_SUITES {
        let mut tls = RawTls::connect13(server.addr, &pki.ca, suite);
        let answer = tls
            .request(req, TIMEOUT)
            .unwrap_or_else(|e| panic!("{suite:?}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 200 "), "{suite:?}: {answer}");
        assert!(answer.ends_with("ok\n"), "{suite:?}: {answer}");
        let empty = tls.seal(APPLICATION_DATA, b"", 0);
        let padded = tls.seal(APPLICATION_DATA, b"", 100);
        tls.send(&[empty, padded].concat());
        tls.key_update(false);
        let head = tls
            .request(req, TIMEOUT)
            .unwrap_or_else(|e| panic!("{suite:?}: {e}"));
        assert!(
            head.starts_with("HTTP/1.1 200 "),
            "{suite:?} after KeyUpdate: {head}"
        );
        // The server's records were read from sequence number 0 of its first key.
        assert!(tls.rx.seq >= 2, "{suite:?}: {}", tls.rx.seq);
    }
    for suite in TLS12_SUITES {
        let mut tls = RawTls::connect12(server.addr, &pki.ca, suite);
        assert!(!tls.tls13);
        for _ in 0..2 {
            let answer = tls
                .request(req, TIMEOUT)
                .unwrap_or_else(|e| panic!("{suite:?}: {e}"));
            assert!(answer.starts_with("HTTP/1.1 200 "), "{suite:?}: {answer}");
        }
    }
    // The Finished held back and sent in one write with the request.
    let (mut tls, finished) =
        RawTls::connect13_holding_finished(server.addr, &pki.ca, TLS13_SUITES[0]);
    let request = tls.seal(APPLICATION_DATA, REQUEST, 0);
    tls.send(&[finished, request].concat());
    let answer = tls.read_answer(TIMEOUT).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

// ---------------------------------------------------------------------------------------
// The differential cases

/// How a case came out on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The request reached the application (ssehub answered it).
    Delivered,
    /// The connection ended, with this alert from the server (None: closed without one).
    Ended(Option<u8>),
}
use End::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Versions {
    Both,
    Tls13,
}

struct Case {
    name: &'static str,
    versions: Versions,
    /// The client's records after the handshake (the request included).
    records: fn(&mut Sealer) -> Vec<u8>,
    /// What rustls does, and what ssehub does (TLS 1.3, TLS 1.2). Where they are not both
    /// `Delivered` or both `Ended` the case says why (an expected difference).
    rustls: [End; 2],
    ssehub: [End; 2],
}

fn request_in(s: &mut Sealer, parts: usize) -> Vec<u8> {
    let n = REQUEST.len().div_ceil(parts);
    REQUEST
        .chunks(n)
        .flat_map(|p| s.seal(APPLICATION_DATA, p, 0))
        .collect()
}

fn empties(s: &mut Sealer, n: usize, padding: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|_| s.seal(APPLICATION_DATA, b"", padding))
        .collect()
}

const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;

fn cases() -> Vec<Case> {
    let same = |e: End| ([e, e], [e, e]);
    let mut v = Vec::new();
    let mut add = |name,
                   versions,
                   records: fn(&mut Sealer) -> Vec<u8>,
                   (rustls, ssehub): ([End; 2], [End; 2])| {
        v.push(Case {
            name,
            versions,
            records,
            rustls,
            ssehub,
        })
    };
    add(
        "valid request",
        Versions::Both,
        |s| request_in(s, 1),
        same(Delivered),
    );
    add(
        "request split over 3 records",
        Versions::Both,
        |s| request_in(s, 3),
        same(Delivered),
    );
    add(
        "10 empty records + request",
        Versions::Both,
        |s| [empties(s, 10, 0), request_in(s, 1)].concat(),
        same(Delivered),
    );
    add(
        "32 empty records + request",
        Versions::Both,
        |s| [empties(s, 32, 0), request_in(s, 1)].concat(),
        same(Delivered),
    );
    // Expected difference: rustls ends with an error (TooManyEmptyFragments) and sends no
    // alert; ssehub sends unexpected_message.
    add(
        "33 empty records + request",
        Versions::Both,
        |s| [empties(s, 33, 0), request_in(s, 1)].concat(),
        ([Ended(None); 2], [Ended(Some(UNEXPECTED_MESSAGE)); 2]),
    );
    add(
        "5 padding-only records + padded request",
        Versions::Tls13,
        |s| {
            let mut out = empties(s, 5, 7);
            out.extend(s.seal(APPLICATION_DATA, REQUEST, 300));
            out
        },
        same(Delivered),
    );
    add(
        "33 padding-only records + request",
        Versions::Tls13,
        |s| [empties(s, 33, 1), request_in(s, 1)].concat(),
        ([Ended(None); 2], [Ended(Some(UNEXPECTED_MESSAGE)); 2]),
    );
    add(
        "empty handshake record + request",
        Versions::Both,
        |s| [s.seal(HANDSHAKE, b"", 0), request_in(s, 1)].concat(),
        // Expected difference, the only one in outcome: rustls takes an empty handshake
        // record as one more empty fragment (counted like empty application data) and
        // delivers the request; ssehub refuses it with decode_error (RFC 8446 §5.1 forbids
        // sending zero-length handshake fragments; `record.rs` refuses receiving them).
        ([Delivered; 2], [Ended(Some(DECODE_ERROR)); 2]),
    );
    add(
        "empty alert record + request",
        Versions::Both,
        |s| [s.seal(ALERT, b"", 0), request_in(s, 1)].concat(),
        same(Ended(Some(DECODE_ERROR))),
    );
    add(
        "warning user_canceled + request",
        Versions::Both,
        |s| [s.seal(ALERT, &[1, 90], 0), request_in(s, 1)].concat(),
        same(Delivered),
    );
    // Expected difference: rustls ends with an error (TooManyWarningAlertsReceived) and
    // sends no alert; ssehub sends unexpected_message.
    add(
        "5 x user_canceled + request",
        Versions::Both,
        |s| {
            let mut out: Vec<u8> = (0..5).flat_map(|_| s.seal(ALERT, &[1, 90], 0)).collect();
            out.extend(request_in(s, 1));
            out
        },
        ([Ended(None); 2], [Ended(Some(UNEXPECTED_MESSAGE)); 2]),
    );
    // TLS 1.3: only user_canceled may be a warning (decode_error); TLS 1.2: ignored.
    add(
        "warning bad_certificate + request",
        Versions::Both,
        |s| [s.seal(ALERT, &[1, 42], 0), request_in(s, 1)].concat(),
        (
            [Ended(Some(DECODE_ERROR)), Delivered],
            [Ended(Some(DECODE_ERROR)), Delivered],
        ),
    );
    add(
        "fatal handshake_failure + request",
        Versions::Both,
        |s| [s.seal(ALERT, &[2, 40], 0), request_in(s, 1)].concat(),
        same(Ended(None)),
    );
    add(
        "bad MAC",
        Versions::Both,
        |s| {
            let mut r = request_in(s, 1);
            let i = r.len() - 3;
            r[i] ^= 0x10;
            r
        },
        same(Ended(Some(BAD_RECORD_MAC))),
    );
    add(
        "replayed record",
        Versions::Both,
        |s| {
            let first = s.seal(APPLICATION_DATA, &REQUEST[..10], 0);
            let rest = s.seal(APPLICATION_DATA, &REQUEST[10..], 0);
            [first.clone(), first, rest].concat()
        },
        same(Ended(Some(BAD_RECORD_MAC))),
    );
    // Expected difference (TLS 1.2): rustls reads a CCS after the handshake as an invalid
    // message (decode_error); ssehub refuses the record type (unexpected_message).
    add(
        "encrypted change_cipher_spec + request",
        Versions::Both,
        |s| [s.seal(CHANGE_CIPHER_SPEC, &[1], 0), request_in(s, 1)].concat(),
        (
            [Ended(Some(UNEXPECTED_MESSAGE)), Ended(Some(DECODE_ERROR))],
            [Ended(Some(UNEXPECTED_MESSAGE)); 2],
        ),
    );
    add(
        "plaintext change_cipher_spec + request",
        Versions::Both,
        |s| [vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1], request_in(s, 1)].concat(),
        same(Ended(Some(UNEXPECTED_MESSAGE))),
    );
    add(
        "KeyUpdate(update_not_requested) + request under the next key",
        Versions::Tls13,
        |s| [s.key_update_bytes(false), request_in(s, 1)].concat(),
        same(Delivered),
    );
    add(
        "KeyUpdate with request value 2 + request",
        Versions::Tls13,
        |s| [s.seal(HANDSHAKE, &[24, 0, 0, 1, 2], 0), request_in(s, 1)].concat(),
        same(Ended(Some(ILLEGAL_PARAMETER))),
    );
    add(
        "oversized record (2^14 + 1 bytes of plaintext)",
        Versions::Both,
        |s| {
            let mut big = REQUEST.to_vec();
            big.resize(16 * 1024 + 1, b' ');
            s.seal(APPLICATION_DATA, &big, 0)
        },
        same(Ended(Some(RECORD_OVERFLOW))),
    );
    v
}

fn load_server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, bytes: &[u8]) -> Result<(), rustls::Error> {
    let mut slice = bytes;
    while !slice.is_empty() {
        match conn.read_tls(&mut slice) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("read_tls: {e}"),
        }
        conn.process_new_packets()?;
    }
    Ok(())
}

fn drain<D>(conn: &mut rustls::ConnectionCommon<D>) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A stock rustls server in memory after a full handshake with a rustls client; the
/// client's keys for sealing and the server's for opening what it writes.
fn rustls_pair(
    pki: &Pki,
    server_config: &Arc<rustls::ServerConfig>,
    suite: CipherSuite,
) -> (rustls::ServerConnection, Sealer, Keys) {
    let log = Arc::new(Secrets::default());
    let config = client_config(&pki.ca, suite, Some(log.clone()));
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
    loop {
        let to_server = drain(&mut *client);
        feed(&mut *server, &to_server).expect("server handshake");
        if !client.is_handshaking() {
            break;
        }
        let to_client = drain(&mut *server);
        feed(&mut *client, &to_client).expect("client handshake");
    }
    assert!(!server.is_handshaking());
    let (_, tx, rx, _) = take_keys(client, &log, suite);
    (server, tx, rx)
}

/// What the rustls server made of `bytes`, and a description.
fn rustls_outcome(
    server: &mut rustls::ServerConnection,
    mut rx: Keys,
    tls13: bool,
    bytes: &[u8],
) -> (End, String) {
    let result = feed(&mut **server, bytes);
    let mut plain = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = server.reader().read(&mut buf) {
        if n == 0 {
            break;
        }
        plain.extend_from_slice(&buf[..n]);
    }
    let out = drain(&mut **server);
    // Everything the server wrote after the handshake (tickets, then any alert).
    let mut alert = None;
    let mut rest = &out[..];
    while let Some(n) = whole_record(rest) {
        let (record, tail) = rest.split_at(n);
        rest = tail;
        if record[0] == ALERT && n == 7 {
            alert = Some(record[6]);
            continue;
        }
        let (t, p) = open_with(&mut rx, tls13, record).expect("rustls's record opens");
        if t == ALERT {
            alert = Some(p[1]);
        }
    }
    let detail = format!(
        "{result:?}, {} bytes delivered, alert {alert:?}",
        plain.len()
    );
    let end = match result {
        Ok(()) if plain == REQUEST => Delivered,
        Ok(()) => panic!("rustls neither delivered nor ended: {detail}"),
        Err(_) => Ended(alert),
    };
    (end, detail)
}

/// What the ssehub server made of `bytes` sent on `tls` (after `before`, e.g. the held
/// Finished, in the same write).
fn ssehub_outcome(tls: &mut RawTls, before: &[u8], bytes: &[u8]) -> (End, String) {
    tls.send(&[before, bytes].concat());
    let mut got = Vec::new();
    let mut alert = None;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&got).into_owned();
            if got.len() > end + 4 && text.ends_with("ok\n") {
                assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
                return (Delivered, text);
            }
        }
        match tls.recv(TIMEOUT) {
            Recv::Record {
                content_type: APPLICATION_DATA,
                plain,
            } => got.extend_from_slice(&plain),
            Recv::Record { .. } => {}
            Recv::Alert { description, .. } => {
                alert.get_or_insert(description);
            }
            Recv::Eof => {
                return (
                    Ended(alert),
                    format!("EOF, alert {alert:?}, {} answer bytes", got.len()),
                );
            }
            Recv::Timeout => panic!(
                "ssehub neither answered nor closed within {TIMEOUT:?} (alert {alert:?}, {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

fn run_cases(tls13_suites: &[CipherSuite], tls12_suites: &[CipherSuite], hold_finished: bool) {
    let pki = pki();
    let server = start_tls(&pki);
    let server_config = load_server_config(&pki);
    let mut failures = Vec::new();
    let mut ran = 0;
    let suites = tls13_suites
        .iter()
        .map(|s| (*s, true))
        .chain(tls12_suites.iter().map(|s| (*s, false)));
    for (suite, tls13) in suites {
        for case in cases() {
            if case.versions == Versions::Tls13 && !tls13 {
                continue;
            }
            ran += 1;
            let i = usize::from(!tls13);
            let (mut mem, mut tx, rx) = rustls_pair(&pki, &server_config, suite);
            let bytes = (case.records)(&mut tx);
            let (theirs, theirs_detail) = rustls_outcome(&mut mem, rx, tls13, &bytes);

            let (mut raw, before) = if !tls13 {
                (RawTls::connect12(server.addr, &pki.ca, suite), Vec::new())
            } else if hold_finished {
                RawTls::connect13_holding_finished(server.addr, &pki.ca, suite)
            } else {
                (RawTls::connect13(server.addr, &pki.ca, suite), Vec::new())
            };
            let bytes = (case.records)(&mut raw.tx);
            let (ours, ours_detail) = ssehub_outcome(&mut raw, &before, &bytes);

            // Both delivered or both ended, unless the case expects otherwise.
            let agree =
                |a: End, b: End| matches!((a, b), (Delivered, Delivered) | (Ended(_), Ended(_)));
            let as_expected = agree(theirs, ours) || !agree(case.rustls[i], case.ssehub[i]);
            if !as_expected || theirs != case.rustls[i] || ours != case.ssehub[i] {
                failures.push(format!(
                    "{suite:?} {}: rustls {theirs:?} (expected {:?}; {theirs_detail}), ssehub {ours:?} (expected {:?}; {ours_detail})",
                    case.name, case.rustls[i], case.ssehub[i]
                ));
            }
        }
    }
    assert!(ran >= 20, "{ran} cases");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases differ from what is expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        !server.log_text().contains("panicked"),
        "the server panicked: {}",
        server.log_text()
    );
}

#[test]
fn differential_tls13_aes128_gcm() {
    run_cases(&[CipherSuite::TLS13_AES_128_GCM_SHA256], &[], false);
}

#[test]
fn differential_tls13_chacha20() {
    run_cases(&[CipherSuite::TLS13_CHACHA20_POLY1305_SHA256], &[], false);
}

/// The records arrive in the same write as the client's Finished (handed to rustls first,
/// then the record layer takes over mid-buffer).
#[test]
fn differential_tls13_records_with_the_finished() {
    run_cases(&[CipherSuite::TLS13_AES_128_GCM_SHA256], &[], true);
}

#[test]
fn differential_tls12() {
    run_cases(&[], &TLS12_SUITES, false);
}
