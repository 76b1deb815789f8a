//! Pure reading of what Redis sends back: ids returned by the Function, error replies,
//! `TIME`, stream entries (`XRANGE`/`XREAD`) and their fields. Never panics on anything
//! Redis sends; every odd shape becomes an `Err` with a reason.

use super::Entry;
use redis::{ServerError, Value};

/// One stream entry as Redis sent it, before its fields are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawEntry {
    /// `<ms>-<seq>`, as sent (kept to continue reading right after it).
    pub stream_id: String,
    /// The `<ms>` part: our ids (every entry the Function writes is `<id>-0`).
    pub id: u64,
    /// The `<seq>` part, 0 for every entry the Function writes.
    pub seq: u64,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// `<ms>-<seq>` → (ms, seq).
pub(super) fn stream_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-')?;
    Some((decimal(ms.as_bytes())?, decimal(seq.as_bytes())?))
}

/// A decimal u64 with digits only (no sign, no spaces).
pub(super) fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// An id returned as an integer or a string (the Function returns a string).
pub(super) fn id(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => decimal(b),
        Value::SimpleString(s) => decimal(s.as_bytes()),
        _ => None,
    }
}

/// A string value; `None` for nil.
pub(super) fn optional_text(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        Value::SimpleString(s) => Ok(Some(s.clone())),
        other => Err(format!("expected a string, got {}", shape(other))),
    }
}

/// A string value (`GET`); `None` for nil.
pub(super) fn optional_id(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Nil => Ok(None),
        other => id(other)
            .map(Some)
            .ok_or_else(|| format!("expected an id, got {}", shape(other))),
    }
}

/// The one-line text of an error reply, without a generic `ERR ` code: the Function's
/// `topic X is final` arrives as code `topic`, detail `X is final`, and comes out whole.
pub(super) fn error_text(e: &ServerError) -> String {
    let code = e.code();
    match (code, e.details()) {
        ("ERR", Some(d)) => d.to_string(),
        ("ERR", None) => "ERR".to_string(),
        (c, Some(d)) => format!("{c} {d}"),
        (c, None) => c.to_string(),
    }
}

/// `TIME` → Unix microseconds of Redis's clock.
pub(super) fn time_us(v: &Value) -> Result<u64, String> {
    if let Value::Array(parts) = v
        && let [secs, micros] = parts.as_slice()
        && let (Some(s), Some(u)) = (id(secs), id(micros))
    {
        return s
            .checked_mul(1_000_000)
            .and_then(|s| s.checked_add(u))
            .ok_or_else(|| "TIME out of range".to_string());
    }
    Err(format!("unexpected TIME reply {}", shape(v)))
}

/// An `XRANGE`/`XREVRANGE` reply: an array of `[id, [field, value, …]]`.
pub(super) fn range(v: Value) -> Result<Vec<RawEntry>, String> {
    match v {
        Value::Array(items) => items.into_iter().map(raw_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("unexpected range reply {}", shape(&other))),
    }
}

/// An `XREAD` reply for one stream: nil (timed out) or `[[stream, entries]]` (RESP2), or
/// a map of stream → entries (RESP3).
pub(super) fn xread(v: Value) -> Result<Vec<RawEntry>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                match s {
                    Value::Array(pair) if pair.len() == 2 => {
                        let Some(entries) = pair.into_iter().nth(1) else {
                            return Err("XREAD reply without entries".into());
                        };
                        out.extend(range(entries)?);
                    }
                    other => return Err(format!("unexpected XREAD stream {}", shape(&other))),
                }
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, entries) in streams {
                out.extend(range(entries)?);
            }
            Ok(out)
        }
        other => Err(format!("unexpected XREAD reply {}", shape(&other))),
    }
}

