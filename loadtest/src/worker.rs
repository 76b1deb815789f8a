//! A worker process: one `mio` loop on one thread holding up to ~20,000 streams, opened
//! from its own source addresses. It reads what the coordinator sends on stdin (config,
//! then commands) and reports on stdout (ready, result).
//!
//! Reading is cheap on purpose so that the client is not the bottleneck: one shared read
//! buffer, one clock reading per `read`, no per-event allocation, and edge-triggered
//! readiness with a short read taken as "drained" (a new arrival raises a new edge).

use crate::hist::Hist;
use crate::proto::{FromWorker, Mode, Ready, ToWorker, WorkerConfig, WorkerResult};
use crate::rng::Rng;
use crate::sse::{Flow, Item, Parser};
use crate::sys;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

/// The token of the loop's `Waker` (the stdin or coordinator thread wakes the loop).
pub(crate) const WAKER: Token = Token(usize::MAX);
/// Connections opened per loop turn, and at most this many waiting for their answer, so
/// the server's accept backlog is never overrun.
const CONNECT_BATCH: usize = 256;
const MAX_IN_FLIGHT: usize = 2048;
/// A response head larger than this is an error.
const MAX_HEAD: usize = 16 * 1024;
const READ_BUF: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not yet opened, or waiting to reconnect (churn).
    Idle,
    Connecting,
    AwaitHead,
    Streaming,
    /// Ended for good (server close outside churn, failure, or done).
    Closed,
}

/// What a stream has seen, across all of its connections.
#[derive(Default)]
struct Track {
    next_seq: u64,
    received: u64,
    this_conn: u32,
    cycle: u32,
    after_reset: bool,
}

struct Stream {
    sock: Option<TcpStream>,
    /// The TLS client of a `--tls-ca` run.
    tls: Option<Box<rustls::ClientConnection>>,
    state: State,
    slow: bool,
    /// A slow stream reads again (after the coordinator's finish).
    draining: bool,
    head: Vec<u8>,
    parser: Parser,
    track: Track,
}

/// Counters shared by all streams of this worker.
#[derive(Default)]
struct Tally {
    deliveries: u64,
    slow_deliveries: u64,
    missing: u64,
    missing_after_reset: u64,
    duplicates: u64,
    foreign: u64,
    keepalives: u64,
    lat_sent: Hist,
    lat_sched: Hist,
    last_recv: Vec<u64>,
}

pub fn run() -> ! {
    sys::raise_nofile();
    let (tx, rx) = mpsc::channel::<Option<ToWorker>>();
    let stdin = io::stdin();
    let mut first = String::new();
    if stdin.lock().read_line(&mut first).unwrap_or(0) == 0 {
        eprintln!("ssehub-loadtest worker: no configuration on stdin");
        std::process::exit(2);
    }
    let cfg: WorkerConfig = serde_json::from_str(&first).unwrap_or_else(|e| {
        eprintln!("ssehub-loadtest worker: bad configuration: {e}");
        std::process::exit(2)
    });
    let poll = Poll::new().expect("poll");
    let waker = std::sync::Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
    let w = waker.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<ToWorker>(&line) {
                Ok(cmd) => {
                    let _ = tx.send(Some(cmd));
                }
                Err(e) => eprintln!("ssehub-loadtest worker: bad command {line:?}: {e}"),
            }
            let _ = w.wake();
        }
        let _ = tx.send(None);
        let _ = w.wake();
    });
    let deadline = cfg.deadline_ns;
    std::thread::spawn(move || {
        sys::sleep_until_ns(deadline);
        eprintln!("ssehub-loadtest worker: hard deadline passed, exiting");
        std::process::exit(3);
    });
    let mut engine = Engine::new(cfg, poll);
    let result = engine.run(&rx);
    send(&FromWorker::Result(Box::new(result)));
    std::process::exit(0);
}

/// One connection's readiness from one poll.
pub(crate) struct Readiness {
    pub token: usize,
    pub writable: bool,
    /// Readable, or hung up / in error: the next read then sees the end.
    pub readable: bool,
    pub hup: bool,
}

