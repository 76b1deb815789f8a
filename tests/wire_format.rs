//! protocol 2 and 2.1: the exact bytes of a stream over a real socket: the response head, the
//! `retry:` line right after it, and every event encoding (line breaks, empty payloads,
//! UTF-8, event types, non-string JSON data, ids).
mod common;
use common::*;
use std::time::Duration;

/// Opens a raw stream request and returns (client, head as text).
fn open_raw(server: &Server, query: &str) -> (Client, String) {
    let mut c = Client::connect(server.addr);
    c.send(&format!(
        "GET /events?{query} HTTP/1.1\r\nHost: test\r\n\r\n"
    ));
    let head = c.read_head();
    (c, head)
}

/// Header lines of a head (after the status line) as (lower-case name, value).
fn headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect()
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    hs.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Parses `retry: N\n`.
fn retry_value(line: &str) -> u64 {
    line.strip_prefix("retry: ")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a retry line: {line:?}"))
}

#[test]
fn stream_head_is_exact_and_retry_follows_at_once() {
    let server = Server::start();
    let (mut c, head) = open_raw(&server, "topic=wire");
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n"),
        "status line: {head:?}"
    );
    let hs = headers(&head);
    assert_eq!(
        header(&hs, "content-type"),
        ["text/event-stream; charset=utf-8"],
        "{head:?}"
    );
    assert_eq!(
        header(&hs, "cache-control"),
        ["no-cache, no-transform"],
        "{head:?}"
    );
    assert_eq!(header(&hs, "x-accel-buffering"), ["no"], "{head:?}");
    assert_eq!(header(&hs, "connection"), ["close"], "{head:?}");
    for absent in ["content-length", "transfer-encoding", "content-encoding"] {
        assert!(
            header(&hs, absent).is_empty(),
            "{absent} must not be sent: {head:?}"
        );
    }
    // The body starts with `retry: N\n` right away (no event needed to get it out).
    let retry = c.read_line();
    let n = retry_value(&retry);
    assert!(
        (3000..=5000).contains(&n),
        "default retry {n} not in 3000..=5000"
    );
    // Nothing else: no blank line after the retry, no event, no keepalive yet.
    let extra = c.read_for(Duration::from_millis(300));
    assert!(
        extra.is_empty(),
        "unexpected bytes after retry: {:?}",
        String::from_utf8_lossy(&extra)
    );
    // The first event follows the retry line directly.
    let id = server.producer().publish("wire", "first");
    assert_eq!(c.read_event(), format!("id: {id}\ndata: first\n\n"));
}

#[test]
fn default_retry_is_jittered_within_3_to_5_seconds() {
    let server = Server::start();
    let mut seen = Vec::new();
    for _ in 0..30 {
        let (mut c, _) = open_raw(&server, "topic=jitter");
        seen.push(retry_value(&c.read_line()));
    }
    for &n in &seen {
        assert!(
            (3000..=5000).contains(&n),
            "retry {n} out of range: {seen:?}"
        );
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 1, "no jitter at all: every retry was {seen:?}");
}

#[test]
fn configured_retry_base_and_jitter_are_honoured() {
    let server =
        Server::start_with(&[("streams", "retry_base = \"700ms\"\nretry_jitter = \"60ms\"")]);
    let mut seen = Vec::new();
    for _ in 0..40 {
        let (mut c, _) = open_raw(&server, "topic=jitter");
        seen.push(retry_value(&c.read_line()));
    }
    for &n in &seen {
        assert!(
            (700..=760).contains(&n),
            "retry {n} out of 700..=760: {seen:?}"
        );
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 1, "no jitter at all: {seen:?}");
}

#[test]
fn zero_jitter_gives_exactly_the_base() {
    let server = Server::start_with(&[("streams", "retry_base = \"1s\"\nretry_jitter = \"0s\"")]);
    for _ in 0..5 {
        let (mut c, _) = open_raw(&server, "topic=nojitter");
        assert_eq!(c.read_line(), "retry: 1000\n");
    }
}

/// Publishes `line` (a full ingest JSON line) and checks the stream receives exactly `body`
/// (the event without its `id:` line).
fn check(c: &mut Client, p: &mut Producer, line: &str, body: &str, last: &mut u64) {
    let id = p.publish_json(line);
    assert!(id > *last, "id {id} not above previous {last}");
    *last = id;
    assert_eq!(c.read_event(), format!("id: {id}\n{body}"), "for {line}");
}

fn data_line(topic: &str, data: &str) -> String {
    format!(
        "{{\"topic\":{},\"data\":{}}}",
        json_str(topic),
        json_str(data)
    )
}

