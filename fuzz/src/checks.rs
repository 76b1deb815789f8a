//! The fuzz properties, one function per target. Shared word for word by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, through the `ssehub_fuzz` library) and by the
//! regression replay `tests/fuzz_regressions.rs` (which includes this file with `#[path]`),
//! so CI checks every saved input against exactly what the fuzzer checked, without
//! cargo-fuzz or a nightly toolchain. Uses only crates the main `ssehub` package already
//! depends on (`ssehub`, `serde_json`, `mio`, `ring`), never `arbitrary` or `libfuzzer-sys`.
//!
//! Every function panics (the fuzzer's finding) when a property does not hold.

use crate::event_stream::{self, Event};
use ring::aead;
use serde_json::Value;
use ssehub::conn::record::{
    ALERT, APPLICATION_DATA, HANDSHAKE, MAX_EMPTY_IN_A_ROW, MAX_PLAINTEXT, Record, Traffic,
};
use ssehub::http::body::{self, BodyDecoder, Framing, Step};
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
            assert!(
                matches!(r.status, 400 | 414 | 417 | 431 | 501),
                "status {r:?}"
            );
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
// http_body

/// `publish.max_body_bytes` of a run, picked by bits 1–3 of the first byte.
const BODY_MAXES: [usize; 8] = [0, 1, 5, 16, 64, 255, 4096, 65536];
/// The largest piece a run feeds at once, picked by bits 5–7 of the first byte.
const BODY_PIECES: [usize; 8] = [1, 2, 3, 7, 16, 64, 256, 4096];
/// A pipelined request after each generated body: the decoder must leave it.
const NEXT_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// Target `http_body`: request bodies as `POST /publish` reads them (`http::body`).
///
/// Layout: byte 0 picks the framing (bit 0: chunked, else `Content-Length`), the limit
/// (bits 1–3, `BODY_MAXES`), for `Content-Length` a huge declared length (bit 4), and the
/// largest piece the bytes are fed in (bits 5–7, `BODY_PIECES`); byte 1 is the declared
/// length (or how far below `u64::MAX` it is); the rest is the body's bytes.
///
/// Properties: no panic; fed whole and fed in pieces (sizes derived from the input, the
/// unconsumed bytes kept and passed again, as the server does) give the same steps, bytes
/// taken, body and refusal; `NeedMore` has taken every byte; `Done` takes no more than the
/// input and nothing after; the body is never over the limit and is what
/// `BodyDecoder::decoded` says; refusals are 400/413/431 with one short line, and sticky.
/// `Content-Length`: exactly the declared bytes, 413 at once past the limit. Chunked: agrees
/// with a whole-buffer reference decoder written from RFC 9112 §7.1 (`reference_chunked`):
/// complete with the same bytes taken and body exactly when it is, 413 exactly when it is;
/// the payload encoded as a valid chunked body (chunk sizes, extensions and trailers
/// derived from the input) followed by a request decodes to the payload, stopping at the
/// request (413 when over the limit). `parse_form` and `form_to_line` on the bytes (and on
/// the decoded body): a decoded form re-encoded decodes the same; an ingest line made from
/// a form is JSON that `decode_line` reads back as the form's topics, data and type.
pub fn http_body(input: &[u8]) {
    let mode = input.first().copied().unwrap_or(0);
    let param = input.get(1).copied().unwrap_or(0);
    let rest = input.get(2..).unwrap_or_default();
    let max = BODY_MAXES[usize::from(mode >> 1) & 7];
    let largest_piece = BODY_PIECES[usize::from(mode >> 5)];
    let seed = input.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let framing = if mode & 1 == 1 {
        Framing::Chunked
    } else if mode & 0x10 != 0 {
        Framing::Length(u64::MAX >> (param % 64))
    } else {
        Framing::Length(u64::from(param))
    };
    let run = check_body(framing, max, rest, largest_piece, seed);
    match framing {
        Framing::Length(len) => check_length(len, max, rest, &run),
        Framing::Chunked => check_chunked_reference(max, rest, &run),
    }
    check_chunked_roundtrip(rest, max, largest_piece, seed);
    check_form(rest);
    if let Ok((body, _, Step::Done)) = &run
        && body.as_slice() != rest
    {
        check_form(body);
    }
}

/// What a run of the decoder gave: the body, the input bytes taken, the step reached.
type BodyRun = Result<(Vec<u8>, usize, Step), body::Refused>;

