//! One ingest line: decodes a single newline-delimited JSON line from a producer into a
//! publish request, an admin command or a one-line error reason, and writes the answer lines.
//! Pure data in, data out: this module never does I/O.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::topic_name::validate;

/// A request to publish one event to one or more topics.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish {
    /// Distinct, validated topic names in first-seen order; 1..=max_topics of them.
    pub topics: Vec<Box<str>>,
    /// The SSE event name, validated (1–64 bytes, no CR/LF/NUL, not `reset`).
    pub event: Option<Box<str>>,
    /// The payload bytes to send (UTF-8).
    pub data: Box<str>,
    /// The producer marked this as the last event of the topics.
    pub is_final: bool,
    /// Cluster mode: the producer's idempotency key (1–128 bytes of printable ASCII, no
    /// space): a retry with the same key within `history.max_age` is not stored twice.
    pub key: Option<Box<str>>,
}

/// An administrative command sent on the ingest socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Admin {
    /// Reload the configuration.
    Reload,
}

/// What one ingest line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Empty or whitespace-only: ignored, no answer.
    Blank,
    Publish(Publish),
    Admin(Admin),
}

/// One-line, human-readable reason, sent back as {"ok":false,"error":"<reason>"}.
#[derive(Debug, PartialEq, Eq)]
pub struct LineError(pub String);

/// Longest accepted event name, in bytes.
const MAX_EVENT_NAME: usize = 64;
/// How much of a producer's text an error reason may echo, in (escaped) bytes.
const ECHO_MAX: usize = 64;
/// Longest reason taken over from serde_json, in bytes (before the column note).
const JSON_REASON_MAX: usize = 200;

fn fail<T>(reason: impl Into<String>) -> Result<T, LineError> {
    Err(LineError(reason.into()))
}

/// Decodes one line (without its newline) of the ingest protocol.
pub fn decode_line(line: &[u8], max_topics: usize) -> Result<Line, LineError> {
    if line.iter().all(|&b| is_json_ws(b)) {
        return Ok(Line::Blank);
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return fail("invalid UTF-8");
    };
    if text.trim_start_matches(is_json_ws_char).as_bytes().first() != Some(&b'{') {
        return fail("line is not a JSON object");
    }
    let wire: Wire<'_> =
        serde_json::from_str(text).map_err(|e| LineError(json_reason(&e, true)))?;
    // serde_json refuses lone surrogates when it decodes a string, but not inside raw values.
    check_surrogates(text)?;
    if let Some(admin) = wire.admin {
        return decode_admin(admin, &wire);
    }
    decode_publish(wire, max_topics).map(Line::Publish)
}

/// Writes one answer line (with trailing '\n') into `out`: {"ok":true,"id":"<id>"}
pub fn write_ok(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(b"{\"ok\":true,\"id\":\"");
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = id;
    for slot in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the cast is exact.
        *slot = b'0' + (rest % 10) as u8;
        start -= 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
    out.extend_from_slice(b"\"}\n");
}

/// Writes {"ok":false,"error":"<reason JSON-escaped>"}\n into `out`.
pub fn write_error(out: &mut Vec<u8>, reason: &str) {
    let mut escaped = String::with_capacity(reason.len() + 8);
    for c in reason.chars() {
        push_escaped(&mut escaped, c);
    }
    out.extend_from_slice(b"{\"ok\":false,\"error\":\"");
    out.extend_from_slice(escaped.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// An answer line read back (the command-line producer, and `POST /publish`'s JSON and
/// form answers): `{"ok":true,"id":"1"}` → Ok("1"); `{"ok":false,"error":"..."}` →
/// Err(reason); anything else → Err saying so.
pub fn read_answer(line: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        ok: bool,
        id: Option<String>,
        error: Option<String>,
    }
    match serde_json::from_str::<Answer>(line) {
        Ok(Answer {
            ok: true,
            id: Some(id),
            ..
        }) => Ok(id),
        Ok(Answer { error: Some(e), .. }) => Err(e),
        _ => Err(format!(
            "unexpected answer from server: {}",
            line.trim_end()
        )),
    }
}

// ---------------------------------------------------------------------------
// The wire object: every known key kept as the producer's raw JSON value, so that
// `null` is not mistaken for an absent key and no serde message echoes a long value.

#[derive(Default)]
struct Wire<'a> {
    topic: Option<&'a RawValue>,
    topics: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    is_final: Option<&'a RawValue>,
    key: Option<&'a RawValue>,
    admin: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut wire = Wire::default();
        while let Some(field) = map.next_key::<Field>()? {
            let slot = match field {
                Field::Topic => &mut wire.topic,
                Field::Topics => &mut wire.topics,
                Field::Event => &mut wire.event,
                Field::Data => &mut wire.data,
                Field::Final => &mut wire.is_final,
                Field::Key => &mut wire.key,
                Field::Admin => &mut wire.admin,
            };
            if slot.is_some() {
                return Err(de::Error::custom(format_args!(
                    "duplicate field \"{}\"",
                    field.name()
                )));
            }
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(wire)
    }
}

