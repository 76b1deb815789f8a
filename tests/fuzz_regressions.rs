//! The fuzz corpus as regression tests, run by `cargo test` (and so by `.ci/run`) without
//! cargo-fuzz or a nightly toolchain.
//!
//! Every file under `fuzz/regressions/<target>/` is replayed through the very functions the
//! cargo-fuzz target calls (`fuzz/src/checks.rs`, included here with `#[path]`, together with
//! the WHATWG event-stream parser `fuzz/src/event_stream.rs`). `http_request` inputs are also
//! sent to the real server over sockets. See `fuzz/README.md` for the targets, the runs and
//! how to add a crash reproducer.

mod common;

#[path = "../fuzz/src/event_stream.rs"]
mod event_stream;

#[path = "../fuzz/src/checks.rs"]
mod checks;

use checks::SseCase;
use common::*;
use event_stream::Event;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TARGETS: [&str; 5] = [
    "http_body",
    "http_request",
    "ingest_line",
    "sse_encoder",
    "tls_record",
];

/// The files of `fuzz/regressions/<target>/`, sorted by name.
fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read regression file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression files in {}",
        dir.display()
    );
    files
}

/// Runs `check` on every regression file of `target`; fails naming every file that panics.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let files = regressions(target);
    let failed: Vec<String> = files
        .iter()
        .filter(|(_, bytes)| std::panic::catch_unwind(AssertUnwindSafe(|| check(bytes))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} regression inputs fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_regressions() {
    for target in TARGETS {
        assert!(regressions(target).len() >= 10, "{target}: too few inputs");
    }
    // sse_encoder inputs are stored as JSON (the structured input, see fuzz/README.md).
    for (path, _) in regressions("sse_encoder") {
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("json"),
            "{}",
            path.display()
        );
    }
}

#[test]
fn http_body_regressions() {
    replay("http_body", checks::http_body);
}

#[test]
fn http_request_regressions() {
    replay("http_request", checks::http_request);
}

#[test]
fn ingest_line_regressions() {
    replay("ingest_line", checks::ingest_line);
}

#[test]
fn tls_record_regressions() {
    replay("tls_record", checks::tls_record);
}

#[test]
fn sse_encoder_regressions() {
    replay("sse_encoder", |bytes| {
        let text = std::str::from_utf8(bytes).expect("JSON regression file");
        let case = SseCase::from_json(text).expect("an sse_encoder case");
        assert_eq!(SseCase::from_json(&case.to_json()).as_ref(), Ok(&case));
        checks::sse_encoder(&case);
    });
}

// ---------------------------------------------------------------------------------------
// The oracle itself: the WHATWG parser on the standard's own examples.

fn message(data: &str, last_event_id: &str) -> Event {
    Event {
        event_type: "message".into(),
        data: data.into(),
        last_event_id: last_event_id.into(),
    }
}

