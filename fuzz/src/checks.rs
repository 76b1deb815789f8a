//! The fuzz properties, one function per target. Shared word for word by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, through the `ssehub_fuzz` library) and by the
//! regression replay `tests/fuzz_regressions.rs` (which includes this file with `#[path]`),
//! so CI checks every saved input against exactly what the fuzzer checked, without
//! cargo-fuzz or a nightly toolchain. Uses only crates the main `ssehub` package already
//! depends on (`ssehub`, `serde_json`, `mio`), never `arbitrary` or `libfuzzer-sys`.
//!
//! Every function panics (the fuzzer's finding) when a property does not hold.

use crate::event_stream::{self, Event};
use serde_json::Value;
use ssehub::http::request::{self, Parsed, Request};
use ssehub::ingest::line::{self, Admin, Line, LineError};
use ssehub::ingest::{Flow, InputLine, Producer};
use ssehub::{sse, topic_name};

/// `http.max_header_bytes` and `streams.max_topics` at their defaults (SPEC 5).
pub const MAX_HEADER_BYTES: usize = 8192;
pub const MAX_TOPICS: usize = 32;

// ---------------------------------------------------------------------------------------
// http_request

/// Target `http_request`: the bytes a client sent, parsed as the event loop does (request
/// after request while the connection would stay open), each stream query too.
///
/// Properties: no panic; `Partial` only within the limit; a complete head ends within the
/// limit and the buffer; rejections are 400/414/431 with a one-line reason; a complete head
/// is found the same with a smaller limit that still holds it, and every cut of it is
/// `Partial` (the server re-parses as bytes arrive, so a request split across reads must
/// never be refused); a parsed stream query has 1..=32 distinct valid topics.
pub fn http_request(input: &[u8]) {
    let mut rest = input;
    // Bounded: the fuzzer's inputs are at most a few KiB, each head is at least 16 bytes.
    for _ in 0..1024 {
        if rest.is_empty() {
            break;
        }
        let parsed = request::parse(rest, MAX_HEADER_BYTES);
        check_parsed(rest, MAX_HEADER_BYTES, &parsed);
        check_smaller_limit(rest, &parsed);
        match parsed {
            Parsed::Partial | Parsed::Reject(_) => break,
            Parsed::Complete { request, head_len } => {
                check_cuts(rest, head_len);
                check_request(&request);
                check_query(&request.query);
                // The server answers and closes after a request with a body or without
                // keep-alive; otherwise the next request starts right after this head.
                if request.has_body || !request.keep_alive {
                    break;
                }
                rest = &rest[head_len..];
            }
        }
    }
}

fn check_parsed(buf: &[u8], max: usize, parsed: &Parsed) {
    match parsed {
        Parsed::Partial => assert!(buf.len() <= max, "Partial past the limit"),
        Parsed::Complete { head_len, .. } => {
            assert!(*head_len > 0, "empty head");
            assert!(
                *head_len <= buf.len() && *head_len <= max,
                "head past limit"
            );
        }
        Parsed::Reject(r) => {
            assert!(matches!(r.status, 400 | 414 | 431), "status {r:?}");
            assert!(one_line(r.reason) && !r.reason.is_empty(), "reason {r:?}");
            if matches!(r.status, 414) {
                assert!(buf.len() > max, "414 within the limit");
            }
        }
    }
}

/// The same head with a limit that still holds it (or without it: a refusal made from the
/// bytes within the smaller limit) must not change.
fn check_smaller_limit(buf: &[u8], big: &Parsed) {
    // Derived from the input so that every input gets its own, reproducible, limit.
    let small = 16 + buf.len() % 257;
    let parsed = request::parse(buf, small);
    check_parsed(buf, small, &parsed);
    if let Parsed::Complete { head_len, .. } = big
        && *head_len <= small
    {
        assert_eq!(
            &parsed, big,
            "limit {small} changed a head of {head_len} bytes"
        );
    }
    if let Parsed::Complete { .. } = parsed {
        assert_eq!(&parsed, big, "a larger limit changed a complete head");
    }
}

/// Cuts of a complete head (as reads may deliver it) are `Partial`, never refused.
fn check_cuts(buf: &[u8], head_len: usize) {
    let mut cuts = [1, head_len / 2, head_len.saturating_sub(1)];
    cuts.sort_unstable();
    for cut in cuts {
        if cut == 0 || cut >= head_len {
            continue;
        }
        let parsed = request::parse(&buf[..cut], MAX_HEADER_BYTES);
        assert_eq!(
            parsed,
            Parsed::Partial,
            "first {cut} of {head_len} head bytes not Partial"
        );
    }
}