/// One turn of the client loops (the worker's and the soak's): waits for readiness up to
/// `timeout` (an interrupted wait is an empty turn; any other error ends the process),
/// then yields each connection's readiness, the waker's left out.
pub(crate) fn poll_ready<'a>(
    poll: &mut Poll,
    events: &'a mut Events,
    timeout: Duration,
) -> impl Iterator<Item = Readiness> + use<'a> {
    if let Err(e) = poll.poll(events, Some(timeout))
        && e.kind() != io::ErrorKind::Interrupted
    {
        panic!("poll: {e}");
    }
    events.iter().filter(|ev| ev.token() != WAKER).map(|ev| {
        let hup = ev.is_read_closed() || ev.is_error();
        Readiness {
            token: ev.token().0,
            writable: ev.is_writable(),
            readable: ev.is_readable() || hup,
            hup,
        }
    })
}

fn send(msg: &FromWorker) {
    let mut out = io::stdout().lock();
    let line = serde_json::to_string(msg).expect("serialize");
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Engine {
    cfg: WorkerConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    poll: Poll,
    streams: Vec<Stream>,
    tally: Tally,
    churn: crate::proto::ChurnCounts,
    /// (when, stream) of pending reconnects.
    reconnects: BinaryHeap<Reverse<(u64, usize)>>,
    /// Streams opened so far in the first round.
    opened: usize,
    in_flight: usize,
    ready_sent: bool,
    open_first: usize,
    failed_first: usize,
    first_error: Option<String>,
    churning: bool,
    finishing: bool,
    errors: Vec<String>,
    rng: Rng,
    started_ns: u64,
}

impl Engine {
    fn new(cfg: WorkerConfig, poll: Poll) -> Engine {
        let slow = cfg.slow.min(cfg.streams);
        let streams = (0..cfg.streams)
            .map(|i| Stream {
                sock: None,
                tls: None,
                state: State::Idle,
                // Spread the slow ones evenly among the others.
                slow: slow > 0 && i * slow / cfg.streams != (i + 1) * slow / cfg.streams,
                draining: false,
                head: Vec::new(),
                parser: Parser::default(),
                track: Track::default(),
            })
            .collect();
        let tally = Tally {
            last_recv: if cfg.mode == Mode::Fanout {
                vec![0; cfg.events as usize]
            } else {
                Vec::new()
            },
            ..Tally::default()
        };
        let tls = cfg.tls_ca.as_ref().map(|ca| {
            tls_config(ca, cfg.tls12).unwrap_or_else(|e| {
                eprintln!("ssehub-loadtest worker: {e}");
                std::process::exit(2)
            })
        });
        let mut engine = Engine {
            tls,
            rng: Rng::new(cfg.seed),
            churning: cfg.mode == Mode::Churn,
            cfg,
            poll,
            streams,
            tally,
            churn: Default::default(),
            reconnects: BinaryHeap::new(),
            opened: 0,
            in_flight: 0,
            ready_sent: false,
            open_first: 0,
            failed_first: 0,
            first_error: None,
            finishing: false,
            errors: Vec::new(),
            started_ns: sys::mono_ns(),
        };
        for i in 0..engine.streams.len() {
            engine.streams[i].track.cycle = engine.new_cycle();
        }
        engine
    }

    /// Events the next connection reads before it disconnects (churn).
    fn new_cycle(&mut self) -> u32 {
        let Some(c) = self.cfg.churn.clone() else {
            return u32::MAX;
        };
        let min = c.min_events.max(1);
        let span = u64::from(c.max_events.max(min) - min) + 1;
        min + self.rng.below(span) as u32
    }

    fn error(&mut self, msg: String) {
        if self.errors.len() < 10 {
            self.errors.push(msg);
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Option<ToWorker>>) -> WorkerResult {
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; READ_BUF];
        let connect_deadline = self.started_ns + self.cfg.connect_timeout_ms * 1_000_000;
        let mut finish_deadline = u64::MAX;
        let mut cpu_at_ready = 0.0;
        loop {
            let now = sys::mono_ns();
            self.open_more(now);
            self.reconnect_due(now);
            if !self.ready_sent && (self.first_round_settled() || now >= connect_deadline) {
                self.ready_sent = true;
                cpu_at_ready = sys::self_cpu_s();
                let failed = self.cfg.streams - self.open_first;
                send(&FromWorker::Ready(Ready {
                    open: self.open_first,
                    failed,
                    connect_ms: (now - self.started_ns) / 1_000_000,
                    first_error: self.first_error.clone(),
                }));
            }
            if self.finishing && (self.all_done() || now >= finish_deadline) {
                break;
            }
            let timeout = match self.reconnects.peek() {
                Some(Reverse((at, _))) => Duration::from_nanos(at.saturating_sub(now)),
                None => Duration::from_millis(100),
            }
            .min(Duration::from_millis(100));
            for r in poll_ready(&mut self.poll, &mut events, timeout) {
                self.on_ready(r.token, r.writable, r.readable, r.hup, &mut buf);
            }
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    None => {
                        eprintln!("ssehub-loadtest worker: coordinator gone, exiting");
                        std::process::exit(3);
                    }
                    Some(ToWorker::Report) => return self.result(cpu_at_ready),
                    Some(ToWorker::Finish { grace_ms }) => {
                        self.finishing = true;
                        self.churning = false;
                        finish_deadline = sys::mono_ns() + grace_ms * 1_000_000;
                        self.drain_slow(&mut buf);
                    }
                }
            }
        }
        self.result(cpu_at_ready)
    }

    fn first_round_settled(&self) -> bool {
        self.opened == self.cfg.streams && self.open_first + self.failed_first == self.cfg.streams
    }

    /// Every stream has what it can get: all events, or it ended (slow ones cut).
    fn all_done(&self) -> bool {
        let events = self.cfg.events;
        self.streams.iter().all(|s| {
            s.track.next_seq >= events || (s.state == State::Closed && self.cfg.mode != Mode::Churn)
        })
    }

    fn open_more(&mut self, now: u64) {
        let mut batch = 0;
        while self.opened < self.cfg.streams
            && batch < CONNECT_BATCH
            && self.in_flight < MAX_IN_FLIGHT
        {
            let i = self.opened;
            self.opened += 1;
            batch += 1;
            if !self.connect(i, now) {
                self.failed_first += 1;
            }
        }
    }

    fn reconnect_due(&mut self, now: u64) {
        while let Some(&Reverse((at, i))) = self.reconnects.peek() {
            if at > now || self.in_flight >= MAX_IN_FLIGHT {
                break;
            }
            self.reconnects.pop();
            if !self.connect(i, now) {
                self.schedule_reconnect(i, now);
            }
        }
    }

    fn schedule_reconnect(&mut self, i: usize, now: u64) {
        let max = self
            .cfg
            .churn
            .as_ref()
            .map_or(100, |c| c.max_delay_ms.max(1));
        let delay = self.rng.below(max * 1_000_000 + 1);
        self.streams[i].state = State::Idle;
        self.reconnects.push(Reverse((now + delay, i)));
    }

    /// Opens stream `i`'s connection; false when the socket could not even be created.
    fn connect(&mut self, i: usize, _now: u64) -> bool {
        let source = self.cfg.sources[i % self.cfg.sources.len()];
        let rcvbuf = self.streams[i].slow.then_some(self.cfg.slow_rcvbuf);
        self.churn.connects += 1;
        match open_socket(self.cfg.addr, source, rcvbuf) {
            Ok(mut sock) => {
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.note_connect_error(format!("register: {e}"));
                    return false;
                }
                let tls = match &self.tls {
                    None => None,
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from("localhost")
                            .expect("server name");
                        match rustls::ClientConnection::new(config.clone(), name) {
                            Ok(c) => Some(Box::new(c)),
                            Err(e) => {
                                self.note_connect_error(format!("tls: {e}"));
                                return false;
                            }
                        }
                    }
                };
                let s = &mut self.streams[i];
                s.sock = Some(sock);
                s.tls = tls;
                s.state = State::Connecting;
                s.head.clear();
                self.in_flight += 1;
                true
            }
            Err(e) => {
                self.note_connect_error(format!("connect from {source}: {e}"));
                false
            }
        }
    }

    fn note_connect_error(&mut self, msg: String) {
        self.churn.connect_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg.clone());
        }
        self.error(msg);
    }

    fn request(&self, i: usize) -> Vec<u8> {
        let mut r = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
            self.cfg.path, self.cfg.addr
        )
        .into_bytes();
        let last = &self.streams[i].parser.last_id;
        if !last.is_empty() {
            r.extend_from_slice(b"Last-Event-ID: ");
            r.extend_from_slice(last.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    fn on_ready(&mut self, i: usize, writable: bool, readable: bool, hup: bool, buf: &mut [u8]) {
        let Some(s) = self.streams.get(i) else { return };
        if s.state == State::Connecting && (writable || readable) {
            let req = self.request(i);
            let resumes = !self.streams[i].parser.last_id.is_empty();
            let s = &mut self.streams[i];
            let Some(sock) = s.sock.as_mut() else { return };
            let written = match s.tls.as_deref_mut() {
                // Buffered by rustls until the handshake is done.
                Some(tls) => tls.writer().write_all(&req).map(|()| req.len()),
                None => sock.write(&req),
            };
            match written {
                Ok(n) if n == req.len() => {
                    s.state = State::AwaitHead;
                    if resumes {
                        self.churn.resumes += 1;
                    }
                }
                Ok(_) => return self.fail(i, "request written partially".into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !hup => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.fail(i, "connection closed before the request".into());
                }
                Err(e) => return self.fail(i, format!("connect/request: {e}")),
            }
        }
        if writable {
            let s = &mut self.streams[i];
            if let (Some(tls), Some(sock)) = (s.tls.as_deref_mut(), s.sock.as_mut())
                && let Err(e) = tls_flush(tls, sock)
            {
                return self.fail(i, format!("tls write: {e}"));
            }
        }
        let s = &self.streams[i];
        if !readable || !matches!(s.state, State::AwaitHead | State::Streaming) {
            return;
        }
        if s.slow && !s.draining && s.state == State::Streaming {
            return; // a slow reader: leave the bytes in the socket
        }
        self.read_stream(i, hup, buf);
    }

    /// Reads until the socket is drained (a short read), closed, or the stream disconnects.
    fn read_stream(&mut self, i: usize, hup: bool, buf: &mut [u8]) {
        if self.streams[i].tls.is_some() {
            return self.read_tls_stream(i, buf);
        }
        loop {
            let Some(sock) = self.streams[i].sock.as_mut() else {
                return;
            };
            match sock.read(buf) {
                Ok(0) => return self.server_closed(i),
                Ok(n) => {
                    let now = sys::mono_ns();
                    if !self.consume(i, &buf[..n], now) {
                        return; // disconnected by us (churn) or failed
                    }
                    if n < buf.len() && !hup {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.server_closed(i),
            }
        }
    }

    /// `read_stream` of a TLS stream: ciphertext in, handshake answered, plaintext handed
    /// to `consume`, until the socket has nothing more.
    fn read_tls_stream(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let s = &mut self.streams[i];
            let (Some(tls), Some(sock)) = (s.tls.as_deref_mut(), s.sock.as_mut()) else {
                return;
            };
            let mut eof = false;
            match tls.read_tls(sock) {
                Ok(0) => eof = true,
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        return self.fail(i, format!("tls: {e}"));
                    }
                    if let Err(e) = tls_flush(tls, sock) {
                        return self.fail(i, format!("tls write: {e}"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.server_closed(i),
            }
            loop {
                let Some(tls) = self.streams[i].tls.as_deref_mut() else {
                    return;
                };
                match tls.reader().read(buf) {
                    Ok(0) => return self.server_closed(i),
                    Ok(n) => {
                        let now = sys::mono_ns();
                        if !self.consume(i, &buf[..n], now) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return self.server_closed(i),
                }
            }
            if eof {
                return self.server_closed(i);
            }
        }
    }

    /// Handles bytes read from stream `i`; false when the connection is gone.
    fn consume(&mut self, i: usize, bytes: &[u8], now: u64) -> bool {
        let s = &mut self.streams[i];
        let mut rest = bytes;
        let owned;
        if s.state == State::AwaitHead {
            s.head.extend_from_slice(bytes);
            let Some(end) = s.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if s.head.len() > MAX_HEAD {
                    self.fail(i, "response head too large".into());
                    return false;
                }
                return true;
            };
            let status = parse_status(&s.head);
            owned = s.head.split_off(end + 4);
            s.head = Vec::new();
            self.in_flight -= 1;
            if status != Some(200) {
                let st = status.unwrap_or(0);
                match self.churn.statuses.iter_mut().find(|(c, _)| *c == st) {
                    Some((_, n)) => *n += 1,
                    None => self.churn.statuses.push((st, 1)),
                }
                self.streams[i].sock = None;
                if self.cfg.mode == Mode::Churn && self.ready_sent {
                    self.schedule_reconnect(i, now);
                } else {
                    self.streams[i].state = State::Closed;
                    self.first_round_failed(format!("answer {st} instead of a stream"));
                }
                return false;
            }
            s.state = State::Streaming;
            s.track.this_conn = 0;
            self.churn.streams_opened += 1;
            if !self.ready_sent {
                self.open_first += 1;
            }
            if self.streams[i].slow && !self.streams[i].draining {
                return true; // bytes after the head of a slow reader stay unparsed
            }
            rest = &owned;
        }
        let s = &mut self.streams[i];
        let cycle = if self.churning {
            s.track.cycle
        } else {
            u32::MAX
        };
        let slow = s.slow;
        let record = self.cfg.mode == Mode::Fanout && !slow;
        let tally = &mut self.tally;
        let track = &mut s.track;
        let mut resets = 0;
        let flow = s.parser.feed(rest, |item| {
            match item {
                Item::Event(p) if slow => {
                    // A slow reader reads again at the end only to see whether it was cut.
                    track.next_seq = track.next_seq.max(p.seq + 1);
                    tally.slow_deliveries += 1;
                }
                Item::Event(p) => {
                    if p.seq < track.next_seq {
                        tally.duplicates += 1;
                    } else {
                        let gap = p.seq - track.next_seq;
                        if track.after_reset {
                            tally.missing_after_reset += gap;
                        } else {
                            tally.missing += gap;
                        }
                        track.next_seq = p.seq + 1;
                        track.received += 1;
                        tally.deliveries += 1;
                        if record {
                            tally.lat_sent.record(now.saturating_sub(p.sent_ns) / 1000);
                            tally
                                .lat_sched
                                .record(now.saturating_sub(p.sched_ns) / 1000);
                            if let Some(t) = tally.last_recv.get_mut(p.seq as usize) {
                                *t = (*t).max(now);
                            }
                        }
                    }
                    track.after_reset = false;
                    track.this_conn += 1;
                    if track.this_conn >= cycle {
                        return Flow::Stop;
                    }
                }
                Item::Reset => {
                    track.after_reset = true;
                    resets += 1;
                }
                Item::Keepalive => tally.keepalives += 1,
                Item::Foreign => tally.foreign += 1,
            }
            Flow::Continue
        });
        self.churn.resets += resets;
        if flow == Flow::Stop {
            self.disconnect(i, now);
            return false;
        }
        true
    }

    /// Churn: the client goes away after reading its share of events, then comes back.
    fn disconnect(&mut self, i: usize, now: u64) {
        let share = self.cfg.churn.as_ref().map_or(0.0, |c| c.rst_share);
        let rst = self.rng.below(1_000_000) as f64 / 1e6 < share;
        let s = &mut self.streams[i];
        s.tls = None;
        if let Some(sock) = s.sock.take() {
            if rst {
                let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                self.churn.rst_closes += 1;
            } else {
                self.churn.fin_closes += 1;
            }
            drop(sock);
        }
        s.parser.reset_connection();
        self.streams[i].track.cycle = self.new_cycle();
        self.schedule_reconnect(i, now);
    }

    /// The server ended stream `i` (or the connection broke).
    fn server_closed(&mut self, i: usize) {
        let now = sys::mono_ns();
        let s = &mut self.streams[i];
        let was = s.state;
        s.sock = None;
        s.tls = None;
        s.parser.reset_connection();
        if was == State::AwaitHead || was == State::Connecting {
            self.in_flight -= 1;
        }
        if self.cfg.mode == Mode::Churn && self.ready_sent {
            self.churn.server_closes += 1;
            if self.streams[i].track.next_seq < self.cfg.events {
                self.schedule_reconnect(i, now);
            } else {
                self.streams[i].state = State::Closed;
            }
            return;
        }
        self.streams[i].state = State::Closed;
        if was != State::Streaming {
            self.first_round_failed("closed before the response head".into());
        }
    }

    fn first_round_failed(&mut self, msg: String) {
        if !self.ready_sent {
            self.failed_first += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(msg.clone());
        }
        self.error(msg);
    }

    fn fail(&mut self, i: usize, msg: String) {
        let s = &mut self.streams[i];
        let was = s.state;
        s.sock = None;
        s.tls = None;
        s.parser.reset_connection();
        if matches!(was, State::Connecting | State::AwaitHead) {
            self.in_flight -= 1;
        }
        if self.cfg.mode == Mode::Churn && self.ready_sent {
            self.note_connect_error(msg);
            self.schedule_reconnect(i, sys::mono_ns());
            return;
        }
        self.streams[i].state = State::Closed;
        self.first_round_failed(msg);
    }

    /// Slow streams read again, so that a cut one sees its end of stream.
    fn drain_slow(&mut self, buf: &mut [u8]) {
        for i in 0..self.streams.len() {
            if self.streams[i].slow {
                self.streams[i].draining = true;
                if self.streams[i].state == State::Streaming {
                    self.read_stream(i, true, buf);
                }
            }
        }
    }

    fn result(&mut self, cpu_at_ready: f64) -> WorkerResult {
        let events = self.cfg.events;
        let mut r = WorkerResult {
            streams: self.cfg.streams,
            ..WorkerResult::default()
        };
        for s in &self.streams {
            if s.state == State::Streaming {
                r.open_at_end += 1;
            }
            if s.slow {
                r.slow_streams += 1;
                if s.state == State::Closed {
                    r.slow_cut += 1;
                } else if s.track.next_seq >= events {
                    r.slow_kept += 1;
                }
                continue;
            }
            if self.cfg.mode == Mode::Idle {
                if s.state == State::Closed {
                    r.closed_early += 1;
                }
                continue;
            }
            if s.track.next_seq >= events {
                r.complete += 1;
            } else {
                r.missing += events - s.track.next_seq;
                if s.state == State::Closed {
                    r.closed_early += 1;
                }
            }
        }
        let t = &mut self.tally;
        r.deliveries = t.deliveries;
        r.slow_deliveries = t.slow_deliveries;
        r.missing += t.missing;
        r.missing_after_reset = t.missing_after_reset;
        r.duplicates = t.duplicates;
        r.foreign = t.foreign;
        r.keepalives = t.keepalives;
        r.latency_sent = t.lat_sent.buckets();
        r.latency_sched = t.lat_sched.buckets();
        r.last_recv_ns = std::mem::take(&mut t.last_recv);
        r.churn = std::mem::take(&mut self.churn);
        r.cpu_s = sys::self_cpu_s() - cpu_at_ready;
        r.errors = std::mem::take(&mut self.errors);
        r
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

/// The client configuration of a `--tls-ca` run: that CA trusted, ALPN `http/1.1`.
fn tls_config(
    ca: &std::path::Path,
    tls12: bool,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let version = if tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// Writes what the TLS client has to send (handshake, request) until the socket is full.
fn tls_flush(tls: &mut rustls::ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A non-blocking connection from `source` (its port chosen at connect time), with a
/// receive buffer of `rcvbuf` bytes when given (slow readers).
pub(crate) fn open_socket(
    addr: SocketAddr,
    source: IpAddr,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::AsRawFd;
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    sys::bind_address_no_port(s.as_raw_fd());
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(&SocketAddr::new(source, 0).into())?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x\r\n\r\n"), Some(503));
        assert_eq!(parse_status(b"garbage\r\n\r\n"), None);
    }
}