#[derive(Clone, Copy)]
enum Field {
    Topic,
    Topics,
    Event,
    Data,
    Final,
    Key,
    Admin,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Topic => "topic",
            Field::Topics => "topics",
            Field::Event => "event",
            Field::Data => "data",
            Field::Final => "final",
            Field::Key => "key",
            Field::Admin => "admin",
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(match key {
            "topic" => Field::Topic,
            "topics" => Field::Topics,
            "event" => Field::Event,
            "data" => Field::Data,
            "final" => Field::Final,
            "key" => Field::Key,
            "admin" => Field::Admin,
            _ => {
                return Err(E::custom(format_args!(
                    "unknown field {}, expected one of topic, topics, event, data, final, key",
                    quoted(key)
                )));
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Interpreting the raw values.

fn decode_admin(command: &RawValue, wire: &Wire<'_>) -> Result<Line, LineError> {
    let others = [
        wire.topic,
        wire.topics,
        wire.event,
        wire.data,
        wire.is_final,
        wire.key,
    ];
    if others.iter().any(Option::is_some) {
        return fail("\"admin\" must be the only field of its line");
    }
    match string_value(command) {
        Some(Ok(name)) if name == "reload" => Ok(Line::Admin(Admin::Reload)),
        _ => fail("unknown admin command"),
    }
}

fn decode_publish(wire: Wire<'_>, max_topics: usize) -> Result<Publish, LineError> {
    let topics = match (wire.topic, wire.topics) {
        (Some(_), Some(_)) => return fail("give either \"topic\" or \"topics\", not both"),
        (None, None) => return fail("missing field \"topic\" (or \"topics\")"),
        (Some(raw), None) => {
            let name = expect_string(raw, "\"topic\" must be a string")?;
            check_topic(&name)?;
            vec![name.into_boxed_str()]
        }
        (None, Some(raw)) => decode_topics(raw, max_topics)?,
    };
    let event = match wire.event {
        None => None,
        Some(raw) => Some(decode_event(raw)?),
    };
    let Some(data) = wire.data else {
        return fail("missing field \"data\"");
    };
    let data = decode_data(data)?;
    let is_final = match wire.is_final.map(RawValue::get) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return fail("\"final\" must be true or false"),
    };
    let key = match wire.key {
        None => None,
        Some(raw) => Some(decode_key(raw)?),
    };
    Ok(Publish {
        topics,
        event,
        data,
        is_final,
        key,
    })
}

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

fn decode_key(raw: &RawValue) -> Result<Box<str>, LineError> {
    const BAD: &str = "\"key\" must be a string of 1-128 printable ASCII characters, no spaces";
    let key = expect_string(raw, BAD)?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return fail(BAD);
    }
    Ok(key.into_boxed_str())
}

fn decode_topics(raw: &RawValue, max_topics: usize) -> Result<Vec<Box<str>>, LineError> {
    const NOT_ARRAY: &str = "\"topics\" must be an array of strings";
    if !raw.get().starts_with('[') {
        return fail(NOT_ARRAY);
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| LineError(json_reason(&e, false)))?;
    let count_error = || LineError(format!("\"topics\" must hold 1 to {max_topics} names"));
    let mut topics: Vec<Box<str>> = Vec::new();
    for item in items {
        let name = expect_string(item, NOT_ARRAY)?;
        check_topic(&name)?;
        if topics.iter().any(|seen| **seen == *name) {
            continue;
        }
        if topics.len() >= max_topics {
            return Err(count_error());
        }
        topics.push(name.into_boxed_str());
    }
    if topics.is_empty() {
        return Err(count_error());
    }
    Ok(topics)
}

fn check_topic(name: &str) -> Result<(), LineError> {
    validate(name.as_bytes()).map_err(|why| LineError(format!("bad topic {}: {why}", quoted(name))))
}

fn decode_event(raw: &RawValue) -> Result<Box<str>, LineError> {
    let name = expect_string(raw, "\"event\" must be a string")?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME {
        return fail(format!("\"event\" must be 1 to {MAX_EVENT_NAME} bytes"));
    }
    if name.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        return fail("\"event\" may not hold CR, LF or NUL");
    }
    if name == "reset" {
        return fail("event name \"reset\" is reserved");
    }
    Ok(name.into_boxed_str())
}

/// A JSON string gives its decoded value; any other value its own bytes without the
/// whitespace outside strings.
fn decode_data(raw: &RawValue) -> Result<Box<str>, LineError> {
    match string_value(raw) {
        Some(decoded) => Ok(decoded?.into_boxed_str()),
        None => Ok(strip_whitespace(raw.get()).into_boxed_str()),
    }
}

/// `None` when the value is not a JSON string, else its decoded text.
fn string_value(raw: &RawValue) -> Option<Result<String, LineError>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    Some(serde_json::from_str(raw.get()).map_err(|e| LineError(json_reason(&e, false))))
}