fn check_request(req: &Request) {
    assert!(
        req.path.starts_with('/') || req.path == "*",
        "path {:?}",
        req.path
    );
    assert!(
        !req.path.contains('?') && !req.path.contains('#'),
        "path {:?}",
        req.path
    );
    assert!(!req.query.contains('#'), "query {:?}", req.query);
    if req.path == "*" {
        assert_eq!(req.method, request::Method::Options, "'*' without OPTIONS");
    }
    assert!(req.last_event_id.as_ref().is_none_or(|v| !v.is_empty()));
    assert!(req.cookie.as_ref().is_none_or(|v| !v.is_empty()));
    assert!(req.forwarded_for.as_ref().is_none_or(|v| !v.is_empty()));
}

fn check_query(query: &str) {
    match request::parse_stream_query(query, MAX_TOPICS) {
        Ok(q) => {
            assert!((1..=MAX_TOPICS).contains(&q.topics.len()), "{q:?}");
            check_topics(&q.topics);
            assert!(q.last_event_id.as_ref().is_none_or(|v| !v.is_empty()));
            assert!(q.token.as_ref().is_none_or(|v| !v.is_empty()));
        }
        Err(reason) => {
            assert!(one_line(&reason) && !reason.is_empty(), "reason {reason:?}");
            assert!(reason.len() <= 200, "reason of {} bytes", reason.len());
        }
    }
}

fn check_topics(topics: &[Box<str>]) {
    for (i, t) in topics.iter().enumerate() {
        assert_eq!(topic_name::validate(t.as_bytes()), Ok(()), "topic {t:?}");
        assert!(!topics[..i].contains(t), "duplicate topic {t:?}");
    }
}

fn one_line(s: &str) -> bool {
    !s.contains(['\r', '\n'])
}

// ---------------------------------------------------------------------------------------
// ingest_line

/// Target `ingest_line`: the bytes as one ingest line (`decode_line`), and as a producer's
/// byte stream through the real line framing (`Producer::take_input`, fed in chunks, with
/// a small and a normal `max_line`), each framed line decoded and answered.
///
/// Properties: no panic; an accepted publish has 1..=32 distinct valid topics, an event
/// type of 1–64 bytes without CR/LF/NUL that is not "reset", UTF-8 data, and agrees with
/// what `serde_json` reads from the same line (topics, event, final, data; unknown fields
/// refused); an error reason is one short line and its answer line is valid JSON; framing
/// gives exactly the lines between newlines (a last one at end of input), those over
/// `max_line` as one `TooLong`; the answers are written in order.
pub fn ingest_line(input: &[u8]) {
    check_line(input);
    check_framing(input, 16);
    check_framing(input, 4096);
}

/// Decodes one line and checks what came out; returns the answer line the server writes.
fn check_line(input: &[u8]) -> Vec<u8> {
    let mut answer = Vec::new();
    match line::decode_line(input, MAX_TOPICS) {
        Ok(Line::Blank) => {
            assert!(input.iter().all(|b| b" \t\r\n".contains(b)), "not blank");
        }
        Ok(Line::Admin(Admin::Reload)) => {
            let v: Value = serde_json::from_slice(input).expect("admin line is JSON");
            assert_eq!(v, serde_json::json!({"admin": "reload"}));
            line::write_ok(&mut answer, 1);
        }
        Ok(Line::Publish(p)) => {
            assert!((1..=MAX_TOPICS).contains(&p.topics.len()), "{p:?}");
            check_topics(&p.topics);
            if let Some(e) = p.event.as_deref() {
                assert!((1..=64).contains(&e.len()), "event of {} bytes", e.len());
                assert!(!e.contains(['\r', '\n', '\0']), "event {e:?}");
                assert_ne!(e, "reset");
            }
            check_publish_against_serde(input, &p);
            let id = input.len() as u64 * 1_000_003;
            line::write_ok(&mut answer, id);
            assert_eq!(
                answer,
                format!("{{\"ok\":true,\"id\":\"{id}\"}}\n").as_bytes()
            );
        }
        Err(LineError(reason)) => {
            assert!(one_line(&reason) && !reason.is_empty(), "reason {reason:?}");
            // Echoes are cut to 64 bytes and serde_json's messages to 200.
            assert!(reason.len() <= 400, "reason of {} bytes", reason.len());
            line::write_error(&mut answer, &reason);
            let text = std::str::from_utf8(&answer).expect("answer is UTF-8");
            let body = text.strip_suffix('\n').expect("answer ends with LF");
            assert!(one_line(body), "answer {text:?}");
            let v: Value = serde_json::from_str(body).expect("answer is JSON");
            assert_eq!(v, serde_json::json!({"ok": false, "error": reason}));
        }
    }
    answer
}

