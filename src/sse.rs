//! The SSE wire format (protocol 2.1), as pure functions: an event is encoded to bytes once and
//! the resulting `Frame` is shared by every subscriber. Never does I/O.

use std::rc::Rc;

/// Encoded bytes shared (reference-counted, never copied) by every queue that sends them.
pub type Frame = Rc<[u8]>;

/// The keepalive comment sent on a stream that was quiet for `streams.keepalive`.
pub const KEEPALIVE: &[u8] = b":\n";

/// Encodes one event: `id:`, `event:` unless the type is `message`, one `data:` line per
/// payload line (CRLF, LF and lone CR all end a line), then the blank line.
pub fn encode_event(id: u64, event: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32 + event.map_or(0, str::len));
    out.extend_from_slice(b"id: ");
    push_decimal(&mut out, id);
    out.push(b'\n');
    if let Some(event) = event.filter(|e| *e != "message") {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    push_data_lines(&mut out, data);
    out.push(b'\n');
    out
}

/// `data:` lines for a payload; an empty line is written `data:` with no space, so an empty
/// payload is exactly one `data:\n` line.
pub fn push_data_lines(out: &mut Vec<u8>, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let end_of_line = match bytes.get(i) {
            None => Some(i),
            Some(b'\n') => Some(i + 1),
            Some(b'\r') if bytes.get(i + 1) == Some(&b'\n') => Some(i + 2),
            Some(b'\r') => Some(i + 1),
            Some(_) => None,
        };
        match end_of_line {
            Some(next) => {
                let line = &bytes[start..i];
                if line.is_empty() {
                    out.extend_from_slice(b"data:\n");
                } else {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                if next == i {
                    break; // end of payload
                }
                start = next;
                i = next;
            }
            None => i += 1,
        }
    }
}

/// The `reset` event (protocol 2.2): no `id:` line, so the client's last id stays as it was
/// until a replayed event arrives. `last_event_id` is echoed as the client sent it.
pub fn encode_reset(last_event_id: &str, earliest_id: Option<u64>) -> Vec<u8> {
    let quoted = serde_json::to_string(last_event_id).unwrap_or_else(|_| "\"\"".into());
    let earliest = earliest_id.map_or_else(|| "null".to_string(), |id| format!("\"{id}\""));
    format!("event: reset\ndata: {{\"lastEventId\":{quoted},\"earliestId\":{earliest}}}\n\n")
        .into_bytes()
}

/// `retry: N\n`, the reconnection delay in milliseconds.
pub fn retry(ms: u64) -> Vec<u8> {
    let mut out = b"retry: ".to_vec();
    push_decimal(&mut out, ms);
    out.push(b'\n');
    out
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(event: Option<&str>, data: &str) -> String {
        String::from_utf8(encode_event(7, event, data)).unwrap()
    }

    #[test]
    fn single_line() {
        assert_eq!(enc(None, "hello"), "id: 7\ndata: hello\n\n");
        assert_eq!(enc(Some("note"), "hi"), "id: 7\nevent: note\ndata: hi\n\n");
        assert_eq!(enc(Some("message"), "hi"), "id: 7\ndata: hi\n\n");
    }

    #[test]
    fn every_line_break_splits() {
        assert_eq!(enc(None, "a\nb"), "id: 7\ndata: a\ndata: b\n\n");
        assert_eq!(enc(None, "a\r\nb"), "id: 7\ndata: a\ndata: b\n\n");
        assert_eq!(enc(None, "a\rb"), "id: 7\ndata: a\ndata: b\n\n");
        assert_eq!(enc(None, "a\r\rb"), "id: 7\ndata: a\ndata:\ndata: b\n\n");
        assert_eq!(enc(None, "a\n\r\nb"), "id: 7\ndata: a\ndata:\ndata: b\n\n");
    }

    #[test]
    fn n_breaks_give_n_plus_one_lines() {
        assert_eq!(enc(None, ""), "id: 7\ndata:\n\n");
        assert_eq!(enc(None, "\n"), "id: 7\ndata:\ndata:\n\n");
        assert_eq!(enc(None, "x\r"), "id: 7\ndata: x\ndata:\n\n");
        assert_eq!(enc(None, "\r\n\r\n"), "id: 7\ndata:\ndata:\ndata:\n\n");
    }

    #[test]
    fn payload_cannot_inject_fields() {
        let out = enc(None, "x\n\nid: 99\r\nevent: evil");
        assert_eq!(
            out,
            "id: 7\ndata: x\ndata:\ndata: id: 99\ndata: event: evil\n\n"
        );
    }

    #[test]
    fn utf8_kept() {
        assert_eq!(enc(None, "héllo ✓ 🚀"), "id: 7\ndata: héllo ✓ 🚀\n\n");
    }

    #[test]
    fn reset_event() {
        assert_eq!(
            encode_reset("12", Some(34)),
            b"event: reset\ndata: {\"lastEventId\":\"12\",\"earliestId\":\"34\"}\n\n"
        );
        assert_eq!(
            encode_reset("a\"b\n", None),
            b"event: reset\ndata: {\"lastEventId\":\"a\\\"b\\n\",\"earliestId\":null}\n\n"
        );
    }

    #[test]
    fn retry_line() {
        assert_eq!(retry(3250), b"retry: 3250\n");
    }
}
