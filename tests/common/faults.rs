//! Fault-injection helpers for tests/cluster_faults.rs: a recording subscriber that keeps
//! reconnecting with `Last-Event-ID` (to a fixed node or rotating over several), an ack
//! log of every producer answer, and a sceptic's checker that flags silent gaps,
//! duplicates and reordering against everything known to exist. Plus the `LD_PRELOAD`
//! clock shim (clock_shim.c) compiled at test time.
#![allow(dead_code)]

use super::{Server, json_str, parse_ok};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---- What a subscriber saw ------------------------------------------------------------------

/// One thing a recording subscriber saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A stream was opened (200) on `node`, resuming from `resume` (the `Last-Event-ID` sent).
    Open {
        node: SocketAddr,
        resume: Option<u64>,
    },
    /// An event with an id.
    Event(u64, String),
    /// `event: reset`.
    Reset,
    /// The stream ended: closed by the node (`retry` true when a `retry:` line came after
    /// the head's), or dropped by the recorder (`hop`).
    Closed { retry: bool, hop: bool },
}

/// Which node a recorder connects to each time.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Always this node.
    Fixed(SocketAddr),
    /// The next one in the list at every (re)connect.
    Rotate(Vec<SocketAddr>),
}

/// A subscriber on its own thread: connects, records, reconnects with `Last-Event-ID`.
pub struct Recorder {
    pub name: String,
    pub topic: String,
    log: Arc<Mutex<Vec<Delivery>>>,
    /// Non-200 answers and refused connects (for reports).
    failures: Arc<Mutex<Vec<String>>>,
    targets: Arc<Mutex<Targets>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Options of a `Recorder`.
#[derive(Debug, Clone)]
pub struct RecOptions {
    /// Pause before a reconnect.
    pub pause: Duration,
    /// Drop the connection after this many events on it (a client hopping nodes).
    pub hop_every: Option<usize>,
}

impl Default for RecOptions {
    fn default() -> Self {
        RecOptions {
            pause: Duration::from_millis(150),
            hop_every: None,
        }
    }
}

impl Recorder {
    /// Starts recording `topic` on one node.
    pub fn on(name: &str, node: &Server, topic: &str) -> Recorder {
        Recorder::start(
            name,
            topic,
            Targets::Fixed(node.addr),
            RecOptions::default(),
        )
    }

    pub fn start(name: &str, topic: &str, targets: Targets, opts: RecOptions) -> Recorder {
        let log = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let targets = Arc::new(Mutex::new(targets));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, f, t, s, topic2) = (
            log.clone(),
            failures.clone(),
            targets.clone(),
            stop.clone(),
            topic.to_string(),
        );
        let thread = std::thread::spawn(move || record(&topic2, &t, &opts, &l, &f, &s));
        Recorder {
            name: name.to_string(),
            topic: topic.to_string(),
            log,
            failures,
            targets,
            stop,
            thread: Some(thread),
        }
    }

    /// Where the next connects go.
    pub fn set_targets(&self, targets: Targets) {
        *self.targets.lock().unwrap() = targets;
    }

    /// Everything so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Ids of the events delivered so far, in order.
    pub fn event_ids(&self) -> Vec<u64> {
        self.deliveries()
            .iter()
            .filter_map(|d| match d {
                Delivery::Event(id, _) => Some(*id),
                _ => None,
            })
            .collect()
    }