/// What `serde_json` reads from the same line must agree with the decoded publish.
fn check_publish_against_serde(input: &[u8], p: &line::Publish) {
    let obj = match serde_json::from_slice::<Value>(input) {
        Ok(Value::Object(obj)) => obj,
        Ok(other) => panic!("accepted a line that is not an object: {other}"),
        // `data` is kept as the producer's bytes: a number beyond f64 or nesting deeper than
        // serde_json's recursion limit is fine there, but `Value` cannot hold it.
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("number out of range") || e.contains("recursion limit exceeded"),
                "accepted a line serde_json refuses: {e}"
            );
            return;
        }
    };
    for key in obj.keys() {
        assert!(
            ["topic", "topics", "event", "data", "final"].contains(&key.as_str()),
            "accepted unknown field {key:?}"
        );
    }
    let topics: Vec<&str> = p.topics.iter().map(|t| &**t).collect();
    match (obj.get("topic"), obj.get("topics")) {
        (Some(Value::String(t)), None) => assert_eq!(topics, [t.as_str()]),
        (None, Some(Value::Array(items))) => {
            let mut distinct: Vec<&str> = Vec::new();
            for item in items {
                let t = item.as_str().expect("topics are strings");
                if !distinct.contains(&t) {
                    distinct.push(t);
                }
            }
            assert_eq!(topics, distinct);
        }
        other => panic!("accepted topic/topics {other:?}"),
    }
    match obj.get("event") {
        None => assert_eq!(p.event, None),
        Some(Value::String(e)) => assert_eq!(p.event.as_deref(), Some(e.as_str())),
        Some(other) => panic!("accepted event {other}"),
    }
    match obj.get("final") {
        None => assert!(!p.is_final),
        Some(Value::Bool(b)) => assert_eq!(p.is_final, *b),
        Some(other) => panic!("accepted final {other}"),
    }
    match obj.get("data") {
        Some(Value::String(s)) => assert_eq!(&*p.data, s.as_str()),
        Some(v) => {
            // The producer's own bytes, whitespace outside strings removed: same value.
            assert!(!p.data.contains(['\n', '\r']), "data {:?}", p.data);
            if let Ok(back) = serde_json::from_str::<Value>(&p.data) {
                assert_eq!(&back, v, "data {:?}", p.data);
            }
        }
        None => panic!("accepted a line without data"),
    }
}

/// Feeds `input` through the real framing, in chunks derived from the input, and compares
/// the lines with the plain split on '\n'.
fn check_framing(input: &[u8], max_line: usize) {
    PRODUCER.with_borrow_mut(|slot| {
        let mut producer = slot.take().unwrap_or_else(|| {
            let (sock, peer) = mio::net::UnixStream::pair().expect("socketpair");
            // The peer stays open (answers are never flushed) for the life of the thread.
            std::mem::forget(peer);
            Producer::new(sock)
        });
        check_framing_with(&mut producer, input, max_line);
        // Kept only after a run that passed (and so ended with no partial line).
        *slot = Some(producer);
    });
}

thread_local! {
    /// One producer for every run: a socket pair costs 25-100 µs here, more than the rest
    /// of a run. Each run starts from the state a fresh `Producer::new` has: the answers are
    /// replaced, and the previous run proved that `finish_input` left no partial line.
    static PRODUCER: std::cell::RefCell<Option<Producer>> =
        const { std::cell::RefCell::new(None) };
}

