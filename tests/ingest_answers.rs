//! The ingest socket answers every line, in order (protocol 3.1): `{"ok":true,"id":"N"}` with
//! increasing ids, or `{"ok":false,"error":"<reason>"}` after which the connection goes on.
//! Blank lines get no answer; over-long lines are refused; refused events are never
//! delivered; `data` arrives as specified (protocol 2.1).
mod common;
use common::*;

use std::time::Duration;

/// The limit these tests configure for `ingest.max_event_bytes`.
const MAX_LINE: usize = 1024;

fn start() -> Server {
    Server::start_with(&[("ingest", &format!("max_event_bytes = {MAX_LINE}"))])
}

/// `{"topic":"t","data":"xxx..."}` padded to exactly `len` bytes (without newline).
fn line_of_len(topic: &str, len: usize) -> String {
    let head = format!("{{\"topic\":{},\"data\":\"", json_str(topic));
    let tail = "\"}";
    assert!(len >= head.len() + tail.len());
    let line = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
    assert_eq!(line.len(), len);
    line
}

/// A bad line, and groups of words its reason must show (each group: one of them,
/// case-insensitive).
struct Bad {
    what: &'static str,
    line: Vec<u8>,
    reason: &'static [&'static [&'static str]],
}

fn bad(
    what: &'static str,
    line: impl Into<Vec<u8>>,
    reason: &'static [&'static [&'static str]],
) -> Bad {
    Bad {
        what,
        line: line.into(),
        reason,
    }
}

/// Every kind of refused line; all of them name topic `t` where they name one, so a
/// subscriber of `t` would see them if a refused line leaked through.
fn bad_lines() -> Vec<Bad> {
    let many: Vec<String> = (0..33).map(|i| json_str(&format!("t{i}"))).collect();
    let many_with_t = format!("[\"t\",{}]", many[1..].join(","));
    assert_eq!(many_with_t.matches('"').count(), 66, "33 distinct names");
    let mut invalid_utf8 = b"{\"topic\":\"t\",\"data\":\"a".to_vec();
    invalid_utf8.push(0xff);
    invalid_utf8.extend_from_slice(b"b\"}");
    vec![
        bad(
            "unknown field",
            r#"{"topic":"t","data":1,"colour":"red"}"#,
            &[&["unknown"], &["colour"]],
        ),
        bad("missing data", r#"{"topic":"t"}"#, &[&["data"]]),
        bad(
            "both topic and topics",
            r#"{"topic":"t","topics":["t"],"data":1}"#,
            &[&["topic"], &["both", "either", "one of", "exactly"]],
        ),
        bad("neither topic nor topics", r#"{"data":1}"#, &[&["topic"]]),
        bad(
            "bad topic name",
            r#"{"topic":"a b","data":1}"#,
            &[&["topic"], &["a b"]],
        ),
        bad(
            "empty topic name",
            r#"{"topic":"","data":1}"#,
            &[&["topic"]],
        ),
        bad(
            "33 topics",
            format!(r#"{{"topics":{many_with_t},"data":1}}"#),
            &[&["topics"], &["32", "too many"]],
        ),
        bad("empty topics", r#"{"topics":[],"data":1}"#, &[&["topics"]]),
        bad(
            "event of 65 bytes",
            format!(r#"{{"topic":"t","event":"{}","data":1}}"#, "e".repeat(65)),
            &[&["event"], &["64", "long"]],
        ),
        bad(
            "event with CR",
            r#"{"topic":"t","event":"a\rb","data":1}"#,
            &[&["event"], &["cr", "line", "newline"]],
        ),
        bad(
            "event with LF",
            r#"{"topic":"t","event":"a\nb","data":1}"#,
            &[&["event"], &["lf", "line", "newline"]],
        ),
        bad(
            "event reset",
            r#"{"topic":"t","event":"reset","data":1}"#,
            &[&["reset"]],
        ),
        bad(
            "final not a boolean",
            r#"{"topic":"t","data":1,"final":"yes"}"#,
            &[&["final"]],
        ),
        bad(
            "final as a number",
            r#"{"topic":"t","data":1,"final":1}"#,
            &[&["final"]],
        ),
        bad("not JSON (word)", "hello", &[]),
        bad("not JSON (cut short)", r#"{"topic":"t","data":"#, &[]),
        bad(
            "not an object (array)",
            r#"[{"topic":"t","data":1}]"#,
            &[&["object"]],
        ),
        bad("not an object (string)", r#""t""#, &[&["object"]]),
        bad("invalid UTF-8", invalid_utf8, &[&["utf-8", "utf8"]]),
        bad(
            "line over max_event_bytes",
            line_of_len("t", 2000),
            &[&["long", "1024", "large", "exceed"]],
        ),
        bad(
            "line one byte over max_event_bytes",
            line_of_len("t", MAX_LINE + 1),
            &[&["long", "1024", "large", "exceed"]],
        ),
    ]
}

/// Checks `answer` is an error answer whose reason fits `bad`; returns the reason.
fn check_error(bad: &Bad, answer: &str) -> String {
    let reason = parse_error_answer(answer).unwrap_or_else(|| {
        panic!(
            "{}: expected {{\"ok\":false,\"error\":...}}, got {answer}",
            bad.what
        )
    });
    assert!(!reason.trim().is_empty(), "{}: empty reason", bad.what);
    assert!(
        reason.len() < 300,
        "{}: reason too long ({} bytes)",
        bad.what,
        reason.len()
    );
    let lower = reason.to_lowercase();
    for group in bad.reason {
        assert!(
            group.iter().any(|w| lower.contains(&w.to_lowercase())),
            "{}: reason {reason:?} mentions none of {group:?}",
            bad.what
        );
    }
    reason
}

fn ok_id(answer: &str, what: &str) -> u64 {
    parse_ok(answer)
        .unwrap_or_else(|| panic!("{what}: expected {{\"ok\":true,\"id\":\"N\"}}, got {answer}"))
}

#[test]
fn each_bad_line_gets_an_error_and_the_connection_goes_on() {
    let server = start();
    let mut p = server.producer();
    let mut last = ok_id(&p.request(r#"{"topic":"t","data":"first"}"#), "first line");
    for b in bad_lines() {
        let mut line = b.line.clone();
        line.push(b'\n');
        p.send_raw(&line);
        let answer = p.read_answer();
        check_error(&b, &answer);
        // The next valid line on the same connection is accepted.
        let id = ok_id(&p.request(r#"{"topic":"t","data":"next"}"#), b.what);
        assert!(id > last, "{}: id {id} not above {last}", b.what);
        last = id;
    }
}

#[test]
fn answers_are_in_order_when_pipelined() {
    let server = start();
    let mut p = server.producer();
    let bads = bad_lines();
    // good, bad, good, bad, ... all in one write.
    let mut batch = Vec::new();
    for (i, b) in bads.iter().enumerate() {
        batch.extend_from_slice(format!("{{\"topic\":\"t\",\"data\":{i}}}\n").as_bytes());
        batch.extend_from_slice(&b.line);
        batch.push(b'\n');
    }
    batch.extend_from_slice(b"{\"topic\":\"t\",\"data\":\"last\"}\n");
    p.send_raw(&batch);
    let mut last = 0;
    for b in &bads {
        let id = ok_id(&p.read_answer(), "good line before bad one");
        assert!(id > last, "ids must increase: {id} after {last}");
        last = id;
        check_error(b, &p.read_answer());
    }
    let id = ok_id(&p.read_answer(), "last line");
    assert!(id > last);
}

#[test]
fn blank_lines_get_no_answer() {
    let server = start();
    let mut p = server.producer();
    let first = ok_id(&p.request(r#"{"topic":"t","data":1}"#), "first");
    p.send_raw(b"\n   \n\t\n\r\n \t \r\n\n");
    // Nothing comes back for the blank lines...
    p.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut probe = [0u8; 64];
    match std::io::Read::read(&mut p.sock, &mut probe) {
        Ok(n) => panic!(
            "blank lines were answered: {:?}",
            String::from_utf8_lossy(&probe[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    p.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // ...and the next answer is the next real line's.
    let next = ok_id(&p.request(r#"{"topic":"t","data":2}"#), "after blanks");
    assert!(next > first);
}

#[test]
fn line_of_exactly_max_event_bytes_is_accepted() {
    let server = start();
    let mut sub = server.subscribe("topic=t");
    let mut p = server.producer();
    let line = line_of_len("t", MAX_LINE);
    let id = ok_id(&p.request(&line), "exactly max_event_bytes");
    let payload = "x".repeat(MAX_LINE - r#"{"topic":"t","data":""}"#.len());
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: {payload}\n\n"));
    // The same line arriving in pieces is still exactly at the limit.
    for chunk in line.as_bytes().chunks(100) {
        p.send_raw(chunk);
        std::thread::sleep(Duration::from_millis(5));
    }
    p.send_raw(b"\n");
    let id2 = ok_id(&p.read_answer(), "exactly max_event_bytes, in pieces");
    assert!(id2 > id);
    assert_eq!(sub.read_event(), format!("id: {id2}\ndata: {payload}\n\n"));
}

#[test]
fn over_long_line_in_several_writes_is_refused_once() {
    let server = start();
    let mut p = server.producer();
    let long = line_of_len("t", 2000);
    for chunk in long.as_bytes().chunks(150) {
        p.send_raw(chunk);
        std::thread::sleep(Duration::from_millis(5));
    }
    p.send_raw(b"\n");
    let b = bad(
        "over-long line in pieces",
        Vec::new(),
        &[&["long", "1024", "large", "exceed"]],
    );
    check_error(&b, &p.read_answer());
    let first = ok_id(
        &p.request(r#"{"topic":"t","data":"after"}"#),
        "after the long line",
    );
    // A much longer line (1 MiB, many reads) followed by a good line in the same write.
    let mut huge = line_of_len("t", 1 << 20).into_bytes();
    huge.extend_from_slice(b"\n{\"topic\":\"t\",\"data\":\"same write\"}\n");
    let writer = {
        let mut sock = p.sock.try_clone().unwrap();
        std::thread::spawn(move || std::io::Write::write_all(&mut sock, &huge))
    };
    check_error(&b, &p.read_answer());
    let second = ok_id(&p.read_answer(), "good line after a 1 MiB line");
    assert!(second > first);
    writer.join().unwrap().unwrap();
}

#[test]
fn refused_events_are_never_delivered() {
    let server = start();
    let mut sub = server.subscribe("topic=t");
    let mut p = server.producer();
    for b in bad_lines() {
        let mut line = b.line.clone();
        line.push(b'\n');
        p.send_raw(&line);
        check_error(&b, &p.read_answer());
    }
    let id = ok_id(&p.request(r#"{"topic":"t","data":"the good one"}"#), "good");
    assert_eq!(
        sub.read_event(),
        format!("id: {id}\ndata: the good one\n\n")
    );
}

#[test]
fn data_arrives_as_specified() {
    let server = start();
    let mut sub = server.subscribe("topic=d");
    let mut p = server.producer();
    // (the `data` value as the producer writes it, the data lines a subscriber gets)
    let cases: &[(&str, &str)] = &[
        (r#""hello world""#, "data: hello world\n"),
        (r#""  spaced  ""#, "data:   spaced  \n"),
        (r#""say \"hi\" \\o/""#, "data: say \"hi\" \\o/\n"),
        (r#""caf\u00e9 ü""#, "data: café ü\n"),
        (r#""a\nb""#, "data: a\ndata: b\n"),
        (r#""a\r\nb\rc\n""#, "data: a\ndata: b\ndata: c\ndata:\n"),
        (r#""""#, "data:\n"),
        (r#""42""#, "data: 42\n"),
        ("42", "data: 42\n"),
        ("187.12", "data: 187.12\n"),
        ("1.50", "data: 1.50\n"),
        ("-1E+3", "data: -1E+3\n"),
        ("true", "data: true\n"),
        ("null", "data: null\n"),
        ("[ 1 , 2 ,\t[ ] ]", "data: [1,2,[]]\n"),
        (
            r#"{ "a" : [1, 2] , "b" : "x y" }"#,
            "data: {\"a\":[1,2],\"b\":\"x y\"}\n",
        ),
        (
            r#"{"s":"line\nbreak \"q\""}"#,
            "data: {\"s\":\"line\\nbreak \\\"q\\\"\"}\n",
        ),
    ];
    for (data, wire) in cases {
        let line = format!(r#"{{"topic":"d","data":{data}}}"#);
        let id = ok_id(&p.request(&line), data);
        assert_eq!(
            sub.read_event(),
            format!("id: {id}\n{wire}\n"),
            "data {data}"
        );
    }
    // The event type: `message` is the default and not written; others are.
    let id = ok_id(
        &p.request(r#"{"topic":"d","event":"message","data":"m"}"#),
        "event message",
    );
    assert_eq!(sub.read_event(), format!("id: {id}\ndata: m\n\n"));
    let id = ok_id(
        &p.request(r#"{"topic":"d","event":"note","data":"n"}"#),
        "event note",
    );
    assert_eq!(
        sub.read_event(),
        format!("id: {id}\nevent: note\ndata: n\n\n")
    );
}

/// A raw producer connection; returns every answer line until the server closes.
fn send_then_half_close(server: &Server, input: &[u8]) -> Vec<String> {
    use std::io::{BufRead, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(&server.socket).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(input).expect("send");
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answers = Vec::new();
    for line in std::io::BufReader::new(sock).split(b'\n') {
        let line = line.expect("answers, then EOF");
        answers.push(String::from_utf8(line).expect("utf-8 answer"));
    }
    answers
}

#[test]
fn half_close_gets_every_answer_then_eof() {
    let server = start();
    let mut sub = server.subscribe("topic=t");
    let answers = send_then_half_close(
        &server,
        b"{\"topic\":\"t\",\"data\":1}\nnope\n\n{\"topic\":\"t\",\"data\":2}\n",
    );
    assert_eq!(answers.len(), 3, "{answers:?}");
    let one = ok_id(&answers[0], "line 1");
    assert!(
        parse_error_answer(&answers[1]).is_some(),
        "line 2: {}",
        answers[1]
    );
    let two = ok_id(&answers[2], "line 4");
    assert!(two > one);
    assert_eq!(sub.read_event(), format!("id: {one}\ndata: 1\n\n"));
    assert_eq!(sub.read_event(), format!("id: {two}\ndata: 2\n\n"));
}

#[test]
fn last_line_without_newline_at_end_of_input_is_answered() {
    // `printf '{"topic":"t","data":1}' | nc -U sock`: the producer ends its input without a
    // final newline. That last line is still a line: answered, never dropped without a word.
    let server = start();
    let mut sub = server.subscribe("topic=t");
    let answers = send_then_half_close(
        &server,
        b"{\"topic\":\"t\",\"data\":1}\n{\"topic\":\"t\",\"data\":2}",
    );
    assert_eq!(answers.len(), 2, "one answer per line: {answers:?}");
    let one = ok_id(&answers[0], "line 1");
    let two = ok_id(&answers[1], "unterminated line 2");
    assert_eq!(sub.read_event(), format!("id: {one}\ndata: 1\n\n"));
    assert_eq!(sub.read_event(), format!("id: {two}\ndata: 2\n\n"));
    // The same for bad and over-long unterminated last lines.
    let answers = send_then_half_close(&server, b"{\"topic\":\"t\"}");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(parse_error_answer(&answers[0]).is_some(), "{answers:?}");
    let answers = send_then_half_close(&server, line_of_len("t", 5000).as_bytes());
    assert_eq!(answers.len(), 1, "{answers:?}");
    let reason = parse_error_answer(&answers[0]).unwrap_or_default();
    assert!(
        reason.contains("long") || reason.contains("1024"),
        "{answers:?}"
    );
}
