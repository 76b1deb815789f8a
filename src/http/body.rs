//! Request bodies of `POST /publish`: the framing (`Content-Length` or chunked, RFC 9112
//! §6.2 and §7.1) decoded as bytes arrive, and the Mercure-compatible form body
//! (`application/x-www-form-urlencoded`) turned into one ingest line.
//! Pure code: bytes in, decoded bytes or a refusal out; no I/O, no panic on any input.

use std::borrow::Cow;

/// Longest chunk-size line (size, extensions and CRLF), in bytes: one more is a 400.
pub const MAX_CHUNK_LINE: u16 = 4096;
/// Largest trailer section (every field line and the final CRLF), in bytes: one more is a 431.
pub const MAX_TRAILER: u16 = 8192;
/// Most hex digits of a chunk size (leading zeros count): 16 hold any `u64`, so a size
/// never overflows.
pub const MAX_SIZE_DIGITS: u8 = 16;

/// How the request head says its body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`: exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A refused body: answer `status` with `reason` (one line), then close. The same shape as
/// `request::Reject`, with a reason that may hold a number (the 413 names the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: Cow<'static, str>,
}

/// What [`BodyDecoder::decode`] reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The body is not complete: call again with the bytes that arrive next.
    NeedMore,
    /// The body is complete; the bytes after it are not the body's.
    Done,
}

/// Decodes one request body incrementally. O(1) state (32 bytes): a partial chunk-size
/// line, CRLF or trailer field is held as the counters below, never as bytes, so the
/// decoder takes every byte it is given until the body ends.
///
/// Chunked bodies follow RFC 9112 §7.1 strictly: every line (chunk size, the CRLF after
/// chunk data, trailer fields, the final empty line) must end in CRLF; a bare LF or CR is
/// refused, never guessed at, so the body's end is found exactly where a strict peer (a
/// proxy in front) finds it. Chunk extensions (`;name[=value]`, after optional spaces or
/// tabs) and trailer fields (`name:value`) are checked for their characters and ignored.
#[derive(Debug)]
pub struct BodyDecoder {
    /// `Length`: body bytes left; chunk-size phases: the size read so far; `ChunkData`: the
    /// chunk's bytes left.
    value: u64,
    /// Decoded body bytes so far.
    total: u64,
    /// `publish.max_body_bytes`.
    max: u64,
    /// Bytes of the current chunk-size line, or of the trailer section, so far.
    line: u16,
    /// Hex digits of the current chunk size.
    digits: u8,
    phase: Phase,
}

/// Where the decoder is, named after RFC 9112's grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `Content-Length` body: `value` bytes left.
    Length,
    /// `chunk-size`: hex digits.
    ChunkSize,
    /// `BWS` after the size: only `;` (an extension) may follow.
    SizeSpace,
    /// `chunk-ext`: skipped up to CR; no control bytes but HTAB.
    ChunkExt,
    /// The chunk-size line's CR was seen; its LF must follow.
    SizeLf,
    /// `chunk-data`: `value` bytes left.
    ChunkData,
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// `trailer-section`: at the start of a field line or of the final CRLF.
    TrailerLine,
    /// A trailer field's name (a token), up to `:`.
    TrailerName,
    /// A trailer field's value, up to CR.
    TrailerValue,
    /// A trailer field's CR was seen; its LF must follow.
    TrailerLf,
    /// The final CRLF's CR was seen.
    EndLf,
    Done,
    /// A refusal was returned; nothing more is read.
    Failed,
}

const fn refused(status: u16, reason: &'static str) -> Refused {
    Refused {
        status,
        reason: Cow::Borrowed(reason),
    }
}

