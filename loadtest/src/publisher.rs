//! The publisher: an open-loop schedule (event `seq` is due at `start + seq / rate`), written
//! on one thread and answered on another, so a slow answer never delays the next event
//! and a late publisher shows up in the latency measured from the schedule.
//!
//! - ssehub: newline JSON on its Unix socket (`{"topic":..,"data":..}` → `{"ok":true,..}`),
//!   pipelined.
//! - nchan: `POST` to its publisher location on a keep-alive connection, pipelined; nginx
//!   answers `201 Created`/`202 Accepted` with a small body.
//!
//! Events already due when the writer wakes leave together in one write.
//!
//! With `closed_loop` the writer waits for each event's answer before it writes the next
//! (a producer that needs each acknowledgement): a late answer then delays the schedule,
//! and `events_per_s` shows the rate the server let the producer keep.
//!
//! With `realtime` both threads run at `SCHED_FIFO` priority, so that on a core shared with
//! the workers reading deliveries the answer's round trip is not stretched by the
//! scheduler's wait before it preempts them (`Outcome::realtime` says whether it took).

use crate::hist::{Hist, Summary};
use crate::proto::Target;
use crate::sse::{Payload, payload};
use crate::sys;
use serde::Serialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;

#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub socket: PathBuf,
    pub addr: SocketAddr,
    pub pub_path: String,
    pub topic: String,
    pub events: u64,
    pub rate: f64,
    pub size: usize,
    /// When event 0 is due (`CLOCK_MONOTONIC` ns).
    pub start_ns: u64,
    /// Wait for each answer before writing the next event.
    pub closed_loop: bool,
    /// Run the writer and the answer reader at real-time priority (`sys::set_realtime`).
    pub realtime: bool,
}

impl Plan {
    pub fn sched_ns(&self, seq: u64) -> u64 {
        self.start_ns + (seq as f64 * 1e9 / self.rate) as u64
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// How late the writer was against the schedule at worst (µs).
    pub late_max_us: u64,
    /// Write-to-answer time of each event (µs).
    pub answer: Summary,
    /// Events answered per second, from the first event's due time to the last answer.
    pub events_per_s: f64,
    /// Whether the writer and the answer reader ran at real-time priority.
    pub realtime: bool,
    #[serde(skip)]
    pub sent_ns: Vec<u64>,
    #[serde(skip)]
    pub last_answer_ns: u64,
}

/// Connects first (so a missing server fails fast), then publishes on this thread.
pub fn run(plan: &Plan) -> io::Result<Outcome> {
    let (writer, reader): (Box<dyn Write + Send>, Box<dyn Read + Send>) = match plan.target {
        Target::Ssehub => {
            let s = UnixStream::connect(&plan.socket).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("publisher: connect {}: {e}", plan.socket.display()),
                )
            })?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
        Target::Nchan => {
            let s = TcpStream::connect(plan.addr).map_err(|e| {
                io::Error::new(e.kind(), format!("publisher: connect {}: {e}", plan.addr))
            })?;
            s.set_nodelay(true)?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
    };
    let (tx, rx) = mpsc::channel::<u64>();
    let (answered_tx, answered) = mpsc::channel::<()>();
    let target = plan.target;
    let realtime = plan.realtime;
    let answers = std::thread::spawn(move || {
        if realtime && let Err(e) = sys::set_realtime(true) {
            eprintln!("ssehub-loadtest: answer reader: real-time priority: {e}");
        }
        read_answers(target, reader, rx, answered_tx)
    });
    let mut out = Outcome::default();
    if plan.realtime {
        match sys::set_realtime(true) {
            Ok(()) => out.realtime = true,
            Err(e) => eprintln!("ssehub-loadtest: publisher: real-time priority: {e}"),
        }
    }
    let mut writer = writer;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut seq = 0;
    while seq < plan.events {
        sys::sleep_until_ns(plan.sched_ns(seq));
        let sent = sys::mono_ns();
        buf.clear();
        let first = seq;
        while seq < plan.events
            && plan.sched_ns(seq) <= sent
            && buf.len() < 60 * 1024
            && !(plan.closed_loop && seq > first)
        {
            let sched = plan.sched_ns(seq);
            out.late_max_us = out.late_max_us.max((sent - sched) / 1000);
            let data = payload(
                Payload {
                    seq,
                    sched_ns: sched,
                    sent_ns: sent,
                },
                plan.size,
            );
            encode(plan, &data, &mut buf);
            seq += 1;
        }
        if let Err(e) = writer.write_all(&buf) {
            out.first_error = Some(format!("publisher: write: {e}"));
            break;
        }
        for s in first..seq {
            out.sent_ns.push(sent);
            out.sent = s + 1;
            let _ = tx.send(sent);
        }
        if plan.closed_loop && answered.recv().is_err() {
            break;
        }
    }
    drop(tx);
    if out.realtime {
        let _ = sys::set_realtime(false);
    }
    let a = answers
        .join()
        .unwrap_or_else(|_| Answers::failed("answer reader panicked"));
    out.ok = a.ok;
    out.errors = out.sent.saturating_sub(a.ok);
    if out.first_error.is_none() {
        out.first_error = a.first_error;
    }
    out.answer = a.latency.summary();
    out.last_answer_ns = a.last_ns;
    let span_s = a.last_ns.saturating_sub(plan.start_ns) as f64 / 1e9;
    if span_s > 0.0 {
        out.events_per_s = (a.ok as f64 / span_s * 10.0).round() / 10.0;
    }
    Ok(out)
}

