//! The ingest side: producers on a Unix socket write newline-delimited JSON, one answer
//! line per input line, in order. This module owns the socket file, the per-producer
//! buffers and line framing; decoding is `line`, publishing is the hub's.

pub mod line;

use mio::net::{UnixListener, UnixStream};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Answers waiting for their batch to become durable: past this many, the producer is not
/// read from until a sync completes.
pub const HELD_LIMIT: usize = 65_536;

/// Batch number of answers whose records are in the log's buffer, not yet written.
pub const BATCH_UNWRITTEN: u64 = u64::MAX;

/// A producer's answers, in input order: `ready` bytes to write, and `held` answers whose
/// events wait for their log batch to become durable (protocol 3.2: `ok` only once durable).
#[derive(Debug, Default)]
pub struct Answers {
    ready: Vec<u8>,
    held: VecDeque<Held>,
    /// `ok` and error answers written since the last `take_counts` (`/metrics`).
    oks: u64,
    errors: u64,
}

#[derive(Debug)]
struct Held {
    /// The log batch the answer waits for (0: none, only earlier answers).
    batch: u64,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    Ok(u64),
    Err(String),
    /// A whole line (an admin command's answer).
    Raw(String),
    /// Cluster mode: waits for Redis's answer to publish `seq` (`resolve`).
    Remote(u64),
}

impl Answers {
    /// `{"ok":true,...}` for event `id`, due once `batch` is durable (None: at once).
    pub fn ok(&mut self, id: u64, batch: Option<u64>) {
        match batch {
            None if self.held.is_empty() => self.write(Answer::Ok(id)),
            batch => self.held.push_back(Held {
                batch: batch.unwrap_or(BATCH_UNWRITTEN),
                answer: Answer::Ok(id),
            }),
        }
    }

    /// `{"ok":false,...}`, written after every earlier answer.
    pub fn error(&mut self, reason: &str) {
        if self.held.is_empty() {
            self.errors += 1;
            line::write_error(&mut self.ready, reason);
        } else {
            // Behind held answers: it leaves with the batch being built (or at once, when
            // that batch turns out to hold no record).
            self.held.push_back(Held {
                batch: BATCH_UNWRITTEN,
                answer: Answer::Err(reason.to_string()),
            });
        }
    }

    /// A complete answer line (without its newline), e.g. an admin command's, written
    /// after every earlier answer.
    pub fn raw(&mut self, line: &str) {
        if self.held.is_empty() {
            self.write(Answer::Raw(line.to_string()));
        } else {
            self.held.push_back(Held {
                batch: BATCH_UNWRITTEN,
                answer: Answer::Raw(line.to_string()),
            });
        }
    }

    /// Cluster mode: the answer to publish `seq`, sent to Redis; it leaves once `resolve`d
    /// and every earlier answer has left.
    pub fn remote(&mut self, seq: u64) {
        self.held.push_back(Held {
            batch: 0,
            answer: Answer::Remote(seq),
        });
    }

    /// Redis answered publish `seq`: `Ok(id)` or the whole reason. Writes what became due.
    /// Returns false when no answer waits for `seq`.
    pub fn resolve(&mut self, seq: u64, result: Result<u64, &str>) -> bool {
        let Some(h) = self
            .held
            .iter_mut()
            .find(|h| matches!(h.answer, Answer::Remote(s) if s == seq))
        else {
            return false;
        };
        h.answer = match result {
            Ok(id) => Answer::Ok(id),
            Err(reason) => Answer::Err(reason.to_string()),
        };
        self.release(0);
        true
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The unwritten batch got number `seq` (or, with `None`, held nothing that needs one).
    /// Answers waiting for Redis (cluster mode) are passed over: they are not in a batch.
    pub fn batch_written(&mut self, seq: Option<u64>) {
        for h in self
            .held
            .iter_mut()
            .rev()
            .take_while(|h| h.batch == BATCH_UNWRITTEN || matches!(h.answer, Answer::Remote(_)))
            .filter(|h| h.batch == BATCH_UNWRITTEN)
        {
            h.batch = seq.unwrap_or(0);
        }
    }

    /// The batch being built could not be written: its `ok` answers become `reason`; they
    /// still leave only after every earlier answer.
    pub fn refuse_unwritten(&mut self, reason: &str) {
        for h in self
            .held
            .iter_mut()
            .rev()
            .take_while(|h| h.batch == BATCH_UNWRITTEN)
        {
            h.batch = 0;
            if matches!(h.answer, Answer::Ok(_)) {
                h.answer = Answer::Err(reason.to_string());
            }
        }
    }

    /// Releases answers whose batches are durable (`batch <= durable`), in order.
    pub fn release(&mut self, durable: u64) {
        while let Some(h) = self.held.front() {
            if h.batch > durable || matches!(h.answer, Answer::Remote(_)) {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                self.write(h.answer);
            }
        }
    }

    /// Batches up to `failed` will never be durable: their `ok` answers become errors.
    /// Only batches newer than `durable` are affected.
    pub fn fail(&mut self, durable: u64, failed: u64, reason: &str) {
        while let Some(h) = self.held.front() {
            if h.batch > failed || matches!(h.answer, Answer::Remote(_)) {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                let answer = match h.answer {
                    Answer::Ok(_) if h.batch > durable => Answer::Err(reason.to_string()),
                    other => other,
                };
                self.write(answer);
            }
        }
    }

    /// The `ok` and error answers written since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.oks),
            std::mem::take(&mut self.errors),
        )
    }

    /// The answer lines written so far (`POST /publish` sends them as its body).
    pub fn take_ready(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.ready)
    }

    fn write(&mut self, answer: Answer) {
        match answer {
            Answer::Ok(id) => {
                self.oks += 1;
                line::write_ok(&mut self.ready, id);
            }
            Answer::Err(reason) => {
                self.errors += 1;
                line::write_error(&mut self.ready, &reason);
            }
            Answer::Raw(text) => {
                self.ready.extend_from_slice(text.as_bytes());
                self.ready.push(b'\n');
            }
            // `release` never lets an unresolved one through.
            Answer::Remote(_) => {}
        }
    }
}