const MALFORMED_SIZE: Refused = refused(400, "malformed chunk size");
const TOO_MANY_DIGITS: Refused = refused(400, "chunk size has more than 16 hex digits");
const MALFORMED_EXTENSION: Refused = refused(400, "malformed chunk extension");
const SIZE_LINE_TOO_LONG: Refused = refused(400, "chunk size line longer than 4096 bytes");
const SIZE_LINE_END: Refused = refused(400, "chunk size line not ended by CRLF");
const DATA_END: Refused = refused(400, "chunk data not followed by CRLF");
const MALFORMED_TRAILER: Refused = refused(400, "malformed trailer field");
const TRAILER_LINE_END: Refused = refused(400, "trailer field not ended by CRLF");
const TRAILER_TOO_LARGE: Refused = refused(431, "trailer section larger than 8192 bytes");
const BODY_END: Refused = refused(400, "chunked body not ended by CRLF");
const ALREADY_REFUSED: Refused = refused(400, "request body already refused");

/// The 413 of a body over `max` decoded bytes.
fn too_large(max: u64) -> Refused {
    Refused {
        status: 413,
        reason: Cow::Owned(format!("request body larger than {max} bytes")),
    }
}

impl BodyDecoder {
    /// A decoder for one body of at most `max` decoded bytes (`publish.max_body_bytes`). A
    /// declared `Content-Length` over `max` is refused at once (413), before any body byte
    /// arrives; a chunked body is refused as soon as a chunk-size line announces more.
    pub fn new(framing: Framing, max: usize) -> Result<BodyDecoder, Refused> {
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        let (phase, value) = match framing {
            Framing::Length(len) if len > max => return Err(too_large(max)),
            Framing::Length(0) => (Phase::Done, 0),
            Framing::Length(len) => (Phase::Length, len),
            Framing::Chunked => (Phase::ChunkSize, 0),
        };
        Ok(BodyDecoder {
            value,
            total: 0,
            max,
            line: 0,
            digits: 0,
            phase,
        })
    }

