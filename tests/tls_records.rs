//! The TLS record layer's safeguards (protocol 4, "Record-layer limits") over real sockets,
//! with a client that writes its own records after a real rustls handshake
//! (`tests/common/tls_client.rs`, keys derived in the test): an empty-record flood is
//! ended after a bounded number of records and never holds up another client; a KeyUpdate
//! sent together with the client's Finished is answered; an incomplete record is not held
//! for long (and a stream never buffers a large one); a stream that keeps sending is closed
//! with a close_notify.
mod common;
use common::tls_client::{APPLICATION_DATA, HANDSHAKE, RawTls, Recv};
use common::*;
use rustls::CipherSuite;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const UNEXPECTED_MESSAGE: u8 = 10;
const DECODE_ERROR: u8 = 50;
const CLOSE_NOTIFY: u8 = 0;

const TLS13: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];
const TLS12: CipherSuite = CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;

struct Tls {
    server: Server,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(extra: &[(&str, &str)]) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let tls = format!(
        "cert = {:?}\nkey = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut sections = vec![("tls", tls.as_str())];
    sections.extend_from_slice(extra);
    let server = Server::start_at_socket(&dir.path().join("ingest.sock"), &sections);
    Tls {
        server,
        ca,
        _dir: dir,
    }
}

/// A raw client with a stream open on topic `t` (the head read).
fn stream(t: &Tls, tls13: Option<CipherSuite>) -> RawTls {
    let mut c = match tls13 {
        Some(suite) => RawTls::connect13(t.server.addr, &t.ca, suite),
        None => RawTls::connect12(t.server.addr, &t.ca, TLS12),
    };
    let head = c
        .request(
            "GET /events?topic=t HTTP/1.1\r\nHost: localhost\r\n\r\n",
            Duration::from_secs(5),
        )
        .expect("stream head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    c
}

/// Reads until an alert or the end; the alert's description (None: closed without one).
fn alert_then_end(c: &mut RawTls, within: Duration) -> Option<u8> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left) {
            Recv::Alert { description, .. } => return Some(description),
            Recv::Eof => return None,
            Recv::Timeout => panic!("the connection is still open after {within:?}"),
            Recv::Record { .. } => {}
        }
    }
}

