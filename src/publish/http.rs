//! `ssehub publish --url http://HOST:PORT`: the same event lines as over the ingest socket,
//! sent as `POST /publish` requests (`application/x-ndjson`, optional
//! `Authorization: Bearer`) on one keep-alive HTTP/1.1 connection (blocking std
//! `TcpStream` with timeouts). Plain http only: behind TLS, publish through a local proxy.
//!
//! - Batching: the server caps a request body (`publish.max_body_bytes`, 1 MiB by default),
//!   so lines go in batches of at most `MAX_BATCH_LINES` lines and `MAX_BATCH_BYTES` bytes
//!   (one longer line goes alone). `--lines` streams: a thread reads stdin into a bounded
//!   channel, and a batch leaves when it is full or `BATCH_DELAY` after its first line was
//!   read, so a slow interactive stdin is not held back.
//! - Answers: a `200` carries one answer line per event, in order, the socket's own lines;
//!   any other status counts every event of that request as an error (`<status> <reason>`
//!   on stderr, the reason from its text/plain body). Responses are framed by
//!   Content-Length, chunked, or the connection's end; `Connection: close` is honoured.
//! - Never twice: a kept connection the server closed while idle is noticed before reuse
//!   (a non-blocking peek) and replaced. A request is sent again on a new connection only
//!   when not one byte of it was written; once any was, a connection that dies before a
//!   complete answer makes that batch's events errors ("may or may not have been
//!   published"), never a second send. The next batch then goes on a new connection.
//! - `--wait` bounds every (re)connection: refused or unreachable is retried until then.

use super::{Input, Options, encode, owned_encoder, parse_answer, read_stdin_payload};
use crate::http::body::{BodyDecoder, Framing};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// At most this many events per request.
pub const MAX_BATCH_LINES: usize = 1000;
/// At most this many body bytes per request (a longer single line goes alone).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A `--lines` batch leaves at the latest this long after its first line was read.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);
/// Each read of an answer and each write of a request gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Limits on what the client accepts from a server.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// A non-200 reason longer than this is cut (a proxy's HTML page, say).
const MAX_REASON_CHARS: usize = 300;

/// Where `--url` points: `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// For connecting: a name or an address, IPv6 without brackets.
    host: String,
    port: u16,
    /// The URL's authority as written, for the Host header.
    authority: String,
    /// The request target: the URL's path and query, `/publish` when it has no path.
    path: String,
}