/// Runs the decoder on `input` whole and in pieces; both must agree. Returns the run.
fn check_body(framing: Framing, max: usize, input: &[u8], largest: usize, seed: u64) -> BodyRun {
    let mut decoder = match BodyDecoder::new(framing, max) {
        Ok(d) => d,
        Err(r) => {
            check_refusal(&r);
            assert_eq!(r.status, 413, "new refused with {r:?}");
            assert!(matches!(framing, Framing::Length(len) if len > max as u64));
            return Err(r);
        }
    };
    if let Framing::Length(len) = framing {
        assert!(
            len <= max as u64,
            "Content-Length {len} over {max} accepted"
        );
    }
    let mut body = Vec::new();
    let whole = decoder.decode(input, &mut body);
    check_after(&mut decoder, input, &body, &whole, max);
    let whole = whole.map(|(used, step)| (body, used, step));

    let pieces = feed_in_pieces(framing, max, input, largest, seed);
    match (&whole, &pieces) {
        (Ok(w), Ok(p)) => assert_eq!(w, p, "fed whole vs in pieces of at most {largest}"),
        (Err(w), Err(p)) => assert_eq!(w, p, "refusal fed whole vs in pieces"),
        _ => panic!("fed whole: {whole:?}; in pieces of at most {largest}: {pieces:?}"),
    }
    whole
}

/// The properties of one `decode` call on `input` and of the calls after it.
fn check_after(
    decoder: &mut BodyDecoder,
    input: &[u8],
    body: &[u8],
    got: &Result<(usize, Step), body::Refused>,
    max: usize,
) {
    assert!(body.len() <= max, "{} body bytes over {max}", body.len());
    assert_eq!(decoder.decoded(), body.len() as u64);
    let mut more = Vec::new();
    match got {
        Ok((used, Step::NeedMore)) => {
            assert_eq!(*used, input.len(), "NeedMore left bytes behind");
            assert!(!decoder.is_done());
            assert_eq!(decoder.decode(&[], &mut more), Ok((0, Step::NeedMore)));
        }
        Ok((used, Step::Done)) => {
            assert!(*used <= input.len(), "took {used} of {} bytes", input.len());
            assert!(decoder.is_done());
            let after = &input[*used..];
            assert_eq!(decoder.decode(after, &mut more), Ok((0, Step::Done)));
            assert_eq!(decoder.decode(b"x", &mut more), Ok((0, Step::Done)));
        }
        Err(r) => {
            check_refusal(r);
            assert!(
                decoder.decode(b"0\r\n\r\n", &mut more).is_err(),
                "not sticky"
            );
        }
    }
    assert!(more.is_empty(), "a finished decoder gave body bytes");
}

/// As the server feeds a body: read by read, the bytes not taken kept and passed again.
fn feed_in_pieces(
    framing: Framing,
    max: usize,
    input: &[u8],
    largest: usize,
    seed: u64,
) -> BodyRun {
    let mut decoder = BodyDecoder::new(framing, max)?;
    let mut body = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    let mut used = 0;
    let mut rng = seed;
    let mut rest = input;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (1 + (rng % largest as u64) as usize).min(rest.len());
        let (piece, after) = rest.split_at(n);
        held.extend_from_slice(piece);
        rest = after;
        let (n, step) = decoder.decode(&held, &mut body)?;
        assert!(n <= held.len());
        held.drain(..n);
        used += n;
        assert!(body.len() <= max);
        if step == Step::Done || rest.is_empty() {
            return Ok((body, used, step));
        }
    }
}

fn check_refusal(r: &body::Refused) {
    assert!(matches!(r.status, 400 | 413 | 431), "status {r:?}");
    assert!(!r.reason.is_empty() && one_line(&r.reason), "reason {r:?}");
    assert!(r.reason.len() <= 200, "reason {r:?}");
}

/// `Content-Length`: exactly the declared bytes.
fn check_length(len: u64, max: usize, input: &[u8], run: &BodyRun) {
    if len > max as u64 {
        let Err(r) = run else {
            panic!("Content-Length {len} over {max}: {run:?}")
        };
        assert_eq!(r.reason, format!("request body larger than {max} bytes"));
        return;
    }
    let len = len as usize;
    let expected = if input.len() >= len {
        (input[..len].to_vec(), len, Step::Done)
    } else {
        (input.to_vec(), input.len(), Step::NeedMore)
    };
    assert_eq!(run.as_ref(), Ok(&expected), "Content-Length {len}");
}

/// What the reference decoder makes of a whole buffer.
#[derive(Debug, PartialEq, Eq)]
enum Reference {
    /// A valid chunked body of `used` bytes.
    Complete { used: usize, body: Vec<u8> },
    /// A chunk-size line takes the body over the limit.
    TooLarge,
    /// Not a valid chunked body, whatever follows.
    Invalid,
    /// Valid so far, not complete.
    Incomplete,
}