/// A producer whose unread answers pass this many bytes is not read from until they drain:
/// a producer that never reads is slowed, never buffered without bound.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// Binds the ingest socket at `path` with file mode `mode`. A stale socket file left by a
/// crashed run is replaced; a live one (another server answering on it) is not stolen.
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            // Nobody listens: a stale file from a crashed run.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} exists and cannot be checked ({e}); not replacing it",
                        path.display()
                    ),
                ));
            }
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `sock`; getsockopt writes at most `len`
    // bytes into `cred`, a properly sized and aligned ucred on our stack, and sets `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Gives the socket file to group `name` (`ingest.group`).
pub fn set_group(path: &Path, name: &str) -> io::Result<()> {
    let group = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ingest.group holds a NUL"))?;
    // SAFETY: getgrnam reads a NUL-terminated string we own; the returned pointer (if not
    // null) points to static storage that we read once, immediately, on this thread
    // before any other call that could overwrite it (start-up, single-threaded).
    let gid = unsafe {
        let entry = libc::getgrnam(group.as_ptr());
        if entry.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("ingest.group {name:?}: no such group"),
            ));
        }
        (*entry).gr_gid
    };
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// One producer connection.
#[derive(Debug)]
pub struct Producer {
    pub sock: UnixStream,
    /// The start of a line whose newline has not arrived yet.
    partial: Vec<u8>,
    /// Answers, written from `answers_written` on.
    pub answers: Answers,
    answers_written: usize,
    /// Inside a line already known to be too long: drop bytes until its newline.
    discarding: bool,
    /// The producer closed its side; close once the answers are written.
    pub eof: bool,
    /// Input read but not handled yet: the lines after one that must take effect before
    /// anything after it is handled (`Flow::Pause`, a reload).
    held: Vec<u8>,
}

/// What the line handler wants after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Next,
    /// Stop here: the rest of the input waits (`take_held`) until the caller has acted.
    Pause,
}

/// A complete input line, or the end of one that was too long.
pub enum InputLine<'a> {
    Line(&'a [u8]),
    TooLong,
}

impl<'a> InputLine<'a> {
    /// `bytes` as a line of at most `max_line` bytes.
    pub fn of(bytes: &'a [u8], max_line: usize) -> InputLine<'a> {
        match bytes.len() > max_line {
            true => InputLine::TooLong,
            false => InputLine::Line(bytes),
        }
    }

    /// Decodes the line (`line::decode_line`); one that was too long is refused.
    pub fn decode(self, max_line: usize, max_topics: usize) -> Result<line::Line, line::LineError> {
        match self {
            InputLine::TooLong => Err(line::LineError(format!(
                "line longer than {max_line} bytes"
            ))),
            InputLine::Line(bytes) => line::decode_line(bytes, max_topics),
        }
    }
}

impl Producer {
    pub fn new(sock: UnixStream) -> Self {
        Producer {
            sock,
            partial: Vec::new(),
            answers: Answers::default(),
            answers_written: 0,
            discarding: false,
            eof: false,
            held: Vec::new(),
        }
    }

    /// Input is waiting behind a paused line (`take_held` handles it).
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Bytes of answers not yet written.
    pub fn unwritten(&self) -> usize {
        self.answers.ready.len() - self.answers_written
    }

    /// Whether more input may be read now (answers are below the limits).
    pub fn may_read(&self) -> bool {
        !self.eof && self.unwritten() < ANSWER_LIMIT && self.answers.held() < HELD_LIMIT
    }