fn rustls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A whole new client: TCP connect, TLS handshake, `GET /healthz`; how long it took.
fn healthz(t: &Tls, config: &Arc<rustls::ClientConfig>) -> Duration {
    let started = Instant::now();
    let sock = std::net::TcpStream::connect(t.server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    started.elapsed()
}

/// Defect 1, empty records are not free: the 33rd in a row ends the connection (with
/// `unexpected_message`), whatever follows it, on TLS 1.3 (empty and padding-only records)
/// and TLS 1.2; an empty handshake record ends it at once (`decode_error`). Meanwhile a
/// new client's handshake and `/healthz` are served without waiting for the flood.
#[test]
fn an_empty_record_flood_is_ended_after_a_bounded_number_of_records() {
    let t = start(&[]);
    let config = rustls_client(&t.ca);
    let quiet = (0..5).map(|_| healthz(&t, &config)).min().unwrap();
    for (label, tls13, padding) in [
        ("TLS 1.3 empty, on a stream", Some(TLS13[0]), 0),
        (
            "TLS 1.3 padding only, before the request",
            Some(TLS13[2]),
            16 * 1024,
        ),
        ("TLS 1.2 empty, on a stream", None, 0),
    ] {
        // Padding-only records are large: a stream refuses any large record at its header,
        // so they are sent where records of any size are read, before the request.
        let mut c = match (tls13, padding) {
            (Some(suite), 1..) => RawTls::connect13(t.server.addr, &t.ca, suite),
            _ => stream(&t, tls13),
        };
        // 2,000 records at once (up to 32 MiB with padding): the server reads the first
        // 33 and ends the connection.
        let mut flood = Vec::new();
        for _ in 0..2000 {
            flood.extend_from_slice(&c.seal(APPLICATION_DATA, b"", padding));
        }
        let sender = {
            let mut sock = c.try_clone_socket();
            std::thread::spawn(move || {
                let _ = sock.write_all(&flood);
            })
        };
        let during = healthz(&t, &config);
        assert_eq!(
            alert_then_end(&mut c, Duration::from_secs(5)),
            Some(UNEXPECTED_MESSAGE),
            "{label}"
        );
        sender.join().unwrap();
        eprintln!(
            "{label}: another client's handshake + /healthz took {during:?} (quiet: {quiet:?})"
        );
        assert!(
            during < quiet + Duration::from_millis(200),
            "{label}: another client waited {during:?} (quiet: {quiet:?})"
        );
    }
    // An empty handshake record (TLS 1.3) and an empty alert record: decode_error.
    for content_type in [HANDSHAKE, common::tls_client::ALERT] {
        let mut c = stream(&t, Some(TLS13[1]));
        c.send_record(content_type, b"");
        assert_eq!(
            alert_then_end(&mut c, Duration::from_secs(5)),
            Some(DECODE_ERROR),
            "empty record of type {content_type}"
        );
    }
    // 32 empty records in a row are fine, then data counts again.
    let mut c = RawTls::connect13(t.server.addr, &t.ca, TLS13[0]);
    for _ in 0..32 {
        c.send_record(APPLICATION_DATA, b"");
    }
    let answer = c
        .request(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
            Duration::from_secs(5),
        )
        .expect("answered after 32 empty records");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Defect 2, a client's Finished and a KeyUpdate(update_requested) in one flight, then its
/// request under its next key: the server answers with its own KeyUpdate (under its old
/// key) before switching, so the answer opens with the server's next key. In every TLS 1.3
/// suite.
#[test]
fn a_key_update_sent_with_the_finished_is_answered_in_every_tls13_suite() {
    let t = start(&[]);
    for suite in TLS13 {
        let (mut c, finished) = RawTls::connect13_holding_finished(t.server.addr, &t.ca, suite);
        let mut flight = finished;
        flight.extend_from_slice(&c.key_update_bytes(true));
        flight.extend_from_slice(&c.seal(
            APPLICATION_DATA,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
            0,
        ));
        c.send(&flight);
        let mut saw_key_update = false;
        let mut answer = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\nok") {
            let left = deadline.saturating_duration_since(Instant::now());
            // `recv` panics on a record that does not open: an answer sealed with a key
            // the server never announced.
            match c.recv(left) {
                Recv::Record {
                    content_type: HANDSHAKE,
                    plain,
                } if plain.first() == Some(&24) => {
                    assert!(
                        answer.is_empty(),
                        "{suite:?}: KeyUpdate after the answer began"
                    );
                    assert_eq!(plain, [24, 0, 0, 1, 0], "{suite:?}: not requested back");
                    saw_key_update = true;
                }
                Recv::Record {
                    content_type: APPLICATION_DATA,
                    plain,
                } => answer.extend_from_slice(&plain),
                Recv::Record { .. } => {}
                other => panic!(
                    "{suite:?}: {other:?} after {:?}",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
        assert!(saw_key_update, "{suite:?}");
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
            "{suite:?}"
        );
    }
}

/// Defect 3, incomplete records are not held for long: on a stream (which takes only tiny
/// records) a record announcing 16 KiB is refused at its header, before its body is held;
/// a small record left incomplete is closed within two keepalive intervals (here 300 ms);
/// before the request, the request timeout (1 s) bounds it. TLS 1.3 and 1.2.
#[test]
fn an_incomplete_record_is_not_held_for_long() {
    let t = start(&[
        ("streams", "keepalive = \"300ms\""),
        ("http", "request_timeout = \"1s\""),
    ]);
    for tls13 in [Some(TLS13[0]), None] {
        let mut c = stream(&t, tls13);
        let record = c.seal(APPLICATION_DATA, &[b'x'; 16 * 1024], 0);
        c.send(&record[..10_000]);
        let started = Instant::now();
        assert_eq!(
            alert_then_end(&mut c, Duration::from_secs(5)),
            Some(CLOSE_NOTIFY),
            "{tls13:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{tls13:?}: a large record on a stream is refused at once, not after {:?}",
            started.elapsed()
        );

        let mut c = stream(&t, tls13);
        let record = c.seal(APPLICATION_DATA, &[b'x'; 900], 0);
        c.send(&record[..500]);
        let started = Instant::now();
        let alert = alert_then_end(&mut c, Duration::from_secs(5));
        let took = started.elapsed();
        assert_eq!(alert, Some(CLOSE_NOTIFY), "{tls13:?}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{tls13:?}: closed after {took:?}"
        );

        // Before the request: 10,000 bytes of a 16 KiB record, then nothing.
        let mut c = match tls13 {
            Some(suite) => RawTls::connect13(t.server.addr, &t.ca, suite),
            None => RawTls::connect12(t.server.addr, &t.ca, TLS12),
        };
        let record = c.seal(APPLICATION_DATA, &[b'x'; 16 * 1024], 0);
        c.send(&record[..10_000]);
        let started = Instant::now();
        let _ = alert_then_end(&mut c, Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_millis(1800),
            "{tls13:?}: held {:?} before the request",
            started.elapsed()
        );
    }
    // A small record that completes in time keeps the stream.
    let mut c = stream(&t, Some(TLS13[0]));
    let record = c.seal(APPLICATION_DATA, b"", 0);
    let (a, b) = record.split_at(3);
    c.send(a);
    std::thread::sleep(Duration::from_millis(200));
    c.send(b);
    match c.recv(Duration::from_millis(1200)) {
        Recv::Record {
            content_type: APPLICATION_DATA,
            plain,
        } => assert_eq!(plain, b":\n", "a keepalive on the open stream"),
        other => panic!("{other:?}"),
    }
}

/// A stream takes no input: a record of more than 1 KiB is refused at its header, and a
/// client that keeps sending smaller ones is closed after its 4 KiB allowance, with a
/// close_notify first either way; records count too (an empty one costs 32 bytes).
#[test]
fn a_stream_that_keeps_sending_is_closed_with_a_close_notify() {
    let t = start(&[]);
    let mut c = stream(&t, Some(TLS13[0]));
    c.send_record(APPLICATION_DATA, &[b'x'; 5000]);
    assert_eq!(
        alert_then_end(&mut c, Duration::from_secs(5)),
        Some(CLOSE_NOTIFY)
    );
    // 5,000 bytes in records a stream accepts (up to 1 KiB each): closed at 4 KiB.
    let mut c = stream(&t, Some(TLS13[0]));
    let mut big = Vec::new();
    for _ in 0..5 {
        big.extend_from_slice(&c.seal(APPLICATION_DATA, &[b'x'; 1000], 0));
    }
    c.send(&big);
    assert_eq!(
        alert_then_end(&mut c, Duration::from_secs(5)),
        Some(CLOSE_NOTIFY)
    );
    // 20 records of 200 bytes and one empty after each: 20 × (200 + 32 + 32) > 4,096.
    let mut c = stream(&t, Some(TLS13[0]));
    let mut many = Vec::new();
    for _ in 0..20 {
        many.extend_from_slice(&c.seal(APPLICATION_DATA, &[b'y'; 200], 0));
        many.extend_from_slice(&c.seal(APPLICATION_DATA, b"", 0));
    }
    c.send(&many);
    assert_eq!(
        alert_then_end(&mut c, Duration::from_secs(5)),
        Some(CLOSE_NOTIFY)
    );
}
