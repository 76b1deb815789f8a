//! Test fixtures shared by every file in tests/: the real `ssehub` binary on loopback and
//! what talks to it over real sockets. No mocks.
//! - `Server`: the hub started from a config written for the test (`start`, `start_with`,
//!   `start_at_socket`, `start_with_command` for a wrapper such as `sh -c "ulimit ..."`) or
//!   from an existing file with a hook on the `Command` for env and inherited descriptors
//!   (`start_config`, `spawn`); its stderr log collected, its `listening http=` line
//!   awaited, killed on drop; signals, exit, log queries.
//! - `Client` (raw HTTP over TCP), `Producer` (the ingest socket) and parsers of answers and
//!   SSE blocks; config text (`config_with_socket`, `write_config`); CLI runs (`run_bin`).
//! - `certs`: real certificates from the openssl CLI (self-signed, or a CA and a leaf).
//! - `prom`: `/metrics` parsed by the official Prometheus client's parser.
#![allow(dead_code)]

pub mod certs;
pub mod faults;
pub mod prom;
pub mod redis;
pub mod tls_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ssehub");

/// A running server; killed (SIGKILL) on drop unless stopped first.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The ingest socket its config names.
    pub socket: PathBuf,
    /// The config file it was started with.
    pub config: PathBuf,
    /// Every stderr line so far (the log, at debug level).
    pub log: Arc<Mutex<Vec<String>>>,
    /// The temp dir the fixture made for the config; None when the test owns the config.
    _dir: Option<tempfile::TempDir>,
    /// What lives as long as the server (a cluster node's reader replica).
    pub keep: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Server {
    /// Starts with defaults (listen on a free port, ingest socket in a temp dir).
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts with extra config lines per section, e.g. `&[("streams", "keepalive = \"200ms\"")]`.
    pub fn start_with(sections: &[(&str, &str)]) -> Server {
        Server::start_with_command(sections, serve_command)
    }

    /// Like `start_with`, but runs the command `command` builds from the config's path (the
    /// hub behind a wrapper such as `sh -c "ulimit ... && exec ssehub serve ..."`).
    pub fn start_with_command(
        sections: &[(&str, &str)],
        command: impl FnOnce(&Path) -> Command,
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("ingest.sock");
        let config = config_with_socket(&socket, sections);
        let config_path = dir.path().join("ssehub.toml");
        std::fs::write(&config_path, config).expect("write config");
        Server::spawn_in(command(&config_path), &config_path, Some(dir))
    }

    /// Starts `ssehub serve --config CONFIG` (a file the test owns, e.g. from
    /// `write_config`) after `setup` has adjusted the command (env, `pre_exec`).
    pub fn start_config(config: &Path, setup: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = serve_command(config);
        setup(&mut cmd);
        Server::spawn(cmd, config)
    }

    /// Spawns `cmd`, which must end up running the hub with `config` (through a wrapper
    /// such as `sh -c "... exec ssehub serve ..."` if need be), and waits for it to listen.
    pub fn spawn(cmd: Command, config: &Path) -> Server {
        Server::spawn_in(cmd, config, None)
    }

    fn spawn_in(mut cmd: Command, config: &Path, dir: Option<tempfile::TempDir>) -> Server {
        let socket = ingest_socket(config);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssehub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line
                    .split("listening http=")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
                // Logged before the start is announced, so a test that reads the log right
                // after `start` finds the `listening` line in it.
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            socket,
            config: config.to_path_buf(),
            log,
            _dir: dir,
            keep: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name ("TERM", "INT", "HUP", "KILL").
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// A copy of the log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log so far, one line per line (for assertion messages).
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn producer(&self) -> Producer {
        Producer::connect(&self.socket)
    }

    /// Opens a stream and checks the head; returns the client positioned after `retry:`.
    pub fn subscribe(&self, query: &str) -> Client {
        let mut c = Client::connect(self.addr);
        c.send(&format!(
            "GET /events?{query} HTTP/1.1\r\nHost: test\r\n\r\n"
        ));
        let head = c.read_head();
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "unexpected head: {head}"
        );
        let retry = c.read_line();
        assert!(
            retry.starts_with("retry: "),
            "expected retry line, got {retry:?}"
        );
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP client on a blocking socket with a read timeout.
pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            sock,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &str) {
        self.sock.write_all(bytes.as_bytes()).expect("send");
    }

    pub fn set_timeout(&self, t: Duration) {
        self.sock.set_read_timeout(Some(t)).unwrap();
    }

    /// Reads more bytes into the buffer; false on EOF or timeout.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.sock.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Bytes up to and including the first occurrence of `pat`; panics on EOF/timeout.
    pub fn read_until(&mut self, pat: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return self.buf.drain(..i + pat.len()).collect();
            }
            if !self.fill() {
                panic!(
                    "EOF/timeout waiting for {:?}; have {:?}",
                    String::from_utf8_lossy(pat),
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    pub fn read_head(&mut self) -> String {
        String::from_utf8(self.read_until(b"\r\n\r\n")).expect("utf-8 head")
    }

    pub fn read_line(&mut self) -> String {
        String::from_utf8(self.read_until(b"\n")).expect("utf-8 line")
    }

    /// One SSE event block (up to and including the blank line), as text.
    pub fn read_event(&mut self) -> String {
        String::from_utf8(self.read_until(b"\n\n")).expect("utf-8 event")
    }

    /// Reads a complete plain response (head + Content-Length body): (status, head, body).
    pub fn read_response(&mut self) -> (u16, String, String) {
        let head = self.read_head();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        while self.buf.len() < len {
            assert!(self.fill(), "EOF in body");
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        (status, head, String::from_utf8(body).unwrap())
    }

    /// Waits until the server closes the connection, collecting what else arrives.
    /// Returns None on timeout.
    pub fn read_to_close(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut chunk = [0u8; 65536];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return Some(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(std::mem::take(&mut self.buf)),
            }
            if Instant::now() > deadline {
                return None;
            }
        }
    }

    /// Bytes that arrive within `wait` (nothing is consumed from the socket after it).
    pub fn read_for(&mut self, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.sock.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
        self.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        std::mem::take(&mut self.buf)
    }
}

/// A producer on the ingest socket.
pub struct Producer {
    pub sock: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Producer {
    pub fn connect(path: &Path) -> Producer {
        let sock = UnixStream::connect(path).expect("connect ingest");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let reader = BufReader::new(sock.try_clone().unwrap());
        Producer { sock, reader }
    }

    /// Sends raw bytes (a line must end with '\n' to count).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("send to ingest");
    }

    pub fn read_answer(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("answer");
        assert!(line.ends_with('\n'), "incomplete answer {line:?}");
        line.trim_end().to_string()
    }

    /// Sends one line and returns the answer line.
    pub fn request(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_answer()
    }

    /// Publishes and returns the id; panics on an error answer.
    pub fn publish_json(&mut self, line: &str) -> u64 {
        let answer = self.request(line);
        parse_ok(&answer).unwrap_or_else(|| panic!("publish refused: {answer}"))
    }

    pub fn publish(&mut self, topic: &str, data: &str) -> u64 {
        let line = format!(
            "{{\"topic\":{},\"data\":{}}}",
            json_str(topic),
            json_str(data)
        );
        self.publish_json(&line)
    }
}

/// The id of `{"ok":true,"id":"N"}`.
pub fn parse_ok(answer: &str) -> Option<u64> {
    answer
        .strip_prefix("{\"ok\":true,\"id\":\"")?
        .strip_suffix("\"}")?
        .parse()
        .ok()
}

/// JSON string literal for `s`.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Polls `cond` every 20 ms until true or `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

// ---- Ingest socket, CLI and signal helpers -------------------------------------------------

/// The config text `Server::start_with` writes, but with the ingest socket at `socket`.
pub fn config_with_socket(socket: &Path, sections: &[(&str, &str)]) -> String {
    let mut http = String::from("listen = \"127.0.0.1:0\"\n");
    let mut ingest = format!("socket = {:?}\n", socket.display().to_string());
    let mut others: Vec<(String, String)> = Vec::new();
    for (section, lines) in sections {
        match *section {
            "http" => http.push_str(&format!("{lines}\n")),
            "ingest" => ingest.push_str(&format!("{lines}\n")),
            s => match others.iter_mut().find(|(n, _)| n == s) {
                Some((_, body)) => body.push_str(&format!("{lines}\n")),
                None => others.push((s.to_string(), format!("{lines}\n"))),
            },
        }
    }
    let mut config = format!("[http]\n{http}\n[ingest]\n{ingest}\n");
    for (name, body) in others {
        config.push_str(&format!("[{name}]\n{body}\n"));
    }
    config
}

/// Writes `dir/ssehub.toml` with the ingest socket at `dir/ingest.sock`, a free port,
/// `http_extra` lines in `[http]` and `extra` (whole TOML sections, e.g.
/// "[streams]\nkeepalive = \"1s\"\n") after `[ingest]`; returns its path. Writing again
/// replaces the file (the reload tests rely on that).
pub fn write_config(dir: &Path, http_extra: &str, extra: &str) -> PathBuf {
    let path = dir.join("ssehub.toml");
    let mut config = config_with_socket(&dir.join("ingest.sock"), &[("http", http_extra)]);
    config.push_str(extra);
    std::fs::write(&path, config).expect("write config");
    path
}

/// `ssehub serve --config CONFIG --log-level debug`: what every `Server` runs.
pub fn serve_command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--log-level")
        .arg("debug");
    cmd
}

/// The `[ingest] socket` of a config file.
fn ingest_socket(config: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).expect("read config");
    let table: toml::Table = text.parse().expect("config is TOML");
    let socket = table
        .get("ingest")
        .and_then(|i| i.get("socket"))
        .and_then(|s| s.as_str())
        .unwrap_or_else(|| panic!("no [ingest] socket in {config:?}"));
    PathBuf::from(socket)
}