fn check_framing_with(producer: &mut Producer, input: &[u8], max_line: usize) {
    producer.answers = ssehub::ingest::Answers::default();
    assert_eq!(producer.unwritten(), 0);
    let mut got: Vec<Option<Vec<u8>>> = Vec::new();
    let mut expected_answers = Vec::new();
    // Some lines pause the input (as a reload does): the rest is held and handled by
    // `take_held`, and must come out as if nothing had paused.
    let mut on_line = |l: InputLine<'_>, answers: &mut ssehub::ingest::Answers| match l {
        InputLine::Line(bytes) => {
            got.push(Some(bytes.to_vec()));
            // The answer the event loop would give (ids are made up here).
            match line::decode_line(bytes, MAX_TOPICS) {
                Ok(Line::Blank) => {}
                Ok(_) => {
                    answers.ok(7, None);
                    line::write_ok(&mut expected_answers, 7);
                }
                Err(LineError(reason)) => {
                    answers.error(&reason);
                    line::write_error(&mut expected_answers, &reason);
                }
            }
            match bytes.len() % 5 == 3 {
                true => Flow::Pause,
                false => Flow::Next,
            }
        }
        InputLine::TooLong => {
            got.push(None);
            answers.error("line too long");
            line::write_error(&mut expected_answers, "line too long");
            Flow::Next
        }
    };
    let mut rng = input.len() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let mut rest = input;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (1 + (rng % 40) as usize).min(rest.len());
        if producer.take_input(&rest[..n], max_line, &mut on_line) {
            while producer.take_held(max_line, &mut on_line) {}
        }
        assert!(!producer.has_held());
        rest = &rest[n..];
    }
    producer.finish_input(max_line, &mut on_line);
    // finish_input is idempotent: nothing of this input is left for the next run.
    producer.finish_input(max_line, |_, _| panic!("a second end of input gave a line"));

    let mut expected: Vec<Option<Vec<u8>>> = Vec::new();
    let mut segments: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if segments.last().is_some_and(|s| s.is_empty()) {
        segments.pop();
    }
    for s in segments {
        expected.push((s.len() <= max_line).then(|| s.to_vec()));
    }
    assert_eq!(got, expected, "framing with max_line {max_line}");
    if max_line >= 4096 {
        for l in got.iter().flatten() {
            check_line(l);
        }
    }
    assert_eq!(producer.unwritten(), expected_answers.len(), "answer bytes");
    assert_eq!(producer.drained(), expected_answers.is_empty());
}

// ---------------------------------------------------------------------------------------
// sse_encoder

/// One structured input of the `sse_encoder` target (the fuzz crate derives it with
/// `arbitrary`; regression files hold it as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseCase {
    pub id: u64,
    /// The `earliestId` of the reset event.
    pub earliest: Option<u64>,
    /// The event type as generated; [`event_type`] makes it one the ingest accepts.
    pub event: Option<String>,
    /// The payload (also the `Last-Event-ID` echoed by the reset event).
    pub data: String,
}

impl SseCase {
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "id": self.id,
            "earliest": self.earliest,
            "event": self.event,
            "data": self.data,
        });
        format!("{v:#}\n")
    }

    pub fn from_json(text: &str) -> Result<SseCase, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let obj = v.as_object().ok_or("not an object")?;
        let u64_field = |name: &str| match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(format!("{name} is not a u64")),
        };
        let str_field = |name: &str| match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{name} is not a string")),
        };
        Ok(SseCase {
            id: u64_field("id")?.ok_or("missing id")?,
            earliest: u64_field("earliest")?,
            event: str_field("event")?,
            data: str_field("data")?.ok_or("missing data")?,
        })
    }
}

/// The generated event type made into one the ingest accepts (SPEC 3.1): CR, LF and NUL
/// removed, cut to 64 bytes, none when empty or "reset".
pub fn event_type(raw: Option<&str>) -> Option<String> {
    let mut name: String = raw?
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect();
    while name.len() > 64 {
        name.pop();
    }
    (!name.is_empty() && name != "reset").then_some(name)
}