    /// Takes a prefix of `input` (the bytes received after the head, or after what earlier
    /// calls took), appends the decoded body bytes to `body`, and returns how many input
    /// bytes it took and whether the body is complete.
    ///
    /// What the caller does with the rest: with `NeedMore` the decoder has taken all of
    /// `input` (`consumed == input.len()`; nothing is to be kept or passed again). With
    /// `Done`, `input[consumed..]` is not the body's: it is the start of the next
    /// pipelined request, to be kept untouched. After `Done` a call takes nothing and
    /// returns `(0, Done)`. After a refusal every call refuses (the caller answers the
    /// first refusal and closes).
    ///
    /// Refusals: 400 for a malformed chunk size (no digit, a non-hex byte, more than 16
    /// digits), chunk extension, chunk-size line over 4096 bytes, missing CRLF after chunk
    /// data or any line, or a malformed trailer field; 431 for a trailer section over 8192
    /// bytes; 413 as soon as a chunk-size line would take the body over `max`.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(usize, Step), Refused> {
        match self.run(input, body) {
            Ok(consumed) => {
                let step = match self.phase {
                    Phase::Done => Step::Done,
                    _ => Step::NeedMore,
                };
                Ok((consumed, step))
            }
            Err(refusal) => {
                self.phase = Phase::Failed;
                Err(refusal)
            }
        }
    }

    /// The body is complete.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Decoded body bytes so far.
    pub fn decoded(&self) -> u64 {
        self.total
    }

    /// Reads `input` until it ends or the body does; returns the bytes taken.
    fn run(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, Refused> {
        let mut rest = input;
        loop {
            match self.phase {
                Phase::Failed => return Err(ALREADY_REFUSED),
                Phase::Done => break,
                Phase::Length | Phase::ChunkData => {
                    // Whole runs of body bytes at once.
                    let take = usize::try_from(self.value)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let (data, after) = rest.split_at(take);
                    body.extend_from_slice(data);
                    rest = after;
                    // `take` is at most `value`, and `total + value <= max` (checked when
                    // the length or the chunk size was read).
                    self.value -= take as u64;
                    self.total += take as u64;
                    if self.value > 0 {
                        break;
                    }
                    self.phase = match self.phase {
                        Phase::Length => Phase::Done,
                        _ => Phase::DataCr,
                    };
                }
                _ => {
                    let Some((&b, after)) = rest.split_first() else {
                        break;
                    };
                    self.byte(b)?;
                    rest = after;
                }
            }
        }
        Ok(input.len() - rest.len())
    }

    /// One byte of a chunk-size line, a CRLF or the trailer section.
    fn byte(&mut self, b: u8) -> Result<(), Refused> {
        match self.phase {
            Phase::ChunkSize | Phase::SizeSpace | Phase::ChunkExt | Phase::SizeLf => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(SIZE_LINE_TOO_LONG);
                }
                self.size_line_byte(b)
            }
            Phase::DataCr | Phase::DataLf => {
                match (self.phase, b) {
                    (Phase::DataCr, b'\r') => self.phase = Phase::DataLf,
                    (Phase::DataLf, b'\n') => self.start_size_line(),
                    _ => return Err(DATA_END),
                }
                Ok(())
            }
            _ => {
                self.line += 1;
                if self.line > MAX_TRAILER {
                    return Err(TRAILER_TOO_LARGE);
                }
                self.trailer_byte(b)
            }
        }
    }

    fn start_size_line(&mut self) {
        self.phase = Phase::ChunkSize;
        self.value = 0;
        self.digits = 0;
        self.line = 0;
    }

    /// `chunk-size [ chunk-ext ] CRLF`.
    fn size_line_byte(&mut self, b: u8) -> Result<(), Refused> {
        self.phase = match (self.phase, b) {
            (Phase::ChunkSize, _) if b.is_ascii_hexdigit() => {
                if self.digits == MAX_SIZE_DIGITS {
                    return Err(TOO_MANY_DIGITS);
                }
                self.digits += 1;
                self.value = (self.value << 4) | u64::from(hex_value(b));
                Phase::ChunkSize
            }
            (Phase::ChunkSize, _) if self.digits == 0 => return Err(MALFORMED_SIZE),
            (Phase::ChunkSize | Phase::SizeSpace | Phase::ChunkExt, b'\n') => {
                return Err(SIZE_LINE_END);
            }
            (Phase::ChunkSize | Phase::SizeSpace, b' ' | b'\t') => Phase::SizeSpace,
            (Phase::ChunkSize | Phase::SizeSpace, b';') => Phase::ChunkExt,
            (Phase::ChunkSize, b'\r') => Phase::SizeLf,
            (Phase::ChunkSize | Phase::SizeSpace, _) => return Err(MALFORMED_SIZE),
            (Phase::ChunkExt, b'\r') => Phase::SizeLf,
            (Phase::ChunkExt, _) if is_field_byte(b) => Phase::ChunkExt,
            (Phase::ChunkExt, _) => return Err(MALFORMED_EXTENSION),
            (Phase::SizeLf, b'\n') => return self.size_line_done(),
            _ => return Err(SIZE_LINE_END),
        };
        Ok(())
    }

    /// A whole chunk-size line was read: its chunk, or the trailer after the last chunk.
    fn size_line_done(&mut self) -> Result<(), Refused> {
        self.line = 0;
        if self.value == 0 {
            self.phase = Phase::TrailerLine;
            return Ok(());
        }
        // `total <= max` always holds.
        if self.value > self.max - self.total {
            return Err(too_large(self.max));
        }
        self.phase = Phase::ChunkData;
        Ok(())
    }

    /// `*( field-line CRLF ) CRLF`, each field line `token ":" value` (no obs-fold).
    fn trailer_byte(&mut self, b: u8) -> Result<(), Refused> {
        self.phase = match (self.phase, b) {
            (Phase::TrailerLine, b'\r') => Phase::EndLf,
            (Phase::TrailerLine | Phase::TrailerName, _) if is_tchar(b) => Phase::TrailerName,
            (Phase::TrailerName, b':') => Phase::TrailerValue,
            (Phase::TrailerValue, b'\r') => Phase::TrailerLf,
            (Phase::TrailerValue, _) if is_field_byte(b) => Phase::TrailerValue,
            (Phase::TrailerLf, b'\n') => Phase::TrailerLine,
            (Phase::TrailerLf, _) => return Err(TRAILER_LINE_END),
            (Phase::EndLf, b'\n') => Phase::Done,
            (Phase::EndLf, _) => return Err(BODY_END),
            _ => return Err(MALFORMED_TRAILER),
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// RFC 9110 `tchar`, the bytes of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte of a field value or chunk extension: HTAB, SP, VCHAR, obs-text; no other control.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

// ---------------------------------------------------------------------------
// Form bodies.

/// How much of a client's field name a refusal may echo, in bytes.
const ECHO_MAX: usize = 64;

/// Decodes an `application/x-www-form-urlencoded` body, `a=b&c=d` (`+` is a space, `%XX`
/// a byte, the result UTF-8), into (name, value) pairs in order. Empty pairs (`&&`) are
/// skipped; a pair without `=` has an empty value. Err(one-line reason) on a bad escape
/// (`%` not followed by two hex digits) or a name or value that is not UTF-8 once decoded.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for pair in body.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
        let mut halves = pair.splitn(2, |&b| b == b'=');
        let name = halves.next().unwrap_or_default();
        let value = halves.next().unwrap_or_default();
        let name = form_decode(name).map_err(|e| format!("form field name: {e}"))?;
        let value = form_decode(value).map_err(|e| format!("form field {}: {e}", quoted(&name)))?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// One name or value of a form: `+` → space, `%XX` → the byte, then UTF-8.
fn form_decode(raw: &[u8]) -> Result<String, &'static str> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().filter(|h| h.is_ascii_hexdigit());
                let lo = bytes.next().filter(|l| l.is_ascii_hexdigit());
                match (hi, lo) {
                    (Some(&hi), Some(&lo)) => (hex_value(hi) << 4) | hex_value(lo),
                    _ => return Err("bad %-escape (want % and two hex digits)"),
                }
            }
            b => b,
        });
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once %-decoded")
}