/// A chunked body decoded from the whole buffer, line by line (RFC 9112 §7.1), by the same
/// rules as `http::body` but written apart from it: lines end at CRLF; a chunk-size line is
/// 1–16 hex digits, then nothing or optional SP/HTAB, `;` and bytes that are HTAB, SP,
/// VCHAR or obs-text, at most 4096 bytes with its CRLF; chunk data is followed by CRLF;
/// the trailer is `tchar+ ":" field-bytes` lines, then an empty line, at most 8192 bytes.
fn reference_chunked(buf: &[u8], max: usize) -> Reference {
    let field_byte = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b) || *b >= 0x80;
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let crlf = |s: &[u8]| s.windows(2).position(|w| w == b"\r\n");
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let rest = &buf[at..];
        let Some(end) = crlf(rest) else {
            // No line of 4096 bytes with its CRLF can start so.
            return if rest.len() >= 4096 {
                Reference::Invalid
            } else {
                Reference::Incomplete
            };
        };
        if end + 2 > 4096 {
            return Reference::Invalid;
        }
        let line = &rest[..end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Reference::Invalid;
        }
        let ext = &line[digits..];
        let ext_ok = ext.is_empty() || {
            let start = ext.iter().position(|b| !matches!(b, b' ' | b'\t'));
            match start.map(|s| &ext[s..]) {
                Some([b';', more @ ..]) => more.iter().all(field_byte),
                _ => false,
            }
        };
        if !ext_ok {
            return Reference::Invalid;
        }
        let hex = std::str::from_utf8(&line[..digits]).expect("hex digits");
        let size = u64::from_str_radix(hex, 16).expect("at most 16 hex digits");
        at += end + 2;
        if size == 0 {
            break;
        }
        if size > (max - body.len()) as u64 {
            return Reference::TooLarge;
        }
        let size = size as usize;
        let rest = &buf[at..];
        if rest.len() < size {
            return Reference::Incomplete;
        }
        let after = &rest[size..rest.len().min(size + 2)];
        if !b"\r\n".starts_with(after) {
            return Reference::Invalid;
        }
        if after.len() < 2 {
            return Reference::Incomplete;
        }
        body.extend_from_slice(&rest[..size]);
        at += size + 2;
    }
    let start = at;
    loop {
        let rest = &buf[at..];
        let Some(end) = crlf(rest) else {
            return if at - start + rest.len() >= 8192 {
                Reference::Invalid
            } else {
                Reference::Incomplete
            };
        };
        if at - start + end + 2 > 8192 {
            return Reference::Invalid;
        }
        let line = &rest[..end];
        at += end + 2;
        if line.is_empty() {
            return Reference::Complete { used: at, body };
        }
        let name = line.iter().take_while(|b| tchar(b)).count();
        let valid = match &line[name..] {
            [b':', value @ ..] => name > 0 && value.iter().all(field_byte),
            _ => false,
        };
        if !valid {
            return Reference::Invalid;
        }
    }
}

/// The decoder agrees with the reference on every chunked input.
fn check_chunked_reference(max: usize, input: &[u8], run: &BodyRun) {
    let reference = reference_chunked(input, max);
    let agrees = match (&reference, run) {
        (Reference::Complete { used, body }, Ok((b, u, Step::Done))) => used == u && body == b,
        (Reference::TooLarge, Err(r)) => r.status == 413,
        // The decoder refuses a line at its first bad byte; the reference needs its end.
        (Reference::Invalid | Reference::Incomplete, Err(r)) => r.status != 413,
        (Reference::Incomplete, Ok((_, _, Step::NeedMore))) => true,
        _ => false,
    };
    assert!(agrees, "reference {reference:?}, decoder {run:?}");
}

/// `payload` encoded as a valid chunked body, chunk sizes, hex case, leading zeros,
/// extensions and trailers derived from `seed`, then a request: decoded to the payload.
fn check_chunked_roundtrip(payload: &[u8], max: usize, largest: usize, seed: u64) {
    const EXTENSIONS: [&str; 6] = ["", ";a", ";name=value", " ;q=\"x y\"", "\t;\t", ";é=ü"];
    const TRAILERS: [&str; 4] = ["", "X:1\r\n", "Expires: never\r\nA-b.c:\t v \r\n", "T:\r\n"];
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut wire = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let n = (1 + next() % 300) as usize;
        let (chunk, after) = rest.split_at(n.min(rest.len()));
        let r = next();
        let size = match r % 3 {
            0 => format!("{:x}", chunk.len()),
            1 => format!("{:X}", chunk.len()),
            _ => format!("{:016x}", chunk.len()),
        };
        wire.extend_from_slice(size.as_bytes());
        wire.extend_from_slice(EXTENSIONS[(r >> 8) as usize % EXTENSIONS.len()].as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
        rest = after;
    }
    let r = next();
    wire.extend_from_slice(["0", "000"][r as usize % 2].as_bytes());
    wire.extend_from_slice(EXTENSIONS[(r >> 8) as usize % EXTENSIONS.len()].as_bytes());
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(TRAILERS[(r >> 16) as usize % TRAILERS.len()].as_bytes());
    wire.extend_from_slice(b"\r\n");
    let body_len = wire.len();
    wire.extend_from_slice(NEXT_REQUEST);

    let run = check_body(Framing::Chunked, max, &wire, largest, seed);
    check_chunked_reference(max, &wire, &run);
    if payload.len() > max {
        assert!(matches!(&run, Err(r) if r.status == 413), "{run:?}");
    } else {
        assert_eq!(run, Ok((payload.to_vec(), body_len, Step::Done)));
    }
    // The same payload with its Content-Length.
    let mut wire = payload.to_vec();
    wire.extend_from_slice(NEXT_REQUEST);
    let run = check_body(
        Framing::Length(payload.len() as u64),
        max,
        &wire,
        largest,
        seed,
    );
    check_length(payload.len() as u64, max, &wire, &run);
}