    pub fn has(&self, id: u64) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|d| matches!(d, Delivery::Event(i, _) if *i == id))
    }

    /// True while a stream is open (the last thing recorded is its opening or an event
    /// on it).
    pub fn is_open(&self) -> bool {
        matches!(
            self.log.lock().unwrap().last(),
            Some(Delivery::Open { .. } | Delivery::Event(..) | Delivery::Reset)
        )
    }

    /// Waits until a stream is open (its head came).
    pub fn wait_open(&self, timeout: Duration) -> bool {
        super::wait_for(timeout, || self.is_open())
    }

    /// Waits until event `id` was delivered.
    pub fn wait_for_id(&self, id: u64, timeout: Duration) -> bool {
        super::wait_for(timeout, || self.has(id))
    }

    /// Waits until an event with `data` was delivered; its id.
    pub fn wait_for_data(&self, data: &str, timeout: Duration) -> Option<u64> {
        let mut found = None;
        super::wait_for(timeout, || {
            found = self.log.lock().unwrap().iter().find_map(|d| match d {
                Delivery::Event(id, d) if d == data => Some(*id),
                _ => None,
            });
            found.is_some()
        });
        found
    }

    pub fn count(&self, pred: impl Fn(&Delivery) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|d| pred(d)).count()
    }

    /// Stops the thread (closing its connection); the log stays readable.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// (name, topic, deliveries) for `check`.
    pub fn record_of(&self) -> SubRecord {
        SubRecord {
            name: self.name.clone(),
            topic: self.topic.clone(),
            deliveries: self.deliveries(),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn record(
    topic: &str,
    targets: &Mutex<Targets>,
    opts: &RecOptions,
    log: &Mutex<Vec<Delivery>>,
    failures: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut turn = 0usize;
    let mut last: Option<u64> = None;
    let pause = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let addr = match &*targets.lock().unwrap() {
            Targets::Fixed(a) => *a,
            Targets::Rotate(list) => list[turn % list.len()],
        };
        turn += 1;
        let sock = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => s,
            Err(e) => {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("connect {addr}: {e}"));
                pause(opts.pause);
                continue;
            }
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
        let resume = last;
        let header = resume.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!("GET /events?topic={topic} HTTP/1.1\r\nHost: faults\r\n{header}\r\n");
        let mut sock = sock;
        if sock.write_all(request.as_bytes()).is_err() {
            pause(opts.pause);
            continue;
        }
        let mut stream = SseStream::new(sock);
        let head = match stream.head(stop) {
            Some(h) => h,
            None => {
                failures.lock().unwrap().push(format!("{addr}: no head"));
                pause(opts.pause);
                continue;
            }
        };
        if !head.starts_with("HTTP/1.1 200 ") {
            let status = head.lines().next().unwrap_or("").to_string();
            failures.lock().unwrap().push(format!("{addr}: {status}"));
            pause(opts.pause);
            continue;
        }
        log.lock()
            .unwrap()
            .push(Delivery::Open { node: addr, resume });
        let mut on_this = 0usize;
        let mut retries = 0usize;
        let (retry, hop) = loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match stream.next_block() {
                Block::Pending => {}
                Block::Eof => break (retries > 1, false),
                Block::Lines(lines) => {
                    let mut id = None;
                    let mut data: Vec<&str> = Vec::new();
                    let mut reset = false;
                    for l in &lines {
                        if l.starts_with("retry:") {
                            retries += 1;
                        } else if l.trim_end() == "event: reset" {
                            reset = true;
                        } else if let Some(v) = l.strip_prefix("id: ") {
                            id = v.trim().parse::<u64>().ok();
                        } else if let Some(v) = l.strip_prefix("data:") {
                            data.push(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    if reset {
                        log.lock().unwrap().push(Delivery::Reset);
                    } else if let Some(id) = id {
                        log.lock()
                            .unwrap()
                            .push(Delivery::Event(id, data.join("\n")));
                        last = Some(id);
                        on_this += 1;
                        if opts.hop_every.is_some_and(|n| on_this >= n) {
                            break (false, true);
                        }
                    }
                }
            }
        };
        log.lock().unwrap().push(Delivery::Closed { retry, hop });
        drop(stream);
        pause(opts.pause);
    }
}

enum Block {
    /// Nothing complete yet (read timeout).
    Pending,
    Eof,
    /// The lines of one block (up to a blank line); may be just a `retry:` or comment.
    Lines(Vec<String>),
}

/// Close-delimited SSE over a socket with a short read timeout.
struct SseStream {
    sock: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl SseStream {
    fn new(sock: TcpStream) -> SseStream {
        SseStream {
            sock,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Reads into the buffer once; false on EOF or error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.sock.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// The response head (within 10 s).
    fn head(&mut self, stop: &AtomicBool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline || !self.fill() {
                // A plain answer without a complete head: report what came.
                if !self.buf.is_empty() && self.eof {
                    return Some(String::from_utf8_lossy(&self.buf).into_owned());
                }
                return None;
            }
        }
    }

    fn next_block(&mut self) -> Block {
        if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..i + 2).collect();
            return Block::Lines(
                String::from_utf8_lossy(&block)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
        // A lone `retry:` line may precede the first event without its own blank line.
        if self.buf.starts_with(b"retry:")
            && let Some(i) = self.buf.iter().position(|&b| b == b'\n')
        {
            let line: Vec<u8> = self.buf.drain(..i + 1).collect();
            return Block::Lines(vec![String::from_utf8_lossy(&line).trim_end().into()]);
        }
        if self.eof {
            return Block::Eof;
        }
        self.fill();
        Block::Pending
    }
}

// ---- What producers were told ---------------------------------------------------------------

/// One producer answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `{"ok":true,"id":N}`: the event exists.
    Ok(u64),
    /// `not confirmed`: it may exist.
    Maybe,
    /// Any other refusal (`not stored`, ...) or no answer at all.
    Refused,
}

#[derive(Debug, Clone)]
pub struct Ack {
    pub topic: String,
    pub data: String,
    pub outcome: Outcome,
    pub answer: String,
}

/// Every producer answer of a test, shared by its publishers.
#[derive(Clone, Default)]
pub struct AckLog(Arc<Mutex<Vec<Ack>>>);

impl AckLog {
    pub fn new() -> AckLog {
        AckLog::default()
    }

    pub fn push(&self, topic: &str, data: &str, answer: &str) -> Outcome {
        let outcome = match parse_ok(answer) {
            Some(id) => Outcome::Ok(id),
            None if answer.contains("not confirmed") => Outcome::Maybe,
            None => Outcome::Refused,
        };
        self.0.lock().unwrap().push(Ack {
            topic: topic.to_string(),
            data: data.to_string(),
            outcome: outcome.clone(),
            answer: answer.to_string(),
        });
        outcome
    }

    pub fn all(&self) -> Vec<Ack> {
        self.0.lock().unwrap().clone()
    }

    pub fn ok_ids(&self) -> Vec<u64> {
        self.all()
            .iter()
            .filter_map(|a| match a.outcome {
                Outcome::Ok(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Ack) -> bool) -> usize {
        self.all().iter().filter(|a| pred(a)).count()
    }
}

/// A producer on a node's ingest socket that never panics on a missing answer (a stopped
/// node, a dropped socket): every answer, or the failure, goes to the ack log.
pub struct Publisher {
    path: PathBuf,
    conn: Option<(UnixStream, BufReader<UnixStream>)>,
    acks: AckLog,
    pub timeout: Duration,
}

impl Publisher {
    pub fn new(node: &Server, acks: &AckLog) -> Publisher {
        Publisher {
            path: node.socket.clone(),
            conn: None,
            acks: acks.clone(),
            timeout: Duration::from_secs(8),
        }
    }

    /// Sends one raw line; the answer line ("" on failure). Not logged.
    pub fn request(&mut self, line: &str) -> String {
        if self.conn.is_none() {
            let Ok(s) = UnixStream::connect(&self.path) else {
                return String::new();
            };
            let _ = s.set_read_timeout(Some(self.timeout));
            let r = BufReader::new(s.try_clone().expect("clone"));
            self.conn = Some((s, r));
        }
        let (s, r) = self.conn.as_mut().unwrap();
        if s.write_all(format!("{line}\n").as_bytes()).is_err() {
            self.conn = None;
            return String::new();
        }
        let mut answer = String::new();
        match r.read_line(&mut answer) {
            Ok(n) if n > 0 && answer.ends_with('\n') => answer.trim_end().to_string(),
            _ => {
                self.conn = None;
                String::new()
            }
        }
    }

    /// Publishes `data` on `topic` and logs the answer: the answer and what it meant.
    fn send(&mut self, topic: &str, data: &str) -> (String, Outcome) {
        let line = format!(
            "{{\"topic\":{},\"data\":{}}}",
            json_str(topic),
            json_str(data)
        );
        let answer = self.request(&line);
        let outcome = self.acks.push(topic, data, &answer);
        (answer, outcome)
    }

    /// Publishes `data` on `topic`, logs the answer; the id when ok.
    pub fn publish(&mut self, topic: &str, data: &str) -> Option<u64> {
        match self.send(topic, data) {
            (_, Outcome::Ok(id)) => Some(id),
            _ => None,
        }
    }

    /// `publish`, panicking on anything but ok (with the answer).
    pub fn must(&mut self, topic: &str, data: &str) -> u64 {
        match self.send(topic, data) {
            (_, Outcome::Ok(id)) => id,
            (answer, _) => panic!("publish {data:?} on {topic}: {answer:?}"),
        }
    }
}

// ---- The checker ----------------------------------------------------------------------------

/// One subscriber's record, as the checker reads it.
#[derive(Debug, Clone)]
pub struct SubRecord {
    pub name: String,
    pub topic: String,
    pub deliveries: Vec<Delivery>,
}

/// Flags, for every subscriber:
/// (a) a silent gap: an event that exists (acknowledged ok, or delivered to any subscriber
///     of the topic) with an id strictly between two consecutive deliveries of the
///     subscriber without a `reset` between them; likewise one above its last delivery
///     (the tail: run after a sentinel everyone got). An event that appears later with an
///     id the subscriber had already passed (a failover that issued lower ids) is missed
///     too, whatever comes after: no later `reset` excuses it;
/// (b) ids not strictly increasing (a duplicate or reordering) between resets, and after a
///     `reset` a first id not above the `Last-Event-ID` sent on that connection;
/// (c) one id known with two different data.
/// Returns the violations as readable lines (empty: clean).
pub fn check(subs: &[SubRecord], acks: &[Ack]) -> Vec<String> {
    let mut out = Vec::new();
    // topic -> id -> (data, where it is known from)
    let mut exists: BTreeMap<String, BTreeMap<u64, (String, String)>> = BTreeMap::new();
    let mut note = |out: &mut Vec<String>, topic: &str, id: u64, data: &str, from: String| {
        let known = exists.entry(topic.to_string()).or_default();
        match known.get(&id) {
            Some((d, f)) if d != data => out.push(format!(
                "id {id} on {topic:?} has two data: {d:?} ({f}) and {data:?} ({from})"
            )),
            Some(_) => {}
            None => {
                known.insert(id, (data.to_string(), from));
            }
        }
    };
    for a in acks {
        if let Outcome::Ok(id) = a.outcome {
            note(&mut out, &a.topic, id, &a.data, "acknowledged".into());
        }
    }
    for s in subs {
        for d in &s.deliveries {
            if let Delivery::Event(id, data) = d {
                note(
                    &mut out,
                    &s.topic,
                    *id,
                    data,
                    format!("delivered to {}", s.name),
                );
            }
        }
    }
    let empty = BTreeMap::new();
    for s in subs {
        let known = exists.get(&s.topic).unwrap_or(&empty);
        let mut resume: Option<u64> = None;
        // The last event since the last reset (gap check), and the floor for order.
        let mut prev: Option<(u64, usize)> = None;
        let mut floor: u64 = 0;
        let mut after_reset = false;
        for (i, d) in s.deliveries.iter().enumerate() {
            match d {
                Delivery::Open { resume: r, .. } => resume = *r,
                Delivery::Closed { .. } => {}
                Delivery::Reset => {
                    prev = None;
                    floor = resume.unwrap_or(0);
                    after_reset = true;
                }
                Delivery::Event(id, data) => {
                    if *id <= floor {
                        out.push(format!(
                            "{}: {} id {id} ({data:?}) at #{i} not above {floor}{}",
                            s.name,
                            if *id == floor {
                                "duplicate"
                            } else {
                                "out of order"
                            },
                            if after_reset {
                                " (the Last-Event-ID sent before the reset)"
                            } else {
                                ""
                            }
                        ));
                    }
                    if let Some((a, ai)) = prev.filter(|(a, _)| *a < *id) {
                        let missing: Vec<String> = known
                            .range(a + 1..*id)
                            .map(|(m, (md, from))| format!("{m} {md:?} ({from})"))
                            .collect();
                        if !missing.is_empty() {
                            out.push(format!(
                                "{}: silent gap between #{ai} Event({a}) and #{i} Event({id}): \
                                 missing {} [{}]",
                                s.name,
                                missing.len(),
                                missing.join(", ")
                            ));
                        }
                    }
                    prev = Some((*id, i));
                    floor = floor.max(*id);
                    after_reset = false;
                }
            }
        }
        if let Some((a, ai)) = prev {
            let missing: Vec<String> = known
                .range(a + 1..)
                .map(|(m, (md, from))| format!("{m} {md:?} ({from})"))
                .collect();
            if !missing.is_empty() {
                out.push(format!(
                    "{}: never delivered after its last #{ai} Event({a}): missing {} [{}]",
                    s.name,
                    missing.len(),
                    missing.join(", ")
                ));
            }
        }
    }
    out
}

/// A readable summary of a record (for failure messages): opens, resets, closes and the
/// first/last ids of each run of events.
pub fn summary(s: &SubRecord) -> String {
    let mut out = format!("{} ({}):", s.name, s.topic);
    let mut run: Vec<u64> = Vec::new();
    let flush = |out: &mut String, run: &mut Vec<u64>| {
        if !run.is_empty() {
            out.push_str(&format!(
                " [{} events {}..{}]",
                run.len(),
                run[0],
                run[run.len() - 1]
            ));
            run.clear();
        }
    };
    for d in &s.deliveries {
        match d {
            Delivery::Event(id, _) => run.push(*id),
            other => {
                flush(&mut out, &mut run);
                out.push_str(&match other {
                    Delivery::Open { node, resume } => {
                        format!(" open({}, {resume:?})", node.port())
                    }
                    Delivery::Reset => " RESET".into(),
                    Delivery::Closed { retry, hop } => format!(" closed(retry={retry},hop={hop})"),
                    Delivery::Event(..) => unreachable!(),
                });
            }
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Runs `check` over the recorders and panics with a report when anything is flagged.
pub fn assert_clean(recs: &[&Recorder], acks: &AckLog, context: &str) {
    let subs: Vec<SubRecord> = recs.iter().map(|r| r.record_of()).collect();
    let violations = check(&subs, &acks.all());
    if !violations.is_empty() {
        let shown: Vec<&String> = violations.iter().take(20).collect();
        panic!(
            "{} violation(s) {context}:\n  {}\n--- subscribers:\n  {}\n",
            violations.len(),
            shown
                .iter()
                .map(|v| truncate(v, 1500))
                .collect::<Vec<_>>()
                .join("\n  "),
            subs.iter().map(summary).collect::<Vec<_>>().join("\n  ")
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

// ---- The clock shim -------------------------------------------------------------------------

/// Compiles clock_shim.c into `dir`; the path of the `.so`.
pub fn build_clock_shim(dir: &std::path::Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/common/clock_shim.c");
    let out = dir.join("clock_shim.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc");
    assert!(status.success(), "building the clock shim failed");
    out
}

/// Redis's `TIME` in µs.
pub fn redis_time_us(r: &super::redis::Redis) -> i64 {
    let t = r.cli(&["TIME"]);
    let mut parts = t.lines().map(|l| l.trim().parse::<i64>().unwrap_or(0));
    let (s, us) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    s * 1_000_000 + us
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}
