//! History stays within its budget (`history.max_events`, `history.max_bytes`) whatever
//! the traffic: an event a quiet topic keeps never pins the later events of busy topics,
//! retained bytes count the bookkeeping of events and topics, and a flood of unique topics
//! leaves their metadata bounded. Real binary, real sockets, `/metrics` and `/proc` read.
mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Writes `count` lines made by `line(i)` from one thread while this one reads the answers;
/// returns how many were `ok`, and the first line's id.
fn flood(
    server: &Server,
    count: usize,
    line: impl Fn(usize) -> String + Send + 'static,
) -> (usize, u64) {
    let sock = UnixStream::connect(&server.socket).expect("connect ingest");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = sock.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 20);
        for i in 0..count {
            buf.extend_from_slice(line(i).as_bytes());
            buf.push(b'\n');
            if buf.len() > 1 << 19 {
                writer.write_all(&buf).expect("write lines");
                buf.clear();
            }
        }
        writer.write_all(&buf).expect("write lines");
    });
    let mut reader = BufReader::with_capacity(1 << 20, sock);
    let mut ok = 0;
    let mut first = 0;
    let mut answer = String::new();
    for i in 0..count {
        answer.clear();
        reader.read_line(&mut answer).expect("answer");
        if let Some(id) = parse_ok(answer.trim_end()) {
            ok += 1;
            if i == 0 {
                first = id;
            }
        }
    }
    feeder.join().unwrap();
    (ok, first)
}

/// A gauge or counter without labels from `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    let mut c = Client::connect(server.addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn a_quiet_topic_keeps_its_history_while_a_busy_topic_churns() {
    let server = Server::start_with(&[("history", "max_events = 10\nmax_bytes = 1000000")]);
    let mut p = server.producer();
    let quiet = p.publish("quiet", "the only event");
    let data = "x".repeat(40);
    let (ok, first) = flood(&server, 20_000, move |_| {
        format!("{{\"topic\":\"busy\",\"data\":\"{data}\"}}")
    });
    assert_eq!(ok, 20_000);
    assert!(first > quiet);
    assert_eq!(
        metric(&server, "ssehub_history_events"),
        11.0,
        "10 busy + 1 quiet"
    );

    let mut c = server.resume("topic=quiet", &(quiet - 1).to_string());
    let first = c.read_event();
    assert_eq!(
        first,
        format!("id: {quiet}\ndata: the only event\n\n"),
        "no reset"
    );
}

#[test]
fn memory_stays_bounded_with_an_old_event_pinned() {
    // Defaults (1,000 events per topic, 256 MiB): one event on `pin`, then a million on
    // `busy`. Before the fix every one of them stayed in memory behind the pinned event
    // (ssehub_history_events 1,000,001, RSS 185 MB).
    let server = Server::start();
    let mut p = server.producer();
    p.publish("pin", "pinned");
    let (ok, first) = flood(&server, 1_000_000, |i| {
        format!("{{\"topic\":\"busy\",\"data\":\"event {i:>40}\"}}")
    });
    assert_eq!(ok, 1_000_000);
    assert!(first > 0);
    assert_eq!(metric(&server, "ssehub_history_events"), 1_001.0);
    let rss = vm_rss_kib(server.pid()).expect("VmRSS");
    eprintln!("RSS after 1,000,000 events with a pinned one: {rss} KiB");
    assert!(rss < 48 * 1024, "RSS {rss} KiB");
}

#[test]
fn a_million_unique_topics_stay_within_max_bytes() {
    // Before the fix: 1,000,002 topics and RSS 633 MB for `history.max_age`.
    let max_bytes = 1_000_000;
    let server = Server::start_with(&[("history", &format!("max_bytes = {max_bytes}"))]);
    let (ok, first) = flood(&server, 1_000_000, |i| {
        format!("{{\"topic\":\"unique:{i:0>180}\",\"data\":\"x\"}}")
    });
    assert_eq!(ok, 1_000_000);
    let topics = metric(&server, "ssehub_topics");
    let bytes = metric(&server, "ssehub_history_bytes");
    assert!(bytes <= max_bytes as f64, "history bytes {bytes}");
    assert!(topics < 5_000.0, "{topics} topics kept");
    assert_eq!(metric(&server, "ssehub_history_events"), topics);
    let rss = vm_rss_kib(server.pid()).expect("VmRSS");
    eprintln!("RSS after 1,000,000 unique topics: {rss} KiB, topics kept {topics}");
    assert!(rss < 48 * 1024, "RSS {rss} KiB");

    // The newest topic is still known; the oldest was forgotten, so resuming it is a reset.
    let newest = format!("unique:{:0>180}", 999_999);
    let mut p = server.producer();
    let id = p.publish(&newest, "again");
    let mut c = server.resume(&format!("topic={newest}"), &(id - 1).to_string());
    assert_eq!(c.read_event(), format!("id: {id}\ndata: again\n\n"));
    let oldest = format!("unique:{:0>180}", 0);
    let mut c = server.resume(&format!("topic={oldest}"), &first.to_string());
    assert!(c.read_event().starts_with("event: reset\n"));
}