/// `parse_form` and `form_to_line` on `bytes`.
fn check_form(bytes: &[u8]) {
    let pairs = match body::parse_form(bytes) {
        Ok(pairs) => pairs,
        Err(reason) => {
            check_form_reason(&reason);
            // Only an escape or UTF-8 can be wrong.
            assert!(bytes.contains(&b'%') || std::str::from_utf8(bytes).is_err());
            assert!(
                body::form_to_line(bytes).is_err(),
                "form_to_line of a bad form"
            );
            return;
        }
    };
    assert!(pairs.len() <= bytes.iter().filter(|&&b| b == b'&').count() + 1);
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(n, v)| format!("{}={}", form_encode(n), form_encode(v)))
        .collect();
    let again = body::parse_form(encoded.join("&").as_bytes());
    assert_eq!(again.as_ref(), Ok(&pairs), "re-encoded form");

    let line = match body::form_to_line(bytes) {
        Ok(line) => line,
        Err(reason) => {
            check_form_reason(&reason);
            return;
        }
    };
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let topics: Vec<&str> = pairs
        .iter()
        .filter(|(n, _)| n == "topic")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(!topics.is_empty(), "a line without topics");
    let json: Value = serde_json::from_slice(&line).expect("form_to_line gives JSON");
    let object = json.as_object().expect("a JSON object");
    assert!(
        object
            .keys()
            .all(|k| matches!(k.as_str(), "topic" | "topics" | "event" | "data"))
    );
    match line::decode_line(&line, MAX_TOPICS) {
        Ok(Line::Publish(p)) => {
            let mut distinct: Vec<&str> = Vec::new();
            for t in &topics {
                if !distinct.contains(t) {
                    distinct.push(t);
                }
            }
            let got: Vec<&str> = p.topics.iter().map(|t| t.as_ref()).collect();
            assert_eq!(got, distinct, "topics");
            assert_eq!(&*p.data, value("data").unwrap_or(""), "data");
            assert_eq!(p.event.as_deref(), value("type").filter(|t| !t.is_empty()));
            assert!(!p.is_final && p.key.is_none());
        }
        Ok(other) => panic!("a form line read as {other:?}"),
        Err(LineError(reason)) => assert!(one_line(&reason), "{reason:?}"),
    }
}

/// A form refusal is one line of at most 200 bytes (a client's name is echoed cut).
fn check_form_reason(reason: &str) {
    assert!(
        !reason.is_empty() && one_line(reason) && reason.len() <= 200,
        "reason of {} bytes: {reason:?}",
        reason.len()
    );
}

/// A form name or value as a browser encodes it: space as '+', every other byte that is not
/// alphanumeric or `*-._` as %XX.
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        match b {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || b"*-._".contains(&b) => out.push(char::from(b)),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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

// ---------------------------------------------------------------------------------------
// tls_record

/// The largest record body (after the 5-byte header) RFC 8446 §5.2 / RFC 5246 §6.2.3 allow.
fn max_body(tls13: bool) -> usize {
    if tls13 {
        MAX_PLAINTEXT + 256
    } else {
        MAX_PLAINTEXT + 2048
    }
}

/// An independent sealer (ring directly, RFC 8446 §5.2-5.3 and RFC 5288/7905) with the
/// sending keys of `Traffic::with_test_keys(suite, tls13, true)` (key bytes 2, IV bytes
/// 2 ^ 0x5a), so that it can make what `Traffic::seal` cannot: records past the size limit
/// and TLS 1.3 records with any padding. Where `Traffic::seal` can make the same record the
/// bytes are compared.
pub struct TestSealer {
    tls13: bool,
    alg: &'static aead::Algorithm,
    iv: [u8; 12],
    seq: u64,
}

impl TestSealer {
    pub fn new(suite: u8, tls13: bool) -> TestSealer {
        let alg = [
            &aead::AES_128_GCM,
            &aead::AES_256_GCM,
            &aead::CHACHA20_POLY1305,
        ][usize::from(suite % 3)];
        TestSealer {
            tls13,
            alg,
            iv: [2 ^ 0x5a; 12],
            seq: 0,
        }
    }

    /// One record: `plain` of `content_type` (TLS 1.3: inner type and `padding` zeros).
    pub fn seal(&mut self, content_type: u8, plain: &[u8], padding: usize) -> Vec<u8> {
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(self.alg, &[2u8; 32][..self.alg.key_len()]).expect("key"),
        );
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        let seq = self.seq;
        self.seq += 1;
        let mut out;
        if self.tls13 {
            let mut inner = plain.to_vec();
            inner.push(content_type);
            inner.resize(inner.len() + padding, 0);
            let len = u16::try_from(inner.len() + 16).expect("record length fits");
            out = vec![APPLICATION_DATA, 3, 3];
            out.extend_from_slice(&len.to_be_bytes());
            let aad = aead::Aad::from(<[u8; 5]>::try_from(&out[..]).expect("header"));
            key.seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aad,
                &mut inner,
            )
            .expect("seal");
            out.extend_from_slice(&inner);
        } else {
            let explicit = !std::ptr::eq(self.alg, &aead::CHACHA20_POLY1305);
            let len = plain.len() + 16 + if explicit { 8 } else { 0 };
            out = vec![content_type, 3, 3];
            out.extend_from_slice(&u16::try_from(len).expect("length").to_be_bytes());
            if explicit {
                out.extend_from_slice(&nonce[4..]);
            }
            let mut aad = [0u8; 13];
            aad[..8].copy_from_slice(&seq.to_be_bytes());
            aad[8] = content_type;
            aad[9] = 3;
            aad[10] = 3;
            aad[11..].copy_from_slice(&u16::try_from(plain.len()).expect("len").to_be_bytes());
            let mut body = plain.to_vec();
            key.seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut body,
            )
            .expect("seal");
            out.extend_from_slice(&body);
        }
        out
    }
}