impl Target {
    /// Parses `--url`; the error is a usage message.
    pub fn parse(url: &str) -> Result<Target, String> {
        let shape = "--url must look like http://HOST:PORT (optionally with a path)";
        let scheme_end = url.find("://").ok_or_else(|| shape.to_string())?;
        let scheme = &url[..scheme_end];
        if scheme.eq_ignore_ascii_case("https") {
            return Err(
                "https is not supported by --url; publish through a local proxy or \
                        over the socket"
                    .into(),
            );
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(shape.into());
        }
        let rest = &url[scheme_end + 3..];
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err("--url cannot carry credentials; give --token (or SSEHUB_TOKEN)".into());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| shape.to_string())?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or_else(|| shape.to_string())?),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(shape.into());
        }
        let port = match port {
            None => 80,
            // Digits only: u16's parser would take a leading `+`.
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("--url has a bad port: {p:?}")),
            },
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("--url: write spaces and control characters in its path %-encoded".into());
        }
        let path = match path.split_once('?') {
            Some(("" | "/", query)) => format!("/publish?{query}"),
            None if path.is_empty() || path == "/" => "/publish".to_string(),
            _ if path.starts_with('?') => format!("/publish{path}"),
            _ => path.to_string(),
        };
        Ok(Target {
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Whether `token` can go in an `Authorization` header as it is (visible ASCII only).
pub fn token_is_valid(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Publishes over HTTP and prints one id per event on `out`, like `super::run`; returns the
/// number of events that failed (error answers, refused or unanswered requests), each
/// reported on stderr. Err: could not connect within `--wait`, or stdin failed.
pub fn run(
    opts: &Options<'_>,
    target: &Target,
    token: Option<&str>,
    input: Input,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut client = Client::new(target, token, opts.wait);
    // Connect before reading stdin, as over the socket: no server, no waiting for input.
    client.connect()?;
    let err = &mut io::stderr();
    match input {
        Input::Data(data) => send_batch(&mut client, &Batch::of(encode(opts, &data)), out, err),
        Input::Stdin => {
            let line = encode(opts, &read_stdin_payload()?);
            send_batch(&mut client, &Batch::of(line), out, err)
        }
        Input::StdinLines => {
            let (tx, rx) = sync_channel(2 * MAX_BATCH_LINES);
            let encode = owned_encoder(opts);
            let reader = std::thread::spawn(move || read_lines(io::stdin().lock(), encode, &tx));
            let mut carry = None;
            let mut errors = 0;
            while let Some(batch) = next_batch(&rx, &mut carry, &LIMITS) {
                errors += send_batch(&mut client, &batch, out, err)?;
            }
            // Ended by stdin's end or by its error (after the lines before it went out).
            reader
                .join()
                .map_err(|_| io::Error::other("the stdin reader panicked"))??;
            Ok(errors)
        }
    }
}

/// Sends one batch and maps its answer to ids on `out` and reasons on `err`; returns the
/// number of its events that failed.
fn send_batch(
    client: &mut Client<'_>,
    batch: &Batch,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<usize> {
    match client.post(&batch.body)? {
        Exchange::Answered(resp) if resp.status == 200 => {
            map_answers(&resp.body, batch.lines, out, err)
        }
        Exchange::Answered(resp) => {
            writeln!(
                err,
                "ssehub publish: {} {}",
                resp.status,
                resp.reason_text()
            )?;
            Ok(batch.lines)
        }
        Exchange::Lost(why) => {
            let they = if batch.lines == 1 { "it" } else { "they" };
            writeln!(
                err,
                "ssehub publish: no answer from {} for {}: {why} (not resent: {they} may or \
                 may not have been published)",
                client.target,
                events(batch.lines)
            )?;
            Ok(batch.lines)
        }
    }
}

fn events(n: usize) -> String {
    if n == 1 {
        "1 event".into()
    } else {
        format!("{n} events")
    }
}

/// A 200's body: one answer line per event. Ids go to `out`, reasons to `err`; answers
/// missing for some events count those events as errors.
fn map_answers(
    body: &[u8],
    lines: usize,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<usize> {
    let text = String::from_utf8_lossy(body);
    let mut answers = text.split_terminator('\n');
    let mut errors = 0;
    for _ in 0..lines {
        let Some(answer) = answers.next() else {
            break;
        };
        match parse_answer(answer) {
            Ok(id) => writeln!(out, "{id}")?,
            Err(reason) => {
                writeln!(err, "ssehub publish: {reason}")?;
                errors += 1;
            }
        }
    }
    let got = text.split_terminator('\n').count();
    if got != lines {
        writeln!(
            err,
            "ssehub publish: the server answered {got} lines for {}",
            events(lines)
        )?;
        errors += lines.saturating_sub(got).max(1);
    }
    Ok(errors)
}

// ---- batches --------------------------------------------------------------------------------

/// One request's body: whole encoded lines.
#[derive(Debug, Default)]
struct Batch {
    body: Vec<u8>,
    lines: usize,
}

impl Batch {
    fn of(line: Vec<u8>) -> Batch {
        Batch {
            body: line,
            lines: 1,
        }
    }

    fn push(&mut self, line: &[u8]) {
        self.body.extend_from_slice(line);
        self.lines += 1;
    }
}

/// An encoded line from stdin and when it was read.
struct Line {
    read_at: Instant,
    bytes: Vec<u8>,
}

struct Limits {
    lines: usize,
    bytes: usize,
    delay: Duration,
}

const LIMITS: Limits = Limits {
    lines: MAX_BATCH_LINES,
    bytes: MAX_BATCH_BYTES,
    delay: BATCH_DELAY,
};

/// Reads `input` line by line (a trailing CR dropped), encodes each and sends it on; ends at
/// the input's end, its error, or when nobody receives any more.
fn read_lines(
    input: impl BufRead,
    encode: impl Fn(&str) -> Vec<u8>,
    tx: &SyncSender<Line>,
) -> io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let bytes = encode(line.trim_end_matches('\r'));
        let line = Line {
            read_at: Instant::now(),
            bytes,
        };
        if tx.send(line).is_err() {
            break;
        }
    }
    Ok(())
}

/// The next batch: waits for a first line (None once the sender is gone and nothing is
/// left), then takes lines while they fit and come before `delay` after the first was read.
/// A line that does not fit is kept in `carry` for the next batch.
fn next_batch(rx: &Receiver<Line>, carry: &mut Option<Line>, limits: &Limits) -> Option<Batch> {
    let first = match carry.take() {
        Some(line) => line,
        None => rx.recv().ok()?,
    };
    let deadline = first.read_at + limits.delay;
    let mut batch = Batch::of(first.bytes);
    while batch.lines < limits.lines {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = if left.is_zero() {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(left).ok()
        };
        let Some(line) = next else {
            break;
        };
        if batch.body.len() + line.bytes.len() > limits.bytes {
            *carry = Some(line);
            break;
        }
        batch.push(&line.bytes);
    }
    Some(batch)
}

// ---- the connection -------------------------------------------------------------------------

/// What became of one request.
#[derive(Debug)]
enum Exchange {
    /// A complete response.
    Answered(Response),
    /// Some of the request was sent but no complete response came: the events' fate is
    /// unknown. Why, for the message.
    Lost(String),
}

struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects, retrying refused or unreachable until `wait` has passed.
    fn open(target: &Target, wait: Duration) -> io::Result<Conn> {
        let deadline = Instant::now() + wait;
        loop {
            let attempt = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            match connect_once(target, attempt) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    stream.set_write_timeout(Some(IO_TIMEOUT))?;
                    stream.set_nodelay(true)?;
                    let reader = BufReader::new(stream.try_clone()?);
                    return Ok(Conn {
                        writer: stream,
                        reader,
                    });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot connect to {target}: {e}"),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether a kept connection can carry the next request: nothing unread is waiting and
    /// the server has not closed it (or sent anything) since the last answer.
    fn reusable(&self) -> bool {
        if !self.reader.buffer().is_empty() || self.writer.set_nonblocking(true).is_err() {
            return false;
        }
        let idle = matches!(
            self.writer.peek(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        self.writer.set_nonblocking(false).is_ok() && idle
    }
}

fn connect_once(target: &Target, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (target.host.as_str(), target.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host")))
}

/// Writes all of `buf`; on failure, how many bytes had been written.
fn write_counting(w: &mut impl Write, buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut sent = 0;
    while sent < buf.len() {
        match w.write(&buf[sent..]) {
            Ok(0) => return Err((sent, io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((sent, e)),
        }
    }
    w.flush().map_err(|e| (sent, e))
}

/// One keep-alive connection to the target, opened on demand.
struct Client<'a> {
    target: &'a Target,
    token: Option<&'a str>,
    wait: Duration,
    conn: Option<Conn>,
}

impl<'a> Client<'a> {
    fn new(target: &'a Target, token: Option<&'a str>, wait: Duration) -> Client<'a> {
        Client {
            target,
            token,
            wait,
            conn: None,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(self.target, self.wait)?);
        }
        Ok(())
    }

    /// The request's bytes: head and body.
    fn request(&self, body: &[u8]) -> Vec<u8> {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ssehub/{}\r\n\
             Content-Type: application/x-ndjson\r\nAccept: application/x-ndjson\r\n",
            self.target.path,
            self.target.authority,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(token) = self.token {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends one request and reads its response. Err: could not connect within `--wait`,
    /// or not one byte of the request could be sent on two connections in a row.
    fn post(&mut self, body: &[u8]) -> io::Result<Exchange> {
        let request = self.request(body);
        let mut retried = false;
        loop {
            let mut conn = match self.conn.take() {
                Some(conn) if conn.reusable() => conn,
                _ => Conn::open(self.target, self.wait)?,
            };
            let send_failed = match write_counting(&mut conn.writer, &request) {
                Ok(()) => None,
                // Nothing of it reached the server: safe to send on a new connection.
                Err((0, _)) if !retried => {
                    retried = true;
                    continue;
                }
                Err((0, e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot send to {}: {e}", self.target),
                    ));
                }
                Err((_, e)) => Some(e),
            };
            // Even after a failed send, the server may have answered (a 413 before the
            // whole body, say): read what is there.
            return Ok(match read_response(&mut conn.reader) {
                Ok(resp) => {
                    if !resp.close && send_failed.is_none() {
                        self.conn = Some(conn);
                    }
                    Exchange::Answered(resp)
                }
                Err(e) => Exchange::Lost(match send_failed {
                    Some(se) => format!("sending failed: {se}"),
                    None => e.to_string(),
                }),
            });
        }
    }
}

// ---- responses ------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    /// Names lowercased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The server closes the connection after this response (or it must not be reused).
    pub close: bool,
}

impl Response {
    /// The first line of a non-200's body, else its reason phrase.
    fn reason_text(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let line = body.lines().map(str::trim).find(|l| !l.is_empty());
        let text = line.unwrap_or(self.reason.trim());
        let text = if text.is_empty() {
            "(no reason given)"
        } else {
            text
        };
        match text.char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text.to_string(),
        }
    }

    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (`Connection`, `Transfer-Encoding`) has `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why no complete response could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection ended before the first byte of a response.
    Closed,
    /// It ended in the middle of one.
    Truncated(&'static str),
    /// Not HTTP/1.x as this client reads it.
    Malformed(String),
    /// A read failed (a reset, or no byte within the timeout).
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed => write!(f, "the server closed the connection"),
            ReadError::Truncated(what) => {
                write!(
                    f,
                    "the server closed the connection in the middle of {what}"
                )
            }
            ReadError::Malformed(why) => write!(f, "malformed response: {why}"),
            ReadError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "no answer within {}s", IO_TIMEOUT.as_secs())
            }
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one final response (informational 1xx ones are skipped).
pub fn read_response(r: &mut impl BufRead) -> Result<Response, ReadError> {
    let mut informational = false;
    loop {
        let resp = read_one(r).map_err(|e| match e {
            ReadError::Closed if informational => ReadError::Truncated("the response"),
            e => e,
        })?;
        informational = true;
        match resp.status {
            101 => {
                return Err(ReadError::Malformed(
                    "unexpected 101 Switching Protocols".into(),
                ));
            }
            100..=199 => continue,
            _ => return Ok(resp),
        }
    }
}

fn read_one(r: &mut impl BufRead) -> Result<Response, ReadError> {
    let head = read_head(r)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ReadError::Malformed("incomplete head".into()));
        }
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    }
    let status = parsed.code.unwrap_or_default();
    let http10 = parsed.version == Some(0);
    let mut resp = Response {
        status,
        reason: parsed.reason.unwrap_or_default().to_string(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect(),
        body: Vec::new(),
        close: false,
    };
    resp.close = resp.has_token("connection", "close")
        || (http10 && !resp.has_token("connection", "keep-alive"));
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    let codings: Vec<String> = resp
        .header("transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(last) = codings.last() {
        if last != "chunked" || http10 {
            return Err(ReadError::Malformed(format!(
                "unsupported Transfer-Encoding {last:?}"
            )));
        }
        resp.body = read_framed(r, Framing::Chunked, "the chunked body")?;
        // With a Content-Length as well the framing was ambiguous: do not reuse.
        let with_length = resp.header("content-length").next().is_some();
        resp.close |= with_length;
        return Ok(resp);
    }
    match content_length(&resp)? {
        Some(len) if len > MAX_ANSWER_BYTES as u64 => Err(ReadError::Malformed(format!(
            "a body of {len} bytes is more than this client takes"
        ))),
        Some(len) => {
            resp.body = read_framed(r, Framing::Length(len), "the body")?;
            Ok(resp)
        }
        None => {
            // Framed by the connection's end.
            r.take(MAX_ANSWER_BYTES as u64 + 1)
                .read_to_end(&mut resp.body)
                .map_err(ReadError::Io)?;
            if resp.body.len() > MAX_ANSWER_BYTES {
                return Err(ReadError::Malformed("the body is too long".into()));
            }
            resp.close = true;
            Ok(resp)
        }
    }
}

/// The Content-Length, if any; several must agree (RFC 9112 6.3).
fn content_length(resp: &Response) -> Result<Option<u64>, ReadError> {
    let mut length = None;
    for value in resp.header("content-length").flat_map(|v| v.split(',')) {
        let value = value.trim();
        let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| ReadError::Malformed(format!("bad Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(ReadError::Malformed("conflicting Content-Lengths".into()));
        }
        length = Some(n);
    }
    Ok(length)
}

/// The head up to and with its empty line.
fn read_head(r: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let room = (MAX_HEAD_BYTES - start) as u64;
        let n = r
            .take(room)
            .read_until(b'\n', &mut head)
            .map_err(|e| match start {
                0 => ReadError::Io(e),
                _ => ReadError::Truncated("the head"),
            })?;
        if n == 0 {
            return Err(match start {
                0 => ReadError::Closed,
                _ => ReadError::Truncated("the head"),
            });
        }
        let line = &head[start..];
        if !line.ends_with(b"\n") {
            return Err(if head.len() >= MAX_HEAD_BYTES {
                ReadError::Malformed("the head is over 64 KiB".into())
            } else {
                ReadError::Truncated("the head")
            });
        }
        if line == b"\r\n" || line == b"\n" {
            return match start {
                0 => Err(ReadError::Malformed("an empty status line".into())),
                _ => Ok(head),
            };
        }
    }
}

/// A body framed by `framing`, decoded by the server's own decoder (`http::body`, strict
/// RFC 9112 framing: CRLF line ends, chunk extensions and trailers checked and ignored).
/// `what` names it in a truncation error.
fn read_framed(
    r: &mut impl BufRead,
    framing: Framing,
    what: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let too_long = || ReadError::Malformed("the body is too long".into());
    let mut decoder = BodyDecoder::new(framing, MAX_ANSWER_BYTES).map_err(|_| too_long())?;
    let mut body = Vec::new();
    while !decoder.is_done() {
        let input = r.fill_buf().map_err(ReadError::Io)?;
        if input.is_empty() {
            return Err(ReadError::Truncated(what));
        }
        let (used, _) =
            decoder
                .decode(input, &mut body)
                .map_err(|refused| match refused.status {
                    413 => too_long(),
                    _ => ReadError::Malformed(refused.reason.into_owned()),
                })?;
        r.consume(used);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(bytes: &[u8]) -> Result<Response, ReadError> {
        read_response(&mut Cursor::new(bytes))
    }

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn urls() {
        let t = target("http://127.0.0.1:8080");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/publish")
        );
        assert_eq!(t.to_string(), "http://127.0.0.1:8080/publish");
        assert_eq!(target("HTTP://hub/").path, "/publish");
        assert_eq!(target("http://hub").port, 80);
        assert_eq!(target("http://hub:81/publish").path, "/publish");
        assert_eq!(
            target("http://hub/x/publish?a=b#frag").path,
            "/x/publish?a=b"
        );
        assert_eq!(target("http://hub?a=b").path, "/publish?a=b");
        assert_eq!(target("http://hub/?a=b").path, "/publish?a=b");
        let v6 = target("http://[::1]:9000/");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9000));
        assert_eq!(v6.authority, "[::1]:9000");
        assert_eq!(target("http://[::1]").port, 80);

        let err = Target::parse("https://hub:443").unwrap_err();
        assert!(err.contains("https is not supported by --url"), "{err}");
        for bad in [
            "hub:8080",
            "ftp://hub",
            "http://",
            "http://:80",
            "http://hub:",
            "http://hub:0",
            "http://hub:65536",
            "http://hub:+80",
            "http://hub:8o",
            "http://[::1",
            "http://[::1]x",
            "http://hub/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(
            Target::parse("http://u:p@hub")
                .unwrap_err()
                .contains("--token"),
            "credentials point to --token"
        );
    }

    #[test]
    fn request_bytes() {
        let t = target("http://hub:8080");
        let mut c = Client::new(&t, Some("abc.def.ghi"), Duration::ZERO);
        let req = String::from_utf8(c.request(b"{\"a\":1}\n")).unwrap();
        assert!(
            req.starts_with("POST /publish HTTP/1.1\r\nHost: hub:8080\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\nContent-Type: application/x-ndjson\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\nAuthorization: Bearer abc.def.ghi\r\n"),
            "{req}"
        );
        assert!(
            req.ends_with("\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n"),
            "{req}"
        );
        c.token = None;
        let req = String::from_utf8(c.request(b"")).unwrap();
        assert!(!req.contains("Authorization"), "{req}");
        assert!(token_is_valid("a.b-c_d"));
        assert!(!token_is_valid("a b"));
        assert!(!token_is_valid("a\r\nX-Evil: 1"));
        assert!(!token_is_valid(""));
    }

    #[test]
    fn status_line_and_headers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
              X-Thing:  spaced  \r\nContent-Length: 3\r\n\r\nab\nEXTRA",
        )
        .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
        assert_eq!(r.body, b"ab\n");
        assert!(!r.close);
        assert_eq!(r.header("x-thing").collect::<Vec<_>>(), ["spaced"]);
        assert_eq!(
            r.header("content-type").next(),
            Some("application/x-ndjson")
        );
        // Bare LF line ends are read too.
        let r = parse(b"HTTP/1.1 204 No Content\n\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
            b"\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ReadError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
    }

    #[test]
    fn content_length_framing() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 401 Unauthorized\r\n\
                    Content-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\n\
                    no way\n";
        let mut r = Cursor::new(&two[..]);
        let first = read_response(&mut r).unwrap();
        assert_eq!((first.status, first.body.as_slice()), (200, &b"ab"[..]));
        let second = read_response(&mut r).unwrap();
        assert_eq!(second.status, 401);
        assert!(second.close);
        assert_eq!(second.reason_text(), "no way");
        assert!(matches!(read_response(&mut r), Err(ReadError::Closed)));
        // Several equal values agree; different ones or junk do not.
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx").unwrap();
        assert_eq!(r.body, b"x");
        for bad in ["1, 2", "-1", "+1", "1x", "", "99999999999999999999999"] {
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\nx");
            assert!(
                matches!(parse(resp.as_bytes()), Err(ReadError::Malformed(_))),
                "{bad:?}"
            );
        }
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1u64 << 40);
        assert!(matches!(
            parse(huge.as_bytes()),
            Err(ReadError::Malformed(_))
        ));
        // No length: the body runs to the connection's end, which is then closed.
        let r = parse(b"HTTP/1.1 503 Busy\r\n\r\ndraining\n").unwrap();
        assert_eq!((r.body.as_slice(), r.close), (&b"draining\n"[..], true));
        assert_eq!(r.reason_text(), "draining");
        // HTTP/1.0 closes unless it says keep-alive.
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(r.close);
        let r = parse(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(!r.close);
        let r = parse(b"HTTP/1.1 200 OK\r\nConnection: foo, CLOSE\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(r.close);
    }

    #[test]
    fn chunked_framing() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n1;ext=1\r\n\n\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(r.body, b"hello\n0123456789");
        assert!(!r.close);
        // With a Content-Length too: chunked wins and the connection is not reused.
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.body.as_slice(), r.close), (&b"ok"[..], true));
        for bad in [
            &b"2\r\nokX\r\n0\r\n\r\n"[..],
            b"zz\r\nok\r\n0\r\n\r\n",
            b"\r\nok\r\n0\r\n\r\n",
            b"-2\r\nok\r\n0\r\n\r\n",
            b"ffffffffffffffffffff\r\n",
        ] {
            let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            resp.extend_from_slice(bad);
            assert!(
                matches!(parse(&resp), Err(ReadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert!(matches!(parse(gzip), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn truncated_and_closed() {
        assert!(matches!(parse(b""), Err(ReadError::Closed)));
        for cut in [
            &b"HTTP/1.1 200"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert!(
                matches!(parse(cut), Err(ReadError::Truncated(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(cut),
                parse(cut)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 10, b'a');
        assert!(matches!(parse(&long), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn informational_responses_are_skipped() {
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"x"[..]));
        let up = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert!(matches!(parse(up), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn reason_text() {
        let resp = |reason: &str, body: &str| Response {
            status: 413,
            reason: reason.into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            close: true,
        };
        assert_eq!(
            resp("Payload Too Large", "body over 1 MiB\nmore").reason_text(),
            "body over 1 MiB"
        );
        assert_eq!(
            resp("Payload Too Large", "\n \n").reason_text(),
            "Payload Too Large"
        );
        assert_eq!(resp("", "").reason_text(), "(no reason given)");
        let long = resp("", &"é".repeat(1000)).reason_text();
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 3);
    }

    #[test]
    fn answers_map_to_ids_and_errors() {
        let run = |body: &str, lines: usize| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let errors = map_answers(body.as_bytes(), lines, &mut out, &mut err).unwrap();
            (
                errors,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        let (errors, out, err) = run(
            "{\"ok\":true,\"id\":\"7\"}\n{\"ok\":false,\"error\":\"bad topic\"}\n\
             {\"ok\":true,\"id\":\"8\"}\n",
            3,
        );
        assert_eq!((errors, out.as_str()), (1, "7\n8\n"));
        assert_eq!(err, "ssehub publish: bad topic\n");
        // Fewer answers than events: the rest are errors.
        let (errors, out, err) = run("{\"ok\":true,\"id\":\"7\"}\n", 3);
        assert_eq!((errors, out.as_str()), (2, "7\n"));
        assert!(err.contains("answered 1 lines for 3 events"), "{err}");
        // More: counted as one error, no extra id.
        let (errors, out, _) = run(
            "{\"ok\":true,\"id\":\"1\"}\n{\"ok\":true,\"id\":\"2\"}\n",
            1,
        );
        assert_eq!((errors, out.as_str()), (1, "1\n"));
        // The last answer without its newline still counts.
        let (errors, out, _) = run("{\"ok\":true,\"id\":\"1\"}", 1);
        assert_eq!((errors, out.as_str()), (0, "1\n"));
    }

    fn line(bytes: &[u8]) -> Line {
        Line {
            read_at: Instant::now(),
            bytes: bytes.to_vec(),
        }
    }

    const TEST_LIMITS: Limits = Limits {
        lines: 3,
        bytes: 10,
        delay: Duration::from_millis(50),
    };

    fn drain(rx: &Receiver<Line>, limits: &Limits) -> Vec<(usize, Vec<u8>)> {
        let mut carry = None;
        std::iter::from_fn(|| next_batch(rx, &mut carry, limits))
            .map(|b| (b.lines, b.body))
            .collect()
    }

    #[test]
    fn batches_by_count_and_size() {
        let (tx, rx) = sync_channel(100);
        for l in [
            &b"a\n"[..],
            b"b\n",
            b"c\n",
            b"d\n",
            b"eeeeeeeee\n",
            b"ffffffffffffffff\n",
            b"g\n",
        ] {
            tx.send(line(l)).unwrap();
        }
        drop(tx);
        assert_eq!(
            drain(&rx, &TEST_LIMITS),
            [
                (3, b"a\nb\nc\n".to_vec()),
                (1, b"d\n".to_vec()), // with "eeeeeeeee\n" it would be 12 bytes
                (1, b"eeeeeeeee\n".to_vec()),
                (1, b"ffffffffffffffff\n".to_vec()), // over the limit alone: goes alone
                (1, b"g\n".to_vec()),
            ]
        );
        // The real limits: 2500 short lines make 1000 + 1000 + 500.
        let (tx, rx) = sync_channel(3000);
        for _ in 0..2500 {
            tx.send(line(b"{}\n")).unwrap();
        }
        drop(tx);
        let sizes: Vec<usize> = drain(&rx, &LIMITS).iter().map(|b| b.0).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        // 256 KiB: 100 KiB lines go two by two.
        let (tx, rx) = sync_channel(10);
        for _ in 0..5 {
            tx.send(line(&vec![b'x'; 100 * 1024])).unwrap();
        }
        drop(tx);
        let sizes: Vec<usize> = drain(&rx, &LIMITS).iter().map(|b| b.0).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn a_batch_leaves_after_the_delay_without_waiting_for_more_input() {
        let (tx, rx) = sync_channel(10);
        tx.send(line(b"a\n")).unwrap();
        let started = Instant::now();
        let mut carry = None;
        let batch = next_batch(&rx, &mut carry, &TEST_LIMITS).unwrap();
        let took = started.elapsed();
        assert_eq!(batch.lines, 1);
        assert!(took >= Duration::from_millis(45), "left after {took:?}");
        assert!(took < Duration::from_secs(2), "waited {took:?}");
        // A line read long ago (queued while the previous batch was out): no waiting at all.
        tx.send(Line {
            read_at: Instant::now() - Duration::from_secs(1),
            bytes: b"b\n".to_vec(),
        })
        .unwrap();
        tx.send(line(b"c\n")).unwrap();
        let started = Instant::now();
        let batch = next_batch(&rx, &mut carry, &TEST_LIMITS).unwrap();
        assert_eq!(batch.body, b"b\nc\n", "what was queued goes along");
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "{:?}",
            started.elapsed()
        );
        drop(tx);
        assert!(next_batch(&rx, &mut carry, &TEST_LIMITS).is_none());
    }

    #[test]
    fn stdin_lines_are_encoded_and_sent_in_order() {
        let (tx, rx) = sync_channel(10);
        let input = Cursor::new(b"one\r\ntwo\n\nlast".to_vec());
        read_lines(input, |d: &str| format!("<{d}>").into_bytes(), &tx).unwrap();
        drop(tx);
        let got: Vec<Vec<u8>> = rx.iter().map(|l| l.bytes).collect();
        assert_eq!(got, [&b"<one>"[..], b"<two>", b"<>", b"<last>"]);
        // Invalid UTF-8 is an error after the lines before it.
        let (tx, rx) = sync_channel(10);
        let input = Cursor::new(b"ok\n\xff\n".to_vec());
        assert!(read_lines(input, |d: &str| d.as_bytes().to_vec(), &tx).is_err());
        assert_eq!(rx.try_recv().unwrap().bytes, b"ok");
    }
}