#[test]
fn event_stream_parser_follows_the_whatwg_examples() {
    let (events, _) = event_stream::parse(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(events, [message("YHOO\n+2\n10", "")]);

    let stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
    let (events, _) = event_stream::parse(stream);
    assert_eq!(
        events,
        [
            message("first event", "1"),
            message("second event", ""),
            message(" third event", ""),
        ]
    );

    // An empty data line dispatches an empty string; an unfinished event is discarded.
    let (events, parser) = event_stream::parse(b"data\n\ndata\ndata\n\ndata:");
    assert_eq!(events, [message("", ""), message("\n", "")]);
    assert!(!parser.is_idle());

    let (events, _) = event_stream::parse(b"data:test\n\ndata: test\n\n");
    assert_eq!(events, [message("test", ""), message("test", "")]);
}

#[test]
fn event_stream_parser_details() {
    // CR, LF and CRLF all end lines; a CRLF split across reads is one line end.
    let (events, _) = event_stream::parse(b"data: a\rdata: b\r\ndata: c\n\r\n");
    assert_eq!(events, [message("a\nb\nc", "")]);
    let mut p = event_stream::Parser::new();
    assert!(p.feed(b"data: a\r").is_empty());
    assert_eq!(p.feed(b"\ndata: b\n\n"), [message("a\nb", "")]);
    // A leading BOM is stripped once; an id with NUL is ignored; event and retry fields.
    let (events, parser) = event_stream::parse(
        b"\xEF\xBB\xBFretry: 2500\nid: 7\n\nid: 8\0\nevent: note\ndata: x\n\nretry: 1x\n",
    );
    assert_eq!(
        events,
        [Event {
            event_type: "note".into(),
            data: "x".into(),
            last_event_id: "7".into(),
        }]
    );
    assert_eq!(parser.reconnection_time, Some(2500));
    assert_eq!(parser.last_event_id, "7");
    // No colon: the whole line is the field name; unknown fields are ignored.
    let (events, _) = event_stream::parse(b"data\nfoo: bar\nevent\n\n");
    assert_eq!(events, [message("", "")]);
    // The keepalive is a comment.
    let (events, parser) = event_stream::parse(b":\n");
    assert!(events.is_empty() && parser.is_idle());
}

#[test]
fn sse_property_holds_for_written_cases() {
    for (event, data) in [
        (None, ""),
        (Some("message"), "a\r\nb\rc\nd"),
        (Some("reset"), "\r"),
        (Some("a\r\nb\0"), "x\n\nid: 99\nevent: evil"),
        (Some(" spaced: type "), "\u{feff}é ✓ 🚀"),
    ] {
        checks::sse_encoder(&SseCase {
            id: 1_718_000_000_000_123,
            earliest: Some(1),
            event: event.map(str::to_owned),
            data: data.to_owned(),
        });
    }
    assert_eq!(checks::event_type(Some("reset")), None);
    assert_eq!(checks::event_type(Some("re\rset")), None);
    assert_eq!(checks::event_type(Some("\r\n\0")), None);
    assert_eq!(
        checks::event_type(Some(&"é".repeat(40))).map(|e| e.len()),
        Some(64)
    );
}

// ---------------------------------------------------------------------------------------
// http_request inputs against the real event loop.

enum FirstAnswer {
    Status(u16),
    Closed,
    Garbage(Vec<u8>),
    Silent,
}

/// Reads until the first line of an answer is complete, the server closes, or `timeout`.
fn first_answer(mut sock: TcpStream, timeout: Duration) -> FirstAnswer {
    let deadline = Instant::now() + timeout;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&got[..end]).into_owned();
            return match status_of(&line) {
                Some(code) => FirstAnswer::Status(code),
                None => FirstAnswer::Garbage(got),
            };
        }
        match sock.read(&mut chunk) {
            Ok(0) if got.is_empty() => return FirstAnswer::Closed,
            Ok(0) => return FirstAnswer::Garbage(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) if got.is_empty() => return FirstAnswer::Closed,
            Err(_) => return FirstAnswer::Garbage(got),
        }
        if Instant::now() > deadline {
            return FirstAnswer::Silent;
        }
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn status_of(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?.parse().ok()?;
    ((100..600).contains(&code) && rest.get(3..4) == Some(" ")).then_some(code)
}

/// Every `http_request` regression input, sent to the real server (in two writes, so the
/// loop also parses a partial head first): each connection gets a status line or is closed,
/// and the server stays up and keeps answering.
#[test]
fn http_request_regressions_against_the_real_server() {
    let mut server = Server::start_with(&[("http", "request_timeout = \"1s\"")]);
    let inputs = regressions("http_request");
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut closed = 0usize;
    for batch in inputs.chunks(64) {
        let mut conns = Vec::new();
        for (path, bytes) in batch {
            let sock = TcpStream::connect(server.addr).expect("connect");
            sock.set_nodelay(true).expect("nodelay");
            // Write errors are fine: the server may have answered and closed already.
            let _ = (&sock).write_all(&bytes[..bytes.len() / 2]);
            conns.push((path, bytes, sock));
        }
        std::thread::sleep(Duration::from_millis(30));
        for (_, bytes, sock) in &conns {
            let _ = (&*sock).write_all(&bytes[bytes.len() / 2..]);
        }
        for (path, _, sock) in conns {
            match first_answer(sock, Duration::from_secs(5)) {
                FirstAnswer::Status(code) => *statuses.entry(code).or_default() += 1,
                FirstAnswer::Closed => closed += 1,
                FirstAnswer::Garbage(got) => panic!(
                    "{}: answer is not a status line: {:?}",
                    path.display(),
                    String::from_utf8_lossy(&got)
                ),
                FirstAnswer::Silent => panic!(
                    "{}: neither an answer nor a close within 5 s (request_timeout is 1 s)",
                    path.display()
                ),
            }
        }
        assert!(
            server.child.try_wait().expect("try_wait").is_none(),
            "the server exited: {:?}",
            server.log.lock().unwrap()
        );
    }
    eprintln!(
        "{} inputs: statuses {statuses:?}, closed without an answer {closed}",
        inputs.len()
    );
    let mut c = Client::connect(server.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.trim_end()), (200, "ok"));
    assert!(
        !server.log_contains("panicked"),
        "{:?}",
        server.log.lock().unwrap()
    );
}