/// How a record was changed on the wire after sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    /// A byte after the header flipped.
    Flip,
    /// The end cut off, the header's length fixed to match.
    Truncate,
    /// The header's length changed (the stream's framing moves).
    Length,
    /// The header's content type changed.
    Type,
    /// The header's version changed (authenticated in TLS 1.3 only: see `expect`).
    Version,
}

#[derive(Clone, Debug)]
struct Sent {
    bytes: Vec<u8>,
    /// The sequence number it was sealed with.
    seq: u64,
    content_type: u8,
    plain: Vec<u8>,
    padding: usize,
    tamper: Option<Tamper>,
}

/// What the receiver must make of the next record.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Data(Vec<u8>),
    /// Handled in the record layer (an ignored warning alert).
    Nothing,
    Closed,
    /// An error with one of these alerts (0: the peer's own fatal alert, answer nothing).
    Alert(&'static [u8]),
    /// Any error with an alert to send (not 0): a forged, changed or misplaced record.
    Refused,
    /// `record_len` refuses the header (longer than the RFC allows).
    TooLong,
}

/// The receiver's state the rules depend on.
#[derive(Default)]
struct Model {
    /// Records opened so far (the receiving sequence number).
    seq: u64,
    empty_in_a_row: u32,
    warnings: u32,
}

impl Model {
    /// RFC 8446 §5, RFC 5246 §6 and the limits ssehub shares with rustls
    /// (`MAX_EMPTY_IN_A_ROW`, four warning alerts), for a record sealed unchanged and in order.
    fn expect_valid(&mut self, tls13: bool, s: &Sent) -> Outcome {
        let (content_type, content): (u8, &[u8]) = if tls13 {
            let inner_len = s.plain.len() + 1 + s.padding;
            if inner_len + 16 > max_body(true) {
                return Outcome::TooLong;
            }
            if inner_len > MAX_PLAINTEXT + 1 {
                return Outcome::Alert(&[22]);
            }
            // The real type is the last non-zero byte of plain ‖ type ‖ zeros.
            let mut inner = s.plain.clone();
            inner.push(s.content_type);
            match inner.iter().rposition(|&b| b != 0) {
                None => return Outcome::Alert(&[10]),
                Some(i) => (inner[i], &s.plain[..i.min(s.plain.len())]),
            }
        } else {
            if !matches!(s.content_type, ALERT | HANDSHAKE | APPLICATION_DATA) {
                return Outcome::Alert(&[10]);
            }
            if s.plain.len() > MAX_PLAINTEXT {
                return Outcome::Alert(&[22]);
            }
            (s.content_type, &s.plain[..])
        };
        if content.is_empty() {
            match content_type {
                APPLICATION_DATA => {
                    self.empty_in_a_row += 1;
                    if self.empty_in_a_row > u32::from(MAX_EMPTY_IN_A_ROW) {
                        return Outcome::Alert(&[10]);
                    }
                }
                // RFC 8446 §5.1 / RFC 5246 §6.2.1: never an empty handshake or alert record.
                ALERT | HANDSHAKE => return Outcome::Alert(&[50]),
                _ => return Outcome::Alert(&[10, 50]),
            }
        } else {
            self.empty_in_a_row = 0;
        }
        match content_type {
            APPLICATION_DATA => Outcome::Data(content.to_vec()),
            ALERT => match content {
                [_, 0] => Outcome::Closed,
                [1, d] if !tls13 || *d == 90 => {
                    self.warnings += 1;
                    if self.warnings > 4 {
                        Outcome::Alert(&[10])
                    } else {
                        Outcome::Nothing
                    }
                }
                [1, _] => Outcome::Alert(&[50]),
                [_, _] => Outcome::Alert(&[0]),
                _ => Outcome::Alert(&[50]),
            },
            // RFC 8446 §4.6.3: a request other than 0/1 is illegal_parameter. A valid
            // KeyUpdate is refused with the test keys (no key schedule): unexpected_message.
            HANDSHAKE if tls13 => match content {
                [24, 0, 0, 1, r, ..] if *r > 1 => Outcome::Alert(&[47]),
                [24, 0, 0, 1, _, ..] => Outcome::Alert(&[10]),
                _ => Outcome::Alert(&[10, 50]),
            },
            // TLS 1.2: renegotiation refused.
            HANDSHAKE => Outcome::Alert(&[100, 10]),
            _ => Outcome::Alert(&[10]),
        }
    }
}