impl Server {
    /// Starts with the ingest socket at `socket` (a path that may not exist yet, or hold a
    /// stale socket file); the config lives in a temp dir of its own.
    pub fn start_at_socket(socket: &Path, sections: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("ssehub.toml");
        std::fs::write(&config_path, config_with_socket(socket, sections)).expect("write config");
        Server::spawn_in(serve_command(&config_path), &config_path, Some(dir))
    }
}

/// What a finished run of the binary left behind.
#[derive(Debug)]
pub struct BinOutput {
    /// Exit code; None when killed by a signal or (after `timed_out`) by the test.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// A run of the `ssehub` binary with piped stdio, started by `spawn_bin`.
pub struct BinRun {
    pub child: Child,
    started: Instant,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// Starts `ssehub ARGS...`, feeding `stdin` (then closing it) from a thread.
pub fn spawn_bin<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: &[u8]) -> BinRun {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssehub");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    BinRun {
        child,
        started,
        stdout,
        stderr,
    }
}

impl BinRun {
    /// Waits up to `timeout` for the exit (killing the process after that).
    pub fn finish(mut self, timeout: Duration) -> BinOutput {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        BinOutput {
            code: status.code(),
            timed_out,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed,
        }
    }
}

/// Runs `ssehub ARGS...` to completion (at most `timeout`).
pub fn run_bin<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    stdin: &[u8],
    timeout: Duration,
) -> BinOutput {
    spawn_bin(args, stdin).finish(timeout)
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The decoded `error` of an answer that is exactly `{"ok":false,"error":"..."}`;
/// None for anything else.
pub fn parse_error_answer(answer: &str) -> Option<String> {
    if !answer.starts_with("{\"ok\":false,\"error\":\"") || !answer.ends_with("\"}") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(answer).ok()?;
    let obj = v.as_object()?;
    if obj.len() != 2 || obj.get("ok")? != &serde_json::Value::Bool(false) {
        return None;
    }
    obj.get("error")?.as_str().map(str::to_owned)
}

impl Server {
    /// Sends a stream request with extra header lines (each ending in "\r\n") and returns
    /// the client after the head, with the head.
    pub fn request_stream(&self, query: &str, headers: &str) -> (Client, String) {
        let mut c = Client::connect(self.addr);
        c.send(&format!(
            "GET /events?{query} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"
        ));
        let head = c.read_head();
        (c, head)
    }

    /// Opens a stream resuming from `last_event_id` (the header); positioned after `retry:`.
    pub fn resume(&self, query: &str, last_event_id: &str) -> Client {
        let (mut c, head) =
            self.request_stream(query, &format!("Last-Event-ID: {last_event_id}\r\n"));
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "unexpected head: {head}"
        );
        let retry = c.read_line();
        assert!(
            retry.starts_with("retry: "),
            "expected retry line, got {retry:?}"
        );
        c
    }
}