    /// Everything answered and written: at end of input the connection may close.
    pub fn drained(&self) -> bool {
        self.unwritten() == 0 && self.answers.held() == 0
    }

    /// Splits `input` into lines, calling `on_line` for each complete one (and for each
    /// over-long one, once, at its newline) with the answer buffer to write into. Bytes
    /// after the last newline are kept for the next call, up to `max_line` bytes. When
    /// `on_line` answers `Flow::Pause`, the input after that line is held, untouched, for
    /// `take_held`; returns whether that happened.
    pub fn take_input(
        &mut self,
        input: &[u8],
        max_line: usize,
        mut on_line: impl FnMut(InputLine<'_>, &mut Answers) -> Flow,
    ) -> bool {
        let mut rest = input;
        while !rest.is_empty() {
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                if !self.discarding {
                    if self.partial.len() + rest.len() > max_line {
                        self.discarding = true;
                        self.partial = Vec::new();
                    } else {
                        self.partial.extend_from_slice(rest);
                    }
                }
                return false;
            };
            let (head, tail) = (&rest[..newline], &rest[newline + 1..]);
            rest = tail;
            let flow = if self.discarding {
                self.discarding = false;
                on_line(InputLine::TooLong, &mut self.answers)
            } else if self.partial.is_empty() {
                let line = if head.len() > max_line {
                    InputLine::TooLong
                } else {
                    InputLine::Line(head)
                };
                on_line(line, &mut self.answers)
            } else {
                self.partial.extend_from_slice(head);
                let line = if self.partial.len() > max_line {
                    InputLine::TooLong
                } else {
                    InputLine::Line(&self.partial)
                };
                let flow = on_line(line, &mut self.answers);
                self.partial.clear();
                flow
            };
            if flow == Flow::Pause && !rest.is_empty() {
                self.held.extend_from_slice(rest);
                return true;
            }
        }
        false
    }

