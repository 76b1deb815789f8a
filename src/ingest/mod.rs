//! The ingest side: producers on a Unix socket write newline-delimited JSON, one answer
//! line per input line, in order. This module owns the socket file, the per-producer
//! buffers and line framing; decoding is `line`, publishing is the hub's.

pub mod line;

use mio::net::{UnixListener, UnixStream};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

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

/// One producer connection.
#[derive(Debug)]
pub struct Producer {
    pub sock: UnixStream,
    /// The start of a line whose newline has not arrived yet.
    partial: Vec<u8>,
    /// Answers not yet written, from `answers_written` on.
    answers: Vec<u8>,
    answers_written: usize,
    /// Inside a line already known to be too long: drop bytes until its newline.
    discarding: bool,
    /// The producer closed its side; close once the answers are written.
    pub eof: bool,
    pub write_blocked: bool,
}

/// A complete input line, or the end of one that was too long.
pub enum InputLine<'a> {
    Line(&'a [u8]),
    TooLong,
}

impl Producer {
    pub fn new(sock: UnixStream) -> Self {
        Producer {
            sock,
            partial: Vec::new(),
            answers: Vec::new(),
            answers_written: 0,
            discarding: false,
            eof: false,
            write_blocked: false,
        }
    }

    /// Bytes of answers not yet written.
    pub fn unwritten(&self) -> usize {
        self.answers.len() - self.answers_written
    }

    /// Whether more input may be read now (answers are below the limit).
    pub fn may_read(&self) -> bool {
        !self.eof && self.unwritten() < ANSWER_LIMIT
    }

    /// Splits `input` into lines, calling `on_line` for each complete one (and for each
    /// over-long one, once, at its newline) with the answer buffer to write into. Bytes
    /// after the last newline are kept for the next call, up to `max_line` bytes.
    pub fn take_input(
        &mut self,
        input: &[u8],
        max_line: usize,
        mut on_line: impl FnMut(InputLine<'_>, &mut Vec<u8>),
    ) {
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
                return;
            };
            let (head, tail) = (&rest[..newline], &rest[newline + 1..]);
            rest = tail;
            if self.discarding {
                self.discarding = false;
                on_line(InputLine::TooLong, &mut self.answers);
                continue;
            }
            if self.partial.is_empty() {
                let line = if head.len() > max_line {
                    InputLine::TooLong
                } else {
                    InputLine::Line(head)
                };
                on_line(line, &mut self.answers);
            } else {
                self.partial.extend_from_slice(head);
                let line = if self.partial.len() > max_line {
                    InputLine::TooLong
                } else {
                    InputLine::Line(&self.partial)
                };
                on_line(line, &mut self.answers);
                self.partial.clear();
            }
        }
    }

    /// At end of input: a last line without its newline still counts as a line.
    pub fn finish_input(
        &mut self,
        max_line: usize,
        mut on_line: impl FnMut(InputLine<'_>, &mut Vec<u8>),
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
        while self.answers_written < self.answers.len() {
            match self.sock.write(&self.answers[self.answers_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.answers_written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.answers.clear();
        self.answers_written = 0;
        if self.answers.capacity() > ANSWER_LIMIT {
            self.answers = Vec::new();
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
            })
        });
        seen
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
        p.finish_input(10, |l, _| seen.push(matches!(l, InputLine::Line(b"last"))));
        assert_eq!(seen, [true]);
        let mut again = 0;
        p.finish_input(10, |_, _| again += 1);
        assert_eq!(again, 0, "nothing left after the first call");
    }
}