/// The `id:` of an event block (None for an event without one, such as `reset`).
pub fn event_id(block: &str) -> Option<u64> {
    block
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|v| v.parse().ok())
}

/// The `data:` lines of an event block joined with '\n'.
pub fn event_data(block: &str) -> String {
    block
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Client {
    /// Wraps an already connected socket (e.g. one with socket options set before connect).
    pub fn from_stream(sock: TcpStream) -> Client {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            sock,
            buf: Vec::new(),
        }
    }
}

// ---- Security and caps helpers (tests/security.rs, tests/caps.rs) --------------------------

/// The value of header `name` (case-insensitive) in a response head; None when absent.
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads one plain answer and checks it is `status` with `text/plain` and a one-line,
/// non-empty reason; returns (head, reason without its newline).
pub fn read_plain(c: &mut Client, status: u16) -> (String, String) {
    let (got, head, body) = c.read_response();
    assert_eq!(got, status, "head: {head:?} body: {body:?}");
    assert!(
        header_of(&head, "content-type").is_some_and(|v| v.starts_with("text/plain")),
        "not plain text: {head:?}"
    );
    assert!(
        body.ends_with('\n') && body.len() > 1 && body.matches('\n').count() == 1,
        "reason must be one non-empty line: {body:?}"
    );
    assert!(!body.contains('\r'), "reason must be one line: {body:?}");
    (head, body.trim_end().to_string())
}
