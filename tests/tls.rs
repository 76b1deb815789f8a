//! HTTPS (protocol 4): with `[tls] cert/key` the listener speaks TLS 1.2 and 1.3 with ALPN
//! `http/1.1`; a real TLS client that verifies the certificate (a CA made here, with the
//! openssl CLI) streams events; a stalled handshake is closed by the request timeout; a
//! bad certificate file is a clear start-up error.
mod common;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn connect(server: &Server, config: Arc<rustls::ClientConfig>) -> Tls {
    let sock = std::net::TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn =
        rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn read_until(tls: &mut Tls, buf: &mut Vec<u8>, pat: &[u8]) -> String {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            let out: Vec<u8> = buf.drain(..i + pat.len()).collect();
            return String::from_utf8(out).unwrap();
        }
        let n = tls.read(&mut chunk).expect("tls read");
        assert!(n > 0, "EOF waiting for {pat:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Server {
    let tls = format!(
        "cert = {:?}\nkey = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    Server::start_at_socket(
        &dir.join("ingest.sock"),
        &[("tls", &tls), ("http", "request_timeout = \"1s\"")],
    )
}

#[test]
fn https_streams_to_a_verifying_client_with_tls_1_3_and_1_2() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let server = start_tls(dir.path(), &cert, &key);
    let mut p = server.producer();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let mut tls = connect(&server, client_config(&ca, versions));
        tls.write_all(b"GET /events?topic=secure HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let head = read_until(&mut tls, &mut buf, b"\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(tls.conn.protocol_version(), Some(versions[0].version));
        assert!(read_until(&mut tls, &mut buf, b"\n").starts_with("retry: "));
        let big = "é".repeat(20_000); // larger than one TLS record
        let id = p.publish("secure", &big);
        let event = read_until(&mut tls, &mut buf, b"\n\n");
        assert_eq!(event, format!("id: {id}\ndata: {big}\n\n"));
    }
    // Plain answers keep the connection alive over TLS too.
    let mut tls = connect(&server, client_config(&ca, &[&rustls::version::TLS13]));
    let mut buf = Vec::new();
    for _ in 0..2 {
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert!(read_until(&mut tls, &mut buf, b"ok\n").starts_with("HTTP/1.1 200 OK"));
    }
}

#[test]
fn the_server_sends_close_notify_when_it_ends_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let server = start_tls(dir.path(), &cert, &key);
    let mut p = server.producer();
    let mut tls = connect(&server, client_config(&ca, &[&rustls::version::TLS13]));
    tls.write_all(b"GET /events?topic=job HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut tls, &mut buf, b"\r\n\r\n");
    read_until(&mut tls, &mut buf, b"\n");
    p.publish_json("{\"topic\":\"job\",\"data\":\"done\",\"final\":true}");
    read_until(&mut tls, &mut buf, b"\n\n");
    // A clean TLS end: read returns 0 (close_notify), not an unexpected-EOF error.
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).expect("clean close_notify");
    assert!(rest.is_empty());
}

#[test]
fn a_stalled_handshake_is_closed_by_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let server = start_tls(dir.path(), &cert, &key);
    let mut sock = std::net::TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap(); // the start of a ClientHello, then nothing
    let start = Instant::now();
    let mut b = [0u8; 64];
    let n = sock.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "closed by the 1 s request timeout"
    );
    // A client that is not speaking TLS at all gets closed too (an alert, then EOF).
    let mut plain = Client::connect(server.addr);
    plain.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.read_to_close(Duration::from_secs(4)).is_some());
}

#[test]
fn a_bad_certificate_file_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[ingest]\nsocket = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("s.sock").display().to_string(),
            bad.display().to_string(),
            bad.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.cert") && stderr.contains("bad.pem"),
        "{stderr}"
    );
}

#[test]
fn key_updates_and_client_data_mid_stream_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let server = start_tls(dir.path(), &cert, &key);
    let mut p = server.producer();
    let mut tls = connect(&server, client_config(&ca, &[&rustls::version::TLS13]));
    tls.write_all(b"GET /events?topic=ku HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut tls, &mut buf, b"\r\n\r\n");
    read_until(&mut tls, &mut buf, b"\n");
    for round in 0..3 {
        // The client rolls its keys (asking the server to roll its own) and says a few
        // bytes under the new ones; the stream goes on.
        tls.conn.refresh_traffic_keys().unwrap();
        tls.write_all(b"ping").unwrap();
        let id = p.publish("ku", &format!("after update {round}"));
        let event = read_until(&mut tls, &mut buf, b"\n\n");
        assert_eq!(event, format!("id: {id}\ndata: after update {round}\n\n"));
    }
}

/// openssl's own client: TLS 1.3 with a KeyUpdate it asks to be answered (`K`), and
/// TLS 1.2, each receiving events before and after.
#[test]
fn openssl_s_client_streams_across_a_key_update() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let server = start_tls(dir.path(), &cert, &key);
    let mut p = server.producer();
    for (version, command) in [("-tls1_3", "K\n"), ("-tls1_2", "x\n")] {
        let mut child = Command::new("openssl")
            .args(["s_client", version, "-connect"])
            .arg(server.addr.to_string())
            .args(["-servername", "localhost", "-CAfile"])
            .arg(&ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wait_for = |want: &str| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line.contains(want) => return,
                    Ok(_) => {}
                    Err(_) => panic!("{version}: no {want:?} from s_client"),
                }
            }
        };
        stdin
            .write_all(b"GET /events?topic=ossl HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        wait_for("retry: ");
        p.publish("ossl", "before");
        wait_for("data: before");
        stdin.write_all(command.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        p.publish("ossl", "after");
        wait_for("data: after");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `POST /publish` over HTTPS: a body larger than one TLS record (chunked, in several
/// writes), answered once committed, twice on one keep-alive connection.
#[test]
fn publish_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::ca_and_leaf(dir.path());
    let tls_lines = format!(
        "cert = {:?}\nkey = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let server = Server::start_at_socket(
        &dir.path().join("ingest.sock"),
        &[
            ("tls", &tls_lines),
            ("publish", "admin_open = false"),
            ("auth", "secret = \"tls-pub\""),
        ],
    );
    let out = run_bin(
        &["token", "--secret", "tls-pub", "--publish", "*"],
        b"",
        Duration::from_secs(10),
    );
    let token = out.stdout.trim().to_string();
    let mut tls = connect(&server, client_config(&ca, &[&rustls::version::TLS13]));
    let mut buf = Vec::new();
    let line = format!("{{\"topic\":\"s\",\"data\":\"{}\"}}\n", "y".repeat(30_000));
    for round in 0..2 {
        tls.write_all(
            format!(
                "POST /publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        for _ in 0..2 {
            tls.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
                .unwrap();
            tls.flush().unwrap();
        }
        tls.write_all(b"0\r\n\r\n").unwrap();
        let head = read_until(&mut tls, &mut buf, b"\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "round {round}: {head}"
        );
        let first = read_until(&mut tls, &mut buf, b"\n");
        let second = read_until(&mut tls, &mut buf, b"\n");
        for a in [first, second] {
            assert!(a.starts_with("{\"ok\":true,\"id\":\""), "{a}");
        }
    }
}