fn expect_string(raw: &RawValue, not_string: &str) -> Result<String, LineError> {
    string_value(raw).unwrap_or_else(|| fail(not_string))
}

/// Removes JSON whitespace outside strings; strings (escapes included) are kept as written.
/// `json` must be valid JSON (serde_json has checked it).
fn strip_whitespace(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            out.push(c);
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !is_json_ws_char(c) {
            out.push(c);
        }
    }
    out
}

/// Refuses `\u` escapes that leave a surrogate unpaired. `text` must be valid JSON, so
/// every backslash met while stepping over whole escapes starts an escape in a string.
fn check_surrogates(text: &str) -> Result<(), LineError> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = bytes
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        let escape = at + offset;
        if bytes.get(escape + 1) != Some(&b'u') {
            at = escape + 2;
            continue;
        }
        let Some(unit) = hex4(bytes, escape + 2) else {
            at = escape + 2;
            continue;
        };
        at = escape + 6;
        if (0xD800..0xDC00).contains(&unit) {
            let pair = bytes.get(at..at + 2) == Some(b"\\u".as_slice());
            let low = if pair { hex4(bytes, at + 2) } else { None };
            if low.is_some_and(|low| (0xDC00..0xE000).contains(&low)) {
                at += 6;
                continue;
            }
        } else if !(0xDC00..0xE000).contains(&unit) {
            continue;
        }
        return fail(format!(
            "lone surrogate in \\u escape (column {})",
            escape + 1
        ));
    }
    Ok(())
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4)?.iter().try_fold(0u32, |acc, &b| {
        char::from(b).to_digit(16).map(|digit| acc * 16 + digit)
    })
}

// ---------------------------------------------------------------------------
// Text helpers.

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_json_ws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Appends `c` as it would appear inside a JSON string.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        c if c < ' ' => {
            out.push_str("\\u00");
            for nibble in [u32::from(c) >> 4, u32::from(c) & 0xF] {
                out.push(char::from_digit(nibble, 16).unwrap_or('0'));
            }
        }
        c => out.push(c),
    }
}

/// The producer's text as a quoted JSON string, cut to about ECHO_MAX bytes (`...` marks a cut).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(ECHO_MAX + 8);
    out.push('"');
    let mut one = String::new();
    let mut cut = false;
    for c in text.chars() {
        one.clear();
        push_escaped(&mut one, c);
        if out.len() + one.len() > ECHO_MAX + 1 {
            cut = true;
            break;
        }
        out.push_str(&one);
    }
    out.push('"');
    if cut {
        out.push_str("...");
    }
    out
}