/// The script's bytes, 0 once they run out.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// Records sealed and bytes on the wire in one script at most (a few KiB of input).
const MAX_RECORDS: usize = 300;
const MAX_WIRE: usize = 1 << 20;

/// Target `tls_record`: a script of records sealed by the client end of a test session and
/// read by the other end as the connection does (bytes accumulated in chunks, whole records
/// taken by `record_len`, each `open`ed). Byte 0: suite (`% 3`: AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305) and version (bit 7 set: TLS 1.2). Then operations (`op % 8`):
/// 0-4 seal one record (type: `t % 8` 0-2 application data, 3 alert, 4 handshake, 5
/// change_cipher_spec, 6 type 0, 7 the next byte; length 0..=16386; its first 8 bytes from
/// the script; TLS 1.3 padding 0..=32 KiB; then possibly changed: a body byte flipped,
/// truncated, header length/type/version changed, sent twice, or held back behind the next
/// record), 5 a burst of 1-40 empty application-data records (TLS 1.3: padding only, if
/// asked), 6 a chunk size for splitting the stream (1-32 KiB, cycled; default: all at once),
/// 7 release a held-back record.
///
/// Properties: no panic; the independent sealer and `Traffic::seal` make the same bytes;
/// `record_len` says `None` exactly while the header or body is incomplete and otherwise
/// the header's length, never more than the bytes there, and refuses only headers past the
/// RFC's limit; every record sealed, unchanged and in order, opens as the rules say
/// (`Model::expect_valid`: its exact plaintext, an ignored warning, close_notify, or the
/// alert the rule names), and the first error or close ends the script; a changed, replayed
/// or reordered record is refused with an alert to send (never accepted, never alert 0);
/// never more than `MAX_EMPTY_IN_A_ROW` empty records in a row are accepted.
pub fn tls_record(input: &[u8]) {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let suite = first % 3;
    let tls13 = first & 0x80 == 0;
    let mut script = Script(rest);
    let mut sealer = TestSealer::new(suite, tls13);
    let mut peer = Traffic::with_test_keys(suite, tls13, true);
    let mut wire: Vec<Sent> = Vec::new();
    let mut held: Option<Sent> = None;
    let mut chunks: Vec<usize> = Vec::new();
    let mut wire_bytes = 0usize;

    // One record sealed by both sealers (when `Traffic::seal` can make it).
    let mut seal = |content_type: u8, plain: Vec<u8>, padding: usize| -> Sent {
        let seq = sealer.seq;
        let bytes = sealer.seal(content_type, &plain, padding);
        let mut theirs = Vec::new();
        let same = if !tls13 || padding == 0 {
            (plain.len() <= MAX_PLAINTEXT).then(|| (content_type, plain.clone()))
        } else {
            // Padding through `seal`: type 0, the real type and padding - 1 zeros inside.
            (plain.len() + padding <= MAX_PLAINTEXT).then(|| {
                let mut p = plain.clone();
                p.push(content_type);
                p.resize(p.len() + padding - 1, 0);
                (0, p)
            })
        };
        match same {
            Some((t, p)) => {
                peer.seal(t, &p, &mut theirs).expect("Traffic::seal");
                assert_eq!(theirs, bytes, "Traffic::seal and the RFC's record differ");
            }
            // Keep the sequence numbers in step.
            None => peer.seal(APPLICATION_DATA, b"", &mut theirs).expect("seal"),
        }
        Sent {
            bytes,
            seq,
            content_type,
            plain,
            padding,
            tamper: None,
        }
    };

    while !script.0.is_empty() && wire.len() < MAX_RECORDS && wire_bytes < MAX_WIRE {
        let op = script.byte();
        match op % 8 {
            0..=4 => {
                let t = script.byte();
                let content_type = match t % 8 {
                    0..=2 => APPLICATION_DATA,
                    3 => ALERT,
                    4 => HANDSHAKE,
                    5 => 20,
                    6 => 0,
                    _ => script.byte(),
                };
                let l = script.byte();
                let len = match l {
                    0..=0x7f => usize::from(l),
                    0x80..=0xfb => {
                        (usize::from(l & 0x7f) << 8 | usize::from(script.byte()))
                            % (MAX_PLAINTEXT + 3)
                    }
                    _ => MAX_PLAINTEXT - 1 + usize::from(l - 0xfc),
                };
                let mut plain: Vec<u8> = (0..len.min(8)).map(|_| script.byte()).collect();
                plain.extend((plain.len()..len).map(|i| (i % 251) as u8 + 1));
                let padding = if tls13 {
                    match script.byte() {
                        p @ 0..=0xbf => usize::from(p & 0x0f),
                        p => usize::from(p - 0xbf) * 512,
                    }
                } else {
                    0
                };
                let mut sent = seal(content_type, plain, padding);
                let body = sent.bytes.len() - 5;
                let m = script.byte();
                match m % 16 {
                    9 => {
                        let pos = usize::from(u16::from_be_bytes([script.byte(), script.byte()]));
                        sent.bytes[5 + pos % body] ^= script.byte() | 1;
                        sent.tamper = Some(Tamper::Flip);
                    }
                    10 => {
                        let cut = usize::from(script.byte()) % body + 1;
                        sent.bytes.truncate(sent.bytes.len() - cut);
                        let len = u16::try_from(body - cut).expect("length");
                        sent.bytes[3..5].copy_from_slice(&len.to_be_bytes());
                        sent.tamper = Some(Tamper::Truncate);
                    }
                    11 => {
                        let d = script.byte();
                        let old = u16::from_be_bytes([sent.bytes[3], sent.bytes[4]]);
                        let new = match d {
                            0xff => u16::MAX,
                            0x80..=0xfe => old.saturating_sub(u16::from(d & 0x7f) + 1),
                            _ => old.saturating_add(u16::from(d) + 1),
                        };
                        if new != old {
                            sent.bytes[3..5].copy_from_slice(&new.to_be_bytes());
                            sent.tamper = Some(Tamper::Length);
                        }
                    }
                    12 => {
                        let mut t = script.byte();
                        if t == sent.bytes[0] {
                            t ^= 0x80;
                        }
                        sent.bytes[0] = t;
                        sent.tamper = Some(Tamper::Type);
                    }
                    13 => {
                        let v = [script.byte(), script.byte()];
                        if v != [3, 3] {
                            sent.bytes[1..3].copy_from_slice(&v);
                            sent.tamper = Some(Tamper::Version);
                        }
                    }
                    _ => {}
                }
                wire_bytes += sent.bytes.len();
                match m % 16 {
                    // Sent twice: the copy is a replay.
                    14 => {
                        wire.push(sent.clone());
                        wire.push(sent);
                    }
                    // Held back behind the next record.
                    15 => {
                        if let Some(h) = held.replace(sent) {
                            wire.push(h);
                        }
                        continue;
                    }
                    _ => wire.push(sent),
                }
                if let Some(h) = held.take() {
                    wire.push(h);
                }
            }
            5 => {
                let n = script.byte() % 40 + 1;
                let p = script.byte();
                let padding = if tls13 && p & 4 != 0 {
                    usize::from(p % 4) + 1
                } else {
                    0
                };
                for _ in 0..n {
                    let sent = seal(APPLICATION_DATA, Vec::new(), padding);
                    wire_bytes += sent.bytes.len();
                    wire.push(sent);
                }
                if let Some(h) = held.take() {
                    wire.push(h);
                }
            }
            6 => {
                let c = script.byte();
                chunks.push(if c & 0x80 == 0 {
                    usize::from(c) + 1
                } else {
                    (usize::from(c & 0x7f) + 1) * 256
                });
            }
            _ => {
                if let Some(h) = held.take() {
                    wire.push(h);
                }
            }
        }
    }
    wire.extend(held);
    read_records(suite, tls13, &wire, &chunks);
}