/// A client's name as a quoted, escaped (ASCII, one line) string of at most ECHO_MAX bytes
/// between the quotes (`...` after them marks a cut): escaping makes a NUL five bytes.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(ECHO_MAX + 8);
    out.push('"');
    let mut cut = false;
    for c in text.chars() {
        let escaped = c.escape_default();
        if out.len() - 1 + escaped.len() > ECHO_MAX {
            cut = true;
            break;
        }
        out.extend(escaped);
    }
    out.push('"');
    if cut {
        out.push_str("...");
    }
    out
}

const PRIVATE_REFUSED: &str =
    "field \"private\" is not supported: ssehub decides private topics by auth.private";
const ID_REFUSED: &str = "field \"id\" is not supported: ssehub assigns ids";
const RETRY_REFUSED: &str = "field \"retry\" is not supported";

/// Maps a Mercure publish form to one ssehub ingest line. Mercure's fields: `topic`
/// (repeatable, at least one), `data` (default ""), `type` (the SSE event type → `event`;
/// empty means none, as in Mercure). `data` and `type` may be given once. Mercure's
/// `private`, `retry` and `id` are refused with a reason, never ignored, and so is any
/// other name. Returns the JSON line (no newline), which `crate::ingest::line::decode_line`
/// then checks with the ingest's rules (topic names, their number, the event type).
pub fn form_to_line(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut topics: Vec<String> = Vec::new();
    let mut data: Option<String> = None;
    let mut event: Option<String> = None;
    for (name, value) in parse_form(body)? {
        let once = match name.as_str() {
            "topic" => {
                topics.push(value);
                continue;
            }
            "data" => &mut data,
            "type" => &mut event,
            "private" => return Err(PRIVATE_REFUSED.into()),
            "id" => return Err(ID_REFUSED.into()),
            "retry" => return Err(RETRY_REFUSED.into()),
            other => {
                return Err(format!(
                    "unknown field {} (topic, data, type)",
                    quoted(other)
                ));
            }
        };
        if once.is_some() {
            return Err(format!("field {} given more than once", quoted(&name)));
        }
        *once = Some(value);
    }
    let (topic, topics) = match topics.as_slice() {
        [] => return Err("missing field \"topic\"".into()),
        [one] => (Some(one.as_str()), None),
        many => (None, Some(many)),
    };
    let line = crate::publish::WireEvent {
        topic,
        topics,
        event: event.as_deref().filter(|e| !e.is_empty()),
        data: data.as_deref().unwrap_or_default(),
        is_final: false,
    };
    serde_json::to_vec(&line).map_err(|e| format!("cannot write the ingest line: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::line::{Line, Publish, decode_line};

    const MAX: usize = 64;

    /// Feeds `input` at once; returns the body, the bytes taken and the step.
    fn whole(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, usize, Step), Refused> {
        let mut d = BodyDecoder::new(framing, MAX)?;
        let mut body = Vec::new();
        let (used, step) = d.decode(input, &mut body)?;
        Ok((body, used, step))
    }

    /// Feeds `input` one byte at a time, as a caller keeping unconsumed bytes would.
    fn bytewise(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, usize, Step), Refused> {
        let mut d = BodyDecoder::new(framing, MAX)?;
        let mut body = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        let mut used = 0;
        for &b in input {
            held.push(b);
            let (n, step) = d.decode(&held, &mut body)?;
            held.drain(..n);
            used += n;
            if step == Step::Done {
                return Ok((body, used, step));
            }
            assert!(held.is_empty(), "NeedMore leaves nothing to keep");
        }
        Ok((body, used, Step::NeedMore))
    }

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, usize, Step), Refused> {
        let at_once = whole(Framing::Chunked, input);
        assert_eq!(at_once, bytewise(Framing::Chunked, input), "{input:?}");
        at_once
    }

    fn refusal(input: &[u8]) -> Refused {
        match chunked(input) {
            Err(r) => r,
            other => panic!(
                "{:?}: expected a refusal, got {other:?}",
                input.escape_ascii()
            ),
        }
    }

    fn assert_refused(input: &[u8], status: u16, reason: &str) {
        let r = refusal(input);
        assert_eq!((r.status, r.reason.as_ref()), (status, reason), "{input:?}");
    }

    #[test]
    fn decoder_is_small() {
        assert!(std::mem::size_of::<BodyDecoder>() <= 32);
    }

    #[test]
    fn content_length_takes_exactly_its_bytes() {
        let got = whole(Framing::Length(5), b"hello");
        assert_eq!(got, Ok((b"hello".to_vec(), 5, Step::Done)));
        // Short: everything taken, more needed; the rest completes it.
        let mut d = BodyDecoder::new(Framing::Length(5), MAX).unwrap();
        let mut body = Vec::new();
        assert_eq!(d.decode(b"hel", &mut body), Ok((3, Step::NeedMore)));
        assert_eq!(d.decode(b"", &mut body), Ok((0, Step::NeedMore)));
        assert_eq!(d.decode(b"loGET /", &mut body), Ok((2, Step::Done)));
        assert_eq!(body, b"hello");
        assert!(d.is_done());
        assert_eq!(d.decoded(), 5);
        // After Done nothing more is taken.
        assert_eq!(d.decode(b"more", &mut body), Ok((0, Step::Done)));
        assert_eq!(body, b"hello");
        // An empty body is complete before any byte.
        assert_eq!(
            whole(Framing::Length(0), b"GET"),
            Ok((Vec::new(), 0, Step::Done))
        );
    }

    #[test]
    fn content_length_over_max_is_refused_before_the_body() {
        let r = BodyDecoder::new(Framing::Length(65), MAX).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (413, "request body larger than 64 bytes")
        );
        assert!(BodyDecoder::new(Framing::Length(u64::MAX), MAX).is_err());
        assert!(BodyDecoder::new(Framing::Length(64), MAX).is_ok());
    }

    #[test]
    fn pipelined_bytes_after_the_body_are_left() {
        let input = b"abcGET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            whole(Framing::Length(3), input),
            Ok((b"abc".to_vec(), 3, Step::Done))
        );
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(chunked(input), Ok((b"abc".to_vec(), 13, Step::Done)));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let input = b"4;name=value;q=\"a b\"\r\nWiki\r\n5 ; ext\r\npedia\r\n\
            E\r\n in\r\n\r\nchunks.\r\n0;last\r\nExpires: never\r\nX-Check:\t1 \r\n\r\nNEXT";
        let (body, used, step) = chunked(input).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(step, Step::Done);
        assert_eq!(&input[used..], b"NEXT");
        // Upper and lower case hex, leading zeros, an empty trailer value.
        let (body, _, step) = chunked(b"00A\r\n0123456789\r\n0000\r\nX:\r\n\r\n").unwrap();
        assert_eq!((body.as_slice(), step), (&b"0123456789"[..], Step::Done));
    }

    #[test]
    fn chunked_fed_in_pieces_equals_fed_at_once() {
        let input = b"3;a=b\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\nrest";
        let (body, used, step) = chunked(input).unwrap();
        for cut in 0..used {
            let mut d = BodyDecoder::new(Framing::Chunked, MAX).unwrap();
            let mut got = Vec::new();
            let (a, first) = d.decode(&input[..cut], &mut got).unwrap();
            assert_eq!((a, first), (cut, Step::NeedMore), "cut at {cut}");
            let (b, second) = d.decode(&input[cut..], &mut got).unwrap();
            assert_eq!(
                (got.as_slice(), a + b, second),
                (body.as_slice(), used, step)
            );
        }
    }

    #[test]
    fn malformed_chunk_sizes_are_400() {
        assert_refused(b"zz\r\n", 400, "malformed chunk size");
        assert_refused(b"\r\n", 400, "malformed chunk size");
        assert_refused(b"-1\r\n", 400, "malformed chunk size");
        assert_refused(b"+1\r\n", 400, "malformed chunk size");
        assert_refused(b"0x1\r\n", 400, "malformed chunk size");
        assert_refused(b" 1\r\n", 400, "malformed chunk size");
        assert_refused(b"1 \r\nx\r\n", 400, "malformed chunk size");
        assert_refused(b";e\r\n", 400, "malformed chunk size");
        let digits17 = b"00000000000000001\r\nx\r\n0\r\n\r\n";
        assert_refused(digits17, 400, "chunk size has more than 16 hex digits");
        // 16 digits are read (and this size is over the limit, so a 413).
        assert_eq!(refusal(b"FFFFFFFFFFFFFFFF\r\n").status, 413);
        assert_eq!(
            chunked(b"0000000000000001\r\nx\r\n0\r\n\r\n").unwrap().0,
            b"x"
        );
        // Bare LF or CR, and control bytes in an extension.
        assert_refused(b"1\nx\r\n", 400, "chunk size line not ended by CRLF");
        assert_refused(b"1\rx", 400, "chunk size line not ended by CRLF");
        assert_refused(b"1;a\nx", 400, "chunk size line not ended by CRLF");
        assert_refused(b"1;a\0\r\n", 400, "malformed chunk extension");
    }

    #[test]
    fn chunk_data_must_end_in_crlf() {
        assert_refused(b"1\r\nxy\r\n", 400, "chunk data not followed by CRLF");
        assert_refused(b"1\r\nx\n0\r\n\r\n", 400, "chunk data not followed by CRLF");
        assert_refused(b"1\r\nx\r0\r\n\r\n", 400, "chunk data not followed by CRLF");
        // Shorter data than announced just waits for the rest.
        assert_eq!(
            chunked(b"5\r\nabc"),
            Ok((b"abc".to_vec(), 6, Step::NeedMore))
        );
    }

    #[test]
    fn trailers_are_checked_and_bounded() {
        assert_refused(b"0\r\nbad field\r\n\r\n", 400, "malformed trailer field");
        assert_refused(b"0\r\n: v\r\n\r\n", 400, "malformed trailer field");
        assert_refused(b"0\r\n folded\r\n\r\n", 400, "malformed trailer field");
        assert_refused(b"0\r\nA: b\nc", 400, "malformed trailer field");
        assert_refused(b"0\r\nA: b\rc", 400, "trailer field not ended by CRLF");
        assert_refused(b"0\r\n\rX", 400, "chunked body not ended by CRLF");
        assert_refused(b"0\r\n\n", 400, "malformed trailer field");
        // The section may take 8192 bytes with its final CRLF, not one more.
        let trailer = |section: usize| {
            let mut v = b"0\r\nX:".to_vec();
            v.resize(v.len() + section - 6, b'v');
            v.extend_from_slice(b"\r\n\r\n");
            v
        };
        assert_eq!(chunked(&trailer(8192)).unwrap().2, Step::Done);
        assert_refused(
            &trailer(8193),
            431,
            "trailer section larger than 8192 bytes",
        );
    }

    #[test]
    fn size_line_is_bounded() {
        // 4096 bytes with the CRLF are read; 4097 are not.
        let line = |len: usize| {
            let mut v = b"1;".to_vec();
            v.resize(len - 2, b'e');
            v.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            v
        };
        assert_eq!(chunked(&line(4096)).unwrap().0, b"x");
        assert_refused(&line(4097), 400, "chunk size line longer than 4096 bytes");
        // Without a CRLF at all, refused as soon as the line passes the bound.
        let mut endless = b"1;".to_vec();
        endless.resize(5000, b'e');
        assert_refused(&endless, 400, "chunk size line longer than 4096 bytes");
    }

    #[test]
    fn chunked_over_max_is_413_at_the_size_line() {
        let r = refusal(b"41\r\n");
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (413, "request body larger than 64 bytes")
        );
        // 64 bytes fit; the 65th byte's chunk line is refused before its data.
        let mut input = b"20\r\n".to_vec();
        input.extend_from_slice(&[b'a'; 32]);
        input.extend_from_slice(b"\r\n20\r\n");
        input.extend_from_slice(&[b'b'; 32]);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(chunked(&input).unwrap().0.len(), 64);
        let over = b"3F\r\n"
            .iter()
            .copied()
            .chain([b'a'; 63])
            .chain(*b"\r\n2\r\n");
        assert_eq!(refusal(&over.collect::<Vec<u8>>()).status, 413);
        // Sticky: after a refusal every call refuses.
        let mut d = BodyDecoder::new(Framing::Chunked, MAX).unwrap();
        assert!(d.decode(b"zz", &mut Vec::new()).is_err());
        assert_eq!(
            d.decode(b"0\r\n\r\n", &mut Vec::new()),
            Err(ALREADY_REFUSED)
        );
    }

    #[test]
    fn max_zero_takes_only_the_last_chunk() {
        let mut d = BodyDecoder::new(Framing::Chunked, 0).unwrap();
        let mut body = Vec::new();
        assert_eq!(d.decode(b"0\r\n\r\n", &mut body), Ok((5, Step::Done)));
        let mut d = BodyDecoder::new(Framing::Chunked, 0).unwrap();
        assert_eq!(d.decode(b"1\r\n", &mut body).unwrap_err().status, 413);
    }

    fn form(body: &str) -> Vec<(String, String)> {
        parse_form(body.as_bytes()).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form("a=b+c&d=e%20f&&g&=h&i=j=k&"),
            pairs(&[
                ("a", "b c"),
                ("d", "e f"),
                ("g", ""),
                ("", "h"),
                ("i", "j=k")
            ])
        );
        assert_eq!(form("t%C3%A9=%E2%9C%93%2b%26"), pairs(&[("té", "✓+&")]));
        assert_eq!(form(""), pairs(&[]));
        for bad in ["a=%", "a=%2", "a=%zz", "a=%2g", "%=1"] {
            let e = parse_form(bad.as_bytes()).unwrap_err();
            assert!(e.contains("bad %-escape"), "{bad}: {e}");
        }
        let e = parse_form(b"data=%FF").unwrap_err();
        assert_eq!(e, "form field \"data\": not UTF-8 once %-decoded");
        let e = parse_form(b"a\xff=1").unwrap_err();
        assert_eq!(e, "form field name: not UTF-8 once %-decoded");
    }

    fn published(form: &str) -> Publish {
        let line = form_to_line(form.as_bytes()).unwrap();
        match decode_line(&line, 8) {
            Ok(Line::Publish(p)) => p,
            other => panic!(
                "{form}: {other:?} from {:?}",
                String::from_utf8_lossy(&line)
            ),
        }
    }

    #[test]
    fn form_to_line_makes_lines_the_ingest_accepts() {
        let line = form_to_line(b"topic=news&data=hello+world&type=note").unwrap();
        assert_eq!(
            line,
            br#"{"topic":"news","event":"note","data":"hello world"}"#
        );
        let p = published("topic=news&data=hello+world&type=note");
        assert_eq!(p.topics, [Box::from("news")]);
        assert_eq!(
            (p.data.as_ref(), p.event.as_deref()),
            ("hello world", Some("note"))
        );
        assert!(!p.is_final && p.key.is_none());
        // Repeated topics, default data, empty type is none, a multi-line payload.
        let p = published("topic=a&topic=b&topic=a");
        assert_eq!(p.topics, [Box::from("a"), Box::from("b")]);
        assert_eq!((p.data.as_ref(), p.event), ("", None));
        let p = published("type=&data=%7B%22x%22%3A1%7D%0Ab&topic=a");
        assert_eq!((p.data.as_ref(), p.event), ("{\"x\":1}\nb", None));
        // The ingest's own rules still apply to what the form gave.
        let line = form_to_line(b"topic=a&type=reset").unwrap();
        assert!(decode_line(&line, 8).is_err());
    }

    #[test]
    fn form_fields_ssehub_does_not_have_are_refused() {
        let e = |form: &str| form_to_line(form.as_bytes()).unwrap_err();
        assert_eq!(e("topic=a&private=on"), PRIVATE_REFUSED);
        assert_eq!(e("topic=a&id=7"), ID_REFUSED);
        assert_eq!(e("topic=a&retry=10"), RETRY_REFUSED);
        assert_eq!(e("topic=a&x=1"), "unknown field \"x\" (topic, data, type)");
        assert_eq!(e("data=x"), "missing field \"topic\"");
        assert_eq!(
            e("topic=a&data=1&data=2"),
            "field \"data\" given more than once"
        );
        assert_eq!(
            e("topic=a&type=x&type=y"),
            "field \"type\" given more than once"
        );
        assert_eq!(
            e("topic=a&data=%"),
            "form field \"data\": bad %-escape (want % and two hex digits)"
        );
        // A long or odd name is echoed escaped, on one line, cut.
        let long = format!("{}=1&topic=a", "n\n".repeat(100));
        let reason = e(&long);
        assert!(!reason.contains('\n') && reason.len() < 200, "{reason}");
        assert!(reason.starts_with("unknown field \"n\\nn\\n") && reason.contains("..."));
        // Escapes count: 64 NULs echo as 12 `\u{0}` (fuzzer finding: 64 input bytes made 320).
        let reason = e(&format!("{}=1&topic=a", "%00".repeat(64)));
        let echo = format!("\"{}\"...", "\\u{0}".repeat(12));
        assert_eq!(reason, format!("unknown field {echo} (topic, data, type)"));
    }
}
