//! The client side of the wire: an incremental `text/event-stream` parser that follows the
//! EventSource rules a browser applies (fields, the last event ID, dispatch on a blank
//! line), and the load-test payload that every event carries.
//!
//! Both servers under test end lines with LF; a CR before it is dropped. A lone CR as a
//! line end (allowed by SSE, sent by neither server) is not supported here.
//!
//! What the two targets send differently, and how it is read:
//! - ssehub: `retry: N` first; each event `id: N` then `data:`; keepalive comment `:`;
//!   `event: reset` (no `id:` line) when a resume point cannot be honoured.
//! - nchan: a `: hi` comment first; each event `event:` (if any) then `id: T:N` (time and
//!   tag) then `data:`; keepalive is `event: ping` with no data, which EventSource never
//!   dispatches, so it is counted as a keepalive here.
//!
//! Ids are kept as opaque bytes (what EventSource resends in `Last-Event-ID`); order and
//! completeness are judged by the sequence number in the payload, never by the id.

/// The payload of every load-test event: `SEQ SCHED_NS SENT_NS ` then `x` padding up to the
/// requested size. `SCHED_NS` is when the open-loop schedule meant to publish it, `SENT_NS`
/// when the publisher actually wrote it; both `CLOCK_MONOTONIC`, shared by every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub seq: u64,
    pub sched_ns: u64,
    pub sent_ns: u64,
}

pub fn payload(p: Payload, size: usize) -> String {
    let mut s = format!("{} {} {} ", p.seq, p.sched_ns, p.sent_ns);
    while s.len() < size {
        s.push('x');
    }
    s
}

fn parse_payload(v: &[u8]) -> Option<Payload> {
    let mut it = v.split(|&b| b == b' ');
    let mut num = || -> Option<u64> {
        let f = it.next()?;
        if f.is_empty() || f.len() > 20 || !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(f).ok()?.parse().ok()
    };
    Some(Payload {
        seq: num()?,
        sched_ns: num()?,
        sent_ns: num()?,
    })
}

/// An event id as bytes (ssehub: up to 20 digits; nchan: `TIME:TAG`).
#[derive(Clone, Copy)]
pub struct Id {
    len: u8,
    bytes: [u8; 46],
}

impl Default for Id {
    fn default() -> Self {
        Id {
            len: 0,
            bytes: [0; 46],
        }
    }
}

impl Id {
    fn set(&mut self, v: &[u8]) {
        let n = v.len().min(self.bytes.len());
        self.bytes[..n].copy_from_slice(&v[..n]);
        self.len = n as u8;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a blank line (or a comment) produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Event(Payload),
    /// `event: reset`: the server could not prove the client missed nothing.
    Reset,
    /// A keepalive: an empty comment (`:`) or nchan's data-less `event: ping`.
    Keepalive,
    /// An event with data that is not a load-test payload.
    Foreign,
}

/// Whether the caller wants the rest of the bytes it fed (a client that disconnects
/// mid-read never sees them).
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    Message,
    Reset,
    Ping,
    Other,
}

/// Per-stream parser state. Small: the partial-line buffer is empty between reads in the
/// common case (events end at read boundaries).
#[derive(Default)]
pub struct Parser {
    partial: Vec<u8>,
    /// EventSource's "last event ID buffer": set by an `id:` field, kept across events.
    id_buffer: Id,
    /// The last event ID as of the last dispatch: what a reconnect sends.
    pub last_id: Id,
    has_data: bool,
    payload: Option<Payload>,
    kind: Kind,
}

impl Parser {
    /// Forgets a half-read line and event (the connection ended); keeps the last id.
    pub fn reset_connection(&mut self) {
        self.partial = Vec::new();
        self.id_buffer = self.last_id;
        self.has_data = false;
        self.payload = None;
        self.kind = Kind::Message;
    }