#[test]
fn payload_line_breaks_split_into_data_lines() {
    let server = Server::start();
    let mut c = server.subscribe("topic=t");
    let mut p = server.producer();
    let mut last = 0;
    let cases: &[(&str, &str)] = &[
        ("single line", "data: single line\n\n"),
        ("a\nb\nc", "data: a\ndata: b\ndata: c\n\n"),
        ("a\r\nb", "data: a\ndata: b\n\n"),
        ("a\rb", "data: a\ndata: b\n\n"),
        ("x\r\n\r\ny", "data: x\ndata:\ndata: y\n\n"),
        (
            "mixed\rcr\nlf\r\ncrlf",
            "data: mixed\ndata: cr\ndata: lf\ndata: crlf\n\n",
        ),
        ("trailing\n", "data: trailing\ndata:\n\n"),
        ("\nleading", "data:\ndata: leading\n\n"),
        ("", "data:\n\n"),
        ("\n", "data:\ndata:\n\n"),
        ("\r", "data:\ndata:\n\n"),
        ("\r\n", "data:\ndata:\n\n"),
        ("\n\r\n\r", "data:\ndata:\ndata:\ndata:\n\n"),
        // A payload cannot end the event early or inject a field.
        (
            "x\n\nid: 1\nevent: evil\nretry: 1",
            "data: x\ndata:\ndata: id: 1\ndata: event: evil\ndata: retry: 1\n\n",
        ),
        ("  spaces kept  ", "data:   spaces kept  \n\n"),
    ];
    for (data, body) in cases {
        check(&mut c, &mut p, &data_line("t", data), body, &mut last);
    }
}

#[test]
fn utf8_payload_is_sent_unchanged() {
    let server = Server::start();
    let mut c = server.subscribe("topic=u");
    let mut p = server.producer();
    let mut last = 0;
    let text = "héllo ✓ 🚀 日本";
    check(
        &mut c,
        &mut p,
        &data_line("u", text),
        &format!("data: {text}\n\n"),
        &mut last,
    );
    // Escaped in the JSON line, raw UTF-8 on the wire.
    check(
        &mut c,
        &mut p,
        r#"{"topic":"u","data":"\u00e9\u2713\ud83d\ude80"}"#,
        "data: é✓🚀\n\n",
        &mut last,
    );
}

#[test]
fn event_type_written_and_message_omitted() {
    let server = Server::start();
    let mut c = server.subscribe("topic=e");
    let mut p = server.producer();
    let mut last = 0;
    check(
        &mut c,
        &mut p,
        r#"{"topic":"e","event":"update","data":"x"}"#,
        "event: update\ndata: x\n\n",
        &mut last,
    );
    check(
        &mut c,
        &mut p,
        r#"{"topic":"e","event":"message","data":"y"}"#,
        "data: y\n\n",
        &mut last,
    );
    check(
        &mut c,
        &mut p,
        r#"{"topic":"e","event":"notification:new","data":"a\nb"}"#,
        "event: notification:new\ndata: a\ndata: b\n\n",
        &mut last,
    );
    check(
        &mut c,
        &mut p,
        r#"{"topic":"e","data":"z"}"#,
        "data: z\n\n",
        &mut last,
    );
}

#[test]
fn non_string_data_is_sent_as_compact_json() {
    let server = Server::start();
    let mut c = server.subscribe("topic=j");
    let mut p = server.producer();
    let mut last = 0;
    let cases: &[(&str, &str)] = &[
        (r#"{"a": 1, "b": [1, 2]}"#, r#"{"a":1,"b":[1,2]}"#),
        ("1.50", "1.50"),
        ("187.12", "187.12"),
        ("1e3", "1e3"),
        ("-0.0", "-0.0"),
        ("true", "true"),
        ("null", "null"),
        ("[ ]", "[]"),
        (
            "{ \"s\" : \"a  b\\n c\" ,\t \"n\" : 2.50 }",
            r#"{"s":"a  b\n c","n":2.50}"#,
        ),
    ];
    for (raw, wire) in cases {
        let line = format!("{{\"topic\": \"j\", \"data\": {raw}}}");
        check(
            &mut c,
            &mut p,
            &line,
            &format!("data: {wire}\n\n"),
            &mut last,
        );
    }
}

#[test]
fn ids_strictly_increase_and_match_the_producers_answers() {
    let server = Server::start();
    let mut c = server.subscribe("topic=ids");
    let mut p = server.producer();
    // Pipeline many lines without waiting, then read all answers.
    let n = 200;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&data_line("ids", &format!("n{i}")));
        batch.push('\n');
    }
    p.send_raw(batch.as_bytes());
    let mut answered = Vec::new();
    for _ in 0..n {
        let answer = p.read_answer();
        answered.push(parse_ok(&answer).unwrap_or_else(|| panic!("refused: {answer}")));
    }
    for w in answered.windows(2) {
        assert!(w[0] < w[1], "answer ids not increasing: {answered:?}");
    }
    for (i, id) in answered.iter().enumerate() {
        assert_eq!(c.read_event(), format!("id: {id}\ndata: n{i}\n\n"));
    }
}