fn raw_entry(v: Value) -> Result<RawEntry, String> {
    let Value::Array(parts) = v else {
        return Err(format!("unexpected stream entry {}", shape(&v)));
    };
    let mut parts = parts.into_iter();
    let (Some(id_value), Some(fields_value), None) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("stream entry is not [id, fields]".into());
    };
    let stream_id_text = match id_value {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| "entry id is not text")?,
        Value::SimpleString(s) => s,
        other => return Err(format!("unexpected entry id {}", shape(&other))),
    };
    let (id, seq) =
        stream_id(&stream_id_text).ok_or_else(|| format!("bad entry id {stream_id_text:?}"))?;
    let fields = match fields_value {
        Value::Array(flat) => {
            if !flat.len().is_multiple_of(2) {
                return Err(format!("entry {stream_id_text}: odd field list"));
            }
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                fields.push((bytes(k)?, bytes(v)?));
            }
            fields
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Ok((bytes(k)?, bytes(v)?)))
            .collect::<Result<_, String>>()?,
        // A deleted entry still listed by some commands.
        Value::Nil => Vec::new(),
        other => {
            return Err(format!(
                "entry {stream_id_text}: fields are {}",
                shape(&other)
            ));
        }
    };
    Ok(RawEntry {
        stream_id: stream_id_text,
        id,
        seq,
        fields,
    })
}

fn bytes(v: Value) -> Result<Vec<u8>, String> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(format!("unexpected field {}", shape(&other))),
    }
}

/// Checks an entry's fields (module header of `cluster`): `p`, `t`, `d` and `m` required,
/// `e` and `f` optional; the id must be `<id>-0`. `Err` says what is wrong.
pub(super) fn entry(raw: &RawEntry) -> Result<Entry, String> {
    if raw.seq != 0 {
        return Err(format!("id {} is not <id>-0", raw.stream_id));
    }
    let field = |name: &[u8]| {
        raw.fields
            .iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| v.as_slice())
    };
    let text = |name: &str| -> Result<Option<Box<str>>, String> {
        field(name.as_bytes())
            .map(|b| {
                std::str::from_utf8(b)
                    .map(Box::from)
                    .map_err(|_| format!("field {name} is not UTF-8"))
            })
            .transpose()
    };
    let number = |name: &str| -> Result<u64, String> {
        let b = field(name.as_bytes()).ok_or_else(|| format!("field {name} missing"))?;
        decimal(b).ok_or_else(|| format!("field {name} is not a decimal number"))
    };
    let prev = number("p")?;
    let published_unix_ms = number("m")?;
    let topics_text = text("t")?.ok_or("field t missing")?;
    let topics: Vec<Box<str>> = topics_text.split(' ').map(Box::from).collect();
    if topics.iter().any(|t| t.is_empty()) {
        return Err(format!("field t {topics_text:?} has an empty topic"));
    }
    let data = text("d")?.ok_or("field d missing")?;
    let event = text("e")?;
    let is_final = match field(b"f") {
        None => false,
        Some(b"1") => true,
        Some(_) => return Err("field f is not 1".into()),
    };
    if prev >= raw.id {
        return Err(format!("previous id {prev} is not below {}", raw.id));
    }
    Ok(Entry {
        id: raw.id,
        prev,
        published_unix_ms,
        topics,
        event,
        data,
        is_final,
    })
}