    /// Handles the input held behind a paused line, as `take_input` (it may pause again).
    pub fn take_held(
        &mut self,
        max_line: usize,
        on_line: impl FnMut(InputLine<'_>, &mut Answers) -> Flow,
    ) -> bool {
        let held = std::mem::take(&mut self.held);
        self.take_input(&held, max_line, on_line)
    }

    /// At end of input: a last line without its newline still counts as a line.
    pub fn finish_input(
        &mut self,
        max_line: usize,
        mut on_line: impl FnMut(InputLine<'_>, &mut Answers) -> Flow,
    ) {
        if self.discarding {
            self.discarding = false;
            on_line(InputLine::TooLong, &mut self.answers);
        } else if !self.partial.is_empty() {
            let line = if self.partial.len() > max_line {
                InputLine::TooLong
            } else {
                InputLine::Line(&self.partial)
            };
            on_line(line, &mut self.answers);
            self.partial = Vec::new();
        }
    }

    /// Writes pending answers until done or the socket is full.
    pub fn flush_answers(&mut self) -> io::Result<()> {
        while self.answers_written < self.answers.ready.len() {
            match self.sock.write(&self.answers.ready[self.answers_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.answers_written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.answers.ready.clear();
        self.answers_written = 0;
        if self.answers.ready.capacity() > ANSWER_LIMIT {
            self.answers.ready = Vec::new();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> Producer {
        let (a, _b) = UnixStream::pair().unwrap();
        Producer::new(a)
    }

    fn lines(p: &mut Producer, input: &[u8], max: usize) -> Vec<String> {
        let mut seen = Vec::new();
        p.take_input(input, max, |l, _| {
            seen.push(match l {
                InputLine::Line(b) => String::from_utf8_lossy(b).into_owned(),
                InputLine::TooLong => "<too long>".into(),
            });
            Flow::Next
        });
        seen
    }

    #[test]
    fn a_paused_line_holds_the_rest_of_the_input() {
        let mut p = producer();
        let mut seen = Vec::new();
        let mut on_line = |l: InputLine<'_>, _: &mut Answers| {
            let InputLine::Line(b) = l else {
                panic!("too long");
            };
            seen.push(String::from_utf8_lossy(b).into_owned());
            match b {
                b"pause" => Flow::Pause,
                _ => Flow::Next,
            }
        };
        assert!(p.take_input(b"a\npause\nb\npause\nc\npar", 100, &mut on_line));
        assert!(p.has_held());
        assert!(p.take_held(100, &mut on_line), "the second pause");
        assert!(!p.take_held(100, &mut on_line));
        assert!(!p.has_held());
        assert!(!p.take_input(b"tial\n", 100, &mut on_line));
        assert_eq!(seen, ["a", "pause", "b", "pause", "c", "partial"]);
    }

    fn text(a: &Answers) -> String {
        String::from_utf8(a.ready.clone()).unwrap()
    }

    #[test]
    fn held_answers_keep_input_order() {
        let mut a = Answers::default();
        a.ok(1, None);
        a.ok(2, Some(BATCH_UNWRITTEN));
        a.error("bad");
        a.ok(3, Some(BATCH_UNWRITTEN));
        a.batch_written(Some(7));
        assert_eq!(
            text(&a),
            "{\"ok\":true,\"id\":\"1\"}\n",
            "2 waits for its batch"
        );
        a.release(6);
        assert_eq!(a.held(), 3);
        a.release(7);
        assert_eq!(a.held(), 0);
        assert!(text(&a).ends_with(
            "{\"ok\":true,\"id\":\"2\"}\n{\"ok\":false,\"error\":\"bad\"}\n{\"ok\":true,\"id\":\"3\"}\n"
        ));
    }

    #[test]
    fn failed_batches_turn_ok_into_errors() {
        let mut a = Answers::default();
        a.ok(1, Some(4));
        a.ok(2, Some(5));
        a.ok(3, Some(6));
        a.fail(4, 5, "disk full");
        assert_eq!(
            text(&a),
            "{\"ok\":true,\"id\":\"1\"}\n{\"ok\":false,\"error\":\"disk full\"}\n"
        );
        assert_eq!(a.held(), 1, "batch 6 still waits");
    }

    #[test]
    fn an_unwritten_batch_is_refused_behind_earlier_answers() {
        let mut a = Answers::default();
        a.ok(1, Some(4));
        a.ok(2, Some(BATCH_UNWRITTEN));
        a.refuse_unwritten("disk full");
        a.release(3);
        assert_eq!(text(&a), "", "waits for batch 4");
        a.release(4);
        assert_eq!(
            text(&a),
            "{\"ok\":true,\"id\":\"1\"}\n{\"ok\":false,\"error\":\"disk full\"}\n"
        );
    }

    /// Cluster mode: Redis answers in order, but an error line (bad input) and an admin
    /// answer between two publishes must still leave in input order.
    #[test]
    fn remote_answers_leave_in_input_order_once_resolved() {
        let mut a = Answers::default();
        a.remote(1);
        a.error("bad line");
        a.remote(2);
        a.raw("{\"ok\":true}");
        a.batch_written(None);
        a.release(0);
        assert_eq!(text(&a), "", "publish 1 is not answered yet");
        assert!(a.resolve(1, Ok(1_700_000_000_000_001)));
        assert_eq!(
            text(&a),
            "{\"ok\":true,\"id\":\"1700000000000001\"}\n{\"ok\":false,\"error\":\"bad line\"}\n"
        );
        assert_eq!(a.held(), 2, "publish 2 and the raw line behind it wait");
        assert!(!a.resolve(9, Ok(1)), "no such publish");
        assert!(a.resolve(2, Err("not stored: redis unavailable: refused")));
        assert!(text(&a).ends_with(
            "{\"ok\":false,\"error\":\"not stored: redis unavailable: refused\"}\n{\"ok\":true}\n"
        ));
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut p = producer();
        assert_eq!(lines(&mut p, b"ab\ncd", 10), ["ab"]);
        assert_eq!(lines(&mut p, b"e\n\nf", 10), ["cde", ""]);
        assert_eq!(lines(&mut p, b"\n", 10), ["f"]);
    }

    #[test]
    fn over_long_lines_answered_once_and_skipped() {
        let mut p = producer();
        assert_eq!(
            lines(&mut p, b"0123456789x\nok\n", 10),
            ["<too long>", "ok"]
        );
        assert_eq!(lines(&mut p, b"0123456", 10), Vec::<String>::new());
        assert_eq!(lines(&mut p, b"789", 10), Vec::<String>::new());
        assert_eq!(lines(&mut p, b"xxxxxxxx", 10), Vec::<String>::new());
        assert_eq!(lines(&mut p, b"yy\nnext\n", 10), ["<too long>", "next"]);
        assert_eq!(
            lines(&mut p, b"0123456789\n", 10),
            ["0123456789"],
            "exactly the limit is fine"
        );
    }

    #[test]
    fn last_line_without_newline_counts_at_eof() {
        let mut p = producer();
        assert_eq!(lines(&mut p, b"a\nlast", 10), ["a"]);
        let mut seen = Vec::new();
        p.finish_input(10, |l, _| {
            seen.push(matches!(l, InputLine::Line(b"last")));
            Flow::Next
        });
        assert_eq!(seen, [true]);
        let mut again = 0;
        p.finish_input(10, |_, _| {
            again += 1;
            Flow::Next
        });
        assert_eq!(again, 0, "nothing left after the first call");
    }
}
