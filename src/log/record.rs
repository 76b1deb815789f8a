//! One record: the payload encoding (`encode_payload` / `decode_payload`) and the framing
//! `[u32 LE payload length][u32 LE CRC-32C of payload][payload]`.
//!
//! Payload, all integers little-endian:
//!
//! ```text
//! id                 u64
//! published_unix_ms  u64
//! flags              u8    bit 0: final; other bits must be 0
//! topic count        u8    1..=255
//! per topic:         len u8 (1..=255), then the name (UTF-8)
//! event len          u8    0: no event type
//! event              the type (UTF-8)
//! data               the rest of the payload (UTF-8, may be empty)
//! ```

use super::crc::crc32c;
use std::fmt;

/// Bytes of framing before each payload: length, then checksum.
pub const HEADER_LEN: usize = 8;
/// The largest payload accepted on either side (16 MiB).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// The smallest payload that can parse: id, time, flags, count 1, one 1-byte topic, event len.
pub const MIN_PAYLOAD: usize = 8 + 8 + 1 + 1 + 2 + 1;

const FLAG_FINAL: u8 = 1;

/// An event to append, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub id: u64,
    pub published_unix_ms: u64,
    pub is_final: bool,
    pub topics: &'a [Box<str>],
    /// `Some("")` is stored as no event type.
    pub event: Option<&'a str>,
    pub data: &'a str,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub id: u64,
    pub published_unix_ms: u64,
    pub is_final: bool,
    pub topics: Vec<Box<str>>,
    pub event: Option<Box<str>>,
    pub data: Box<str>,
}

impl Recovered {
    /// A borrowed view, e.g. to append it again.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            id: self.id,
            published_unix_ms: self.published_unix_ms,
            is_final: self.is_final,
            topics: &self.topics,
            event: self.event.as_deref(),
            data: &self.data,
        }
    }
}

/// Why a record cannot be encoded (the caller broke a limit the ingest enforces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    NoTopics,
    TooManyTopics(usize),
    TopicLength(usize),
    EventTooLong(usize),
    TooLarge(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NoTopics => write!(f, "record has no topic"),
            EncodeError::TooManyTopics(n) => write!(f, "record has {n} topics (max 255)"),
            EncodeError::TopicLength(n) => write!(f, "topic of {n} bytes (1..=255 allowed)"),
            EncodeError::EventTooLong(n) => write!(f, "event type of {n} bytes (max 255)"),
            EncodeError::TooLarge(n) => write!(f, "record payload of {n} bytes (max 16 MiB)"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Why a payload does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    TooShort,
    TooLarge,
    UnknownFlags(u8),
    NoTopics,
    TopicPastEnd,
    EmptyTopic,
    TopicNotUtf8,
    EventPastEnd,
    EventNotUtf8,
    DataNotUtf8,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DecodeError::TooShort => "payload too short",
            DecodeError::TooLarge => "payload over 16 MiB",
            DecodeError::UnknownFlags(b) => return write!(f, "unknown flag bits {b:#04x}"),
            DecodeError::NoTopics => "no topic",
            DecodeError::TopicPastEnd => "topic runs past the payload",
            DecodeError::EmptyTopic => "empty topic",
            DecodeError::TopicNotUtf8 => "topic is not UTF-8",
            DecodeError::EventPastEnd => "event type runs past the payload",
            DecodeError::EventNotUtf8 => "event type is not UTF-8",
            DecodeError::DataNotUtf8 => "data is not UTF-8",
        };
        f.write_str(s)
    }
}

impl std::error::Error for DecodeError {}

/// Appends the payload of `rec` to `out`. On error `out` is left unchanged.
pub fn encode_payload(rec: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let n = rec.topics.len();
    if n == 0 {
        return Err(EncodeError::NoTopics);
    }
    if n > u8::MAX as usize {
        return Err(EncodeError::TooManyTopics(n));
    }
    let mut size = 8 + 8 + 1 + 1 + 1;
    for t in rec.topics {
        if t.is_empty() || t.len() > u8::MAX as usize {
            return Err(EncodeError::TopicLength(t.len()));
        }
        size += 1 + t.len();
    }
    let event = rec.event.unwrap_or("");
    if event.len() > u8::MAX as usize {
        return Err(EncodeError::EventTooLong(event.len()));
    }
    size += event.len() + rec.data.len();
    if size > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge(size));
    }
    out.reserve(size);
    out.extend_from_slice(&rec.id.to_le_bytes());
    out.extend_from_slice(&rec.published_unix_ms.to_le_bytes());
    out.push(if rec.is_final { FLAG_FINAL } else { 0 });
    out.push(n as u8);
    for t in rec.topics {
        out.push(t.len() as u8);
        out.extend_from_slice(t.as_bytes());
    }
    out.push(event.len() as u8);
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(rec.data.as_bytes());
    Ok(())
}