/// A short description of a value's shape for error messages (never its whole content).
fn shape(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Int(n) => format!("integer {n}"),
        Value::BulkString(b) => format!("string of {} bytes", b.len()),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::SimpleString(s) => format!("status {:?}", s.chars().take(40).collect::<String>()),
        Value::Okay => "OK".into(),
        Value::Map(m) => format!("map of {}", m.len()),
        Value::ServerError(e) => format!("error {:?}", error_text(e)),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry_value(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn stream_ids_and_numbers() {
        assert_eq!(
            stream_id("1800000000000000-0"),
            Some((1_800_000_000_000_000, 0))
        );
        assert_eq!(stream_id("5-7"), Some((5, 7)));
        assert_eq!(stream_id("5"), None);
        assert_eq!(stream_id("-5-0"), None);
        assert_eq!(stream_id("5-"), None);
        assert_eq!(decimal(b"+5"), None);
        assert_eq!(decimal(b"99999999999999999999999"), None);
        assert_eq!(id(&bulk("1800000000000001")), Some(1_800_000_000_000_001));
        assert_eq!(id(&Value::Int(7)), Some(7));
        assert_eq!(id(&Value::Int(-7)), None);
        assert_eq!(id(&bulk("1.8e15")), None);
        assert_eq!(optional_id(&Value::Nil), Ok(None));
        assert!(optional_id(&Value::Array(vec![])).is_err());
        assert_eq!(
            time_us(&Value::Array(vec![bulk("1800000000"), bulk("123456")])),
            Ok(1_800_000_000_123_456)
        );
        assert!(time_us(&Value::Array(vec![bulk("x")])).is_err());
    }

    #[test]
    fn entries_with_all_fields_and_with_the_optional_ones_absent() {
        let v = Value::Array(vec![
            entry_value(
                "20-0",
                &[
                    ("p", "10"),
                    ("t", "a b"),
                    ("e", "ev"),
                    ("d", "x y"),
                    ("f", "1"),
                    ("m", "3"),
                ],
            ),
            entry_value("30-0", &[("p", "20"), ("t", "c"), ("d", ""), ("m", "4")]),
        ]);
        let raws = range(v).unwrap();
        assert_eq!(raws[0].stream_id, "20-0");
        assert_eq!(
            entry(&raws[0]),
            Ok(Entry {
                id: 20,
                prev: 10,
                published_unix_ms: 3,
                topics: vec!["a".into(), "b".into()],
                event: Some("ev".into()),
                data: "x y".into(),
                is_final: true,
            })
        );
        assert_eq!(
            entry(&raws[1]),
            Ok(Entry {
                id: 30,
                prev: 20,
                published_unix_ms: 4,
                topics: vec!["c".into()],
                event: None,
                data: "".into(),
                is_final: false,
            })
        );
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let good = [("p", "10"), ("t", "a"), ("d", "x"), ("m", "3")];
        let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("20-1", good.to_vec()),
            ("20-0", vec![("t", "a"), ("d", "x"), ("m", "3")]),
            ("20-0", vec![("p", "x"), ("t", "a"), ("d", "x"), ("m", "3")]),
            ("20-0", vec![("p", "10"), ("d", "x"), ("m", "3")]),
            ("20-0", vec![("p", "10"), ("t", "a"), ("m", "3")]),
            ("20-0", vec![("p", "10"), ("t", "a"), ("d", "x")]),
            (
                "20-0",
                vec![("p", "10"), ("t", "a  b"), ("d", "x"), ("m", "3")],
            ),
            (
                "20-0",
                vec![("p", "10"), ("t", "a"), ("d", "x"), ("m", "3"), ("f", "0")],
            ),
            (
                "20-0",
                vec![("p", "20"), ("t", "a"), ("d", "x"), ("m", "3")],
            ),
        ];
        for (id, fields) in cases {
            let raws = range(Value::Array(vec![entry_value(id, &fields)])).unwrap();
            assert!(entry(&raws[0]).is_err(), "{id} {fields:?}");
        }
        let not_utf8 = RawEntry {
            stream_id: "20-0".into(),
            id: 20,
            seq: 0,
            fields: vec![
                (b"p".to_vec(), b"10".to_vec()),
                (b"t".to_vec(), b"a".to_vec()),
                (b"d".to_vec(), vec![0xff]),
                (b"m".to_vec(), b"3".to_vec()),
            ],
        };
        assert!(entry(&not_utf8).is_err());
        // Shapes that are not entries at all.
        assert!(range(Value::Int(3)).is_err());
        assert!(range(Value::Array(vec![Value::Int(3)])).is_err());
        assert!(
            range(Value::Array(vec![Value::Array(vec![
                bulk("x-y"),
                Value::Nil
            ])]))
            .is_err()
        );
        assert!(
            range(Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("p")])
            ])]))
            .is_err()
        );
    }

    #[test]
    fn xread_replies_resp2_and_resp3() {
        assert_eq!(xread(Value::Nil), Ok(vec![]));
        let entries = Value::Array(vec![entry_value("5-0", &[("p", "4")])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        assert_eq!(xread(resp2).unwrap()[0].id, 5);
        assert_eq!(xread(resp3).unwrap()[0].id, 5);
        assert!(xread(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(xread(bulk("x")).is_err());
    }
}