    /// Parses `bytes`, calling `on_item` for each dispatched event and keepalive until it
    /// answers `Flow::Stop`.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_item: impl FnMut(Item) -> Flow) -> Flow {
        if !self.partial.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                None => {
                    self.partial.extend_from_slice(bytes);
                    return Flow::Continue;
                }
                Some(i) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&bytes[..i]);
                    bytes = &bytes[i + 1..];
                    if let Some(item) = self.line(&line)
                        && on_item(item) == Flow::Stop
                    {
                        return Flow::Stop;
                    }
                }
            }
        }
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            let line = &bytes[..i];
            bytes = &bytes[i + 1..];
            if let Some(item) = self.line(line)
                && on_item(item) == Flow::Stop
            {
                return Flow::Stop;
            }
        }
        if !bytes.is_empty() {
            self.partial.extend_from_slice(bytes);
        }
        Flow::Continue
    }

    fn line(&mut self, line: &[u8]) -> Option<Item> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if let Some(comment) = line.strip_prefix(b":") {
            return comment.trim_ascii().is_empty().then_some(Item::Keepalive);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if !self.has_data {
                    self.payload = parse_payload(value);
                }
                self.has_data = true;
            }
            b"id" if !value.contains(&0) => self.id_buffer.set(value),
            b"event" => {
                self.kind = match value {
                    b"message" => Kind::Message,
                    b"reset" => Kind::Reset,
                    b"ping" => Kind::Ping,
                    _ => Kind::Other,
                }
            }
            _ => {} // retry and unknown fields
        }
        None
    }

    fn dispatch(&mut self) -> Option<Item> {
        self.last_id = self.id_buffer;
        let kind = std::mem::take(&mut self.kind);
        let payload = self.payload.take();
        if !std::mem::take(&mut self.has_data) {
            return (kind == Kind::Ping).then_some(Item::Keepalive);
        }
        Some(match (kind, payload) {
            (Kind::Reset, _) => Item::Reset,
            (Kind::Message, Some(p)) => Item::Event(p),
            _ => Item::Foreign,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(p: &mut Parser, chunks: &[&[u8]]) -> Vec<Item> {
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |i| {
                out.push(i);
                Flow::Continue
            });
        }
        out
    }

    fn pl(seq: u64) -> Payload {
        Payload {
            seq,
            sched_ns: 10 + seq,
            sent_ns: 20 + seq,
        }
    }

    #[test]
    fn payload_round_trip_and_size() {
        let s = payload(pl(7), 100);
        assert_eq!(s.len(), 100);
        assert_eq!(parse_payload(s.as_bytes()), Some(pl(7)));
        let short = payload(pl(7), 0);
        assert_eq!(short, "7 17 27 ");
        assert_eq!(parse_payload(b"{\"lastEventId\":\"1\"}"), None);
    }

    #[test]
    fn ssehub_stream_split_anywhere() {
        let wire = format!(
            "retry: 3000\nid: 41\ndata: {}\n\n:\nid: 42\ndata: {}\n\n",
            payload(pl(0), 60),
            payload(pl(1), 60)
        );
        let bytes = wire.as_bytes();
        for cut in 0..bytes.len() {
            let mut p = Parser::default();
            let got = items(&mut p, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(
                got,
                vec![Item::Event(pl(0)), Item::Keepalive, Item::Event(pl(1))],
                "cut at {cut}"
            );
            assert_eq!(p.last_id.as_bytes(), b"42");
        }
    }

    #[test]
    fn nchan_stream() {
        let wire = format!(
            ": hi\n\nevent: foo\nid: 1795620641:1\ndata: {}\n\nevent: ping\n\nid: 1795620641:2\ndata: {}\n\n",
            payload(pl(3), 0),
            payload(pl(4), 0)
        );
        let mut p = Parser::default();
        let got = items(&mut p, &[wire.as_bytes()]);
        // `foo` is not a plain message, so it is foreign; the ping is a keepalive.
        assert_eq!(
            got,
            vec![Item::Foreign, Item::Keepalive, Item::Event(pl(4))]
        );
        assert_eq!(p.last_id.as_bytes(), b"1795620641:2");
    }

    #[test]
    fn reset_keeps_last_id_and_is_not_a_payload() {
        let wire = "retry: 3000\nevent: reset\ndata: {\"lastEventId\":\"5\",\"earliestId\":\"9\"}\n\nid: 9\ndata: 2 3 4 \n\n";
        let mut p = Parser::default();
        p.id_buffer.set(b"5");
        p.last_id.set(b"5");
        let got = items(&mut p, &[wire.as_bytes()]);
        assert_eq!(
            got,
            vec![
                Item::Reset,
                Item::Event(Payload {
                    seq: 2,
                    sched_ns: 3,
                    sent_ns: 4
                })
            ]
        );
        assert_eq!(p.last_id.as_bytes(), b"9");
    }

    #[test]
    fn id_is_committed_only_at_dispatch() {
        let mut p = Parser::default();
        items(&mut p, &[b"id: 1\ndata: 0 0 0\n\nid: 2\ndata: 1 1"]);
        assert_eq!(p.last_id.as_bytes(), b"1");
        p.reset_connection();
        let got = items(&mut p, &[b"data: 5 5 5\n\n"]);
        assert_eq!(got.len(), 1);
        assert_eq!(p.last_id.as_bytes(), b"1");
    }

    #[test]
    fn stop_discards_the_rest() {
        let mut p = Parser::default();
        let mut n = 0;
        let flow = p.feed(b"id: 1\ndata: 0 0 0\n\nid: 2\ndata: 1 0 0\n\n", |_| {
            n += 1;
            Flow::Stop
        });
        assert_eq!(flow, Flow::Stop);
        assert_eq!(n, 1);
        assert_eq!(p.last_id.as_bytes(), b"1");
    }

    #[test]
    fn crlf_lines_and_field_without_colon() {
        let mut p = Parser::default();
        let got = items(
            &mut p,
            &[b"id: 7\r\ndata\r\n\r\nid: 8\r\ndata: 1 2 3\r\n\r\n"],
        );
        assert_eq!(
            got,
            vec![
                Item::Foreign,
                Item::Event(Payload {
                    seq: 1,
                    sched_ns: 2,
                    sent_ns: 3
                })
            ]
        );
    }
}