fn encode(plan: &Plan, data: &str, buf: &mut Vec<u8>) {
    match plan.target {
        Target::Ssehub => {
            // The payload is digits, spaces and `x`: nothing to escape.
            let _ = writeln!(buf, "{{\"topic\":\"{}\",\"data\":\"{data}\"}}", plan.topic);
        }
        Target::Nchan => {
            let _ = write!(
                buf,
                "POST {}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{data}",
                plan.pub_path,
                plan.topic,
                plan.addr,
                data.len()
            );
        }
    }
}

struct Answers {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Hist,
    last_ns: u64,
}

impl Answers {
    fn failed(msg: &str) -> Answers {
        Answers {
            ok: 0,
            errors: 0,
            first_error: Some(msg.into()),
            latency: Hist::default(),
            last_ns: 0,
        }
    }
}

/// Reads one answer per event written, in order; `sent` gives each event's write time and
/// closes when the writer is done.
fn read_answers(
    target: Target,
    reader: Box<dyn Read + Send>,
    sent: mpsc::Receiver<u64>,
    answered: mpsc::Sender<()>,
) -> Answers {
    let mut r = BufReader::with_capacity(64 * 1024, reader);
    let mut a = Answers::failed("");
    a.first_error = None;
    let mut line = String::new();
    while let Ok(t) = sent.recv() {
        let outcome = match target {
            Target::Ssehub => read_ssehub_answer(&mut r, &mut line),
            Target::Nchan => read_http_answer(&mut r, &mut line),
        };
        let now = sys::mono_ns();
        match outcome {
            Ok(None) => a.ok += 1,
            Ok(Some(err)) => {
                a.errors += 1;
                a.first_error.get_or_insert(err);
            }
            Err(e) => {
                a.first_error
                    .get_or_insert(format!("publisher: answers: {e}"));
                break;
            }
        }
        a.latency.record(now.saturating_sub(t) / 1000);
        a.last_ns = now;
        let _ = answered.send(());
    }
    a
}

/// `Ok(None)` for `{"ok":true,...}`, `Ok(Some(reason))` for an error answer.
fn read_ssehub_answer(r: &mut impl BufRead, line: &mut String) -> io::Result<Option<String>> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(if line.contains("\"ok\":true") {
        None
    } else {
        Some(line.trim().to_string())
    })
}

/// One HTTP/1.1 response with a `Content-Length` body; 2xx is success.
fn read_http_answer(r: &mut impl BufRead, line: &mut String) -> io::Result<Option<String>> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(if status.starts_with('2') {
        None
    } else {
        Some(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_in_a_row() {
        let wire = b"HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n\
HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
        let mut r = BufReader::new(&wire[..]);
        let mut line = String::new();
        assert_eq!(read_http_answer(&mut r, &mut line).unwrap(), None);
        assert_eq!(read_http_answer(&mut r, &mut line).unwrap(), None);
        assert_eq!(
            read_http_answer(&mut r, &mut line).unwrap(),
            Some("HTTP 403: no".into())
        );
        assert!(read_http_answer(&mut r, &mut line).is_err());
    }

    #[test]
    fn ssehub_answers() {
        let wire = b"{\"ok\":true,\"id\":\"5\"}\n{\"ok\":false,\"error\":\"bad\"}\n";
        let mut r = BufReader::new(&wire[..]);
        let mut line = String::new();
        assert_eq!(read_ssehub_answer(&mut r, &mut line).unwrap(), None);
        assert!(read_ssehub_answer(&mut r, &mut line).unwrap().is_some());
    }

    #[test]
    fn schedule_is_open_loop() {
        let plan = Plan {
            target: Target::Ssehub,
            socket: PathBuf::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            pub_path: String::new(),
            topic: "t".into(),
            events: 10,
            rate: 20.0,
            size: 100,
            start_ns: 1_000,
            closed_loop: false,
            realtime: false,
        };
        assert_eq!(plan.sched_ns(0), 1_000);
        assert_eq!(plan.sched_ns(20), 1_000 + 1_000_000_000);
        let mut buf = Vec::new();
        encode(&plan, "1 2 3 ", &mut buf);
        assert_eq!(buf, b"{\"topic\":\"t\",\"data\":\"1 2 3 \"}\n");
    }

    /// A closed-loop publisher writes the next event only after the previous answer: a
    /// server that answers slowly never finds a second line waiting.
    #[test]
    fn closed_loop_waits_for_each_answer() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("ssehub-closed-loop-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut w = sock.try_clone().unwrap();
            let mut r = BufReader::new(sock);
            let (mut lines, mut early) = (0, 0);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
                lines += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
                if !r.buffer().is_empty() {
                    early += 1;
                }
                r.get_ref().set_nonblocking(true).unwrap();
                let mut probe = [0u8; 1];
                let mut sock: &UnixStream = r.get_ref();
                if sock.read(&mut probe).is_ok_and(|n| n > 0) {
                    early += 1;
                }
                r.get_ref().set_nonblocking(false).unwrap();
                w.write_all(b"{\"ok\":true,\"id\":\"1\"}\n").unwrap();
            }
            (lines, early)
        });
        let plan = Plan {
            target: Target::Ssehub,
            socket: path.clone(),
            addr: "127.0.0.1:1".parse().unwrap(),
            pub_path: String::new(),
            topic: "t".into(),
            events: 5,
            rate: 1000.0,
            size: 100,
            start_ns: sys::mono_ns(),
            closed_loop: true,
            realtime: false,
        };
        let out = run(&plan).unwrap();
        let (lines, early) = server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((out.ok, lines), (5, 5));
        assert_eq!(early, 0, "a line was written before the previous answer");
        // 5 answers 20 ms apart: well below the offered 1,000/s.
        assert!(out.events_per_s < 60.0, "{} events/s", out.events_per_s);
    }
}