/// The reading end: the stream of `wire` fed in `chunks` (cycled), records framed by
/// `record_len` and opened, each checked against the model.
fn read_records(suite: u8, tls13: bool, wire: &[Sent], chunks: &[usize]) {
    let stream: Vec<u8> = wire.iter().flat_map(|s| s.bytes.iter().copied()).collect();
    let mut rx = Traffic::with_test_keys(suite, tls13, false);
    let mut model = Model::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut next = 0usize; // index in `wire` of the record at the front of `buf`
    let mut fed = 0usize;
    let mut empties = 0u32;
    let mut chunk_sizes = chunks.iter().copied().cycle();
    while fed < stream.len() {
        let n = chunk_sizes
            .next()
            .unwrap_or(stream.len())
            .min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        while !buf.is_empty() {
            let header_len =
                (buf.len() >= 5).then(|| usize::from(u16::from_be_bytes([buf[3], buf[4]])));
            let claim = rx.record_len(&buf);
            let sent = wire
                .get(next)
                .expect("a record starts at the front of the buffer");
            let length_changed = sent.tamper == Some(Tamper::Length);
            match claim {
                Err(_) => {
                    let h = header_len.expect("record_len refused a short buffer");
                    assert!(h > max_body(tls13), "record_len refused a length of {h}");
                    // Past the limit as sealed (not made so by a change): the model agrees.
                    if sent.seq == model.seq && sent.tamper.is_none() {
                        let expected = model.expect_valid(tls13, sent);
                        assert_eq!(expected, Outcome::TooLong, "record_len refused {sent:?}");
                    }
                    return;
                }
                Ok(None) => {
                    if let Some(h) = header_len {
                        assert!(h <= max_body(tls13), "record_len took a length of {h}");
                        assert!(buf.len() < 5 + h, "a whole record not taken");
                    }
                    break;
                }
                Ok(Some(n)) => {
                    let h = header_len.expect("a record without a header");
                    assert!(h <= max_body(tls13), "record_len took a length of {h}");
                    assert_eq!(n, 5 + h, "record_len is not the header's length");
                    assert!(
                        n <= buf.len(),
                        "record_len claims {n} of {} bytes",
                        buf.len()
                    );
                    let mut record: Vec<u8> = buf.drain(..n).collect();
                    next += 1;
                    let expected = if length_changed {
                        Outcome::Refused
                    } else {
                        assert_eq!(record, sent.bytes, "framing moved without a length change");
                        model.expect_valid_or_refused(tls13, sent)
                    };
                    let got = rx.open(&mut record, &mut Vec::new());
                    let ok = match (&expected, &got) {
                        (Outcome::Data(want), Ok(Record::Data(r))) => *want == record[r.clone()],
                        (Outcome::Nothing, Ok(Record::Nothing)) => true,
                        (Outcome::Closed, Ok(Record::Closed)) => true,
                        (Outcome::Alert(allowed), Err((a, _))) => allowed.contains(a),
                        (Outcome::Refused, Err((a, _))) => *a != 0,
                        _ => false,
                    };
                    // A TLS 1.2 header's version is not authenticated (the additional data
                    // holds the negotiated version, as in rustls): changed, the record opens
                    // as sealed (`expected`) or is refused.
                    let lenient = !tls13 && sent.tamper == Some(Tamper::Version);
                    let ok = ok || (lenient && matches!(&got, Err((a, _)) if *a != 0));
                    assert!(
                        ok,
                        "record {} (sealed as {}, tamper {:?}): expected {expected:?}, got {}",
                        next - 1,
                        sent.seq,
                        sent.tamper,
                        describe(&got, &record)
                    );
                    match got {
                        Ok(Record::Data(r)) => {
                            if r.is_empty() {
                                empties += 1;
                                assert!(
                                    empties <= u32::from(MAX_EMPTY_IN_A_ROW),
                                    "{empties} empty records accepted in a row"
                                );
                            } else {
                                empties = 0;
                            }
                            model.seq += 1;
                        }
                        // An ignored warning alert: a record with content, so the row
                        // of empty records is broken (as in rustls).
                        Ok(Record::Nothing) => {
                            empties = 0;
                            model.seq += 1;
                        }
                        Ok(Record::Closed) | Err(_) => return,
                    }
                }
            }
        }
    }
    // The stream ended without an error or a close: every record was taken, or the one at
    // the front is incomplete because its header's length was changed.
    if !buf.is_empty() {
        let sent = &wire[next];
        assert_eq!(
            sent.tamper,
            Some(Tamper::Length),
            "record {next} never taken: {sent:?}"
        );
    } else {
        assert_eq!(next, wire.len(), "records left over");
    }
}

impl Model {
    /// `expect_valid` for a record sealed unchanged and in order; `Refused` otherwise (a
    /// TLS 1.2 record whose header's version alone changed: `expect_valid`, see the caller).
    fn expect_valid_or_refused(&mut self, tls13: bool, s: &Sent) -> Outcome {
        let unchanged = s.tamper.is_none() || (!tls13 && s.tamper == Some(Tamper::Version));
        if s.seq != self.seq || !unchanged {
            return Outcome::Refused;
        }
        self.expect_valid(tls13, s)
    }
}

fn describe(got: &Result<Record, (u8, std::io::Error)>, record: &[u8]) -> String {
    match got {
        Ok(Record::Data(r)) => format!(
            "Data({} bytes: {:?})",
            r.len(),
            &record[r.clone()][..r.len().min(16)]
        ),
        Ok(Record::Nothing) => "Nothing".into(),
        Ok(Record::Closed) => "Closed".into(),
        Err((a, e)) => format!("alert {a} ({e})"),
    }
}