/// Line breaks as an `EventSource` reads them back: CRLF and lone CR become LF.
pub fn normalise_line_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Target `sse_encoder`: the event encoded by `sse::encode_event`, read back by the WHATWG
/// parser.
///
/// Properties: the ingest accepts this event type and data as they are; the bytes are
/// exactly SPEC 2.1's; the parser (fed at once and byte by byte) dispatches exactly one
/// event whose data is the payload with line breaks normalised, whose type is the event type
/// ("message" when none) and whose last event id is the decimal id; the keepalive dispatches
/// nothing; the reset event is one event of type "reset" with no id line and the JSON data
/// of SPEC 2.2; a whole stream (retry, event, keepalive, reset, event) reads back as those
/// three events with the reconnection time of the retry line.
pub fn sse_encoder(case: &SseCase) {
    let event = event_type(case.event.as_deref());
    let event = event.as_deref();
    let data = case.data.as_str();
    check_ingest_accepts(event, data);

    let bytes = sse::encode_event(case.id, event, data);
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        expected_wire(case.id, event, data),
        "wire bytes"
    );
    let expected = Event {
        event_type: event.unwrap_or("message").to_owned(),
        data: normalise_line_breaks(data),
        last_event_id: case.id.to_string(),
    };
    let (events, parser) = event_stream::parse(&bytes);
    assert_eq!(events, std::slice::from_ref(&expected), "read back");
    assert!(parser.is_idle(), "bytes left after the event");
    let mut bytewise = event_stream::Parser::new();
    let events: Vec<Event> = bytes.iter().flat_map(|&b| bytewise.feed(&[b])).collect();
    assert_eq!(
        events,
        std::slice::from_ref(&expected),
        "read back byte by byte"
    );

    // Keepalive: a comment, nothing dispatched, nothing pending.
    let (events, parser) = event_stream::parse(sse::KEEPALIVE);
    assert!(
        events.is_empty() && parser.is_idle(),
        "keepalive dispatched"
    );

    // Reset: one event, no id line, SPEC 2.2's JSON.
    let reset = sse::encode_reset(data, case.earliest);
    let (events, parser) = event_stream::parse(&reset);
    assert!(parser.is_idle(), "bytes left after reset");
    let reset_event = check_reset(&events, data, case.earliest, "");

    // A stream as a client receives it.
    let retry_ms = case.id % 100_000;
    let next_id = case.id.wrapping_add(1);
    let mut stream = sse::retry(retry_ms);
    stream.extend_from_slice(&bytes);
    stream.extend_from_slice(sse::KEEPALIVE);
    stream.extend_from_slice(&reset);
    stream.extend_from_slice(&sse::encode_event(next_id, None, data));
    let (events, parser) = event_stream::parse(&stream);
    assert!(parser.is_idle(), "bytes left after the stream");
    assert_eq!(parser.reconnection_time, Some(retry_ms), "retry");
    assert_eq!(events.len(), 3, "stream events {events:?}");
    assert_eq!(events[0], expected);
    let mid = Event {
        last_event_id: case.id.to_string(),
        ..reset_event
    };
    assert_eq!(events[1], mid, "reset keeps the last event id");
    assert_eq!(
        events[2],
        Event {
            event_type: "message".into(),
            data: normalise_line_breaks(data),
            last_event_id: next_id.to_string(),
        }
    );
}

/// SPEC 2.1's bytes, written independently of the encoder.
fn expected_wire(id: u64, event: Option<&str>, data: &str) -> String {
    let mut out = format!("id: {id}\n");
    if let Some(e) = event.filter(|e| *e != "message") {
        out.push_str(&format!("event: {e}\n"));
    }
    for l in normalise_line_breaks(data).split('\n') {
        if l.is_empty() {
            out.push_str("data:\n");
        } else {
            out.push_str(&format!("data: {l}\n"));
        }
    }
    out.push('\n');
    out
}

fn check_reset(events: &[Event], last_event_id: &str, earliest: Option<u64>, id: &str) -> Event {
    assert_eq!(events.len(), 1, "reset gave {events:?}");
    let e = &events[0];
    assert_eq!(e.event_type, "reset");
    assert_eq!(e.last_event_id, id, "reset changed the last event id");
    let v: Value = serde_json::from_str(&e.data).expect("reset data is JSON");
    let earliest = earliest.map(|n| n.to_string());
    assert_eq!(
        v,
        serde_json::json!({"lastEventId": last_event_id, "earliestId": earliest})
    );
    e.clone()
}

/// What the encoder is given is what a producer can publish: the ingest takes it unchanged.
fn check_ingest_accepts(event: Option<&str>, data: &str) {
    let json = |s: &str| serde_json::to_string(s).expect("JSON string");
    let event_field = event.map_or(String::new(), |e| format!("\"event\":{},", json(e)));
    let l = format!("{{\"topic\":\"t\",{event_field}\"data\":{}}}", json(data));
    match line::decode_line(l.as_bytes(), MAX_TOPICS) {
        Ok(Line::Publish(p)) => {
            assert_eq!(p.event.as_deref(), event);
            assert_eq!(&*p.data, data);
        }
        other => panic!("ingest refused {l:?}: {other:?}"),
    }
}