/// serde_json's message on one short line; `at_column` keeps its position (meaningful only
/// when the whole line was parsed).
fn json_reason(error: &serde_json::Error, at_column: bool) -> String {
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(position.as_str()).unwrap_or(&full);
    let mut reason = String::with_capacity(JSON_REASON_MAX + 24);
    for c in message.chars() {
        if reason.len() + c.len_utf8() > JSON_REASON_MAX {
            reason.push_str("...");
            break;
        }
        if c.is_control() {
            reason.push(' ');
        } else {
            reason.push(c);
        }
    }
    if at_column && error.line() > 0 {
        reason.push_str(&format!(" (column {})", error.column()));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(line: &str) -> Result<Line, LineError> {
        decode_line(line.as_bytes(), 3)
    }

    fn publish(line: &str) -> Publish {
        match decode(line) {
            Ok(Line::Publish(p)) => p,
            other => panic!("{line}: expected a publish, got {other:?}"),
        }
    }

    fn data(data_json: &str) -> String {
        publish(&format!(r#"{{"topic":"t","data":{data_json}}}"#))
            .data
            .into()
    }

    fn reason(line: &str) -> String {
        match decode(line) {
            Err(LineError(reason)) => reason,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    fn assert_reason(line: &str, wanted: &str) {
        let got = reason(line);
        assert!(
            got.contains(wanted),
            "{line}: reason {got:?} lacks {wanted:?}"
        );
    }

    fn names(p: &Publish) -> Vec<&str> {
        p.topics.iter().map(|t| &**t).collect()
    }

    #[test]
    fn idempotency_key() {
        let p = publish(r#"{"topic":"t","data":1,"key":"order-17:v2"}"#);
        assert_eq!(p.key.as_deref(), Some("order-17:v2"));
        assert_eq!(publish(r#"{"topic":"t","data":1}"#).key, None);
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for bad in ["\"\"", "\"a b\"", "17", "null", &format!("\"{long}\"")] {
            assert_reason(
                &format!(r#"{{"topic":"t","data":1,"key":{bad}}}"#),
                "\"key\" must be a string",
            );
        }
    }

    #[test]
    fn spec_examples() {
        let p = publish(
            r#"{"topic": "notifications:42", "event": "notification", "data": "{\"title\":\"Hi\"}"}"#,
        );
        assert_eq!(
            p,
            Publish {
                topics: vec!["notifications:42".into()],
                event: Some("notification".into()),
                data: r#"{"title":"Hi"}"#.into(),
                is_final: false,
                key: None,
            }
        );
        let p = publish(r#"{"topics": ["prices:AAPL", "prices:ALL"], "data": 187.12}"#);
        assert_eq!(names(&p), ["prices:AAPL", "prices:ALL"]);
        assert_eq!(&*p.data, "187.12");
        assert_eq!(p.event, None);
        let p = publish(
            r#"{"topic": "progress:export-19", "event": "done", "data": "100", "final": true}"#,
        );
        assert!(p.is_final);
        assert_eq!(&*p.data, "100");
        assert_eq!(
            decode(r#"{"admin":"reload"}"#),
            Ok(Line::Admin(Admin::Reload))
        );
    }

    #[test]
    fn string_data_is_decoded() {
        assert_eq!(data(r#""a\nb""#), "a\nb");
        assert_eq!(data(r#""a\nb""#).len(), 3);
        assert_eq!(data(r#""caf\u00e9 \ud83d\ude00""#), "café 😀");
        assert_eq!(data(r#""  spaced  out  ""#), "  spaced  out  ");
        assert_eq!(data(r#""""#), "");
        assert_eq!(data(r#""tab\there \"q\" \\ /\/""#), "tab\there \"q\" \\ //");
        assert_eq!(data("\"raw é unicode\""), "raw é unicode");
    }

    #[test]
    fn number_data_kept_byte_for_byte() {
        for n in [
            "187.12",
            "1.50",
            "-0",
            "1E+3",
            "1e3",
            "0",
            "-12.5e-7",
            "123456789012345678901234567890",
        ] {
            assert_eq!(data(n), n);
        }
    }

    #[test]
    fn other_data_kept_without_outer_whitespace() {
        assert_eq!(
            data(r#"{ "a" : "x y" , "b":[1, 2] }"#),
            r#"{"a":"x y","b":[1,2]}"#
        );
        assert_eq!(data(r#"{"q":"say \"hi\"\\n"}"#), r#"{"q":"say \"hi\"\\n"}"#);
        assert_eq!(
            data(r#"{"q":"\\"  ,  "r" : "\u0041 \n"}"#),
            r#"{"q":"\\","r":"\u0041 \n"}"#
        );
        assert_eq!(data("[\t1 ,\r 2 , [ ] , { } ]"), "[1,2,[],{}]");
        assert_eq!(data("true"), "true");
        assert_eq!(data("false"), "false");
        assert_eq!(data("null"), "null");
        assert_eq!(data(r#"{"é":"ü ö"}"#), r#"{"é":"ü ö"}"#);
        // Whitespace before and after the value is not part of it.
        let p = publish("{\"topic\":\"t\",\"data\":   [ 1 ]   }  \r");
        assert_eq!(&*p.data, "[1]");
    }

    #[test]
    fn topics_are_deduplicated_in_first_seen_order() {
        let p = publish(r#"{"topics":["b","a","b","c","a"],"data":1}"#);
        assert_eq!(names(&p), ["b", "a", "c"]);
        // The limit counts distinct names: 5 entries, 3 distinct, limit 3.
        let p = publish(r#"{"topics":["x","x","x","y","z"],"data":1}"#);
        assert_eq!(names(&p), ["x", "y", "z"]);
        // Escaped names are decoded before comparing.
        let p = publish(r#"{"topics":["ab","\u0061b"],"data":1}"#);
        assert_eq!(names(&p), ["ab"]);
    }

    #[test]
    fn topic_count_limits() {
        assert_eq!(
            reason(r#"{"topics":["a","b","c","d"],"data":1}"#),
            "\"topics\" must hold 1 to 3 names"
        );
        assert_eq!(
            reason(r#"{"topics":[],"data":1}"#),
            "\"topics\" must hold 1 to 3 names"
        );
        let ok = decode_line(br#"{"topics":["a","b","c","d"],"data":1}"#, 4);
        assert!(matches!(ok, Ok(Line::Publish(p)) if p.topics.len() == 4));
    }

    #[test]
    fn exactly_one_of_topic_and_topics() {
        assert_eq!(
            reason(r#"{"topic":"a","topics":["b"],"data":1}"#),
            "give either \"topic\" or \"topics\", not both"
        );
        assert_reason(r#"{"data":1}"#, "missing field \"topic\"");
        assert_reason(r#"{"topic":null,"data":1}"#, "\"topic\" must be a string");
        assert_reason(r#"{"topic":7,"data":1}"#, "\"topic\" must be a string");
        assert_reason(
            r#"{"topics":"a","data":1}"#,
            "\"topics\" must be an array of strings",
        );
        assert_reason(
            r#"{"topics":["a",1],"data":1}"#,
            "\"topics\" must be an array of strings",
        );
        assert_reason(
            r#"{"topics":null,"data":1}"#,
            "\"topics\" must be an array of strings",
        );
    }

    #[test]
    fn bad_topic_names() {
        assert_eq!(
            reason(r#"{"topic":"a b","data":1}"#),
            "bad topic \"a b\": topic name may only hold A-Z a-z 0-9 _ - . : / @"
        );
        assert_eq!(
            reason(r#"{"topic":"","data":1}"#),
            "bad topic \"\": empty topic name"
        );
        assert_reason(
            r#"{"topics":["ok","a\nb"],"data":1}"#,
            r#"bad topic "a\nb": "#,
        );
        assert_reason(
            r#"{"topic":"say \"x\"","data":1}"#,
            r#"bad topic "say \"x\"": "#,
        );
        let long = "x".repeat(201);
        let got = reason(&format!(r#"{{"topic":"{long}","data":1}}"#));
        assert!(
            got.starts_with(&format!("bad topic \"{}\"...: ", "x".repeat(64))),
            "{got}"
        );
        assert!(got.ends_with("topic name longer than 200 bytes"), "{got}");
        // Escaped control characters count against the echo cap as escaped.
        let got = reason(&format!(
            r#"{{"topic":"{}","data":1}}"#,
            "\\u0001".repeat(100)
        ));
        assert!(got.len() < 160, "{got}");
    }

    #[test]
    fn event_validation() {
        let p = publish(r#"{"topic":"t","event":"message","data":1}"#);
        assert_eq!(p.event.as_deref(), Some("message"));
        let p = publish(&format!(
            r#"{{"topic":"t","event":"{}","data":1}}"#,
            "e".repeat(64)
        ));
        assert_eq!(p.event.map(|e| e.len()), Some(64));
        let p = publish(r#"{"topic":"t","event":"with space é","data":1}"#);
        assert_eq!(p.event.as_deref(), Some("with space é"));
        let cases = [
            (r#""""#.to_string(), "\"event\" must be 1 to 64 bytes"),
            (
                format!("\"{}\"", "e".repeat(65)),
                "\"event\" must be 1 to 64 bytes",
            ),
            (r#""a\rb""#.into(), "\"event\" may not hold CR, LF or NUL"),
            (r#""a\nb""#.into(), "\"event\" may not hold CR, LF or NUL"),
            (
                r#""a\u0000b""#.into(),
                "\"event\" may not hold CR, LF or NUL",
            ),
            (r#""reset""#.into(), "event name \"reset\" is reserved"),
            ("1".into(), "\"event\" must be a string"),
            ("null".into(), "\"event\" must be a string"),
        ];
        for (event, wanted) in cases {
            assert_eq!(
                reason(&format!(r#"{{"topic":"t","event":{event},"data":1}}"#)),
                wanted
            );
        }
    }

    #[test]
    fn final_flag() {
        assert!(publish(r#"{"topic":"t","data":1,"final":true}"#).is_final);
        assert!(!publish(r#"{"topic":"t","data":1,"final":false}"#).is_final);
        assert!(!publish(r#"{"topic":"t","data":1}"#).is_final);
        for bad in ["1", "\"true\"", "null", "[true]"] {
            assert_eq!(
                reason(&format!(r#"{{"topic":"t","data":1,"final":{bad}}}"#)),
                "\"final\" must be true or false"
            );
        }
    }

    #[test]
    fn unknown_and_duplicate_fields() {
        assert_reason(
            r#"{"topik":"t","data":1}"#,
            "unknown field \"topik\", expected one of topic, topics, event, data, final, key",
        );
        assert_reason(
            r#"{"topic":"t","data":1,"Final":true}"#,
            "unknown field \"Final\"",
        );
        assert_reason(
            r#"{"topic":"t","topic":"u","data":1}"#,
            "duplicate field \"topic\"",
        );
        assert_reason(
            r#"{"topic":"t","data":1,"data":2}"#,
            "duplicate field \"data\"",
        );
        // A duplicate spelled with an escape is still a duplicate.
        assert_reason(
            r#"{"topic":"t","data":1,"d\u0061ta":2}"#,
            "duplicate field \"data\"",
        );
    }

    #[test]
    fn missing_data() {
        assert_eq!(reason(r#"{"topic":"t"}"#), "missing field \"data\"");
        assert_eq!(
            reason(r#"{"topic":"t","event":"e","final":true}"#),
            "missing field \"data\""
        );
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(
            decode_line(b"{\"topic\":\"t\",\"data\":\"a\xffb\"}", 3),
            Err(LineError("invalid UTF-8".into()))
        );
        assert_eq!(
            decode_line(b"\xff", 3),
            Err(LineError("invalid UTF-8".into()))
        );
    }

    #[test]
    fn lone_surrogates() {
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""x\ud83dy""#,
            r#""\ud83d\u0041""#,
        ] {
            assert_reason(&format!(r#"{{"topic":"t","data":{bad}}}"#), "surrogate");
            assert_reason(
                &format!(r#"{{"topic":"t","data":{{"k":{bad}}}}}"#),
                "surrogate",
            );
            assert_reason(&format!(r#"{{"topic":"t","data":[{bad}]}}"#), "surrogate");
            assert_reason(
                &format!(r#"{{"topic":"t","event":{bad},"data":1}}"#),
                "surrogate",
            );
        }
        // A pair is fine, and an escaped backslash before `u` is no escape.
        assert_eq!(data(r#"{"k":"\uD83D\uDE00"}"#), r#"{"k":"\uD83D\uDE00"}"#);
        assert_eq!(data(r#"{"k":"\\ud800"}"#), r#"{"k":"\\ud800"}"#);
        assert_eq!(data(r#""\\ud800""#), "\\ud800");
    }

    #[test]
    fn blank_lines() {
        for blank in ["", " ", "\t", "\r", "  \t \r "] {
            assert_eq!(decode(blank), Ok(Line::Blank), "{blank:?}");
        }
    }

    #[test]
    fn admin_lines() {
        assert_eq!(
            decode(r#" { "admin" : "reload" } "#),
            Ok(Line::Admin(Admin::Reload))
        );
        assert_eq!(
            decode(r#"{"admin":"rel\u006fad"}"#),
            Ok(Line::Admin(Admin::Reload))
        );
        for bad in [
            r#""restart""#,
            r#""""#,
            "1",
            "null",
            r#"["reload"]"#,
            r#""Reload""#,
        ] {
            assert_eq!(
                reason(&format!(r#"{{"admin":{bad}}}"#)),
                "unknown admin command"
            );
        }
        assert_reason(
            r#"{"admin":"reload","topic":"t"}"#,
            "\"admin\" must be the only field",
        );
        assert_reason(
            r#"{"topic":"t","data":1,"admin":"reload"}"#,
            "\"admin\" must be the only field",
        );
        assert_reason(
            r#"{"admin":"reload","admin":"reload"}"#,
            "duplicate field \"admin\"",
        );
        assert_reason(r#"{"admin":"reload","x":1}"#, "unknown field \"x\"");
    }

    #[test]
    fn non_objects() {
        for line in ["[1]", "42", r#""x""#, "null", "true", "hello", " [ ]"] {
            assert_eq!(reason(line), "line is not a JSON object", "{line}");
        }
    }

    #[test]
    fn malformed_json() {
        for line in [
            r#"{"topic":"t","data":1"#,
            r#"{"topic":"t","data":"#,
            r#"{"topic":"t","data":"abc"#,
            r#"{"topic":"t" "data":1}"#,
            r#"{"topic":"t","data":01}"#,
            r#"{"topic":"t","data":1} x"#,
            r#"{"topic":"t","data":[1,]}"#,
            r#"{"topic":"t","data":"a\qb"}"#,
            "{\"topic\":\"t\",\"data\":\"a\tb\"}",
            r#"{topic:"t"}"#,
            "{",
        ] {
            let got = reason(line);
            assert!(!got.is_empty() && got.len() < 200, "{line}: {got}");
            assert!(!got.contains(" at line "), "{line}: {got}");
        }
        assert_reason(r#"{"topic":"t","data":1"#, "EOF");
        assert_reason(r#"{"topic":"t","data":1} x"#, "trailing characters (column");
    }

    fn assert_short_one_line(line: &[u8]) {
        let reason = match decode_line(line, 32) {
            Err(LineError(reason)) => reason,
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(reason.len() <= 300, "{} bytes: {reason}", reason.len());
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
    }

    #[test]
    fn reasons_stay_short_for_huge_lines() {
        const N: usize = 60 * 1024;
        let x = "x".repeat(N);
        let mut garbage = Vec::with_capacity(N);
        let mut seed: u32 = 12345;
        for _ in 0..N {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            garbage.push((seed >> 16) as u8);
        }
        assert_short_one_line(&garbage);
        let ascii_garbage: Vec<u8> = garbage.iter().map(|b| b'!' + b % 90).collect();
        assert_short_one_line(&ascii_garbage);
        let mut braced = b"{".to_vec();
        braced.extend_from_slice(&ascii_garbage);
        assert_short_one_line(&braced);
        let lines = [
            format!("{{\"{x}"),
            format!("{{\"{x}\":1}}"),
            format!("{{\"{}\":1}}", "\\u0001".repeat(N / 6)),
            format!("{{\"{}\":1}}", "\\n".repeat(N / 2)),
            format!(r#"{{"topic":"{x}","data":1}}"#),
            format!(r#"{{"topic":"x y {x}","data":1}}"#),
            format!(r#"{{"topics":"{x}","data":1}}"#),
            format!(
                r#"{{"topics":[{}],"data":1}}"#,
                "\"a\",".repeat(N / 4) + "7"
            ),
            format!(r#"{{"topic":"t","event":"{x}","data":1}}"#),
            format!(r#"{{"topic":"t","final":"{x}","data":1}}"#),
            format!(r#"{{"topic":"t","final":{},"data":1}}"#, "9".repeat(N)),
            format!(r#"{{"topic":"t","data":{}}}"#, "[".repeat(N)),
            format!(r#"{{"topic":"t","data":1}}{x}"#),
            format!(r#"{{"admin":"{x}"}}"#),
            format!("{{\"topic\":\"t\",\"data\":\"{x}"),
            format!("{{\"topic\":\"t\",\"data\":\"{x}\t\"}}"),
        ];
        for line in &lines {
            assert_short_one_line(line.as_bytes());
        }
    }

    #[test]
    fn huge_valid_payload_passes() {
        let big = format!("[{}1]", "1, ".repeat(20_000));
        let p = publish(&format!(r#"{{"topic":"t","data":{big}}}"#));
        assert_eq!(p.data.len(), 2 * 20_000 + 3);
        // Deep nesting is forwarded without recursion.
        let deep = format!("{} {}", "[ ".repeat(20_000), "] ".repeat(20_000));
        let p = publish(&format!(r#"{{"topic":"t","data":{deep}}}"#));
        assert_eq!(
            *p.data,
            *format!("{}{}", "[".repeat(20_000), "]".repeat(20_000))
        );
    }

    #[test]
    fn write_ok_exact_bytes() {
        let mut out = Vec::new();
        write_ok(&mut out, 1234);
        assert_eq!(out, b"{\"ok\":true,\"id\":\"1234\"}\n");
        out.clear();
        write_ok(&mut out, 0);
        assert_eq!(out, b"{\"ok\":true,\"id\":\"0\"}\n");
        out.clear();
        write_ok(&mut out, u64::MAX);
        assert_eq!(out, b"{\"ok\":true,\"id\":\"18446744073709551615\"}\n");
        // Appends rather than overwrites.
        write_ok(&mut out, 7);
        assert!(out.ends_with(b"}\n{\"ok\":true,\"id\":\"7\"}\n"));
    }

    #[test]
    fn write_error_exact_bytes() {
        let mut out = Vec::new();
        write_error(&mut out, "missing field \"data\"");
        assert_eq!(
            out,
            b"{\"ok\":false,\"error\":\"missing field \\\"data\\\"\"}\n"
        );
        out.clear();
        let nasty = "q\" b\\ n\n r\r t\t nul\0 esc\u{1b} del\u{7f} é";
        write_error(&mut out, nasty);
        assert_eq!(
            out,
            b"{\"ok\":false,\"error\":\"q\\\" b\\\\ n\\n r\\r t\\t nul\\u0000 esc\\u001b del\x7f \xc3\xa9\"}\n"
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(parsed["ok"], serde_json::Value::Bool(false));
        assert_eq!(parsed["error"].as_str(), Some(nasty));
    }

    #[test]
    fn every_reason_makes_a_valid_answer() {
        for line in [
            r#"{"topic":"a\"b\\c\u0001","data":1}"#,
            r#"{"k\"\\":1}"#,
            "hello",
        ] {
            let why = reason(line);
            let mut out = Vec::new();
            write_error(&mut out, &why);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
            assert_eq!(parsed["error"].as_str(), Some(why.as_str()));
        }
    }
}