/// Appends one framed record (header and payload) to `out`. On error `out` is unchanged.
pub fn encode_record(rec: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = encode_payload(rec, out) {
        out.truncate(start);
        return Err(e);
    }
    let payload = &out[start + HEADER_LEN..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc);
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

/// Parses a payload (without its frame header). Never panics, whatever the bytes.
pub fn decode_payload(payload: &[u8]) -> Result<Recovered, DecodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge);
    }
    let mut c = Cursor(payload);
    let (Some(id), Some(published_unix_ms), Some(flags), Some(count)) =
        (c.u64(), c.u64(), c.u8(), c.u8())
    else {
        return Err(DecodeError::TooShort);
    };
    if flags & !FLAG_FINAL != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    if count == 0 {
        return Err(DecodeError::NoTopics);
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = c.u8().ok_or(DecodeError::TopicPastEnd)?;
        if len == 0 {
            return Err(DecodeError::EmptyTopic);
        }
        let bytes = c.take(len as usize).ok_or(DecodeError::TopicPastEnd)?;
        let name = std::str::from_utf8(bytes).map_err(|_| DecodeError::TopicNotUtf8)?;
        topics.push(Box::from(name));
    }
    let event_len = c.u8().ok_or(DecodeError::EventPastEnd)?;
    let event = if event_len == 0 {
        None
    } else {
        let bytes = c
            .take(event_len as usize)
            .ok_or(DecodeError::EventPastEnd)?;
        let e = std::str::from_utf8(bytes).map_err(|_| DecodeError::EventNotUtf8)?;
        Some(Box::from(e))
    };
    let data = std::str::from_utf8(c.0).map_err(|_| DecodeError::DataNotUtf8)?;
    Ok(Recovered {
        id,
        published_unix_ms,
        is_final: flags & FLAG_FINAL != 0,
        topics,
        event,
        data: Box::from(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rng::Rng;

    /// Test inputs from the crate's generator (deterministic for a seed).
    trait Gen {
        fn text(&mut self, min_bytes: usize, max_bytes: usize) -> String;
    }

    impl Gen for Rng {
        /// A random UTF-8 string of at most `max_bytes` bytes, mixing 1-4 byte characters.
        fn text(&mut self, min_bytes: usize, max_bytes: usize) -> String {
            const POOL: &[char] = &[
                'a', 'Z', '0', ':', '/', '@', '-', '_', ' ', '\n', '\r', '\0', '"', 'é', 'ß', 'Ж',
                '€', '中', '文', '🎉', '💡', '\u{FFFD}', '\u{7F}',
            ];
            let target = min_bytes + self.below((max_bytes - min_bytes + 1) as u64) as usize;
            let mut s = String::new();
            loop {
                let ch = POOL[self.below(POOL.len() as u64) as usize];
                if s.len() + ch.len_utf8() > target {
                    break;
                }
                s.push(ch);
            }
            while s.len() < min_bytes {
                s.push('x');
            }
            s
        }
    }

    fn random_record(rng: &mut Rng) -> Recovered {
        let n_topics = 1 + rng.below(40) as usize;
        let topics = (0..n_topics)
            .map(|_| rng.text(1, 255).into_boxed_str())
            .collect();
        let event = if rng.below(3) == 0 {
            None
        } else {
            Some(rng.text(1, 255).into_boxed_str())
        };
        let data_max = match rng.below(10) {
            0 => 0,
            1..=7 => 300,
            _ => 70_000,
        };
        Recovered {
            id: rng.next_u64(),
            published_unix_ms: rng.next_u64(),
            is_final: rng.below(2) == 0,
            topics,
            event,
            data: rng.text(0, data_max).into_boxed_str(),
        }
    }

    #[test]
    fn random_records_round_trip() {
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut buf = Vec::new();
        for _ in 0..2_000 {
            let rec = random_record(&mut rng);
            buf.clear();
            encode_payload(&rec.as_ref(), &mut buf).expect("within limits");
            assert_eq!(decode_payload(&buf).as_ref(), Ok(&rec));
            // Every strict prefix that still parses must at least be a different record.
            let cut = rng.below(buf.len() as u64) as usize;
            if let Ok(short) = decode_payload(&buf[..cut]) {
                assert_ne!(short, rec);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(12345);
        let mut buf = Vec::new();
        for i in 0..50_000 {
            buf.clear();
            let len = rng.below(if i % 10 == 0 { 2_000 } else { 64 }) as usize;
            buf.extend((0..len).map(|_| rng.next_u64() as u8));
            if i % 2 == 0 && len > 18 {
                // Plausible headers reach deeper into the parser.
                buf[16] = rng.below(2) as u8;
                buf[17] = rng.below(4) as u8;
            }
            let _ = decode_payload(&buf);
        }
        // Mutations of valid payloads.
        for _ in 0..20_000 {
            let rec = random_record(&mut rng);
            buf.clear();
            encode_payload(&rec.as_ref(), &mut buf).expect("within limits");
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(buf.len() as u64) as usize;
                buf[at] = rng.next_u64() as u8;
            }
            let _ = decode_payload(&buf);
        }
    }

    #[test]
    fn limits_are_refused_on_encode() {
        let topics: Vec<Box<str>> = vec!["t".into()];
        let ok = RecordRef {
            id: 1,
            published_unix_ms: 2,
            is_final: false,
            topics: &topics,
            event: None,
            data: "",
        };
        let mut out = vec![7u8];
        encode_record(&ok, &mut out).expect("valid");
        assert_eq!(out.len(), 1 + HEADER_LEN + MIN_PAYLOAD);

        let long_topic: Vec<Box<str>> = vec!["x".repeat(256).into()];
        let empty_topic: Vec<Box<str>> = vec!["".into()];
        let many: Vec<Box<str>> = (0..256).map(|_| Box::from("t")).collect();
        let long_event = "e".repeat(256);
        let huge = "d".repeat(MAX_PAYLOAD);
        let cases = [
            RecordRef { topics: &[], ..ok },
            RecordRef {
                topics: &long_topic,
                ..ok
            },
            RecordRef {
                topics: &empty_topic,
                ..ok
            },
            RecordRef {
                topics: &many,
                ..ok
            },
            RecordRef {
                event: Some(&long_event),
                ..ok
            },
            RecordRef { data: &huge, ..ok },
        ];
        for bad in cases {
            let before = out.clone();
            assert!(encode_record(&bad, &mut out).is_err());
            assert_eq!(out, before, "nothing written on error");
        }
        // Limits themselves are fine: 255 topics of 255 bytes, a 255-byte event.
        let max_topics: Vec<Box<str>> = (0..255).map(|_| "y".repeat(255).into()).collect();
        let max_event = "e".repeat(255);
        let max = RecordRef {
            topics: &max_topics,
            event: Some(&max_event),
            ..ok
        };
        out.clear();
        encode_payload(&max, &mut out).expect("at the limits");
        let back = decode_payload(&out).expect("decodes");
        assert_eq!(back.topics.len(), 255);
        assert_eq!(back.event.as_deref(), Some(max_event.as_str()));
    }

    #[test]
    fn decode_rejects_each_kind_of_damage() {
        let topics: Vec<Box<str>> = vec!["ab".into()];
        let rec = RecordRef {
            id: 1,
            published_unix_ms: 2,
            is_final: true,
            topics: &topics,
            event: Some("ev"),
            data: "hé",
        };
        let mut good = Vec::new();
        encode_payload(&rec, &mut good).expect("valid");
        let with = |at: usize, b: u8| {
            let mut p = good.clone();
            p[at] = b;
            decode_payload(&p)
        };
        assert_eq!(decode_payload(&good[..17]), Err(DecodeError::TooShort));
        assert_eq!(with(16, 3), Err(DecodeError::UnknownFlags(3)));
        assert_eq!(with(17, 0), Err(DecodeError::NoTopics));
        assert_eq!(with(18, 0), Err(DecodeError::EmptyTopic));
        assert_eq!(with(18, 200), Err(DecodeError::TopicPastEnd));
        assert_eq!(with(19, 0xFF), Err(DecodeError::TopicNotUtf8));
        assert_eq!(with(21, 250), Err(DecodeError::EventPastEnd));
        assert_eq!(with(22, 0xC0), Err(DecodeError::EventNotUtf8));
        assert_eq!(with(good.len() - 1, 0xFF), Err(DecodeError::DataNotUtf8));
        let d = decode_payload(&good).expect("valid");
        assert!(d.is_final);
        assert_eq!(&*d.data, "hé");
    }
}
