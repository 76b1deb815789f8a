//! A `text/event-stream` parser written from the WHATWG HTML Living Standard, section
//! "Server-sent events", 9.2.6 "Interpreting an event stream" — what a browser's
//! `EventSource` does with the bytes ssehub writes. Independent of ssehub's own code: it is
//! the oracle of the `sse_encoder` fuzz target and of `tests/fuzz_regressions.rs` (which
//! includes this file with `#[path]`).
//!
//! The algorithm, step by step as the standard gives it:
//! - the stream is decoded as UTF-8 (invalid sequences become U+FFFD) and one leading BOM
//!   is stripped;
//! - lines end with CRLF, LF or a lone CR;
//! - an empty line dispatches the event; a line starting with ':' is a comment;
//! - otherwise the field name is the text before the first ':' and the value the text after
//!   it, with one leading space removed (no ':' at all: the whole line is the field name,
//!   the value is empty);
//! - `event` sets the event type buffer; `data` appends the value and a LF to the data
//!   buffer; `id` sets the last event ID buffer unless the value contains NUL; `retry` with
//!   only ASCII digits sets the reconnection time; other fields are ignored;
//! - dispatch: the last event ID buffer becomes the source's last event ID string; an empty
//!   data buffer dispatches nothing (both buffers are reset); otherwise one trailing LF is
//!   removed from the data and an event is fired with type "message" unless the event type
//!   buffer is non-empty; data and type buffers are reset (the last event ID buffer is not);
//! - at end of stream an event without its closing empty line is discarded.

/// One dispatched `MessageEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_type: String,
    pub data: String,
    pub last_event_id: String,
}

/// An incremental parser: feed it the stream in chunks of any size.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the current line (no terminator yet).
    line: Vec<u8>,
    /// The previous byte was a CR: a LF right after it belongs to the same line end.
    after_cr: bool,
    /// No line has ended yet (the BOM, if any, is at the start of the first line).
    seen_first_line: bool,
    data: String,
    event_type: String,
    last_event_id_buffer: String,
    /// The event source's last event ID string.
    pub last_event_id: String,
    /// The reconnection time, in milliseconds, from the last valid `retry` field.
    pub reconnection_time: Option<u64>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Consumes `bytes`; returns the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    events.extend(self.end_of_line(line));
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        events
    }

    /// Whether the parser holds nothing of an unfinished line or event.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && self.data.is_empty() && self.event_type.is_empty()
    }

    fn end_of_line(&mut self, mut line: Vec<u8>) -> Option<Event> {
        if !self.seen_first_line {
            self.seen_first_line = true;
            if line.starts_with(b"\xEF\xBB\xBF") {
                line.drain(..3);
            }
        }
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id_buffer = value.to_owned(),
            // Digits only: parsing fails only on overflow, which keeps the old value.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.reconnection_time = Some(ms);
                }
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        self.last_event_id = self.last_event_id_buffer.clone();
        if self.data.is_empty() {
            self.event_type.clear();
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event_type = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_owned(),
            t => t,
        };
        Some(Event {
            event_type,
            data,
            last_event_id: self.last_event_id.clone(),
        })
    }
}

/// Parses a whole stream (an unfinished last event is discarded, as at end of stream).
pub fn parse(bytes: &[u8]) -> (Vec<Event>, Parser) {
    let mut parser = Parser::new();
    let events = parser.feed(bytes);
    (events, parser)
}
